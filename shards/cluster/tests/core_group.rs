//! The openraft core group over real QUIC on 127.0.0.1, several cores in one process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use openraft::ServerState;
use shardmq_cluster::{CoreConfig, CoreGroup, Transport, TransportConfig};
use shardmq_rlog::{Op, RlogShard};

const COOKIE: &str = "core-group-test";
const WAIT: Duration = Duration::from_secs(10);

struct Core {
    id: u64,
    addr: SocketAddr,
    transport: Transport,
    group: CoreGroup,
    serve: tokio::task::JoinHandle<()>,
}

impl Core {
    async fn stop(self) {
        self.group.shutdown().await;
        self.transport.close();
        self.serve.abort();
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "shardmq-cluster-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bind(id: u64, addr: SocketAddr) -> Transport {
    Transport::bind(TransportConfig::new(id, addr, COOKIE)).unwrap()
}

async fn start(
    id: u64,
    transport: Transport,
    dir: &std::path::Path,
    members: &BTreeMap<u64, SocketAddr>,
    snapshot_logs: u64,
) -> Core {
    let addr = transport.local_addr();
    let mut cfg = CoreConfig::new(id, addr, dir.join(format!("core-{id}")), members.clone());
    cfg.heartbeat_ms = 50;
    cfg.election_timeout_ms = (250, 500);
    cfg.snapshot_logs = snapshot_logs;
    cfg.tail_len = 64;
    let group = CoreGroup::start(cfg, transport.clone()).await.unwrap();
    let g = group.clone();
    let serve = tokio::spawn(async move { g.serve().await });
    Core {
        id,
        addr,
        transport,
        group,
        serve,
    }
}

async fn start_cluster(n: u64, dir: &std::path::Path, snapshot_logs: u64) -> Vec<Core> {
    let transports: Vec<Transport> = (1..=n)
        .map(|id| bind(id, "127.0.0.1:0".parse().unwrap()))
        .collect();
    let members: BTreeMap<u64, SocketAddr> = transports
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, t.local_addr()))
        .collect();
    let mut cores = Vec::new();
    for (i, t) in transports.into_iter().enumerate() {
        cores.push(start(i as u64 + 1, t, dir, &members, snapshot_logs).await);
    }
    cores
}

