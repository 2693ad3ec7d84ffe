//! Property: a replicant that joins at any point (fresh or with an old checkpoint), resumes or
//! bootstraps, then follows the live stream ends with the core's tables, and its changes
//! rebuild the core's route table.

mod common;
use common::RouteView;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shardmq_rlog::{
    Change, Entry, Member, NodeId, Op, ReplicantShard, RlogServer, RlogShard, Role, ShardState,
    ShardTail, Tables, ToCore, ToReplicant,
};

fn op_strategy() -> impl Strategy<Value = Op> {
    let filter = (0u8..6).prop_map(|i| format!("f/{i}/#"));
    let node = 1u64..5;
    let client = (0u8..6).prop_map(|i| format!("c{i}"));
    let topic = (0u8..5).prop_map(|i| format!("t/{i}"));
    prop_oneof![
        4 => (filter.clone(), node.clone()).prop_map(|(filter, node)| Op::RouteAdd { filter, node }),
        2 => (filter.clone(), node.clone()).prop_map(|(filter, node)| Op::RouteDel { filter, node }),
        3 => (filter, node.clone(), 0u32..3).prop_map(|(filter, node, online)| Op::ShareWeight { filter, node, online }),
        1 => node.clone().prop_map(|node| Op::RoutePurge { node }),
        2 => (client.clone(), node.clone()).prop_map(|(client_id, node)| Op::SessionSet { client_id, node }),
        1 => (client, node.clone()).prop_map(|(client_id, node)| Op::SessionDel { client_id, node }),
        1 => node.clone().prop_map(|node| Op::SessionPurge { node }),
        1 => (topic.clone(), node.clone()).prop_map(|(topic, node)| Op::RetainSet { topic, node }),
        1 => topic.prop_map(|topic| Op::RetainDel { topic }),
        1 => node.clone().prop_map(|node| Op::RetainPurge { node }),
        1 => (node.clone(), 0u8..2).prop_map(|(node, v)| Op::MemberSet {
            node,
            member: Member { addr: format!("n{node}:{v}"), role: Role::Core, api: String::new() },
        }),
        1 => node.prop_map(|node| Op::MemberDel { node }),
        1 => (0u8..3, 0u8..3).prop_map(|(k, v)| Op::ConfigSet { key: format!("k{k}"), value: format!("v{v}") }),
    ]
}

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
}

fn apply_route_changes(v: &mut RouteView, changes: &mut Vec<Change>) {
    for c in changes.drain(..) {
        v.apply(c);
    }
}

