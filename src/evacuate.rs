//! Evacuation: moving a node's clients to the other nodes at a bounded rate
//! (`shardmq ctl node evacuate`, `POST /api/v1/node/evacuate`; docs/cluster.md, "Evacuation
//! and rebalance").
//!
//! The logic is pure and takes time as an argument: [`Pacer`] (how many clients may go now),
//! [`Targets`] (which node each one goes to). [`Evacuation`] holds the state the API shows,
//! and [`drive`] is the thin shell on the control thread: every [`TICK`] it asks the shards
//! ([`Request::Evacuate`]) to send away as many clients as the pacer allows, each with the
//! Server Reference of the next target, and to refuse new CONNECTs. The evacuation lives in
//! memory: it runs until stopped or until the node restarts.

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

/// Most clients one shard is asked to send away in one step: a step's walk of the shard's
/// connections stays short even at [`RATE_MAX`].
pub const STEP_MAX: usize = 10_000;

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
/// the evacuated clients spread evenly over the targets whatever their current load.
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

    /// The next `n` destinations, in turn, without taking them.
    pub fn peek(&self, n: usize) -> Vec<(u64, ByteStr)> {
        if self.nodes.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|i| self.nodes[(self.next + i) % self.nodes.len()].clone())
            .collect()
    }

    /// `n` destinations were used.
    pub fn advance(&mut self, n: usize) {
        if !self.nodes.is_empty() {
            self.next = (self.next + n) % self.nodes.len();
        }
    }
}

/// How an evacuation stands, as `GET /api/v1/node/evacuate` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// `evacuating` (clients left to send), `drained` (none left; new CONNECTs still
    /// refused), `no_target` (clients left, no node to send them to), `stopped`.
    pub state: &'static str,
    /// Clients per second.
    pub rate: u32,
    /// The nodes asked for (`None`: any other node).
    pub to: Option<Vec<u64>>,
    /// When it started (RFC 3339).
    pub started: String,
    /// Milliseconds since it started.
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
    /// Set while it runs; the cluster's pings tell the other nodes (no clients for us).
    flag: Arc<AtomicBool>,
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

    /// Whether an evacuation runs.
    pub fn running(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The current or last evacuation.
    pub fn status(&self) -> Option<Status> {
        let guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|(started, s)| {
            let mut s = s.clone();
            if s.state != "stopped" {
                s.elapsed_ms = started.elapsed().as_millis() as u64;
            }
            s
        })
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = guard.as_mut() {
            f(s);
        }
    }

    /// Starts (or restarts with new settings) and returns the run's number for [`drive`].
    pub fn begin(&self, now: Instant, rate: u32, to: Option<Vec<u64>>) -> u64 {
        let run = self.run.fetch_add(1, Ordering::SeqCst) + 1;
        self.flag.store(true, Ordering::SeqCst);
        let status = Status {
            state: "evacuating",
            rate,
            to,
            started: shardmq_shards::rfc3339(SystemTime::now()),
            elapsed_ms: 0,
            sent: 0,
            left: 0,
            sent_to: BTreeMap::new(),
            targets: Vec::new(),
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, status));
        run
    }

    /// Stops the running evacuation; whether one ran.
    pub fn end(&self, now: Instant) -> bool {
        self.run.fetch_add(1, Ordering::SeqCst);
        let was = self.flag.swap(false, Ordering::SeqCst);
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((started, s)) = guard.as_mut().filter(|_| was) {
            s.state = "stopped";
            s.elapsed_ms = now.saturating_duration_since(*started).as_millis() as u64;
        }
        was
    }

    fn current(&self, run: u64) -> bool {
        self.run.load(Ordering::SeqCst) == run
    }
}

/// The cluster as the evacuation sees it: every running node with its clients.
pub type ClientNodes = Arc<dyn Fn() -> Vec<ClientNode> + Send + Sync>;

