//! A request body that can be sent more than once: the retry stage gives every attempt a
//! [`ReplayBody`] over one shared original. What an attempt reads from the original is kept (up
//! to a limit) so the next attempt replays it before reading on; a body larger than the limit
//! streams on but can no longer be replayed ([`Replay::replayable`] turns false), and the retry
//! stage then stops retrying.
//!
//! Attempts run one after another (no hedging), so the original is read by one attempt at a time;
//! the lock is taken once per frame, only on routes with a retry policy.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::RequestBody;
use super::h2body::BodyError;
use crate::sync::lock;

/// The most request body bytes kept for a retry (Linkerd keeps 64 KiB too): a larger request is
/// sent once.
pub(crate) const MAX_REPLAY_BYTES: usize = 64 * 1024;

/// The shared original of a replayable body.
#[derive(Debug)]
pub(crate) struct Replay<B = RequestBody> {
    shared: Arc<Mutex<Shared<B>>>,
}

#[derive(Debug)]
struct Shared<B> {
    /// The original body; `None` once it ended.
    original: Option<B>,
    /// The data read so far, in order (complete while `replayable`).
    data: Vec<Bytes>,
    /// Bytes in `data`.
    len: usize,
    /// The original's trailers, once read.
    trailers: Option<HeaderMap>,
    /// Everything read so far is in `data`: a new attempt can start over.
    replayable: bool,
    /// The original failed: no attempt can complete.
    failed: bool,
    /// The size the original announced, for every attempt's size hint.
    hint: SizeHint,
}

/// One attempt's view of a [`Replay`]: the kept data first, then the rest of the original.
#[derive(Debug)]
pub struct ReplayBody<B = RequestBody> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Frames of `data` this attempt has replayed.
    pos: usize,
    /// This attempt has sent the trailers.
    trailers_sent: bool,
}

impl<B: Body> Replay<B> {
    /// Makes `body` replayable.
    pub(crate) fn new(body: B) -> Self {
        let hint = body.size_hint();
        let empty = body.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                original: (!empty).then_some(body),
                data: Vec::new(),
                len: 0,
                trailers: None,
                replayable: true,
                failed: false,
                hint,
            })),
        }
    }

    /// A body for the next attempt, or `None` when what an earlier attempt read was not kept
    /// (over [`MAX_REPLAY_BYTES`]) or the original failed.
    pub(crate) fn attempt(&self) -> Option<ReplayBody<B>> {
        let shared = lock(&self.shared);
        (shared.replayable && !shared.failed).then(|| ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: false,
        })
    }

    /// Whether another attempt could be sent.
    pub(crate) fn replayable(&self) -> bool {
        let shared = lock(&self.shared);
        shared.replayable && !shared.failed
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut shared = lock(&this.shared);
        if let Some(data) = shared.data.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        let Some(original) = shared.original.as_mut() else {
            // The original ended: its trailers (once), then the end.
            if !this.trailers_sent
                && let Some(t) = shared.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        };
        let polled = Pin::new(original).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.original = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.failed = true;
                shared.original = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if shared.replayable && shared.len + data.len() <= MAX_REPLAY_BYTES {
                            shared.len += data.len();
                            shared.data.push(data.clone());
                            this.pos += 1;
                        } else {
                            // Not kept: this attempt reads on, but no later one can start over.
                            shared.replayable = false;
                            shared.data = Vec::new();
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            shared.trailers = Some(trailers.clone());
                            this.trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    },
                };
                if shared.original.as_ref().is_some_and(Body::is_end_stream) {
                    shared.original = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.original.is_none()
            && self.pos >= shared.data.len()
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared).hint
    }
}

#[cfg(test)]
mod tests;
