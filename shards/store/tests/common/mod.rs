//! Test helpers: a generator of valid record streams (what a runtime would write), a disk
//! writer driving `LogWriter` with std::fs, and a canonical view of a state.
#![allow(dead_code)]

use bytes::Bytes;
use shardmq_codec::{
    ByteStr, LastWill, Protocol, PublishProperties, QoS, RetainHandling, SubscriptionOptions,
    WillProperties,
};
use shardmq_store::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// xorshift64*: small, seeded, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn s(v: &str) -> ByteStr {
    ByteStr::try_from_bytes(Bytes::copy_from_slice(v.as_bytes())).unwrap()
}

pub fn qos(n: u64) -> QoS {
    QoS::from_u8((n % 3) as u8).unwrap()
}

pub fn message(rng: &mut Rng) -> StoredMessage {
    let mut properties = PublishProperties::default();
    if rng.chance(40) {
        properties.message_expiry_interval = Some(rng.below(1000) as u32 + 1);
        properties.content_type = Some(s("text/plain"));
        properties
            .user_properties
            .push((s("k"), s(&format!("v{}", rng.below(9)))));
        properties.correlation_data = Some(Bytes::from(vec![rng.below(255) as u8; 3]));
        properties.payload_format_indicator = Some(1);
        properties.response_topic = Some(s("resp/x"));
    }
    let len = rng.below(40) as usize;
    StoredMessage {
        topic: s(&format!("t/{}", rng.below(6))),
        payload: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>()),
        qos: qos(rng.below(3)),
        retain: rng.chance(30),
        properties,
        expires_at_unix_ms: rng
            .chance(30)
            .then(|| 1_700_000_000_000 + rng.below(1 << 20)),
        publisher: s(&format!("pub{}", rng.below(3))),
    }
}

pub fn will(rng: &mut Rng) -> LastWill {
    LastWill {
        topic: s("will/t"),
        payload: Bytes::from_static(b"gone"),
        qos: qos(rng.below(3)),
        retain: rng.chance(50),
        properties: WillProperties {
            will_delay_interval: rng.chance(50).then(|| rng.below(100) as u32),
            user_properties: vec![(s("a"), s("b"))].into_iter().collect(),
            ..WillProperties::default()
        },
    }
}

pub fn options(rng: &mut Rng) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: qos(rng.below(3)),
        no_local: rng.chance(30),
        retain_as_published: rng.chance(30),
        retain_handling: match rng.below(3) {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            _ => RetainHandling::Never,
        },
    }
}

/// Generates `n` records a correct runtime could write, keeping a replayed `State` to pick
/// valid targets. Messages are put before they are referenced.
pub fn generate(seed: u64, n: usize) -> Vec<Record> {
    generate_with_boundaries(seed, n).0
}

