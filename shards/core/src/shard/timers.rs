//! The shard's timer table for its connections: the connect timeout (accept → CONNECT) and the
//! keep-alive (1.5 × the negotiated Keep Alive without a byte from the client). One table per
//! shard, in buckets of [`TIMER_BUCKET`], not a timer per socket: a connection has at most
//! one entry, and entries are validated lazily: a connection that received bytes since it
//! was armed is moved to the bucket of its new deadline when its old one comes due, so a busy
//! connection costs one store per read and nothing per packet. Session expiry and delayed
//! wills keep their own ordered tables (`offline`, `DelayedWills`); [`ShardCore::poll_timeout`]
//! reports the earliest of all three.

use super::*;
use std::collections::BTreeMap;

/// Resolution of the connection timers: a timeout fires at most this much late.
pub const TIMER_BUCKET: Duration = Duration::from_millis(100);

/// A connection that does not read now (its CONNECT is with the verifier or the registry, or
/// it is closing) is looked at again this much later instead of timing out.
pub const TIMER_RECHECK: Duration = Duration::from_secs(1);

// A recheck lands in a later bucket than the one firing.
const _: () = assert!(TIMER_RECHECK.as_millis() > TIMER_BUCKET.as_millis());

/// No bucket: the connection is not in the table.
pub(super) const NO_BUCKET: u32 = u32::MAX;

/// Deadlines of connections, by bucket. An entry names the connection by key and id (a key
/// is reused after a close; the id tells the connections on it apart).
#[derive(Debug, Default)]
pub(super) struct ConnTimers {
    /// Per bucket: each connection's key and the low 32 bits of its id (8 B an entry, one per
    /// connection). An entry left from an earlier connection on the same key that matches a
    /// later one by those bits (and by bucket) only has that one's deadline checked early:
    /// `conn_timer_due` re-arms a connection that is not due.
    buckets: BTreeMap<u32, Vec<(u32, u32)>>,
}

impl ConnTimers {
    /// Arms `conn` in `bucket` (an entry in an earlier bucket goes stale).
    fn enter(&mut self, conn: &mut Conn, bucket: u32) {
        conn.timer_bucket = bucket;
        self.buckets
            .entry(bucket)
            .or_default()
            .push((conn.key, conn.id as u32));
    }
}

