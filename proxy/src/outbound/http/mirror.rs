//! The mirror stage: a `Mirror` copies a share of the requests to a service to a shadow service
//! (parallel run), and compares the shadow's answer with the primary's — status, the configured
//! header subset, a hash of the body — counting match / mismatch (and which part differed) /
//! failed / skipped per route.
//!
//! The client only ever sees the primary: the copy is sent from a task of its own through the
//! same machinery as any outbound request to the shadow (`shadow_stack`: timeout, backend policy,
//! balancer, pooled connections, mTLS), and nothing of the primary waits for it. The primary's
//! request body is copied as it streams (`http::tee`, up to the replay limit: a larger one is not
//! mirrored) and its response body hashed as it streams to the client (`http::digest`): no
//! buffering, no added latency. Copies in flight are bounded per proxy
//! (`SHOAL_MIRROR_MAX_IN_FLIGHT`); over it a copy is skipped, never queued, so a slow shadow never
//! holds the primary back. The copy carries `shoal-mirror: 1` and the shadow's own authority.
//!
//! A service without a mirror costs one branch.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body::Body as _;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::route::Routed;
use super::split::Backend;
use crate::app::Shared;
use crate::http::Conn;
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::digest::{BodySum, Hashing, Observer};
use crate::http::replay::MAX_REPLAY_BYTES;
use crate::http::stack::{Exchange, Layer, Req, Service};
use crate::http::tee::{Copied, TeeBody};
use crate::metrics::MirrorMetrics;
use crate::state::Service as MeshService;

/// Marks a copy, so the shadow can tell mirrored traffic from real traffic.
pub(crate) static MIRROR_HEADER: HeaderName = HeaderName::from_static("shoal-mirror");

/// How long a copy and its comparison may take when neither the route rule's timeout nor
/// `SHOAL_RESPONSE_TIMEOUT` bounds it: a copy's slot under the in-flight cap is always returned.
const UNBOUNDED_LIMIT: Duration = Duration::from_secs(30);

/// The stage; `shadow` is the stack copies are sent through.
#[derive(Debug)]
pub(super) struct Mirror<S, M> {
    inner: S,
    shadow: Arc<M>,
}

/// Puts [`Mirror`] above a stage.
#[derive(Debug)]
pub(super) struct MirrorLayer<M>(Arc<M>);

impl<M> MirrorLayer<M> {
    /// Copies go through `shadow`.
    pub(super) fn new(shadow: M) -> Self {
        Self(Arc::new(shadow))
    }
}

impl<S, M> Layer<S> for MirrorLayer<M> {
    type Service = Mirror<S, M>;

    fn layer(&self, inner: S) -> Mirror<S, M> {
        Mirror {
            inner,
            shadow: self.0.clone(),
        }
    }
}

/// Whether a request falls in the `percent` share.
fn hit(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

impl<'c, S, M> Service<Req<'c, Routed>> for Mirror<S, M>
where
    S: Service<Req<'c, Routed>> + Sync,
    M: for<'a> Service<Req<'a, Backend>> + Send + Sync + 'static,
{
    async fn call(&self, req: Req<'c, Routed>) -> Exchange {
        let Some(percent) = req.target.service.mirror.get().map(|m| m.percent) else {
            return self.inner.call(req).await;
        };
        // An upgrade's bytes after the switch are a conversation, not a request to replay.
        if req.upgrade || !hit(percent) {
            return self.inner.call(req).await;
        }
        // Boxed: only mirrored requests pay for the copy's state.
        Box::pin(mirrored(&self.inner, &self.shadow, req)).await
    }
}

/// Why a copy was not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    InFlightLimit,
    BodyTooLarge,
    PrimaryIncomplete,
}

/// How a copy went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Match,
    Mismatch {
        status: bool,
        header: bool,
        body: bool,
    },
    Failed,
    Skipped(Skip),
}

impl Outcome {
    fn count(self, m: &MirrorMetrics) {
        match self {
            Outcome::Match => m.matched.increment(1),
            Outcome::Mismatch {
                status,
                header,
                body,
            } => {
                m.mismatched.increment(1);
                for (differs, counter) in
                    [(status, &m.status), (header, &m.header), (body, &m.body)]
                {
                    if differs {
                        counter.increment(1);
                    }
                }
            }
            Outcome::Failed => m.failed.increment(1),
            Outcome::Skipped(why) => {
                m.skipped.increment(1);
                match why {
                    Skip::InFlightLimit => m.in_flight_limit.increment(1),
                    Skip::BodyTooLarge => m.body_too_large.increment(1),
                    Skip::PrimaryIncomplete => m.primary_incomplete.increment(1),
                }
            }
        }
    }
}

