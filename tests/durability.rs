//! `[storage]` end to end (docs/durability.md): a real `shardmq` process, stopped cleanly or
//! killed with SIGKILL, restarted on the same storage folder; the clients are rumqttc and the
//! raw codec client, which sees exact acknowledgements and reason codes.

mod common;

use common::{connect_packet, eventually, Broker, Next, Raw, V4, WAIT};
use shardmq_codec::{Packet, Protocol, QoS};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh storage folder for one test (removed when dropped).
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let dir =
            std::env::temp_dir().join(format!("shardmq-durability-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the storage folder");
        DataDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &DataDir, extra: &[(&str, &str)]) -> Broker {
    let mut env = vec![("SHARDMQ_STORAGE__DIR", dir.path())];
    env.extend_from_slice(extra);
    Broker::start_with(&env)
}

const Q1: rumqttc::QoS = rumqttc::QoS::AtLeastOnce;

#[tokio::test]
async fn a_clean_restart_keeps_retained_messages_and_queued_qos1_for_an_offline_session() {
    let dir = DataDir::new("clean");
    let mut broker = start(&dir, &[]);
    let (mut sub, ack) = V4::connect(broker.port, "keeper", false).await;
    assert!(!ack.session_present);
    assert_eq!(sub.subscribe("q/#", Q1).await, Some(Q1));
    sub.disconnect().await;
    let (mut publisher, _) = V4::connect(broker.port, "pub", true).await;
    publisher.publish("r/1", Q1, true, "kept").await;
    for i in 0..3 {
        publisher.publish("q/x", Q1, false, format!("m{i}")).await;
    }
    publisher.disconnect().await;
    broker.terminate();
    drop(broker);

    let broker = start(&dir, &[]);
    let (mut sub, ack) = V4::connect(broker.port, "keeper", false).await;
    assert!(ack.session_present, "the persistent session came back");
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish().await;
        assert_eq!(p.topic, "q/x");
        got.push(String::from_utf8_lossy(&p.payload).to_string());
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
    sub.expect_no_publish(Duration::from_millis(300)).await;
    // The subscription itself survived: a new publish reaches it.
    let (mut publisher, _) = V4::connect(broker.port, "pub", true).await;
    publisher.publish("q/y", Q1, false, "after").await;
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"after");
    let (mut fresh, _) = V4::connect(broker.port, "fresh", true).await;
    fresh.subscribe("r/#", Q1).await;
    let r = fresh.expect_publish().await;
    assert_eq!(
        (r.topic.as_str(), r.payload.as_ref(), r.retain),
        ("r/1", &b"kept"[..], true)
    );
    // `shardmq ctl storage status` reads /api/v1/storage.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args([
            "ctl",
            "--api",
            &broker.api_addr(),
            "--json",
            "storage",
            "status",
        ])
        .output()
        .expect("run shardmq ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(status["durability"], "sync");
    assert_eq!(status["restored_sessions"], 1, "{status}");
    assert_eq!(status["restored_retained"], 1, "{status}");
    assert!(status["fsyncs"].as_u64().unwrap() > 0, "{status}");
    assert!(status["disk_bytes"].as_u64().unwrap() > 0, "{status}");
}

/// `dir` as a path relative to the working directory (`../../tmp/...`).
fn relative_to_cwd(dir: &Path) -> PathBuf {
    let cwd = std::env::current_dir().expect("cwd");
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.join(dir.strip_prefix("/").expect("absolute temp dir"))
}

#[tokio::test]
async fn a_relative_storage_folder_works_like_the_default_data() {
    // The default `storage.dir` is `data`, relative: glommio refused relative paths (EBADF),
    // so every write failed and QoS 1 publishes were refused.
    let dir = DataDir::new("relative");
    let rel = relative_to_cwd(&dir.0);
    let rel = rel.to_str().expect("utf-8");
    let mut broker = Broker::start_with(&[("SHARDMQ_STORAGE__DIR", rel)]);
    let (mut publisher, _) = V4::connect(broker.port, "pub", true).await;
    publisher.publish("r/rel", Q1, true, "kept").await;
    publisher.disconnect().await;
    assert!(
        !broker.log_contains("cannot write the log"),
        "{}",
        broker.log()
    );
    broker.terminate();
    drop(broker);
    let broker = Broker::start_with(&[("SHARDMQ_STORAGE__DIR", rel)]);
    let (mut fresh, _) = V4::connect(broker.port, "fresh", true).await;
    fresh.subscribe("r/#", Q1).await;
    let r = fresh.expect_publish().await;
    assert_eq!(
        (r.topic.as_str(), r.payload.as_ref()),
        ("r/rel", &b"kept"[..])
    );
}

