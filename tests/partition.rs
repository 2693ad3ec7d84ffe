//! Real partitions: every node of a cluster in its own network namespace, all on one bridge,
//! links cut and healed with nftables while the nodes run (no node is restarted).
//!
//! Topology per test: a bridge in the root namespace with the test's address (`.14` of its
//! /28), one namespace per node with a veth on the bridge; each node listens on its own
//! address (MQTT 1883, API 18083, QUIC 4370). The test's clients and API calls come from the
//! root namespace and are never cut. Cutting node A from node B drops, in each of the two
//! namespaces, what arrives from the other (an nftables set `cut` matched on input): packets
//! are lost silently as on a real partition, and sending never fails.
//!
//! Needs root, iproute2 and nftables (`nft`; installed with apt-get when missing). Each test is
//! bounded in time; the namespaces, bridge and processes go with the test, even on failure.

mod common;

use common::{cluster_env, eventually, http_with_key, V5};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const COOKIE: &str = "partition-test-cookie-0123456789";
const MQTT: u16 = 1883;
const API: u16 = 18083;
const QUIC: u16 = 4370;
/// Bound on the cluster forming, and on converging after a heal.
const FORM: Duration = Duration::from_secs(30);
/// Lines of each node's log shown when a test fails.
const DUMP_LINES: usize = 40;

/// Runs `cmd args`; panics with its output unless it succeeds.
fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `ip` and `nft`, installing nftables with apt-get once if it is missing.
fn tools() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let apt = |args: &[&str]| {
            let _ = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
        };
        if !have("nft") && have("apt-get") {
            apt(&["install", "-y", "-q", "nftables"]);
            if !have("nft") {
                apt(&["update", "-q"]);
                apt(&["install", "-y", "-q", "nftables"]);
            }
        }
    });
    assert!(
        have("ip") && have("nft"),
        "the partition tests need root, iproute2 (ip) and nftables (nft)"
    );
}

/// One node: its namespace, address and process.
struct NetNode {
    id: u64,
    ns: String,
    ip: String,
    child: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
    /// The API key every node of the net takes (the API is reached from outside loopback).
    key: String,
}

impl NetNode {
    fn api(&self) -> String {
        format!("{}:{API}", self.ip)
    }

    fn get(&self, path: &str) -> Value {
        http_with_key(&self.api(), "GET", path, Some(&self.key)).unwrap_or(Value::Null)
    }

    fn cluster(&self) -> Value {
        self.get("/api/v1/cluster")
    }

    fn rlog(&self) -> Value {
        self.get("/api/v1/rlog")
    }

    fn routes(&self) -> Option<u64> {
        self.cluster()["routes"].as_u64()
    }

    fn leader(&self) -> Option<u64> {
        self.cluster()["leader"].as_u64()
    }

    /// A replicant whose every RLOG shard follows a core: that core (`None` if not all normal
    /// or not all on one core).
    fn upstream(&self) -> Option<u64> {
        let shards = self.rlog()["shards"].as_array()?.clone();
        let ups: BTreeSet<Option<u64>> = shards
            .iter()
            .map(|s| {
                (s["state"] == "normal")
                    .then(|| s["upstream"].as_u64())
                    .flatten()
            })
            .collect();
        match ups.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(u)] if !shards.is_empty() => Some(*u),
            _ => None,
        }
    }

    /// Each RLOG shard's seq, in shard order.
    fn seqs(&self) -> Option<Vec<u64>> {
        self.rlog()["shards"]
            .as_array()?
            .iter()
            .map(|s| s["seq"].as_u64())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self, client_id: &str) -> V5 {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.ip.clone(), MQTT);
        o.set_clean_start(true);
        o.set_keep_alive(Duration::from_secs(30));
        V5::connect_opts(o).await.0
    }
}

/// A cluster whose nodes each have a network namespace.
struct Net {
    bridge: String,
    nodes: Vec<NetNode>,
}

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

impl Net {
    /// Cores 1..=`cores`, then replicants, each in its namespace, started and not yet formed.
    fn start(cores: usize, replicants: usize) -> Net {
        Net::start_with_purge(cores, replicants, 60_000)
    }

