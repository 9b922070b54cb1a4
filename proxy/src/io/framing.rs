//! The HTTP/1 request framing gate: every byte a client sends on an HTTP/1 connection passes
//! through it before hyper sees any of it.
//!
//! The gate finds the end of each request head, checks the complete head (httparse for the
//! syntax, then the framing rules an HTTP library would otherwise resolve silently: duplicate or
//! invalid `Content-Length`, `Transfer-Encoding` other than one final `chunked`, both at once,
//! more than one `Host`), and then follows the body's own framing (a length, or chunked encoding
//! with trailers) to the start of the next head. So hyper only ever receives heads that passed,
//! and the answer is the same however the client splits its bytes across reads: a check runs on
//! a whole head, never on what one read happened to contain. A head that fails never reaches
//! hyper; the proxy answers it itself ([`crate::io::ProxyIo`]).
//!
//! The gate is stricter than hyper (bare LF line ends, chunk lines), never looser: whatever it
//! passes, hyper frames the same way, so the two can never disagree about where a request ends.
//!
//! After a request that may switch protocols (`Upgrade`, `CONNECT`) the gate stops looking: the
//! bytes that follow belong to the new protocol if the upstream agrees, and the proxy closes
//! the connection after any other answer to such a request (`http::forward`), so they are
//! never read as another request.

use std::mem::MaybeUninit;

use crate::errors::{ProxyError, Reason};

/// Longest chunk extension accepted (hyper ignores extensions; a long one is only padding).
const MAX_CHUNK_EXT: u32 = 4096;
/// Header fields parsed on the stack; a larger `SHOAL_MAX_HEADERS` parses on the heap.
const STACK_HEADERS: usize = 128;

/// Where the gate is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Inside a body of known length: this many bytes remain.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// After a request that may switch protocols: not HTTP any more, or closed after its answer.
    Tunnel,
}

/// Where a chunked body is, byte by byte (RFC 9112 §7.1), except chunk data, skipped whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size's first digit.
    Start,
    /// In a chunk-size.
    Size(u64),
    /// Whitespace after a chunk-size.
    Space(u64),
    /// In a chunk extension: the size, and the extension's length so far.
    Ext(u64, u32),
    /// The LF ending the chunk-size line.
    SizeLf(u64),
    /// Chunk data: bytes remaining.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line); bytes of trailers so far.
    TrailerStart(u32),
    /// Inside a trailer line.
    Trailer(u32),
    /// The LF ending a trailer line.
    TrailerLf(u32),
    /// The LF of the final empty line.
    EndLf,
}

/// What the gate decided about the bytes it was shown.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// This many bytes from the start may go to hyper.
    pub(crate) pass: usize,
    /// What follows them.
    pub(crate) then: Then,
}

/// What follows the bytes that may pass.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Nothing, or the start of a head that is not complete yet: show it again with more bytes.
    More,
    /// A request head that fails a check: refuse it; nothing of it reaches hyper.
    RejectHead(Rejection),
    /// A request body whose framing is broken, after hyper got its head: end the stream there.
    RejectBody(Rejection),
}

/// Why the gate refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
}

impl Rejection {
    fn malformed(detail: impl Into<String>) -> Self {
        Self {
            reason: Reason::MalformedRequest,
            detail: detail.into(),
        }
    }

    /// As a proxy error (to answer with).
    pub(crate) fn to_error(&self) -> ProxyError {
        ProxyError::new(self.reason, self.detail.clone())
    }
}

/// The gate's state for one connection.
#[derive(Debug)]
pub(crate) struct RequestFraming {
    stage: Stage,
    /// `SHOAL_MAX_HEADER_BYTES`: the longest head accepted.
    max_head: u32,
    /// `SHOAL_MAX_HEADERS`.
    max_headers: u16,
    /// Bytes of the pending head already scanned for its end, so a head trickling in a byte at
    /// a time is not scanned again from its start on every read.
    scanned: u32,
    /// Where the line being scanned starts, within the pending head.
    line_start: u32,
    /// The pending head's request line has started (empty lines before it are skipped).
    started: bool,
    /// Where the stream goes when the current body ends: the next head, or a tunnel.
    after_body: Stage,
}

impl RequestFraming {
    /// A gate for a connection whose heads may have `max_headers` fields in `max_head` bytes.
    pub(crate) fn new(max_head: usize, max_headers: usize) -> Self {
        Self {
            stage: Stage::Head,
            max_head: u32::try_from(max_head).unwrap_or(u32::MAX),
            max_headers: u16::try_from(max_headers).unwrap_or(u16::MAX),
            scanned: 0,
            line_start: 0,
            started: false,
            after_body: Stage::Head,
        }
    }

    /// Whether the gate stopped looking (a protocol switch may have happened).
    pub(crate) fn is_tunnel(&self) -> bool {
        self.stage == Stage::Tunnel
    }

    /// Whether the gate is between requests or inside a head (not inside a body).
    pub(crate) fn at_head(&self) -> bool {
        self.stage == Stage::Head
    }

