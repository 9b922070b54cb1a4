//! A streamed gRPC response's outcome. A gRPC call that fails after its response began (a server
//! stream broken off, a unary call whose server sent its headers first) says so in its trailers,
//! after the head that metrics would otherwise count as a 200. So the response of a gRPC call
//! without a status in its head is counted when it ends: by the status in its trailers, as the
//! HTTP status it stands for (`errors::grpc::to_http`: OK 200, UNAVAILABLE 503, INTERNAL 500…);
//! a body that fails on the upstream's side as 502; one the client abandons as 499 (CANCELLED);
//! one that ends without a status as 500 (UNKNOWN, as the gRPC spec has the client see it). Its
//! span ends then too, with that gRPC status.

use std::fmt;
use std::task::Poll;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;

use super::h2body::BodyError;
use super::stack::GRPC_STATUS;
use crate::errors::grpc;

/// Called once, when the response ends, with the HTTP status it stood for and its gRPC status (none
/// when it ended without one).
pub(crate) type Report = Box<dyn FnOnce(StatusCode, Option<u8>) + Send>;

/// Watches a streamed gRPC response's frames for its status and reports it once (`Report`).
pub(crate) struct GrpcOutcome {
    report: Option<Report>,
}

/// nginx's "client closed request": what a call the client abandoned counts as (CANCELLED).
const CLIENT_CLOSED: u16 = 499;

impl GrpcOutcome {
    /// Reports through `report` when the response ends.
    pub(crate) fn new(report: Report) -> Self {
        Self {
            report: Some(report),
        }
    }

    /// Looks at what the body's poll returned; `ended`: the body is complete after it.
    pub(crate) fn polled(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, BodyError>>>,
        ended: bool,
    ) {
        let code = match polled {
            Poll::Pending => return,
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                // Trailers end a gRPC response.
                Some(trailers) => trailers
                    .get(&GRPC_STATUS)
                    .map(|v| grpc::parse(v.as_bytes())),
                None if ended => None,
                None => return,
            },
            Poll::Ready(None) => None,
            Poll::Ready(Some(Err(_))) => {
                self.finish(StatusCode::BAD_GATEWAY, None);
                return;
            }
        };
        let status = StatusCode::from_u16(grpc::to_http(code.unwrap_or(grpc::UNKNOWN)))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.finish(status, code);
    }

    fn finish(&mut self, status: StatusCode, code: Option<u8>) {
        if let Some(report) = self.report.take() {
            report(status, code);
        }
    }
}

impl Drop for GrpcOutcome {
    /// Dropped before its end: the client went away (or the stream was reset downstream).
    fn drop(&mut self) {
        if let Ok(status) = StatusCode::from_u16(CLIENT_CLOSED) {
            self.finish(status, Some(grpc::CANCELLED));
        }
    }
}

impl fmt::Debug for GrpcOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcOutcome")
            .field("reported", &self.report.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What an outcome reported: the HTTP status and the gRPC status.
    type Seen = Arc<Mutex<Vec<(u16, Option<u8>)>>>;

    fn watched() -> (GrpcOutcome, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let outcome = GrpcOutcome::new(Box::new(move |s: StatusCode, code| {
            into.lock().unwrap().push((s.as_u16(), code))
        }));
        (outcome, seen)
    }

    fn trailers(status: Option<&str>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut map = http::HeaderMap::new();
        if let Some(s) = status {
            map.insert("grpc-status", s.parse().unwrap());
        }
        Poll::Ready(Some(Ok(Frame::trailers(map))))
    }

    #[test]
    fn the_trailers_status_is_reported_once() {
        for (status, expected) in [
            (Some("0"), (200, Some(0))),
            (Some("14"), (503, Some(14))),
            (Some("13"), (500, Some(13))),
            (Some("5"), (404, Some(5))),
            (Some("x"), (500, Some(2))),
            (None, (500, None)),
        ] {
            let (mut outcome, seen) = watched();
            let data = Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"msg")))));
            outcome.polled(&data, false);
            assert!(seen.lock().unwrap().is_empty(), "a message is not the end");
            outcome.polled(&trailers(status), true);
            drop(outcome);
            assert_eq!(*seen.lock().unwrap(), [expected], "{status:?}");
        }
    }

    #[test]
    fn a_response_that_does_not_end_with_a_status_is_counted_by_how_it_ended() {
        let (mut outcome, seen) = watched();
        outcome.polled(&Poll::Ready(None), true);
        assert_eq!(
            *seen.lock().unwrap(),
            [(500, None)],
            "ended without trailers"
        );

        let (mut outcome, seen) = watched();
        let failed = Poll::Ready(Some(Err(BodyError::from("reset"))));
        outcome.polled(&failed, false);
        drop(outcome);
        assert_eq!(
            *seen.lock().unwrap(),
            [(502, None)],
            "the upstream's body failed"
        );

        let (mut outcome, seen) = watched();
        outcome.polled(&Poll::Pending, false);
        drop(outcome);
        assert_eq!(
            *seen.lock().unwrap(),
            [(499, Some(1))],
            "the client went away: CANCELLED"
        );
    }
}
