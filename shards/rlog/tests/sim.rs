//! Deterministic cluster simulation of the RLOG protocol, from one seed.
//!
//! A leader appends random ops to the committed log; three cores apply it, each with its own
//! lag, and keep small tails; replicants follow every shard over simulated streams that lose
//! (the stream breaks), reorder and duplicate messages. Cores restart (tail lost, tables
//! rebuilt from the log, possibly from an older point), get partitioned away; replicants
//! restart from their last persisted tables. Every step checks that a replicant's shard state
//! at seq `s` is the leader's state at `s` and that a replicant never runs ahead of its core;
//! after healing, every replicant must equal the leader.
//!
//! `SIM_SEED=<n>` replays one seed (with a summary); `SIM_SEEDS=<n>` sets how many seeds the
//! default run covers (200) and `SIM_SEED_FROM=<n>` the first of them (0).

mod common;
use common::RouteView;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use shardmq_rlog::{
    Change, Member, NodeId, Op, ReplicantShard, RlogError, RlogServer, RlogShard, Role, ShardState,
    ShardTail, Tables, ToCore, ToReplicant,
};

const CORES: usize = 3;
const STEPS: u64 = 300;
const HEAL_STEPS_MAX: u64 = 3000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    bootstraps: u64,
    resumes: u64,
    stream_errors: u64,
    gaps: u64,
    replay_overflows: u64,
    breaks: u64,
    core_restarts: u64,
    replicant_restarts: u64,
    partitions: u64,
    snapshot_installs: u64,
    ops: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.bootstraps += o.bootstraps;
        self.resumes += o.resumes;
        self.stream_errors += o.stream_errors;
        self.gaps += o.gaps;
        self.replay_overflows += o.replay_overflows;
        self.breaks += o.breaks;
        self.core_restarts += o.core_restarts;
        self.replicant_restarts += o.replicant_restarts;
        self.partitions += o.partitions;
        self.snapshot_installs += o.snapshot_installs;
        self.ops += o.ops;
    }
}

struct Core {
    applied: usize,
    tables: Tables,
    tails: Vec<ShardTail>,
    speed: u64,
    down_until: u64,
    partitioned_until: u64,
}

impl Core {
    fn reachable(&self, now: u64) -> bool {
        now >= self.down_until && now >= self.partitioned_until
    }
}

/// What the data plane of a replicant knows, built only from `Change`s.
#[derive(Default, PartialEq, Debug)]
struct DataPlane {
    route: RouteView,
    sessions: BTreeMap<String, NodeId>,
    members: BTreeMap<NodeId, Member>,
}

impl DataPlane {
    fn from_tables(t: &Tables) -> Self {
        let mut changes = Vec::new();
        let mut scratch = Tables::default();
        for s in RlogShard::ALL {
            scratch.replace_shard(t.snapshot_shard(s), &mut changes);
        }
        let mut dp = DataPlane::default();
        dp.apply(&mut changes);
        dp
    }
    fn apply(&mut self, changes: &mut Vec<Change>) {
        for c in changes.drain(..) {
            let Some(c) = self.route.apply(c) else {
                continue;
            };
            match c {
                Change::SessionOwner {
                    client_id, node, ..
                } => match node {
                    Some(n) => assert_ne!(self.sessions.insert(client_id, n), Some(n)),
                    None => assert!(self.sessions.remove(&client_id).is_some()),
                },
                Change::MemberChanged { node, member } => match member {
                    Some(m) => assert_ne!(self.members.insert(node, m.clone()), Some(m)),
                    None => assert!(self.members.remove(&node).is_some()),
                },
                route => unreachable!("a route change left over: {route:?}"),
            }
        }
    }
}

struct Replicant {
    node: NodeId,
    tables: Tables,
    synced: [bool; RlogShard::COUNT],
    shards: Vec<ReplicantShard>,
    streams: [Option<u64>; RlogShard::COUNT],
    reconnect_at: [u64; RlogShard::COUNT],
    upstream: Option<usize>,
    persisted: (Tables, [bool; RlogShard::COUNT]),
    dp: DataPlane,
    checked: [Option<u64>; RlogShard::COUNT],
}