/// Sends up to `n` messages of `srv` to `rep`, acks back.
fn deliver(
    srv: &mut RlogServer,
    rep: &mut ReplicantShard,
    t: &mut Tables,
    ch: &mut Vec<Change>,
    n: u64,
) {
    for _ in 0..n {
        let Some(m) = srv.poll_transmit() else { return };
        let mut out = Vec::new();
        rep.on_message(m, t, ch, &mut out)
            .expect("a clean stream never fails");
        for a in out {
            if let ToCore::BootstrapAck { batch } = a {
                srv.on_ack(batch);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn replicant_converges(
        ops in prop::collection::vec(op_strategy(), 0..160),
        join in 0.0f64..1.0,
        had in 0.0f64..1.0,
        cap in 0usize..24,
        batch_max in 1usize..6,
        window in 1usize..4,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let k = (ops.len() as f64 * join) as usize;
        let j = (k as f64 * had) as usize;
        let mut core = Tables::default();
        let mut tails: Vec<ShardTail> = RlogShard::ALL.iter().map(|&s| ShardTail::new(s, cap)).collect();
        let mut rt = Tables::default();
        let mut routes = RouteView::default();
        let mut ch = Vec::new();
        for (i, op) in ops[..k].iter().enumerate() {
            let e = core.apply(op.clone(), &mut Vec::new());
            tails[e.shard.index()].push(e.clone());
            if i < j {
                prop_assert!(rt.apply_entry(&e, &mut ch).unwrap());
            }
        }
        apply_route_changes(&mut routes, &mut ch);
        let fresh = j == 0;
        let mut reps: Vec<ReplicantShard> = RlogShard::ALL.iter().map(|&s| ReplicantShard::new(s, 1000)).collect();
        let mut srvs: Vec<RlogServer> = RlogShard::ALL.iter().map(|&s| {
            let ToCore::Hello { checkpoint, .. } = reps[s.index()].hello(1, &rt, fresh) else { unreachable!() };
            RlogServer::open(checkpoint, &core, &tails[s.index()], s, batch_max, window)
        }).collect();
        for op in &ops[k..] {
            let e = core.apply(op.clone(), &mut Vec::new());
            tails[e.shard.index()].push(e.clone());
            srvs[e.shard.index()].on_live(e);
            for s in 0..RlogShard::COUNT {
                let n = rng.below(4);
                deliver(&mut srvs[s], &mut reps[s], &mut rt, &mut ch, n);
            }
            apply_route_changes(&mut routes, &mut ch);
        }
        for s in 0..RlogShard::COUNT {
            deliver(&mut srvs[s], &mut reps[s], &mut rt, &mut ch, u64::MAX);
            prop_assert!(!srvs[s].is_bootstrapping());
            prop_assert_eq!(srvs[s].pending(), 0);
            prop_assert!(rt.shard_eq(&core, RlogShard::ALL[s]), "shard {:?} differs", RlogShard::ALL[s]);
        }
        apply_route_changes(&mut routes, &mut ch);
        prop_assert_eq!(&rt, &core);
        let want: BTreeSet<(String, NodeId)> = core
            .routes()
            .flat_map(|(f, ns)| ns.iter().map(move |&n| (f.to_string(), n)))
            .collect();
        prop_assert_eq!(routes.routes, want);
        let want: BTreeMap<(String, NodeId), u32> = core
            .all_share_weights()
            .map(|(f, n, w)| ((f.to_string(), n), w))
            .collect();
        prop_assert_eq!(routes.weights, want);
    }
}

fn msg_strategy() -> impl Strategy<Value = ToReplicant> {
    let seq = prop_oneof![0u64..8, Just(u64::MAX), Just(u64::MAX - 1)];
    let entry = (0usize..4, seq.clone(), op_strategy()).prop_map(|(s, seq, op)| Entry {
        shard: RlogShard::ALL[s],
        seq,
        op,
    });
    prop_oneof![
        seq.clone().prop_map(|from| ToReplicant::Resume { from }),
        (seq.clone(), seq.clone())
            .prop_map(|(seq, keys)| ToReplicant::BootstrapBegin { seq, keys }),
        (seq, prop::collection::vec(op_strategy(), 0..4))
            .prop_map(|(batch, ops)| ToReplicant::BootstrapBatch { batch, ops }),
        Just(ToReplicant::BootstrapEnd),
        prop::collection::vec(entry, 0..4).prop_map(ToReplicant::Entries),
    ]
}

proptest! {
    /// Whatever a broken or hostile core sends, the replicant does not panic, leaves the
    /// other shards alone, and is `Disconnected` after an error.
    #[test]
    fn replicant_survives_any_message_sequence(
        shard in 0usize..4,
        msgs in prop::collection::vec(msg_strategy(), 0..24),
    ) {
        let shard = RlogShard::ALL[shard];
        let mut rep = ReplicantShard::new(shard, 4);
        let mut t = Tables::default();
        for m in msgs {
            let before = t.clone();
            let r = rep.on_message(m, &mut t, &mut Vec::new(), &mut Vec::new());
            if r.is_err() {
                prop_assert_eq!(rep.state(), ShardState::Disconnected);
            }
            for other in RlogShard::ALL {
                if other != shard {
                    prop_assert!(t.shard_eq(&before, other), "another shard changed");
                }
            }
        }
    }
}
