//! Failure throttling per source address: a bounded table of recent failures (pure, time as
//! an argument) and a delay thread that delivers late failure replies without holding a
//! worker asleep.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::service::{deliver, AuthOutcome, Reply, ThrottleSettings};

/// IPv6 sources are counted per /64 (one host usually owns a whole /64); IPv4 (and v4-mapped
/// v6) per address.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_ms: u64,
    seq: u64,
}

/// Recent failures per source, at most `table_max` sources (the least recently failing one
/// is forgotten first).
#[derive(Debug)]
pub(crate) struct FailureTable {
    settings: ThrottleSettings,
    entries: HashMap<IpAddr, Entry>,
    by_age: BTreeMap<(u64, u64), IpAddr>,
    seq: u64,
}

impl FailureTable {
    pub(crate) fn new(settings: ThrottleSettings) -> FailureTable {
        FailureTable {
            settings,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Records a failure from `ip` at `now_ms`; returns how long to hold its reply (ms).
    pub(crate) fn failure(&mut self, ip: IpAddr, now_ms: u64) -> u64 {
        let s = self.settings;
        if s.table_max == 0 {
            return 0;
        }
        let ip = source_key(ip);
        let mut e = match self.entries.remove(&ip) {
            Some(e) => {
                self.by_age.remove(&(e.last_ms, e.seq));
                e
            }
            None => Entry {
                failures: 0,
                last_ms: now_ms,
                seq: 0,
            },
        };
        if now_ms.saturating_sub(e.last_ms) > s.window_ms {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_ms = e.last_ms.max(now_ms);
        self.seq += 1;
        e.seq = self.seq;
        while self.entries.len() >= s.table_max {
            let Some((_, old)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&old);
        }
        self.by_age.insert((e.last_ms, e.seq), ip);
        self.entries.insert(ip, e);
        assert!(self.entries.len() == self.by_age.len() && self.entries.len() <= s.table_max);
        if e.failures <= s.free_failures {
            return 0;
        }
        let shift = (e.failures - s.free_failures - 1).min(32);
        s.base_delay_ms
            .saturating_mul(1u64 << shift)
            .min(s.max_delay_ms)
    }

    /// A success from `ip` forgets its failures.
    pub(crate) fn success(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.remove(&source_key(ip)) {
            self.by_age.remove(&(e.last_ms, e.seq));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

struct Delayed {
    reply: Reply,
    outcome: AuthOutcome,
}

#[derive(Default)]
struct DelayState {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    jobs: HashMap<u64, Delayed>,
    seq: u64,
    shutdown: bool,
}

/// A thread that calls replies when they are due. At most `delayed_max` replies wait; beyond
/// that a reply is delivered at once.
#[derive(Clone)]
pub(crate) struct Delayer {
    shared: Arc<(Mutex<DelayState>, Condvar)>,
    max: usize,
}

impl Delayer {
    pub(crate) fn start(max: usize) -> std::io::Result<Delayer> {
        let d = Delayer {
            shared: Arc::new((Mutex::new(DelayState::default()), Condvar::new())),
            max,
        };
        let me = d.clone();
        std::thread::Builder::new()
            .name("auth-delay".into())
            .spawn(move || me.run())?;
        Ok(d)
    }

    /// Calls `reply(outcome)` at `due` (or now, when too many wait or on shutdown).
    pub(crate) fn schedule(&self, due: Instant, reply: Reply, outcome: AuthOutcome) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if st.shutdown || st.jobs.len() >= self.max {
            drop(st);
            deliver(reply, outcome);
            return;
        }
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Reverse((due, seq)));
        st.jobs.insert(seq, Delayed { reply, outcome });
        drop(st);
        cv.notify_one();
    }

    /// Delivers everything that waits and stops the thread.
    pub(crate) fn shutdown(&self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        cv.notify_one();
    }

    fn run(self) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((at, seq))) = st.heap.peek().copied() {
                if at > now && !st.shutdown {
                    // not due yet
                    break;
                }
                st.heap.pop();
                if let Some(job) = st.jobs.remove(&seq) {
                    due.push(job);
                }
            }
            if !due.is_empty() {
                drop(st);
                for job in due {
                    deliver(job.reply, job.outcome);
                }
                st = lock.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if st.shutdown {
                return;
            }
            let wait = st
                .heap
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(now));
            st = match wait {
                Some(d) => {
                    cv.wait_timeout(st, d.max(Duration::from_micros(100)))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            table_max: 3,
            window_ms: 1000,
            free_failures: 2,
            base_delay_ms: 100,
            max_delay_ms: 500,
            delayed_max: 10,
        }
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut t = FailureTable::new(settings());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let delays: Vec<u64> = (0..7).map(|i| t.failure(ip, i)).collect();
        assert_eq!(delays, [0, 0, 100, 200, 400, 500, 500]);
        t.success(ip);
        assert_eq!(t.failure(ip, 10), 0);
        assert_eq!(t.failure(ip, 11), 0);
        assert_eq!(t.failure(ip, 12), 100);
        assert_eq!(
            t.failure(ip, 2000),
            0,
            "old failures are forgotten after the window"
        );
    }

    #[test]
    fn table_is_bounded_and_forgets_the_oldest() {
        let mut t = FailureTable::new(settings());
        for i in 0..10u8 {
            let ip: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            for _ in 0..3 {
                t.failure(ip, u64::from(i));
            }
        }
        assert_eq!(t.len(), 3);
        let first: IpAddr = "10.0.0.0".parse().unwrap();
        assert_eq!(t.failure(first, 20), 0, "evicted, counts afresh");
        let last: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(t.failure(last, 21), 200);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let mut t = FailureTable::new(settings());
        for i in 1..=3u16 {
            let ip: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            t.failure(ip, 0);
        }
        assert_eq!(t.len(), 1);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        t.failure(mapped, 0);
        t.failure(v4, 0);
        assert_eq!(t.failure(v4, 0), 100);
    }

    #[test]
    fn delayer_delivers_in_order_and_on_shutdown() {
        let d = Delayer::start(2).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let now = Instant::now();
        for (ms, tag) in [(80u64, "late"), (20, "early"), (10_000, "flushed")] {
            let tx = tx.clone();
            let reply: Reply = Box::new(move |_| tx.send((tag, Instant::now())).unwrap());
            d.schedule(
                now + Duration::from_millis(ms),
                reply,
                AuthOutcome::NotAuthorized,
            );
        }
        // the third did not fit (max 2) and went out at once
        assert_eq!(rx.recv().unwrap().0, "flushed");
        let (a, ta) = rx.recv().unwrap();
        let (b, tb) = rx.recv().unwrap();
        assert_eq!((a, b), ("early", "late"));
        assert!(ta >= now + Duration::from_millis(20) && tb >= now + Duration::from_millis(80));
        let tx2 = tx.clone();
        d.schedule(
            now + Duration::from_secs(3600),
            Box::new(move |_| tx2.send(("s", Instant::now())).unwrap()),
            AuthOutcome::NotAuthorized,
        );
        d.shutdown();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().0, "s");
    }
}
