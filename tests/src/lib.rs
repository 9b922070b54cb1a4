//! Harness for Shoal's integration tests (tier 2 in tests/README.md).
//!
//! Every test runs the real `shoal-proxy` binary as a child process between real servers and
//! clients on real sockets on `127.0.0.1`:
//!
//! - [`proxy`]: [`ProxyBuilder`] starts a proxy (explicit or transparent listeners on port 0, an
//!   optional state file, access logs), learns its ports from the ready line, waits for
//!   `GET /ready == 200`, captures its output (printed when the [`Proxy`] is dropped, so a failing
//!   test shows the proxy's logs) and kills it on drop; admin helpers ([`Proxy::admin_get`],
//!   [`Proxy::metrics`]).
//! - [`prom`]: a small Prometheus text-format parser ([`prom::metric_value`]).
//! - [`metrics_doc`]: docs/metrics.md's families and PromQL examples, and an exposition's families.
//! - [`backend`]: a recording HTTP/1.1 + h2c server ([`HttpBackend`]) and a raw TCP server
//!   ([`TcpBackend`]).
//! - [`grpc`]: a tonic echo service (`proto/echo.proto`) with streaming, slow and cancellable
//!   methods, and clients for it.
//! - [`client`]: HTTP/1 and HTTP/2 clients that keep their connection, and a raw HTTP/1 reader for
//!   byte-exact tests.
//! - [`wait`]: [`eventually`] and [`assert_eventually!`]: poll a condition until a deadline instead
//!   of sleeping and hoping.
//! - [`otlp`]: a real OTLP/gRPC trace receiver ([`otlp::OtlpReceiver`]) recording the spans proxies
//!   export.
//! - [`admission`]: AdmissionReviews over HTTPS to the sidecar injector, an RFC 6902 patch applier and
//!   `kubernetes-validate`.
//! - [`fake_kube`]: a fake Kubernetes API server (list + watch of Services, Pods, EndpointSlices, Shoal's custom
//!   resources and Gateway API routes, with bookmarks, `410 Gone` and cut connections; status patches; Leases)
//!   for the control plane's Kubernetes source.
//! - [`kube_mesh`]: a control plane in Kubernetes mode on the fake, a proxy, Services with real backends, and
//!   waits on the `Accepted` condition.
//! - [`up`]: `shoal up` as a child process, its ready file, and the processes of its group in `/proc`.
//! - [`process`]: child processes with captured output, killed on drop (the proxy, `prometheus`),
//!   and temporary directories removed on drop.
//!
//! Ports always come from binding `127.0.0.1:0` (the proxy's too: it binds port 0 and reports the
//! real addresses), so tests run in parallel without colliding.

pub mod admission;
pub mod backend;
pub mod client;
pub mod control_plane;
pub mod fake_kube;
pub mod fake_kube_tokenreview;
pub mod grpc;
pub mod helm;
pub mod kube_mesh;
pub mod metrics_doc;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod prom;
pub mod proxy;
pub mod up;
pub mod wait;

pub use backend::{HttpBackend, Recorded, TcpBackend};
pub use client::{H1Client, H2Client, RawConn, Resp};
pub use prom::metric_value;
pub use proxy::{Proxy, ProxyBuilder, Via};
pub use wait::eventually;

/// The error type of boxed bodies and helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A free TCP port on 127.0.0.1 with nothing listening (bound once, then released): connecting
/// to it is refused.
pub fn closed_port_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = l.local_addr().expect("local_addr");
    drop(l);
    addr
}
