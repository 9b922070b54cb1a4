//! `shoalctl`, the operator's command line: `apply`, `get`, `delete` and `status` over the Admin API.
//!
//! Exit codes (docs/shoalctl.md): 0 done; 1 the server rejected a request or a resource was not found;
//! 2 bad usage or input (clap's own code for usage errors); 3 the control plane cannot be reached.

mod apply;
mod client;
mod error;
mod get;
pub mod kinds;
mod status;
mod summary;
mod table;
pub mod yaml;

use clap::{Parser, Subcommand, ValueEnum};

pub use error::CliError;

/// The default `--server`: the control plane's admin listener on this machine.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15011";

/// Manage a Shoal mesh through its control plane.
#[derive(Debug, Parser)]
#[command(name = "shoalctl", version, about, long_about = None)]
pub struct Cli {
    /// Address of the control plane's admin API.
    #[arg(long, global = true, env = "SHOAL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the resources in a YAML file (one or more documents; `-` reads stdin).
    Apply {
        /// The file to apply, or `-` for standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
    },
    /// Show one resource, or list the resources of a kind.
    Get {
        /// Kind: service, endpointregistration, route, backendpolicy, authorizationpolicy, ratelimit,
        /// faultinjection, mirror (plurals and short names such as `svc` work too).
        kind: String,
        /// Name of one resource; without it, every resource of the kind is listed.
        name: Option<String>,
        /// Namespace; for a listing, every namespace when left out; for one resource, `default`.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format: a table (default), `wide` (more columns), `yaml` or `json` (re-appliable).
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Delete one resource.
    Delete {
        /// Kind (as for `get`).
        kind: String,
        /// Name of the resource.
        name: String,
        /// Namespace (default `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Show every connected proxy and whether it runs the configuration the control plane has for it.
    Status {
        /// Only proxies whose workload is in this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// `wide`: one row per resource each proxy subscribes to.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table with more columns.
    Wide,
    /// YAML documents, in the format `apply` reads.
    Yaml,
    /// JSON: an object for one resource, an array for a listing.
    Json,
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let server = cli.server.as_str();
    let result = match cli.command {
        Command::Apply { file } => apply::run(server, &file).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => get::run(server, &kind, name.as_deref(), namespace.as_deref(), output).await,
        Command::Delete {
            kind,
            name,
            namespace,
        } => get::delete(server, &kind, &name, namespace.as_deref()).await,
        Command::Status { namespace, output } => {
            status::run(server, namespace.as_deref(), output).await
        }
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
