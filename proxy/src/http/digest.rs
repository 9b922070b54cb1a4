//! A hash of a body as it streams by, for comparing two responses without keeping either: the
//! mirror stage (`outbound::http::mirror`) hashes the primary's response body on its way to the
//! client — no buffering, no added latency — and the shadow's as it reads it.

use std::hash::{DefaultHasher, Hasher};

use tokio::sync::oneshot;

/// The most body bytes hashed; two bodies longer than this are compared on their first
/// `MAX_HASHED_BYTES` (and on both being longer).
pub(crate) const MAX_HASHED_BYTES: usize = 1024 * 1024;

/// What a body is compared by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodySum {
    /// Hash of the first [`MAX_HASHED_BYTES`] (SipHash with fixed keys: the same in both hashes).
    hash: u64,
    /// Bytes hashed.
    len: usize,
    /// The body was longer than what was hashed.
    more: bool,
}

/// A hash being computed over a body's data frames (the same for any split into frames).
#[derive(Debug, Default)]
pub(crate) struct Hashing {
    hasher: DefaultHasher,
    len: usize,
    more: bool,
}

impl Hashing {
    /// Adds a data frame's bytes (past the cap: only notes that there were more).
    pub(crate) fn update(&mut self, data: &[u8]) {
        let room = MAX_HASHED_BYTES - self.len;
        if data.len() > room {
            self.more = true;
        }
        let take = &data[..data.len().min(room)];
        self.hasher.write(take);
        self.len += take.len();
    }

    /// Whether the cap is reached with more data seen (nothing further can change the sum).
    pub(crate) fn full(&self) -> bool {
        self.more
    }

    /// The sum so far.
    pub(crate) fn finish(&self) -> BodySum {
        BodySum {
            hash: self.hasher.finish(),
            len: self.len,
            more: self.more,
        }
    }
}

/// Hashes a response body as the client receives it and sends the sum once the body is complete;
/// a body that fails or is dropped before its end sends nothing (the receiver sees the sender
/// gone).
#[derive(Debug)]
pub(crate) struct Observer {
    hashing: Hashing,
    tx: Option<oneshot::Sender<BodySum>>,
}

impl Observer {
    /// An observer reporting to `tx`.
    pub(crate) fn new(tx: oneshot::Sender<BodySum>) -> Self {
        Self {
            hashing: Hashing::default(),
            tx: Some(tx),
        }
    }

    /// A data frame went by.
    pub(crate) fn data(&mut self, data: &[u8]) {
        self.hashing.update(data);
    }

    /// The body ended: the sum is sent (once).
    pub(crate) fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(self.hashing.finish());
        }
    }

    /// The body failed: nothing is sent.
    pub(crate) fn fail(&mut self) {
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(frames: &[&[u8]]) -> BodySum {
        let mut h = Hashing::default();
        for f in frames {
            h.update(f);
        }
        h.finish()
    }

    #[test]
    fn the_sum_does_not_depend_on_framing_and_sees_every_byte() {
        assert_eq!(sum(&[b"hello world"]), sum(&[b"hel", b"lo w", b"orld"]));
        assert_ne!(sum(&[b"hello world"]), sum(&[b"hello World"]));
        assert_ne!(sum(&[b"ab"]), sum(&[b"a"]));
        assert_eq!(sum(&[]), sum(&[b""]));
    }

    #[test]
    fn past_the_cap_only_longer_is_noted() {
        let big = vec![7u8; MAX_HASHED_BYTES];
        let a = sum(&[&big, b"x"]);
        let b = sum(&[&big[..10], &big[10..], b"yz"]);
        assert_eq!(a, b, "the same first MiB, both longer");
        assert_ne!(a, sum(&[&big]), "exactly the cap is not longer");
    }
}
