//! Polling only what may have changed.
//!
//! A task that waits on several things re-polls all of them whenever any one wakes it. Most of
//! those polls find nothing new, and each still costs: a socket read costs tokio a readiness
//! check, a coop-budget check and a lock to re-register the task's waker (≈150 instructions;
//! on a proxied HTTP/1.1 request hyper polls the two sockets' read sides 9 times for 2 reads
//! with data), a `watch` future locks its waiter list, a timer re-checks its entry.
//!
//! A [`WakeGate`] sits between the task and one such thing. It hands the thing a waker of its
//! own, which notes the wake-up and passes it on to the task; until that wake-up comes, polls by
//! the same task answer `Pending` at once, exactly as the thing would have. [`GatedTcp`] gates a
//! socket's read side, [`Gated`] a future. Measured in BENCHMARKS.md.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Answers polls that cannot have changed since the last `Pending` (see the module docs).
#[derive(Debug, Default)]
pub struct WakeGate {
    /// Set up on the first `Pending` (what never waits costs nothing).
    gate: Option<Gate>,
}

impl WakeGate {
    /// Runs `poll` with the gate's waker, or answers `Pending` for it when it was `Pending` last
    /// time and its waker has not been called since.
    pub fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let Some(gate) = &mut self.gate else {
            let res = poll(cx);
            if res.is_pending() {
                // From now on the gate is woken (the next poll hands its waker over).
                self.gate = Some(Gate::new(cx.waker()));
            }
            return res;
        };
        if !gate.shared.task.will_wake(cx.waker()) {
            // Another task polls: a gate of its own (the next poll hands it over).
            *gate = Gate::new(cx.waker());
        } else if gate.parked && !gate.shared.woken.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        // Cleared before polling: a wake-up from here on is for what this poll does not see.
        gate.shared.woken.store(false, Ordering::SeqCst);
        let res = poll(&mut Context::from_waker(&gate.waker));
        gate.parked = res.is_pending();
        res
    }
}

pin_project_lite::pin_project! {
    /// A future polled through a [`WakeGate`]: for the side branches of a `select!` (a drain
    /// signal, a timer) that wake rarely, next to a busy one.
    #[derive(Debug)]
    pub struct Gated<F> {
        #[pin]
        future: F,
        gate: WakeGate,
    }
}

impl<F: Future> Gated<F> {
    /// Gates `future`.
    pub fn new(future: F) -> Self {
        Self {
            future,
            gate: WakeGate::default(),
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut future = this.future;
        this.gate.poll(cx, |cx| future.as_mut().poll(cx))
    }
}

/// A [`TcpStream`] whose read side is polled through a [`WakeGate`]; writes go straight through.
#[derive(Debug)]
pub struct GatedTcp {
    stream: TcpStream,
    read: WakeGate,
}

#[derive(Debug)]
struct Gate {
    shared: Arc<Shared>,
    /// `Waker::from(shared)`, built once per polling task.
    waker: Waker,
    /// The last poll was `Pending`: what was polled holds `waker` and calls it on a change.
    parked: bool,
}

/// What the gate's waker and the gate share. A gate polled by another task gets a
/// new one (tasks rarely change: a connection handed to a splice task), so the read path takes
/// no lock.
#[derive(Debug)]
struct Shared {
    /// The waker was called since the last poll.
    woken: AtomicBool,
    /// The polling task, woken in turn.
    task: Waker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.task.wake_by_ref();
    }
}

impl Gate {
    fn new(task: &Waker) -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicBool::new(false),
            task: task.clone(),
        });
        Self {
            waker: Waker::from(shared.clone()),
            shared,
            parked: false,
        }
    }
}

impl GatedTcp {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read: WakeGate::default(),
        }
    }

    /// The stream, for what the gate does not cover (readiness, addresses, options).
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }
}

impl From<TcpStream> for GatedTcp {
    fn from(stream: TcpStream) -> Self {
        Self::new(stream)
    }
}

impl AsyncRead for GatedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let stream = &mut this.stream;
        this.read.poll(cx, |cx| Pin::new(stream).poll_read(cx, buf))
    }
}

impl AsyncWrite for GatedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
