//! Evacuation and rebalance: moving a node's clients to the other nodes at a bounded rate
//! (`shardmq ctl node evacuate`, `POST /api/v1/node/evacuate`; `shardmq ctl cluster
//! rebalance`, `POST /api/v1/cluster/rebalance`; docs/cluster.md, "Evacuation and rebalance").
//!
//! The logic is pure and takes time as an argument: [`Pacer`] (how many clients may go now),
//! [`Targets`] (which node each one goes to), [`plan_rebalance`] (who sends how many to whom).
//! [`Evacuation`] holds the state the API shows, and [`drive`] is the thin shell on the
//! control thread: every [`TICK`] it asks the shards ([`Request::Evacuate`]) to send away as
//! many clients as the pacer allows, each with the Server Reference of the next target, and,
//! when evacuating, to refuse new CONNECTs. A run lives in memory: an evacuation runs until
//! stopped or until the node restarts; a rebalance's part ends once its clients are sent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use shardmq_cluster::ClientNode;
use shardmq_codec::ByteStr;
use shardmq_shards::mgmt::{Reply, Request};
use shardmq_shards::Management;

/// Clients sent away per second when the caller gives no rate.
pub const RATE_DEFAULT: u32 = 500;

/// Highest rate accepted, clients per second.
pub const RATE_MAX: u32 = 100_000;

/// How often the evacuation sends a batch of clients away (and refreshes its targets).
pub const TICK: Duration = Duration::from_millis(100);

/// Most clients one shard is asked to send away in one step (the shards' bound).
pub const STEP_MAX: usize = shardmq_shards::mgmt::EVACUATE_STEP_MAX;

/// Most clients a rebalance's part may send to one node.
pub const SHED_MAX: u64 = 10_000_000;

// One tick's worth at the highest rate fits a step.
const _: () = assert!(RATE_MAX as u128 * TICK.as_millis() / 1000 <= STEP_MAX as u128);
const _: () = assert!(RATE_DEFAULT > 0 && RATE_DEFAULT <= RATE_MAX);

/// A token bucket for clients: `rate` a second, holding at most one [`TICK`]'s worth (at
/// least one client). Over any interval of `t` seconds it allows at most
/// `burst + rate × t` clients.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u32,
    /// Capacity, clients.
    burst: u64,
    /// Tokens in thousandths of a client.
    milli: u64,
    last: Instant,
}

impl Pacer {
    /// A full bucket at `now`; `rate` in `1..=RATE_MAX`.
    pub fn new(now: Instant, rate: u32) -> Pacer {
        assert!((1..=RATE_MAX).contains(&rate), "rate {rate} out of range");
        let burst = (u64::from(rate) * TICK.as_millis() as u64 / 1000).max(1);
        Pacer {
            rate,
            burst,
            milli: burst * 1000,
            last: now,
        }
    }

    /// Clients per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The bucket's capacity, clients.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Clients that may go at `now`.
    pub fn allowance(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        // rate clients/s = rate milli-clients/ms.
        let gained = elapsed.as_millis().saturating_mul(u128::from(self.rate));
        // Full is `burst` clients and the fraction towards the next: polls slower than the
        // rate lose nothing, and what is allowed at once stays at most `burst`.
        let cap = u128::from(self.burst) * 1000 + 999;
        self.milli = (u128::from(self.milli) + gained).min(cap) as u64;
        (self.milli / 1000) as usize
    }

    /// `n` clients went (at most the last [`allowance`](Self::allowance)).
    pub fn spend(&mut self, n: usize) {
        let cost = n as u64 * 1000;
        assert!(cost <= self.milli, "spent {n} clients, more than allowed");
        self.milli -= cost;
    }
}

/// Where clients are sent: the eligible nodes in id order, taken in turn (round robin), so
/// the evacuated clients spread evenly over the targets whatever their current load; with
/// quotas (a rebalance), a node whose quota is spent is skipped.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    nodes: Vec<(u64, ByteStr)>,
    next: usize,
}

