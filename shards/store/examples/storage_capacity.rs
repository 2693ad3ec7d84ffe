//! In-process measurement of the store at scale: recovery time and disk bytes for N persistent
//! sessions with one subscription each, and for N retained messages (issue #12).
//!
//! ```text
//! cargo run --release -p shardmq-store --example storage_capacity -- \
//!     [--sessions 1000000] [--retained 1000000] [--payload 64] [--dir /tmp/smq-store]
//! ```
//! For each data set it measures three ways a restart can find the data:
//! - `journal`: the log as a running shard writes it before any compaction (sessions:
//!   `Attached` + `Subscribed` + `Detached` per session; retained: `MessagePut` +
//!   `RetainedSet` per topic), written through `LogWriter` in 4 MiB batches;
//! - `snapshot`: the log after a start-up snapshot / compaction (one `SessionImage` per
//!   session; `MessagePut` + `RetainedSet` per topic);
//! - `restart`: the whole start-up (`shardmq_store::restart`: recover, split over 4 shards,
//!   snapshot each, commit, clean up) from the journal form.
//!
//! Times are wall-clock on the calling thread; the page cache is warm (the files were just
//! written), which is the common case for a restart; a cold cache adds read time at disk speed.

use bytes::Bytes;
use shardmq_codec::{ByteStr, Protocol, PublishProperties, QoS, SubscriptionOptions};
use shardmq_store::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

// The broker binary's allocator, so the figures are the broker's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn s(v: String) -> ByteStr {
    ByteStr::try_from_bytes(Bytes::from(v)).expect("valid string")
}

