use super::*;

const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 20;

/// What the gate did with a whole byte stream: the bytes it passed, and how it ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Outcome {
    passed: Vec<u8>,
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Everything shown passed or waits for more.
    Open {
        held: usize,
    },
    Head(Reason),
    Body(Reason),
}

/// Feeds `bytes` to a fresh gate in pieces cut at `cuts`, the way `ProxyIo` does: a piece goes
/// straight to the gate when nothing is held back, else behind the held bytes.
pub(super) fn run(bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut gate = RequestFraming::new(MAX_HEAD, MAX_HEADERS);
    let mut held: Vec<u8> = Vec::new();
    let mut passed = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().chain([bytes.len()]);
    for end in ends {
        if end <= start {
            continue;
        }
        held.extend_from_slice(&bytes[start..end]);
        start = end;
        let v = gate.admit(&held);
        passed.extend_from_slice(&held[..v.pass]);
        held.drain(..v.pass);
        match v.then {
            Then::More => {}
            Then::RejectHead(r) => {
                return Outcome {
                    passed,
                    end: End::Head(r.reason),
                };
            }
            Then::RejectBody(r) => {
                return Outcome {
                    passed,
                    end: End::Body(r.reason),
                };
            }
        }
    }
    Outcome {
        passed,
        end: End::Open { held: held.len() },
    }
}

/// Asserts that every way of splitting `bytes` in two, and one byte at a time, gives the same
/// outcome as one read; returns it.
fn same_however_split(bytes: &[u8]) -> Outcome {
    let whole = run(bytes, &[]);
    for cut in 1..bytes.len() {
        assert_eq!(
            run(bytes, &[cut]),
            whole,
            "split at {cut} of {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(run(bytes, &every), whole, "one byte at a time");
    whole
}

fn passes_whole(bytes: &[u8]) {
    let out = same_however_split(bytes);
    assert_eq!(
        out,
        Outcome {
            passed: bytes.to_vec(),
            end: End::Open { held: 0 }
        },
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
}

fn refused_head(bytes: &[u8], reason: Reason) -> Outcome {
    let out = same_however_split(bytes);
    assert_eq!(
        out.end,
        End::Head(reason),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    out
}

#[test]
fn valid_requests_pass_whole_however_split() {
    passes_whole(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    passes_whole(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    passes_whole(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    passes_whole(
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n",
    );
    // Pipelined: three requests, bodies of both kinds.
    passes_whole(
        b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          POST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /3 HTTP/1.0\r\n\r\n",
    );
}

#[test]
fn an_incomplete_head_is_held_back_not_passed() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n";
    let out = same_however_split(head);
    assert_eq!(out.passed, b"");
    assert_eq!(out.end, End::Open { held: head.len() });
    // A valid request passes; the incomplete one behind it is held.
    let out = same_however_split(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nshoal-client-id: x");
    assert_eq!(out.passed, b"GET /1 HTTP/1.1\r\n\r\n");
}

#[test]
fn framing_conflicts_are_refused_however_split() {
    for head in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\nX-Lf: 1\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/9.9\r\nHost: a\r\n\r\n",
    ] {
        let out = refused_head(head.as_bytes(), Reason::MalformedRequest);
        assert_eq!(out.passed, b"", "{head:?}");
    }
}

#[test]
fn a_bad_head_behind_a_good_one_passes_only_the_good_one() {
    let good = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut bytes = good.to_vec();
    bytes.extend_from_slice(b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    let out = refused_head(&bytes, Reason::MalformedRequest);
    assert_eq!(out.passed, good);
}

#[test]
fn oversized_heads_are_refused_with_the_right_reason() {
    let mut long_line = b"GET /".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
    refused_head(&long_line, Reason::UriTooLong);
    long_line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    refused_head(&long_line, Reason::UriTooLong);

    let mut big = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..4 {
        big.extend_from_slice(format!("X-Big{i}: {}\r\n", "v".repeat(3000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert_eq!(run(&big, &[]).end, End::Head(Reason::HeadersTooLarge));
    assert_eq!(
        run(&big[..MAX_HEAD + 1], &[]).end,
        End::Head(Reason::HeadersTooLarge)
    );

    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    refused_head(&many, Reason::HeadersTooLarge);
}

#[test]
fn broken_chunked_bodies_end_where_they_break() {
    let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (body, ok) in [
        ("zz\r\nhello\r\n0\r\n\r\n", 0),
        ("5\r\nhello\n0\r\n\r\n", 8),
        ("5\nhello\r\n0\r\n\r\n", 1),
        ("5 x\r\nhello\r\n0\r\n\r\n", 2),
        ("5;a\nb\r\nhello\r\n0\r\n\r\n", 3),
        ("5\r\nhelloXX0\r\n\r\n", 8),
        ("0\r\nX: a\nb\r\n\r\n", 7),
        ("0\r\n folded\r\n\r\n", 3),
        ("0\r\n\r\r", 4),
        ("11111111111111111\r\n", 16),
    ] {
        let bytes = format!("{head}{body}");
        let out = same_however_split(bytes.as_bytes());
        assert_eq!(out.end, End::Body(Reason::MalformedRequest), "{body:?}");
        assert_eq!(out.passed.len(), head.len() + ok, "{body:?}");
    }
}

#[test]
fn after_a_request_that_may_switch_protocols_bytes_pass_unread() {
    // The tunnel's bytes may look like anything; the connection closes unless it switched.
    let bytes = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    passes_whole(bytes);
    passes_whole(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01");
    // With a body, the tunnel starts after it.
    let out = same_however_split(
        b"POST /up HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nabGARBAGE\r\n\r\n",
    );
    assert_eq!(out.end, End::Open { held: 0 });
}

#[test]
fn byte_at_a_time_heads_are_scanned_in_linear_time() {
    // 8 KB of leading empty lines and a long head, one byte per read: the gate resumes where it
    // stopped (a quadratic rescan would take seconds here).
    let mut bytes = b"\r\n".repeat(2000);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n");
    bytes.extend_from_slice(format!("X-Pad: {}\r\n\r\n", "p".repeat(4000)).as_bytes());
    let every: Vec<usize> = (1..bytes.len()).collect();
    let started = std::time::Instant::now();
    let out = run(&bytes, &every);
    assert_eq!(out.end, End::Open { held: 0 });
    assert_eq!(out.passed.len(), bytes.len());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
