//! `shoalctl`, the operator's command line: `apply`, `get`, `delete`, `status`, `token` (join tokens) and `ca`
//! (the mesh CA) over the Admin API, and `inject` (the sidecar injector's mutation, offline).
//!
//! Exit codes (docs/shoalctl.md): 0 done; 1 the server rejected a request or a resource was not found;
//! 2 bad usage or input (clap's own code for usage errors); 3 the control plane cannot be reached.

mod apply;
mod ca;
pub(crate) mod client;
mod error;
mod get;
mod inject;
pub mod kinds;
mod status;
mod summary;
mod table;
mod token;
pub mod yaml;

use std::path::PathBuf;

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
        /// `wide`: one row per resource each proxy subscribes to; `yaml` or `json`: every field, the
        /// transport and verified identity included.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Join tokens: the credential a workload outside Kubernetes uses to get its first certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The mesh certificate authority: its roots, and root rotation.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Add the Shoal sidecar to Kubernetes manifests as the injection webhook would (Pod, Deployment,
    /// StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and List items; other kinds pass through), writing
    /// YAML to stdout.
    Inject {
        /// The manifests (one or more YAML documents), or `-` for standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
        /// The injector's configuration (the format of the webhook's SHOAL_CP_INJECTOR_CONFIG_FILE);
        /// default: the built-in defaults (docs/kubernetes.md).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The trust anchors the proxies verify the control plane with (PEM, as `shoalctl ca anchors`
        /// prints them); default: asked from the control plane at --server.
        #[arg(long, value_name = "FILE")]
        trust_anchors: Option<PathBuf>,
    },
}

/// `shoalctl token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token granting one identity; prints the token alone on stdout (details on stderr).
    Create {
        /// Namespace of the identity the token grants.
        #[arg(short = 'n', long)]
        namespace: String,
        /// Service account of the identity the token grants.
        #[arg(short = 's', long)]
        service_account: String,
        /// Lifetime, such as 30m or 2h (1 minute to 30 days; default 1h).
        #[arg(long)]
        ttl: Option<String>,
        /// How many certificates it may obtain; 0 (the default) is unlimited until it expires.
        #[arg(long, default_value_t = 0)]
        uses: u32,
        /// `yaml` or `json`: the token and its details as one document on stdout.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// List tokens that have not expired (never their secrets).
    List {
        /// Only tokens for this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// `yaml` or `json` instead of a table.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Revoke a token by its id (the part before the `.`); certificates issued with it stay valid.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `shoalctl ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the roots in the trust bundle and any rotation in progress.
    Status {
        /// `yaml` or `json` instead of a table.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Print the trust bundle's roots as PEM (active first): the trust anchors proxies verify the control
    /// plane with (SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE).
    Anchors,
    /// Rotate to a new root (generated, or --cert/--key): it is trusted everywhere first (PENDING), signs once
    /// every connected proxy has it; the old one stays trusted until its certificates expire.
    Rotate {
        /// The new root certificate (PEM); the control plane signs workloads with its own intermediate under it.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// The new root's private key (PKCS#8 PEM).
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        /// The longest the new root stays PENDING while connected proxies have not acknowledged it (1s to 24h,
        /// such as 5m); default: the control plane's SHOAL_CP_CA_PROPAGATION_TIMEOUT.
        #[arg(long, value_name = "DURATION")]
        activate_after: Option<String>,
        /// `yaml` or `json` instead of a table.
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
        Command::Token(TokenCommand::Create {
            namespace,
            service_account,
            ttl,
            uses,
            output,
        }) => {
            token::create(
                server,
                &namespace,
                &service_account,
                ttl.as_deref(),
                uses,
                output,
            )
            .await
        }
        Command::Token(TokenCommand::List { namespace, output }) => {
            token::list(server, namespace.as_deref(), output).await
        }
        Command::Token(TokenCommand::Revoke { id }) => token::revoke(server, &id).await,
        Command::Inject {
            file,
            config,
            trust_anchors,
        } => inject::run(server, &file, config.as_deref(), trust_anchors.as_deref()).await,
        Command::Ca(CaCommand::Status { output }) => ca::status(server, output).await,
        Command::Ca(CaCommand::Anchors) => ca::anchors(server).await,
        Command::Ca(CaCommand::Rotate {
            cert,
            key,
            activate_after,
            output,
        }) => {
            let files = (cert.as_deref(), key.as_deref());
            ca::rotate(server, files, activate_after.as_deref(), output).await
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
