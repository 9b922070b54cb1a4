//! Clients: HTTP/1.1 and HTTP/2 (h2c prior knowledge) over one kept connection, and a raw
//! HTTP/1 connection for byte-exact requests and responses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::BoxError;

/// The request (and test response) body type: anything boxed.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A streamed body of `chunks` (no known length, so HTTP/1 sends it chunked), then `trailers`.
pub fn chunks(chunks: Vec<Bytes>, trailers: Option<HeaderMap>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, BoxError>(Frame::data(c)))
        .chain(trailers.map(|t| Ok(Frame::trailers(t))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// A streamed body fed through the returned sender; the body ends when the sender is dropped.
pub fn channel() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, BoxError>(f), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// A response with its body (and trailers) read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: StatusCode,
    /// HTTP version of the response.
    pub version: Version,
    /// Header fields.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailer fields, if any arrived.
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// Reads `resp`'s body and trailers to the end.
    pub async fn collect(resp: Response<Incoming>) -> Result<Self> {
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.context("reading the response body")?;
        let trailers = collected.trailers().cloned();
        Ok(Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// One header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request builder for `method uri` with a `Host` header (HTTP/1) when `host` is given.
pub fn request(method: &str, uri: &str, host: Option<&str>) -> http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    match host {
        Some(h) => b.header(http::header::HOST, h),
        None => b,
    }
}

/// An HTTP/1.1 client on one TCP connection (requests are sent one after another on it).
pub struct H1Client {
    sender: http1::SendRequest<Body>,
    local: SocketAddr,
    _conn: AbortOnDrop<()>,
}

impl H1Client {
    /// Connects to `addr` and performs the (trivial) HTTP/1 handshake.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let local = stream.local_addr()?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake")?;
        let conn = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Self {
            sender,
            local,
            _conn: AbortOnDrop(conn),
        })
    }

    /// The client side's address (the proxy sees this as the peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `req` and returns the response head; the body streams.
    pub async fn send_streaming(&mut self, req: Request<Body>) -> Result<Response<Incoming>> {
        self.sender
            .ready()
            .await
            .context("the HTTP/1 connection is not ready")?;
        self.sender
            .send_request(req)
            .await
            .context("sending the HTTP/1 request")
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Resp> {
        let resp = self.send_streaming(req).await?;
        Resp::collect(resp).await
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Resp> {
        self.send(request("GET", path, Some(host)).body(empty())?)
            .await
    }
}

/// One `GET path` with `Host: host` on a new connection to `addr`.
pub async fn http1_get(addr: SocketAddr, host: &str, path: &str) -> Result<Resp> {
    H1Client::connect(addr).await?.get(host, path).await
}

/// An HTTP/2 client (h2c, prior knowledge) on one TCP connection; cheap to clone, every clone
/// opens streams on the same connection.
#[derive(Clone)]
pub struct H2Client {
    sender: http2::SendRequest<Body>,
    local: SocketAddr,
    queries: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<usize>>,
    _conn: std::sync::Arc<AbortOnDrop<()>>,
}

impl H2Client {
    /// Connects to `addr` and performs the HTTP/2 handshake (preface and SETTINGS).
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Self::connect_with(addr, false).await
    }

    /// [`Self::connect`]; with `trickled`, every byte the client sends goes out in small pieces
    /// with pauses between them ([`Trickle`]): the preface, SETTINGS, HEADERS and DATA frames
    /// all arrive split across many reads.
    pub async fn connect_with(addr: SocketAddr, trickled: bool) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let local = stream.local_addr()?;
        stream.set_nodelay(true)?;
        let io: Pin<Box<dyn Io>> = if trickled {
            Box::pin(Trickle::new(stream))
        } else {
            Box::pin(stream)
        };
        let (sender, mut conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .context("HTTP/2 handshake")?;
        // Drive the connection; answer questions about the server's SETTINGS (only the
        // `Connection` knows them, and hyper's h2 client reads frames on another task).
        let (query_tx, mut queries) =
            tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<usize>>();
        let conn = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut conn => return,
                    Some(reply) = queries.recv() => {
                        let _ = reply.send(conn.current_max_send_streams());
                    }
                }
            }
        });
        Ok(Self {
            sender,
            local,
            queries: query_tx,
            _conn: std::sync::Arc::new(AbortOnDrop(conn)),
        })
    }

    /// The client side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connection's sender.
    pub fn sender(&self) -> &http2::SendRequest<Body> {
        &self.sender
    }

    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` as last seen by the connection
    /// (hyper's `Connection::current_max_send_streams()`).
    pub async fn current_max_send_streams(&self) -> usize {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.queries.send(tx).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Opens a stream for `req` (an absolute URI sets `:authority`) and returns the response
    /// head; the body streams.
    pub async fn send_streaming(&self, req: Request<Body>) -> Result<Response<Incoming>> {
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .context("the HTTP/2 connection is not ready")?;
        sender
            .send_request(req)
            .await
            .context("sending the HTTP/2 request")
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<Body>) -> Result<Resp> {
        let resp = self.send_streaming(req).await?;
        Resp::collect(resp).await
    }
}

/// A byte stream a client can speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A client stream whose writes go out in small pieces (1 to 7 bytes for the first 512 writes,
/// then up to 512), each followed by a 1 ms pause: a client that splits everything it sends
/// across many reads on the other side.
pub struct Trickle {
    inner: TcpStream,
    writes: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Trickle {
    /// Wraps `inner` (set TCP_NODELAY on it, so each piece is its own segment).
    pub fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            writes: 0,
            pause: None,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(p) = self.pause.as_mut() {
            ready!(p.as_mut().poll(cx));
            self.pause = None;
        }
        let piece = if self.writes < 512 {
            1 + self.writes % 7
        } else {
            512
        };
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..buf.len().min(piece)]))?;
        self.writes += 1;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Aborts a spawned task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response read byte by byte from a raw connection.
#[derive(Clone)]
pub struct RawResponse {
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    /// Status code.
    pub status: u16,
    /// Header fields as received (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the body was chunked on the wire.
    pub chunked: bool,
    /// Trailer fields of a chunked body (names lower-cased).
    pub trailers: Vec<(String, String)>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("minor_version", &self.minor_version)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("chunked", &self.chunked)
            .field("trailers", &self.trailers)
            .finish()
    }
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw TCP connection speaking HTTP/1 by hand: write exact bytes, parse exact responses.
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// How long raw reads wait by default before failing.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Writes all of `data`.
    pub async fn write(&mut self, data: impl AsRef<[u8]>) -> Result<()> {
        self.stream.write_all(data.as_ref()).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes `data` in pieces cut at the offsets `cuts` (ascending), pausing `pause` after each
    /// piece, so each arrives on its own (TCP_NODELAY is on): a client splitting its request
    /// across reads, or stalling in the middle of it.
    pub async fn write_in_pieces(
        &mut self,
        data: impl AsRef<[u8]>,
        cuts: &[usize],
        pause: Duration,
    ) -> Result<()> {
        let data = data.as_ref();
        let mut start = 0;
        for &cut in cuts.iter().filter(|&&c| c > 0 && c < data.len()) {
            self.write(&data[start..cut]).await?;
            tokio::time::sleep(pause).await;
            start = cut;
        }
        self.write(&data[start..]).await
    }

    /// Shuts down the write half (the peer reads end of file).
    pub async fn shutdown_write(&mut self) -> Result<()> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of file.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<usize> {
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!(
                "timed out; read so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads until `needle` has arrived; returns everything up to and including it.
    pub async fn read_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = find(&self.buf, needle) {
                return Ok(self.buf.split_to(pos + needle.len()).to_vec());
            }
            if self.fill(deadline).await? == 0 {
                bail!(
                    "end of file before {:?}; read: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Reads one response; `head_request` says the request was HEAD (no body follows).
    pub async fn read_response(&mut self, head_request: bool) -> Result<RawResponse> {
        self.read_response_within(head_request, RAW_TIMEOUT).await
    }

    /// [`Self::read_response`] with an explicit timeout.
    pub async fn read_response_within(
        &mut self,
        head_request: bool,
        timeout: Duration,
    ) -> Result<RawResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let head = self.read_until(b"\r\n\r\n", timeout).await?;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        parsed
            .parse(&head)
            .with_context(|| format!("parsing {:?}", String::from_utf8_lossy(&head)))?;
        let status = parsed.code.ok_or_else(|| anyhow!("no status"))?;
        let minor_version = parsed.version.unwrap_or(1);
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let mut resp = RawResponse {
            minor_version,
            status,
            headers,
            body: Vec::new(),
            chunked: false,
            trailers: Vec::new(),
        };
        let no_body =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        if no_body {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.chunked = true;
            loop {
                let line = self.read_line(deadline).await?;
                let size_text = line.split(';').next().unwrap_or("").trim().to_string();
                let size = usize::from_str_radix(&size_text, 16)
                    .with_context(|| format!("bad chunk size line {line:?}"))?;
                if size == 0 {
                    loop {
                        let t = self.read_line(deadline).await?;
                        if t.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = t.split_once(':') {
                            resp.trailers
                                .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    return Ok(resp);
                }
                while self.buf.len() < size + 2 {
                    if self.fill(deadline).await? == 0 {
                        bail!("end of file inside a chunk");
                    }
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.advance(size + 2);
            }
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.trim().parse().context("content-length")?;
            while self.buf.len() < len {
                if self.fill(deadline).await? == 0 {
                    bail!("end of file after {} of {len} body bytes", self.buf.len());
                }
            }
            resp.body = self.buf.split_to(len).to_vec();
            return Ok(resp);
        }
        // Close-delimited.
        while self.fill(deadline).await? > 0 {}
        resp.body = self.buf.split().to_vec();
        Ok(resp)
    }

    async fn read_line(&mut self, deadline: tokio::time::Instant) -> Result<String> {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = self.read_until(b"\r\n", timeout).await?;
        Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
    }

    /// Reads until end of file and returns what arrived; fails if the peer keeps the connection
    /// open past `timeout`. A reset counts as closed.
    pub async fn read_to_close(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.fill(deadline).await {
                Ok(0) => return Ok(self.buf.split().to_vec()),
                Ok(_) => {}
                Err(e) => {
                    if let Some(io) = e.downcast_ref::<std::io::Error>()
                        && matches!(
                            io.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::BrokenPipe
                        )
                    {
                        return Ok(self.buf.split().to_vec());
                    }
                    return Err(e.context("the connection was not closed"));
                }
            }
        }
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