impl Replicant {
    fn new_shards(replay_max: usize) -> Vec<ReplicantShard> {
        RlogShard::ALL
            .iter()
            .map(|&s| ReplicantShard::new(s, replay_max))
            .collect()
    }
    fn harvest(&self, stats: &mut Stats) {
        for sh in &self.shards {
            stats.bootstraps += sh.bootstraps();
            stats.resumes += sh.resumes();
        }
    }
}

struct Stream {
    rep: usize,
    shard: RlogShard,
    core: usize,
    server: Option<RlogServer>,
    to_core: VecDeque<(u64, ToCore)>,
    to_rep: VecDeque<(u64, ToReplicant)>,
    connect_seq: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    faults: bool,
    log: Vec<Op>,
    leader: Tables,
    /// `hist[shard][seq]`: digest of the shard after `seq`.
    hist: Vec<Vec<u64>>,
    cores: Vec<Core>,
    reps: Vec<Replicant>,
    streams: BTreeMap<u64, Stream>,
    next_stream: u64,
    batch_max: usize,
    window_batches: usize,
    replay_max: usize,
    tail_cap: usize,
    stats: Stats,
}

fn member(node: NodeId, v: u64) -> Member {
    Member {
        addr: format!("10.0.0.{node}:4370"),
        role: if node <= 3 {
            Role::Core
        } else {
            Role::Replicant
        },
        api: format!("10.0.0.{node}:{}", 8080 + v),
    }
}

impl Sim {
    /// `replicants` replicants (2 or 3, from the seed, for `None`).
    fn with_replicants(seed: u64, replicants: Option<usize>) -> Self {
        let mut rng = Rng(seed);
        let tail_cap = 4 + rng.below(28) as usize;
        let cores = (0..CORES)
            .map(|_| Core {
                applied: 0,
                tables: Tables::default(),
                tails: RlogShard::ALL
                    .iter()
                    .map(|&s| ShardTail::new(s, tail_cap))
                    .collect(),
                speed: 3 + rng.below(6),
                down_until: 0,
                partitioned_until: 0,
            })
            .collect();
        let replay_max = 32 + rng.below(480) as usize;
        let n_reps = replicants.unwrap_or_else(|| 2 + rng.below(2) as usize);
        let reps = (0..n_reps)
            .map(|i| Replicant {
                node: 10 + i as u64,
                tables: Tables::default(),
                synced: [false; RlogShard::COUNT],
                shards: Replicant::new_shards(replay_max),
                streams: [None; RlogShard::COUNT],
                reconnect_at: [rng.below(5); RlogShard::COUNT],
                upstream: None,
                persisted: (Tables::default(), [false; RlogShard::COUNT]),
                dp: DataPlane::default(),
                checked: [None; RlogShard::COUNT],
            })
            .collect();
        let empty = Tables::default();
        Sim {
            batch_max: 1 + rng.below(8) as usize,
            window_batches: 1 + rng.below(3) as usize,
            rng,
            now: 0,
            faults: true,
            log: Vec::new(),
            hist: RlogShard::ALL
                .iter()
                .map(|&s| vec![empty.shard_digest(s)])
                .collect(),
            leader: empty,
            cores,
            reps,
            streams: BTreeMap::new(),
            next_stream: 0,
            replay_max,
            tail_cap,
            stats: Stats::default(),
        }
    }

    fn commit(&mut self, op: Op) {
        let e = self.leader.apply(op.clone(), &mut Vec::new());
        let h = &mut self.hist[e.shard.index()];
        assert_eq!(h.len() as u64, e.seq);
        h.push(self.leader.shard_digest(e.shard));
        self.log.push(op);
        self.stats.ops += 1;
    }

