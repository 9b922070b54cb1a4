//! Property tests (proptest, stable toolchain) for detection's one security property: bytes that
//! can start an HTTP request are never opaque, however few of them have arrived when the deadline
//! passes; and a verdict, once given, does not change as more bytes arrive (so it cannot depend
//! on how the client split them). Inputs kept in `fuzz/corpus/detect/` are replayed too.

use proptest::prelude::*;

use super::*;

const EMPTY_LINES: &[&[u8]] = &[b"\r\n", b"\n"];
const VERSIONS: &[&[u8]] = &[b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b" http/1.1\n"];

/// A request line an HTTP parser somewhere might accept: any token as the method, optional empty
/// lines before it, any target bytes.
fn request_start() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(prop::sample::select(EMPTY_LINES), 0..3),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
        prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..64),
        prop::sample::select(VERSIONS),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(empty, method, target, version, rest)| {
            let mut v = empty.concat();
            v.extend_from_slice(method.as_bytes());
            v.push(b' ');
            v.extend_from_slice(&target);
            v.extend_from_slice(version);
            v.extend_from_slice(&rest);
            v
        })
}

fn is_opaque(d: &Option<Detected>) -> bool {
    matches!(d, Some(Detected::Opaque(_)))
}

proptest! {
    #[test]
    fn no_prefix_of_a_request_is_opaque(req in request_start()) {
        for end in 1..=req.len() {
            let prefix = &req[..end];
            prop_assert!(!is_opaque(&classify(prefix, false)), "{:?}", String::from_utf8_lossy(prefix));
            prop_assert!(!is_opaque(&classify(prefix, true)), "at the deadline: {:?}", String::from_utf8_lossy(prefix));
        }
    }

    #[test]
    fn a_verdict_does_not_change_as_more_bytes_arrive(bytes in prop::collection::vec(any::<u8>(), 1..256), cut in 1usize..256) {
        let cut = cut.min(bytes.len());
        if let Some(early) = classify(&bytes[..cut], false) {
            prop_assert_eq!(classify(&bytes, false), Some(early));
        }
    }
}

#[test]
fn corpus_verdicts_are_stable_prefix_by_prefix() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/detect");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the detection corpus") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let whole = classify(&bytes, true);
        for end in 1..bytes.len() {
            if let Some(early) = classify(&bytes[..end], false) {
                assert_eq!(
                    Some(early),
                    whole,
                    "{:?} at {end}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        n += 1;
    }
    assert!(n > 0, "the corpus is empty");
}
