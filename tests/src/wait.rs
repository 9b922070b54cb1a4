//! Waiting with deadlines: poll a condition until it holds or the deadline passes.
//!
//! Tests never sleep and hope; they poll what they expect (a metric, a log line, a recorded
//! request) every [`POLL_INTERVAL`] and fail with the last observation when the deadline passes.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Ok`, and returns that value; panics naming `what` and the
/// last `Err` once `timeout` has passed.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observation: {e:?}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Like [`eventually`] for a boolean condition: panics with `what` if it is still false at the
/// deadline.
pub async fn eventually_true<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(timeout, what, || {
        let fut = check();
        async move { if fut.await { Ok(()) } else { Err("false") } }
    })
    .await
}

/// Polls an async boolean expression until it is true; panics with the message at the deadline.
///
/// ```ignore
/// assert_eventually!(Duration::from_secs(5), backend.count() == 3, "backend saw 3 requests");
/// assert_eventually!(Duration::from_secs(5), proxy.admin_get("/ready").await.status == 503, "draining");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {
        $crate::wait::eventually_true($timeout, &format!($($msg)+), || async { $cond }).await
    };
}
