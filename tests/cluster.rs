//! A real cluster: `shardmq` processes on loopback addresses talking QUIC to each other.
//! 3 cores and 2 replicants; clients are rumqttc v5 on each node's own MQTT port.

mod common;

use common::{bounded, cluster_env, eventually, http, Broker, V5};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

const COOKIE: &str = "cluster-test-cookie-0123456789";
/// Bound on the cluster forming (raft election, replicant bootstrap).
const FORM: Duration = Duration::from_secs(20);

/// A free UDP port on `ip`.
fn free_udp(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("bind udp")
        .port()
}

struct Node {
    id: u64,
    broker: Option<Broker>,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Node {
    fn start(id: u64, role: &str, quic: &str, seeds: &str, cpu: &str) -> Node {
        Node::start_with_cookie(id, role, quic, seeds, cpu, COOKIE)
    }

    /// Sets `key` for the next (re)start.
    fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    fn start_with_cookie(
        id: u64,
        role: &str,
        quic: &str,
        seeds: &str,
        cpu: &str,
        cookie: &str,
    ) -> Node {
        Node::start_with_env(id, role, quic, seeds, cpu, cookie, &[])
    }

    /// [`Node::start_with_cookie`] with `extra` environment on top.
    fn start_with_env(
        id: u64,
        role: &str,
        quic: &str,
        seeds: &str,
        cpu: &str,
        cookie: &str,
        extra: &[(&str, &str)],
    ) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "shardmq-cluster-{}-{id}-{}",
            std::process::id(),
            quic.replace([':', '.'], "_")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let env = cluster_env(id, role, quic, seeds, cookie, &dir);
        let env = [("SHARDMQ_NODE__CPUS".to_string(), cpu.to_string())]
            .into_iter()
            .chain(env)
            .collect();
        let mut n = Node {
            id,
            broker: None,
            env,
            dir,
        };
        for (k, v) in extra {
            n.set_env(k, v);
        }
        n.restart();
        n
    }

    /// Starts the process (again), with the same id, QUIC address and data directory.
    fn restart(&mut self) {
        self.broker = None;
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.broker = Some(Broker::start_with(&env));
    }

    fn kill(&mut self) {
        self.broker = None;
    }

