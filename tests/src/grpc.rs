//! The gRPC test service (`proto/echo.proto`) and clients for it.
//!
//! [`GrpcBackend::start`] serves [`EchoService`] over h2c with hyper-util directly rather than
//! with `tonic::transport::Server`: tonic's server enforces `grpc-timeout` itself and answers
//! CANCELLED, while the `Slow` method here answers DEADLINE_EXCEEDED as gRPC servers in other
//! languages do. [`GrpcRecorder`] records every call's metadata and every cancelled call.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tonic::codegen::Service;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::client::AbortOnDrop;

/// The generated messages, client and server.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("shoal.test.v1");
}

pub use pb::echo_client::EchoClient;
use pb::{EchoRequest, EchoResponse};

/// One call as the server saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method name (`Unary`, `Slow`, ...).
    pub method: &'static str,
    /// Request metadata (HTTP/2 headers, e.g. `grpc-timeout`, `te`, `:authority` is not here).
    pub metadata: HeaderMap,
}

/// What the echo service saw: calls and cancellations.
#[derive(Debug, Default)]
pub struct GrpcRecorder {
    calls: Mutex<Vec<Call>>,
    cancelled: Mutex<Vec<&'static str>>,
    changed: Notify,
}

impl GrpcRecorder {
    /// Every call received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The methods whose handler (or response stream) was dropped before it finished, i.e. the
    /// calls the client cancelled.
    pub fn cancelled(&self) -> Vec<&'static str> {
        self.cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn call(&self, method: &'static str, metadata: &tonic::metadata::MetadataMap) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Call {
                method,
                metadata: metadata.clone().into_headers(),
            });
        self.changed.notify_waiters();
    }
}

/// Records a cancellation when dropped while still armed.
struct CancelGuard {
    recorder: Arc<GrpcRecorder>,
    method: &'static str,
    armed: bool,
}

impl CancelGuard {
    fn new(recorder: &Arc<GrpcRecorder>, method: &'static str) -> Self {
        Self {
            recorder: recorder.clone(),
            method,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.recorder
                .cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.method);
            self.recorder.changed.notify_waiters();
        }
    }
}

/// The echo service implementation.
#[derive(Debug, Clone)]
pub struct EchoService {
    recorder: Arc<GrpcRecorder>,
}

type BoxStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send + 'static>>;