/// What a response head is compared by: its status and the compared headers' values.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: StatusCode,
    headers: Vec<Vec<HeaderValue>>,
}

impl Head {
    fn of(status: StatusCode, headers: &HeaderMap, names: &[HeaderName]) -> Self {
        Self {
            status,
            headers: names
                .iter()
                .map(|n| headers.get_all(n).iter().cloned().collect())
                .collect(),
        }
    }
}

/// The primary's answer, once its head arrived; its body's sum follows.
struct Primary {
    head: Head,
    body: oneshot::Receiver<BodySum>,
}

/// A place under `SHOAL_MIRROR_MAX_IN_FLIGHT`, given back when dropped.
struct Slot(Arc<Shared>);

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        let max = shared.config.http.mirror_max_in_flight;
        if shared.mirrors_in_flight.fetch_add(1, Ordering::Relaxed) >= max {
            shared.mirrors_in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.mirrors_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `req` on, with a copy to the shadow on a task of its own.
async fn mirrored<'c, S, M>(inner: &S, stack: &Arc<M>, mut req: Req<'c, Routed>) -> Exchange
where
    S: Service<Req<'c, Routed>> + Sync,
    M: for<'a> Service<Req<'a, Backend>> + Send + Sync + 'static,
{
    let named = req.target.service.clone();
    let rule = req.target.rule_index();
    let Some(mirror) = named.mirror.get() else {
        return inner.call(req).await;
    };
    let metrics = mirror.metrics(rule);
    let shared = &req.conn.shared;
    let Some(slot) = Slot::take(shared) else {
        Outcome::Skipped(Skip::InFlightLimit).count(metrics);
        return inner.call(req).await;
    };
    let Some(shadow) = req.target.state.services.get(mirror.shadow).cloned() else {
        return inner.call(req).await;
    };
    let body = if req.http.body().is_end_stream() {
        None
    } else if req.http.body().size_hint().lower() > MAX_REPLAY_BYTES as u64 {
        Outcome::Skipped(Skip::BodyTooLarge).count(metrics);
        return inner.call(req).await;
    } else {
        let (tx, rx) = oneshot::channel();
        let original = std::mem::replace(req.http.body_mut(), RequestBody::Empty);
        *req.http.body_mut() = RequestBody::Tee(Box::new(TeeBody::new(original, tx)));
        Some(rx)
    };
    let timeout = req.target.rule().and_then(|r| r.timeout);
    let limit = timeout
        .or(shared.config.http.response_timeout)
        .unwrap_or(UNBOUNDED_LIMIT);
    let (primary_tx, primary) = oneshot::channel();
    let copy = Copy {
        conn: shadow_conn(req.conn),
        head: shadow_head(&req.http, &shadow),
        body,
        primary,
        deadline: req.start + limit,
        timeout,
        grpc: req.grpc,
        named: named.clone(),
        rule,
        shadow,
        slot,
    };
    tokio::spawn(copy.run(stack.clone()));
    let mut exchange = inner.call(req).await;
    let status = exchange.answer_status();
    if let Ok(resp) = &mut exchange.result {
        let (tx, body) = oneshot::channel();
        let head = Head::of(status, resp.headers(), &mirror.compare_headers);
        resp.body_mut().observe(Observer::new(tx));
        let _ = primary_tx.send(Primary { head, body });
    }
    exchange
}

/// A connection for the copy: the caller's, without its per-connection timers (the copy has
/// its own) — the copy outlives the request it was made from.
fn shadow_conn(conn: &Conn) -> Conn {
    Conn {
        shared: conn.shared.clone(),
        direction: conn.direction,
        client: conn.client,
        dst: None,
        version: conn.version,
        client_id: None,
        client_id_header: None,
        mtls_required: false,
        response_deadline: None,
        stream_deadlines: None,
    }
}

/// The copy's head: the request's, addressed to the shadow (its `name:port`, as an app calling
/// it would), marked with `shoal-mirror: 1`. `None` when the shadow's authority cannot form a
/// request target.
fn shadow_head(req: &Request<RequestBody>, shadow: &MeshService) -> Option<Request<()>> {
    let authority = Authority::try_from(shadow.authorities.first()?.as_str()).ok()?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = Uri::from_parts(parts).ok()?;
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head.headers_mut().remove(http::header::HOST);
    head.headers_mut()
        .insert(MIRROR_HEADER.clone(), HeaderValue::from_static("1"));
    Some(head)
}