    /// SIGTERM, and the process's exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = self.broker.as_mut().expect("node running").terminate();
        self.broker = None;
        status
    }

    fn b(&self) -> &Broker {
        self.broker.as_ref().expect("node running")
    }

    fn port(&self) -> u16 {
        self.b().port
    }

    fn get(&self, path: &str) -> Option<Value> {
        http(&self.b().api_addr(), "GET", path)
    }

    fn post(&self, path: &str) -> Option<Value> {
        http(&self.b().api_addr(), "POST", path)
    }

    fn rlog(&self) -> Value {
        self.get("/api/v1/rlog").unwrap_or(Value::Null)
    }

    fn cluster(&self) -> Value {
        self.get("/api/v1/cluster").unwrap_or(Value::Null)
    }

    /// Every RLOG shard of this replicant follows its core.
    fn all_normal(&self) -> bool {
        self.rlog()["shards"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["state"] == "normal"))
    }

    fn routes(&self) -> u64 {
        self.cluster()["routes"].as_u64().unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.broker = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Cluster {
    cores: Vec<Node>,
    replicants: Vec<Node>,
}

impl Cluster {
    /// 3 cores (ids 1–3) and 2 replicants (ids 4, 5), each on its own loopback address.
    fn start() -> Cluster {
        let quic: Vec<String> = (1..=5)
            .map(|i| {
                let ip = format!("127.0.0.{}", 10 + i);
                format!("{ip}:{}", free_udp(&ip))
            })
            .collect();
        let seeds = (0..3)
            .map(|i| format!("{}@{}", i + 1, quic[i]))
            .collect::<Vec<_>>()
            .join(",");
        let cores: Vec<Node> = (0..3)
            .map(|i| Node::start(i as u64 + 1, "core", &quic[i], &seeds, &(i % 2).to_string()))
            .collect();
        let replicants: Vec<Node> = (3..5)
            .map(|i| {
                Node::start(
                    i as u64 + 1,
                    "replicant",
                    &quic[i],
                    &seeds,
                    &(i % 2).to_string(),
                )
            })
            .collect();
        Cluster { cores, replicants }
    }

    async fn formed(&self) {
        let ok = eventually(FORM, || async {
            self.cores.iter().all(|c| !c.cluster()["leader"].is_null())
                && self.replicants.iter().all(Node::all_normal)
                && self.cores[0].cluster()["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == 5)
        })
        .await;
        if !ok {
            for n in self.cores.iter().chain(&self.replicants) {
                eprintln!("node {}: {} / {}", n.id, n.cluster(), n.rlog());
                eprintln!("log:\n{}", n.b().log());
            }
            panic!("cluster did not form within {FORM:?}");
        }
    }
}

/// Waits until every node in `nodes` counts at least `n` routes.
async fn routes_everywhere(nodes: &[&Node], n: u64) {
    let ok = eventually(Duration::from_secs(10), || async {
        nodes.iter().all(|x| x.routes() >= n)
    })
    .await;
    assert!(ok, "routes did not reach every node");
}

async fn collect(sub: &mut V5, n: usize) -> BTreeSet<(String, u8)> {
    let mut got = BTreeSet::new();
    bounded(Duration::from_secs(10), "forwarded publishes", async {
        while got.len() < n {
            let p = sub.expect_publish().await;
            got.insert((String::from_utf8_lossy(&p.topic).into_owned(), p.qos as u8));
        }
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicant_subscribers_get_qos_0_1_2_from_a_core_and_the_other_replicant() {
    let c = Cluster::start();
    c.formed().await;
    let r4 = &c.replicants[0];
    let (mut sub, _) = V5::connect(r4.port(), "sub-on-4", true).await;
    assert_eq!(
        sub.subscribe("t/#", QoS::ExactlyOnce).await,
        Some(QoS::ExactlyOnce)
    );
    // SUBACK came after the route committed; the other nodes apply it from their streams.
    routes_everywhere(&[&c.cores[0], &c.replicants[1]], 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut p1, _) = V5::connect(c.cores[0].port(), "pub-on-1", true).await;
    let (mut p5, _) = V5::connect(c.replicants[1].port(), "pub-on-5", true).await;
    for (q, qos) in [
        (0u8, QoS::AtMostOnce),
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
    ] {
        p1.publish(&format!("t/core/{q}"), qos, false, "from core 1")
            .await;
        p5.publish(&format!("t/replicant/{q}"), qos, false, "from replicant 5")
            .await;
    }
    let got = collect(&mut sub, 6).await;
    let want: BTreeSet<(String, u8)> = (0..=2u8)
        .flat_map(|q| [(format!("t/core/{q}"), q), (format!("t/replicant/{q}"), q)])
        .collect();
    assert_eq!(got, want);
    // Order per publisher and topic: 50 QoS 1 messages on one topic arrive in order.
    for i in 0..50 {
        p1.publish("t/order", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..50 {
        let p = sub.expect_publish().await;
        assert_eq!(&p.topic[..], b"t/order");
        assert_eq!(String::from_utf8_lossy(&p.payload), i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_core_leaves_replicant_clients_connected_and_receiving() {
    let mut c = Cluster::start();
    c.formed().await;
    let upstream = c.replicants[0].rlog()["shards"][0]["upstream"]
        .as_u64()
        .expect("replicant 4 follows a core");
    let (mut sub, _) = V5::connect(c.replicants[0].port(), "sub-on-4", true).await;
    sub.subscribe("k/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.replicants[1]], 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Kill the core replicant 4 follows.
    c.cores[(upstream - 1) as usize].kill();
    let (mut p5, _) = V5::connect(c.replicants[1].port(), "pub-on-5", true).await;
    p5.publish("k/1", QoS::AtLeastOnce, false, "after the kill")
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.topic[..], b"k/1");
    // Replicant 4 moves to another core and keeps following; writes still work through it.
    let ok = eventually(FORM, || async {
        let s = c.replicants[0].rlog();
        s["shards"][0]["upstream"]
            .as_u64()
            .is_some_and(|u| u != upstream)
            && c.replicants[0].all_normal()
    })
    .await;
    assert!(
        ok,
        "replicant 4 did not switch core: {}",
        c.replicants[0].rlog()
    );
    sub.subscribe("k2/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.replicants[1]], 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    p5.publish("k2/x", QoS::AtLeastOnce, false, "new route")
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.topic[..], b"k2/x");
    assert!(!sub.inbox.finished(), "the subscriber stayed connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replicant_resumes_without_bootstrap() {
    let mut c = Cluster::start();
    c.formed().await;
    let (mut sub, _) = V5::connect(c.cores[0].port(), "sub-on-1", true).await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.replicants[0]], 1).await;
    // SIGTERM saves its tables; it restarts on the same data directory, and saves no more
    // periodically (so the resume below comes from the SIGTERM save or the first run's).
    let status = c.replicants[0].terminate();
    assert!(status.success(), "SIGTERM: clean exit, got {status}");
    c.replicants[0].set_env("SHARDMQ_CLUSTER__REPLICA_PERSIST_MS", "600000");
    c.replicants[0].restart();
    let ok = eventually(FORM, || async { c.replicants[0].all_normal() }).await;
    assert!(
        ok,
        "restarted replicant not normal: {}",
        c.replicants[0].rlog()
    );
    let shards = c.replicants[0].rlog()["shards"].clone();
    for s in shards.as_array().expect("shards") {
        assert_eq!(s["bootstraps"], 0, "shard bootstrapped after restart: {s}");
        assert!(
            s["resumes"].as_u64() >= Some(1),
            "shard did not resume: {s}"
        );
    }
    // And it still routes: a publish on the restarted replicant reaches core 1's subscriber.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut p4, _) = V5::connect(c.replicants[0].port(), "pub-on-4", true).await;
    p4.publish("r/1", QoS::AtLeastOnce, false, "after restart")
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.topic[..], b"r/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_has_its_routes_removed() {
    let c = Cluster::start();
    c.formed().await;
    let r5 = &c.replicants[1];
    let (mut sub, _) = V5::connect(r5.port(), "sub-on-5", true).await;
    sub.subscribe("l/a", QoS::AtLeastOnce).await;
    sub.subscribe("l/b/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.cores[0], &c.cores[1], &c.replicants[0]], 2).await;
    let left = r5.post("/api/v1/cluster/leave");
    assert!(left.is_some(), "leave answered");
    let ok = eventually(Duration::from_secs(10), || async {
        c.cores.iter().all(|n| n.routes() == 0)
            && c.replicants[0].routes() == 0
            && c.cores[0].cluster()["members"]
                .as_array()
                .is_some_and(|m| m.len() == 4)
    })
    .await;
    if !ok {
        for n in [&c.cores[0], r5] {
            eprintln!("node {} log:\n{}", n.id, n.b().log());
        }
    }
    assert!(ok, "routes of node 5 not removed: {}", c.cores[0].cluster());
    // Node 5's subscriber no longer gets what is published on core 1.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut p1, _) = V5::connect(c.cores[0].port(), "pub-on-1", true).await;
    p1.publish("l/a", QoS::AtLeastOnce, false, "after leave")
        .await;
    assert!(sub.next_publish(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cookie_cannot_join() {
    let c = Cluster::start();
    c.formed().await;
    let ip = "127.0.0.16";
    let quic = format!("{ip}:{}", free_udp(ip));
    let seeds = "1@".to_string()
        + c.cores[0]
            .env
            .iter()
            .find(|(k, _)| k == "SHARDMQ_CLUSTER__LISTEN")
            .map(|(_, v)| v.as_str())
            .unwrap();
    let intruder = Node::start_with_cookie(
        9,
        "replicant",
        &quic,
        &seeds,
        "0",
        "some-other-cookie-0123456789",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !intruder.all_normal(),
        "intruder read the tables: {}",
        intruder.rlog()
    );
    assert_eq!(
        c.cores[0].cluster()["members"].as_array().map(|m| m.len()),
        Some(5),
        "intruder became a member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    let c = Cluster::start();
    c.formed().await;
    let (mut m4, _) = V5::connect(c.replicants[0].port(), "member-on-4", true).await;
    let (mut m5, _) = V5::connect(c.replicants[1].port(), "member-on-5", true).await;
    m4.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
    m5.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.cores[0]], 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // From a node without members: each message to exactly one member somewhere.
    let (mut p1, _) = V5::connect(c.cores[0].port(), "pub-on-1", true).await;
    for i in 0..40 {
        p1.publish(&format!("s/{i}"), QoS::AtLeastOnce, false, "x")
            .await;
    }
    // From a node with a member: that member takes them.
    let (mut p4, _) = V5::connect(c.replicants[0].port(), "pub-on-4", true).await;
    for i in 0..10 {
        p4.publish(&format!("s/local/{i}"), QoS::AtLeastOnce, false, "y")
            .await;
    }
    let mut topics = Vec::new();
    for m in [&mut m4, &mut m5] {
        while let Some(p) = m.next_publish(Duration::from_millis(1500)).await {
            topics.push(String::from_utf8_lossy(&p.topic).into_owned());
        }
    }
    let unique: BTreeSet<&String> = topics.iter().collect();
    assert_eq!(topics.len(), 50, "each message once: {topics:?}");
    assert_eq!(unique.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_is_balanced_by_members_per_node() {
    let c = Cluster::start();
    c.formed().await;
    // Three members on node 4, one on node 5.
    let mut on4 = Vec::new();
    for i in 0..3 {
        let (mut m, _) = V5::connect(c.replicants[0].port(), &format!("w4-{i}"), true).await;
        m.subscribe("$share/w/b/#", QoS::AtLeastOnce).await;
        on4.push(m);
    }
    let (mut m5, _) = V5::connect(c.replicants[1].port(), "w5-0", true).await;
    m5.subscribe("$share/w/b/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.cores[0]], 1).await;
    let (mut p5, _) = V5::connect(c.replicants[1].port(), "w-pub-5", true).await;
    let (mut p1, _) = V5::connect(c.cores[0].port(), "w-pub-1", true).await;
    // Until node 5 knows node 4's weight it keeps the group's messages (its own member is the
    // only one it counts online); once it does, most go to node 4.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut weighted = false;
    for probe in 0.. {
        if weighted || std::time::Instant::now() > until {
            break;
        }
        p5.publish(&format!("b/probe/{probe}"), QoS::AtLeastOnce, false, "p")
            .await;
        for m in on4.iter_mut() {
            weighted |= m.next_publish(Duration::from_millis(100)).await.is_some();
        }
    }
    assert!(weighted, "node 5 never sent a group message to node 4");
    let quiet = Duration::from_millis(1500);
    for m in on4.iter_mut().chain([&mut m5]) {
        while m.next_publish(quiet).await.is_some() {}
    }
    // From the node with one member, and from a node with none: 3 of 4 messages to node 4.
    for i in 0..400 {
        p5.publish(&format!("b/x/{i}"), QoS::AtLeastOnce, false, "x")
            .await;
        p1.publish(&format!("b/y/{i}"), QoS::AtLeastOnce, false, "y")
            .await;
    }
    let mut got4 = Vec::new();
    for m in on4.iter_mut() {
        while let Some(p) = m.next_publish(quiet).await {
            got4.push(String::from_utf8_lossy(&p.topic).into_owned());
        }
    }
    let mut got5 = Vec::new();
    while let Some(p) = m5.next_publish(quiet).await {
        got5.push(String::from_utf8_lossy(&p.topic).into_owned());
    }
    let all: BTreeSet<&String> = got4.iter().chain(&got5).collect();
    assert_eq!(got4.len() + got5.len(), 800, "each message once");
    assert_eq!(all.len(), 800, "each message once");
    for phase in ["b/x/", "b/y/"] {
        let to4 = got4.iter().filter(|t| t.starts_with(phase)).count();
        eprintln!("{phase}: {to4} of 400 to node 4 (3 of 4 members)");
        assert!(
            (260..=340).contains(&to4),
            "{phase}: {to4} of 400 went to node 4's three members (want ~300 of 400)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_connecting_on_another_node_takes_the_session_over() {
    use shardmq_codec::{Packet, Protocol};
    let c = Cluster::start();
    c.formed().await;
    let (mut first, _) =
        common::Raw::connect(c.cores[0].port(), Protocol::V5, "roamer", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_second, _) =
        common::Raw::connect(c.replicants[0].port(), Protocol::V5, "roamer", true).await;
    let got = first.expect_closed(Duration::from_secs(10)).await;
    match got.as_slice() {
        [.., Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x8E, "Session taken over"),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    let ok = eventually(Duration::from_secs(5), || async {
        c.cores[1].cluster()["sessions"].as_u64() == Some(1)
    })
    .await;
    assert!(ok, "one registered session: {}", c.cores[1].cluster());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_metrics_and_joining_nodes() {
    let c = Cluster::start();
    c.formed().await;
    // `shardmq ctl` against a replicant and a core.
    let ctl = |api: String, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .arg("ctl")
            .arg("--api")
            .arg(api)
            .args(args)
            .output()
            .expect("run shardmq ctl");
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rlog = ctl(c.replicants[0].b().api_addr(), &["rlog", "status"]);
    for shard in ["route", "session", "retain", "config"] {
        assert!(
            rlog.lines()
                .any(|l| l.contains(shard) && l.contains("normal")),
            "{rlog}"
        );
    }
    let api = c.cores[0].b().api_addr();
    let all_running = eventually(Duration::from_secs(5), || async {
        ctl(api.clone(), &["cluster", "status"])
            .matches("running")
            .count()
            == 5
    })
    .await;
    assert!(all_running, "{}", ctl(api.clone(), &["cluster", "status"]));
    let metrics = std::process::Command::new("curl")
        .arg("-s")
        .arg(format!("http://{}/metrics", c.replicants[0].b().api_addr()))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !metrics.is_empty() {
        assert!(metrics.contains("shardmq_rlog_state{"), "{metrics}");
        assert!(metrics.contains("shardmq_rlog_lag{"), "{metrics}");
        assert!(metrics.contains("shardmq_forward_sent"), "{metrics}");
        // Idle, the replicant has caught up with the leader on every RLOG shard.
        let addr = c.replicants[0].b().api_addr();
        let caught_up = eventually(Duration::from_secs(5), || {
            let addr = addr.clone();
            async move {
                let out = std::process::Command::new("curl")
                    .arg("-s")
                    .arg(format!("http://{addr}/metrics"))
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let lags: Vec<&str> = out
                    .lines()
                    .filter(|l| l.starts_with("shardmq_rlog_lag{"))
                    .collect();
                lags.len() == 4 && lags.iter().all(|l| l.ends_with(" 0"))
            }
        })
        .await;
        assert!(caught_up, "replicant lag never reached 0");
    }
    // A core that is not in the seeds joins the core group at start-up.
    let core1 = c.cores[0]
        .env
        .iter()
        .find(|(k, _)| k == "SHARDMQ_CLUSTER__LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    let ip = "127.0.0.17";
    let core6 = Node::start(
        6,
        "core",
        &format!("{ip}:{}", free_udp(ip)),
        &format!("1@{core1}"),
        "1",
    );
    let ok = eventually(FORM, || async {
        c.cores[0].cluster()["members"]
            .as_array()
            .is_some_and(|m| m.len() == 6)
            && !core6.cluster()["leader"].is_null()
    })
    .await;
    assert!(ok, "core 6 did not join: {}", c.cores[0].cluster());
    // A replicant whose only seed is dead joins with `ctl cluster join`.
    let ip = "127.0.0.18";
    let r7 = Node::start(
        7,
        "replicant",
        &format!("{ip}:{}", free_udp(ip)),
        "9@127.0.0.99:9",
        "0",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r7.all_normal());
    ctl(
        r7.b().api_addr(),
        &["cluster", "join", &format!("1@{core1}")],
    );
    let ok = eventually(FORM, || async { r7.all_normal() }).await;
    assert!(ok, "replicant 7 did not follow after join: {}", r7.rlog());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_has_its_routes_purged_after_the_grace_period() {
    let mut c = Cluster::start();
    c.formed().await;
    let (mut sub, _) = V5::connect(c.replicants[1].port(), "sub-on-5", true).await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    routes_everywhere(&[&c.cores[0], &c.replicants[0]], 1).await;
    drop(sub);
    c.replicants[1].kill();
    // node_down_purge_ms = 3500 in these tests; pings run every second.
    let ok = eventually(Duration::from_secs(15), || async {
        c.cores.iter().all(|n| n.routes() == 0) && c.replicants[0].routes() == 0
    })
    .await;
    assert!(
        ok,
        "routes of the dead node 5 not purged: {}",
        c.cores[0].cluster()
    );
    let members = c.cores[0].cluster()["members"].clone();
    let five = members
        .as_array()
        .and_then(|m| m.iter().find(|m| m["node"] == 5))
        .cloned()
        .expect("node 5 stays a member");
    assert_ne!(five["status"], "running", "{five}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_subscribes_are_answered_and_the_route_lands_when_it_heals() {
    let mut c = Cluster::start();
    c.formed().await;
    // Two of three cores die: no quorum, writes cannot commit.
    c.cores[1].kill();
    c.cores[2].kill();
    let (mut sub, _) = V5::connect(c.replicants[0].port(), "sub-on-4", true).await;
    let started = std::time::Instant::now();
    // cluster.write_timeout_ms = 1000 in these tests: the SUBACK comes after it, granted.
    assert_eq!(
        sub.subscribe("p/#", QoS::AtLeastOnce).await,
        Some(QoS::AtLeastOnce)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SUBACK before the timeout"
    );
    // The replicant still serves its own clients.
    let (mut p4, _) = V5::connect(c.replicants[0].port(), "pub-on-4", true).await;
    p4.publish("p/local", QoS::AtLeastOnce, false, "local")
        .await;
    assert_eq!(&sub.expect_publish().await.topic[..], b"p/local");
    // Heal: the cores come back on their data directories, the pending write commits.
    c.cores[1].restart();
    c.cores[2].restart();
    routes_everywhere(&[&c.cores[0], &c.replicants[1]], 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut p5, _) = V5::connect(c.replicants[1].port(), "pub-on-5", true).await;
    p5.publish("p/remote", QoS::AtLeastOnce, false, "healed")
        .await;
    assert_eq!(&sub.expect_publish().await.topic[..], b"p/remote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_every_node_including_one_started_later() {
    let mut c = Cluster::start();
    c.formed().await;
    let (mut p1, _) = V5::connect(c.cores[0].port(), "pub-on-1", true).await;
    p1.publish("ret/a", QoS::AtLeastOnce, true, "kept").await;
    // A node that was up when it was published has it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut s5, _) = V5::connect(c.replicants[1].port(), "sub-on-5", true).await;
    s5.subscribe("ret/#", QoS::AtLeastOnce).await;
    let p = s5.expect_publish().await;
    assert_eq!((&p.topic[..], p.retain), (&b"ret/a"[..], true));
    // A restarted replicant lost its retained store with its process: it fetches the message
    // from the node the retained index names.
    c.replicants[0].restart();
    let ok = eventually(FORM, || async { c.replicants[0].all_normal() }).await;
    assert!(ok, "restarted replicant not normal");
    let port = c.replicants[0].port();
    let mut n = 0;
    let got = eventually(Duration::from_secs(10), || {
        n += 1;
        let id = format!("sub-on-4-{n}");
        async move {
            let (mut s4, _) = V5::connect(port, &id, true).await;
            s4.subscribe("ret/#", QoS::AtLeastOnce).await;
            let p = s4.next_publish(Duration::from_millis(300)).await;
            p.is_some_and(|p| &p.topic[..] == b"ret/a" && p.retain && &p.payload[..] == b"kept")
        }
    })
    .await;
    assert!(
        got,
        "the restarted replicant never had the retained message"
    );
}

/// Issue 12: a core restarts with its persistent sessions and retained messages (its
/// `[storage]` folder), and the cluster's routes agree with what it restored: a publish on
/// another node reaches the restored session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_core_keeps_its_persistent_sessions_and_retained_messages() {
    restarted_core(false).await;
}

/// Issue 12: after a core restarts, a publish on another node reaches a session it restored:
/// the restored route is announced again (the tables still list it). The forward lane of the
/// publishing node still points at the dead process, so the message comes only once that lane
/// notices and resends (at-least-once forwarding; measured 10-20 s here, printed): the wait is
/// bounded at 40 s. Shortening it is the cluster's work (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_core_gets_publishes_from_other_nodes_for_its_restored_sessions() {
    restarted_core(true).await;
}

/// Issue 12: a replicant restarts with its persistent sessions and retained messages, and a
/// publish on a core reaches the restored session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replicant_keeps_its_persistent_sessions_and_gets_other_nodes_publishes() {
    restarted_node(true, true).await;
}

async fn restarted_core(forwarded: bool) {
    restarted_node(forwarded, false).await;
}

/// Restarts core 2 (or, with `replicant`, replicant 4) on its storage folder; see the tests.
async fn restarted_node(forwarded: bool, replicant: bool) {
    let mut c = Cluster::start();
    macro_rules! node {
        ($c:ident) => {
            if replicant {
                &mut $c.replicants[0]
            } else {
                &mut $c.cores[1]
            }
        };
    }
    // Node 2 keeps its storage in its own folder across the restart.
    let storage = node!(c).dir.join("storage");
    node!(c).set_env("SHARDMQ_STORAGE__DIR", &storage.display().to_string());
    node!(c).restart();
    c.formed().await;
    let q1 = rumqttc::QoS::AtLeastOnce;
    let (mut keeper, ack) = common::V4::connect(node!(c).port(), "keeper-on-2", false).await;
    assert!(!ack.session_present);
    assert_eq!(keeper.subscribe("cr/q/#", q1).await, Some(q1));
    // Offline (the connection dropped; the session stays, clean session off).
    drop(keeper);
    let (mut p2, _) = common::V4::connect(node!(c).port(), "pub-on-2", true).await;
    p2.publish("cr/ret", q1, true, "kept").await;
    p2.publish("cr/q/1", q1, false, "queued").await;
    drop(p2);

    // SIGTERM (a core may end by the signal rather than exit 0: the storage is written
    // either way, as after a crash).
    node!(c).terminate();
    node!(c).restart();
    c.formed().await;
    let restored = node!(c).get("/api/v1/storage").unwrap_or(Value::Null);
    assert_eq!(restored["restored_sessions"], 1, "{restored}");
    assert_eq!(restored["restored_retained"], 1, "{restored}");
    let mut want = BTreeSet::from(["queued".to_string()]);
    if forwarded {
        // The restored session's route is announced again: a publish on core 1 reaches it.
        routes_everywhere(&[&c.cores[0]], 1).await;
        let (mut p1, _) = V5::connect(c.cores[0].port(), "pub-on-1", true).await;
        p1.publish("cr/q/2", QoS::AtLeastOnce, false, "after restart")
            .await;
        want.insert("after restart".to_string());
    }
    let (mut keeper, ack) = common::V4::connect(node!(c).port(), "keeper-on-2", false).await;
    assert!(ack.session_present, "the persistent session came back");
    let mut got = BTreeSet::new();
    let wait = Duration::from_secs(if forwarded { 40 } else { 5 });
    let started = std::time::Instant::now();
    while got.len() < want.len() {
        match keeper.next_publish(wait).await {
            Some(p) => {
                got.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            None => break,
        }
    }
    if forwarded {
        eprintln!(
            "the forwarded publish reached the restored session {:?} after the reconnect",
            started.elapsed()
        );
    }
    assert_eq!(got, want);
    // The retained message, on the restarted node itself.
    let (mut fresh, _) = common::V4::connect(node!(c).port(), "fresh-on-2", true).await;
    fresh.subscribe("cr/ret", q1).await;
    let r = fresh.expect_publish().await;
    assert_eq!((r.payload.as_ref(), r.retain), (&b"kept"[..], true));
}

/// The ids (and nodes) of the clients `node`'s API lists for the cluster.
fn listed_clients(node: &Node, query: &str) -> BTreeSet<(String, u64)> {
    node.get(&format!("/api/v1/clients{query}"))
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["clientid"].as_str().unwrap_or("").to_string(),
                c["node"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A core (id 1, on CPU 0) and a replicant (id 2, on CPU 1) on loopback addresses of their
/// own (`base` and `base + 1` in 127.0.0.x), formed.
async fn two_nodes(base: u8) -> (Node, Node) {
    let (ip1, ip2) = (format!("127.0.0.{base}"), format!("127.0.0.{}", base + 1));
    let q1 = format!("{ip1}:{}", free_udp(&ip1));
    let q2 = format!("{ip2}:{}", free_udp(&ip2));
    let seeds = format!("1@{q1}");
    let core = Node::start(1, "core", &q1, &seeds, "0");
    let rep = Node::start(2, "replicant", &q2, &seeds, "1");
    let formed = eventually(FORM, || async {
        !core.cluster()["leader"].is_null()
            && rep.all_normal()
            && core.cluster()["members"]
                .as_array()
                .is_some_and(|m| m.len() == 2)
    })
    .await;
    assert!(formed, "{} / {}", core.cluster(), rep.rlog());
    (core, rep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_of_either_node_answers_for_a_two_node_cluster() {
    use shardmq_codec::{Packet, Protocol};
    let (core, rep) = two_nodes(31).await;
    let (mut on_core, _) = common::Raw::connect(core.port(), Protocol::V5, "on-core", true).await;
    let (mut on_rep, _) = common::Raw::connect(rep.port(), Protocol::V5, "on-rep", true).await;
    assert_eq!(
        on_core
            .subscribe(1, &[("c/#", shardmq_codec::QoS::AtMostOnce)])
            .await,
        [0]
    );
    let both: BTreeSet<(String, u64)> =
        [("on-core".to_string(), 1), ("on-rep".to_string(), 2)].into();
    for node in [&core, &rep] {
        let ok = eventually(Duration::from_secs(10), || async {
            listed_clients(node, "") == both
        })
        .await;
        assert!(ok, "node {}: {:?}", node.id, listed_clients(node, ""));
    }
    // One client a page: the cursor goes from node 1 to node 2.
    let first = rep.get("/api/v1/clients?limit=1").expect("page 1");
    assert_eq!(first["data"][0]["clientid"], "on-core", "{first}");
    let cursor = first["next"].as_str().expect("a next page").to_string();
    let second = rep
        .get(&format!("/api/v1/clients?limit=1&cursor={cursor}"))
        .expect("page 2");
    assert_eq!(second["data"][0]["clientid"], "on-rep", "{second}");
    assert_eq!(listed_clients(&core, "?node=2").len(), 1);
    // A client on the other node: read, then kicked through this one.
    let remote = core.get("/api/v1/clients/on-rep").expect("answer");
    assert_eq!(remote["node"], 2, "{remote}");
    let kicked = http(&core.b().api_addr(), "DELETE", "/api/v1/clients/on-rep").expect("answer");
    assert_eq!(kicked["kicked"], true, "{kicked}");
    let last = on_rep.expect_closed(Duration::from_secs(10)).await;
    assert!(
        last.iter()
            .any(|p| matches!(p, Packet::Disconnect(d) if d.reason.0 == 0x98)),
        "{last:?}"
    );
    // A publish through the replicant's API reaches the core's subscriber.
    let ok = eventually(Duration::from_secs(10), || async { rep.routes() >= 1 }).await;
    assert!(ok, "the route reached the replicant");
    let published = http_body(
        &rep.b().api_addr(),
        "/api/v1/publish",
        r#"{"topic":"c/api","payload":"over"}"#,
    );
    assert_eq!(published["published"], true, "{published}");
    let got = on_core.expect_publish().await;
    assert_eq!(
        (&got.topic[..], got.payload.as_ref()),
        ("c/api", &b"over"[..])
    );
    let overview = rep.get("/api/v1/overview").expect("overview");
    let nodes: Vec<u64> = overview["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes, [1, 2], "{overview}");
}

/// `POST path` with a JSON body.
fn http_body(addr: &str, path: &str, body: &str) -> Value {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// `shardmq ctl --api API args...` → stdout; panics with stderr on failure.
fn ctl(api: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["ctl", "--api", api])
        .args(args)
        .output()
        .expect("run shardmq ctl");
    assert!(
        out.status.success(),
        "ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_and_acts_on_clients_sessions_subscriptions_and_retained_across_two_nodes() {
    use shardmq_codec::{Packet, Protocol, QoS as Q};
    let (core, rep) = two_nodes(41).await;
    let (core_api, rep_api) = (core.b().api_addr(), rep.b().api_addr());
    let (mut watcher, _) =
        common::Raw::connect(core.port(), Protocol::V5, "ctl-watcher", true).await;
    assert_eq!(watcher.subscribe(1, &[("t/#", Q::AtMostOnce)]).await, [0]);
    let (roamer, _) = common::Raw::connect(rep.port(), Protocol::V3_1_1, "ctl-roamer", false).await;
    let (mut remote, _) = common::Raw::connect(rep.port(), Protocol::V5, "ctl-remote", true).await;
    roamer.disconnect().await;
    let ok = eventually(Duration::from_secs(10), || async { rep.routes() >= 1 }).await;
    assert!(ok, "the route reached the replicant");

    let listed = ctl(&rep_api, &["clients", "list"]);
    assert!(listed.starts_with("CLIENT ID"), "{listed}");
    assert!(
        listed.contains("ctl-watcher") && listed.contains("ctl-remote"),
        "{listed}"
    );
    let shown = ctl(&rep_api, &["clients", "show", "ctl-watcher"]);
    assert!(
        shown.contains("node          1") && shown.contains("t/#"),
        "{shown}"
    );
    let subs = ctl(&rep_api, &["subs", "list", "--match", "t/x"]);
    assert!(
        subs.contains("ctl-watcher") && subs.contains("t/#"),
        "{subs}"
    );
    let offline = ctl(
        &core_api,
        &["--json", "sessions", "list", "--connected", "false"],
    );
    let offline: Value = serde_json::from_str(&offline).expect("JSON");
    assert_eq!(offline["data"][0]["clientid"], "ctl-roamer", "{offline}");
    assert_eq!(offline["data"][0]["node"], 2, "{offline}");

    // Publish through the replicant, traced on the core.
    let api = core_api.clone();
    let trace = std::thread::spawn(move || {
        ctl(&api, &["trace", "client", "ctl-watcher", "--seconds", "3"])
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    ctl(&rep_api, &["publish", "t/ctl", "hello", "--retain"]);
    let got = watcher.expect_publish().await;
    assert_eq!(
        (&got.topic[..], got.payload.as_ref()),
        ("t/ctl", &b"hello"[..])
    );
    let traced = trace.join().expect("trace thread");
    assert!(traced.contains("out PUBLISH topic=t/ctl"), "{traced}");

    let retained = ctl(&core_api, &["retained", "list", "--topic", "t/#"]);
    assert!(retained.contains("t/ctl"), "{retained}");
    assert!(ctl(&core_api, &["retained", "show", "t/ctl"]).contains("payload  hello"));
    ctl(&core_api, &["retained", "delete", "t/ctl"]);
    let gone = eventually(Duration::from_secs(10), || async {
        !ctl(&rep_api, &["retained", "list", "--topic", "t/#"]).contains("t/ctl")
    })
    .await;
    assert!(gone, "the retained message left every node");

    ctl(&core_api, &["sessions", "delete", "ctl-roamer"]);
    assert!(!ctl(&rep_api, &["sessions", "list"]).contains("ctl-roamer"));
    ctl(&core_api, &["clients", "kick", "ctl-remote"]);
    let last = remote.expect_closed(Duration::from_secs(10)).await;
    assert!(
        last.iter()
            .any(|p| matches!(p, Packet::Disconnect(d) if d.reason.0 == 0x98)),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_an_https_api_ask_each_other_over_https() {
    use shardmq_codec::Protocol;
    let dir = std::env::temp_dir().join(format!("shardmq-cluster-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One certificate for both nodes' APIs (the simplest of the documented set-ups).
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
    let (cert_file, key_file) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls_env = [
        ("SHARDMQ_API__TLS_CERT_FILE", cert_file.to_str().unwrap()),
        ("SHARDMQ_API__TLS_KEY_FILE", key_file.to_str().unwrap()),
    ];
    let (ip1, ip2) = ("127.0.0.51", "127.0.0.52");
    let q1 = format!("{ip1}:{}", free_udp(ip1));
    let q2 = format!("{ip2}:{}", free_udp(ip2));
    let seeds = format!("1@{q1}");
    let core = Node::start_with_env(1, "core", &q1, &seeds, "0", COOKIE, &tls_env);
    let rep = Node::start_with_env(2, "replicant", &q2, &seeds, "1", COOKIE, &tls_env);
    let https: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_der(cert.cert.der()).to_owned(),
                ]))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        )
        .build()
        .into();
    let get = |node: &Node, path: &str| -> Value {
        https
            .get(&format!("https://{}{path}", node.b().api_addr()))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let (_client, _) = common::Raw::connect(core.port(), Protocol::V5, "over-https", true).await;
    let listed = eventually(FORM, || async {
        get(&rep, "/api/v1/clients")["data"]
            .as_array()
            .is_some_and(|d| {
                d.iter()
                    .any(|c| c["clientid"] == "over-https" && c["node"] == 1)
            })
    })
    .await;
    assert!(listed, "{}", get(&rep, "/api/v1/clients"));
    let overview = get(&rep, "/api/v1/overview");
    assert_eq!(overview["unreachable"], serde_json::json!([]), "{overview}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `name`'s value in `node`'s Prometheus text (the first sample), if it is there.
fn metric(node: &Node, name: &str) -> Option<f64> {
    let addr = node.b().api_addr();
    let mut s = std::net::TcpStream::connect(&addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// What `node` says of `client_id`'s session (`queued`, `inflight`, `connected`, ...).
fn session_on(node: &Node, client_id: &str) -> Value {
    node.get(&format!("/api/v1/sessions/{client_id}"))
        .unwrap_or(Value::Null)
}

/// A node restarted after its client moved on (the client got a new session on another node
/// while this one was down) drops the session it restored instead of claiming it back, which
/// would end the client's live connection elsewhere with 0x8E.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_its_client_moved_on_drops_its_restored_copy() {
    let mut c = Cluster::start();
    let storage = c.replicants[0].dir.join("storage");
    c.replicants[0].set_env("SHARDMQ_STORAGE__DIR", &storage.display().to_string());
    c.replicants[0].restart();
    c.formed().await;
    let q1 = rumqttc::QoS::AtLeastOnce;
    let (mut m, ack) = common::V4::connect(c.replicants[0].port(), "mover", false).await;
    assert!(!ack.session_present);
    assert_eq!(m.subscribe("mv/#", q1).await, Some(q1));
    m.disconnect().await;
    c.replicants[0].terminate();
    // Node 4 is down: a new session on node 5, and the client stays there.
    let (mut m, ack) = common::V4::connect(c.replicants[1].port(), "mover", false).await;
    assert!(!ack.session_present, "its node is down: a new session");
    assert_eq!(m.subscribe("mv/#", q1).await, Some(q1));
    c.replicants[0].restart();
    c.formed().await;
    let restored = c.replicants[0]
        .get("/api/v1/storage")
        .unwrap_or(Value::Null);
    assert_eq!(restored["restored_sessions"], 1, "{restored}");
    let dropped = eventually(Duration::from_secs(10), || async {
        c.replicants[0]
            .get("/api/v1/sessions/mover?local=true")
            .is_some_and(|v| v.get("clientid").is_none())
    })
    .await;
    assert!(dropped, "node 4 still holds its stale copy");
    // The live session on node 5 kept its connection and its route.
    let (mut p1, _) = common::V4::connect(c.cores[0].port(), "mv-pub", true).await;
    p1.publish("mv/after", q1, false, "x").await;
    let got = m.expect_publish().await;
    assert_eq!(got.topic, "mv/after");
    let live = session_on(&c.replicants[1], "mover");
    assert_eq!(live["connected"], true, "{live}");
    assert_eq!(live["node"], 5, "{live}");
}

/// Issue 13's first "done when": a persistent subscriber (rumqttc, MQTT 3.1.1) leaves one
/// replicant, messages are published while it is away, it comes back on the other replicant
/// and gets every one; a connected MQTT 5.0 session moves with its unacknowledged messages
/// (DISCONNECT 0x8E on the old connection, DUP on the new one); with its old node killed, the
/// client gets a new session within `cluster.session_move_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_follows_its_client_to_another_node() {
    use shardmq_codec::{Packet, Protocol};
    let mut c = Cluster::start();
    c.formed().await;
    let q1 = rumqttc::QoS::AtLeastOnce;
    let (r4, r5) = (c.replicants[0].port(), c.replicants[1].port());

    // 1. Offline on replicant 4, back on replicant 5.
    let (mut roamer, ack) = common::V4::connect(r4, "roamer", false).await;
    assert!(!ack.session_present);
    assert_eq!(roamer.subscribe("mv/#", q1).await, Some(q1));
    routes_everywhere(&[&c.cores[0]], 1).await;
    roamer.disconnect().await;
    let (mut p1, _) = common::V4::connect(c.cores[0].port(), "pub-on-1", true).await;
    for i in 0..20 {
        p1.publish(&format!("mv/{i}"), q1, false, format!("m{i}"))
            .await;
    }
    let queued = eventually(Duration::from_secs(10), || async {
        session_on(&c.replicants[0], "roamer")["queued"].as_u64() == Some(20)
    })
    .await;
    assert!(
        queued,
        "queued on 4: {}",
        session_on(&c.replicants[0], "roamer")
    );
    let (mut roamer, ack) = common::V4::connect(r5, "roamer", false).await;
    assert!(ack.session_present, "the session came along");
    let mut got = BTreeSet::new();
    while got.len() < 20 {
        match roamer.next_publish(Duration::from_secs(10)).await {
            Some(p) => {
                got.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            None => break,
        }
    }
    let want: BTreeSet<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "every message published while it was away");
    // Its route moved too: once node 1 applied it, a publish there reaches it on 5.
    let mut reached = None;
    for i in 0..20 {
        p1.publish("mv/after", q1, false, format!("after{i}")).await;
        if let Some(p) = roamer.next_publish(Duration::from_millis(500)).await {
            reached = Some(String::from_utf8_lossy(&p.payload).into_owned());
            break;
        }
    }
    assert!(
        reached.is_some(),
        "a publish after the move reaches the session on 5"
    );
    assert_eq!(
        metric(&c.replicants[1], "shardmq_session_moves_in_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&c.replicants[0], "shardmq_session_moves_out_total"),
        Some(1.0)
    );

    // 2. Connected, with unacknowledged QoS 1 messages, taken by a connection on 4.
    let mut connect = common::connect_packet(Protocol::V5, "inflight", false, 0);
    connect.properties.session_expiry_interval = Some(600);
    let (mut old, ack) = common::Raw::connect_with(r5, connect.clone()).await;
    assert!(!ack.session_present);
    old.subscribe(1, &[("inf/#", shardmq_codec::QoS::AtLeastOnce)])
        .await;
    routes_everywhere(&[&c.cores[0]], 2).await;
    for i in 0..3 {
        p1.publish(&format!("inf/{i}"), q1, false, format!("i{i}"))
            .await;
    }
    for _ in 0..3 {
        old.expect_publish().await; // never acknowledged
    }
    let (mut new, ack) = common::Raw::connect_with(r4, connect).await;
    assert!(ack.session_present);
    let closed = old.expect_closed(Duration::from_secs(5)).await;
    match closed.as_slice() {
        [.., Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x8E, "Session taken over"),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    let mut again = Vec::new();
    for _ in 0..3 {
        let p = new.expect_publish().await;
        assert!(p.dup, "sent before: DUP");
        again.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert_eq!(again, ["i0", "i1", "i2"]);

    // 3. Its old node killed: a new session, within the move timeout (3 s) and some slack.
    let (mut lost, _) = common::V4::connect(r4, "orphan", false).await;
    lost.subscribe("orph/#", q1).await;
    lost.disconnect().await;
    c.replicants[0].kill();
    let started = std::time::Instant::now();
    let (_lost, ack) = common::V4::connect(r5, "orphan", false).await;
    let waited = started.elapsed();
    assert!(!ack.session_present, "its node is down: a new session");
    assert!(waited < Duration::from_secs(6), "answered in {waited:?}");
    eprintln!("a CONNECT for a session on a killed node was answered in {waited:?}");
}

/// A CONNECT for an MQTT 5.0 persistent session (Clean Start 0, expiry 600 s).
fn persistent_v5(client_id: &str) -> shardmq_codec::Connect {
    let mut c = common::connect_packet(shardmq_codec::Protocol::V5, client_id, false, 0);
    c.properties.session_expiry_interval = Some(600);
    c
}

/// `shardmq ctl --api API args...` → (success, stdout and stderr).
fn ctl_try(api: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["ctl", "--api", api])
        .args(args)
        .output()
        .expect("run shardmq ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Issue 13 deliverable 6: `ctl node evacuate --rate R` on node 1 sends its clients to node 2
/// no faster than R a second: MQTT 5.0 clients get DISCONNECT 0x9C with node 2's client
/// address as Server Reference, 3.1.1 clients (rumqttc) are closed, new CONNECTs are refused
/// (0x9C with the reference; 3.1.1: return code 3); the clients' sessions, with what was
/// queued for them meanwhile, follow them to node 2; `--status` and `--stop` see and end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evacuated_node_sends_its_clients_to_the_other_node_at_a_bounded_rate() {
    use shardmq_codec::{Packet, Protocol, QoS as Q};
    const V5_CLIENTS: usize = 8;
    const V4_CLIENTS: usize = 8;
    const RATE: u32 = 8;
    let (a, b) = two_nodes(51).await;
    let api = a.b().api_addr();
    let to_b = format!("127.0.0.1:{}", b.port());
    let mut v5 = Vec::new();
    for i in 0..V5_CLIENTS {
        let (mut raw, ack) =
            common::Raw::connect_with(a.port(), persistent_v5(&format!("ev5-{i}"))).await;
        assert_eq!(ack.code.0, 0, "{ack:?}");
        if i == 0 {
            assert_eq!(raw.subscribe(1, &[("ev/5/#", Q::AtLeastOnce)]).await, [1]);
        }
        v5.push(raw);
    }
    let mut v4 = Vec::new();
    for i in 0..V4_CLIENTS {
        let (mut c, _) = common::V4::connect(a.port(), &format!("ev4-{i}"), false).await;
        if i == 0 {
            let q1 = rumqttc::QoS::AtLeastOnce;
            assert_eq!(c.subscribe("ev/4/#", q1).await, Some(q1));
        }
        v4.push(c);
    }
    routes_everywhere(&[&b], 2).await;

    // Node 1 learns node 2's client address from its pings (every second).
    let mut started = std::time::Instant::now();
    let mut answer = (false, String::new());
    for _ in 0..50 {
        started = std::time::Instant::now();
        answer = ctl_try(
            &api,
            &["node", "evacuate", "--to", "2", "--rate", &RATE.to_string()],
        );
        if answer.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.0, "ctl node evacuate: {}", answer.1);
    assert!(answer.1.contains("node 1: evacuating"), "{}", answer.1);

    for (i, raw) in v5.iter_mut().enumerate() {
        let got = raw.expect_closed(Duration::from_secs(20)).await;
        match got.as_slice() {
            [.., Packet::Disconnect(d)] => {
                assert_eq!(d.reason.0, 0x9C, "ev5-{i}: Use another server");
                assert_eq!(
                    d.properties.server_reference.as_deref(),
                    Some(to_b.as_str())
                );
            }
            other => panic!("ev5-{i}: DISCONNECT 0x9C expected, got {other:?}"),
        }
    }
    for (i, c) in v4.iter_mut().enumerate() {
        let _ = c.inbox.closed(Duration::from_secs(20)).await;
        assert!(c.inbox.finished(), "ev4-{i} closed");
    }
    let took = started.elapsed();
    // 16 clients at 8/s with a bucket of one: the last cannot go before 15/8 s.
    let total = (V5_CLIENTS + V4_CLIENTS) as f64;
    let least = Duration::from_secs_f64((total - 1.0) / f64::from(RATE));
    assert!(took >= least, "{total} clients at {RATE}/s took {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    eprintln!("evacuated {total} clients at {RATE}/s in {took:?} (at least {least:?})");

    // New clients are refused and pointed at node 2.
    let (_, ack) = common::Raw::connect_with(a.port(), persistent_v5("late")).await;
    assert_eq!(ack.code.0, 0x9C, "{ack:?}");
    assert_eq!(
        ack.properties.server_reference.as_deref(),
        Some(to_b.as_str())
    );
    let late3 = common::connect_packet(Protocol::V3_1_1, "late3", true, 0);
    let (_, ack) = common::Raw::connect_with(a.port(), late3).await;
    assert_eq!(ack.code.to_v3_connack(), 3, "Server unavailable: {ack:?}");

    let drained = eventually(Duration::from_secs(5), || async {
        let (_, text) = ctl_try(&api, &["--json", "node", "evacuate", "--status"]);
        let s: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        s["evacuation"]["state"] == "drained" && s["evacuation"]["sent"] == 16
    })
    .await;
    let (_, status) = ctl_try(&api, &["node", "evacuate", "--status"]);
    assert!(drained, "{status}");
    assert!(status.contains(&to_b), "{status}");
    assert_eq!(metric(&a, "shardmq_evacuated_clients_total"), Some(total));
    assert_eq!(metric(&a, "shardmq_evacuating"), Some(1.0));

    // Messages for the sessions left behind queue on node 1 ...
    let (mut p, _) = common::V4::connect(b.port(), "pub-on-2", true).await;
    for i in 0..5 {
        let q1 = rumqttc::QoS::AtLeastOnce;
        p.publish("ev/5/x", q1, false, format!("five{i}")).await;
        p.publish("ev/4/x", q1, false, format!("four{i}")).await;
    }
    let queued = eventually(Duration::from_secs(10), || async {
        session_on(&a, "ev5-0")["queued"].as_u64() == Some(5)
            && session_on(&a, "ev4-0")["queued"].as_u64() == Some(5)
    })
    .await;
    assert!(
        queued,
        "{} / {}",
        session_on(&a, "ev5-0"),
        session_on(&a, "ev4-0")
    );
    // ... and come along when the clients connect where they were sent.
    let (mut back5, ack) = common::Raw::connect_with(b.port(), persistent_v5("ev5-0")).await;
    assert_eq!(ack.code.0, 0, "{ack:?}");
    assert!(ack.session_present, "the v5 session followed");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(String::from_utf8_lossy(&back5.expect_publish().await.payload).into_owned());
    }
    assert_eq!(got, ["five0", "five1", "five2", "five3", "five4"]);
    let (mut back4, ack) = common::V4::connect(b.port(), "ev4-0", false).await;
    assert!(ack.session_present, "the 3.1.1 session followed");
    let mut got = Vec::new();
    for _ in 0..5 {
        let p = back4.expect_publish().await;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert_eq!(got, ["four0", "four1", "four2", "four3", "four4"]);
    let (_, ack) = common::Raw::connect_with(b.port(), persistent_v5("ev5-3")).await;
    assert!(ack.session_present, "a session without subscriptions too");

    // A target that is no member, or a rate out of bounds, is refused; the run goes on.
    let (ok, text) = ctl_try(&api, &["node", "evacuate", "--to", "7"]);
    assert!(
        !ok && text.contains("node 7 is not a running member"),
        "{text}"
    );
    let (ok, text) = ctl_try(&api, &["node", "evacuate", "--rate", "0"]);
    assert!(!ok && text.contains("rate: clients per second"), "{text}");
    assert_eq!(metric(&a, "shardmq_evacuating"), Some(1.0));

    // Node 2 cannot send clients to an evacuating node 1.
    let (ok, text) = ctl_try(&b.b().api_addr(), &["node", "evacuate", "--to", "1"]);
    assert!(!ok && text.contains("no node to evacuate to"), "{text}");

    // Stopped: node 1 takes clients again.
    let (ok, text) = ctl_try(&api, &["node", "evacuate", "--stop"]);
    assert!(ok && text.contains("node 1: stopped"), "{text}");
    let (_, ack) = common::Raw::connect_with(a.port(), persistent_v5("after-stop")).await;
    assert_eq!(ack.code.0, 0, "{ack:?}");
    assert_eq!(metric(&a, "shardmq_evacuating"), Some(0.0));
}

/// Issue 13 deliverable 6, rebalance: 10 MQTT 5.0 clients on node 1 and none on node 2;
/// `ctl cluster rebalance --rate 10` (asked of node 2) moves 5 of them, no faster than 10 a
/// second, each with DISCONNECT 0x9C naming node 2, and leaves the other 5 alone; the moved
/// ones find their sessions on node 2; afterwards the cluster is even, node 1's part is done
/// and it still takes clients; a second rebalance finds nothing to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_moves_clients_from_the_fuller_node_until_even() {
    use shardmq_codec::Packet;
    const CLIENTS: usize = 10;
    const RATE: u32 = 10;
    let (a, b) = two_nodes(61).await;
    let to_b = format!("127.0.0.1:{}", b.port());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (raw, ack) =
            common::Raw::connect_with(a.port(), persistent_v5(&format!("rb-{i}"))).await;
        assert_eq!(ack.code.0, 0, "{ack:?}");
        clients.push(raw);
    }
    // Node 2 sees node 1's count in its pings.
    let counted = eventually(Duration::from_secs(10), || async {
        let (_, text) = ctl_try(
            &b.b().api_addr(),
            &["--json", "cluster", "rebalance", "--status"],
        );
        let s: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        s["nodes"][0]["connections"] == 10 && s["nodes"][1]["node"] == 2
    })
    .await;
    assert!(counted, "node 2 never saw node 1's 10 connections");

    let started = std::time::Instant::now();
    let (ok, text) = ctl_try(
        &b.b().api_addr(),
        &["cluster", "rebalance", "--rate", &RATE.to_string()],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("moving 5 client(s) from node 1 to node 2"),
        "{text}"
    );
    // Every client watched at once for 6 s: who is sent away, with what.
    let mut watchers = Vec::new();
    for (i, mut raw) in clients.into_iter().enumerate() {
        watchers.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(6);
            let mut last = None;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match raw.next(left).await {
                    common::Next::Packet(p) => last = Some(p),
                    common::Next::Closed => {
                        return (i, raw, Some((last, std::time::Instant::now())))
                    }
                    common::Next::Timeout => return (i, raw, None),
                    common::Next::Garbage(e) => panic!("rb-{i}: {e}"),
                }
            }
        }));
    }
    let mut moved = Vec::new();
    let mut stayed = Vec::new();
    let mut last_at = started;
    for w in watchers {
        let (i, raw, outcome) = w.await.expect("watcher");
        if outcome.is_none() {
            stayed.push(raw); // still connected to node 1: kept open
            continue;
        }
        if let Some((last, at)) = outcome {
            match last {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason.0, 0x9C, "rb-{i}");
                    assert_eq!(
                        d.properties.server_reference.as_deref(),
                        Some(to_b.as_str())
                    );
                }
                other => panic!("rb-{i}: DISCONNECT 0x9C expected, got {other:?}"),
            }
            moved.push(i);
            last_at = last_at.max(at);
        }
    }
    assert_eq!(moved.len(), 5, "half of them move: {moved:?}");
    let took = last_at - started;
    // 5 clients at 10/s with a bucket of one: the last cannot go before 0.4 s.
    assert!(took >= Duration::from_millis(400), "took {took:?}");
    eprintln!("rebalance moved 5 of 10 clients at {RATE}/s in {took:?}");

    let mut back = Vec::new();
    for i in &moved {
        let (raw, ack) =
            common::Raw::connect_with(b.port(), persistent_v5(&format!("rb-{i}"))).await;
        assert_eq!(ack.code.0, 0, "{ack:?}");
        assert!(ack.session_present, "rb-{i}'s session followed");
        back.push(raw);
    }
    assert_eq!(stayed.len() + back.len(), CLIENTS);
    let even = eventually(Duration::from_secs(10), || async {
        let (_, text) = ctl_try(
            &a.b().api_addr(),
            &["--json", "cluster", "rebalance", "--status"],
        );
        let s: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        s["even"] == true
            && s["nodes"][0]["connections"] == 5
            && s["nodes"][1]["connections"] == 5
            && s["nodes"][0]["run"]["state"] == "done"
            && s["nodes"][0]["run"]["sent"] == 5
    })
    .await;
    let (_, status) = ctl_try(&a.b().api_addr(), &["cluster", "rebalance", "--status"]);
    assert!(even, "{status}");
    assert!(status.contains("rebalance done"), "{status}");
    // Node 1 still takes clients; nothing more to move.
    let (_new, ack) = common::Raw::connect_with(a.port(), persistent_v5("rb-new")).await;
    assert_eq!(ack.code.0, 0, "{ack:?}");
    let (ok, text) = ctl_try(&a.b().api_addr(), &["cluster", "rebalance"]);
    assert!(ok && text.starts_with("even"), "{text}");
    let (ok, text) = ctl_try(&a.b().api_addr(), &["cluster", "rebalance", "--stop"]);
    assert!(ok && text.contains("no rebalance was running"), "{text}");
    // A part no node could carry out is refused.
    let huge = http_body(
        &a.b().api_addr(),
        "/api/v1/node/evacuate",
        r#"{"shed": {"2": 99999999999}}"#,
    );
    assert!(
        huge["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than")),
        "{huge}"
    );
}