/// [`generate`], plus the indices where one runtime step's records end (a publish puts its
/// message and queues it in one step: a restart can only happen between steps).
pub fn generate_with_boundaries(seed: u64, n: usize) -> (Vec<Record>, Vec<usize>) {
    let mut boundaries = vec![0];
    let mut rng = Rng::new(seed);
    let mut state = State::new();
    let mut out = Vec::with_capacity(n);
    let mut next_id: MessageId = 1;
    let mut now_ms = 1_700_000_000_000u64;
    let mut next_pkid: u16 = 1;
    while out.len() < n {
        now_ms += rng.below(1000);
        let mut clients: Vec<ByteStr> = state.sessions.keys().cloned().collect();
        clients.sort();
        let pick = |rng: &mut Rng| clients[rng.below(clients.len() as u64) as usize].clone();
        let mut batch: Vec<Record> = Vec::new();
        let op = rng.below(20);
        if clients.is_empty() || op == 0 {
            let client_id = s(&format!("c{}", rng.below(12)));
            batch.push(if rng.chance(50) {
                let mut img = StoredSession::new(client_id, Protocol::V5, 3600);
                img.updated_unix_ms = now_ms;
                Record::SessionImage(Box::new(img))
            } else {
                Record::Attached {
                    client_id,
                    protocol: if rng.chance(50) {
                        Protocol::V5
                    } else {
                        Protocol::V3_1_1
                    },
                    expiry_secs: rng.below(10_000) as u32,
                    will: rng.chance(40).then(|| Box::new(will(&mut rng))),
                    at_unix_ms: now_ms,
                }
            });
        } else {
            let c = pick(&mut rng);
            let sess = &state.sessions[&c];
            match op {
                1 => batch.push(Record::Detached {
                    client_id: c,
                    at_unix_ms: now_ms,
                }),
                2 => batch.push(Record::Expiry {
                    client_id: c,
                    expiry_secs: rng.below(100) as u32,
                }),
                3 if sess.will.is_some() => batch.push(Record::WillCleared { client_id: c }),
                4 => batch.push(Record::Subscribed {
                    client_id: c,
                    filter: s(&format!("t/{}", rng.below(4))),
                    subscription: StoredSubscription {
                        options: options(&mut rng),
                        id: rng.chance(50).then(|| rng.below(1000) as u32 + 1),
                    },
                }),
                5 if !sess.subscriptions.is_empty() => {
                    let i = rng.below(sess.subscriptions.len() as u64) as usize;
                    batch.push(Record::Unsubscribed {
                        client_id: c,
                        filter: sess.subscriptions[i].0.clone(),
                    })
                }
                6..=8 => {
                    // A publish: put once, queue for one to three sessions, maybe retain.
                    let id = next_id;
                    next_id += 1;
                    let m = message(&mut rng);
                    let topic = m.topic.clone();
                    batch.push(Record::MessagePut { id, message: m });
                    for _ in 0..=rng.below(3) {
                        let target = pick(&mut rng);
                        let seq = state.sessions[&target].last_seq
                            + 1
                            + batch
                                .iter()
                                .filter(|r| matches!(r, Record::Enqueued { client_id, .. } if *client_id == target))
                                .count() as u64;
                        batch.push(Record::Enqueued {
                            client_id: target,
                            delivery: StoredDelivery {
                                seq,
                                message: id,
                                qos: qos(1 + rng.below(2)),
                                retain: rng.chance(20),
                                sub_ids: (0..rng.below(3)).map(|i| i as u32 + 1).collect(),
                                shared: rng.chance(20).then(|| s("$share/g/t/#")),
                            },
                        });
                    }
                    if rng.chance(40) {
                        batch.push(Record::RetainedSet {
                            topic,
                            message: id,
                            at_unix_ns: now_ms * 1_000_000,
                        });
                    }
                }
                9 | 10 if !sess.queue.is_empty() => {
                    let seq = sess.queue[0].seq;
                    next_pkid = next_pkid.wrapping_add(1).max(1);
                    batch.push(Record::Sent {
                        client_id: c,
                        seq,
                        pkid: next_pkid,
                    });
                }
                11 if !sess.queue.is_empty() => {
                    let i = rng.below(sess.queue.len() as u64) as usize;
                    batch.push(Record::Dropped {
                        client_id: c,
                        seq: sess.queue[i].seq,
                    });
                }
                12 if sess.inflight.iter().any(|i| !i.released) => {
                    let i = sess.inflight.iter().find(|i| !i.released).unwrap();
                    batch.push(Record::Released {
                        client_id: c,
                        pkid: i.pkid,
                    });
                }
                13 | 14 if !sess.inflight.is_empty() => {
                    let i = rng.below(sess.inflight.len() as u64) as usize;
                    batch.push(Record::Completed {
                        client_id: c,
                        pkid: sess.inflight[i].pkid,
                    });
                }
                15 => {
                    let pkid = rng.below(50) as u16 + 1;
                    if !sess.awaiting_rel.contains(&pkid) {
                        batch.push(Record::RelAwaited { client_id: c, pkid });
                    }
                }
                16 if !sess.awaiting_rel.is_empty() => batch.push(Record::RelDone {
                    client_id: c,
                    pkid: sess.awaiting_rel[0],
                }),
                17 => batch.push(Record::SessionDelete { client_id: c }),
                18 => batch.push(Record::RetainedClear {
                    topic: s(&format!("t/{}", rng.below(6))),
                    at_unix_ns: now_ms * 1_000_000,
                }),
                19 => {
                    let mut img = sess.clone();
                    img.updated_unix_ms = now_ms;
                    batch.push(Record::SessionImage(Box::new(img)));
                }
                _ => {}
            }
        }
        for r in batch {
            if out.len() == n {
                break;
            }
            state.apply(0, out.len() as Lsn, r.clone());
            out.push(r);
        }
        boundaries.push(out.len());
    }
    assert_eq!(
        state.anomalies, 0,
        "the generator only writes valid records"
    );
    (out, boundaries)
}

