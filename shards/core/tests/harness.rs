//! The in-memory harness: N `ShardCore`s (2..=4) and M MQTT clients (2..=8) driven from one
//! seed, with no thread, socket or clock: the mesh between shards delivers batches FIFO per
//! pair in any interleaving across pairs, connections carry encoded MQTT both ways, time is
//! virtual. Clients (MQTT 5.0 and 3.1.1) connect, reconnect with Clean Start 0 to another
//! shard (a takeover across shards), race two CONNECTs of one client id on two shards,
//! subscribe and unsubscribe (plain and `$share/...` filters), publish at QoS 0/1/2 with unique
//! payloads, acknowledge as a real client does (PUBACK; PUBREC → PUBREL → PUBCOMP; resends
//! after reconnect) and disconnect, gracefully or not.
//!
//! Each property is its own test (`sim::Property`); all of them read one pass over the seeds.
//! A property that a known core bug breaks on the default seeds is `#[ignore]`d, with the bug,
//! a seed and the steps that show it in a comment; bugs that only rarer seeds hit have their
//! own ignored `known_bug_*` test replaying that seed (the seeds are those of this version of
//! the harness: changing what it draws changes every run).
//!
//! - `SHARD_SEED=n` replays seed `n` alone, with its whole step log on failure;
//! - `SHARD_SEEDS=k` runs seeds `0..k` (default 1000).
//!
//! A failure names the property, the seed, how to replay it, and the end of its step log.

/// Logs a line; its arguments are formatted only when the world keeps a log.
macro_rules! note {
    ($w:expr, $($arg:tt)*) => {
        if $w.log.is_some() {
            let line = format!($($arg)*);
            $w.push_log(line);
        }
    };
}

/// Records a violation of a property; its arguments are formatted only when it is kept.
macro_rules! violate {
    ($w:expr, $p:expr, $($arg:tt)*) => {
        if $w.wants($p) {
            let what = format!($($arg)*);
            $w.record($p, what);
        }
    };
}

#[path = "harness/check.rs"]
mod check;
#[path = "harness/rng.rs"]
mod rng;
#[path = "harness/sim.rs"]
mod sim;

use sim::{Property, Stats, World};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Seeds of a plain `cargo test`.
const SEEDS_DEFAULT: u64 = 1000;
/// Lines of the step log a failure prints (all of them when one seed is replayed).
const LOG_TAIL_LINES: usize = 400;
/// Failing seeds listed per property in the summary.
const FAILURES_LISTED: usize = 8;

/// Per property, the failing seeds with their first violation.
type Failures = BTreeMap<Property, Vec<(u64, String)>>;

/// What one pass over the seeds found.
struct Summary {
    seeds: u64,
    /// Per property: the failing seeds (ascending) with their first violation.
    failures: Failures,
    stats: Stats,
    elapsed: Duration,
}

static SUMMARY: OnceLock<Summary> = OnceLock::new();

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// The seeds to run: `SHARD_SEED` alone, or `0..SHARD_SEEDS`.
fn seeds() -> (u64, u64) {
    match env_u64("SHARD_SEED") {
        Some(seed) => (seed, seed + 1),
        None => (0, env_u64("SHARD_SEEDS").unwrap_or(SEEDS_DEFAULT)),
    }
}

/// Runs every seed once, on every CPU, and keeps what each property's test needs.
fn summary() -> &'static Summary {
    SUMMARY.get_or_init(|| {
        let (first, end) = seeds();
        if end - first == 1 {
            eprintln!("harness: seed {first}");
        }
        let started = Instant::now();
        let next = AtomicU64::new(first);
        let found: Mutex<(Failures, Stats)> = Mutex::new((BTreeMap::new(), Stats::default()));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut stats = Stats::default();
                    let mut failures = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= end {
                            break;
                        }
                        let mut world = World::new(seed, false);
                        world.run();
                        stats.add(&world.stats);
                        for (p, (_, what)) in world.violations {
                            failures.push((p, seed, what));
                        }
                    }
                    let mut found = found.lock().expect("no thread panics holding it");
                    found.1.add(&stats);
                    for (p, seed, what) in failures {
                        found.0.entry(p).or_default().push((seed, what));
                    }
                });
            }
        });
        let (by_property, stats) = found.into_inner().expect("no thread panicked");
        let elapsed = started.elapsed();
        let mut failures = by_property;
        for v in failures.values_mut() {
            v.sort_by_key(|&(seed, _)| seed);
        }
        let seeds = end - first;
        let s = Summary {
            seeds,
            failures,
            stats,
            elapsed,
        };
        report(&s);
        s
    })
}

