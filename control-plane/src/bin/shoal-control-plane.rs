//! The `shoal-control-plane` command: reads `SHOAL_CP_*` settings (docs/control-plane.md), then serves the
//! Admin API, Discovery and metrics until SIGTERM or SIGINT.

use std::process::ExitCode;

use shoal_control_plane::server::{self, Config};

/// `--help`: what the program is, how it is configured, and every setting it reads.
fn help() -> String {
    let settings: String = server::config::env::ALL
        .iter()
        .map(|name| format!("  {name}\n"))
        .collect();
    format!(
        "shoal-control-plane {version}: Shoal's control plane. It stores policy durably (the Admin API that \
         shoalctl calls), pushes services, endpoints, routes and policy to every proxy as they change \
         (Discovery), and is the mesh CA that signs workload certificates (Identity).\n\n\
         Usage: shoal-control-plane              takes no arguments; runs until SIGTERM or SIGINT\n\
         \x20      shoal-control-plane --version | --help\n\n\
         Configured by environment variables; an unknown SHOAL_CP_ name is an error. What each one means and its \
         default: docs/control-plane.md, \"Settings\".\n{settings}\n\
         Ports by default: 15010 discovery and identity (TLS), 15011 admin (loopback), 15014 metrics, and 15017 \
         the sidecar injector's webhook (HTTPS /inject) when SHOAL_CP_WEBHOOK_CERT_FILE and SHOAL_CP_WEBHOOK_KEY_FILE \
         are set (docs/kubernetes.md, \"Sidecar injection\").\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--version" || arg == "-V" {
            println!("shoal-control-plane {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        if arg == "--help" || arg == "-h" {
            print!("{}", help());
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