struct Args {
    sessions: u64,
    retained: u64,
    payload: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 1_000_000,
        retained: 1_000_000,
        payload: 64,
        dir: std::env::temp_dir().join("smq-store-capacity"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--sessions" => a.sessions = v.parse().expect("--sessions N"),
            "--retained" => a.retained = v.parse().expect("--retained N"),
            "--payload" => a.payload = v.parse().expect("--payload BYTES"),
            "--dir" => a.dir = PathBuf::from(v),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

/// Writes records through a LogWriter into shard 0 of `root` (generation 0).
fn write_journal(root: &Path, records: impl Iterator<Item = Record>) -> u64 {
    let dir = shard_dir(root, 0);
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = LogWriter::new(
        LogConfig::new(0, 0),
        LogPosition {
            segments: vec![(1, 0)],
            next_lsn: 0,
        },
    );
    let mut files: Vec<(String, std::fs::File)> = Vec::new();
    let mut flush = |w: &mut LogWriter| {
        let Some(batch) = w.take_batch() else { return };
        for sw in &batch.writes {
            if sw.create {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dir.join(&sw.file_name))
                    .unwrap();
                files.push((sw.file_name.clone(), f));
            }
            let f = &files.iter().find(|(n, _)| *n == sw.file_name).unwrap().1;
            f.write_all_at(&sw.bytes, sw.offset).unwrap();
        }
        w.batch_written(batch.last_lsn);
    };
    for r in records {
        w.append(&r);
        if w.pending_bytes() >= 4 << 20 {
            flush(&mut w);
        }
    }
    flush(&mut w);
    for (_, f) in &files {
        f.sync_data().unwrap();
    }
    w.disk_bytes()
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    for (_, d) in list_shard_dirs(root).unwrap() {
        for (_, p) in list_segments(&d).unwrap() {
            total += std::fs::metadata(p).unwrap().len();
        }
    }
    total
}

fn fresh(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
}

fn session(i: u64, now_ms: u64) -> StoredSession {
    let mut st = StoredSession::new(s(format!("client-{i:07}")), Protocol::V5, 3600);
    st.disconnected_at_unix_ms = Some(now_ms);
    st.updated_unix_ms = now_ms;
    st.subscriptions.push((
        s(format!("devices/{i:07}/cmd/#")),
        StoredSubscription {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            id: None,
        },
    ));
    st
}

fn retained_message(i: u64, payload: &Bytes) -> StoredMessage {
    StoredMessage {
        topic: s(format!("sensors/{i:07}/state")),
        payload: payload.clone(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: PublishProperties::default(),
        expires_at_unix_ms: None,
        publisher: s(format!("pub-{:03}", i % 1000)),
    }
}

/// CPU seconds (user + system) this process used so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Wall clock and CPU time of a phase.
struct Timer(Instant, f64);

impl Timer {
    fn start() -> Timer {
        Timer(Instant::now(), cpu_secs())
    }
    fn stop(&self) -> (f64, f64) {
        (self.0.elapsed().as_secs_f64(), cpu_secs() - self.1)
    }
}

fn report(what: &str, n: u64, bytes: u64, (wall, cpu): (f64, f64)) {
    println!(
        "{what:<30} {n:>8} items {:>7.1} MiB {:>6.1} B/item  wall {:>6.3} s  cpu {:>6.3} s  {:>6.0} k items/cpu-s",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / n.max(1) as f64,
        wall,
        cpu,
        n as f64 / cpu.max(1e-9) / 1000.0
    );
}

fn measure(
    root: &Path,
    name: &str,
    n: u64,
    journal: impl Fn() -> Box<dyn Iterator<Item = Record>>,
) {
    // Journal form.
    fresh(root);
    let t = Timer::start();
    let bytes = write_journal(root, journal());
    report(&format!("{name}: journal write"), n, bytes, t.stop());
    let t = Timer::start();
    let rec = recover(root).unwrap();
    let secs = t.stop();
    assert!(rec.shards.iter().all(|s| s.stop.is_none()));
    report(
        &format!("{name}: journal recover"),
        n,
        dir_bytes(root),
        secs,
    );
    let (sessions, retained) = (rec.state.sessions.len(), rec.state.retained.len());
    assert_eq!(sessions + retained, n as usize, "every item recovered");
    // Whole start-up over 4 shards from the journal form.
    drop(rec);
    let t = Timer::start();
    let r = restart(
        root,
        4,
        |c| c.bytes().map(usize::from).sum::<usize>() % 4,
        |t| t.bytes().map(usize::from).sum::<usize>() % 4,
        LogConfig::new(0, 0),
    )
    .unwrap();
    let secs = t.stop();
    let held: usize = r
        .shards
        .iter()
        .map(|p| p.state.sessions.len() + p.state.retained.len())
        .sum();
    assert_eq!(held, n as usize);
    drop(r);
    report(
        &format!("{name}: restart (4 shards)"),
        n,
        dir_bytes(root),
        secs,
    );
    // Snapshot form, recovered again.
    let t = Timer::start();
    let rec = recover(root).unwrap();
    let secs = t.stop();
    assert_eq!(
        rec.state.sessions.len() + rec.state.retained.len(),
        n as usize
    );
    report(
        &format!("{name}: snapshot recover"),
        n,
        dir_bytes(root),
        secs,
    );
}

fn main() {
    let a = args();
    let now_ms = 1_760_000_000_000u64;
    let payload = Bytes::from(vec![b'x'; a.payload]);
    let root = a.dir.clone();
    println!(
        "shardmq-store capacity: {} sessions (1 subscription each), {} retained ({} B payload), dir {}",
        a.sessions,
        a.retained,
        a.payload,
        root.display()
    );
    if a.sessions > 0 {
        let n = a.sessions;
        measure(&root, "sessions", n, move || {
            Box::new((0..n).flat_map(move |i| {
                let st = session(i, now_ms);
                let (filter, sub) = st.subscriptions[0].clone();
                [
                    Record::Attached {
                        client_id: st.client_id.clone(),
                        protocol: Protocol::V5,
                        expiry_secs: 3600,
                        will: None,
                        at_unix_ms: now_ms,
                    },
                    Record::Subscribed {
                        client_id: st.client_id.clone(),
                        filter,
                        subscription: sub,
                    },
                    Record::Detached {
                        client_id: st.client_id,
                        at_unix_ms: now_ms,
                    },
                ]
            }))
        });
    }
    if a.retained > 0 {
        let n = a.retained;
        let payload = payload.clone();
        measure(&root, "retained", n, move || {
            let payload = payload.clone();
            Box::new((0..n).flat_map(move |i| {
                let m = retained_message(i, &payload);
                let topic = m.topic.clone();
                [
                    Record::MessagePut {
                        id: i + 1,
                        message: m,
                    },
                    Record::RetainedSet {
                        topic,
                        message: i + 1,
                        at_unix_ns: now_ms * 1_000_000 + i,
                    },
                ]
            }))
        });
    }
    let _ = std::fs::remove_dir_all(&root);
}
