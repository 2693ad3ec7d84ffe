//! One time base for the whole process, so that a timestamp a publisher writes on one executor
//! means the same to a subscriber on another.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the base. Call once at start-up, before any executor runs.
pub(crate) fn init() {
    BASE.get_or_init(Instant::now);
}

/// Nanoseconds since the base.
pub(crate) fn now_ns() -> u64 {
    let elapsed = BASE.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos()).expect("584 years of benchmarking")
}

/// The time from now until `deadline_ns` (zero if it has passed).
pub(crate) fn until(deadline_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(now_ns()))
}
