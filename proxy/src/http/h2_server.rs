//! The downstream HTTP/2 server, on the `h2` crate directly.
//!
//! Every stream's request runs inside the connection's own task (a `FuturesUnordered` polled
//! alongside `accept`), not in a task of its own as with hyper's server: one task per connection,
//! whatever the number of streams. Each stream answers with [`forward::handle`]'s response: the
//! head, then the body piped with flow control and trailers (gRPC's `grpc-status`). A client's
//! RST_STREAM drops the stream's future, which resets the upstream stream in turn. Draining sends
//! GOAWAY and lets streams in flight finish.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Request, header};
use http_body::Body;
use std::task::Poll;
use tokio::time::Instant;

use super::body::RequestBody;
use super::h2body::{Pipe, PipeEnd, RecvBody};
use super::{Conn, forward};
use crate::drain;
use crate::io::{Gated, ProxyIo, WakeGate};

/// Keep-alive: a PING this often ...
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// ... and the connection is closed when its PONG takes longer than this.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

// hyper's HTTP/2 server defaults, kept.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONN_WINDOW: u32 = 1024 * 1024;
const MAX_SEND_BUF: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves HTTP/2 on `io` until the client is done, or draining has finished the streams in flight.
pub async fn serve(conn: Arc<Conn>, io: ProxyIo, mut drain: drain::Watch) {
    let cfg = &conn.shared.config.http;
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUF)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_streams(cfg.h2_max_concurrent_streams)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .handshake::<_, Bytes>(io);
    let mut h2conn = tokio::select! {
        res = handshake => match res {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(client = %conn.client, error = %e, "HTTP/2 handshake with the client failed");
                return;
            }
        },
        _ = drain.signaled() => return,
        // The preface and SETTINGS are the connection's head: they get the head's time limit.
        _ = tokio::time::sleep(cfg.header_read_timeout) => {
            tracing::debug!(client = %conn.client, "closing: the HTTP/2 preface did not arrive within SHOAL_HEADER_READ_TIMEOUT");
            return;
        }
    };
    let mut pinger = h2conn.ping_pong();
    let mut timer = pin!(tokio::time::sleep(PING_INTERVAL));
    let mut awaiting_pong = false;
    let mut streams = FuturesUnordered::new();
    let mut accepting = true;
    // Gated: the connection wakes this task for every frame, these rarely (io::gated).
    let mut signaled = pin!(Gated::new(drain.signaled()));
    let mut ping_gate = WakeGate::default();
    let mut draining = false;
    // The streams' response deadlines (`deadline::StreamDeadlines`): one timer, running while any
    // is armed, at the earliest deadline and at least once a tick.
    let tick = super::loop_tick(cfg);
    let mut deadline_timer = pin!(tokio::time::sleep(tick));
    let mut deadline_gate = WakeGate::default();
    let mut deadline_running = false;
    let deadlines = conn.stream_deadlines.as_ref();
    let conn: &Conn = &conn;
    // One hand-written poll rather than a `select!` loop: every wake-up first runs the streams
    // that are ready, then polls the connection once, so the frames they queued leave together
    // in one write (a `select!` iteration per finished stream cost a flush each).
    let end = poll_fn(|cx| {
        if !draining && signaled.as_mut().poll(cx).is_ready() {
            // GOAWAY: streams in flight finish, no new ones start.
            draining = true;
            h2conn.graceful_shutdown();
        }
        if awaiting_pong
            && let Some(p) = pinger.as_mut()
            && let Poll::Ready(pong) = p.poll_pong(cx)
        {
            if pong.is_err() {
                return Poll::Ready(End::PingFailed);
            }
            awaiting_pong = false;
            timer.as_mut().reset(Instant::now() + PING_INTERVAL);
        }
        while ping_gate.poll(cx, |cx| timer.as_mut().poll(cx)).is_ready() {
            if awaiting_pong {
                return Poll::Ready(End::PingTimeout);
            }
            let sent = pinger.as_mut().map(|p| p.send_ping(h2::Ping::opaque()));
            awaiting_pong = matches!(sent, Some(Ok(())));
            let next = if awaiting_pong {
                PING_TIMEOUT
            } else {
                PING_INTERVAL
            };
            timer.as_mut().reset(Instant::now() + next);
            if awaiting_pong {
                // Register for the PONG.
                if let Some(Poll::Ready(Err(_))) = pinger.as_mut().map(|p| p.poll_pong(cx)) {
                    return Poll::Ready(End::PingFailed);
                }
            }
        }
        if deadline_running {
            while deadline_gate
                .poll(cx, |cx| deadline_timer.as_mut().poll(cx))
                .is_ready()
            {
                // Expired streams are woken, and answered by the stream loop below.
                let now = Instant::now();
                match deadlines.and_then(|d| d.check(now)) {
                    Some(next) => deadline_timer.as_mut().reset(next.min(now + tick)),
                    None => {
                        deadline_running = false;
                        break;
                    }
                }
            }
        }
        let polled = loop {
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if !accepting {
                break if streams.is_empty() {
                    Poll::Ready(End::Closed)
                } else {
                    Poll::Pending
                };
            }
            match h2conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    // Boxed: `FuturesUnordered` keeps a stub task sized for its future type
                    // for the connection's whole life; unboxed, every HTTP/2 connection, idle or
                    // not, held ~4 KB for it (BENCHMARKS.md, session 8).
                    streams.push(Box::pin(serve_stream(conn, req, respond)));
                }
                Poll::Ready(Some(Err(e))) => break Poll::Ready(End::Error(e)),
                // The connection is closed (GOAWAY exchanged, or the client left).
                Poll::Ready(None) => accepting = false,
                Poll::Pending => break Poll::Pending,
            }
        };
        // Streams polled just now may have armed the first deadline.
        if polled.is_pending() && !deadline_running && deadlines.is_some_and(|d| d.any_armed()) {
            deadline_running = true;
            deadline_timer.as_mut().reset(Instant::now() + tick);
            let _ = deadline_gate.poll(cx, |cx| deadline_timer.as_mut().poll(cx));
        }
        polled
    })
    .await;
    match end {
        End::Closed => {}
        End::Error(e) => connection_error(conn, &e),
        End::PingTimeout => {
            tracing::debug!(client = %conn.client, "HTTP/2 client did not answer a PING within {PING_TIMEOUT:?}; closed the connection");
        }
        End::PingFailed => {
            tracing::debug!(client = %conn.client, "HTTP/2 keep-alive PING failed; closed the connection");
        }
    }
}