#[tokio::test]
async fn durability_off_writes_nothing() {
    let dir = DataDir::new("off");
    let mut broker = start(&dir, &[("SHARDMQ_STORAGE__DURABILITY", "off")]);
    let (mut publisher, _) = V4::connect(broker.port, "pub", true).await;
    publisher.publish("r/off", Q1, true, "gone").await;
    publisher.disconnect().await;
    broker.terminate();
    drop(broker);
    assert!(
        !dir.0.join("shards").exists(),
        "nothing stored with durability = off"
    );
    let broker = start(&dir, &[("SHARDMQ_STORAGE__DURABILITY", "off")]);
    let (mut fresh, _) = V4::connect(broker.port, "fresh", true).await;
    fresh.subscribe("r/#", Q1).await;
    fresh.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_second_broker_on_the_same_storage_folder_is_refused() {
    let dir = DataDir::new("lock");
    let _first = start(&dir, &[]);
    let port = common::reserve_port();
    let api = common::reserve_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .env("SHARDMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
        .env("SHARDMQ_API__LISTEN", format!("127.0.0.1:{api}"))
        .env("SHARDMQ_NODE__CPUS", "0")
        .env("SHARDMQ_STORAGE__DIR", dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run a second shardmq");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("in use by another shardmq process"),
        "unexpected output: {text}"
    );
}

#[tokio::test]
async fn sessions_land_on_their_owner_when_the_shard_count_changes() {
    let dir = DataDir::new("reshard");
    let clients = 8;
    for (round, cpus) in ["0", "0-1", "0"].iter().enumerate() {
        let mut broker = start(&dir, &[("SHARDMQ_NODE__CPUS", cpus)]);
        for i in 0..clients {
            let id = format!("c{i}");
            let (mut c, ack) = V4::connect(broker.port, &id, false).await;
            if round == 0 {
                assert!(!ack.session_present);
                c.subscribe(&format!("c/{i}"), Q1).await;
            } else {
                assert!(ack.session_present, "{id} after the move to cpus {cpus}");
                let p = c.expect_publish().await;
                assert_eq!(p.payload.as_ref(), format!("{i}-{}", round - 1).as_bytes());
            }
            c.disconnect().await;
        }
        let (mut publisher, _) = V4::connect(broker.port, "pub", true).await;
        for i in 0..clients {
            publisher
                .publish(&format!("c/{i}"), Q1, false, format!("{i}-{round}"))
                .await;
        }
        publisher
            .publish("r/shards", Q1, true, format!("{round}"))
            .await;
        publisher.disconnect().await;
        if round > 0 {
            let (mut fresh, _) = V4::connect(broker.port, "fresh", true).await;
            fresh.subscribe("r/#", Q1).await;
            assert_eq!(
                fresh.expect_publish().await.payload.as_ref(),
                format!("{round}").as_bytes()
            );
        }
        broker.terminate();
    }
}

// ---- kill -9 ------------------------------------------------------------------------------

/// A small xorshift: the rounds' kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Connects (raw 3.1.1), or `None` if the broker dies first.
async fn try_connect(port: u16, client_id: &str, clean: bool) -> Option<(Raw, bool)> {
    let mut raw = Raw::open(port, Protocol::V3_1_1).await;
    let connect = common::connect_packet(Protocol::V3_1_1, client_id, clean, 0);
    raw.send(&Packet::Connect(Box::new(connect))).await;
    match raw.next(WAIT).await {
        Next::Packet(Packet::ConnAck(a)) if a.code.0 == 0 => Some((raw, a.session_present)),
        _ => None,
    }
}

/// A persistent subscriber (raw 3.1.1, clean session off) that acknowledges everything and
/// records the payloads it received, until the connection closes or `quiet` passes.
async fn drain(port: u16, subscribe: bool, quiet: Duration) -> (BTreeSet<u64>, bool) {
    let Some((sub, present)) = try_connect(port, "kill-sub", false).await else {
        assert!(!subscribe, "the broker died while no one killed it");
        return (BTreeSet::new(), false);
    };
    drain_from(sub, present, subscribe, quiet).await
}

async fn drain_from(
    mut sub: Raw,
    present: bool,
    subscribe: bool,
    quiet: Duration,
) -> (BTreeSet<u64>, bool) {
    if subscribe {
        // The session resends what was in flight first: PUBLISHes may come before the SUBACK.
        sub.send(&common::subscribe_packet(1, &[("k/t", QoS::AtLeastOnce)]))
            .await;
    }
    let mut got = BTreeSet::new();
    let mut subacked = !subscribe;
    loop {
        let wait = if subacked { quiet } else { WAIT };
        match sub.next(wait).await {
            Next::Packet(Packet::Publish(p)) => {
                let n: u64 = std::str::from_utf8(&p.payload)
                    .expect("utf-8")
                    .parse()
                    .expect("a number");
                got.insert(n);
                sub.send(&common::puback(p.pkid)).await;
            }
            Next::Packet(Packet::SubAck(a)) => {
                assert_eq!(a.reasons.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
                subacked = true;
            }
            Next::Packet(_) => {}
            Next::Timeout | Next::Closed | Next::Garbage(_) => {
                assert!(subacked || matches!(sub.next(Duration::ZERO).await, Next::Closed));
                return (got, present);
            }
        }
    }
}

/// Publishes QoS 1 with up to 16 in flight until the connection dies; returns the numbers
/// acknowledged (topic `k/t`) and the highest retained one acknowledged (`k/r`).
async fn publish_until_killed(port: u16, first: u64) -> (Vec<u64>, Option<u64>) {
    let Some((mut p, _)) = try_connect(port, "kill-pub", true).await else {
        return (Vec::new(), None);
    };
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    let (mut acked, mut retained) = (Vec::new(), None);
    let mut next = first;
    let mut pkid = 0u16;
    loop {
        while inflight.len() < 16 {
            pkid = pkid % 60_000 + 1;
            let (topic, retain) = if next.is_multiple_of(7) {
                ("k/r", true)
            } else {
                ("k/t", false)
            };
            let packet = common::publish_packet(
                topic,
                next.to_string().as_bytes(),
                QoS::AtLeastOnce,
                pkid,
                retain,
            );
            p.send(&packet).await;
            inflight.insert(pkid, next);
            next += 1;
        }
        match p.next(Duration::from_secs(3)).await {
            Next::Packet(Packet::PubAck(a)) => {
                let n = inflight
                    .remove(&a.pkid)
                    .expect("a PUBACK for a PUBLISH in flight");
                if n.is_multiple_of(7) {
                    retained = retained.max(Some(n));
                } else {
                    acked.push(n);
                }
            }
            Next::Packet(other) => panic!("unexpected {other:?}"),
            _ => return (acked, retained),
        }
    }
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9_at_random_moments() {
    let rounds: u64 = std::env::var("KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        });
    println!("KILL_SEED={seed} KILL_ROUNDS={rounds}");
    let mut rng = Rng(seed);
    let dir = DataDir::new("kill");
    let started = Instant::now();
    let mut acked_all: BTreeSet<u64> = BTreeSet::new();
    let mut received: BTreeSet<u64> = BTreeSet::new();
    let mut retained_acked: Option<u64> = None;
    let mut next = 1u64;
    let mut total_acked = 0usize;
    for round in 0..rounds {
        let broker = start(&dir, &[]);
        // What the previous rounds left for the subscriber (its session came back).
        let (got, present) = drain(broker.port, true, Duration::from_millis(300)).await;
        assert!(
            round == 0 || present,
            "round {round}: the session came back"
        );
        received.extend(got);
        let missing: Vec<u64> = acked_all.difference(&received).copied().collect();
        assert!(
            missing.is_empty(),
            "round {round} (KILL_SEED={seed}): {} acknowledged messages lost, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        if let Some(r) = retained_acked {
            let (mut fresh, _) =
                Raw::connect(broker.port, Protocol::V3_1_1, "kill-ret", true).await;
            fresh.subscribe(1, &[("k/r", QoS::AtMostOnce)]).await;
            let p = fresh.expect_publish().await;
            let n: u64 = std::str::from_utf8(&p.payload)
                .expect("utf-8")
                .parse()
                .expect("number");
            assert!(
                n >= r,
                "round {round}: retained {n} older than acknowledged {r}"
            );
            fresh.disconnect().await;
        }
        // Publish with the subscriber online, and kill the broker at a random moment.
        let port = broker.port;
        // The subscriber's session is settled on its connection's shard before publishing
        // starts (a session moving between shards misses what is routed meanwhile).
        let (sub, present) = try_connect(port, "kill-sub", false)
            .await
            .expect("the subscriber connects");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let subscriber = tokio::spawn(drain_from(sub, present, false, Duration::from_secs(5)));
        let publisher = tokio::spawn(publish_until_killed(port, next));
        tokio::time::sleep(Duration::from_millis(30 + rng.below(250))).await;
        let pid = broker.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill -9");
        assert!(status.success());
        let (acked, retained) = publisher.await.expect("publisher task");
        let (got, _) = subscriber.await.expect("subscriber task");
        drop(broker);
        total_acked += acked.len();
        next = acked.iter().copied().max().unwrap_or(next).max(next) + 64;
        acked_all.extend(acked);
        received.extend(got);
        retained_acked = retained_acked.max(retained);
    }
    // The last restart, then everything acknowledged must have been delivered.
    let broker = start(&dir, &[]);
    let (got, _) = drain(broker.port, true, Duration::from_millis(500)).await;
    received.extend(got);
    let missing: Vec<u64> = acked_all.difference(&received).copied().collect();
    assert!(
        missing.is_empty(),
        "after the last round (KILL_SEED={seed}): {} acknowledged messages lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(total_acked > 0, "the rounds acknowledged nothing");
    println!(
        "{rounds} rounds in {:?}: {total_acked} acknowledged, all delivered",
        started.elapsed()
    );
}

// ---- a full disk --------------------------------------------------------------------------

/// Mounts a tmpfs of `size` at `dir`; `false` (with the reason printed) if that is not
/// possible here (not root, no mount).
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "skipped: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("skipped: cannot run mount: {e}");
            false
        }
    }
}

/// Fills the file system holding `path` (a file of that name) until it refuses a write.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = f.flush();
}

/// A v5 PUBLISH QoS 1 and its PUBACK's reason code (None: no PUBACK within `within`).
async fn puback_code(p: &mut Raw, pkid: u16, payload: &[u8], within: Duration) -> Option<u8> {
    let packet = common::publish_packet("full/r", payload, QoS::AtLeastOnce, pkid, true);
    p.send(&packet).await;
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.next(left).await {
            Next::Packet(Packet::PubAck(a)) if a.pkid == pkid => return Some(a.reason.0),
            Next::Packet(_) => {}
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_full_disk_refuses_qos1_with_0x97_and_recovers_when_space_returns() {
    let dir = DataDir::new("full");
    if !mount_tmpfs(&dir.0, "4m") {
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&dir.0);
    let broker = start(&dir, &[]);
    let filler = dir.0.join("filler");
    fill(&filler);
    // Stored (retained) QoS 1 publishes until the disk refuses one: its PUBACK is held.
    let (mut first, _) = Raw::connect(broker.port, Protocol::V5, "full-1", true).await;
    let payload = vec![b'x'; 16 * 1024];
    let mut pkid = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        pkid += 1;
        match puback_code(&mut first, pkid, &payload, Duration::from_millis(500)).await {
            Some(0) => assert!(Instant::now() < deadline, "the disk never filled"),
            None => break,
            Some(code) => panic!("unexpected PUBACK reason {code:#x}"),
        }
    }
    assert!(
        common::eventually(WAIT, || async {
            broker.log_contains("cannot write the log")
        })
        .await,
        "{}",
        broker.log()
    );
    // A new publisher is refused at once: 0x97 Quota exceeded, not acknowledged and lost.
    let (mut second, _) = Raw::connect(broker.port, Protocol::V5, "full-2", true).await;
    for id in 1..=3 {
        assert_eq!(
            puback_code(&mut second, id, b"refused", WAIT).await,
            Some(0x97)
        );
    }
    // 3.1.1 has no negative acknowledgement: the connection is closed, the PUBLISH is not
    // acknowledged (the publisher resends it after reconnecting).
    let (mut old, _) = Raw::connect(broker.port, Protocol::V3_1_1, "full-3", true).await;
    let packet = common::publish_packet("full/r", b"refused", QoS::AtLeastOnce, 7, true);
    old.send(&packet).await;
    loop {
        match old.next(WAIT).await {
            Next::Packet(Packet::PubAck(a)) => {
                panic!("3.1.1 PUBLISH acknowledged on a full disk: {a:?}")
            }
            Next::Packet(_) => {}
            Next::Closed => break,
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
    std::fs::remove_file(&filler).expect("free the space");
    // The retry succeeds: the held PUBACK goes out, new publishes are acknowledged.
    let held = first.expect(Duration::from_secs(5)).await;
    assert!(
        matches!(&held, Packet::PubAck(a) if a.pkid == pkid && a.reason.0 == 0),
        "{held:?}"
    );
    assert!(
        common::eventually(WAIT, || async {
            broker.log_contains("writes succeed again")
        })
        .await
    );
    assert_eq!(puback_code(&mut second, 4, b"stored", WAIT).await, Some(0));
    let errors = broker.log().matches("cannot write the log").count();
    assert!(
        (1..=2).contains(&errors),
        "the error is logged once per shard, not per message: {errors}"
    );
}

// ---- compaction while serving -------------------------------------------------------------

/// `shardmq ctl storage status --json`.
fn storage_status(broker: &Broker) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args([
            "ctl",
            "--api",
            &broker.api_addr(),
            "--json",
            "storage",
            "status",
        ])
        .output()
        .expect("run shardmq ctl");
    serde_json::from_slice(&out.stdout).expect("storage status JSON")
}

/// Bytes of the segment files under `dir` (what `du` counts, without the folders).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue, // deleted meanwhile by a compaction pass
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

const COMPACT_TOPICS: u64 = 16;
const COMPACT_PAYLOAD: usize = 8 << 10;

/// Publishes retained QoS 1 messages `first..first + n` (payload: the number, a `:` and
/// padding to 8 KiB) round-robin over `c/r/0..15`, 16 in flight, until done or the connection
/// dies; records per topic the highest number acknowledged, and the largest disk use of
/// `dir` seen every 64 acknowledgements.
async fn publish_retained(
    port: u16,
    first: u64,
    n: u64,
    dir: &Path,
    acked: &mut HashMap<u64, u64>,
) -> u64 {
    let Some((mut p, _)) = try_connect(port, "compact-pub", true).await else {
        return 0;
    };
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    let (mut next, mut done, mut max_disk) = (first, 0u64, 0u64);
    let mut pkid = 0u16;
    while done < n {
        while inflight.len() < 16 && next < first + n {
            pkid = pkid % 60_000 + 1;
            let mut payload = format!("{next}:").into_bytes();
            payload.resize(COMPACT_PAYLOAD, b'x');
            let topic = format!("c/r/{}", next % COMPACT_TOPICS);
            let packet = common::publish_packet(&topic, &payload, QoS::AtLeastOnce, pkid, true);
            p.send(&packet).await;
            inflight.insert(pkid, next);
            next += 1;
        }
        match p.next(Duration::from_secs(3)).await {
            Next::Packet(Packet::PubAck(a)) => {
                let m = inflight.remove(&a.pkid).expect("a PUBACK in flight");
                let e = acked.entry(m % COMPACT_TOPICS).or_default();
                *e = (*e).max(m);
                done += 1;
                if done.is_multiple_of(64) {
                    max_disk = max_disk.max(disk_bytes(dir));
                }
            }
            Next::Packet(other) => panic!("unexpected {other:?}"),
            _ => break,
        }
    }
    max_disk
}

/// Every topic's retained message is at least the last acknowledged one.
async fn check_retained(port: u16, acked: &HashMap<u64, u64>, what: &str) {
    let (mut fresh, _) = Raw::connect(port, Protocol::V3_1_1, "compact-check", true).await;
    fresh.subscribe(1, &[("c/r/#", QoS::AtMostOnce)]).await;
    let mut got: HashMap<u64, u64> = HashMap::new();
    while got.len() < acked.len() {
        let p = fresh.expect_publish().await;
        let text = std::str::from_utf8(&p.payload[..24]).expect("utf-8");
        let n: u64 = text.split(':').next().unwrap().parse().expect("number");
        assert_eq!(p.payload.len(), COMPACT_PAYLOAD);
        got.insert(n % COMPACT_TOPICS, n);
    }
    for (topic, last) in acked {
        assert!(
            got[topic] >= *last,
            "{what}: c/r/{topic} holds {} older than acknowledged {last}",
            got[topic]
        );
    }
    fresh.disconnect().await;
}

#[tokio::test]
async fn compaction_while_serving_bounds_disk_use_and_recovers_after_a_restart_and_kill_9() {
    let dir = DataDir::new("compact");
    let env = [
        ("SHARDMQ_STORAGE__SEGMENT_BYTES", "131072"),
        ("SHARDMQ_STORAGE__COMPACT_MIN_BYTES", "1048576"),
        (
            "RUST_LOG",
            "warn,shardmq::node=info,shardmq_shards::durable=info",
        ),
    ];
    let mut broker = start(&dir, &env);
    // A persistent session with queued messages: live state that every pass must keep.
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V3_1_1, "compact-sub", false).await;
    sub.subscribe(1, &[("c/q/#", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut p, _) = Raw::connect(broker.port, Protocol::V3_1_1, "compact-q", true).await;
    for i in 0..5u16 {
        p.publish(
            "c/q/x",
            format!("q{i}").as_bytes(),
            QoS::AtLeastOnce,
            i + 1,
            false,
        )
        .await;
    }
    p.disconnect().await;

    // 2800 × 8 KiB retained ≈ 22 MiB written over 16 topics (live: 128 KiB).
    let mut acked = HashMap::new();
    let max_disk = publish_retained(broker.port, 1, 2800, &dir.0, &mut acked).await;
    let status = storage_status(&broker);
    let written = status["bytes_written"].as_u64().unwrap();
    println!("written {written} B, disk at most {max_disk} B");
    const BOUND: u64 = 2 << 20;
    assert!(written >= 10 * BOUND, "{status}");
    assert!(
        max_disk <= BOUND,
        "disk use {max_disk} B not bounded by the live state ({written} B written)"
    );
    assert!(broker.log_contains("compaction pass done"), "no pass ran");
    check_retained(broker.port, &acked, "live").await;

    // A clean restart after compaction.
    broker.terminate();
    drop(broker);
    let broker = start(&dir, &env);
    check_retained(broker.port, &acked, "clean restart").await;
    drop(broker);

    // kill -9 at moments during passes.
    let mut next = 100_000u64;
    for round in 0..4u64 {
        let broker = start(&dir, &env);
        check_retained(broker.port, &acked, &format!("kill round {round}")).await;
        let port = broker.port;
        let path = dir.0.clone();
        let publisher = tokio::spawn(async move {
            let mut acked = HashMap::new();
            publish_retained(port, next, 1_000_000, &path, &mut acked).await;
            acked
        });
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        let status = std::process::Command::new("kill")
            .args(["-9", &broker.pid().to_string()])
            .status()
            .expect("kill -9");
        assert!(status.success());
        for (t, n) in publisher.await.expect("publisher") {
            let e = acked.entry(t).or_default();
            *e = (*e).max(n);
        }
        next += 1_000_000;
        drop(broker);
    }
    let broker = start(&dir, &env);
    check_retained(broker.port, &acked, "after the kills").await;
    assert!(disk_bytes(&dir.0) <= BOUND);
    // The persistent session and its queue survived every pass and restart.
    let (mut sub, present) = try_connect(broker.port, "compact-sub", false)
        .await
        .expect("connects");
    assert!(present, "the persistent session survived compaction");
    for i in 0..5 {
        let p = sub.expect_publish().await;
        assert_eq!(p.payload.as_ref(), format!("q{i}").as_bytes());
        sub.send(&common::puback(p.pkid)).await;
    }
}

/// A will waiting for its Will Delay Interval is stored with its session: a `kill -9` during
/// the delay, then a restart, and the will is still published (once), at about the time it was
/// due.
#[tokio::test]
async fn a_delayed_will_survives_kill_9_during_its_delay() {
    let dir = DataDir::new("will");
    let broker = start(&dir, &[]);
    let mut connect = connect_packet(Protocol::V5, "willer", false, 0);
    connect.properties.session_expiry_interval = Some(600);
    connect.will = Some(shardmq_codec::LastWill {
        topic: "wills/willer".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: shardmq_codec::WillProperties {
            will_delay_interval: Some(3),
            ..Default::default()
        },
    });
    let (willer, ack) = Raw::connect_with(broker.port, connect).await;
    assert_eq!(ack.code.0, 0);
    // Abnormal end: the TCP connection drops without DISCONNECT; the will waits 3 s.
    drop(willer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::process::Command::new("kill")
        .args(["-9", &broker.pid().to_string()])
        .status()
        .expect("kill -9");
    assert!(status.success());
    drop(broker);
    let broker = start(&dir, &[]);
    // Retained: whoever subscribes after it went out sees it too.
    let got = eventually(Duration::from_secs(8), || async {
        let (mut sub, _) = Raw::connect(broker.port, Protocol::V5, "will-watch", true).await;
        sub.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
        matches!(sub.next(Duration::from_millis(300)).await, Next::Packet(shardmq_codec::Packet::Publish(p)) if &p.payload[..] == b"gone")
    })
    .await;
    assert!(got, "the delayed will was lost across kill -9");
}