    /// Decides about `bytes`, the client's bytes that follow what already passed. A head that
    /// is not complete must be shown again, from its start, with the bytes that follow it.
    pub(crate) fn admit(&mut self, bytes: &[u8]) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match self.stage {
                Stage::Tunnel => return pass(bytes.len()),
                Stage::Head => match self.head(rest) {
                    Ok(Some((len, next))) => {
                        at += len;
                        self.stage = next;
                        self.scanned = 0;
                        self.line_start = 0;
                        self.started = false;
                    }
                    Ok(None) => return pass(at),
                    Err(r) => {
                        return Verdict {
                            pass: at,
                            then: Then::RejectHead(r),
                        };
                    }
                },
                Stage::Length(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.stage = if n == left {
                        self.after_body
                    } else {
                        Stage::Length(left - n)
                    };
                }
                Stage::Chunked(chunk) => match self.chunked(chunk, rest) {
                    Ok(n) => at += n,
                    Err((n, r)) => {
                        return Verdict {
                            pass: at + n,
                            then: Then::RejectBody(r),
                        };
                    }
                },
            }
        }
        pass(at)
    }

    /// Scans a pending head. `Ok(Some((len, stage)))`: a complete head of `len` bytes that
    /// passed, and what follows it; `Ok(None)`: not complete yet.
    fn head(&mut self, buf: &[u8]) -> Result<Option<(usize, Stage)>, Rejection> {
        let mut from = self.scanned as usize;
        let mut line_start = self.line_start as usize;
        let mut end = None;
        while let Some(nl) = memchr::memchr(b'\n', &buf[from..]) {
            let i = from + nl;
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(Rejection::malformed(
                    "a line of the request head ends in LF without CR",
                ));
            }
            let empty = i == line_start + 1;
            line_start = i + 1;
            from = i + 1;
            // Empty lines before the request line are skipped (RFC 9112 §2.2), as httparse does.
            if empty && self.started {
                end = Some(i + 1);
                break;
            }
            self.started |= !empty;
        }
        let max = self.max_head as usize;
        let Some(end) = end else {
            if buf.len() > max {
                return Err(too_large(buf, max));
            }
            self.scanned = buf.len() as u32;
            self.line_start = line_start as u32;
            return Ok(None);
        };
        if end > max {
            return Err(too_large(buf, max));
        }
        self.check(&buf[..end]).map(|stage| Some((end, stage)))
    }

    /// Checks a complete head; returns what follows it.
    fn check(&mut self, head: &[u8]) -> Result<Stage, Rejection> {
        let max = usize::from(self.max_headers);
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max <= STACK_HEADERS {
            &mut stack[..max]
        } else {
            heap.resize_with(max, MaybeUninit::uninit);
            &mut heap
        };
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, slots) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(Rejection::malformed("the request head is incomplete"));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Rejection {
                    reason: Reason::HeadersTooLarge,
                    detail: format!(
                        "the request has more than SHOAL_MAX_HEADERS ({max}) header fields"
                    ),
                });
            }
            Err(e) => {
                return Err(Rejection::malformed(format!(
                    "the request head is not valid HTTP/1.1 ({e}); obs-fold, bare CR, NUL and \
                     other control characters are refused"
                )));
            }
        }
        let framing = Framing::of(req.headers)?;
        let http10 = req.version == Some(0);
        if framing.chunked && http10 {
            return Err(Rejection::malformed(
                "an HTTP/1.0 request has Transfer-Encoding, which HTTP/1.0 does not define",
            ));
        }
        // A request that may switch protocols: the tunnel starts after its body, if any.
        self.after_body = if framing.upgrade || req.method == Some("CONNECT") {
            Stage::Tunnel
        } else {
            Stage::Head
        };
        Ok(match (framing.chunked, framing.length) {
            (true, _) => Stage::Chunked(Chunk::Start),
            (false, Some(n)) if n > 0 => Stage::Length(n),
            _ => self.after_body,
        })
    }

    /// Follows a chunked body over `buf`: the bytes it consumed, or where it broke and why.
    fn chunked(&mut self, mut chunk: Chunk, buf: &[u8]) -> Result<usize, (usize, Rejection)> {
        let mut i = 0;
        let bad = |i: usize, what: &str| {
            Err((
                i,
                Rejection::malformed(format!("the chunked request body is malformed: {what}")),
            ))
        };
        while i < buf.len() {
            if let Chunk::Data(left) = chunk {
                let n = left.min((buf.len() - i) as u64);
                i += n as usize;
                chunk = if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - n)
                };
                continue;
            }
            let b = buf[i];
            chunk = match (chunk, b) {
                (Chunk::Start, _) => match hex(b) {
                    Some(d) => Chunk::Size(u64::from(d)),
                    None => return bad(i, "a chunk size is not hexadecimal"),
                },
                (Chunk::Size(size), _) if hex(b).is_some() => match size.checked_mul(16) {
                    Some(s) => Chunk::Size(s + u64::from(hex(b).unwrap_or(0))),
                    None => return bad(i, "a chunk size overflows"),
                },
                (Chunk::Size(size) | Chunk::Space(size), b' ' | b'\t') => Chunk::Space(size),
                (Chunk::Size(size) | Chunk::Space(size), b';') => Chunk::Ext(size, 0),
                (Chunk::Size(size) | Chunk::Space(size) | Chunk::Ext(size, _), b'\r') => {
                    Chunk::SizeLf(size)
                }
                (Chunk::Size(_) | Chunk::Space(_), _) => {
                    return bad(i, "a chunk-size line has an unexpected byte");
                }
                (Chunk::Ext(_, _), b'\n' | 0) => {
                    return bad(i, "a chunk extension has LF or NUL");
                }
                (Chunk::Ext(size, len), _) if len < MAX_CHUNK_EXT => Chunk::Ext(size, len + 1),
                (Chunk::Ext(_, _), _) => return bad(i, "a chunk extension is too long"),
                (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart(0),
                (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Start,
                (Chunk::SizeLf(_) | Chunk::DataCr | Chunk::DataLf, _) => {
                    return bad(i, "a chunk line does not end in CRLF");
                }
                (Chunk::TrailerStart(_), b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart(_), b' ' | b'\t') => {
                    return bad(i, "a trailer line is folded (obs-fold)");
                }
                (Chunk::Trailer(n), b'\r') => Chunk::TrailerLf(n),
                (Chunk::TrailerStart(_) | Chunk::Trailer(_), b'\n' | 0) => {
                    return bad(i, "a trailer line has a bare LF or NUL");
                }
                (Chunk::TrailerStart(n) | Chunk::Trailer(n), _) if n < self.max_head => {
                    Chunk::Trailer(n + 1)
                }
                (Chunk::TrailerStart(_) | Chunk::Trailer(_), _) => {
                    return bad(i, "the trailers exceed SHOAL_MAX_HEADER_BYTES");
                }
                (Chunk::TrailerLf(n), b'\n') => Chunk::TrailerStart(n),
                (Chunk::TrailerLf(_), _) => return bad(i, "a trailer line has a bare CR"),
                (Chunk::EndLf, b'\n') => {
                    self.stage = self.after_body;
                    return Ok(i + 1);
                }
                (Chunk::EndLf, _) => return bad(i, "the final line does not end in CRLF"),
                (Chunk::Data(_), _) => unreachable!("chunk data is skipped above"),
            };
            i += 1;
        }
        self.stage = Stage::Chunked(chunk);
        Ok(i)
    }
}

