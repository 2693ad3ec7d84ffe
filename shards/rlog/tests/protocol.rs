//! Unit tests of the tables, the tail and the stream handshake.

use shardmq_rlog::{
    Change, Entry, Member, Op, ReplicantShard, RlogError, RlogServer, RlogShard, Role, ShardState,
    ShardTail, Tables, ToCore, ToReplicant,
};

fn radd(filter: &str, node: u64) -> Op {
    Op::RouteAdd {
        filter: filter.into(),
        node,
    }
}

fn member(n: u64) -> Member {
    Member {
        addr: format!("10.0.0.{n}:4370"),
        role: Role::Core,
        api: String::new(),
    }
}

/// A core: tables plus one tail per shard, kept in step.
struct Core {
    tables: Tables,
    tails: Vec<ShardTail>,
}

impl Core {
    fn new(cap: usize) -> Self {
        Self {
            tables: Tables::default(),
            tails: RlogShard::ALL
                .iter()
                .map(|&s| ShardTail::new(s, cap))
                .collect(),
        }
    }
    fn apply(&mut self, op: Op) -> Entry {
        let e = self.tables.apply(op, &mut Vec::new());
        self.tails[e.shard.index()].push(e.clone());
        e
    }
    fn open(
        &self,
        shard: RlogShard,
        cp: Option<u64>,
        batch_max: usize,
        window: usize,
    ) -> RlogServer {
        RlogServer::open(
            cp,
            &self.tables,
            &self.tails[shard.index()],
            shard,
            batch_max,
            window,
        )
    }
}

/// Delivers everything the server has to send, feeding acks back, until both are quiet.
fn pump(
    srv: &mut RlogServer,
    rep: &mut ReplicantShard,
    tables: &mut Tables,
    changes: &mut Vec<Change>,
) -> Result<Vec<ToReplicant>, RlogError> {
    let mut seen = Vec::new();
    while let Some(m) = srv.poll_transmit() {
        seen.push(m.clone());
        let mut out = Vec::new();
        rep.on_message(m, tables, changes, &mut out)?;
        for a in out {
            match a {
                ToCore::BootstrapAck { batch } => srv.on_ack(batch),
                ToCore::Hello { .. } => panic!("hello mid-stream"),
            }
        }
    }
    Ok(seen)
}

#[test]
fn shard_names_and_indexes() {
    for (i, s) in RlogShard::ALL.iter().enumerate() {
        assert_eq!(s.index(), i);
        assert_eq!(RlogShard::from_index(i), Some(*s));
    }
    assert_eq!(RlogShard::from_index(RlogShard::COUNT), None);
    let names: Vec<_> = RlogShard::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["route", "session", "retain", "config"]);
}

#[test]
fn route_ops_are_idempotent_and_report_only_effective_changes() {
    let mut t = Tables::default();
    let mut ch = Vec::new();
    t.apply(radd("a/#", 1), &mut ch);
    t.apply(radd("a/#", 1), &mut ch);
    t.apply(radd("a/#", 2), &mut ch);
    assert_eq!(
        ch,
        vec![
            Change::RouteAdded {
                filter: "a/#".into(),
                node: 1
            },
            Change::RouteAdded {
                filter: "a/#".into(),
                node: 2
            },
        ]
    );
    ch.clear();
    t.apply(
        Op::RouteDel {
            filter: "a/#".into(),
            node: 3,
        },
        &mut ch,
    );
    t.apply(
        Op::RouteDel {
            filter: "b".into(),
            node: 1,
        },
        &mut ch,
    );
    assert!(ch.is_empty());
    t.apply(
        Op::RouteDel {
            filter: "a/#".into(),
            node: 1,
        },
        &mut ch,
    );
    t.apply(
        Op::RouteDel {
            filter: "a/#".into(),
            node: 2,
        },
        &mut ch,
    );
    assert_eq!(ch.len(), 2);
    assert_eq!(t.route_count(), 0, "a filter without nodes is removed");
    assert_eq!(t.nodes_for("a/#"), None);
    assert_eq!(
        t.seq(RlogShard::Route),
        7,
        "every op gets a seq, effective or not"
    );
}

