//! The demo services `shoal up` runs, each in its own process (`shoal demo-app ROLE --port N`), each behind
//! its own sidecar:
//!
//! - `frontend` (HTTP/1.1): every request calls `backend` (HTTP/1.1, `Host: backend`) and `greeter` (gRPC,
//!   `:authority greeter`) through its sidecar's outbound listener, whose address it reads from
//!   [`OUTBOUND_ENV`], and says what each answered;
//! - `backend` (HTTP/1.1): answers `backend v1` (or the `--version` it was given);
//! - `greeter` (gRPC over h2c): `shoal.demo.Greeter/SayHello`.
//!
//! They are deliberately tiny and mesh-unaware: they listen on 127.0.0.1, call `host` names through one
//! address, and pass `traceparent` on so a request's trace spans every hop. A demo app exits on SIGTERM,
//! Ctrl-C, or when its standard input closes (so it never outlives a `shoal up` that was killed).

mod grpc;
mod http;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::ValueEnum;
use tokio::net::TcpListener;

/// The environment variable that tells an app where its sidecar's outbound listener is.
pub const OUTBOUND_ENV: &str = "DEMO_OUTBOUND_ADDR";

/// Which demo service to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// HTTP; calls backend and greeter through its sidecar.
    Frontend,
    /// HTTP; answers with its version.
    Backend,
    /// gRPC (h2c); answers SayHello.
    Greeter,
}

impl Role {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Backend => "backend",
            Role::Greeter => "greeter",
        }
    }
}

/// `shoal demo-app`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Which service to be.
    #[arg(value_enum)]
    pub role: Role,
    /// The port to listen on, on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// The version `backend` reports.
    #[arg(long, default_value = "v1")]
    pub version: String,
}

/// Runs a demo app until SIGTERM, Ctrl-C or the end of standard input.
pub fn main(args: DemoArgs) -> ExitCode {
    let outbound = match (args.role, std::env::var(OUTBOUND_ENV)) {
        (Role::Frontend, Ok(addr)) => match addr.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => return fail(&format!("{OUTBOUND_ENV}={addr:?} is not an IP:PORT")),
        },
        (Role::Frontend, Err(_)) => {
            return fail(&format!(
                "the frontend needs {OUTBOUND_ENV}: its sidecar's outbound address"
            ));
        }
        _ => None,
    };
    // Whoever started us holds our stdin open; when it goes away, so do we.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve(args, outbound)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("shoal demo-app: {message}");
    ExitCode::from(1)
}

async fn serve(args: DemoArgs, outbound: Option<SocketAddr>) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let version: std::sync::Arc<str> = args.version.into();
    let shutdown = crate::server::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off rather than spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match (args.role, outbound) {
            (Role::Frontend, Some(outbound)) => {
                tokio::spawn(http::serve_frontend(stream, outbound));
            }
            (Role::Greeter, _) => {
                tokio::spawn(grpc::serve_greeter(stream));
            }
            _ => {
                tokio::spawn(http::serve_backend(stream, version.clone()));
            }
        }
    }
}