impl Targets {
    /// The nodes clients may go to: running members other than `me`, not evacuating
    /// themselves, with a client address, and in `to` when given.
    pub fn eligible(nodes: &[ClientNode], me: u64, to: Option<&[u64]>) -> Vec<(u64, ByteStr)> {
        nodes
            .iter()
            .filter(|n| n.node != me && !n.evacuating && !n.address.is_empty())
            .filter(|n| to.is_none_or(|to| to.contains(&n.node)))
            .map(|n| (n.node, ByteStr::from(n.address.as_str())))
            .collect()
    }

    /// Replaces the nodes, keeping the turn on the node that had it when it is still there.
    pub fn refresh(&mut self, mut nodes: Vec<(u64, ByteStr)>) {
        nodes.sort_by_key(|(id, _)| *id);
        let due = self.nodes.get(self.next).map(|(id, _)| *id);
        self.next = due
            .and_then(|d| nodes.iter().position(|(id, _)| *id >= d))
            .unwrap_or(0);
        self.nodes = nodes;
    }

    /// No node to send clients to.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The ids of the nodes.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.iter().map(|(id, _)| *id)
    }

    /// The next `n` destinations, in turn, without taking them; with `left` (clients each
    /// node may still get), none beyond it.
    pub fn peek(&self, n: usize, left: Option<&BTreeMap<u64, u64>>) -> Vec<(u64, ByteStr)> {
        let mut left = left.cloned();
        let mut out = Vec::with_capacity(n.min(STEP_MAX));
        let len = self.nodes.len();
        let mut i = 0usize;
        let mut idle = 0usize;
        // `idle` counts nodes passed over in a row: once all of them, nobody can take more.
        while out.len() < n && idle < len {
            let (id, reference) = &self.nodes[(self.next + i) % len];
            i += 1;
            if let Some(left) = &mut left {
                match left.get_mut(id) {
                    Some(q) if *q > 0 => *q -= 1,
                    _ => {
                        idle += 1;
                        continue;
                    }
                }
            }
            idle = 0;
            out.push((*id, reference.clone()));
        }
        out
    }

    /// The destinations up to `last` (a node's id) were used: the turn goes to the node after
    /// it.
    pub fn advance_past(&mut self, last: u64) {
        if let Some(i) = self.nodes.iter().position(|(id, _)| *id == last) {
            self.next = (i + 1) % self.nodes.len();
        }
    }
}

/// A rebalance as planned from the nodes' connection counts ([`plan_rebalance`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebalancePlan {
    /// Connections per node if they were even.
    pub mean: f64,
    /// How far from the mean a node may be and count as even: `threshold` per cent of the
    /// mean, at least one connection.
    pub band: f64,
    /// Every node is within the band: nothing to move.
    pub even: bool,
    /// Clients to move: source node → (target node → count).
    pub moves: BTreeMap<u64, BTreeMap<u64, u64>>,
}

/// Default of `ctl cluster rebalance --threshold`: per cent of the mean.
pub const THRESHOLD_DEFAULT_PCT: u32 = 10;

/// Plans a rebalance of `nodes` (the nodes that take clients: with an address, not
/// evacuating): when some node is further from the mean than `threshold_pct` per cent of it
/// (and more than one connection), moves from the nodes above their fair share to those
/// below, largest first, so that afterwards every node is within one connection of the mean.
pub fn plan_rebalance(nodes: &[ClientNode], threshold_pct: u32) -> RebalancePlan {
    let nodes: Vec<&ClientNode> = nodes
        .iter()
        .filter(|n| !n.evacuating && !n.address.is_empty())
        .collect();
    let count = nodes.len() as u64;
    let total: u64 = nodes.iter().map(|n| n.connections).sum();
    let mean = if count == 0 {
        0.0
    } else {
        total as f64 / count as f64
    };
    let band = (mean * f64::from(threshold_pct) / 100.0).max(1.0);
    let even = nodes
        .iter()
        .all(|n| (n.connections as f64 - mean).abs() <= band);
    let mut moves: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    if even {
        return RebalancePlan {
            mean,
            band,
            even,
            moves,
        };
    }
    // Fair shares: the mean rounded down, one more for the `total % count` fullest nodes.
    let mut by_load = nodes.clone();
    by_load.sort_by_key(|n| (std::cmp::Reverse(n.connections), n.node));
    let (base, extra) = (total / count, (total % count) as usize);
    let mut sources = Vec::new();
    let mut targets = Vec::new();
    for (i, n) in by_load.iter().enumerate() {
        let share = base + u64::from(i < extra);
        if n.connections > share {
            sources.push((n.node, n.connections - share));
        } else if n.connections < share {
            targets.push((n.node, share - n.connections));
        }
    }
    targets.sort_by_key(|(id, deficit)| (std::cmp::Reverse(*deficit), *id));
    let mut t = 0;
    for (source, mut surplus) in sources {
        while surplus > 0 && t < targets.len() {
            let (target, deficit) = &mut targets[t];
            let n = surplus.min(*deficit);
            *moves.entry(source).or_default().entry(*target).or_default() += n;
            surplus -= n;
            *deficit -= n;
            if *deficit == 0 {
                t += 1;
            }
        }
    }
    RebalancePlan {
        mean,
        band,
        even,
        moves,
    }
}

