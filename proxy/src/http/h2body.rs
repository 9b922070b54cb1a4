//! HTTP/2 bodies on the `h2` crate's streams: reading one (`RecvStream` as an [`http_body::Body`],
//! giving flow-control capacity back as data is consumed) and writing one (piping any body into a
//! `SendStream`, waiting for the peer's window, trailers included).
//!
//! Both the upstream client (`endpoint::http2`) and the downstream server (`http::h2_server`) use
//! them, so the proxy has one way of moving HTTP/2 data in each direction.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The error type of the proxy's bodies: whatever the stream below failed with (a hyper or an h2
/// error), boxed only when it happens.
pub type BodyError = Box<dyn StdError + Send + Sync>;

/// An HTTP/2 stream's received half as a body.
///
/// Capacity is released as soon as a chunk is handed on: backpressure comes from the consumer not
/// polling, exactly as with hyper's body.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    /// Bytes still to come, when the peer sent `content-length` (for the size hint: an HTTP/1
    /// downstream then gets a `Content-Length` instead of chunked framing).
    remaining: Option<u64>,
    state: RecvState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    Data,
    Trailers,
    Done,
}

impl RecvBody {
    /// Wraps `recv`; `headers` are the message's, read for `content-length`.
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = Self {
            recv,
            remaining,
            state: RecvState::Data,
        };
        // A message that ended with its head (most requests) is known to be empty from here on,
        // so later questions about its end need not ask the stream, which takes the connection's
        // lock. A body still owed bytes cannot have ended (the h2 crate checks the length).
        if !body.owed() && body.recv.is_end_stream() {
            body.state = RecvState::Done;
        }
        body
    }

    /// Bytes of an announced length are still to come.
    fn owed(&self) -> bool {
        self.remaining.is_some_and(|n| n > 0)
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if this.state == RecvState::Data {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The peer may send again what was just taken off its window.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = &mut this.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.state = RecvState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.state = RecvState::Trailers,
            }
        }
        if this.state == RecvState::Trailers {
            let polled = ready!(this.recv.poll_trailers(cx));
            this.state = RecvState::Done;
            return Poll::Ready(match polled {
                Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            });
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            RecvState::Done => true,
            // Asking the stream takes the connection's lock: only when the answer is open.
            _ => !self.owed() && self.recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // The announced length first: asking the stream takes the connection's lock.
        if let Some(n) = self.remaining {
            return SizeHint::with_exact(n);
        }
        if self.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        SizeHint::default()
    }
}

/// How piping a body into a stream ended.
#[derive(Debug)]
pub enum PipeEnd {
    /// Everything was handed to the stream, end of stream included.
    Done,
    /// The body failed (its sender went away, or sent something malformed): the stream was reset.
    BodyFailed(BodyError),
    /// The peer reset the stream, or the connection is gone: nothing more can be sent.
    Closed,
}

/// Pipes a body into an HTTP/2 stream: one chunk at a time, waiting until the peer's window has
/// room before reading more (so a slow peer slows the body's sender instead of filling memory).
///
/// A small body of announced length (most responses) goes out without reserving the peer's window
/// first: reserving costs the connection's lock four times per chunk, and the stream buffers at
/// most [`SMALL_BODY`] bytes beyond the window meanwhile.
#[derive(Debug)]
pub struct Pipe<B> {
    body: B,
    tx: SendStream<Bytes>,
    /// The whole body is at most [`SMALL_BODY`] bytes: no window reservation.
    small: bool,
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    /// A pipe from `body` into `tx`.
    pub fn new(body: B, tx: SendStream<Bytes>) -> Self {
        let small = body.size_hint().upper().is_some_and(|n| n <= SMALL_BODY);
        Self { body, tx, small }
    }

    /// Moves what is ready; `Ready` once the body is done or the stream cannot take more.
    pub fn poll_pipe(&mut self, cx: &mut Context<'_>) -> Poll<PipeEnd> {
        loop {
            if !self.small {
                // Ask for one byte: data already handed over counts against the window, so this
                // is "is there room beyond what is buffered" (the same idiom as hyper's pipe).
                self.tx.reserve_capacity(1);
                if self.tx.capacity() == 0 {
                    loop {
                        match ready!(self.tx.poll_capacity(cx)) {
                            Some(Ok(0)) => {}
                            Some(Ok(_)) => break,
                            Some(Err(_)) | None => return Poll::Ready(PipeEnd::Closed),
                        }
                    }
                } else if self.tx.poll_reset(cx).is_ready() {
                    return Poll::Ready(PipeEnd::Closed);
                }
            }
            let Poll::Ready(polled) = Pin::new(&mut self.body).poll_frame(cx) else {
                // Waiting on the body: a small one still hears of a reset (the reservation
                // above registered for it otherwise).
                if self.small && self.tx.poll_reset(cx).is_ready() {
                    return Poll::Ready(PipeEnd::Closed);
                }
                return Poll::Pending;
            };
            if let Some(end) = self.send(polled) {
                if !self.small {
                    self.tx.reserve_capacity(0);
                }
                return Poll::Ready(end);
            }
        }
    }

    /// Hands one polled frame of the body to the stream; how the pipe ended, if it did.
    fn send(&mut self, polled: Option<Result<Frame<Bytes>, B::Error>>) -> Option<PipeEnd> {
        let frame = match polled {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let e: BodyError = e.into();
                self.tx.send_reset(reset_reason(&*e));
                return Some(PipeEnd::BodyFailed(e));
            }
            None => {
                return Some(match self.tx.send_data(Bytes::new(), true) {
                    Ok(()) => PipeEnd::Done,
                    Err(_) => PipeEnd::Closed,
                });
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let eos = self.body.is_end_stream();
                if self.tx.send_data(data, eos).is_err() {
                    return Some(PipeEnd::Closed);
                }
                eos.then_some(PipeEnd::Done)
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok()?;
                Some(match self.tx.send_trailers(trailers) {
                    Ok(()) => PipeEnd::Done,
                    Err(_) => PipeEnd::Closed,
                })
            }
        }
    }
}

/// The largest body [`Pipe`] sends without reserving window first (one default-sized frame).
const SMALL_BODY: u64 = 16 * 1024;

/// The RST_STREAM code for a failed body: the HTTP/2 reason it carries (a client's CANCEL is
/// passed on as CANCEL), else INTERNAL_ERROR.
fn reset_reason(err: &(dyn StdError + 'static)) -> h2::Reason {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return r;
        }
        cur = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}
