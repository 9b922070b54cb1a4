//! `shoal-proxy`: Shoal's data plane, a sidecar next to every service instance.
//!
//! The modules are listed in the order a connection meets them:
//!
//! 1. [`listen`] — bind, accept, connection limits, SO_ORIGINAL_DST.
//! 2. [`detect`] — read the first bytes with a deadline: TLS, HTTP/2, HTTP/1 or opaque.
//! 3. [`tls`] — terminate mesh mTLS (the peer's SPIFFE identity), or originate it upstream.
//! 4. [`protocol`] — hand the connection to HTTP or opaque TCP.
//! 5. [`inbound`] — connections to the app: forward to the app's address.
//! 6. [`outbound`] — the app's calls: service lookup → [`http`] route → [`balance`] →
//!    [`endpoint`] (pooled upstream connections).
//! 7. [`tcp`] — opaque forwarding with half-close.
//!
//! Cross-cutting: [`trace_context`], [`metrics`], [`errors`] (the one place errors become
//! responses is `http::respond`), [`admin`], [`state`] (the store discovery feeds), [`config`],
//! [`drain`] (graceful shutdown), [`discovery`] (the control-plane client feeding `state`),
//! [`init`] (iptables for transparent capture), [`identity`] (the workload certificate and its
//! renewal), [`control_plane`] (the TLS channel discovery and identity use to reach the control
//! plane).

pub mod balance;
pub mod detect;
pub mod endpoint;
pub mod http;
pub mod inbound;
pub mod listen;
pub mod outbound;
pub mod protocol;
pub mod tcp;
pub mod tls;

pub mod admin;
pub mod alloc;
pub mod app;
pub mod config;
pub mod control_plane;
pub mod discovery;
pub mod drain;
pub mod errors;
pub mod identity;
pub mod init;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod state;
mod sync;
pub mod trace_context;
