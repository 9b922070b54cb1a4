//! The `shoalctl` command: see `shoalctl --help` and docs/shoalctl.md.

use std::process::ExitCode;

use clap::Parser;
use shoal_control_plane::cli::{self, Cli};

fn main() -> ExitCode {
    // Usage errors exit with 2 here, help and --version with 0 (clap's codes, which match ours).
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(runtime.block_on(cli::run(cli)))
}
