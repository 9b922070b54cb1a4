//! Active health checking of a backend's endpoints (the backend policy's `health_check`): a task
//! per backend probes every ready endpoint each `interval` — an HTTP GET of a path whose status
//! must fall in a range, or the gRPC health protocol's `grpc.health.v1.Health/Check` answering
//! SERVING — through the same endpoint clients real requests use (so meshed endpoints are probed
//! over mTLS). An endpoint failing `unhealthy_threshold` probes in a row leaves the pick set; it
//! returns after `healthy_threshold` successes in a row. When every endpoint is out, balancing
//! ignores health (panic mode, as Envoy's): at least one endpoint always gets the requests.
//!
//! Each endpoint's verdict lives in its `Load` (`Checked`), so it survives state snapshots; the
//! task survives them too while the settings stay (`Balancer::inherit`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;

use super::Load;
use crate::endpoint::{Clients, ConnPolicy, Peer, Version};
use crate::http::body::RequestBody;
use crate::metrics::RequestMetrics;

/// Defaults (the proto's).
pub(crate) const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub(crate) const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// The statuses an HTTP check accepts by default.
pub(crate) const DEFAULT_EXPECTED_STATUSES: (u16, u16) = (200, 399);
/// The header every probe carries, so an app (or its logs) can tell probes from traffic.
pub(crate) static PROBE_HEADER: http::HeaderName =
    http::HeaderName::from_static("shoal-health-check");

/// What a probe asks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeKind {
    /// `GET path`; healthy when the status is within `expected_statuses` (inclusive).
    Http {
        path: String,
        expected_statuses: (u16, u16),
    },
    /// `grpc.health.v1.Health/Check` for `service` (empty: the server as a whole); healthy when
    /// the answer is SERVING.
    Grpc { service: String },
}

/// Health check settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct HealthCheckConfig {
    #[serde(flatten)]
    pub(crate) kind: ProbeKind,
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) interval: Duration,
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) unhealthy_threshold: u32,
}

/// One endpoint's health as the checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Not yet decided: in balancing (a new endpoint is not held back before its first probes).
    Unknown,
    Healthy,
    /// Out of the pick set.
    Unhealthy,
}

/// One endpoint's check state: its verdict and the current streak of like results.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    /// 0 unknown, 1 healthy, 2 unhealthy.
    verdict: AtomicU8,
    /// Successes in a row (positive) or failures in a row (negative); one task writes it.
    streak: std::sync::atomic::AtomicI32,
    /// Probes sent so far (tests).
    probes: AtomicU32,
}

impl Checked {
    /// The verdict now.
    pub(crate) fn verdict(&self) -> Verdict {
        match self.verdict.load(Ordering::Relaxed) {
            1 => Verdict::Healthy,
            2 => Verdict::Unhealthy,
            _ => Verdict::Unknown,
        }
    }

    /// Whether the checks took it out of the pick set.
    pub(crate) fn is_unhealthy(&self) -> bool {
        self.verdict.load(Ordering::Relaxed) == 2
    }

    /// Records one probe's result under `config`'s thresholds; returns the new verdict when it
    /// changed.
    pub(crate) fn record(&self, ok: bool, config: &HealthCheckConfig) -> Option<Verdict> {
        self.probes.fetch_add(1, Ordering::Relaxed);
        let prev = self.streak.load(Ordering::Relaxed);
        let streak = match (ok, prev > 0) {
            (true, true) => prev.saturating_add(1),
            (true, false) => 1,
            (false, false) => prev.saturating_sub(1),
            (false, true) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let now = self.verdict();
        let next = if ok && streak.unsigned_abs() >= config.healthy_threshold {
            Verdict::Healthy
        } else if !ok && streak.unsigned_abs() >= config.unhealthy_threshold {
            Verdict::Unhealthy
        } else {
            return None;
        };
        if next == now {
            return None;
        }
        let code = match next {
            Verdict::Unknown => 0,
            Verdict::Healthy => 1,
            Verdict::Unhealthy => 2,
        };
        self.verdict.store(code, Ordering::Relaxed);
        Some(next)
    }
}

/// How to reach the endpoints: the process's clients, and whether this proxy speaks mTLS to
/// meshed endpoints. Set on the store before the first state (`Store::set_prober`).
#[derive(Debug)]
pub struct Prober {
    pub(crate) clients: Arc<Clients>,
    /// This proxy has a mesh identity: meshed endpoints are probed over mTLS and HTTP/2.
    pub(crate) mesh: bool,
    /// Ports whose servers speak first (`SHOAL_SERVER_FIRST_PORTS`): no mTLS unless strict.
    pub(crate) server_first_ports: Vec<u16>,
}

impl Prober {
    /// A prober over `clients`.
    pub fn new(clients: Arc<Clients>, mesh: bool, server_first_ports: Vec<u16>) -> Arc<Self> {
        Arc::new(Self {
            clients,
            mesh,
            server_first_ports,
        })
    }
}

/// The backend a checker probes: how requests to it are addressed and spoken.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The backend's qualified name (metrics, logs).
    pub(crate) service: Arc<str>,
    /// The authority probes carry (the service's own).
    pub(crate) authority: String,
    /// The app's HTTP version.
    pub(crate) version: Version,
    /// mTLS to meshed endpoints is allowed for the service.
    pub(crate) mtls: bool,
    /// The backend's connect timeout.
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) metrics: Arc<RequestMetrics>,
}