#[test]
fn purge_removes_a_node_everywhere() {
    let mut t = Tables::default();
    let mut ch = Vec::new();
    for op in [
        radd("x", 1),
        radd("x", 2),
        radd("y", 1),
        Op::SessionSet {
            client_id: "c1".into(),
            node: 1,
        },
        Op::SessionSet {
            client_id: "c2".into(),
            node: 2,
        },
        Op::RetainSet {
            topic: "t".into(),
            node: 1,
        },
        Op::RetainSet {
            topic: "u".into(),
            node: 2,
        },
        Op::MemberSet {
            node: 1,
            member: member(1),
        },
        Op::MemberSet {
            node: 2,
            member: member(2),
        },
    ] {
        t.apply(op, &mut ch);
    }
    ch.clear();
    for op in Op::purge_node(1) {
        t.apply(op, &mut ch);
    }
    assert_eq!(t.routes().count(), 1);
    assert_eq!(
        t.nodes_for("x")
            .map(|s| s.iter().copied().collect::<Vec<_>>()),
        Some(vec![2])
    );
    assert_eq!(t.session_owner("c1"), None);
    assert_eq!(t.session_owner("c2"), Some(2));
    assert_eq!(t.retained_owner("t"), None);
    assert_eq!(t.retained_owner("u"), Some(2));
    assert_eq!(t.members().keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(
        ch,
        vec![
            Change::RouteRemoved {
                filter: "x".into(),
                node: 1
            },
            Change::RouteRemoved {
                filter: "y".into(),
                node: 1
            },
            Change::SessionOwner {
                client_id: "c1".into(),
                node: None,
                previous: Some(1)
            },
            Change::MemberChanged {
                node: 1,
                member: None
            },
        ]
    );
    assert_eq!(t.seqs(), [4, 3, 3, 3]);
}

#[test]
fn session_del_only_by_owner() {
    let mut t = Tables::default();
    let mut ch = Vec::new();
    t.apply(
        Op::SessionSet {
            client_id: "c".into(),
            node: 1,
        },
        &mut ch,
    );
    t.apply(
        Op::SessionSet {
            client_id: "c".into(),
            node: 2,
        },
        &mut ch,
    );
    t.apply(
        Op::SessionSet {
            client_id: "c".into(),
            node: 2,
        },
        &mut ch,
    );
    assert_eq!(ch.len(), 2, "setting the same owner again changes nothing");
    ch.clear();
    t.apply(
        Op::SessionDel {
            client_id: "c".into(),
            node: 1,
        },
        &mut ch,
    );
    assert_eq!(
        t.session_owner("c"),
        Some(2),
        "a late delete by the old owner is ignored"
    );
    assert!(ch.is_empty());
    t.apply(
        Op::SessionDel {
            client_id: "c".into(),
            node: 2,
        },
        &mut ch,
    );
    assert_eq!(t.session_owner("c"), None);
    assert_eq!(
        ch,
        vec![Change::SessionOwner {
            client_id: "c".into(),
            node: None,
            previous: Some(2)
        }]
    );
}

#[test]
fn seqs_are_per_shard_and_apply_entry_checks_them() {
    let mut core = Tables::default();
    let mut ch = Vec::new();
    let e1 = core.apply(radd("a", 1), &mut ch);
    let e2 = core.apply(
        Op::ConfigSet {
            key: "k".into(),
            value: "v".into(),
        },
        &mut ch,
    );
    let e3 = core.apply(radd("b", 1), &mut ch);
    assert_eq!((e1.shard, e1.seq), (RlogShard::Route, 1));
    assert_eq!((e2.shard, e2.seq), (RlogShard::Config, 1));
    assert_eq!((e3.shard, e3.seq), (RlogShard::Route, 2));

    let mut rep = Tables::default();
    assert_eq!(
        rep.apply_entry(&e3, &mut ch),
        Err(RlogError::Gap {
            shard: RlogShard::Route,
            have: 0,
            got: 2
        })
    );
    assert_eq!(rep.apply_entry(&e1, &mut ch), Ok(true));
    assert_eq!(rep.apply_entry(&e1, &mut ch), Ok(false));
    assert_eq!(rep.apply_entry(&e2, &mut ch), Ok(true));
    assert_eq!(rep.apply_entry(&e3, &mut ch), Ok(true));
    assert_eq!(rep, core);
    let bad = Entry {
        shard: RlogShard::Session,
        seq: 1,
        op: radd("a", 1),
    };
    assert!(matches!(
        rep.apply_entry(&bad, &mut ch),
        Err(RlogError::Protocol(_))
    ));
}

#[test]
fn replace_shard_emits_the_diff() {
    let mut core = Tables::default();
    let mut ch = Vec::new();
    core.apply(radd("a", 1), &mut ch);
    core.apply(radd("b", 2), &mut ch);
    core.apply(
        Op::SessionSet {
            client_id: "c".into(),
            node: 1,
        },
        &mut ch,
    );
    core.apply(
        Op::MemberSet {
            node: 1,
            member: member(1),
        },
        &mut ch,
    );

    let mut rep = Tables::default();
    rep.apply(radd("a", 1), &mut ch);
    rep.apply(radd("z", 3), &mut ch);
    rep.apply(
        Op::SessionSet {
            client_id: "c".into(),
            node: 2,
        },
        &mut ch,
    );
    rep.apply(
        Op::SessionSet {
            client_id: "d".into(),
            node: 2,
        },
        &mut ch,
    );
    ch.clear();
    for s in RlogShard::ALL {
        rep.replace_shard(core.snapshot_shard(s), &mut ch);
    }
    assert_eq!(rep, core);
    assert_eq!(
        ch,
        vec![
            Change::RouteRemoved {
                filter: "z".into(),
                node: 3
            },
            Change::RouteAdded {
                filter: "b".into(),
                node: 2
            },
            Change::SessionOwner {
                client_id: "d".into(),
                node: None,
                previous: Some(2)
            },
            Change::SessionOwner {
                client_id: "c".into(),
                node: Some(1),
                previous: Some(2)
            },
            Change::MemberChanged {
                node: 1,
                member: Some(member(1))
            },
        ]
    );
    assert_eq!(core.key_count(RlogShard::Route), 2);
    assert_eq!(
        core.shard_digest(RlogShard::Route),
        rep.shard_digest(RlogShard::Route)
    );
}

#[test]
fn tail_keeps_cap_entries_and_answers_since() {
    let mut core = Core::new(3);
    for i in 0..5 {
        core.apply(radd(&format!("f{i}"), 1));
    }
    let tail = &core.tails[0];
    assert_eq!(tail.len(), 3);
    assert_eq!(tail.last_seq(), 5);
    assert_eq!(tail.first_seq(), Some(3));
    let seqs = |v: Option<Vec<Entry>>| v.map(|v| v.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(seqs(tail.since(0)), None);
    assert_eq!(seqs(tail.since(1)), None);
    assert_eq!(seqs(tail.since(2)), Some(vec![3, 4, 5]));
    assert_eq!(seqs(tail.since(4)), Some(vec![5]));
    assert_eq!(seqs(tail.since(5)), Some(vec![]));
    assert_eq!(seqs(tail.since(9)), Some(vec![]), "a replicant ahead waits");
    let mut t = tail.clone();
    t.reset_to(10);
    assert_eq!((t.len(), t.last_seq()), (0, 10));
    assert_eq!(seqs(t.since(9)), None);
    assert_eq!(seqs(t.since(10)), Some(vec![]));
}

#[test]
#[should_panic(expected = "contiguous")]
fn tail_rejects_a_gap() {
    let mut t = ShardTail::new(RlogShard::Route, 4);
    t.push(Entry {
        shard: RlogShard::Route,
        seq: 2,
        op: radd("a", 1),
    });
}

#[test]
fn resume_from_a_covered_checkpoint() {
    let mut core = Core::new(16);
    let mut rt = Tables::default();
    for i in 0..5 {
        let e = core.apply(radd(&format!("f{i}"), 1));
        if i < 2 {
            rt.apply_entry(&e, &mut Vec::new()).unwrap();
        }
    }
    let mut rep = ReplicantShard::new(RlogShard::Route, 100);
    let hello = rep.hello(7, &rt, false);
    assert_eq!(
        hello,
        ToCore::Hello {
            node: 7,
            shard: RlogShard::Route,
            checkpoint: Some(2)
        }
    );
    let mut srv = core.open(RlogShard::Route, Some(2), 2, 1);
    assert!(!srv.is_bootstrapping());
    let mut ch = Vec::new();
    let seen = pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    assert_eq!(seen[0], ToReplicant::Resume { from: 2 });
    assert_eq!(rep.state(), ShardState::Normal);
    assert_eq!(rep.resumes(), 1);
    assert_eq!(rep.bootstraps(), 0);
    assert_eq!(ch.len(), 3);
    // Live entries follow.
    let e = core.apply(radd("live", 2));
    srv.on_live(e);
    pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    assert!(rt.shard_eq(&core.tables, RlogShard::Route));
    assert_eq!(srv.pending(), 0);
}

#[test]
fn replicant_ahead_of_a_lagging_core_resumes_and_waits() {
    let mut leader = Core::new(16);
    let entries: Vec<Entry> = (0..6)
        .map(|i| leader.apply(radd(&format!("f{i}"), 1)))
        .collect();
    let mut lagging = Core::new(16);
    for e in &entries[..3] {
        lagging.apply(e.op.clone());
    }
    let mut rt = Tables::default();
    for e in &entries[..5] {
        rt.apply_entry(e, &mut Vec::new()).unwrap();
    }
    let mut rep = ReplicantShard::new(RlogShard::Route, 100);
    let mut srv = lagging.open(RlogShard::Route, Some(5), 8, 2);
    let mut ch = Vec::new();
    pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    assert_eq!(rep.state(), ShardState::Normal);
    for e in &entries[3..] {
        let e2 = lagging.apply(e.op.clone());
        assert_eq!(&e2, e);
        srv.on_live(e2);
    }
    pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    assert_eq!(rt, leader.tables);
    assert_eq!(ch.len(), 1, "only f5 was new to the replicant");
}

#[test]
fn bootstrap_with_interleaved_live_entries() {
    let mut core = Core::new(4);
    for i in 0..20 {
        core.apply(radd(&format!("f{i}"), i % 3));
    }
    let mut rt = Tables::default();
    // The replicant had an old, different state: the snapshot must replace it.
    rt.apply(radd("stale", 9), &mut Vec::new());
    let mut rep = ReplicantShard::new(RlogShard::Route, 100);
    let cp = match rep.hello(7, &rt, false) {
        ToCore::Hello { checkpoint, .. } => checkpoint,
        _ => unreachable!(),
    };
    let mut srv = core.open(RlogShard::Route, cp, 3, 2);
    assert!(srv.is_bootstrapping());
    let mut ch = Vec::new();
    let mut out = Vec::new();
    // Begin, then only two batches before an ack (window 2).
    let m = srv.poll_transmit().unwrap();
    assert_eq!(m, ToReplicant::BootstrapBegin { seq: 20, keys: 20 });
    rep.on_message(m, &mut rt, &mut ch, &mut out).unwrap();
    assert_eq!(rep.state(), ShardState::Bootstrap);
    let b1 = srv.poll_transmit().unwrap();
    let b2 = srv.poll_transmit().unwrap();
    assert_eq!(srv.poll_transmit(), None, "window of 2 batches");
    // Live entries arrive meanwhile and are sent at once.
    for i in 0..5 {
        let e = core.apply(radd(&format!("live{i}"), 1));
        srv.on_live(e);
    }
    core.apply(Op::RouteDel {
        filter: "f0".into(),
        node: 0,
    });
    srv.on_live(core.tails[0].since(25).unwrap().remove(0));
    let live = srv.poll_transmit().unwrap();
    assert!(matches!(&live, ToReplicant::Entries(v) if v.len() == 3));
    rep.on_message(b1, &mut rt, &mut ch, &mut out).unwrap();
    rep.on_message(live, &mut rt, &mut ch, &mut out).unwrap();
    rep.on_message(b2, &mut rt, &mut ch, &mut out).unwrap();
    assert_eq!(rep.replay_queue_len(), 3);
    assert_eq!(
        out,
        vec![
            ToCore::BootstrapAck { batch: 1 },
            ToCore::BootstrapAck { batch: 2 }
        ]
    );
    for a in out.drain(..) {
        if let ToCore::BootstrapAck { batch } = a {
            srv.on_ack(batch);
        }
    }
    assert!(
        rt.nodes_for("f0").is_none(),
        "staging is not visible before the end"
    );
    pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    assert_eq!(rep.state(), ShardState::Normal);
    assert!(!srv.is_bootstrapping());
    assert_eq!(rep.bootstraps(), 1);
    assert_eq!(rep.bootstrap_keys(), 20);
    assert_eq!(rep.replay_queue_len(), 0);
    assert_eq!(rt, core.tables);
    // The changes, replayed on the replicant's old route table, give the core's.
    let mut routes = std::collections::BTreeSet::from([("stale".to_string(), 9)]);
    for c in ch {
        match c {
            Change::RouteAdded { filter, node } => assert!(routes.insert((filter, node))),
            Change::RouteRemoved { filter, node } => assert!(routes.remove(&(filter, node))),
            _ => {}
        }
    }
    let want: std::collections::BTreeSet<_> = core
        .tables
        .routes()
        .flat_map(|(f, ns)| ns.iter().map(move |&n| (f.to_string(), n)))
        .collect();
    assert_eq!(routes, want);
}

#[test]
fn empty_snapshot_bootstraps() {
    let core = Core::new(4);
    let mut rt = Tables::default();
    let mut rep = ReplicantShard::new(RlogShard::Config, 10);
    let mut srv = core.open(RlogShard::Config, None, 3, 2);
    let seen = pump(&mut srv, &mut rep, &mut rt, &mut Vec::new()).unwrap();
    assert_eq!(
        seen,
        vec![
            ToReplicant::BootstrapBegin { seq: 0, keys: 0 },
            ToReplicant::BootstrapEnd
        ]
    );
    assert_eq!(rep.state(), ShardState::Normal);
    assert!(!srv.is_bootstrapping());
}

#[test]
fn duplicates_are_ignored_and_gaps_detected() {
    let mut core = Core::new(16);
    let es: Vec<Entry> = (0..4)
        .map(|i| core.apply(radd(&format!("f{i}"), 1)))
        .collect();
    let mut rt = Tables::default();
    let mut rep = ReplicantShard::new(RlogShard::Route, 100);
    let mut srv = core.open(RlogShard::Route, Some(0), 8, 2);
    let mut ch = Vec::new();
    let mut out = Vec::new();
    pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    // A duplicated message is harmless.
    rep.on_message(
        ToReplicant::Entries(es[1..3].to_vec()),
        &mut rt,
        &mut ch,
        &mut out,
    )
    .unwrap();
    assert_eq!(rt, core.tables);
    // A gap ends the stream.
    let e5 = core.apply(radd("f4", 1));
    let e6 = core.apply(radd("f5", 1));
    let _ = e5;
    let err = rep
        .on_message(ToReplicant::Entries(vec![e6]), &mut rt, &mut ch, &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        RlogError::Gap {
            shard: RlogShard::Route,
            have: 4,
            got: 6
        }
    );
    assert_eq!(rep.state(), ShardState::Disconnected);
    // Anything but a handshake is refused now.
    assert!(rep
        .on_message(ToReplicant::Entries(vec![]), &mut rt, &mut ch, &mut out)
        .is_err());
    // Resume must echo the checkpoint.
    assert!(rep
        .on_message(ToReplicant::Resume { from: 3 }, &mut rt, &mut ch, &mut out)
        .is_err());
}

#[test]
fn reordered_or_duplicated_bootstrap_messages_are_detected() {
    let mut core = Core::new(2);
    for i in 0..10 {
        core.apply(radd(&format!("f{i}"), 1));
    }
    let mut srv = core.open(RlogShard::Route, None, 2, 8);
    let mut msgs = Vec::new();
    while let Some(m) = srv.poll_transmit() {
        msgs.push(m);
    }
    assert_eq!(msgs.len(), 7, "begin, 5 batches, end");
    let run = |order: &[usize]| -> Result<(), RlogError> {
        let mut rt = Tables::default();
        let mut rep = ReplicantShard::new(RlogShard::Route, 10);
        let mut out = Vec::new();
        for &i in order {
            rep.on_message(msgs[i].clone(), &mut rt, &mut Vec::new(), &mut out)?;
        }
        assert_eq!(rt, core.tables);
        Ok(())
    };
    run(&[0, 1, 2, 3, 4, 5, 6]).unwrap();
    assert!(run(&[0, 2, 1, 3, 4, 5, 6]).is_err(), "swapped batches");
    assert!(run(&[0, 1, 1, 2, 3, 4, 5, 6]).is_err(), "duplicated batch");
    assert!(run(&[0, 1, 2, 3, 4, 6]).is_err(), "lost batch");
    assert!(run(&[0, 0]).is_err(), "duplicated begin");
    assert!(run(&[1]).is_err(), "batch before begin");
}

#[test]
fn replay_overflow() {
    let mut core = Core::new(1);
    for i in 0..3 {
        core.apply(radd(&format!("f{i}"), 1));
    }
    let mut rt = Tables::default();
    let mut rep = ReplicantShard::new(RlogShard::Route, 2);
    let mut srv = core.open(RlogShard::Route, None, 1, 1);
    let m = srv.poll_transmit().unwrap();
    rep.on_message(m, &mut rt, &mut Vec::new(), &mut Vec::new())
        .unwrap();
    for i in 0..3 {
        srv.on_live(core.apply(radd(&format!("l{i}"), 1)));
    }
    for _ in 0..2 {
        let live = srv.poll_transmit().unwrap();
        rep.on_message(live, &mut rt, &mut Vec::new(), &mut Vec::new())
            .unwrap();
    }
    assert_eq!(rep.replay_queue_len(), 2);
    let live = srv.poll_transmit().unwrap();
    let err = rep
        .on_message(live, &mut rt, &mut Vec::new(), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err,
        RlogError::ReplayOverflow {
            shard: RlogShard::Route,
            replay_max: 2
        }
    );
    assert_eq!(rep.state(), ShardState::Disconnected);
    assert_eq!(rep.replay_queue_len(), 0);
}

#[test]
fn config_shard_snapshot() {
    let mut core = Core::new(4);
    core.apply(Op::MemberSet {
        node: 1,
        member: member(1),
    });
    core.apply(Op::ConfigSet {
        key: "a".into(),
        value: "1".into(),
    });
    core.apply(Op::MemberDel { node: 1 });
    core.apply(Op::MemberSet {
        node: 2,
        member: member(2),
    });
    core.apply(Op::ConfigSet {
        key: "a".into(),
        value: "2".into(),
    });
    let mut rt = Tables::default();
    let mut rep = ReplicantShard::new(RlogShard::Config, 10);
    let mut srv = core.open(RlogShard::Config, None, 1, 1);
    let mut ch = Vec::new();
    pump(&mut srv, &mut rep, &mut rt, &mut ch).unwrap();
    assert_eq!(rt, core.tables);
    assert_eq!(rt.config().get("a").map(String::as_str), Some("2"));
    assert_eq!(
        ch,
        vec![Change::MemberChanged {
            node: 2,
            member: Some(member(2))
        }]
    );
}

#[test]
fn messages_and_tables_round_trip_through_serde() {
    let mut core = Core::new(4);
    core.apply(radd("a/+", 1));
    core.apply(Op::MemberSet {
        node: 2,
        member: member(2),
    });
    core.apply(Op::SessionSet {
        client_id: "c".into(),
        node: 2,
    });
    let msgs = vec![
        ToReplicant::Resume { from: 3 },
        ToReplicant::BootstrapBegin { seq: 1, keys: 2 },
        ToReplicant::BootstrapBatch {
            batch: 1,
            ops: Op::purge_node(3),
        },
        ToReplicant::BootstrapEnd,
        ToReplicant::Entries(core.tails[0].since(0).unwrap()),
    ];
    let json = serde_json::to_string(&msgs).unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<ToReplicant>>(&json).unwrap(),
        msgs
    );
    let hello = ToCore::Hello {
        node: 1,
        shard: RlogShard::Retain,
        checkpoint: None,
    };
    let json = serde_json::to_string(&hello).unwrap();
    assert_eq!(serde_json::from_str::<ToCore>(&json).unwrap(), hello);
    let json = serde_json::to_string(&core.tables).unwrap();
    assert_eq!(serde_json::from_str::<Tables>(&json).unwrap(), core.tables);
}

#[test]
fn status_of_core_and_replicant() {
    use shardmq_rlog::status::ShardStatus;
    let mut core = Core::new(2);
    for i in 0..6 {
        core.apply(radd(&format!("f{i}"), 1));
    }
    let srv = core.open(RlogShard::Route, None, 2, 1);
    let st = ShardStatus::core(RlogShard::Route, &core.tables, [&srv]);
    assert_eq!(
        (st.state.as_str(), st.seq, st.replicants, st.pending),
        ("core", 6, 1, 6)
    );
    let mut rt = Tables::default();
    let mut rep = ReplicantShard::new(RlogShard::Route, 10);
    let m = ToReplicant::BootstrapBegin { seq: 6, keys: 6 };
    rep.on_message(m, &mut rt, &mut Vec::new(), &mut Vec::new())
        .unwrap();
    let st = ShardStatus::replicant(&rep, &rt, Some(1), 0);
    assert_eq!(
        (st.state.as_str(), st.seq, st.lag, st.bootstrap_keys),
        ("bootstrap", 0, 6, 6)
    );
}

#[test]
fn try_on_live_reports_a_jump() {
    let mut core = Core::new(4);
    let e1 = core.apply(radd("a", 1));
    let mut srv = core.open(RlogShard::Route, Some(1), 4, 1);
    assert_eq!(
        srv.try_on_live(e1),
        Ok(()),
        "an entry already seen is ignored"
    );
    let e2 = core.apply(radd("b", 1));
    let e3 = core.apply(radd("c", 1));
    assert_eq!(
        srv.try_on_live(e3),
        Err(RlogError::Gap {
            shard: RlogShard::Route,
            have: 1,
            got: 3
        })
    );
    assert_eq!(srv.try_on_live(e2), Ok(()));
    assert_eq!(srv.pending(), 1);
}

#[test]
fn a_share_weight_lives_with_its_route() {
    let w = |node, online| Op::ShareWeight {
        filter: "$share/g/t".into(),
        node,
        online,
    };
    let weight = |node, online| Change::ShareWeight {
        filter: "$share/g/t".into(),
        node,
        online,
    };
    let mut t = Tables::default();
    let mut ch = Vec::new();
    // Not routed: ignored.
    t.apply(w(1, 3), &mut ch);
    assert!(ch.is_empty() && t.share_weights("$share/g/t").is_none());
    t.apply(radd("$share/g/t", 1), &mut ch);
    t.apply(radd("$share/g/t", 2), &mut ch);
    ch.clear();
    t.apply(w(1, 3), &mut ch);
    t.apply(w(1, 3), &mut ch);
    t.apply(w(2, 1), &mut ch);
    assert_eq!(
        ch,
        vec![weight(1, 3), weight(2, 1)],
        "a repeated weight is no change"
    );
    // The weights travel in the route shard's snapshot, and a replaced shard reports them.
    let mut other = Tables::default();
    let mut got = Vec::new();
    other.replace_shard(t.snapshot_shard(RlogShard::Route), &mut got);
    assert!(other.shard_eq(&t, RlogShard::Route));
    assert_eq!(
        t.shard_digest(RlogShard::Route),
        other.shard_digest(RlogShard::Route)
    );
    assert!(got.contains(&weight(1, 3)) && got.contains(&weight(2, 1)));
    // A removed route takes its weight; a purge takes the node's.
    ch.clear();
    t.apply(
        Op::RouteDel {
            filter: "$share/g/t".into(),
            node: 1,
        },
        &mut ch,
    );
    t.apply(Op::RoutePurge { node: 2 }, &mut ch);
    assert!(t.share_weights("$share/g/t").is_none());
    t.apply(w(1, 2), &mut ch);
    assert!(
        t.all_share_weights().next().is_none(),
        "a stale weight after the route left"
    );
    // Weight 0 forgets.
    t.apply(radd("$share/g/t", 3), &mut ch);
    t.apply(w(3, 2), &mut ch);
    ch.clear();
    t.apply(w(3, 0), &mut ch);
    assert_eq!(ch, vec![weight(3, 0)]);
    assert!(t.share_weights("$share/g/t").is_none());
}