/// What a run does: evacuate the node (refuse new clients, until stopped) or send a given
/// number of clients to given nodes (its part of a rebalance; new clients still welcome).
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Clients per second.
    pub rate: u32,
    /// Evacuation: the nodes clients may go to (`None`: any other).
    pub to: Option<Vec<u64>>,
    /// Rebalance: how many clients go to each node.
    pub shed: Option<BTreeMap<u64, u64>>,
}

impl Order {
    fn kind(&self) -> &'static str {
        if self.shed.is_some() {
            "rebalance"
        } else {
            "evacuate"
        }
    }
}

/// How an evacuation stands, as `GET /api/v1/node/evacuate` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// `evacuate` or `rebalance`.
    pub kind: &'static str,
    /// `evacuating` (clients left to send), `drained` (none left; new CONNECTs still
    /// refused), `no_target` (clients left, no node to send them to), `stopped`; a
    /// rebalance's part: `rebalancing`, then `done` (all sent, or no client left) or
    /// `expired` (not all could be sent within [`REBALANCE_SLACK`] of the time it needed).
    pub state: &'static str,
    /// Clients per second.
    pub rate: u32,
    /// The nodes asked for (`None`: any other node).
    pub to: Option<Vec<u64>>,
    /// A rebalance: the clients to send to each node.
    pub shed: Option<BTreeMap<u64, u64>>,
    /// When it started (RFC 3339).
    pub started: String,
    /// Milliseconds since it started (until it ended).
    pub elapsed_ms: u64,
    /// Clients sent away so far.
    pub sent: u64,
    /// Connections still open on this node at the last step.
    pub left: u64,
    /// Clients sent to each node, by id.
    pub sent_to: BTreeMap<u64, u64>,
    /// The nodes clients go to now, with their addresses.
    pub targets: Vec<TargetStatus>,
}

/// A rebalance's part on one node ends at the latest this long after the time its clients
/// needed at its rate (a target gone, clients that would not leave).
pub const REBALANCE_SLACK: Duration = Duration::from_secs(30);

/// One node clients are sent to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetStatus {
    /// Node id.
    pub node: u64,
    /// The Server Reference clients get.
    pub address: String,
    /// Its open connections, as its last ping said.
    pub connections: u64,
}

/// The node's evacuation: none, running or the last one stopped. Shared by the API and the
/// driver.
#[derive(Debug, Default)]
pub struct Evacuation {
    /// Set while an evacuation (not a rebalance) runs; the cluster's pings tell the other
    /// nodes (no clients for us).
    flag: Arc<AtomicBool>,
    /// Set while a run of either kind goes on.
    active: AtomicBool,
    /// Bumped by every start and stop: a driver whose run it is not ends.
    run: AtomicU64,
    status: Mutex<Option<(Instant, Status)>>,
    /// Clients sent away since the node started.
    evacuated_total: AtomicU64,
}

impl Evacuation {
    /// The flag the cluster's pings read.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Clients sent away since the node started.
    pub fn evacuated_total(&self) -> u64 {
        self.evacuated_total.load(Ordering::Relaxed)
    }

    /// Whether an evacuation (not a rebalance) runs.
    pub fn running(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Whether a run of either kind goes on.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The current or last run.
    pub fn status(&self) -> Option<Status> {
        let guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|(started, s)| {
            let mut s = s.clone();
            if self.active() {
                s.elapsed_ms = started.elapsed().as_millis() as u64;
            }
            s
        })
    }