    fn produce(&mut self) {
        let r = &mut self.rng;
        let node = 1 + r.below(6);
        let mut ops = Vec::new();
        match r.below(1000) {
            0..=9 => {
                // Route storm.
                for _ in 0..10 + r.below(40) {
                    ops.push(Op::RouteAdd {
                        filter: format!("storm/{}/+", r.below(60)),
                        node,
                    });
                }
            }
            10..=14 => ops = Op::purge_node(node),
            15..=199 => ops.push(Op::RouteAdd {
                filter: format!("r/{}", r.below(30)),
                node,
            }),
            200..=299 => ops.push(Op::RouteDel {
                filter: format!("r/{}", r.below(30)),
                node,
            }),
            300..=309 => ops.push(Op::RouteDel {
                filter: format!("storm/{}/+", r.below(60)),
                node,
            }),
            310..=399 => ops.push(Op::SessionSet {
                client_id: format!("c{}", r.below(40)),
                node,
            }),
            400..=449 => ops.push(Op::SessionDel {
                client_id: format!("c{}", r.below(40)),
                node,
            }),
            450..=499 => ops.push(Op::RetainSet {
                topic: format!("t/{}", r.below(20)),
                node,
            }),
            500..=519 => ops.push(Op::RetainDel {
                topic: format!("t/{}", r.below(20)),
            }),
            520..=539 => ops.push(Op::MemberSet {
                node,
                member: member(node, r.below(2)),
            }),
            540..=549 => ops.push(Op::ConfigSet {
                key: format!("k{}", r.below(5)),
                value: format!("v{}", r.below(5)),
            }),
            550..=554 => ops.push(Op::SessionPurge { node }),
            555..=599 => ops.push(Op::ShareWeight {
                filter: format!("r/{}", r.below(30)),
                node,
                online: r.below(4) as u32,
            }),
            _ => {}
        }
        for op in ops {
            self.commit(op);
        }
    }

