//! Graceful shutdown: one signal every listener and connection watches.
//!
//! On SIGTERM or `/shutdown` listeners stop accepting, HTTP connections are told to finish
//! (GOAWAY for HTTP/2, `Connection: close` for HTTP/1), and the process exits once the last
//! connection is done or the grace period ends.

use std::time::Duration;

use tokio::sync::watch;

/// Sends the drain signal.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// Watches for the drain signal; also counts open connections (each holds a clone).
#[derive(Debug, Clone)]
pub struct Watch(watch::Receiver<bool>);

/// A new drain pair.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Watch(rx))
}

impl Trigger {
    /// Starts draining (idempotent).
    pub fn drain(&self) {
        self.0.send_replace(true);
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until every [`Watch`] is dropped, or `grace` passes; true if all finished.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.0.closed()).await.is_ok()
    }

    /// Open connections (watchers) right now.
    pub fn watchers(&self) -> usize {
        self.0.receiver_count()
    }

    /// A watcher that does not count as a connection for long: callers drop it once signaled.
    pub fn subscribe(&self) -> Watch {
        Watch(self.0.subscribe())
    }
}

impl Watch {
    /// Resolves when draining starts.
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|d| *d).await;
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}