    /// Changes the status of run `run`, unless another run (or a stop) came since.
    fn update(&self, run: u64, f: impl FnOnce(&mut Status)) {
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if !self.current(run) {
            return;
        }
        if let Some((_, s)) = guard.as_mut() {
            f(s);
        }
    }

    /// Starts (or restarts with new settings) and returns the run's number for [`drive`].
    pub fn begin(&self, now: Instant, order: &Order) -> u64 {
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let run = self.run.fetch_add(1, Ordering::SeqCst) + 1;
        self.flag.store(order.shed.is_none(), Ordering::SeqCst);
        self.active.store(true, Ordering::SeqCst);
        let status = Status {
            kind: order.kind(),
            state: if order.shed.is_some() {
                "rebalancing"
            } else {
                "evacuating"
            },
            rate: order.rate,
            to: order.to.clone(),
            shed: order.shed.clone(),
            started: shardmq_shards::rfc3339(SystemTime::now()),
            elapsed_ms: 0,
            sent: 0,
            left: 0,
            sent_to: BTreeMap::new(),
            targets: Vec::new(),
        };
        *guard = Some((now, status));
        run
    }

    /// Stops the run going on (only a rebalance's with `only_rebalance`); whether one was.
    pub fn end(&self, now: Instant, only_rebalance: bool) -> bool {
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let active = self.active();
        if !active || (only_rebalance && self.running()) {
            return false;
        }
        self.run.fetch_add(1, Ordering::SeqCst);
        self.flag.store(false, Ordering::SeqCst);
        self.active.store(false, Ordering::SeqCst);
        if let Some((started, s)) = guard.as_mut() {
            s.state = "stopped";
            s.elapsed_ms = now.saturating_duration_since(*started).as_millis() as u64;
        }
        true
    }

    /// Run `run` ended by itself (a rebalance's part done) in `state`.
    fn finish(&self, run: u64, now: Instant, state: &'static str) {
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if !self.current(run) {
            return;
        }
        self.run.fetch_add(1, Ordering::SeqCst);
        self.active.store(false, Ordering::SeqCst);
        if let Some((started, s)) = guard.as_mut() {
            s.state = state;
            s.elapsed_ms = now.saturating_duration_since(*started).as_millis() as u64;
        }
    }

    fn current(&self, run: u64) -> bool {
        self.run.load(Ordering::SeqCst) == run
    }
}

/// The cluster as the evacuation sees it: every running node with its clients.
pub type ClientNodes = Arc<dyn Fn() -> Vec<ClientNode> + Send + Sync>;

