//! The controller's clock, injected so tests control time (sticky release, lease expiry).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock time in unix milliseconds.
pub trait Clock: Send + Sync {
    fn now_millis(&self) -> i64;

    fn now_secs(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn at_secs(secs: i64) -> ManualClock {
        ManualClock {
            millis: Arc::new(AtomicI64::new(secs * 1000)),
        }
    }

    pub fn advance_secs(&self, secs: i64) {
        self.millis.fetch_add(secs * 1000, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.millis.load(Ordering::Acquire)
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at_secs(100);
        assert_eq!(clock.now_secs(), 100);
        clock.advance_secs(90);
        assert_eq!(clock.now_millis(), 190_000);
        assert!(SystemClock.now_secs() > 1_600_000_000);
    }
}
