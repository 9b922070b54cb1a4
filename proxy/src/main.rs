//! The `shoal-proxy` command: `run` (the default) serves traffic; `init` installs the iptables
//! rules that capture a pod's traffic.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_proxy::config::Config;

/// Shoal's sidecar proxy.
#[derive(Debug, Parser)]
#[command(
    name = "shoal-proxy",
    version,
    about = "Shoal's sidecar proxy. Settings: SHOAL_* environment variables (docs/configuration.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic (the default).
    Run,
    /// Install (or with --uninstall remove) the iptables rules for transparent capture.
    Init(shoal_proxy::init::InitArgs),
}

/// mimalloc: per-request allocations (header maps, channels) cost a third of glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: shoal_proxy::alloc::MiMalloc = shoal_proxy::alloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(),
        Command::Init(args) => match shoal_proxy::init::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoal-proxy init: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let log = match shoal_proxy::logging::init(&config.log, config.log_format) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shoal-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // One thread by default: a sidecar shares its pod's CPU, and a single-threaded runtime
    // has no cross-thread wakeups or work stealing to pay for on every request.
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(shoal_proxy::app::run(config, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shoal-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
