//! The body types: the response body (an upstream's streamed body, HTTP/1 or HTTP/2, or a small
//! body the proxy made) and the request body (whatever the downstream server produced).
//!
//! A struct over an enum rather than a boxed trait object, so no allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::digest::Observer;
use super::grpc_outcome::GrpcOutcome;
use super::h2body::{BodyError, Pipe, PipeEnd, RecvBody};
use super::replay::ReplayBody;
use super::tee::{CopiedBody, TeeBody};
use crate::endpoint::Release;
use crate::io::InFlight;

/// A request body on its way upstream: from hyper's HTTP/1 server or from the proxy's HTTP/2
/// server. One request path serves both.
#[derive(Debug)]
pub enum RequestBody {
    /// From hyper's HTTP/1 server.
    Http1(Incoming),
    /// From an HTTP/2 stream of [`super::h2_server`].
    H2(RecvBody),
    /// One attempt of a request the retry stage may send again ([`super::replay`]).
    Replay(ReplayBody),
    /// No body: a retried attempt of a request that had none.
    Empty,
    /// A body the mirror stage copies as it streams ([`super::tee`]).
    Tee(Box<TeeBody>),
    /// The mirror's copy of a request body ([`super::tee`]).
    Copied(Box<CopiedBody>),
    /// A small body the proxy made (a health check's gRPC request), sent in one frame.
    Bytes(Option<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            RequestBody::Replay(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Tee(b) => Pin::new(&mut **b).poll_frame(cx),
            RequestBody::Copied(b) => Pin::new(&mut **b).poll_frame(cx),
            RequestBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Http1(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
            RequestBody::Replay(b) => b.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Tee(b) => b.is_end_stream(),
            RequestBody::Copied(b) => b.is_end_stream(),
            RequestBody::Bytes(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Http1(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
            RequestBody::Replay(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Tee(b) => b.size_hint(),
            RequestBody::Copied(b) => b.size_hint(),
            RequestBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A response body flowing back to the client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// Keeps the downstream connection from being parked while the body streams.
    in_flight: Option<InFlight>,
    /// What watches the body on its way to the client, if anything does (boxed: a body nobody
    /// watches, the common case, stays small and pays one check per frame).
    watch: Option<Box<Watch>>,
}

/// What watches a response body as it streams.
#[derive(Debug, Default)]
struct Watch {
    /// Hashes it (a mirrored request's primary response).
    digest: Option<Observer>,
    /// Counts a streamed gRPC response by the status its trailers carry, when it ends.
    grpc: Option<GrpcOutcome>,
}

#[derive(Debug)]
enum Kind {
    /// Streamed from the upstream; `release` returns its connection to the pool at the end.
    Upstream {
        body: Incoming,
        release: Option<Release>,
    },
    /// Streamed from an upstream HTTP/2 stream; `request` pipes the rest of the request body
    /// upstream while the response streams (boxed: only requests with a body have one).
    H2 {
        body: RecvBody,
        request: Option<Box<Pipe<RequestBody>>>,
    },
    /// A body the proxy made (error explanations).
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// An upstream body; `release` hands its HTTP/1 connection back once the body is complete.
    pub fn upstream(body: Incoming, release: Option<Release>) -> Self {
        Self {
            kind: Kind::Upstream { body, release },
            in_flight: None,
            watch: None,
        }
    }

    /// An upstream HTTP/2 body; `request` is the request body still being sent, if any.
    pub fn h2(body: RecvBody, request: Option<Box<Pipe<RequestBody>>>) -> Self {
        Self {
            kind: Kind::H2 { body, request },
            in_flight: None,
            watch: None,
        }
    }

    /// No body at all (ends with the head: HTTP/2 sends the head with END_STREAM).
    pub fn empty() -> Self {
        Self {
            kind: Kind::Local(None),
            in_flight: None,
            watch: None,
        }
    }

    /// A proxy-made body.
    pub fn local(text: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Local(Some(text.into())),
            in_flight: None,
            watch: None,
        }
    }

    /// Ties the body's lifetime to a request in flight on the downstream connection.
    pub fn set_in_flight(&mut self, guard: InFlight) {
        self.in_flight = Some(guard);
    }

    /// Reports the gRPC status its trailers carry when it ends (`http::grpc_outcome`).
    pub(crate) fn report_grpc_outcome(&mut self, outcome: GrpcOutcome) {
        self.watch.get_or_insert_default().grpc = Some(outcome);
    }

    /// Hashes the body as it streams; `observer` gets the sum at its end.
    pub(crate) fn observe(&mut self, observer: Observer) {
        self.watch.get_or_insert_default().digest = Some(observer);
    }

    /// Shows what was polled to what watches the body.
    fn feed_watch(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, BodyError>>>) {
        if polled.is_pending() {
            return;
        }
        let ended = self.kind_ended();
        let Some(watch) = &mut self.watch else {
            return;
        };
        if let Some(d) = &mut watch.digest {
            match polled {
                Poll::Ready(Some(Err(_))) => d.fail(),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        d.data(data);
                    }
                    if ended {
                        d.end();
                    }
                }
                Poll::Ready(None) => d.end(),
                Poll::Pending => {}
            }
        }
        if let Some(grpc) = &mut watch.grpc {
            grpc.polled(polled, ended);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.watch.is_some()
            && self.kind_ended()
            && let Some(d) = self.watch.as_deref_mut().and_then(|w| w.digest.as_mut())
        {
            // A complete body hyper never polled (see below) was received whole.
            d.end();
        }
        // hyper never polls a body that is already complete (Content-Length: 0, 204, 304, HEAD):
        // such a connection is released here.
        if let Kind::Upstream { body, release } = &mut self.kind
            && body.is_end_stream()
            && let Some(r) = release.take()
        {
            r.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = this.poll_kind(cx);
        if this.watch.is_some() {
            this.feed_watch(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::H2 { body, .. } => body.size_hint(),
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl ResponseBody {
    fn kind_ended(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::H2 { body, .. } => body.is_end_stream(),
            Kind::Local(data) => data.is_none(),
        }
    }

    fn poll_kind(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Upstream { body, release } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let done = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if done && let Some(r) = release.take() {
                    r.release();
                }
                polled.map_err(BodyError::from)
            }
            Kind::H2 { body, request } => {
                // The request body (a client stream, bidirectional gRPC) moves whenever the
                // response is polled: no task of its own.
                if let Some(pipe) = request
                    && let Poll::Ready(end) = pipe.poll_pipe(cx)
                {
                    if let PipeEnd::BodyFailed(e) = &end {
                        tracing::debug!(error = %e, "request body failed while the response streamed; upstream stream reset");
                    }
                    *request = None;
                }
                Pin::new(body).poll_frame(cx).map_err(BodyError::from)
            }
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }
}