/// One endpoint the checker probes: its address, the identity its proxy proves, its load.
pub(crate) type Member = (SocketAddr, Option<crate::tls::SpiffeId>, Arc<Load>);

/// A backend's health checker: its settings, the current snapshot's endpoints, and the task that
/// probes them every interval (running while the checker is alive).
#[derive(Debug)]
pub(crate) struct Checker {
    config: HealthCheckConfig,
    members: ArcSwap<Vec<Member>>,
    target: ArcSwap<Target>,
}

impl Checker {
    /// A checker under `config`, its task spawned on the current Tokio runtime (none outside
    /// one, or without a prober: state built in unit tests is never probed).
    pub(crate) fn spawn(
        config: HealthCheckConfig,
        target: Target,
        prober: Option<&Arc<Prober>>,
    ) -> Arc<Self> {
        let checker = Arc::new(Self {
            config,
            members: ArcSwap::default(),
            target: ArcSwap::from_pointee(target),
        });
        if let (Ok(runtime), Some(prober)) = (tokio::runtime::Handle::try_current(), prober) {
            runtime.spawn(run(Arc::downgrade(&checker), prober.clone()));
        }
        checker
    }

    /// The settings it probes by (an update keeps the checker only when they stay).
    pub(crate) fn config(&self) -> &HealthCheckConfig {
        &self.config
    }

    /// Hands it the endpoints, and the backend as addressed, of the snapshot now serving.
    pub(crate) fn set_members(&self, members: Vec<Member>, target: Target) {
        self.members.store(Arc::new(members));
        self.target.store(Arc::new(target));
    }

    /// Probes every endpoint once, concurrently, and records the results.
    async fn round(&self, prober: &Prober) {
        let members = self.members.load_full();
        let target = self.target.load_full();
        let probes = members.iter().map(|(addr, identity, load)| {
            let target = &target;
            async move {
                let tls = identity.clone().filter(|_| prober.mesh && target.mtls);
                let ok = self.probe(prober, target, (*addr, tls)).await;
                metrics::counter!(
                    crate::metrics::names::HEALTH_CHECKS,
                    "service" => target.service.to_string(),
                    "result" => if ok { "healthy" } else { "unhealthy" },
                )
                .increment(1);
                if let Some(verdict) = load.checked.record(ok, &self.config) {
                    tracing::warn!(
                        endpoint = %addr,
                        service = %target.service,
                        health = ?verdict,
                        "endpoint health changed by active health checks"
                    );
                }
            }
        });
        futures_util::future::join_all(probes).await;
        let unhealthy = members
            .iter()
            .filter(|(_, _, l)| l.checked.is_unhealthy())
            .count();
        metrics::gauge!(
            crate::metrics::names::ENDPOINTS_UNHEALTHY,
            "service" => target.service.to_string(),
        )
        .set(unhealthy as f64);
    }

    /// One probe of `peer`: whether it passed within the timeout.
    async fn probe(&self, prober: &Prober, target: &Target, peer: Peer) -> bool {
        let grpc = matches!(self.config.kind, ProbeKind::Grpc { .. });
        // Between proxies, HTTP/2 (the app's version restored by the inbound proxy).
        let (version, orig_http1) = match (&peer.1, grpc) {
            (Some(_), _) => (Version::Http2, !grpc && target.version == Version::Http1),
            (None, true) => (Version::Http2, false),
            (None, false) => (target.version, false),
        };
        let Ok(req) = request(&self.config.kind, &target.authority, version, orig_http1) else {
            return false;
        };
        let exchange = async {
            let policy = ConnPolicy {
                connect_timeout: target.connect_timeout,
                gate: None,
            };
            let resp = (prober.clients)
                .send(&peer, version, req, false, policy, &target.metrics)
                .await
                .ok()?;
            let status = resp.status();
            let body = resp.into_body().collect().await.ok()?;
            Some((status, body))
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(Some((status, body))) => passed(&self.config.kind, status, body),
            _ => false,
        }
    }
}

