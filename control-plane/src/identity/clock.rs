//! Time for the CA: certificate validity, token expiry and root retirement all read one [`Clock`], so tests
//! can move time forward instead of waiting hours for a rotation to finish.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the identity code reads the time.
pub trait Clock: Send + Sync {
    /// Now, as wall-clock time (certificates carry wall-clock validity).
    fn now(&self) -> SystemTime;

    /// Now, in whole seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64 {
        unix_seconds(self.now())
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to: for tests of expiry and rotation.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock starting at the current system time.
    pub fn starting_now() -> Self {
        Self {
            now: Mutex::new(SystemTime::now()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `time` in whole seconds since the Unix epoch (0 before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
