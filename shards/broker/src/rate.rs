//! Rate limits as plain types: time is an argument, nothing here reads a clock.

use std::time::Instant;

/// A token bucket: it gains `per_sec / shares` tokens a second and holds at most one second of
/// them (at least one token); each admitted event takes one. It starts full, at the first
/// [`TokenBucket::try_take`].
///
/// The shard runtime keeps one per shard for `listener.max_connection_rate`, with the node's
/// rate divided by the number of shards: no counter is shared between cores. Arithmetic is in
/// integers (a token is `shares × 10⁹` units, a nanosecond adds `per_sec` units), so the
/// long-run rate is exact however often it is asked.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Units gained per nanosecond.
    per_sec: u128,
    /// Units in one token.
    token: u128,
    /// Most units held.
    burst: u128,
    units: u128,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket for one of `shares` buckets sharing a rate of `per_sec` tokens a second.
    pub fn share_of(per_sec: u32, shares: usize) -> TokenBucket {
        assert!(per_sec > 0, "token bucket rate must be positive");
        assert!(shares > 0, "token bucket needs at least one share");
        let per_sec = u128::from(per_sec);
        let token = shares as u128 * 1_000_000_000;
        // One second of tokens, at least one token.
        let burst = (per_sec * 1_000_000_000).max(token);
        TokenBucket {
            per_sec,
            token,
            burst,
            units: burst,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`. Time going backwards adds nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now > last => {
                let ns = now.duration_since(last).as_nanos();
                self.units = self
                    .units
                    .saturating_add(ns.saturating_mul(self.per_sec))
                    .min(self.burst);
                self.last = Some(now);
            }
            Some(_) => {}
            None => self.last = Some(now),
        }
        if self.units >= self.token {
            self.units -= self.token;
            true
        } else {
            false
        }
    }

    /// Whole tokens available as of the last [`TokenBucket::try_take`].
    pub fn tokens(&self) -> u64 {
        u64::try_from(self.units / self.token).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn takes(bucket: &mut TokenBucket, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| bucket.try_take(now)).count()
    }

    #[test]
    fn starts_full_then_refuses_until_refilled() {
        let t0 = Instant::now();
        let mut b = TokenBucket::share_of(10, 2);
        assert_eq!(
            takes(&mut b, t0, 20),
            5,
            "burst: one second of 10/s over 2 shares"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)), "half a token");
        assert!(
            b.try_take(t0 + Duration::from_millis(200)),
            "one token after 200 ms"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(200)));
        // A long pause refills to the burst, not beyond.
        assert_eq!(takes(&mut b, t0 + Duration::from_secs(60), 20), 5);
        assert_eq!(b.tokens(), 0);
    }

    #[test]
    fn long_run_rate_is_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::share_of(300, 3);
        let mut admitted = 0;
        // 10 s of attempts every millisecond: the burst (100) + 100/s × 10 s, exactly.
        for ms in 0..=10_000u64 {
            admitted += usize::from(b.try_take(t0 + Duration::from_millis(ms)));
            admitted += usize::from(b.try_take(t0 + Duration::from_millis(ms)));
        }
        assert_eq!(admitted, 1100);
    }

    #[test]
    fn time_going_backwards_adds_no_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::share_of(1, 1);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn node_rate_is_shared_between_shards() {
        let t0 = Instant::now();
        // 10/s over 4 shards: 2.5/s each, burst 2.5 (2 whole tokens at once).
        let mut b = TokenBucket::share_of(10, 4);
        assert_eq!(takes(&mut b, t0, 10), 2);
        assert_eq!(takes(&mut b, t0 + Duration::from_millis(400), 10), 1);
        // A rate below the shard count still admits one at a time, slowly: 1/s over 4
        // shards is one every 4 s per shard.
        let mut slow = TokenBucket::share_of(1, 4);
        assert!(slow.try_take(t0));
        assert!(!slow.try_take(t0 + Duration::from_secs(3)));
        assert!(slow.try_take(t0 + Duration::from_secs(4)));
    }

    #[test]
    #[should_panic(expected = "positive")]
    fn zero_rate_is_a_bug() {
        TokenBucket::share_of(0, 1);
    }
}
