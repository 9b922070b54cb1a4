//! Trace context: W3C `traceparent`/`tracestate`, B3 (single and multi-header), `x-request-id`.
//!
//! The proxy is one hop of a trace: it keeps the trace id, gives its hop a new span id (the
//! caller's span becomes the parent) and adds an `x-request-id` when the request has none, so
//! every log line of every hop can be tied together. A request with no trace context at all
//! starts a new W3C trace, sampled with the span exporter's ratio (`otlp`; unsampled when spans
//! are not exported). The hop's ids and sampling decision ([`SpanContext`]) are what the
//! exported span carries: its id is the parent id the next hop receives.

use http::{HeaderMap, HeaderName, HeaderValue};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The ids a request carries after propagation, for logs.
#[derive(Debug, Clone)]
pub struct TraceIds {
    /// `x-request-id` (as received, or generated).
    pub request_id: RequestId,
    /// The trace id, from W3C or B3.
    pub trace_id: TraceId,
    /// This hop's span: its ids, its parent and whether it is sampled.
    pub span: SpanContext,
}

/// This hop's place in the trace, as its exported span shows it.
#[derive(Debug, Clone, Copy)]
pub struct SpanContext {
    /// The trace id.
    pub trace: TraceId,
    /// This hop's span id: the parent id the next hop receives.
    pub span: [u8; 8],
    /// The caller's span id, when the request carried one.
    pub parent: Option<[u8; 8]>,
    /// Whether this hop's span is recorded: the caller's sampled flag, or for a request without
    /// a sampling decision the ratio's draw.
    pub sampled: bool,
}

/// What the incoming context said, before this hop's span replaces the caller's.
struct Incoming {
    trace: TraceId,
    parent: Option<[u8; 8]>,
    /// `None`: the caller made no sampling decision (B3 without a sampled field).
    sampled: Option<bool>,
}

/// A trace id in hex (16 or 32 digits), kept inline: no allocation per request.
#[derive(Clone, Copy)]
pub struct TraceId {
    hex: [u8; 32],
    len: u8,
}

impl TraceId {
    /// From already-validated lower-case hex digits (at most 32).
    fn from_hex(s: &[u8]) -> Self {
        let mut hex = [b'0'; 32];
        let len = s.len().min(32);
        hex[..len].copy_from_slice(&s[..len]);
        Self {
            hex,
            len: len as u8,
        }
    }

    /// The 16 bytes (a 64-bit B3 id is left-padded with zeros, as OpenTelemetry does). Decoded
    /// only for a span that is exported, off the request path.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        unhex_into(&mut out, &self.hex[..usize::from(self.len)]);
        out
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.hex[..usize::from(self.len)]).unwrap_or("-")
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request's `x-request-id`, kept for logs and the proxy's own error responses.
///
/// A generated id is kept inline: keeping a second reference to the header value put in the
/// request would cost an allocation per request (a `Bytes` made from a `Vec` allocates its
/// shared header on first clone).
#[derive(Clone)]
pub enum RequestId {
    /// Generated here (a UUID v4 in text form).
    Generated([u8; 36]),
    /// As received from the client.
    Received(HeaderValue),
}

impl RequestId {
    /// The id as text (`-` when a received id is not visible ASCII).
    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Generated(b) => std::str::from_utf8(b).unwrap_or("-"),
            RequestId::Received(v) => v.to_str().unwrap_or("-"),
        }
    }

    /// The id as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            RequestId::Generated(b) => {
                HeaderValue::from_bytes(b).unwrap_or(HeaderValue::from_static("-"))
            }
            RequestId::Received(v) => v.clone(),
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for RequestId {
    fn eq(&self, other: &str) -> bool {
        match self {
            RequestId::Generated(b) => b.as_slice() == other.as_bytes(),
            RequestId::Received(v) => v == other,
        }
    }
}

impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for RequestId {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` in hex into `out` (twice as long).
fn hex_to(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn is_hex(s: &[u8], len: usize) -> bool {
    s.len() == len
        && s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Decodes lower-case hex digits (already validated) into `out`, right-aligned: a 16-digit B3
/// trace id fills the last 8 bytes of a 16-byte id.
fn unhex_into(out: &mut [u8], hex: &[u8]) {
    let digit = |b: u8| {
        if b.is_ascii_digit() {
            b - b'0'
        } else {
            b - b'a' + 10
        }
    };
    let skip = out.len().saturating_sub(hex.len() / 2);
    for (o, pair) in out[skip..].iter_mut().zip(hex.chunks_exact(2)) {
        *o = (digit(pair[0]) << 4) | digit(pair[1]);
    }
}

fn span_id_of(hex: &[u8]) -> [u8; 8] {
    let mut id = [0; 8];
    unhex_into(&mut id, hex);
    id
}

fn nonzero_hex(s: &[u8]) -> bool {
    s.iter().any(|&b| b != b'0')
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn hex_span(id: [u8; 8]) -> [u8; 16] {
    let mut hex = [0; 16];
    hex_to(&mut hex, &id);
    hex
}

/// A header value the proxy generated: unique per request, so it is marked "never indexed" for
/// HPACK — entering it in an HTTP/2 connection's header table would only evict entries that do
/// repeat (and cost a table probe and insertion per request; A/B measured, BENCHMARKS.md).
fn value(bytes: &[u8]) -> HeaderValue {
    // Only hex digits and '-' are ever written here.
    let mut v = HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(bytes))
        .unwrap_or(HeaderValue::from_static("0"));
    v.set_sensitive(true);
    v
}

/// Rewrites the trace headers of a request crossing this hop; returns the ids for logging and
/// the span. `root_ratio` samples the requests that carry no sampling decision (0 when spans are
/// not exported: no random draw then).
pub fn propagate(headers: &mut HeaderMap, root_ratio: f64) -> TraceIds {
    // One pass over the names first: most requests carry few of these headers, and comparing
    // names is cheaper than a hash lookup for each.
    let (mut w3c_in, mut b3_in, mut b3_multi_in, mut request_id_in) = (false, false, false, false);
    for name in headers.keys() {
        if *name == TRACEPARENT {
            w3c_in = true;
        } else if *name == B3 {
            b3_in = true;
        } else if *name == B3_TRACE_ID {
            b3_multi_in = true;
        } else if *name == REQUEST_ID {
            request_id_in = true;
        }
    }
    let span = new_span_id();
    let draw = || root_ratio >= 1.0 || (root_ratio > 0.0 && fastrand::f64() < root_ratio);
    let mut incoming = if w3c_in { w3c(headers, span) } else { None };
    if b3_in && let Some(t) = b3_single(headers, span, draw) {
        incoming.get_or_insert(t);
    }
    if b3_multi_in && let Some(t) = b3_multi(headers, span) {
        incoming.get_or_insert(t);
    }
    let (trace_id, parent, sampled) = match incoming {
        Some(i) => (i.trace, i.parent, i.sampled.unwrap_or_else(draw)),
        None => {
            let sampled = draw();
            (start_trace(headers, span, sampled), None, sampled)
        }
    };
    let span = SpanContext {
        trace: trace_id,
        span,
        parent,
        sampled,
    };
    let received = if request_id_in {
        headers.get(&REQUEST_ID)
    } else {
        None
    };
    let request_id = match received {
        Some(v) => RequestId::Received(v.clone()),
        None => {
            let id = uuid_v4();
            headers.insert(REQUEST_ID.clone(), value(&id));
            RequestId::Generated(id)
        }
    };
    TraceIds {
        request_id,
        trace_id,
        span,
    }
}

/// `traceparent: 00-<trace-id>-<parent-id>-<flags>`: replaces the parent id with this hop's span.
/// An invalid header is dropped with its `tracestate` (W3C trace-context §3.2.2.5: restart).
fn w3c(headers: &mut HeaderMap, span: [u8; 8]) -> Option<Incoming> {
    let tp = headers.get(&TRACEPARENT)?.as_bytes();
    let valid = tp.len() >= 55
        && is_hex(&tp[0..2], 2)
        && &tp[0..2] != b"ff"
        && tp[2] == b'-'
        && is_hex(&tp[3..35], 32)
        && nonzero_hex(&tp[3..35])
        && tp[35] == b'-'
        && is_hex(&tp[36..52], 16)
        && nonzero_hex(&tp[36..52])
        && tp[52] == b'-'
        && is_hex(&tp[53..55], 2)
        && (tp.len() == 55 || (&tp[0..2] != b"00" && tp[55] == b'-'));
    if !valid {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
        return None;
    }
    let mut flags = [0];
    unhex_into(&mut flags, &tp[53..55]);
    let incoming = Incoming {
        trace: TraceId::from_hex(&tp[3..35]),
        parent: Some(span_id_of(&tp[36..52])),
        // trace-flags bit 0: sampled.
        sampled: Some(flags[0] & 1 == 1),
    };
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    out[3..35].copy_from_slice(&tp[3..35]);
    hex_to(&mut out[36..52], &span);
    out[53..].copy_from_slice(&tp[53..55]);
    headers.insert(TRACEPARENT.clone(), value(&out));
    Some(incoming)
}

/// `b3: {TraceId}-{SpanId}[-{Sampled}[-{ParentSpanId}]]`, or a bare sampling decision.
/// Without a sampling field, `draw` decides, and the field forwarded says what it decided.
fn b3_single(
    headers: &mut HeaderMap,
    span: [u8; 8],
    draw: impl FnOnce() -> bool,
) -> Option<Incoming> {
    let v = headers.get(&B3)?.as_bytes().to_vec();
    let mut parts = v.split(|&b| b == b'-');
    let trace = parts.next()?;
    let parent = parts.next()?;
    let sampled = parts.next();
    if !(is_hex(trace, 32) || is_hex(trace, 16)) || !is_hex(parent, 16) {
        return None;
    }
    let mut out = Vec::with_capacity(trace.len() + 38);
    out.extend_from_slice(trace);
    out.push(b'-');
    out.extend_from_slice(&hex_span(span));
    let decided = match sampled {
        Some(s) => {
            out.push(b'-');
            out.extend_from_slice(s);
            b3_sampled(Some(s))
        }
        None => {
            // The parent field needs a sampling field before it: this hop's decision.
            let sampled = draw();
            out.extend_from_slice(if sampled { b"-1" } else { b"-0" });
            Some(sampled)
        }
    };
    out.push(b'-');
    out.extend_from_slice(parent);
    let incoming = Incoming {
        trace: TraceId::from_hex(trace),
        parent: Some(span_id_of(parent)),
        sampled: decided,
    };
    headers.insert(B3.clone(), value(&out));
    Some(incoming)
}

/// A B3 sampling field: `1` or `d` (debug) sampled, `0` not; absent: no decision.
fn b3_sampled(field: Option<&[u8]>) -> Option<bool> {
    match field? {
        b"1" | b"d" | b"true" => Some(true),
        _ => Some(false),
    }
}

/// `X-B3-TraceId` / `X-B3-SpanId` / `X-B3-ParentSpanId`.
fn b3_multi(headers: &mut HeaderMap, span: [u8; 8]) -> Option<Incoming> {
    let trace = headers.get(&B3_TRACE_ID)?.as_bytes();
    if !(is_hex(trace, 32) || is_hex(trace, 16)) {
        return None;
    }
    let trace = TraceId::from_hex(trace);
    let parent = headers
        .get(&B3_SPAN_ID)
        .filter(|v| is_hex(v.as_bytes(), 16))
        .cloned()?;
    let debug = headers.get(&B3_FLAGS).is_some_and(|v| v == "1");
    let sampled = match headers.get(&B3_SAMPLED) {
        _ if debug => Some(true),
        Some(v) => b3_sampled(Some(v.as_bytes())),
        None => None,
    };
    let incoming = Incoming {
        trace,
        parent: Some(span_id_of(parent.as_bytes())),
        sampled,
    };
    headers.insert(B3_PARENT_SPAN_ID.clone(), parent);
    headers.insert(B3_SPAN_ID.clone(), value(&hex_span(span)));
    Some(incoming)
}

/// A new W3C trace with this hop's span as its root; `sampled` sets the flag the next hops honour.
fn start_trace(headers: &mut HeaderMap, span: [u8; 8], sampled: bool) -> TraceId {
    let trace = fastrand::u128(1..).to_be_bytes();
    // `00-<trace id>-<span id>-<flags>`
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex_to(&mut out[3..35], &trace);
    hex_to(&mut out[36..52], &span);
    out[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    headers.insert(TRACEPARENT.clone(), value(&out));
    TraceId::from_hex(&out[3..35])
}

/// A random UUID v4 in its canonical text form.
pub fn new_request_id() -> HeaderValue {
    value(&uuid_v4())
}

fn uuid_v4() -> [u8; 36] {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut hex = [0; 32];
    hex_to(&mut hex, &b);
    // 8-4-4-4-12
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

#[cfg(test)]
mod tests;
