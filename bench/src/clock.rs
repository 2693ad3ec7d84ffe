//! One time base for every process on the host: CLOCK_MONOTONIC, so that a timestamp a
//! publisher writes (on any executor, or in another `shardmq-bench pub` process) means the same
//! to a subscriber (`sub`) on the same machine.

use std::time::Duration;

/// Kept for callers that fix the base at start-up; CLOCK_MONOTONIC needs no base.
pub(crate) fn init() {}

/// Nanoseconds of CLOCK_MONOTONIC (since boot, shared by every process on the host).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The time from now until `deadline_ns` (zero if it has passed).
pub(crate) fn until(deadline_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(now_ns()))
}
