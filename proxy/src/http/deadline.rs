//! The response deadline of an HTTP/1 connection's request, kept by the connection's own timer.
//!
//! A response timeout armed per request costs a timer entry: inserted into tokio's timer wheel
//! on the first poll and taken out again on drop, under the driver's lock — ≈2 % of a proxied
//! HTTP/1.1 request's instructions (BENCHMARKS.md). An HTTP/1 connection serves one request at a
//! time and its server loop (`serve_h1`) already runs a timer for idleness and the request-head
//! deadline, so the request only writes its deadline here and the loop's timer enforces it.
//! Timeouts shorter than two of the loop's ticks (it could not meet them on time), and HTTP/2
//! streams, keep a timer of their own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// One connection's response deadline (see the module docs).
#[derive(Debug)]
pub struct ResponseDeadline {
    /// What deadlines are counted from.
    epoch: Instant,
    /// The deadline, in microseconds after `epoch`; 0 while no request waits for a response head.
    at_us: AtomicU64,
    /// The deadline passed while armed.
    expired: AtomicBool,
    /// The request waiting for its response head.
    waker: AtomicWaker,
}

impl Default for ResponseDeadline {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            at_us: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

impl ResponseDeadline {
    /// A request waits for its response head until `at`; disarmed when the guard drops (the
    /// head came, or the request went away).
    pub fn arm(&self, at: Instant) -> Armed<'_> {
        let us = at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.expired.store(false, Ordering::SeqCst);
        self.at_us.store(us.max(1), Ordering::SeqCst);
        Armed(self)
    }

    /// For the connection's timer: expires the armed deadline if `now` is past it, and returns
    /// the deadline still to come, if any (the timer must fire by then).
    pub fn check(&self, now: Instant) -> Option<Instant> {
        let us = self.at_us.load(Ordering::SeqCst);
        if us == 0 {
            return None;
        }
        let at = self.epoch + std::time::Duration::from_micros(us);
        if at > now {
            return Some(at);
        }
        self.at_us.store(0, Ordering::SeqCst);
        self.expired.store(true, Ordering::SeqCst);
        self.waker.wake();
        None
    }

    fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.expired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.expired.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// An armed [`ResponseDeadline`]; dropping it disarms.
#[derive(Debug)]
pub struct Armed<'a>(&'a ResponseDeadline);

impl Armed<'_> {
    /// Ready once the deadline expired.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_expired(cx)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.at_us.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_armed_deadline_expires_only_once_past_and_wakes_the_request() {
        let d = ResponseDeadline::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        // Nothing armed: nothing to enforce.
        assert_eq!(d.check(now), None);
        let at = now + Duration::from_secs(2);
        let armed = d.arm(at);
        assert!(armed.poll_expired(&mut cx).is_pending());
        // Before the deadline the timer learns when to fire (to the microsecond).
        let due = d.check(now + Duration::from_secs(1)).expect("armed");
        assert!(due.saturating_duration_since(at) < Duration::from_micros(1));
        assert!(due >= at - Duration::from_micros(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // Past it: expired, the request woken, and nothing left to enforce.
        assert_eq!(d.check(at + Duration::from_millis(1)), None);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(armed.poll_expired(&mut cx).is_ready());
        drop(armed);
        // The next request starts clean.
        let armed = d.arm(at + Duration::from_secs(5));
        assert!(armed.poll_expired(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn a_dropped_guard_disarms() {
        let d = ResponseDeadline::default();
        let at = Instant::now() + Duration::from_millis(10);
        drop(d.arm(at));
        assert_eq!(d.check(at + Duration::from_secs(1)), None);
        assert!(!d.expired.load(Ordering::SeqCst));
    }
}