/// The probe request for `kind`, addressed for `version`.
fn request(
    kind: &ProbeKind,
    authority: &str,
    version: Version,
    orig_http1: bool,
) -> Result<Request<RequestBody>, http::Error> {
    let (method, path, body) = match kind {
        ProbeKind::Http { path, .. } => (Method::GET, path.as_str(), None),
        ProbeKind::Grpc { service } => (
            Method::POST,
            "/grpc.health.v1.Health/Check",
            Some(grpc_check_request(service)),
        ),
    };
    let mut builder = Request::builder().method(method);
    builder = match version {
        Version::Http1 => builder
            .uri(path)
            .header(header::HOST, authority)
            .version(http::Version::HTTP_11),
        Version::Http2 => builder
            .uri(format!("http://{authority}{path}"))
            .version(http::Version::HTTP_2),
    };
    builder = builder.header(PROBE_HEADER.clone(), HeaderValue::from_static("1"));
    if orig_http1 {
        builder = builder.header(
            crate::http::send::ORIG_PROTO.clone(),
            HeaderValue::from_static("HTTP/1.1"),
        );
    }
    let body = match body {
        None => RequestBody::Empty,
        Some(bytes) => {
            builder = builder
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::TE, "trailers");
            RequestBody::Bytes(Some(bytes))
        }
    };
    builder.body(body)
}

/// A `HealthCheckRequest { service }`, protobuf-encoded (field 1, a string) and framed with
/// gRPC's 5-byte prefix (uncompressed, length).
pub(crate) fn grpc_check_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut n = service.len();
        while n >= 0x80 {
            message.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        message.push(n as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// The `status` of a framed `HealthCheckResponse` (0 UNKNOWN when absent or unreadable).
pub(crate) fn grpc_serving_status(framed: &[u8]) -> u64 {
    let Some(message) = framed.get(5..) else {
        return 0;
    };
    let mut i = 0;
    let mut status = 0;
    while i < message.len() {
        let (tag, next) = varint(message, i);
        i = next;
        match tag & 7 {
            0 => {
                let (value, next) = varint(message, i);
                i = next;
                if tag >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let (len, next) = varint(message, i);
                i = next.saturating_add(len as usize);
            }
            _ => return 0,
        }
    }
    status
}

/// A protobuf varint at `at`: its value and the index after it.
fn varint(bytes: &[u8], mut at: usize) -> (u64, usize) {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(b) = bytes.get(at) else {
            return (value, usize::MAX);
        };
        at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    (value, at)
}

/// Whether a probe's answer is healthy.
fn passed(kind: &ProbeKind, status: StatusCode, body: http_body_util::Collected<Bytes>) -> bool {
    match kind {
        ProbeKind::Http {
            expected_statuses: (low, high),
            ..
        } => (*low..=*high).contains(&status.as_u16()),
        ProbeKind::Grpc { .. } => {
            // A gRPC error (an unknown service: NOT_FOUND) is unhealthy.
            let grpc_ok = body
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .is_none_or(|s| s == "0");
            status == StatusCode::OK && grpc_ok && grpc_serving_status(&body.to_bytes()) == 1
        }
    }
}

/// The checker's task: a round of probes every `interval` while the checker lives.
async fn run(checker: Weak<Checker>, prober: Arc<Prober>) {
    let interval = match checker.upgrade() {
        Some(c) => c.config.interval,
        None => return,
    };
    // The first round at once: a new backend learns its endpoints' health without waiting.
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(checker) = checker.upgrade() else {
            return;
        };
        checker.round(&prober).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(healthy: u32, unhealthy: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: ProbeKind::Http {
                path: "/healthz".into(),
                expected_statuses: DEFAULT_EXPECTED_STATUSES,
            },
            interval: DEFAULT_HC_INTERVAL,
            timeout: DEFAULT_HC_TIMEOUT,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    #[test]
    fn unhealthy_after_the_threshold_of_failures_in_a_row() {
        let c = config(2, 3);
        let checked = Checked::default();
        assert_eq!(checked.verdict(), Verdict::Unknown);
        assert_eq!(checked.record(false, &c), None);
        assert_eq!(checked.record(false, &c), None);
        // A success breaks the streak.
        assert_eq!(checked.record(true, &c), None);
        assert_eq!(checked.record(false, &c), None);
        assert_eq!(checked.record(false, &c), None);
        assert_eq!(checked.record(false, &c), Some(Verdict::Unhealthy));
        assert!(checked.is_unhealthy());
        assert_eq!(checked.record(false, &c), None, "no change: no new verdict");
    }

    #[test]
    fn healthy_again_after_the_threshold_of_successes_in_a_row() {
        let c = config(2, 1);
        let checked = Checked::default();
        assert_eq!(checked.record(false, &c), Some(Verdict::Unhealthy));
        assert_eq!(checked.record(true, &c), None);
        assert!(checked.is_unhealthy(), "one success is not enough");
        assert_eq!(checked.record(false, &c), None);
        assert_eq!(checked.record(true, &c), None);
        assert_eq!(checked.record(true, &c), Some(Verdict::Healthy));
        assert!(!checked.is_unhealthy());
    }

    #[test]
    fn grpc_messages_encode_and_decode() {
        assert_eq!(&grpc_check_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("ab")[..],
            [0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), 1);
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), 2);
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), 0, "absent: UNKNOWN");
        assert_eq!(grpc_serving_status(&[]), 0);
    }
}