    fn break_stream(&mut self, id: u64) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        self.stats.breaks += 1;
        let rep = &mut self.reps[st.rep];
        let s = st.shard.index();
        assert_eq!(rep.streams[s], Some(id));
        rep.streams[s] = None;
        rep.shards[s].on_disconnect();
        rep.reconnect_at[s] = self.now + 1 + self.rng.below(4);
    }

    fn streams_of_core(&self, c: usize) -> Vec<u64> {
        self.streams
            .iter()
            .filter(|(_, st)| st.core == c)
            .map(|(&id, _)| id)
            .collect()
    }

    fn restart_core(&mut self, c: usize) {
        self.stats.core_restarts += 1;
        for id in self.streams_of_core(c) {
            self.break_stream(id);
        }
        let core = &mut self.cores[c];
        // The state machine restarts from its last raft snapshot: an older point of the log.
        let from = core.applied - self.rng.below(core.applied as u64 / 2 + 1) as usize;
        let mut t = Tables::default();
        for op in &self.log[..from] {
            t.apply(op.clone(), &mut Vec::new());
        }
        core.applied = from;
        for tail in &mut core.tails {
            tail.reset_to(t.seq(tail.shard()));
        }
        core.tables = t;
        core.down_until = self.now + 2 + self.rng.below(20);
    }

    /// A lagging core receives a Raft snapshot from the leader: its tables jump to the end of
    /// the log, its tails restart there, and (as the shell must) its streams are dropped.
    fn install_snapshot(&mut self, c: usize) {
        self.stats.snapshot_installs += 1;
        for id in self.streams_of_core(c) {
            self.break_stream(id);
        }
        let core = &mut self.cores[c];
        for op in &self.log[core.applied..] {
            core.tables.apply(op.clone(), &mut Vec::new());
        }
        core.applied = self.log.len();
        for tail in &mut core.tails {
            tail.reset_to(core.tables.seq(tail.shard()));
        }
    }

    fn restart_replicant(&mut self, r: usize) {
        self.stats.replicant_restarts += 1;
        for s in 0..RlogShard::COUNT {
            if let Some(id) = self.reps[r].streams[s] {
                self.break_stream(id);
            }
        }
        let down = self.now + 2 + self.rng.below(10);
        let rep = &mut self.reps[r];
        rep.harvest(&mut self.stats);
        rep.shards = Replicant::new_shards(self.replay_max);
        rep.tables = rep.persisted.0.clone();
        rep.synced = rep.persisted.1;
        rep.dp = DataPlane::from_tables(&rep.tables);
        rep.reconnect_at = [down; RlogShard::COUNT];
        rep.upstream = None;
        rep.checked = [None; RlogShard::COUNT];
    }

    fn inject_faults(&mut self) {
        for c in 0..CORES {
            if self.rng.chance(3) {
                self.restart_core(c);
            } else if self.rng.chance(2) && self.cores[c].applied + 20 < self.log.len() {
                self.install_snapshot(c);
            } else if self.rng.chance(3) && self.cores[c].reachable(self.now) {
                self.stats.partitions += 1;
                self.cores[c].partitioned_until = self.now + 5 + self.rng.below(40);
                for id in self.streams_of_core(c) {
                    self.break_stream(id);
                }
            }
        }
        for r in 0..self.reps.len() {
            if self.rng.chance(3) {
                self.restart_replicant(r);
            }
        }
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            if self.rng.chance(5) {
                // A lost message: the transport breaks the stream.
                self.break_stream(id);
            }
        }
    }

    fn advance_cores(&mut self) {
        for c in 0..CORES {
            if self.now < self.cores[c].down_until {
                continue;
            }
            let n = if self.faults && self.rng.chance(100) {
                0
            } else {
                self.rng.below(self.cores[c].speed + 1)
            };
            for _ in 0..n {
                let core = &mut self.cores[c];
                if core.applied == self.log.len() {
                    break;
                }
                let e = core
                    .tables
                    .apply(self.log[core.applied].clone(), &mut Vec::new());
                core.applied += 1;
                core.tails[e.shard.index()].push(e.clone());
                for st in self.streams.values_mut() {
                    if st.core == c && st.shard == e.shard {
                        if let Some(srv) = &mut st.server {
                            srv.try_on_live(e.clone())
                                .expect("streams are dropped when a core's tables jump");
                        }
                    }
                }
            }
        }
    }

    fn latency(&mut self) -> u64 {
        self.now + self.rng.below(3)
    }

    /// Moves the messages of one stream; `Err` means the stream must break.
    fn run_stream(&mut self, st: &mut Stream) -> Result<(), &'static str> {
        // Replicant → core.
        while st.to_core.front().is_some_and(|(t, _)| *t <= self.now) {
            let Some((_, msg)) = st.to_core.pop_front() else {
                break;
            };
            let core = &self.cores[st.core];
            match (msg, &mut st.server) {
                (
                    ToCore::Hello {
                        checkpoint, shard, ..
                    },
                    None,
                ) => {
                    if shard != st.shard {
                        return Err("hello for another shard");
                    }
                    st.server = Some(RlogServer::open(
                        checkpoint,
                        &core.tables,
                        &core.tails[shard.index()],
                        shard,
                        self.batch_max,
                        self.window_batches,
                    ));
                }
                (ToCore::BootstrapAck { batch }, Some(srv)) => srv.on_ack(batch),
                _ => return Err("core: unexpected message"),
            }
        }
        // Core → replicant, with duplication and reordering.
        if let Some(srv) = &mut st.server {
            while let Some(m) = srv.poll_transmit() {
                let t = self.now + self.rng.below(3);
                if self.faults && self.rng.chance(8) {
                    st.to_rep.push_back((t, m.clone()));
                }
                st.to_rep.push_back((t, m));
                let n = st.to_rep.len();
                if self.faults && n >= 2 && self.rng.chance(8) {
                    st.to_rep.swap(n - 1, n - 2);
                }
            }
        }
        let rep = &mut self.reps[st.rep];
        let s = st.shard.index();
        let mut changes = Vec::new();
        while st.to_rep.front().is_some_and(|(t, _)| *t <= self.now) {
            let Some((_, msg)) = st.to_rep.pop_front() else {
                break;
            };
            let mut out = Vec::new();
            let r = rep.shards[s].on_message(msg, &mut rep.tables, &mut changes, &mut out);
            rep.dp.apply(&mut changes);
            if let Err(e) = r {
                self.stats.stream_errors += 1;
                match e {
                    RlogError::Gap { .. } => self.stats.gaps += 1,
                    RlogError::ReplayOverflow { .. } => self.stats.replay_overflows += 1,
                    RlogError::Protocol(_) => {}
                }
                return Err("replicant: stream error");
            }
            if rep.shards[s].state() == ShardState::Normal {
                rep.synced[s] = true;
            }
            for m in out {
                let t = self.now + self.rng.below(3);
                st.to_core.push_back((t, m));
            }
        }
        Ok(())
    }

    fn run_streams(&mut self) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            let Some(mut st) = self.streams.remove(&id) else {
                continue;
            };
            let r = self.run_stream(&mut st);
            self.streams.insert(id, st);
            if r.is_err() {
                self.break_stream(id);
            }
        }
    }

    fn pick_core(&mut self, r: usize) -> Option<usize> {
        let now = self.now;
        if let Some(c) = self.reps[r].upstream {
            if self.cores[c].reachable(now) && !self.rng.chance(50) {
                return Some(c);
            }
        }
        let mut load = [BTreeSet::new(), BTreeSet::new(), BTreeSet::new()];
        for st in self.streams.values() {
            load[st.core].insert(st.rep);
        }
        let mut best: Option<(u64, usize)> = None;
        for (c, l) in load.iter().enumerate() {
            if !self.cores[c].reachable(now) {
                continue;
            }
            let score = l.len() as u64 * 4 + self.rng.below(6);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, c));
            }
        }
        best.map(|(_, c)| c)
    }

    fn reconnect(&mut self) {
        for r in 0..self.reps.len() {
            for s in RlogShard::ALL {
                let i = s.index();
                if self.reps[r].streams[i].is_some() || self.reps[r].reconnect_at[i] > self.now {
                    continue;
                }
                let Some(c) = self.pick_core(r) else {
                    self.reps[r].reconnect_at[i] = self.now + 2;
                    continue;
                };
                let rep = &mut self.reps[r];
                rep.upstream = Some(c);
                let hello = rep.shards[i].hello(rep.node, &rep.tables, !rep.synced[i]);
                let id = self.next_stream;
                self.next_stream += 1;
                rep.streams[i] = Some(id);
                let connect_seq = rep.tables.seq(s);
                let t = self.latency();
                self.streams.insert(
                    id,
                    Stream {
                        rep: r,
                        shard: s,
                        core: c,
                        server: None,
                        to_core: VecDeque::from([(t, hello)]),
                        to_rep: VecDeque::new(),
                        connect_seq,
                    },
                );
            }
        }
    }

    fn check(&mut self) {
        for st in self.streams.values() {
            let rep_seq = self.reps[st.rep].tables.seq(st.shard);
            let core_seq = self.cores[st.core].tables.seq(st.shard);
            assert!(
                rep_seq <= core_seq.max(st.connect_seq),
                "replicant {} shard {} at {rep_seq} ran ahead of core {} at {core_seq}",
                st.rep,
                st.shard,
                st.core
            );
        }
        for c in &self.cores {
            for s in RlogShard::ALL {
                assert_eq!(c.tables.seq(s), c.tails[s.index()].last_seq());
            }
        }
        for (r, rep) in self.reps.iter_mut().enumerate() {
            for s in RlogShard::ALL {
                let seq = rep.tables.seq(s);
                if rep.checked[s.index()] == Some(seq) {
                    continue;
                }
                rep.checked[s.index()] = Some(seq);
                assert_eq!(
                    rep.tables.shard_digest(s),
                    self.hist[s.index()][seq as usize],
                    "replicant {r} shard {s} diverged at seq {seq}"
                );
            }
        }
    }

    fn step(&mut self) {
        self.now += 1;
        if self.faults {
            for _ in 0..1 + self.rng.below(2) {
                self.produce();
            }
            self.inject_faults();
        }
        self.advance_cores();
        self.run_streams();
        self.reconnect();
        for rep in &mut self.reps {
            if self.rng.chance(50) {
                rep.persisted = (rep.tables.clone(), rep.synced);
            }
        }
        self.check();
        if self.rng.chance(20) {
            for rep in &self.reps {
                assert_eq!(
                    rep.dp,
                    DataPlane::from_tables(&rep.tables),
                    "data plane drifted"
                );
            }
        }
    }

    fn converged(&self) -> bool {
        self.cores.iter().all(|c| c.applied == self.log.len())
            && self.reps.iter().all(|r| {
                r.tables.seqs() == self.leader.seqs()
                    && r.shards.iter().all(|s| s.state() == ShardState::Normal)
            })
    }

    fn run(&mut self) -> Stats {
        for _ in 0..STEPS {
            self.step();
        }
        // Heal: no more faults or writes; everything must converge.
        self.faults = false;
        for c in &mut self.cores {
            c.partitioned_until = 0;
        }
        let start = self.now;
        while !self.converged() {
            assert!(
                self.now - start < HEAL_STEPS_MAX,
                "no convergence after healing"
            );
            self.step();
        }
        for c in &self.cores {
            assert_eq!(c.tables, self.leader, "core differs from the leader");
        }
        for (r, rep) in self.reps.iter().enumerate() {
            for s in RlogShard::ALL {
                assert!(
                    rep.tables.shard_eq(&self.leader, s),
                    "replicant {r} shard {s}"
                );
            }
            assert_eq!(rep.tables, self.leader);
            assert_eq!(rep.dp, DataPlane::from_tables(&self.leader));
            rep.harvest(&mut self.stats);
        }
        self.stats
    }
}

