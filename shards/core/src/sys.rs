//! `$SYS` topics in EMQX's layout. Every shard counts on its own (no lock, no shared counter
//! on the message path) and, at each `sys.interval_ms`, publishes its own figures under
//! `$SYS/brokers/{node}/shards/{i}/…` and sends a [`ShardFigures`] snapshot to shard 0.
//! ShardCore 0 keeps the latest snapshot of every shard in a [`NodeFigures`] and publishes the
//! node-wide totals under `$SYS/brokers/{node}/…`. Totals lag by at most one interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `$SYS/brokers/{node}/sysdescr` says.
pub const SYSDESCR: &str = "shardmq, an MQTT broker";

/// One shard's figures at one instant. Counters (`messages_*`, `bytes_*`) are totals since
/// start; the rest are current counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardFigures {
    /// Client connections (sockets) the shard holds.
    pub connections: u64,
    /// Sessions the shard holds, connected or not.
    pub sessions: u64,
    /// Subscriptions (session, filter) of the shard's sessions.
    pub subscriptions: u64,
    /// Filters in the shard's route replica: every filter subscribed on the node.
    pub topics: u64,
    /// Topics in the shard's retained replica.
    pub retained: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients for the first time (DUP resends not counted).
    pub messages_sent: u64,
    /// Messages dropped for a subscriber (queue full, expired, too large, buffer full).
    pub messages_dropped: u64,
    /// Bytes read from client sockets.
    pub bytes_received: u64,
    /// Bytes written to client sockets.
    pub bytes_sent: u64,
}

const FIELDS: usize = 10;

impl ShardFigures {
    fn to_array(self) -> [u64; FIELDS] {
        [
            self.connections,
            self.sessions,
            self.subscriptions,
            self.topics,
            self.retained,
            self.messages_received,
            self.messages_sent,
            self.messages_dropped,
            self.bytes_received,
            self.bytes_sent,
        ]
    }

    fn from_array(a: [u64; FIELDS]) -> ShardFigures {
        let [connections, sessions, subscriptions, topics, retained, messages_received, messages_sent, messages_dropped, bytes_received, bytes_sent] =
            a;
        ShardFigures {
            connections,
            sessions,
            subscriptions,
            topics,
            retained,
            messages_received,
            messages_sent,
            messages_dropped,
            bytes_received,
            bytes_sent,
        }
    }
}

/// Every shard's latest [`ShardFigures`], for readers outside the data plane (the management
/// API's `/metrics`). Each shard stores its own slot on its housekeeping tick (at most every
/// 250 ms), never on the message path; a reader sees figures at most one tick old, and the
/// figures of one slot may come from two adjacent ticks.
#[derive(Debug)]
pub struct FigureBoard {
    slots: Box<[[AtomicU64; FIELDS]]>,
}

