//! `$SYS/brokers/…` in EMQX's layout: node-wide totals summed over every shard, and counters
//! that count what actually happens (messages sent later from a session's queue, bytes).

mod common;

use common::*;
use shardmq_codec::{Packet, Protocol, QoS};
use std::collections::HashMap;
use std::time::Instant;

const NODE: &str = "shardmq@127.0.0.1";

/// A raw 3.1.1 client subscribed to `filter`, keeping the latest payload of every topic and
/// counting the PUBLISHes it received.
struct SysReader {
    raw: Raw,
    latest: HashMap<String, String>,
    received: u64,
}

impl SysReader {
    async fn subscribe(port: u16, client_id: &str, filter: &str) -> SysReader {
        let (mut raw, _) = Raw::connect(port, Protocol::V3_1_1, client_id, true).await;
        raw.send(&subscribe_packet(1, &[(filter, QoS::AtMostOnce)]))
            .await;
        let mut reader = SysReader {
            raw,
            latest: HashMap::new(),
            received: 0,
        };
        // A live $SYS update may come before the SUBACK: the shard's own route is in place
        // while the other shards acknowledge it.
        loop {
            match reader.raw.expect(WAIT).await {
                Packet::SubAck(ack) => {
                    assert_eq!(ack.reasons.iter().map(|r| r.0).collect::<Vec<_>>(), [0]);
                    return reader;
                }
                Packet::Publish(p) => reader.record(&p),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    fn record(&mut self, p: &shardmq_codec::Publish) {
        self.received += 1;
        let payload = String::from_utf8(p.payload.to_vec()).expect("UTF-8 $SYS payload");
        self.latest.insert(p.topic.to_string(), payload);
    }

    /// Reads updates until `check` holds for the latest figures (`Some` value returned), within
    /// `WAIT`. `check` sees the figures, the topic just updated, and how many PUBLISHes this
    /// reader had received before that update.
    async fn until<T>(
        &mut self,
        what: &str,
        mut check: impl FnMut(&HashMap<String, String>, &str, u64) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.next(left).await {
                Next::Packet(Packet::Publish(p)) => {
                    let before = self.received;
                    self.record(&p);
                    if let Some(v) = check(&self.latest, p.topic.as_str(), before) {
                        return v;
                    }
                }
                Next::Packet(_) => {}
                other => panic!("waiting for {what}: {other:?}; figures {:#?}", self.latest),
            }
        }
    }

    /// Waits until node figure `name` (below `$SYS/brokers/{node}/`) satisfies `ok`.
    async fn node_figure(&mut self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let topic = format!("$SYS/brokers/{NODE}/{name}");
        self.until(name, |latest, _, _| {
            latest
                .get(&topic)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&v| ok(v))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_topics_sum_every_shard_in_emqx_layout() {
    const K: usize = 8;
    let broker = Broker::start();
    let port = broker.port;
    let mut reader = SysReader::subscribe(port, "sys-reader", "$SYS/brokers/#").await;
    let mut clients = Vec::new();
    for i in 0..K {
        let (mut c, _) = Raw::connect(port, Protocol::V3_1_1, &format!("c-{i}"), true).await;
        let topic = format!("t/{i}");
        assert_eq!(
            c.subscribe(1, &[(&topic, QoS::AtMostOnce), ("common", QoS::AtMostOnce)])
                .await,
            vec![0, 0]
        );
        clients.push(c);
    }
    for i in 0..3 {
        clients[0]
            .publish(&format!("keep/{i}"), b"kept", QoS::AtLeastOnce, 1, true)
            .await;
    }
    // Connections and sessions: the K clients and the reader, on whichever shard the kernel
    // put them. Subscriptions: 2 per client and the reader's. Topics (filters routed on the
    // node): t/0..t/K-1, common, and the reader's filter.
    let n = (K + 1) as u64;
    reader
        .node_figure("stats/connections/count", |v| v == n)
        .await;
    reader.node_figure("stats/sessions/count", |v| v == n).await;
    reader
        .node_figure("stats/subscriptions/count", |v| v == 2 * K as u64 + 1)
        .await;
    reader
        .node_figure("stats/topics/count", |v| v == K as u64 + 2)
        .await;
    // Retained: the 3 messages and every (retained) $SYS topic, which the reader sees all of.
    reader
        .until("stats/retained/count", |latest, _, _| {
            let sys = latest.keys().filter(|t| t.starts_with("$SYS/")).count() as u64;
            let count: u64 = latest
                .get(&format!("$SYS/brokers/{NODE}/stats/retained/count"))?
                .parse()
                .ok()?;
            // Every node topic and both shards' figures are in before the count is judged.
            (sys >= 1 + 15 + 2 * 9 && count == sys + 3).then_some(())
        })
        .await;
    let shard_conns: u64 = (0..2)
        .map(|i| {
            reader.latest[&format!("$SYS/brokers/{NODE}/shards/{i}/connections")]
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(shard_conns > 0);

    // Two leave: counts fall, the maximum stays.
    for c in clients.drain(..2) {
        c.disconnect().await;
    }
    reader
        .node_figure("stats/connections/count", |v| v == n - 2)
        .await;
    reader
        .node_figure("stats/sessions/count", |v| v == n - 2)
        .await;
    reader
        .node_figure("stats/subscriptions/count", |v| v == 2 * K as u64 - 3)
        .await;
    reader
        .node_figure("stats/topics/count", |v| v == K as u64)
        .await;
    let max = reader.node_figure("stats/connections/max", |_| true).await;
    assert!(max >= n, "connections/max {max} below the {n} seen");

    let latest = &reader.latest;
    let get = |name: &str| -> &str {
        latest
            .get(&format!("$SYS/brokers/{NODE}/{name}"))
            .unwrap_or_else(|| panic!("{name} not published: {latest:#?}"))
    };
    assert_eq!(latest["$SYS/brokers"], NODE, "node list");
    assert_eq!(get("version"), env!("CARGO_PKG_VERSION"));
    assert!(!get("sysdescr").is_empty());
    get("uptime").parse::<u64>().expect("uptime in seconds");
    let dt = get("datetime");
    let b = dt.as_bytes();
    assert!(
        dt.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z' && dt >= "2024",
        "datetime {dt:?} is not RFC 3339 UTC"
    );
}

#[tokio::test]
async fn message_and_byte_counters_count_queued_sends_drops_and_bytes() {
    const ROUNDS: u16 = 10;
    const BURST: u16 = 5;
    const TOTAL: u64 = (ROUNDS * BURST) as u64;
    const PAYLOAD: usize = 100;
    // A window of 1: four of every five messages go out later, from the queue, when the
    // previous one is acknowledged.
    let broker = Broker::start_with(&[
        ("SHARDMQ_MQTT__MAX_INFLIGHT", "1"),
        ("SHARDMQ_MQTT__MAX_QUEUED_MESSAGES", "5"),
    ]);
    let port = broker.port;
    let mut reader = SysReader::subscribe(port, "sys-reader", "$SYS/brokers/+/metrics/#").await;
    // An offline session keeps 5 of the 50 messages and drops 45.
    let (mut offline, _) = Raw::connect(port, Protocol::V3_1_1, "offline", false).await;
    assert_eq!(
        offline.subscribe(1, &[("m/t", QoS::AtLeastOnce)]).await,
        [1]
    );
    offline.disconnect().await;
    let (mut sub, _) = Raw::connect(port, Protocol::V3_1_1, "sub", true).await;
    assert_eq!(sub.subscribe(1, &[("m/t", QoS::AtLeastOnce)]).await, [1]);
    let (mut publisher, _) = Raw::connect(port, Protocol::V3_1_1, "pub", true).await;
    let body = vec![b'x'; PAYLOAD];
    let mut pkid = 0;
    for _ in 0..ROUNDS {
        for _ in 0..BURST {
            pkid += 1;
            publisher
                .publish("m/t", &body, QoS::AtLeastOnce, pkid, false)
                .await;
        }
        for _ in 0..BURST {
            let p = sub.expect_publish().await;
            assert!(!p.dup);
            sub.send(&puback(p.pkid)).await;
        }
    }
    sub.expect_silence(QUIET).await;

    reader
        .node_figure("metrics/messages/received", |v| v == TOTAL)
        .await;
    reader
        .node_figure("metrics/messages/dropped", |v| v == TOTAL - 5)
        .await;
    reader
        .node_figure("metrics/bytes/received", |v| v >= TOTAL * PAYLOAD as u64)
        .await;
    reader
        .node_figure("metrics/bytes/sent", |v| v >= TOTAL * PAYLOAD as u64)
        .await;
    // Besides the subscriber's 50, the only PUBLISHes sent went to this reader, and a figure
    // counts no more of those than the reader received before it: so `sent` less the reader's
    // count is at most 50 and, once the figures catch up, close to it. Counting only direct
    // sends would give 10 here.
    let sent_topic = format!("$SYS/brokers/{NODE}/metrics/messages/sent");
    let mut excess = Vec::new();
    let net = reader
        .until("metrics/messages/sent", |latest, topic, before| {
            if topic != sent_topic {
                return None;
            }
            let v: u64 = latest[topic].parse().ok()?;
            let net = v as i64 - before as i64;
            if net > TOTAL as i64 {
                excess.push(net);
            }
            (net >= TOTAL as i64 - 10).then_some(net)
        })
        .await;
    assert!(
        excess.is_empty() && net <= TOTAL as i64,
        "messages/sent counts more than was sent: {excess:?}, {net}"
    );
}