/// Runs `run` until it is stopped or replaced (or, a rebalance's part, done): every
/// [`TICK`], as many clients as the pacer allows are sent to the targets in turn, shard
/// after shard.
pub async fn drive(
    evacuation: Arc<Evacuation>,
    run: u64,
    management: Arc<Management>,
    nodes: ClientNodes,
    me: u64,
    order: Order,
) {
    let started = Instant::now();
    let mut pacer = Pacer::new(started, order.rate);
    let mut targets = Targets::default();
    let mut refuse_with: Option<ByteStr> = None;
    let rebalance = order.shed.is_some();
    let mut left_to_send = order.shed.clone();
    let deadline = order.shed.as_ref().map(|shed| {
        let clients: u64 = shed.values().sum();
        started + Duration::from_secs(clients / u64::from(order.rate) + 1) + REBALANCE_SLACK
    });
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(rate = order.rate, to = ?order.to, shed = ?order.shed, "evacuation run started");
    while evacuation.current(run) {
        interval.tick().await;
        if !evacuation.current(run) {
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            tracing::warn!(left = ?left_to_send, "rebalance part expired before every client was sent");
            evacuation.finish(run, now, "expired");
            break;
        }
        let cluster = nodes();
        let to: Option<Vec<u64>> = match &order.shed {
            Some(shed) => Some(shed.keys().copied().collect()),
            None => order.to.clone(),
        };
        targets.refresh(Targets::eligible(&cluster, me, to.as_deref()));
        let allowed = pacer.allowance(now);
        let planned = targets.peek(
            allowed.min(STEP_MAX * management.shards()),
            left_to_send.as_ref(),
        );
        if !rebalance {
            if let Some((_, first)) = targets.peek(1, None).into_iter().next() {
                refuse_with = Some(first);
            }
            if refuse_with.is_none() {
                // No node has ever been a target: nobody can be pointed anywhere yet.
                evacuation.update(run, |s| s.state = "no_target");
                continue;
            }
        }
        let (mut sent, mut left) = (0usize, 0u64);
        for shard in 0..management.shards() {
            let rest = &planned[sent.min(planned.len())..];
            let send: Vec<ByteStr> = rest.iter().take(STEP_MAX).map(|(_, r)| r.clone()).collect();
            let request = Request::Evacuate {
                refuse_with: refuse_with.clone(),
                send,
            };
            match management.ask(shard, request).await {
                Ok(Reply::Evacuated { sent: s, left: l }) => {
                    sent += s;
                    left += l as u64;
                }
                Ok(other) => {
                    tracing::error!(shard, ?other, "unexpected answer to an evacuation step")
                }
                Err(e) => tracing::debug!(shard, error = %e, "evacuation step skipped"),
            }
        }
        assert!(sent <= planned.len(), "shards sent away more than asked");
        pacer.spend(sent);
        if let Some((last, _)) = sent.checked_sub(1).map(|i| &planned[i]) {
            targets.advance_past(*last);
        }
        evacuation
            .evacuated_total
            .fetch_add(sent as u64, Ordering::Relaxed);
        let by_node: Vec<u64> = planned[..sent].iter().map(|(id, _)| *id).collect();
        if let Some(q) = &mut left_to_send {
            for id in &by_node {
                let n = q.get_mut(id).expect("sent only to nodes with a quota");
                *n = n.checked_sub(1).expect("sent only within the quota");
            }
        }
        let shown: Vec<TargetStatus> = cluster
            .iter()
            .filter(|n| targets.ids().any(|id| id == n.node))
            .map(|n| TargetStatus {
                node: n.node,
                address: n.address.clone(),
                connections: n.connections,
            })
            .collect();
        let no_target = targets.is_empty();
        evacuation.update(run, |s| {
            s.sent += sent as u64;
            s.left = left;
            for id in by_node {
                *s.sent_to.entry(id).or_default() += 1;
            }
            s.targets = shown;
            s.state = match (rebalance, left, no_target) {
                (true, ..) => "rebalancing",
                (false, 0, _) => "drained",
                (false, _, true) => "no_target",
                _ => "evacuating",
            };
        });
        let all_sent = left_to_send
            .as_ref()
            .is_some_and(|q| q.values().all(|&n| n == 0));
        if rebalance && (all_sent || left == 0) {
            evacuation.finish(run, Instant::now(), "done");
            break;
        }
    }
    if !evacuation.running() && !rebalance {
        // Stopped while a step was under way: that step may have set the refusal again.
        stop_shards(&management).await;
    }
    tracing::info!("evacuation run ended");
}

