//! The gRPC demo: `greeter` serves `shoal.demo.Greeter/SayHello` over h2c, and the frontend calls it.
//!
//! gRPC on the wire is small enough to write by hand on hyper's HTTP/2 (a 5-byte frame header before
//! each protobuf message, `grpc-status` in the trailers), which spares the demo a `.proto` build step.
//! The messages are prost structs, so any gRPC client with this schema can call the greeter too:
//!
//! ```proto
//! service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpStream;

use super::http::CALL_TIMEOUT;

/// The one method the greeter serves.
pub(super) const SAY_HELLO: &str = "/shoal.demo.Greeter/SayHello";

/// `SayHello`'s request.
#[derive(Clone, PartialEq, Message)]
pub(super) struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `SayHello`'s reply.
#[derive(Clone, PartialEq, Message)]
pub(super) struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

type FrameResult = Result<Frame<Bytes>, Infallible>;

/// Serves one h2c connection as the greeter.
pub(super) async fn serve_greeter(stream: TcpStream) {
    let service = service_fn(|req: Request<Incoming>| async move {
        let frames = if req.uri().path() == SAY_HELLO {
            match read_message::<HelloRequest>(req.into_body()).await {
                Ok(hello) => {
                    let reply = HelloReply {
                        message: format!("hello {}, from greeter", hello.name),
                    };
                    vec![Ok(Frame::data(encode(&reply))), trailers("0", "")]
                }
                Err(e) => vec![trailers("3", &e)], // INVALID_ARGUMENT
            }
        } else {
            vec![trailers("12", "unknown method")] // UNIMPLEMENTED
        };
        let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Calls `SayHello` on `greeter` through the sidecar at `outbound` (h2c, `:authority greeter`).
pub(super) async fn say_hello(
    outbound: SocketAddr,
    name: &str,
    trace: Option<HeaderValue>,
) -> Result<String, String> {
    let call = async {
        let stream = TcpStream::connect(outbound)
            .await
            .map_err(|e| format!("cannot reach the sidecar at {outbound}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2 handshake with the sidecar: {e}"))?;
        tokio::spawn(conn);
        let body = encode(&HelloRequest {
            name: name.to_owned(),
        });
        // The authority names the service: that is how the sidecar routes it.
        let mut req = Request::post(format!("http://greeter{SAY_HELLO}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers");
        if let Some(trace) = trace {
            req = req.header("traceparent", trace);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        // A trailers-only answer carries grpc-status in the headers.
        let head = response.headers().clone();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let tail = collected.trailers().cloned().unwrap_or_default();
        let (code, message) = status_of(&tail)
            .or_else(|| status_of(&head))
            .unwrap_or_default();
        if code != "0" {
            return Err(format!("grpc-status {code}: {message}"));
        }
        decode::<HelloReply>(collected.to_bytes()).map(|reply| reply.message)
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
}

fn status_of(headers: &HeaderMap) -> Option<(String, String)> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some((
        value("grpc-status")?,
        value("grpc-message").unwrap_or_default(),
    ))
}

fn trailers(code: &'static str, message: &str) -> FrameResult {
    let mut map = HeaderMap::new();
    map.insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(message) = HeaderValue::from_str(message)
        && !message.is_empty()
    {
        map.insert("grpc-message", message);
    }
    Ok(Frame::trailers(map))
}

/// A gRPC length-prefixed message: flag 0 (not compressed), big-endian length, the protobuf bytes.
fn encode(message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.encoded_len());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(message.encoded_len()).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

fn decode<M: Message + Default>(mut bytes: Bytes) -> Result<M, String> {
    if bytes.len() < 5 {
        return Err(format!(
            "a gRPC message needs 5 header bytes, got {}",
            bytes.len()
        ));
    }
    if bytes.get_u8() != 0 {
        return Err("compressed messages are not supported".to_owned());
    }
    let len = bytes.get_u32() as usize;
    if bytes.len() != len {
        return Err(format!(
            "message of {} bytes, header says {len}",
            bytes.len()
        ));
    }
    M::decode(bytes).map_err(|e| format!("bad protobuf: {e}"))
}

async fn read_message<M: Message + Default>(body: Incoming) -> Result<M, String> {
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    decode(bytes)
}
