//! The response body type: an upstream's streamed body, or a small body the proxy made.
//!
//! An enum rather than a boxed trait object, so no allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::endpoint::Release;

/// A response body flowing back to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream; `release` returns its connection to the pool at the end.
    Upstream {
        /// The upstream body.
        body: Incoming,
        /// Hands the HTTP/1 connection back once the body is complete.
        release: Option<Release>,
    },
    /// A body the proxy made (error explanations).
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// A proxy-made body.
    pub fn local(text: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(text.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, release } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let done = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if done && let Some(r) = release.take() {
                    r.release();
                }
                polled
            }
            ResponseBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