/// Runs evacuation `run` until it is stopped or replaced: every [`TICK`], as many clients as
/// the pacer allows are sent to the targets in turn, shard after shard.
pub async fn drive(
    evacuation: Arc<Evacuation>,
    run: u64,
    management: Arc<Management>,
    nodes: ClientNodes,
    me: u64,
    rate: u32,
    to: Option<Vec<u64>>,
) {
    let mut pacer = Pacer::new(Instant::now(), rate);
    let mut targets = Targets::default();
    let mut refuse_with: Option<ByteStr> = None;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(rate, ?to, "evacuation started");
    while evacuation.current(run) {
        interval.tick().await;
        if !evacuation.current(run) {
            break;
        }
        let cluster = nodes();
        targets.refresh(Targets::eligible(&cluster, me, to.as_deref()));
        let allowed = pacer.allowance(Instant::now());
        let planned = targets.peek(allowed.min(STEP_MAX * management.shards()));
        if let Some((_, first)) = targets.peek(1).into_iter().next() {
            refuse_with = Some(first);
        }
        let Some(refusal) = refuse_with.clone() else {
            // No node has ever been a target: nobody can be pointed anywhere yet.
            evacuation.update(|s| s.state = "no_target");
            continue;
        };
        let (mut sent, mut left) = (0usize, 0u64);
        for shard in 0..management.shards() {
            let rest = &planned[sent.min(planned.len())..];
            let send: Vec<ByteStr> = rest.iter().take(STEP_MAX).map(|(_, r)| r.clone()).collect();
            let request = Request::Evacuate {
                refuse_with: refusal.clone(),
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
        targets.advance(sent);
        evacuation
            .evacuated_total
            .fetch_add(sent as u64, Ordering::Relaxed);
        let by_node: Vec<u64> = planned[..sent].iter().map(|(id, _)| *id).collect();
        let shown: Vec<TargetStatus> = cluster
            .iter()
            .filter(|n| targets.nodes.iter().any(|(id, _)| *id == n.node))
            .map(|n| TargetStatus {
                node: n.node,
                address: n.address.clone(),
                connections: n.connections,
            })
            .collect();
        let no_target = targets.is_empty();
        evacuation.update(|s| {
            s.sent += sent as u64;
            s.left = left;
            for id in by_node {
                *s.sent_to.entry(id).or_default() += 1;
            }
            s.targets = shown;
            s.state = match (left, no_target) {
                (0, _) => "drained",
                (_, true) => "no_target",
                _ => "evacuating",
            };
        });
    }
    if !evacuation.running() {
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
        assert!(t.peek(3).is_empty());
        t.refresh(eligible);
        let refs: Vec<String> = t.peek(5).iter().map(|(_, r)| r.to_string()).collect();
        assert_eq!(refs, ["b:1883", "e:1883", "b:1883", "e:1883", "b:1883"]);
        t.advance(3);
        assert_eq!(t.peek(1)[0].0, 5, "the turn moves by what was used");
        // Node 5 leaves, 6 comes: the turn goes to the next id after 5.
        t.refresh(vec![
            (6, ByteStr::from("f:1883")),
            (2, ByteStr::from("b:1883")),
        ]);
        assert_eq!(
            t.peek(2).iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [6, 2]
        );
        t.refresh(Vec::new());
        assert!(t.is_empty());
        t.advance(4);
        assert!(t.peek(1).is_empty());
    }

    #[test]
    fn an_evacuation_shows_its_run_and_ends_once() {
        let e = Evacuation::default();
        let t0 = Instant::now();
        assert!(e.status().is_none());
        assert!(!e.end(t0), "nothing to stop");
        let run = e.begin(t0, 200, Some(vec![2]));
        assert!(e.running() && e.flag().load(Ordering::Relaxed));
        assert!(e.current(run));
        e.update(|s| s.sent = 3);
        let again = e.begin(t0, 300, None);
        assert!(
            !e.current(run) && e.current(again),
            "a new start replaces the run"
        );
        assert_eq!(e.status().unwrap().sent, 0);
        assert!(e.end(t0 + Duration::from_millis(1500)));
        assert!(!e.current(again) && !e.running());
        let s = e.status().unwrap();
        assert_eq!((s.state, s.rate, s.elapsed_ms), ("stopped", 300, 1500));
        assert!(!e.end(t0), "stopped once");
    }
}