fn run_seed(seed: u64) -> Stats {
    run_seed_with(seed, None)
}

fn run_seed_with(seed: u64, replicants: Option<usize>) -> Stats {
    let mut sim = Sim::with_replicants(seed, replicants);
    let r = catch_unwind(AssertUnwindSafe(|| sim.run()));
    match r {
        Ok(stats) => stats,
        Err(e) => {
            eprintln!(
                "simulation failed: seed {seed} at step {} (tail_cap {}, batch_max {}, window {}, replay_max {}); replay with SIM_SEED={seed}",
                sim.now, sim.tail_cap, sim.batch_max, sim.window_batches, sim.replay_max
            );
            std::panic::resume_unwind(e)
        }
    }
}

#[test]
fn simulation() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED must be a u64");
        let stats = run_seed(seed);
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let from: u64 = std::env::var("SIM_SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = Stats::default();
    for seed in from..from + seeds {
        total += run_seed(seed);
    }
    eprintln!("{seeds} seeds: {total:?}");
    assert!(total.resumes > 0, "no stream ever resumed");
    assert!(total.bootstraps > 0, "no stream ever bootstrapped");
    assert!(total.stream_errors > 0, "faults never hit a stream");
    assert!(
        total.resumes > total.bootstraps / 4,
        "resumes are rare: {total:?}"
    );
}

/// 23 nodes: the 3 cores and 20 replicants, with every fault, converge (`SIM_BIG_SEEDS`, 20).
#[test]
fn twenty_three_nodes_converge() {
    let seeds: u64 = std::env::var("SIM_BIG_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut total = Stats::default();
    for seed in 0..seeds {
        total += run_seed_with(1_000_000 + seed, Some(20));
    }
    eprintln!("{seeds} seeds of 3 cores + 20 replicants: {total:?}");
    assert!(total.replicant_restarts > 0 && total.partitions > 0 && total.core_restarts > 0);
    assert!(total.resumes > 0 && total.bootstraps > 0 && total.stream_errors > 0);
}