/// Ends the evacuation on every shard (CONNECTs accepted again).
pub async fn stop_shards(management: &Management) {
    for shard in 0..management.shards() {
        if let Err(e) = management.ask(shard, Request::EvacuateStop).await {
            tracing::warn!(shard, error = %e, "cannot tell a shard the evacuation stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, address: &str, evacuating: bool) -> ClientNode {
        ClientNode {
            node: id,
            address: address.into(),
            connections: 0,
            evacuating,
        }
    }

    #[test]
    fn the_pacer_allows_at_most_burst_plus_rate_times_elapsed() {
        let t0 = Instant::now();
        for rate in [1, 7, 100, 500, 2_345, RATE_MAX] {
            let mut p = Pacer::new(t0, rate);
            let mut sent = 0u64;
            let mut now = t0;
            // Greedy: take everything allowed at every step of irregular lengths.
            for step in 0..2_000u64 {
                now += Duration::from_millis(1 + step % 37);
                let n = p.allowance(now);
                p.spend(n);
                sent += n as u64;
                let elapsed_ms = now.duration_since(t0).as_millis() as u64;
                let bound = p.burst() + u64::from(rate) * elapsed_ms / 1000;
                assert!(
                    sent <= bound,
                    "rate {rate}: {sent} > {bound} after {elapsed_ms} ms"
                );
            }
            // And it does not starve: within one clients' worth of the bound.
            let elapsed_ms = now.duration_since(t0).as_millis() as u64;
            let ideal = u64::from(rate) * elapsed_ms / 1000;
            assert!(sent + 1 >= ideal, "rate {rate}: only {sent} of {ideal}");
        }
    }

    #[test]
    fn the_pacer_keeps_no_more_than_one_tick_when_idle() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 500);
        assert_eq!(p.burst(), 50);
        assert_eq!(p.allowance(t0), 50, "a full bucket to start with");
        p.spend(50);
        assert_eq!(p.allowance(t0), 0);
        assert_eq!(p.allowance(t0 + Duration::from_millis(10)), 5);
        assert_eq!(p.allowance(t0 + Duration::from_secs(3600)), 50, "capped");
        // Time going backwards gives nothing.
        assert_eq!(p.allowance(t0), 50);
        let mut slow = Pacer::new(t0, 1);
        assert_eq!(slow.burst(), 1);
        let n = slow.allowance(t0);
        slow.spend(n);
        assert_eq!(slow.allowance(t0 + Duration::from_millis(999)), 0);
        assert_eq!(slow.allowance(t0 + Duration::from_millis(1000)), 1);
    }

    #[test]
    #[should_panic(expected = "more than allowed")]
    fn spending_more_than_allowed_is_a_bug() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 10);
        let n = p.allowance(t0);
        p.spend(n + 1);
    }

    #[test]
    fn targets_are_the_other_running_nodes_taken_in_turn() {
        let cluster = [
            node(1, "a:1883", false),
            node(2, "b:1883", false),
            node(3, "c:1883", true),
            node(4, "", false),
            node(5, "e:1883", false),
        ];
        let eligible = Targets::eligible(&cluster, 1, None);
        let ids: Vec<u64> = eligible.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            [2, 5],
            "not me, not evacuating, not without an address"
        );
        let only = Targets::eligible(&cluster, 1, Some(&[5, 3]));
        assert_eq!(only, [(5, ByteStr::from("e:1883"))]);

        let mut t = Targets::default();
        assert!(t.peek(3, None).is_empty());
        t.refresh(eligible);
        let refs: Vec<String> = t.peek(5, None).iter().map(|(_, r)| r.to_string()).collect();
        assert_eq!(refs, ["b:1883", "e:1883", "b:1883", "e:1883", "b:1883"]);
        t.advance_past(2);
        assert_eq!(t.peek(1, None)[0].0, 5, "the turn moves past the last used");
        // Node 5 leaves, 6 comes: the turn goes to the next id after 5.
        t.refresh(vec![
            (6, ByteStr::from("f:1883")),
            (2, ByteStr::from("b:1883")),
        ]);
        let ids = |v: Vec<(u64, ByteStr)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(t.peek(2, None)), [6, 2]);
        // Quotas: 1 for node 2, 3 for node 6; no more than that however many are asked.
        let quotas: BTreeMap<u64, u64> = [(2, 1), (6, 3)].into();
        assert_eq!(ids(t.peek(10, Some(&quotas))), [6, 2, 6, 6]);
        let spent: BTreeMap<u64, u64> = [(2, 0), (6, 0)].into();
        assert!(t.peek(10, Some(&spent)).is_empty());
        t.refresh(Vec::new());
        assert!(t.is_empty());
        t.advance_past(6);
        assert!(t.peek(1, None).is_empty());
    }

    fn loads(counts: &[u64]) -> Vec<ClientNode> {
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| ClientNode {
                node: i as u64 + 1,
                address: format!("n{}:1883", i + 1),
                connections: c,
                evacuating: false,
            })
            .collect()
    }

    fn moves(plan: &RebalancePlan) -> Vec<(u64, u64, u64)> {
        plan.moves
            .iter()
            .flat_map(|(from, to)| to.iter().map(move |(to, n)| (*from, *to, *n)))
            .collect()
    }

    #[test]
    fn a_rebalance_moves_surplus_to_deficit_and_nothing_when_within_the_band() {
        let p = plan_rebalance(&loads(&[100, 0, 50]), 10);
        assert_eq!((p.mean, p.band, p.even), (50.0, 5.0, false));
        assert_eq!(moves(&p), [(1, 2, 50)]);
        let p = plan_rebalance(&loads(&[105, 100, 96]), 10);
        assert!(p.even && p.moves.is_empty(), "within 10 % of the mean");
        let p = plan_rebalance(&loads(&[2, 1, 1]), 10);
        assert!(p.even, "one connection off is even");
        let p = plan_rebalance(&loads(&[7, 0]), 0);
        assert_eq!(moves(&p), [(1, 2, 3)], "4 and 3 afterwards");
        let p = plan_rebalance(&loads(&[30, 30, 0, 0]), 10);
        assert_eq!(moves(&p), [(1, 3, 15), (2, 4, 15)]);
        // An evacuating node, or one without an address, takes part in nothing.
        let mut nodes = loads(&[10, 0, 90]);
        nodes[2].evacuating = true;
        assert_eq!(moves(&plan_rebalance(&nodes, 10)), [(1, 2, 5)]);
        assert!(plan_rebalance(&[], 10).even);
    }

    #[test]
    fn after_a_planned_rebalance_every_node_is_within_one_of_the_mean() {
        // A small deterministic generator: many shapes of load, 1 to 7 nodes.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 7 + 1) as usize;
            let counts: Vec<u64> = (0..n).map(|i| (x >> (i * 8)) % 200).collect();
            let nodes = loads(&counts);
            let plan = plan_rebalance(&nodes, 10);
            let mut after = counts.clone();
            for (from, to, k) in moves(&plan) {
                assert_ne!(from, to);
                after[from as usize - 1] -= k;
                after[to as usize - 1] += k;
            }
            assert_eq!(after.iter().sum::<u64>(), counts.iter().sum::<u64>());
            if plan.even {
                assert!(plan.moves.is_empty());
            } else {
                let (lo, hi) = (after.iter().min().unwrap(), after.iter().max().unwrap());
                assert!(hi - lo <= 1, "{counts:?} → {after:?}");
            }
        }
    }

    #[test]
    fn an_evacuation_shows_its_run_and_ends_once() {
        let e = Evacuation::default();
        let t0 = Instant::now();
        assert!(e.status().is_none());
        assert!(!e.end(t0, false), "nothing to stop");
        let order = |rate, shed: Option<BTreeMap<u64, u64>>| Order {
            rate,
            to: None,
            shed,
        };
        let run = e.begin(t0, &order(200, None));
        assert!(e.running() && e.flag().load(Ordering::Relaxed) && e.active());
        assert!(e.current(run));
        e.update(run, |s| s.sent = 3);
        assert!(
            !e.end(t0, true),
            "a rebalance stop leaves an evacuation alone"
        );
        let again = e.begin(t0, &order(300, None));
        assert!(
            !e.current(run) && e.current(again),
            "a new start replaces the run"
        );
        assert_eq!(e.status().unwrap().sent, 0);
        assert!(e.end(t0 + Duration::from_millis(1500), false));
        assert!(!e.current(again) && !e.running() && !e.active());
        let s = e.status().unwrap();
        assert_eq!((s.state, s.rate, s.elapsed_ms), ("stopped", 300, 1500));
        assert!(!e.end(t0, false), "stopped once");

        // A rebalance's part: active, not evacuating; it ends by itself.
        let part = e.begin(t0, &order(10, Some([(2, 5)].into())));
        assert!(e.active() && !e.running(), "new clients stay welcome");
        assert_eq!(e.status().unwrap().kind, "rebalance");
        e.finish(part, t0 + Duration::from_millis(700), "done");
        assert!(!e.active());
        let s = e.status().unwrap();
        assert_eq!((s.state, s.elapsed_ms), ("done", 700));
        e.finish(part, t0, "expired");
        assert_eq!(e.status().unwrap().state, "done", "finished once");
        let other = e.begin(t0, &order(10, Some([(2, 5)].into())));
        assert!(e.end(t0, true), "a rebalance stop ends a rebalance's part");
        assert!(!e.current(other));
    }
}