impl FigureBoard {
    /// A board of `shards` slots, all zero.
    pub fn new(shards: usize) -> FigureBoard {
        FigureBoard {
            slots: (0..shards)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }

    /// ShardCore `shard`'s figures now.
    pub fn store(&self, shard: usize, figures: ShardFigures) {
        for (slot, value) in self.slots[shard].iter().zip(figures.to_array()) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Every shard's latest figures, by shard id.
    pub fn shards(&self) -> Vec<ShardFigures> {
        self.slots
            .iter()
            .map(|slot| {
                ShardFigures::from_array(std::array::from_fn(|i| slot[i].load(Ordering::Relaxed)))
            })
            .collect()
    }
}

/// ShardCore 0's view of the node: the latest snapshot from every shard.
#[derive(Debug)]
pub struct NodeFigures {
    latest: Vec<Option<ShardFigures>>,
    connections_max: u64,
}

impl NodeFigures {
    pub fn new(shards: usize) -> NodeFigures {
        NodeFigures {
            latest: vec![None; shards],
            connections_max: 0,
        }
    }

    /// Records `shard`'s latest snapshot.
    pub fn record(&mut self, shard: usize, figures: ShardFigures) {
        assert!(
            shard < self.latest.len(),
            "snapshot from unknown shard {shard}"
        );
        self.latest[shard] = Some(figures);
    }

    /// The node's totals over the latest snapshots, once every shard has reported. Counts
    /// and counters add up; `topics` and `retained` are replicated on every shard, so the
    /// largest replica counts. Also updates the highest connection count seen.
    pub fn totals(&mut self) -> Option<ShardFigures> {
        let mut t = ShardFigures::default();
        for f in &self.latest {
            let f = (*f)?;
            t.connections += f.connections;
            t.sessions += f.sessions;
            t.subscriptions += f.subscriptions;
            t.topics = t.topics.max(f.topics);
            t.retained = t.retained.max(f.retained);
            t.messages_received += f.messages_received;
            t.messages_sent += f.messages_sent;
            t.messages_dropped += f.messages_dropped;
            t.bytes_received += f.bytes_received;
            t.bytes_sent += f.bytes_sent;
        }
        self.connections_max = self.connections_max.max(t.connections);
        Some(t)
    }

    /// Highest node-wide connection count seen at a `$SYS` interval.
    pub fn connections_max(&self) -> u64 {
        self.connections_max
    }
}

/// The node-wide topics (relative to `$SYS/brokers/{node}/`) and their payloads.
pub fn node_topics(
    t: &ShardFigures,
    connections_max: u64,
    uptime: Duration,
    wall: SystemTime,
) -> Vec<(&'static str, String)> {
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("uptime", uptime.as_secs().to_string()),
        ("datetime", rfc3339(wall)),
        ("sysdescr", SYSDESCR.to_string()),
        ("stats/connections/count", t.connections.to_string()),
        ("stats/connections/max", connections_max.to_string()),
        ("stats/sessions/count", t.sessions.to_string()),
        ("stats/subscriptions/count", t.subscriptions.to_string()),
        ("stats/topics/count", t.topics.to_string()),
        ("stats/retained/count", t.retained.to_string()),
        ("metrics/messages/received", t.messages_received.to_string()),
        ("metrics/messages/sent", t.messages_sent.to_string()),
        ("metrics/messages/dropped", t.messages_dropped.to_string()),
        ("metrics/bytes/received", t.bytes_received.to_string()),
        ("metrics/bytes/sent", t.bytes_sent.to_string()),
    ]
}

/// `wall` as RFC 3339 in UTC, to the second: `2024-05-06T07:08:09Z`.
pub fn rfc3339(wall: SystemTime) -> String {
    let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_709_251_199)), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(at(1_735_689_600)), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(4_102_444_800)), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn civil_dates_round_the_calendar() {
        // Every day from 1970 to 2400 follows the one before it.
        let (mut y, mut m, mut d) = civil_from_days(0);
        for days in 1..(430 * 366) {
            let next = civil_from_days(days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            let expect = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, expect, "day {days}");
            (y, m, d) = next;
        }
    }

    fn figures(n: u64) -> ShardFigures {
        ShardFigures {
            connections: n,
            sessions: n + 1,
            subscriptions: n + 2,
            topics: n + 3,
            retained: n + 4,
            messages_received: n + 5,
            messages_sent: n + 6,
            messages_dropped: n + 7,
            bytes_received: n + 8,
            bytes_sent: n + 9,
        }
    }

    #[test]
    fn totals_wait_for_every_shard_then_add_counts_and_take_replicas_once() {
        let mut node = NodeFigures::new(2);
        node.record(0, figures(10));
        assert_eq!(node.totals(), None, "shard 1 has not reported");
        node.record(1, figures(20));
        let t = node.totals().expect("both reported");
        assert_eq!(t.connections, 30);
        assert_eq!(t.sessions, 32);
        assert_eq!(t.subscriptions, 34);
        assert_eq!(t.topics, 23, "replicated: the largest replica, not the sum");
        assert_eq!(
            t.retained, 24,
            "replicated: the largest replica, not the sum"
        );
        assert_eq!(t.messages_received, 40);
        assert_eq!(t.messages_sent, 42);
        assert_eq!(t.messages_dropped, 44);
        assert_eq!(t.bytes_received, 46);
        assert_eq!(t.bytes_sent, 48);
        // A newer snapshot replaces the older one; the maximum connection count stays.
        node.record(1, figures(0));
        assert_eq!(node.totals().unwrap().connections, 10);
        assert_eq!(node.connections_max(), 30);
    }

    #[test]
    fn node_topics_follow_emqx_names() {
        let t = figures(1);
        let topics = node_topics(&t, 7, Duration::from_millis(65_500), at(0));
        let get = |name: &str| {
            topics
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .1
                .clone()
        };
        assert_eq!(get("uptime"), "65");
        assert_eq!(get("datetime"), "1970-01-01T00:00:00Z");
        assert_eq!(get("version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(get("stats/connections/count"), "1");
        assert_eq!(get("stats/connections/max"), "7");
        assert_eq!(get("metrics/bytes/sent"), "10");
        assert_eq!(topics.len(), 15);
    }
}