impl ShardCore {
    /// Milliseconds since the core started, on a 32-bit clock (wraps after 49 days; only
    /// differences of timeouts are taken).
    pub(super) fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.started).as_millis() as u32
    }

    fn bucket_of(&self, at: Instant) -> u32 {
        let ms = at.saturating_duration_since(self.started).as_millis();
        let bucket = ms.div_ceil(TIMER_BUCKET.as_millis());
        bucket.min(u128::from(NO_BUCKET - 1)) as u32
    }

    fn bucket_start(&self, bucket: u32) -> Instant {
        self.started + TIMER_BUCKET * bucket
    }

    /// Input: `n` bytes arrived from the connection at `key` (its keep-alive restarts).
    pub fn bytes_in(&mut self, now: Instant, key: ConnKey, n: usize) {
        self.stats.bytes_in += n as u64;
        let ms = self.ms(now);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.last_in_ms = ms;
        }
    }

    /// Puts the connection at `key` in the table at its deadline, unless it is there already
    /// for an earlier one.
    pub(super) fn arm_conn_timer(&mut self, now: Instant, key: ConnKey) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Some(timeout) = conn.read_timeout() else {
            return;
        };
        let since = self.started + Duration::from_millis(u64::from(conn.last_in_ms));
        let due = (since + timeout).max(now);
        let bucket = self.bucket_of(due);
        let conn = &mut self.conns[key];
        if bucket >= conn.timer_bucket {
            return;
        }
        self.conn_timers.enter(conn, bucket);
    }

    /// The earliest instant a connection timer may fire.
    pub(super) fn next_conn_timer(&self) -> Option<Instant> {
        self.conn_timers
            .buckets
            .first_key_value()
            .map(|(&b, _)| self.bucket_start(b))
    }

    /// Closes the connections whose timeout passed (v5: DISCONNECT 0x8D Keep Alive timeout);
    /// moves the others to the bucket of their deadline.
    pub(super) fn fire_conn_timers(&mut self, now: Instant) {
        // Buckets that began by `now`: every deadline in them has passed (a deadline goes to
        // the bucket that begins at or after it), and one re-armed here lands later.
        let now_bucket = (now.saturating_duration_since(self.started).as_millis()
            / TIMER_BUCKET.as_millis())
        .min(u128::from(NO_BUCKET - 1)) as u32;
        let now_ms = self.ms(now);
        while let Some(entry) = self.conn_timers.buckets.first_entry() {
            if *entry.key() > now_bucket {
                break;
            }
            let (bucket, due) = entry.remove_entry();
            for (key, id) in due {
                let key = key as ConnKey;
                match self.conns.get_mut(key) {
                    Some(c) if c.id as u32 == id && c.timer_bucket == bucket => {
                        c.timer_bucket = NO_BUCKET
                    }
                    _ => continue,
                }
                self.conn_timer_due(now, now_ms, key);
            }
        }
    }

    fn conn_timer_due(&mut self, now: Instant, now_ms: u32, key: ConnKey) {
        let congested = self.congested();
        let conn = &self.conns[key];
        let Some(timeout) = conn.read_timeout() else {
            return;
        };
        // Not read now: the broker is the one waiting (verifier, registry, a client that does
        // not take its output, or a full outbox): the send timeout governs, not this one.
        let waiting_on_us = matches!(
            conn.phase,
            Phase::Verifying | Phase::Claiming | Phase::Closing
        ) || conn.out.len() >= self.limits.max_write_buffer_bytes
            || congested;
        if waiting_on_us {
            let bucket = self.bucket_of(now + TIMER_RECHECK);
            let conn = &mut self.conns[key];
            conn.last_in_ms = now_ms;
            self.conn_timers.enter(conn, bucket);
            return;
        }
        let idle = Duration::from_millis(u64::from(now_ms.wrapping_sub(conn.last_in_ms)));
        if idle < timeout {
            self.arm_conn_timer(now, key);
            assert!(
                self.bucket_start(self.conns[key].timer_bucket) > now,
                "a re-armed connection timer lies ahead"
            );
            return;
        }
        warn!(
            shard = self.id,
            conn = conn.id,
            peer = ?conn.peer(),
            phase = ?conn.phase,
            "keep-alive or connect timeout; closing"
        );
        self.close_conn(
            key,
            Close {
                reason: ReasonCode::KEEP_ALIVE_TIMEOUT,
                why: "keep-alive timeout",
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(now: Instant) -> ShardCore {
        super::super::test_core(now, Duration::from_millis(500), Limits::default())
    }

    fn open(c: &mut ShardCore, now: Instant) -> ConnKey {
        c.open_conn(now, None, crate::ListenerKind::Tcp, 1, 0).0
    }

    #[test]
    fn a_silent_connection_closes_at_the_connect_timeout_within_a_bucket() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let key = open(&mut c, t0);
        c.handle_timeout(t0 + Duration::from_millis(450));
        assert_eq!(c.conns[key].phase, Phase::AwaitConnect);
        let due = c.poll_timeout().expect("armed");
        assert!(due >= t0 + Duration::from_millis(500));
        assert!(due <= t0 + Duration::from_millis(500) + TIMER_BUCKET);
        c.handle_timeout(due);
        assert_eq!(c.conns[key].phase, Phase::Closing);
        assert_eq!(c.poll_conn(), Some((key, 0)), "the driver is told");
    }

    #[test]
    fn bytes_restart_the_timeout_and_one_entry_moves_along() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let key = open(&mut c, t0);
        // A byte every 300 ms for 3 s: never 500 ms of silence.
        for i in 1..=10u64 {
            let t = t0 + Duration::from_millis(300 * i);
            c.bytes_in(t, key, 1);
            c.handle_timeout(t);
            assert_eq!(c.conns[key].phase, Phase::AwaitConnect, "at {i}");
            let entries: usize = c.conn_timers.buckets.values().map(Vec::len).sum();
            assert!(entries <= 1, "one entry per connection, not one per read");
        }
        let last = t0 + Duration::from_millis(3000);
        c.handle_timeout(last + Duration::from_millis(650));
        assert_eq!(c.conns[key].phase, Phase::Closing);
    }

    #[test]
    fn a_closed_connection_leaves_nothing_that_fires() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let key = open(&mut c, t0);
        c.conn_closed(t0, key);
        let other = open(&mut c, t0 + Duration::from_millis(400));
        assert_eq!(other, key, "the key is reused");
        // The first connection's entry is stale: the second one lives to its own deadline.
        c.handle_timeout(t0 + Duration::from_millis(650));
        assert_eq!(c.conns[other].phase, Phase::AwaitConnect);
        c.handle_timeout(t0 + Duration::from_millis(1000));
        assert_eq!(c.conns[other].phase, Phase::Closing);
    }
}
