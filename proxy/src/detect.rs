//! Protocol detection: read the client's first bytes, with a deadline, and classify them.
//!
//! TLS ClientHellos are parsed by rustls (SNI, ALPN), HTTP/1 request lines by httparse; nothing
//! here parses a protocol by hand. A client that says nothing before the deadline, or says
//! something unrecognised, is opaque TCP — detection never fails a connection.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most bytes detection buffers: a request line or a ClientHello fits in far less.
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
                let verdict = if buf.is_empty() {
                    Detected::Opaque(OpaqueReason::Closed)
                } else {
                    classify(&buf, true).unwrap_or(Detected::Opaque(OpaqueReason::Unrecognised))
                };
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
    let need_more = |d: Detected| if final_call { Some(d) } else { None };
    if first == 0x16 {
        return match client_hello(buf) {
            Ok(Some(d)) => Some(d),
            Ok(None) => need_more(Detected::Opaque(OpaqueReason::Unrecognised)),
            Err(()) => Some(Detected::Opaque(OpaqueReason::Unrecognised)),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            need_more(Detected::Opaque(OpaqueReason::Unrecognised))
        };
    }
    http1(buf, final_call)
}

fn http1(buf: &[u8], final_call: bool) -> Option<Detected> {
    // A method is an upper-case token; anything else cannot start an HTTP/1 request.
    if !buf[0].is_ascii_uppercase() {
        return Some(Detected::Opaque(OpaqueReason::Unrecognised));
    }
    let Some(line_end) = memchr_newline(buf) else {
        let plausible = buf.iter().all(|b| (0x20..0x7f).contains(b));
        return if plausible && !final_call {
            None
        } else {
            Some(Detected::Opaque(OpaqueReason::Unrecognised))
        };
    };
    // Parse just the request line (plus the empty line httparse needs to finish a head).
    let mut line = Vec::with_capacity(line_end + 3);
    line.extend_from_slice(&buf[..=line_end]);
    line.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&line) {
        Ok(_) if req.version.is_some() => Some(Detected::Http1),
        _ => Some(Detected::Opaque(OpaqueReason::Unrecognised)),
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
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
mod tests;
