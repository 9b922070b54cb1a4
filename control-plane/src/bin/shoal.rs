//! The `shoal` command: `shoal up` runs a whole local mesh (docs/shoal-up.md); `shoal demo-app` is one of
//! its demo services (what `shoal up` starts behind each sidecar).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_control_plane::up::{self, UpArgs, demo::DemoArgs};

/// Shoal, a service mesh: `shoal up` runs a whole mesh locally in one command — a control plane and
/// demo services behind shoal-proxy sidecars on loopback, over mTLS (docs/shoal-up.md).
#[derive(Debug, Parser)]
#[command(name = "shoal", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a control plane and demo services behind sidecars on loopback, until Ctrl-C.
    Up(UpArgs),
    /// Run one demo service (`shoal up` starts these).
    DemoApp(DemoArgs),
    /// `shoal up`'s process-group guard: kills the group when `shoal up` exits (its standard input closes).
    #[command(hide = true)]
    UpGuard,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("shoal up: cannot start the runtime: {error}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(up::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("shoal up: error: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Command::DemoApp(args) => up::demo::main(args),
        Command::UpGuard => up::guard::main(),
    }
}
