//! The `shoal-control-plane` command: reads `SHOAL_CP_*` settings (docs/control-plane.md), then serves the
//! Admin API, Discovery and metrics until SIGTERM or SIGINT.

use std::process::ExitCode;

use shoal_control_plane::server::{self, Config};

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--version" || arg == "-V" {
            println!("shoal-control-plane {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "shoal-control-plane takes no arguments ({arg:?}): it is configured with SHOAL_CP_* environment variables (docs/control-plane.md)"
        );
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shoal-control-plane: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = server::logging::init(&config.log, config.log_format) {
        eprintln!("shoal-control-plane: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shoal-control-plane: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(server::run(&config, server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "control plane failed");
            eprintln!("shoal-control-plane: {error}");
            ExitCode::from(1)
        }
    }
}