/// One copy on its way to the shadow, and what it is compared with.
struct Copy {
    conn: Conn,
    head: Option<Request<()>>,
    /// The request body's copy, when the request has a body.
    body: Option<oneshot::Receiver<Copied>>,
    primary: oneshot::Receiver<Primary>,
    /// The copy and the comparison end by then (the route's timeout from the request's
    /// arrival).
    deadline: Instant,
    timeout: Option<Duration>,
    /// The request is a gRPC call (`Req::grpc`).
    grpc: bool,
    named: Arc<MeshService>,
    rule: Option<usize>,
    shadow: Arc<MeshService>,
    /// Held until the comparison is done.
    slot: Slot,
}

impl Copy {
    async fn run<M>(self, stack: Arc<M>)
    where
        M: for<'a> Service<Req<'a, Backend>> + Send + Sync + 'static,
    {
        let named = self.named.clone();
        let rule = self.rule;
        let outcome = self.compare(&*stack).await;
        if let Some(mirror) = named.mirror.get() {
            outcome.count(mirror.metrics(rule));
        }
    }

    async fn compare<M>(self, stack: &M) -> Outcome
    where
        M: for<'a> Service<Req<'a, Backend>> + Send + Sync,
    {
        let Copy {
            conn,
            head,
            body,
            primary,
            deadline,
            timeout,
            grpc,
            named,
            shadow,
            slot,
            ..
        } = self;
        let _slot = slot;
        let Some(mirror) = named.mirror.get() else {
            return Outcome::Failed;
        };
        let names = &mirror.compare_headers;
        let body = match body {
            None => RequestBody::Empty,
            Some(copied) => match tokio::time::timeout_at(deadline, copied).await {
                Ok(Ok(Copied::Body(b))) => RequestBody::Copied(b),
                Ok(Ok(Copied::TooLarge)) => return Outcome::Skipped(Skip::BodyTooLarge),
                _ => return Outcome::Skipped(Skip::PrimaryIncomplete),
            },
        };
        let Some(head) = head else {
            return Outcome::Failed;
        };
        let req = Req {
            conn: &conn,
            http: head.map(|()| body),
            start: Instant::now(),
            upgrade: false,
            deadline: None,
            grpc,
            target: Backend {
                metrics: shadow.metrics.clone(),
                service: shadow,
                timeout,
                faulty: None,
                retry: None,
                avoid: None,
            },
        };
        let theirs = tokio::time::timeout_at(deadline, async {
            let exchange = stack.call(req).await;
            // A Shoal proxy's gRPC answer compares as the error status it stands for.
            let status = exchange.answer_status();
            let resp = exchange.result.ok()?;
            let head = Head::of(status, resp.headers(), names);
            Some((head, hash(resp.into_body()).await?))
        })
        .await;
        let Ok(Some((their_head, their_body))) = theirs else {
            return Outcome::Failed;
        };
        let ours = tokio::time::timeout_at(deadline, async {
            let primary = primary.await.ok()?;
            let sum = primary.body.await.ok()?;
            Some((primary.head, sum))
        })
        .await;
        let Ok(Some((our_head, our_body))) = ours else {
            return Outcome::Skipped(Skip::PrimaryIncomplete);
        };
        let status = our_head.status != their_head.status;
        let header = our_head.headers != their_head.headers;
        let body = our_body != their_body;
        if status || header || body {
            Outcome::Mismatch {
                status,
                header,
                body,
            }
        } else {
            Outcome::Match
        }
    }
}

/// The shadow's body, read and hashed up to the cap; `None` when it fails.
async fn hash(mut body: ResponseBody) -> Option<BodySum> {
    let mut hashing = Hashing::default();
    while !hashing.full() {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(_)) => return None,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    hashing.update(data);
                }
            }
        }
    }
    Some(hashing.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_compare_status_and_the_named_headers_only() {
        let names = [HeaderName::from_static("content-type")];
        let mut a = HeaderMap::new();
        a.insert("content-type", HeaderValue::from_static("text/plain"));
        a.insert("date", HeaderValue::from_static("now"));
        let mut b = a.clone();
        b.insert("date", HeaderValue::from_static("later"));
        assert_eq!(
            Head::of(StatusCode::OK, &a, &names),
            Head::of(StatusCode::OK, &b, &names)
        );
        assert_ne!(
            Head::of(StatusCode::OK, &a, &names),
            Head::of(StatusCode::CREATED, &b, &names)
        );
        b.append("content-type", HeaderValue::from_static("text/html"));
        assert_ne!(
            Head::of(StatusCode::OK, &a, &names),
            Head::of(StatusCode::OK, &b, &names)
        );
    }
}