    /// [`Net::start`] with `cluster.node_down_purge_ms` = `purge_ms`.
    fn start_with_purge(cores: usize, replicants: usize, purge_ms: u64) -> Net {
        tools();
        let pid = std::process::id();
        let t = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        assert!(t < 15, "at most 15 nets per test process");
        let tag = format!("{}{t:x}", pid % 100_000);
        // 10.A.B.0/24 per test process, a /28 of it per net.
        let prefix = format!("10.{}.{}.", 200 + (pid >> 8) % 56, pid & 0xff);
        let base = u32::from(t) * 16;
        let bridge = format!("smqb{tag}");
        let mut net = Net {
            bridge: bridge.clone(),
            nodes: Vec::new(),
        };
        let (keys, key) = api_key(&tag);
        sh("ip", &["link", "add", &bridge, "type", "bridge"]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{prefix}{}/28", base + 14),
                "dev",
                &bridge,
            ],
        );
        sh("ip", &["link", "set", &bridge, "up"]);
        let n = cores + replicants;
        let ips: Vec<String> = (1..=n)
            .map(|i| format!("{prefix}{}", base + i as u32))
            .collect();
        let seeds = (0..cores)
            .map(|i| format!("{}@{}:{QUIC}", i + 1, ips[i]))
            .collect::<Vec<_>>()
            .join(",");
        for (i, ip) in ips.iter().enumerate() {
            let id = i as u64 + 1;
            let ns = format!("smq{tag}n{id}");
            let veth = format!("smv{tag}{id}");
            sh("ip", &["netns", "add", &ns]);
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            sh("ip", &["link", "set", &veth, "master", &bridge, "up"]);
            sh(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/28"), "dev", "eth0"],
            );
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            sh(
                "ip",
                &[
                    "netns", "exec", &ns, "nft", "add table inet smq; \
                     add set inet smq cut { type ipv4_addr; }; \
                     add chain inet smq input { type filter hook input priority 0; policy accept; }; \
                     add rule inet smq input ip saddr @cut drop",
                ],
            );
            let dir = std::env::temp_dir().join(format!("shardmq-netns-{tag}-{id}"));
            let _ = std::fs::remove_dir_all(&dir);
            let role = if i < cores { "core" } else { "replicant" };
            let mut env = cluster_env(id, role, &format!("{ip}:{QUIC}"), &seeds, COOKIE, &dir);
            env.extend(
                [
                    ("SHARDMQ_LISTENER__BIND", format!("{ip}:{MQTT}")),
                    ("SHARDMQ_API__LISTEN", format!("{ip}:{API}")),
                    (
                        "SHARDMQ_STORAGE__DIR",
                        dir.join("store").display().to_string(),
                    ),
                    ("SHARDMQ_NODE__CPUS", (i % 2).to_string()),
                    ("SHARDMQ_CLUSTER__NODE_DOWN_PURGE_MS", purge_ms.to_string()),
                    ("SHARDMQ_API__KEYS_FILE", keys.display().to_string()),
                    ("NO_COLOR", "1".to_string()),
                    (
                        "RUST_LOG",
                        std::env::var("PARTITION_RUST_LOG")
                            .unwrap_or_else(|_| "warn,shardmq=info,shardmq_cluster=info".into()),
                    ),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            );
            let log = std::env::temp_dir().join(format!("shardmq-netns-{tag}-{id}.log"));
            let file = std::fs::File::create(&log).expect("create node log");
            let child = Command::new("ip")
                .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_shardmq")])
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("clone log"))
                .stderr(file)
                .spawn()
                .expect("spawn shardmq in its namespace");
            net.nodes.push(NetNode {
                id,
                ns,
                ip: ip.clone(),
                child: Some(child),
                log,
                dir,
                key: key.clone(),
            });
        }
        net
    }

    fn node(&self, id: u64) -> &NetNode {
        &self.nodes[id as usize - 1]
    }

    fn set_cut(&self, a: u64, b: u64, cut: bool) {
        let verb = if cut { "add" } else { "delete" };
        for (x, y) in [(a, b), (b, a)] {
            let rule = format!("{verb} element inet smq cut {{ {} }}", self.node(y).ip);
            sh("ip", &["netns", "exec", &self.node(x).ns, "nft", &rule]);
        }
    }

    /// Cuts `a` from each of `others` (both directions).
    fn cut(&self, a: u64, others: &[u64]) {
        for &b in others {
            self.set_cut(a, b, true);
        }
    }

    fn heal(&self, a: u64, others: &[u64]) {
        for &b in others {
            self.set_cut(a, b, false);
        }
    }

    fn dump(&self) {
        for n in &self.nodes {
            eprintln!("node {}: {} / {}", n.id, n.cluster(), n.rlog());
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(DUMP_LINES).collect();
            eprintln!(
                "log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// Every core knows a leader, every replicant follows on all RLOG shards, and the members
    /// are all listed.
    async fn formed(&self, cores: usize) {
        let n = self.nodes.len();
        let ok = eventually(FORM, || async {
            self.nodes.iter().all(|x| {
                if (x.id as usize) <= cores {
                    x.leader().is_some()
                } else {
                    x.upstream().is_some()
                }
            }) && self.node(1).cluster()["members"]
                .as_array()
                .is_some_and(|m| m.len() == n)
        })
        .await;
        if !ok {
            self.dump();
            panic!("cluster did not form within {FORM:?}");
        }
    }

    /// No node has a write pending, every node has applied the same seq of every RLOG shard
    /// and counts the same routes.
    async fn converged(&self, what: &str) {
        let ok = eventually(FORM, || async {
            let idle = self
                .nodes
                .iter()
                .all(|n| n.cluster()["pending_writes"].as_u64() == Some(0));
            let seqs: BTreeSet<Option<Vec<u64>>> = self.nodes.iter().map(NetNode::seqs).collect();
            let routes: BTreeSet<Option<u64>> = self.nodes.iter().map(NetNode::routes).collect();
            idle && seqs.len() == 1
                && routes.len() == 1
                && !seqs.contains(&None)
                && !routes.contains(&None)
        })
        .await;
        if !ok {
            self.dump();
            panic!("tables did not converge within {FORM:?} {what}");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).status();
            let _ = std::fs::remove_dir_all(&n.dir);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A keys file with one API key (made by `shardmq ctl api-key create`), and the key.
fn api_key(tag: &str) -> (PathBuf, String) {
    let file = std::env::temp_dir().join(format!("shardmq-netns-{tag}-keys.json"));
    let _ = std::fs::remove_file(&file);
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["ctl", "api-key", "create", "--name", "partition-test"])
        .env("SHARDMQ_API__KEYS_FILE", &file)
        .output()
        .expect("run shardmq ctl api-key create");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .split_whitespace()
        .find(|w| w.starts_with("smq_"))
        .unwrap_or_else(|| panic!("no key printed: {stdout}"))
        .to_string();
    (file, key)
}

/// Receives until `want` distinct topics arrived or `within` passed; returns them.
async fn receive(sub: &mut V5, want: usize, within: Duration) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    let until = Instant::now() + within;
    while got.len() < want && Instant::now() < until {
        if let Some(p) = sub.next_publish(Duration::from_millis(200)).await {
            got.insert(String::from_utf8_lossy(&p.topic).into_owned());
        }
    }
    got
}

fn topics(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A minority core cut from every other node and healed: QoS 1 messages published on the
/// majority side while it is cut reach its connected subscriber after the heal (resent by the
/// forwarding lanes), a subscription made on either side during the cut lands, and the tables
/// converge, with no node restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_core_cut_off_and_healed_loses_no_acknowledged_message() {
    let net = Net::start(3, 1);
    net.formed(3).await;
    let mut on3 = net.node(3).client("sub-on-3").await;
    let mut on4 = net.node(4).client("sub-on-4").await;
    on3.subscribe("p/#", QoS::AtLeastOnce).await;
    on4.subscribe("p/#", QoS::AtLeastOnce).await;
    net.converged("before the cut").await;
    let mut p1 = net.node(1).client("pub-on-1").await;

    net.cut(3, &[1, 2, 4]);
    let cut_at = Instant::now();
    for i in 0..200 {
        p1.publish(&format!("p/{i}"), QoS::AtLeastOnce, false, "m")
            .await;
    }
    // The majority side goes on: its replicant gets every message during the cut, and a new
    // subscription there lands.
    let got4 = receive(&mut on4, 200, Duration::from_secs(10)).await;
    assert_eq!(got4, topics("p/", 200), "replicant 4 during the cut");
    let mut q1 = net.node(1).client("q-on-1").await;
    q1.subscribe("q/#", QoS::AtLeastOnce).await;
    // The minority core answers its SUBSCRIBE (after cluster.write_timeout_ms at most) and
    // writes the route once it can.
    let mut r3 = net.node(3).client("r-on-3").await;
    r3.subscribe("r/#", QoS::AtLeastOnce).await;
    assert!(
        on3.next_publish(Duration::from_millis(500)).await.is_none(),
        "a message crossed the cut"
    );
    // Hold the cut long enough for the QUIC connections to it to time out.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut_at.elapsed())).await;
    net.heal(3, &[1, 2, 4]);

    let got3 = receive(&mut on3, 200, FORM).await;
    assert_eq!(
        got3,
        topics("p/", 200),
        "core 3's subscriber after the heal"
    );
    net.converged("after the heal").await;
    // Routes written on either side of the cut work across it.
    p1.publish("r/1", QoS::AtLeastOnce, false, "r").await;
    let mut p3 = net.node(3).client("pub-on-3").await;
    p3.publish("q/1", QoS::AtLeastOnce, false, "q").await;
    assert_eq!(receive(&mut r3, 1, Duration::from_secs(10)).await.len(), 1);
    assert_eq!(receive(&mut q1, 1, Duration::from_secs(10)).await.len(), 1);
    assert!(
        on4.next_publish(Duration::from_millis(300)).await.is_none(),
        "duplicates"
    );
}

/// A replicant cut from the core it follows switches to another core; its clients stay
/// connected and keep receiving QoS 1 messages published on a third node throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicant_cut_from_its_core_switches_core_and_keeps_its_clients() {
    let net = Net::start(3, 1);
    net.formed(3).await;
    let first = net.node(4).upstream().expect("replicant follows a core");
    let publisher = (1..=3).find(|&c| c != first).unwrap();
    let mut sub = net.node(4).client("sub-on-4").await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    net.converged("before the cut").await;
    let mut p = net.node(publisher).client("pub").await;

    net.cut(4, &[first]);
    let mut sent = 0;
    let mut switched = None;
    let until = Instant::now() + FORM;
    while Instant::now() < until && (switched.is_none() || sent < 100) {
        p.publish(&format!("s/{sent}"), QoS::AtLeastOnce, false, "m")
            .await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        switched = switched.or(net.node(4).upstream().filter(|&u| u != first));
    }
    let Some(now_on) = switched else {
        net.dump();
        panic!("replicant 4 still not following another core than {first}");
    };
    // A subscription made on the replicant while cut from its first core lands.
    let mut t = net.node(4).client("t-on-4").await;
    t.subscribe("t/#", QoS::AtLeastOnce).await;
    let got = receive(&mut sub, sent, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        topics("s/", sent),
        "the replicant's subscriber, now on core {now_on}"
    );
    let ok = eventually(Duration::from_secs(10), || async {
        net.node(publisher).routes() == net.node(4).routes()
    })
    .await;
    assert!(ok, "t/# reached core {publisher}");
    p.publish("t/1", QoS::AtLeastOnce, false, "t").await;
    assert_eq!(receive(&mut t, 1, Duration::from_secs(10)).await.len(), 1);

    net.heal(4, &[first]);
    net.converged("after the heal").await;
    p.publish("s/after", QoS::AtLeastOnce, false, "m").await;
    assert_eq!(
        receive(&mut sub, 1, Duration::from_secs(10)).await,
        BTreeSet::from(["s/after".to_string()])
    );
}

/// A route storm on both sides of a partition (majority and minority core) heals to the same
/// tables everywhere, and each side's routes then carry messages from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_during_a_route_storm_heals_to_the_same_tables() {
    let net = Net::start(3, 1);
    net.formed(3).await;
    net.converged("before the cut").await;
    let before = net.node(1).routes().unwrap_or(0);
    net.cut(3, &[1, 2, 4]);
    let (mut s1, mut s4, mut s3) = (
        net.node(1).client("storm-1").await,
        net.node(4).client("storm-4").await,
        net.node(3).client("storm-3").await,
    );
    for i in 0..150 {
        s1.subscribe(&format!("storm/1/{i}"), QoS::AtLeastOnce)
            .await;
        s4.subscribe(&format!("storm/4/{i}"), QoS::AtLeastOnce)
            .await;
    }
    // Each SUBACK on the minority side waits cluster.write_timeout_ms (1 s).
    for i in 0..5 {
        s3.subscribe(&format!("storm/3/{i}"), QoS::AtLeastOnce)
            .await;
    }
    net.heal(3, &[1, 2, 4]);
    net.converged("after the storm").await;
    if net.node(3).routes() != Some(before + 305) {
        net.dump();
        panic!(
            "not every route of the storm is in: {:?} of {}",
            net.node(3).routes(),
            before + 305
        );
    }
    let mut p3 = net.node(3).client("storm-pub-3").await;
    let mut p1 = net.node(1).client("storm-pub-1").await;
    p3.publish("storm/1/7", QoS::AtLeastOnce, false, "x").await;
    p3.publish("storm/4/9", QoS::AtLeastOnce, false, "x").await;
    p1.publish("storm/3/4", QoS::AtLeastOnce, false, "x").await;
    assert_eq!(receive(&mut s1, 1, Duration::from_secs(10)).await.len(), 1);
    assert_eq!(receive(&mut s4, 1, Duration::from_secs(10)).await.len(), 1);
    assert_eq!(receive(&mut s3, 1, Duration::from_secs(10)).await.len(), 1);
}