/// Why a downstream HTTP/2 connection's loop ended.
enum End {
    Closed,
    Error(h2::Error),
    PingTimeout,
    PingFailed,
}

/// Answers one stream: forwards the request, then sends the response head and pipes its body.
async fn serve_stream(conn: &Conn, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, recv) = req.into_parts();
    let body = RequestBody::H2(RecvBody::new(recv, &parts.headers));
    let req = Request::from_parts(parts, body);
    let max_headers = conn.shared.config.http.max_headers;
    let resp = if req.headers().len() > max_headers {
        forward::reject_too_many_headers(conn, req, max_headers)
    } else {
        let handle = pin!(forward::handle(conn, req));
        // A client RST_STREAM ends the exchange: dropping `handle` resets the upstream stream.
        let reset = poll_fn(|cx| respond.poll_reset(cx));
        match futures_util::future::select(handle, pin!(reset)).await {
            futures_util::future::Either::Left((resp, _)) => resp,
            futures_util::future::Either::Right(_) => return,
        }
    };
    // No connection-specific fields here (the h2 crate would refuse the head): forward::handle
    // strips them from forwarded responses, and respond::error adds none for HTTP/2 clients.
    let (mut parts, body) = resp.into_parts();
    // One pass over the few fields of a response rather than a hash lookup for each name.
    let (mut has_date, mut has_length) = (false, false);
    for name in parts.headers.keys() {
        has_date |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
    }
    // A forwarded response without a Date gets one (RFC 9110 §6.6.1), as hyper's servers do.
    if !has_date {
        parts.headers.insert(header::DATE, date_now());
    }
    let eos = body.is_end_stream();
    // A body of known length announces it (as hyper's server did), e.g. for an HTTP/1 upstream's
    // chunked-free response read to its end.
    if !eos
        && !has_length
        && let Some(len) = body.size_hint().exact()
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let tx = match respond.send_response(http::Response::from_parts(parts, ()), eos) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(client = %conn.client, error = %e, "could not send a response head to the HTTP/2 client");
            return;
        }
    };
    if eos {
        return;
    }
    let mut pipe = Pipe::new(body, tx);
    if let PipeEnd::BodyFailed(e) = poll_fn(|cx| pipe.poll_pipe(cx)).await {
        tracing::debug!(client = %conn.client, error = %e, "response body failed mid-stream; the client's stream was reset");
    }
}

/// The current time as a `date` value, formatted at most once a second (per thread: the
/// runtime is single-threaded by default).
fn date_now() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|cache| match cache {
        Some((at, value)) if *at == secs => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *cache = Some((secs, value.clone()));
            value
        }
    })
}

/// Logs a downstream HTTP/2 connection that ended with an error (a protocol violation by the
/// client, a reset, an I/O error).
fn connection_error(conn: &Conn, err: &h2::Error) {
    if err.is_io() || err.is_go_away() && err.is_remote() {
        tracing::debug!(client = %conn.client, error = %err, "HTTP/2 client connection ended");
    } else {
        tracing::info!(client = %conn.client, direction = conn.direction.as_str(), error = %err, "HTTP/2 client connection closed on a protocol error");
    }
}