fn pass(n: usize) -> Verdict {
    Verdict {
        pass: n,
        then: Then::More,
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A head over `max` bytes: 414 while the request line itself is longer, else 431.
fn too_large(buf: &[u8], max: usize) -> Rejection {
    let line = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    if line > max {
        Rejection {
            reason: Reason::UriTooLong,
            detail: format!("the request line is longer than SHOAL_MAX_HEADER_BYTES ({max})"),
        }
    } else {
        Rejection {
            reason: Reason::HeadersTooLarge,
            detail: format!("the request head is larger than SHOAL_MAX_HEADER_BYTES ({max})"),
        }
    }
}

/// The framing fields of one request head, checked.
#[derive(Debug, Default)]
struct Framing {
    length: Option<u64>,
    chunked: bool,
    upgrade: bool,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Result<Self, Rejection> {
        let mut f = Framing::default();
        let mut hosts = 0;
        let mut te = false;
        for h in headers {
            let name = h.name.as_bytes();
            // Most fields are none of these: one length-and-letter test decides.
            match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
                (4, Some(b'h')) if name.eq_ignore_ascii_case(b"host") => {
                    hosts += 1;
                    if hosts > 1 {
                        return Err(Rejection::malformed(
                            "the request has more than one Host field",
                        ));
                    }
                }
                (14, Some(b'c')) if name.eq_ignore_ascii_case(b"content-length") => {
                    if f.length.is_some() {
                        return Err(Rejection::malformed(
                            "the request has more than one Content-Length field",
                        ));
                    }
                    f.length = Some(content_length(h.value)?);
                }
                (17, Some(b't')) if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    te = true;
                    for coding in h.value.split(|&b| b == b',') {
                        let coding = coding.trim_ascii();
                        if f.chunked || coding.is_empty() {
                            return Err(Rejection::malformed(
                                "Transfer-Encoding must list chunked once, as the final coding",
                            ));
                        }
                        f.chunked = coding.eq_ignore_ascii_case(b"chunked");
                    }
                }
                (7, Some(b'u')) if name.eq_ignore_ascii_case(b"upgrade") => f.upgrade = true,
                _ => {}
            }
        }
        if te && !f.chunked {
            return Err(Rejection::malformed(
                "Transfer-Encoding must end with chunked (RFC 9112 §6.3)",
            ));
        }
        if te && f.length.is_some() {
            return Err(Rejection::malformed(
                "the request has both Content-Length and Transfer-Encoding (a request-smuggling \
                 pattern); send one framing header",
            ));
        }
        Ok(f)
    }
}

/// A `Content-Length` value: digits only (no sign, list or space), within u64.
fn content_length(value: &[u8]) -> Result<u64, Rejection> {
    let invalid = || {
        Rejection::malformed(format!(
            "Content-Length {:?} is not a single decimal length",
            String::from_utf8_lossy(value)
        ))
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(invalid)
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
