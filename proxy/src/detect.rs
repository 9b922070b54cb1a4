//! Protocol detection: read the client's first bytes, with a deadline, and classify them.
//!
//! TLS ClientHellos are parsed by rustls (SNI, ALPN). Bytes that can be the start of an HTTP/1
//! request (optional empty lines, then a method token and a space — or any prefix of that) are
//! HTTP/1 as soon as they are seen, however slowly the rest arrives, and so are bytes that match
//! the HTTP/2 preface so far: the HTTP layer then waits for the whole head (within
//! `SHOAL_HEADER_READ_TIMEOUT`) and answers a malformed one itself. Opaque TCP is only what
//! *cannot* be HTTP, or a client that says nothing before the deadline. So no caller reaches the
//! app with raw HTTP bytes (a forged `shoal-client-id`, say) by pausing, padding or splitting
//! its request — detection never downgrades HTTP, and never fails a connection.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most bytes detection buffers: a ClientHello fits in far less (HTTP is decided within a few
/// bytes).
const MAX_PEEK: usize = 16 * 1024 + 5;

/// What the client speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// A TLS ClientHello.
    Tls {
        /// Server name indication.
        sni: Option<String>,
        /// Offered ALPN protocols.
        alpn: Vec<String>,
        /// A handshake record rustls refused to take as a ClientHello it could serve (TLS 1.1 or
        /// older, a malformed hello): the alert rustls would answer with. Never mesh mTLS.
        refused: Option<Vec<u8>>,
    },
    /// Anything else, or nothing before the deadline.
    Opaque(OpaqueReason),
}

/// Why a connection is treated as opaque TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueReason {
    /// The bytes matched no known protocol.
    Unrecognised,
    /// The client sent nothing within the detection timeout (server-speaks-first, or idle).
    Timeout,
    /// The destination port is configured as server-speaks-first: detection skipped.
    Skipped,
    /// The client closed before sending anything.
    Closed,
}

impl Detected {
    /// The metric label for this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls { .. } => "tls",
            Detected::Opaque(OpaqueReason::Unrecognised | OpaqueReason::Closed) => "opaque",
            Detected::Opaque(OpaqueReason::Timeout) => "timeout",
            Detected::Opaque(OpaqueReason::Skipped) => "skipped",
        }
    }
}

/// Reads from `stream` until the protocol is known or `timeout` passes; returns the verdict and
/// the bytes read (to be replayed to whatever handles the connection).
pub async fn detect(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<(Detected, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) => {
                let verdict = match classify(&buf, true) {
                    Some(d) => d,
                    None => Detected::Opaque(OpaqueReason::Timeout),
                };
                return Ok((verdict, buf));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                let verdict = classify_closed(&buf);
                return Ok((verdict, buf));
            }
            Ok(Ok(_)) => {
                if let Some(verdict) = classify(&buf, buf.len() >= MAX_PEEK) {
                    return Ok((verdict, buf));
                }
            }
        }
    }
}

/// Classifies `buf`; `None` means more bytes are needed. With `final_call`, never `None`
/// unless the buffer is empty.
pub fn classify(buf: &[u8], final_call: bool) -> Option<Detected> {
    let first = *buf.first()?;
    if first == 0x16 {
        let need_more = |d: Detected| if final_call { Some(d) } else { None };
        return match client_hello(buf) {
            Ok(Some(d)) => Some(d),
            Ok(None) => need_more(Detected::Opaque(OpaqueReason::Unrecognised)),
            Err(()) => Some(Detected::Opaque(OpaqueReason::Unrecognised)),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return match (n, final_call) {
            (24, _) => Some(Detected::Http2),
            // A preface arriving slowly: HTTP/2 reads the rest (within its head's time limit).
            // Fewer bytes than "PRI " may as well start an HTTP/1 request; either way, HTTP.
            (4.., true) => Some(Detected::Http2),
            (_, true) => Some(Detected::Http1),
            (_, false) => None,
        };
    }
    match http1_start(buf) {
        Start::Yes => Some(Detected::Http1),
        Start::Maybe if final_call => Some(Detected::Http1),
        Start::Maybe => None,
        Start::No => Some(Detected::Opaque(OpaqueReason::Unrecognised)),
    }
}

/// Classifies everything a client sent before it closed its side. A request line that never
/// ended cannot be a request, so it is opaque here (unlike at the deadline, where more may come).
pub fn classify_closed(buf: &[u8]) -> Detected {
    if buf.is_empty() {
        return Detected::Opaque(OpaqueReason::Closed);
    }
    if buf[0] != 0x16 && http1_start(buf) == Start::Maybe {
        return Detected::Opaque(OpaqueReason::Unrecognised);
    }
    classify(buf, true).unwrap_or(Detected::Opaque(OpaqueReason::Unrecognised))
}

/// Whether bytes can be the start of an HTTP/1 request.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// A request line: HTTP/1, whatever its details (the HTTP layer checks them).
    Yes,
    /// A prefix of one, so far.
    Maybe,
    /// Not HTTP/1.
    No,
}

/// Any token is a method (RFC 9110 §9.1) and servers skip empty lines before the request line
/// (RFC 9112 §2.2): an application's HTTP parser may accept either, so both count here. A whole
/// first line is a request line when it names an `HTTP/` version after the method (checked
/// loosely: any case, anywhere), so a text protocol's command (`get key`) stays opaque; a first
/// line that has not ended yet can still become one.
fn http1_start(buf: &[u8]) -> Start {
    let Some(at) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return Start::Maybe;
    };
    let rest = &buf[at..];
    let Some(token) = rest.iter().position(|&b| !is_tchar(b)) else {
        return Start::Maybe;
    };
    if token == 0 || rest[token] != b' ' {
        return Start::No;
    }
    match memchr::memchr(b'\n', &rest[token..]) {
        None => Start::Maybe,
        Some(nl) if names_http_version(&rest[token..token + nl]) => Start::Yes,
        Some(_) => Start::No,
    }
}

fn names_http_version(line: &[u8]) -> bool {
    line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/"))
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a TLS ClientHello with rustls. `Ok(None)`: incomplete; `Err`: not TLS.
fn client_hello(buf: &[u8]) -> Result<Option<Detected>, ()> {
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Err(());
    }
    if buf.len() < 5 {
        return Ok(None);
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + record_len {
        return Ok(None);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = buf;
    acceptor.read_tls(&mut rd).map_err(|_| ())?;
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Ok(Some(Detected::Tls {
                sni: hello.server_name().map(str::to_string),
                alpn: hello
                    .alpn()
                    .map(|it| {
                        it.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
                refused: None,
            }))
        }
        // A ClientHello spanning several records: good enough to call it TLS.
        Ok(None) => Ok(Some(Detected::Tls {
            sni: None,
            alpn: Vec::new(),
            refused: None,
        })),
        // A well-framed handshake record whose hello rustls will not serve (TLS 1.1 and older).
        Err((_, mut alert)) => {
            let mut bytes = Vec::new();
            let _ = alert.write(&mut bytes);
            Ok(Some(Detected::Tls {
                sni: None,
                alpn: Vec::new(),
                refused: Some(bytes),
            }))
        }
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
