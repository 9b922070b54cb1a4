//! The response deadline of an HTTP/1 connection's request, kept by the connection's own timer.
//!
//! A response timeout armed per request costs a timer entry: inserted into tokio's timer wheel
//! on the first poll and taken out again on drop, under the driver's lock — ≈2 % of a proxied
//! HTTP/1.1 request's instructions (BENCHMARKS.md). An HTTP/1 connection serves one request at a
//! time and its server loop (`serve_h1`) already runs a timer for idleness and the request-head
//! deadline, so the request only writes its deadline here and the loop's timer enforces it.
//! Timeouts shorter than two of the loop's ticks (it could not meet them on time) keep a timer of
//! their own.
//!
//! An HTTP/2 connection serves many requests at once, all inside its own task: their deadlines
//! are kept in [`StreamDeadlines`], which the connection's loop (`h2_server::serve`) checks with
//! one timer, firing at the earliest deadline and at least once a tick while any is armed. A
//! tokio timer per stream cost ~5 % of an h2c request's CPU (BENCHMARKS.md, session 7).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::sync::lock;

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

/// A request's armed response deadline on its connection's timer, whichever HTTP version.
#[derive(Debug)]
pub enum ConnDeadline<'a> {
    /// The HTTP/1 connection's one request.
    Http1(Armed<'a>),
    /// One of the HTTP/2 connection's streams.
    Http2(StreamDeadline<'a>),
}

impl ConnDeadline<'_> {
    /// Ready once the deadline expired.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            ConnDeadline::Http1(a) => a.poll_expired(cx),
            ConnDeadline::Http2(s) => s.poll_expired(cx),
        }
    }
}

/// The response deadlines of one HTTP/2 connection's streams (see the module docs).
///
/// A stream registers on its first poll and is woken by [`StreamDeadlines::check`] with the waker
/// of that poll: it must keep being polled by the same task, as the connection's
/// `FuturesUnordered` does.
#[derive(Debug, Default)]
pub struct StreamDeadlines {
    slots: Mutex<Slots>,
    /// Deadlines registered and not yet expired (read by the loop without the lock).
    armed: AtomicUsize,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    waker: Waker,
    expired: bool,
}

impl StreamDeadlines {
    /// A stream waits for its response head until `at`; nothing is registered until its first
    /// poll, and the registration goes when the guard drops.
    pub fn arm(&self, at: Instant) -> StreamDeadline<'_> {
        StreamDeadline {
            deadlines: self,
            at,
            slot: None,
        }
    }

    /// Whether any deadline waits to be enforced.
    pub fn any_armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed) > 0
    }

    /// For the connection's loop: expires (and wakes) the streams whose deadline is not after
    /// `now`; returns the earliest deadline still armed, if any.
    pub fn check(&self, now: Instant) -> Option<Instant> {
        let mut slots = lock(&self.slots);
        let mut next: Option<Instant> = None;
        let mut armed = 0;
        for e in slots.entries.iter_mut().flatten().filter(|e| !e.expired) {
            if e.at <= now {
                e.expired = true;
                e.waker.wake_by_ref();
            } else {
                armed += 1;
                next = Some(next.map_or(e.at, |n| n.min(e.at)));
            }
        }
        self.armed.store(armed, Ordering::Relaxed);
        next
    }
}

/// One stream's armed deadline in [`StreamDeadlines`]; dropping it disarms.
#[derive(Debug)]
pub struct StreamDeadline<'a> {
    deadlines: &'a StreamDeadlines,
    at: Instant,
    /// The registration, from the first poll on.
    slot: Option<usize>,
}

impl StreamDeadline<'_> {
    /// Ready once the deadline expired.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = lock(&self.deadlines.slots);
        match self.slot {
            Some(i) => match &slots.entries[i] {
                Some(e) if e.expired => Poll::Ready(()),
                _ => Poll::Pending,
            },
            None => {
                let entry = Some(Entry {
                    at: self.at,
                    waker: cx.waker().clone(),
                    expired: false,
                });
                let i = match slots.free.pop() {
                    Some(i) => {
                        slots.entries[i] = entry;
                        i
                    }
                    None => {
                        slots.entries.push(entry);
                        slots.entries.len() - 1
                    }
                };
                self.slot = Some(i);
                // Under the lock: `check` recounts under it too.
                let armed = self.deadlines.armed.load(Ordering::Relaxed);
                self.deadlines.armed.store(armed + 1, Ordering::Relaxed);
                Poll::Pending
            }
        }
    }
}

impl Drop for StreamDeadline<'_> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        let mut slots = lock(&self.deadlines.slots);
        if let Some(e) = slots.entries[i].take()
            && !e.expired
        {
            let armed = self.deadlines.armed.load(Ordering::Relaxed);
            self.deadlines
                .armed
                .store(armed.saturating_sub(1), Ordering::Relaxed);
        }
        slots.free.push(i);
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
    async fn stream_deadlines_expire_each_stream_at_its_own_time() {
        let d = StreamDeadlines::default();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let now = Instant::now();
        let mut early = d.arm(now + Duration::from_secs(2));
        let mut late = d.arm(now + Duration::from_secs(5));
        // Nothing is registered before the first poll.
        assert!(!d.any_armed());
        assert_eq!(d.check(now), None);
        assert!(
            early
                .poll_expired(&mut Context::from_waker(&wa))
                .is_pending()
        );
        assert!(
            late.poll_expired(&mut Context::from_waker(&wb))
                .is_pending()
        );
        assert!(d.any_armed());
        // The loop learns the earliest deadline.
        assert_eq!(
            d.check(now + Duration::from_secs(1)),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        // Past the first: only that stream is expired and woken.
        let next = d.check(now + Duration::from_secs(3));
        assert_eq!(next, Some(now + Duration::from_secs(5)));
        assert_eq!(
            (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
            (1, 0)
        );
        assert!(early.poll_expired(&mut Context::from_waker(&wa)).is_ready());
        assert!(
            late.poll_expired(&mut Context::from_waker(&wb))
                .is_pending()
        );
        // A stream answered in time disarms on drop; its slot is reused.
        drop(late);
        assert!(!d.any_armed());
        assert_eq!(d.check(now + Duration::from_secs(10)), None);
        assert_eq!(b.0.load(Ordering::SeqCst), 0);
        drop(early);
        let mut again = d.arm(now + Duration::from_secs(20));
        assert!(
            again
                .poll_expired(&mut Context::from_waker(&wb))
                .is_pending()
        );
        assert_eq!(lock(&d.slots).entries.len(), 2);
        assert!(d.any_armed());
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
