//! A request body copied as it streams upstream, for the mirror stage (`outbound::http::mirror`):
//! the primary request reads the original as usual, and each data frame is also kept (up to the
//! replay limit, `http::replay`); once the body is complete the copy is handed over, to be sent
//! to the shadow. A body over the limit hands over nothing; the primary never waits for the copy.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::body::RequestBody;
use super::h2body::BodyError;
use super::replay::MAX_REPLAY_BYTES;

/// What the copy ends as.
#[derive(Debug)]
pub(crate) enum Copied {
    /// The whole body.
    Body(Box<CopiedBody>),
    /// The body was over [`MAX_REPLAY_BYTES`].
    TooLarge,
}

/// The original body, read by the primary request, with its copy on the side.
#[derive(Debug)]
pub struct TeeBody {
    inner: RequestBody,
    /// The copy so far and where it goes; `None` once handed over (or abandoned).
    copy: Option<(CopiedBody, oneshot::Sender<Copied>)>,
    /// Bytes in the copy.
    len: usize,
}

impl TeeBody {
    /// Copies `inner` as it is read; the copy goes to `tx` when complete.
    pub(crate) fn new(inner: RequestBody, tx: oneshot::Sender<Copied>) -> Self {
        Self {
            inner,
            copy: Some((CopiedBody::default(), tx)),
            len: 0,
        }
    }

    fn hand_over(&mut self) {
        if let Some((body, tx)) = self.copy.take() {
            let _ = tx.send(Copied::Body(Box::new(body)));
        }
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        // A body that is complete but was never polled to its end (its consumer saw
        // `is_end_stream`).
        if self.inner.is_end_stream() {
            self.hand_over();
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => return polled,
            Poll::Ready(None) => this.hand_over(),
            // The copy is abandoned: the sender dropped tells the mirror.
            Poll::Ready(Some(Err(_))) => this.copy = None,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.len + data.len() > MAX_REPLAY_BYTES {
                        if let Some((_, tx)) = this.copy.take() {
                            let _ = tx.send(Copied::TooLarge);
                        }
                    } else if let Some((copy, _)) = &mut this.copy {
                        this.len += data.len();
                        copy.data.push_back(data.clone());
                    }
                } else if let (Some(t), Some((copy, _))) = (frame.trailers_ref(), &mut this.copy) {
                    copy.trailers = Some(t.clone());
                }
                if this.inner.is_end_stream() {
                    this.hand_over();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete request body held in memory: the mirror's copy.
#[derive(Debug, Default)]
pub struct CopiedBody {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for CopiedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len: usize = self.data.iter().map(Bytes::len).sum();
        if self.trailers.is_none() {
            SizeHint::with_exact(len as u64)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(len as u64);
            hint
        }
    }
}
