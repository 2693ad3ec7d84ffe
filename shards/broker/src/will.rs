//! Delayed wills (MQTT 5.0 §3.1.3.2.2): a will whose publication waits for its Will Delay
//! Interval, or for the end of its session if that comes first, and that a reconnect of the
//! same client cancels.
//!
//! Pure: the shard passes time in and drains what is due from its housekeeping tick.

use ahash::AHashMap;
use shardmq_codec::ByteStr;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long after the connection closed the will goes out: the Will Delay Interval, cut to the
/// session expiry interval (the will is published when the session ends, if that is earlier).
/// `None`: publish now.
pub fn will_delay(will_delay_secs: u32, session_expiry_secs: u32) -> Option<Duration> {
    let secs = will_delay_secs.min(session_expiry_secs);
    (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
}

/// Wills waiting for their time, at most one per client id, ordered by deadline.
#[derive(Debug)]
pub struct DelayedWills<T> {
    by_client: AHashMap<ByteStr, (Instant, u64)>,
    by_deadline: BTreeMap<(Instant, u64), (ByteStr, T)>,
    seq: u64,
}

impl<T> Default for DelayedWills<T> {
    fn default() -> Self {
        DelayedWills {
            by_client: AHashMap::new(),
            by_deadline: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<T> DelayedWills<T> {
    /// Schedules `will` of `client_id` for `at`. Returns the will it replaces, if the client
    /// already had one waiting (the caller publishes that one: its connection is long gone).
    pub fn schedule(&mut self, client_id: ByteStr, at: Instant, will: T) -> Option<T> {
        let old = self.cancel(&client_id);
        self.seq += 1;
        let key = (at, self.seq);
        self.by_client.insert(client_id.clone(), key);
        self.by_deadline.insert(key, (client_id, will));
        old
    }

    /// Removes the will waiting for `client_id` (the client reconnected), returning it.
    pub fn cancel(&mut self, client_id: &str) -> Option<T> {
        let key = self.by_client.remove(client_id)?;
        let (_, will) = self
            .by_deadline
            .remove(&key)
            .expect("both indexes hold every delayed will");
        Some(will)
    }

    /// The next will whose time has come at `now`, removed.
    pub fn pop_due(&mut self, now: Instant) -> Option<(ByteStr, T)> {
        let (&(at, _), _) = self.by_deadline.first_key_value()?;
        if at > now {
            return None;
        }
        let (_, (client_id, will)) = self.by_deadline.pop_first().expect("non-empty");
        self.by_client.remove(&client_id);
        Some((client_id, will))
    }

    /// When the next will is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Wills waiting.
    pub fn len(&self) -> usize {
        assert_eq!(self.by_client.len(), self.by_deadline.len());
        self.by_deadline.len()
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_is_the_shorter_of_will_delay_and_session_expiry() {
        assert_eq!(will_delay(0, 100), None, "no delay: now");
        assert_eq!(will_delay(30, 0), None, "session ends at once: now");
        assert_eq!(will_delay(30, 100), Some(Duration::from_secs(30)));
        assert_eq!(will_delay(300, 100), Some(Duration::from_secs(100)));
        assert_eq!(
            will_delay(u32::MAX, u32::MAX),
            Some(Duration::from_secs(u64::from(u32::MAX)))
        );
    }

    #[test]
    fn wills_come_due_in_deadline_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = DelayedWills::default();
        w.schedule("b".into(), t0 + s(20), 2);
        w.schedule("a".into(), t0 + s(10), 1);
        w.schedule("c".into(), t0 + s(10), 3);
        assert_eq!(w.next_deadline(), Some(t0 + s(10)));
        assert_eq!(w.pop_due(t0 + s(9)), None);
        assert_eq!(w.pop_due(t0 + s(10)), Some(("a".into(), 1)));
        assert_eq!(w.pop_due(t0 + s(10)), Some(("c".into(), 3)));
        assert_eq!(w.pop_due(t0 + s(15)), None);
        assert_eq!(w.pop_due(t0 + s(60)), Some(("b".into(), 2)));
        assert!(w.is_empty());
    }

    #[test]
    fn a_reconnect_cancels_the_will() {
        let t0 = Instant::now();
        let mut w = DelayedWills::default();
        w.schedule("a".into(), t0 + Duration::from_secs(5), 1);
        assert_eq!(w.cancel("a"), Some(1));
        assert_eq!(w.cancel("a"), None);
        assert_eq!(w.pop_due(t0 + Duration::from_secs(60)), None);
        assert!(w.is_empty());
    }

    #[test]
    fn scheduling_again_returns_the_replaced_will() {
        let t0 = Instant::now();
        let mut w = DelayedWills::default();
        assert_eq!(w.schedule("a".into(), t0 + Duration::from_secs(5), 1), None);
        assert_eq!(
            w.schedule("a".into(), t0 + Duration::from_secs(9), 2),
            Some(1)
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop_due(t0 + Duration::from_secs(5)), None);
        assert_eq!(
            w.pop_due(t0 + Duration::from_secs(9)),
            Some(("a".into(), 2))
        );
    }
}
