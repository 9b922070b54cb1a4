//! Property tests (proptest, stable toolchain): byte streams built from HTTP/1 fragments, valid
//! and broken, cut at random places. The gate must never panic, and must give the same outcome
//! however the stream is cut. `.ci/run` runs them with more cases (`PROPTEST_CASES`); failures
//! proptest finds are kept in `proptest-regressions/` and replayed first, and the inputs in
//! `fuzz/corpus/framing/` are replayed by `corpus_replays_the_same_however_split`.

use proptest::prelude::*;

use super::tests::{Outcome, run};

/// Pieces that, strung together, make requests: valid ones, and every way to break them.
const FRAGMENTS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"get",
    b"CONNECT",
    b"PRI",
    b" ",
    b"\t",
    b"/",
    b"/a?b=c",
    b"http://h/x",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b":",
    b": ",
    b"Host",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"chunked",
    b"gzip, chunked",
    b"chunked, chunked",
    b"Upgrade",
    b"Connection: upgrade",
    b"shoal-client-id: spiffe://x",
    b"0",
    b"5",
    b"a",
    b"ffffffffffffffffff",
    b";ext=1",
    b"hello",
    b"\0",
    b",",
    b"\x80",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"0\r\nX-T: 1\r\n\r\n",
];

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(FRAGMENTS).prop_map(<[u8]>::to_vec),
            1 => prop::collection::vec(any::<u8>(), 1..4),
        ],
        1..40,
    )
    .prop_map(|parts| parts.concat())
}

fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..len.max(1), 0..6).prop_map(|mut c| {
        c.sort_unstable();
        c
    })
}

proptest! {
    #[test]
    fn the_outcome_does_not_depend_on_how_the_stream_is_cut(
        (bytes, cuts) in stream().prop_flat_map(|b| { let n = b.len(); (Just(b), cuts(n)) })
    ) {
        let whole: Outcome = run(&bytes, &[]);
        prop_assert_eq!(run(&bytes, &cuts), whole);
    }

    #[test]
    fn one_byte_at_a_time_is_the_same_as_whole(bytes in stream()) {
        let every: Vec<usize> = (1..bytes.len()).collect();
        prop_assert_eq!(run(&bytes, &every), run(&bytes, &[]));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_gate(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = run(&bytes, &[]);
    }
}

/// Inputs worth keeping (each found, or written, as a hard case): replayed whole and cut at
/// every offset.
#[test]
fn corpus_replays_the_same_however_split() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/framing");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the framing corpus") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let whole = run(&bytes, &[]);
        for cut in 1..bytes.len() {
            assert_eq!(
                run(&bytes, &[cut]),
                whole,
                "{:?} cut at {cut}",
                String::from_utf8_lossy(&bytes)
            );
        }
        n += 1;
    }
    assert!(n > 0, "the corpus is empty");
}
