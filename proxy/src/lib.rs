//! `shoal-proxy`: Shoal's data plane, a sidecar next to every service instance.
//!
//! The modules are listed in the order a connection meets them:
//!
//! 1. `listen` — bind, accept, connection limits, SO_ORIGINAL_DST.
//! 2. `detect` — read the first bytes with a deadline: TLS, HTTP/2, HTTP/1 or opaque.
//! 3. `tls` — terminate mesh mTLS (the peer's SPIFFE identity), or originate it upstream.
//! 4. `protocol` — hand the connection to HTTP or opaque TCP.
//! 5. `inbound` — connections to the app: forward to the app's address.
//! 6. `outbound` — the app's calls: service lookup → `http` route → `balance` →
//!    `endpoint` (pooled upstream connections).
//! 7. `tcp` — opaque forwarding with half-close.
//!
//! Cross-cutting: `trace_context`, `otlp` (spans to a collector), `metrics`, `errors` (the one place errors become
//! responses is `http::respond`), `admin`, `state` (the store discovery feeds), [`config`],
//! `drain` (graceful shutdown), `discovery` (the control-plane client feeding `state`),
//! [`init`] (iptables for transparent capture), `identity` (the workload certificate and its
//! renewal), `control_plane` (the TLS channel discovery and identity use to reach the control
//! plane).
//!
//! The library's API is what the binary (`main.rs`) uses — [`app`], [`config`], [`init`],
//! [`logging`], [`alloc`]; every other module is crate-private, so code nothing uses is flagged.

pub(crate) mod backend;
pub(crate) mod balance;
pub(crate) mod detect;
pub(crate) mod endpoint;
pub(crate) mod http;
pub(crate) mod inbound;
pub(crate) mod listen;
pub(crate) mod outbound;
pub(crate) mod protocol;
pub(crate) mod retry;
pub(crate) mod tcp;
pub(crate) mod tls;

pub(crate) mod admin;
pub mod alloc;
pub mod app;
pub mod config;
pub(crate) mod control_plane;
pub(crate) mod discovery;
pub(crate) mod drain;
pub(crate) mod errors;
pub(crate) mod identity;
pub mod init;
pub(crate) mod io;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod state;
mod sync;
pub(crate) mod trace_context;
pub(crate) mod window;
