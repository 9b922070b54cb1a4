//! The discovery stream: connect, say `Hello`, subscribe, apply updates, ACK or NACK; on any
//! failure keep the last state and reconnect with jittered exponential backoff.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use shoal_proto::v1::{
    self, ResourceType, discovery_request::Request as Req, discovery_resource::Payload,
};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;

use super::resources::{Key, Resources, Update};
use super::{Discovery, lock, service_keys};
use crate::state::Store;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Largest discovery response accepted, in bytes. A resource larger than a response's usual bound
/// travels alone; the control plane accepts resources up to 15 MiB
/// (`SHOAL_CP_ADMIN_MAX_REQUEST_BYTES`), so this leaves room for that one. gRPC's default, 4 MiB,
/// would make a stored resource that size unpushable: the stream would fail on every reconnect.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The request stream handed to tonic.
struct Outgoing(mpsc::Receiver<v1::DiscoveryRequest>);

impl Stream for Outgoing {
    type Item = v1::DiscoveryRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Why a stream ended without an error.
enum Ended {
    /// The control plane closed it.
    ByServer,
    /// It was opened without a client certificate (before the proxy's first workload certificate, or
    /// with an expired one) and one is here now: reconnect at once (resyncing with the held versions) so
    /// the control plane sees the identity it proves.
    ToPresentCertificate,
}

/// What the client keeps across reconnects.
struct Client {
    d: Arc<Discovery>,
    store: Arc<Store>,
    resources: Resources,
    /// Keys the control plane has answered at least once.
    answered: HashSet<Key>,
}

/// Runs the client for the life of the process.
pub(super) async fn run(
    d: Arc<Discovery>,
    store: Arc<Store>,
    mut subscribe_rx: mpsc::UnboundedReceiver<Vec<Key>>,
) {
    let mut c = Client {
        d,
        store,
        resources: Resources::default(),
        answered: HashSet::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = c.session(&mut subscribe_rx, &mut backoff).await;
        let error = match result {
            Ok(Ended::ToPresentCertificate) => continue,
            Ok(Ended::ByServer) => "the control plane closed the stream".to_string(),
            Err(e) => e,
        };
        metrics::gauge!("shoal_discovery_connected").set(0.0);
        {
            let mut s = lock(&c.d.status);
            s.connected = false;
            s.last_error = Some(error.clone());
        }
        // Jitter spreads reconnects so a restarted control plane is not hit by every proxy at once.
        let wait = backoff.mul_f64(0.5 + fastrand::f64());
        tracing::warn!(addr = %c.d.cfg.addr, error = %error, retry_in = ?wait, "discovery stream down; serving the last known state");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn request(r: Req) -> v1::DiscoveryRequest {
    v1::DiscoveryRequest { request: Some(r) }
}

fn wire(keys: impl IntoIterator<Item = Key>) -> Vec<v1::ResourceKey> {
    keys.into_iter()
        .map(|(t, name)| v1::ResourceKey { r#type: t, name })
        .collect()
}

impl Client {
    async fn session(
        &mut self,
        subscribe_rx: &mut mpsc::UnboundedReceiver<Vec<Key>>,
        backoff: &mut Duration,
    ) -> Result<Ended, String> {
        let addr = &self.d.cfg.addr;
        // Read before connecting: the handshake presents a certificate if this says there is one. Over
        // plaintext (`http://`) none is ever presented.
        let mut certificates = self.d.control_plane.client_certificates();
        certificates.borrow_and_update();
        let presented =
            addr.starts_with("http://") || self.d.control_plane.presents_client_certificate();
        let endpoint = tonic::transport::Endpoint::from_shared(addr.clone())
            .map_err(|e| format!("invalid discovery address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = self.d.control_plane.connect(endpoint).await?;
        let mut client = v1::discovery_client::DiscoveryClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let (tx, rx) = mpsc::channel(64);
        let send = |tx: &mpsc::Sender<v1::DiscoveryRequest>, r| {
            let tx = tx.clone();
            async move {
                tx.send(r)
                    .await
                    .map_err(|_| "the discovery stream closed".to_string())
            }
        };
        send(&tx, self.d.hello(self.resources.held())).await?;
        // Keys subscribed but not held (absent resources) are asked for again.
        let all: Vec<Key> = lock(&self.d.answers).keys().cloned().collect();
        if !all.is_empty() {
            send(
                &tx,
                request(Req::Subscribe(v1::Subscribe {
                    resources: wire(all),
                })),
            )
            .await?;
        }
        let mut inbound = client
            .stream(Outgoing(rx))
            .await
            .map_err(|e| format!("discovery stream refused: {}", e.message()))?
            .into_inner();
        {
            let mut s = lock(&self.d.status);
            s.connected = true;
            s.last_error = None;
        }
        metrics::gauge!("shoal_discovery_connected").set(1.0);
        tracing::info!(%addr, held = self.resources.held().len(), "discovery stream up");
        *backoff = BACKOFF_MIN;
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let Some(response) = msg.map_err(|e| format!("discovery stream failed: {}", e.message()))? else {
                        return Ok(Ended::ByServer);
                    };
                    let reply = self.apply(&response);
                    send(&tx, reply).await?;
                }
                Some(keys) = subscribe_rx.recv() => {
                    send(&tx, request(Req::Subscribe(v1::Subscribe { resources: wire(keys) }))).await?;
                }
                Ok(()) = certificates.changed(), if !presented => {
                    if self.d.control_plane.presents_client_certificate() {
                        tracing::info!(addr = %self.d.cfg.addr, "workload certificate obtained: reopening the discovery stream to present it");
                        return Ok(Ended::ToPresentCertificate);
                    }
                }
            }
        }
    }

    /// Applies one update resource by resource ([`Resources::update`]): every valid resource
    /// applies, each invalid one keeps its held version (or none); returns the ACK, or the NACK
    /// naming each rejected resource and why.
    fn apply(&mut self, response: &v1::DiscoveryResponse) -> v1::DiscoveryRequest {
        let mut update = match self.resources.update(response) {
            Ok(update) => update,
            Err(error) => return self.reject_all(response, error),
        };
        self.apply_trust_bundles(response, &mut update);
        let Update {
            next,
            state,
            missing,
            answered,
            rejected,
        } = update;
        self.resources = next;
        let version = self.store.replace(state);
        // Rejected keys count as answered too: waiters must not hang on an update that will not
        // apply.
        self.answered.extend(answered.iter().cloned());
        self.record_bindings(&answered);
        for service in missing {
            self.d.subscribe(service_keys(&service));
        }
        self.notify();
        if rejected.is_empty() {
            lock(&self.d.status).acked += 1;
            metrics::counter!("shoal_discovery_updates_total", "result" => "acked").increment(1);
            tracing::debug!(version, nonce = %response.nonce, "discovery update applied");
            return request(Req::Ack(v1::Ack {
                nonce: response.nonce.clone(),
            }));
        }
        for r in &rejected {
            tracing::error!(nonce = %response.nonce, error = %r.error, "discovery resource rejected (NACK); keeping its last good version");
        }
        let error = (rejected.iter().map(|r| r.error.as_str()))
            .collect::<Vec<_>>()
            .join("; ");
        // After `replace`: the rest of the update applied, and `/config` shows what did not.
        self.store
            .reject(format!("update partly rejected: {error}"));
        lock(&self.d.status).nacked += 1;
        metrics::counter!("shoal_discovery_updates_total", "result" => "nacked").increment(1);
        request(Req::Nack(v1::Nack {
            nonce: response.nonce.clone(),
            error_message: error,
            rejected: wire(rejected.iter().map(|r| r.key.clone())),
            rejections: rejected
                .into_iter()
                .map(|r| v1::RejectedResource {
                    key: Some(v1::ResourceKey {
                        r#type: r.key.0,
                        name: r.key.1,
                    }),
                    error_message: r.error,
                })
                .collect(),
        }))
    }

    /// NACKs the whole of `response`: the state held before no longer builds (which the
    /// per-resource checks should make impossible), so nothing of it applies.
    fn reject_all(
        &mut self,
        response: &v1::DiscoveryResponse,
        error: String,
    ) -> v1::DiscoveryRequest {
        let error = format!("update rejected: {error}");
        tracing::error!(nonce = %response.nonce, %error, "discovery update rejected (NACK); keeping the last good state");
        self.store.reject(error.clone());
        self.answered.extend(
            (response.resources.iter())
                .filter_map(|r| r.key.as_ref())
                .chain(&response.removed)
                .map(|k| (k.r#type, k.name.clone())),
        );
        self.notify();
        lock(&self.d.status).nacked += 1;
        metrics::counter!("shoal_discovery_updates_total", "result" => "nacked").increment(1);
        // No `rejections`: the control plane reads the NACK as covering the whole response.
        request(Req::Nack(v1::Nack {
            nonce: response.nonce.clone(),
            error_message: error,
            rejected: Vec::new(),
            rejections: Vec::new(),
        }))
    }

    /// Hands the trust bundles `update` accepted to the identity and to the control-plane
    /// channel, which verifies the control plane against anchors ∪ this bundle from its next
    /// connection on (so a CA rotation does not cut the proxy off). A bundle they refuse is
    /// rejected like any invalid resource.
    fn apply_trust_bundles(&self, response: &v1::DiscoveryResponse, update: &mut Update) {
        for r in &response.resources {
            let (Some(k), Some(Payload::TrustBundle(b))) = (&r.key, &r.payload) else {
                continue;
            };
            let key = (k.r#type, k.name.clone());
            if update.rejected.iter().any(|x| x.key == key) {
                continue;
            }
            let applied = match &self.d.identity {
                Some(identity) => identity.set_trust_bundle(&b.roots_pem),
                None => Ok(()),
            }
            .and_then(|()| self.d.control_plane.set_trust_bundle(&b.roots_pem));
            if let Err(error) = applied {
                update.reject(&self.resources, &key, error);
            }
        }
    }

    fn record_bindings(&self, answered: &[Key]) {
        let mut bindings = lock(&self.d.bindings);
        for (t, name) in answered
            .iter()
            .filter(|(t, _)| *t == ResourceType::Address as i32)
        {
            let Ok(addr) = name.parse::<SocketAddr>() else {
                continue;
            };
            let binding = match self.resources.get(&(*t, name.clone())) {
                Some(Payload::Address(b)) if !b.service.is_empty() => Some((
                    b.service.clone(),
                    u16::try_from(b.service_port).unwrap_or(addr.port()),
                )),
                _ => None,
            };
            bindings.insert(addr, binding);
        }
    }

    /// Wakes waiters whose keys are answered; a service counts as answered once its route's
    /// backends are answered too, so the first request already sees the whole split.
    fn notify(&self) {
        let answers = lock(&self.d.answers);
        for (key, tx) in answers.iter() {
            if *tx.borrow() || !self.answered.contains(key) {
                continue;
            }
            if key.0 == ResourceType::Service as i32 {
                let backends = self.resources.route_backends(&key.1);
                if backends.iter().any(|b| {
                    !self
                        .answered
                        .contains(&(ResourceType::Service as i32, b.clone()))
                }) {
                    continue;
                }
            }
            tx.send_replace(true);
        }
    }
}