/// Parses a `grpc-timeout` value (`<digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.recorder.call("Unary", req.metadata());
        let req = req.into_inner();
        if req.fail_code != 0 {
            return Err(Status::new(req.fail_code.into(), req.fail_message));
        }
        let mut resp = Response::new(EchoResponse {
            message: req.message,
            index: 0,
        });
        resp.metadata_mut()
            .insert("x-served-by", "echo".parse().expect("metadata value"));
        Ok(resp)
    }

    type ServerStreamStream = BoxStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        self.recorder.call("ServerStream", req.metadata());
        let req = req.into_inner();
        let message = req.message;
        let stream = futures_util::stream::iter(0..req.count).map(move |i| {
            Ok(EchoResponse {
                message: format!("{message}-{i}"),
                index: i,
            })
        });
        // A failure after the responses: its status in the trailers, after a 200 head.
        let failure =
            (req.fail_code != 0).then(|| Err(Status::new(req.fail_code.into(), req.fail_message)));
        Ok(Response::new(Box::pin(
            stream.chain(futures_util::stream::iter(failure)),
        )))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.recorder.call("ClientStream", req.metadata());
        let mut stream = req.into_inner();
        let mut messages = Vec::new();
        while let Some(msg) = stream.message().await? {
            messages.push(msg.message);
        }
        Ok(Response::new(EchoResponse {
            index: messages.len() as u32,
            message: messages.join(","),
        }))
    }

    type BidiStream = BoxStream;

    async fn bidi(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        self.recorder.call("Bidi", req.metadata());
        let stream = req.into_inner();
        let out = stream.enumerate().map(|(i, msg)| {
            msg.map(|m| EchoResponse {
                message: m.message,
                index: i as u32,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn slow(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.recorder.call("Slow", req.metadata());
        let guard = CancelGuard::new(&self.recorder, "Slow");
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let req = req.into_inner();
        let delay = Duration::from_millis(req.delay_ms);
        let result = match deadline {
            Some(limit) if limit < delay => {
                tokio::time::sleep(limit).await;
                Err(Status::deadline_exceeded(format!(
                    "Slow needs {delay:?}, the client allowed {limit:?}"
                )))
            }
            _ => {
                tokio::time::sleep(delay).await;
                Ok(Response::new(EchoResponse {
                    message: req.message,
                    index: 0,
                }))
            }
        };
        guard.disarm();
        result
    }

    async fn hang(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.recorder.call("Hang", req.metadata());
        let _guard = CancelGuard::new(&self.recorder, "Hang");
        std::future::pending::<()>().await;
        Err(Status::internal("unreachable"))
    }

    type HangStreamStream = BoxStream;

    async fn hang_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::HangStreamStream>, Status> {
        self.recorder.call("HangStream", req.metadata());
        let guard = CancelGuard::new(&self.recorder, "HangStream");
        let message = req.into_inner().message;
        let first =
            futures_util::stream::once(async move { Ok(EchoResponse { message, index: 0 }) });
        // The guard lives in the stream: dropped when the client's cancellation reaches us.
        let rest = futures_util::stream::unfold(guard, |guard| async move {
            std::future::pending::<()>().await;
            drop(guard);
            None::<(Result<EchoResponse, Status>, CancelGuard)>
        });
        Ok(Response::new(Box::pin(first.chain(rest))))
    }
}

/// The echo service on `127.0.0.1:0` (h2c), stopped when dropped.
pub struct GrpcBackend {
    addr: SocketAddr,
    recorder: Arc<GrpcRecorder>,
    _task: AbortOnDrop<()>,
}

impl GrpcBackend {
    /// Starts the service.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let recorder = Arc::new(GrpcRecorder::default());
        let server = pb::echo_server::EchoServer::new(EchoService {
            recorder: recorder.clone(),
        });
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let mut server = server.clone();
                        async move {
                            let resp: Result<_, Infallible> = server.call(req).await;
                            resp
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            recorder,
            _task: AbortOnDrop(task),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it saw.
    pub fn recorder(&self) -> &Arc<GrpcRecorder> {
        &self.recorder
    }

    /// Calls of `method` received so far.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.recorder
            .calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }
}

/// A tonic client over a standard tonic `Channel` to `http://{addr}`.
pub async fn client(addr: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URI")
        .connect()
        .await
        .expect("connecting the gRPC channel");
    EchoClient::new(channel)
}

/// A tonic client connected to `addr` (e.g. the proxy) whose requests carry `:authority`
/// `origin` (e.g. the backend, for the proxy's explicit outbound routing).
pub async fn client_with_origin(
    addr: SocketAddr,
    origin: &str,
) -> EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URI")
        .origin(origin.parse().expect("origin URI"))
        .connect()
        .await
        .expect("connecting the gRPC channel");
    EchoClient::new(channel)
}

/// A tonic client over a bare hyper HTTP/2 connection, without tonic's own client-side
/// deadline timer: a call with `grpc-timeout` waits for the server's verdict (tonic's channel
/// would end it locally with CANCELLED instead).
pub async fn client_without_local_deadline(addr: SocketAddr) -> EchoClient<H2Transport> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting");
    EchoClient::with_origin(
        h2_transport(stream).await,
        format!("http://{addr}").parse().expect("origin URI"),
    )
}

/// An HTTP/2 connection over `io` (TCP, or a TLS stream a test set up itself), for any tonic
/// client's `with_origin`.
pub async fn h2_transport<IO>(io: IO) -> H2Transport
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    H2Transport {
        sender,
        _conn: Arc::new(AbortOnDrop(task)),
    }
}

/// A tower service sending tonic requests on one hyper HTTP/2 connection.
#[derive(Clone)]
pub struct H2Transport {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    _conn: Arc<AbortOnDrop<()>>,
}

impl Service<http::Request<tonic::body::Body>> for H2Transport {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move { sender.send_request(req).await })
    }
}

/// A request stream fed through the returned sender (for client and bidi streaming calls).
pub fn request_stream() -> (
    mpsc::Sender<EchoRequest>,
    impl Stream<Item = EchoRequest> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ReceiverStream::new(rx))
}

/// An [`EchoRequest`] carrying `message`.
pub fn msg(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_string(),
        ..EchoRequest::default()
    }
}