/// One line on what the pass did (the bench script reads `seeds/s`), one on what it checked.
fn report(s: &Summary) {
    let secs = s.elapsed.as_secs_f64();
    let st = &s.stats;
    eprintln!(
        "harness: {} seeds in {secs:.2} s ({:.0} seeds/s): {} events, {} client actions, {} connects, {} moves, {} races, {} publishes, {} deliveries, {} quiet points",
        s.seeds,
        s.seeds as f64 / secs.max(1e-9),
        st.events,
        st.actions,
        st.connects,
        st.moves,
        st.races,
        st.publishes,
        st.deliveries,
        st.quiet_points
    );
    let checked: Vec<String> = Property::ALL
        .iter()
        .map(|&p| format!("{p:?} {}", st.checked[p as usize]))
        .collect();
    eprintln!("harness: expectations checked: {}", checked.join(", "));
    for (p, failing) in &s.failures {
        eprintln!(
            "harness: {p:?} fails on {} of {} seeds",
            failing.len(),
            s.seeds
        );
        for (seed, what) in failing.iter().take(FAILURES_LISTED) {
            eprintln!("harness:   seed {seed}: {what}");
        }
    }
}

/// The test of property `p`: fails with the first failing seed, replayed with its step log.
fn check(p: Property) {
    let s = summary();
    let Some(failing) = s.failures.get(&p) else {
        return;
    };
    let (seed, first) = &failing[0];
    let header = format!(
        "property {p:?} fails on {} of {} seeds; seed {seed}: {first}",
        failing.len(),
        s.seeds
    );
    replay(*seed, p, header, s.seeds == 1);
}

/// Runs `seed` with its step log; panics with it (all of it if `whole`, else its end) if
/// property `p` fails there.
fn replay(seed: u64, p: Property, header: String, whole: bool) {
    let mut world = World::new(seed, true);
    world.run();
    let Some((step, what)) = world.violations.get(&p) else {
        assert!(
            header.is_empty(),
            "{header}\nthe replay did not fail: the harness is not deterministic"
        );
        return;
    };
    let log = world.log.take().unwrap_or_default();
    let from = if whole {
        0
    } else {
        log.len().saturating_sub(LOG_TAIL_LINES)
    };
    panic!(
        "{header}\n\
         property {p:?} fails on seed {seed} at step {step}: {what}\n\
         replay: SHARD_SEED={seed} cargo test -p shardmq-core --test harness\n\
         step log{}:\n{}",
        if from > 0 {
            format!(" (last {} of {} lines)", log.len() - from, log.len())
        } else {
            String::new()
        },
        log[from..].join("\n")
    );
}

#[test]
fn settles_without_livelock() {
    check(Property::Progress);
}

#[test]
fn clients_see_a_well_formed_conversation() {
    check(Property::Conversation);
}

/// Passes on the default seeds; over 100,000 seeds it fails on 12, through a superseded
/// deferred takeover that loses the session (`known_bug_superseded_takeover_loses_the_session`).
#[test]
fn p1_at_most_one_session_per_client_id_where_the_registry_says() {
    check(Property::OneSession);
}

/// Crossing claims resolve: every claim is answered and a race leaves one connection. (Found
/// by this harness, fixed: a holder deferred every takeover while a claim of its own was in
/// flight, so two shards claiming one client id each waited for the other; now `Takeover`
/// names the registration it replaces and only a takeover of a claim still in flight waits.
/// Seed 1 deadlocked.)
#[test]
fn p1_takeover_races_resolve_with_every_claim_answered() {
    check(Property::RaceResolves);
}

/// No SUBACK (or CONNACK of a resumed session) before every replica routes its filters.
/// (Found by this harness, fixed: a SUBACK waited only for filters new on the subscriber's
/// shard, so a second subscriber of a filter whose first RouteAdd was still in flight got its
/// SUBACK at once; now a filter whose last announcement is not settled everywhere
/// (`route_fresh` above `route_settled`) is announced again and waited for. Seeds 61, 5603,
/// 23501.)
#[test]
fn p2_no_suback_before_every_replica_routes_the_filter() {
    check(Property::SubackAfterRoutes);
}