/// Replays `records` in memory (shard 0, LSNs from 0) and finishes.
pub fn replay(records: &[Record]) -> State {
    let mut st = State::new();
    for (lsn, r) in records.iter().enumerate() {
        st.apply(0, lsn as Lsn, r.clone());
    }
    st.finish();
    st
}

/// Writes `records` into `<root>/shards/<shard>/` as generation `generation` through a
/// `LogWriter`, in batches of random sizes, the way the runtime would. Returns the writer and
/// the LSN of each record.
pub fn write_log(
    root: &Path,
    shard: u32,
    generation: u64,
    records: &[Record],
    segment_bytes_max: u64,
    seed: u64,
) -> LogWriter {
    let dir = shard_dir(root, shard);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = LogConfig::new(shard, generation);
    cfg.segment_bytes_max = segment_bytes_max;
    let mut w = LogWriter::new(
        cfg,
        LogPosition {
            segments: vec![(1, 0)],
            next_lsn: 0,
        },
    );
    let mut rng = Rng::new(seed);
    for r in records {
        w.append(r);
        if rng.chance(30) {
            flush(&dir, &mut w);
        }
    }
    flush(&dir, &mut w);
    w
}

/// Writes and "syncs" whatever the writer has pending.
pub fn flush(dir: &Path, w: &mut LogWriter) {
    let Some(batch) = w.take_batch() else { return };
    for sw in &batch.writes {
        let path = dir.join(&sw.file_name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(sw.create)
            .create_new(sw.create)
            .open(&path)
            .unwrap();
        assert_eq!(f.metadata().unwrap().len(), sw.offset, "writes only append");
        f.write_all_at(&sw.bytes, sw.offset).unwrap();
    }
    w.batch_written(batch.last_lsn);
    w.batch_durable(batch.last_lsn);
}

/// A state with messages inlined, in sorted maps: equal for equal data whatever the ids.
#[derive(Debug, PartialEq, Eq)]
pub struct Canon {
    pub retained: BTreeMap<String, (u64, String)>,
    pub sessions: BTreeMap<String, String>,
}

pub fn canon(st: &State) -> Canon {
    let msg = |id: MessageId| format!("{:?}", st.messages.get(&id));
    let retained = st
        .retained
        .iter()
        .map(|(t, e)| {
            (
                t.to_string(),
                (e.at_unix_ns, e.message.map(msg).unwrap_or_default()),
            )
        })
        .collect();
    let sessions = st
        .sessions
        .iter()
        .map(|(c, sess)| {
            let mut s2 = sess.clone();
            let inflight: Vec<String> = s2
                .inflight
                .iter_mut()
                .map(|i| {
                    let m = msg(i.delivery.message);
                    i.delivery.message = 0;
                    format!("{i:?}{m}")
                })
                .collect();
            let queue: Vec<String> = s2
                .queue
                .iter_mut()
                .map(|d| {
                    let m = msg(d.message);
                    d.message = 0;
                    format!("{d:?}{m}")
                })
                .collect();
            (c.to_string(), format!("{s2:?}|{inflight:?}|{queue:?}"))
        })
        .collect();
    Canon { retained, sessions }
}