/// Waits until every core names the same leader, one of them.
async fn agreed_leader(cores: &[&Core]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: Vec<Option<u64>> = cores.iter().map(|c| c.group.leader()).collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l))
                && cores
                    .iter()
                    .any(|c| c.id == *l && c.group.metrics().state == ServerState::Leader)
            {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route(i: u64, node: u64) -> Op {
    Op::RouteAdd {
        filter: format!("t/{i}/#"),
        node,
    }
}

async fn assert_same_tables(cores: &[&Core], seqs: [u64; 4]) {
    for c in cores {
        assert!(
            c.group.wait_applied(seqs, WAIT).await,
            "core {} did not reach {seqs:?}: {:?}",
            c.id,
            c.group.seqs()
        );
    }
    let first = cores[0].group.tables();
    for c in &cores[1..] {
        assert_eq!(
            c.group.tables(),
            first,
            "core {} tables differ from core {}",
            c.id,
            cores[0].id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cores_replicate_fail_over_and_catch_up() {
    let dir = tmp_dir("fail-over");
    let cores = start_cluster(3, &dir, 20).await;
    let all: Vec<&Core> = cores.iter().collect();
    let leader = agreed_leader(&all).await;
    let follower = cores.iter().find(|c| c.id != leader).unwrap();

    // Subscribe on another follower before any write: it must see every entry once, in order.
    let watcher = cores
        .iter()
        .find(|c| c.id != leader && c.id != follower.id)
        .unwrap();
    let mut sub = watcher.group.subscribe_entries();
    assert_eq!(sub.tables.seqs(), [0; 4]);
    let mut changes = watcher.group.subscribe_changes();

    // Writes through a follower are forwarded to the leader and applied everywhere.
    let t0 = Instant::now();
    let mut last = None;
    for i in 0..10 {
        let ops = vec![
            route(i, follower.id),
            Op::SessionSet {
                client_id: format!("c{i}"),
                node: follower.id,
            },
        ];
        last = Some(follower.group.write(ops).await.unwrap());
    }
    let per_write = t0.elapsed() / 10;
    let seqs = last.unwrap().seqs;
    assert_eq!(seqs[RlogShard::Route.index()], 10);
    assert_eq!(seqs[RlogShard::Session.index()], 10);
    assert_same_tables(&all, seqs).await;
    eprintln!("forwarded write of a 2-op batch: {per_write:?} on average over 10");

    // The same on the leader itself, then 200 concurrent writers (openraft batches their appends).
    let lg = cores.iter().find(|c| c.id == leader).unwrap().group.clone();
    let t0 = Instant::now();
    for i in 0..10 {
        lg.write(vec![Op::RetainSet {
            topic: format!("r/{i}"),
            node: leader,
        }])
        .await
        .unwrap();
    }
    eprintln!(
        "leader-local write of a 1-op batch: {:?} on average over 10",
        t0.elapsed() / 10
    );
    let t0 = Instant::now();
    let writers: Vec<_> = (0..200u64)
        .map(|i| {
            let g = lg.clone();
            tokio::spawn(async move {
                g.write(vec![Op::RetainSet {
                    topic: format!("c/{i}"),
                    node: 1,
                }])
                .await
            })
        })
        .collect();
    let mut last = [0u64; 4];
    for w in writers {
        let r = w.await.unwrap().unwrap();
        last = std::array::from_fn(|i| last[i].max(r.seqs[i]));
    }
    let el = t0.elapsed();
    eprintln!(
        "200 concurrent 1-op writes on the leader: {el:?} ({:.0} writes/s)",
        200.0 / el.as_secs_f64()
    );
    assert_eq!(last[RlogShard::Retain.index()], 210);
    assert_same_tables(&all, last).await;
    drop(lg); // it holds the leader's endpoint, which must close below

    let mut seen = Vec::new();
    while seen.len() < 20 {
        let e = tokio::time::timeout(WAIT, sub.entries.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push((e.shard, e.seq));
    }
    let routes: Vec<u64> = seen
        .iter()
        .filter(|(s, _)| *s == RlogShard::Route)
        .map(|(_, q)| *q)
        .collect();
    assert_eq!(routes, (1..=10).collect::<Vec<_>>());
    let c = tokio::time::timeout(WAIT, changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!c.is_empty());

    // Stop the leader: the two others elect a new one and writes continue.
    let mut cores = cores;
    let pos = cores.iter().position(|c| c.id == leader).unwrap();
    let old = cores.remove(pos);
    let (old_id, old_addr) = (old.id, old.addr);
    let old_last_log = old.group.metrics().last_log_index.unwrap();
    let members: BTreeMap<u64, SocketAddr> = cores
        .iter()
        .map(|c| (c.id, c.addr))
        .chain([(old_id, old_addr)])
        .collect();
    old.stop().await;
    let rest: Vec<&Core> = cores.iter().collect();
    let new_leader = agreed_leader(&rest).await;
    assert_ne!(new_leader, leader);
    // Enough writes that the leader snapshots (every 20 logs) and purges what the stopped core lacks.
    let writer = &cores[0].group;
    let mut last = None;
    for i in 10..110 {
        last = Some(writer.write(vec![route(i, 7)]).await.unwrap());
    }
    let seqs = last.unwrap().seqs;
    assert_eq!(seqs[RlogShard::Route.index()], 110);
    assert_same_tables(&rest, seqs).await;
    // The leader purged logs the stopped core lacks: it can only catch up by a snapshot.
    let lm = rest
        .iter()
        .find(|c| c.id == new_leader)
        .unwrap()
        .group
        .metrics();
    assert!(
        lm.purged.unwrap_or(0) > old_last_log,
        "leader did not purge past {old_last_log}: {lm:?}"
    );

    // Restart the stopped core from its data dir, on its old address: it catches up.
    // The old endpoint's socket closes once its last task lets go of it: retry briefly.
    let deadline = Instant::now() + WAIT;
    let t = loop {
        match Transport::bind(TransportConfig::new(old_id, old_addr, COOKIE)) {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {old_addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {old_addr}: {e}"),
        }
    };
    let back = start(old_id, t, &dir, &members, 20).await;
    let t0 = Instant::now();
    cores.push(back);
    let all: Vec<&Core> = cores.iter().collect();
    assert_same_tables(&all, seqs).await;
    eprintln!("restarted core caught up in {:?}", t0.elapsed());
    let m = cores.last().unwrap().group.metrics();
    assert_eq!(m.voters.len(), 3);
    assert!(
        m.snapshot.unwrap_or(0) > old_last_log,
        "restarted core has no snapshot: {m:?}"
    );
    // Its tails restart at the installed seqs, and it follows new writes.
    let r = cores
        .last()
        .unwrap()
        .group
        .write(vec![route(1000, old_id)])
        .await
        .unwrap();
    let all: Vec<&Core> = cores.iter().collect();
    assert_same_tables(&all, r.seqs).await;

    for c in cores {
        c.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_core_joins_as_voter() {
    let dir = tmp_dir("join");
    let mut cores = start_cluster(3, &dir, 10_000).await;
    let all: Vec<&Core> = cores.iter().collect();
    agreed_leader(&all).await;
    let r = cores[1]
        .group
        .write(vec![route(1, 2), route(2, 3)])
        .await
        .unwrap();

    // A new core with no seeds of its own waits to be added.
    let t = bind(4, "127.0.0.1:0".parse().unwrap());
    let joiner = start(4, t, &dir, &BTreeMap::new(), 10_000).await;
    cores[2].group.add_member(4, joiner.addr).await.unwrap();
    cores.push(joiner);
    let all: Vec<&Core> = cores.iter().collect();
    assert_same_tables(&all, r.seqs).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = cores[3].group.metrics();
        if m.voters.contains(&4) && m.voters.len() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "core 4 never became a voter: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = cores[3].group.write(vec![route(3, 4)]).await.unwrap();
    let all: Vec<&Core> = cores.iter().collect();
    assert_same_tables(&all, r.seqs).await;

    // And can be removed again.
    cores[0].group.remove_member(4).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while cores[0].group.metrics().voters.contains(&4) {
        assert!(Instant::now() < deadline, "core 4 still a voter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in cores {
        c.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