/// Passes on 20,000 seeds (it failed on 23 of 100,000 through the two bugs property 2 and
/// `superseded_takeover_keeps_the_session` now guard).
#[test]
fn p3_publish_after_suback_reaches_a_connected_subscriber() {
    check(Property::DeliveredWhileConnected);
}

/// Passes on 100,000 seeds. It failed on 3,040 of 20,000 before the move protocol of
/// `shard/moves.rs`: a takeover tore the session's routes down on the old shard (`RouteDel`)
/// before the new shard announced them, so a publish routed between the two, or one that
/// reached the old shard after the session left, found no subscriber. (Seed 10 of that version:
/// m12, QoS 1, routed by core 1 between RouteDel(t/# shard 0) and RouteAdd(t/# shard 0).) A
/// takeover within one shard had the same gap (its RouteDel and RouteAdd reach the other shards
/// as two messages): its routes are held too now.
#[test]
fn p3_p5_qos1_qos2_after_suback_reach_a_persistent_session_through_takeovers() {
    check(Property::DeliveredAfterReconnect);
}

#[test]
fn p4_shared_group_message_goes_to_exactly_one_member() {
    check(Property::SharedOnce);
}

/// Passes on 20,000 seeds (it failed on 8 of 100,000 through the superseded takeover, fixed).
#[test]
fn p5_persistent_sessions_kept_through_takeovers() {
    check(Property::SessionKept);
}

/// Passes on 100,000 seeds. It failed on 14 of 20,000 before the move protocol: a publish went
/// to both the old and the new shard of a moving session, which got it on each (two packet
/// ids). The new shard now skips its copy of what the old shard delivered before the session
/// left (`Stamp` numbers), and the old shard's forwarded copies of what the new one had itself.
#[test]
fn p5_qos2_exactly_once_through_takeovers() {
    check(Property::ExactlyOnce);
}

// Seeds of core bugs this harness found: the fixed ones replay as regression tests, the open
// ones are ignored.

/// Regression (fixed with the crossing-takeover bug: deferral now waits only for the claim a
/// takeover replaces). It was: a superseded deferred takeover lost the session; the shard
/// holding a client's
/// session defers a takeover T1 while its own claim C for the client is in flight; a newer
/// takeover T2 replaced T1 (`registry.rs`, `takeover`: then a Superseded to T1's claimer), so the
/// session is never handed to T1's claimer, which then answers C with `Handoff(None)`; the
/// holder's `handoff` installs a fresh session over the one it holds (`by_client` is
/// overwritten, the old slot stays in the slab, its subscriptions in the trie). The client's
/// persistent session is lost (CONNACK Session Present 0, subscriptions and queue gone) and a
/// second, unreachable session of the same client id stays. Seed 10327 (8 of 100,000 seeds for
/// Session Present, 12 for two sessions): c0's session is offline on core 2; claims from core
/// 1, core 2 and core 0 cross; core 2 defers Takeover(to 1) (step 118), replaces it by
/// Takeover(to 0) (124), gets Handoff(none) for its own claim (131) and CONNACKs without the
/// session, which stays on core 2 next to the one core 0 then gets.
#[test]
fn superseded_takeover_keeps_the_session() {
    replay(10327, Property::SessionKept, String::new(), false);
    replay(9484, Property::OneSession, String::new(), false);
}

/// Regression of the move protocol (`shard/moves.rs`), a seed of this version of the harness:
/// in 65408 c3's session moves from core 2 to core 1, gets m54 (QoS 2) there forwarded from
/// core 2, and moves on to core 0, where core 2's own copy of m54 arrives late; core 0 delivered
/// it again until the acknowledgements of a move carried their sender's last publish number
/// (`handled_upto`). Found with earlier versions and fixed: a takeover within one shard lost
/// publishes between its RouteDel and RouteAdd; a takeover deferred on a claim that another
/// takeover superseded waited forever (deferrals are keyed by the claim they wait for now).
#[test]
fn a_session_moving_twice_gets_a_late_copy_once() {
    replay(65408, Property::ExactlyOnce, String::new(), false);
    replay(
        65408,
        Property::DeliveredAfterReconnect,
        String::new(),
        false,
    );
}

/// The harness itself: a seed replays the same run.
#[test]
fn a_seed_replays_the_same_run() {
    let (first, _) = seeds();
    let mut a = World::new(first, true);
    a.run();
    let mut b = World::new(first, true);
    b.run();
    assert_eq!(a.log, b.log, "seed {first} ran twice differently");
    assert_eq!(a.stats.events, b.stats.events);
}
