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
use tokio::time::Instant;

use super::body::RequestBody;
use super::h2body::{Pipe, PipeEnd, RecvBody};
use super::{Conn, forward};
use crate::drain;
use crate::io::ProxyIo;

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
    };
    let mut pinger = h2conn.ping_pong();
    let mut timer = pin!(tokio::time::sleep(PING_INTERVAL));
    let mut awaiting_pong = false;
    let mut streams = FuturesUnordered::new();
    let mut accepting = true;
    let mut draining = false;
    while accepting || !streams.is_empty() {
        tokio::select! {
            accepted = poll_fn(|cx| h2conn.poll_accept(cx)), if accepting => match accepted {
                Some(Ok((req, respond))) => streams.push(serve_stream(&conn, req, respond)),
                Some(Err(e)) => {
                    connection_error(&conn, &e);
                    return;
                }
                // The connection is closed (GOAWAY exchanged, or the client left).
                None => accepting = false,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            _ = drain.signaled(), if !draining => {
                // GOAWAY: streams in flight finish, no new ones start.
                draining = true;
                h2conn.graceful_shutdown();
            }
            _ = timer.as_mut() => {
                if awaiting_pong {
                    tracing::debug!(client = %conn.client, "HTTP/2 client did not answer a PING within {PING_TIMEOUT:?}; closing the connection");
                    return;
                }
                match pinger.as_mut().map(|p| p.send_ping(h2::Ping::opaque())) {
                    Some(Ok(())) => {
                        awaiting_pong = true;
                        timer.as_mut().reset(Instant::now() + PING_TIMEOUT);
                    }
                    _ => timer.as_mut().reset(Instant::now() + PING_INTERVAL),
                }
            }
            pong = poll_fn(|cx| match pinger.as_mut() {
                Some(p) => p.poll_pong(cx),
                None => std::task::Poll::Pending,
            }), if awaiting_pong => {
                if pong.is_err() {
                    return;
                }
                awaiting_pong = false;
                timer.as_mut().reset(Instant::now() + PING_INTERVAL);
            }
        }
    }
}

/// Answers one stream: forwards the request, then sends the response head and pipes its body.
async fn serve_stream(conn: &Conn, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, recv) = req.into_parts();
    let body = RequestBody::H2(RecvBody::new(recv, &parts.headers));
    let req = Request::from_parts(parts, body);
    let resp = {
        let handle = pin!(forward::handle(conn, req));
        // A client RST_STREAM ends the exchange: dropping `handle` resets the upstream stream.
        let reset = poll_fn(|cx| respond.poll_reset(cx));
        match futures_util::future::select(handle, pin!(reset)).await {
            futures_util::future::Either::Left((resp, _)) => resp,
            futures_util::future::Either::Right(_) => return,
        }
    };
    let (mut parts, body) = resp.into_parts();
    // Connection-specific fields cannot be sent on HTTP/2 (the h2 crate refuses the head):
    // forward::handle strips hop-by-hop fields, but proxy-made responses may carry `connection`.
    parts.headers.remove(header::CONNECTION);
    let eos = body.is_end_stream();
    // A body of known length announces it (as hyper's server did), e.g. for an HTTP/1 upstream's
    // chunked-free response read to its end.
    if !eos
        && let Some(len) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
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

/// Logs a downstream HTTP/2 connection that ended with an error (a protocol violation by the
/// client, a reset, an I/O error).
fn connection_error(conn: &Conn, err: &h2::Error) {
    if err.is_io() || err.is_go_away() && err.is_remote() {
        tracing::debug!(client = %conn.client, error = %err, "HTTP/2 client connection ended");
    } else {
        tracing::info!(client = %conn.client, direction = conn.direction.as_str(), error = %err, "HTTP/2 client connection closed on a protocol error");
    }
}