/// A core cut off for longer than `cluster.node_down_purge_ms` is purged by the majority (its
/// routes and sessions leave the tables; messages for it are no longer forwarded). After the
/// heal it writes its routes and its sessions back at once, without waiting for the route
/// audit (every 15 s), and messages reach its subscriber again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_cut_longer_than_the_purge_grace_writes_its_routes_and_sessions_back() {
    let net = Net::start_with_purge(3, 1, 3500);
    net.formed(3).await;
    let mut on3 = net.node(3).client("long-3").await;
    on3.subscribe("l/#", QoS::AtLeastOnce).await;
    net.converged("before the cut").await;
    let routes = net.node(1).routes();
    let sessions = net.node(1).cluster()["sessions"].as_u64();
    assert!(
        sessions.is_some_and(|s| s >= 1),
        "{}",
        net.node(1).cluster()
    );

    net.cut(3, &[1, 2, 4]);
    let purged = eventually(Duration::from_secs(15), || async {
        net.node(1).routes() < routes && net.node(1).cluster()["sessions"].as_u64() < sessions
    })
    .await;
    if !purged {
        net.dump();
        panic!("core 3 was not purged");
    }
    net.heal(3, &[1, 2, 4]);
    let healed = Instant::now();
    let back = eventually(Duration::from_secs(12), || async {
        net.node(1).routes() == routes && net.node(1).cluster()["sessions"].as_u64() == sessions
    })
    .await;
    if !back {
        net.dump();
        panic!("core 3's routes and sessions are not back");
    }
    eprintln!(
        "core 3's routes and sessions back {:?} after the heal",
        healed.elapsed()
    );
    net.converged("after the heal").await;
    let mut p1 = net.node(1).client("long-pub-1").await;
    p1.publish("l/after", QoS::AtLeastOnce, false, "x").await;
    assert_eq!(
        receive(&mut on3, 1, Duration::from_secs(10)).await,
        BTreeSet::from(["l/after".to_string()])
    );
}
