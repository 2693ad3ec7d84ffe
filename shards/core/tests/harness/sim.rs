//! The simulated node: N [`ShardCore`]s, the mesh between them (FIFO per pair of shards, any
//! interleaving across pairs), the connections (FIFO each way), a virtual clock, and M MQTT
//! clients at the other end of the connections, all stepped from one seed.
//!
//! The shell's part is played as the runtime plays it: after every input the core's outputs
//! are drained (batches into the mesh, each listed connection's `out` decoded into what its
//! client will read); a connection is read only while its phase reads, and closed (then
//! `conn_closed`) once the core says `Closing` or the client went away.

use crate::rng::Rng;
use bytes::{Bytes, BytesMut};
use shardmq_broker::shared::SharedStrategy;
use shardmq_broker::Limits;
use shardmq_codec::{
    encode, Ack, ByteStr, Connect, ConnectProperties, Decoder, Disconnect, Packet, Protocol,
    Publish, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, Unsubscribe,
};
use shardmq_core::{ConnKey, CoreSettings, ListenerKind, Phase, ShardCore, ShardMsg};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Fewest and most shards of a run.
pub const SHARDS_MIN: usize = 2;
pub const SHARDS_MAX: usize = 4;
/// Fewest and most clients of a run.
pub const CLIENTS_MIN: usize = 2;
pub const CLIENTS_MAX: usize = 8;
/// Fewest and most client actions of a run.
const ACTIONS_MIN: usize = 30;
const ACTIONS_MAX: usize = 90;
/// Most events (mesh batches, packets, closes) run between two client actions.
const EVENTS_PER_ACTION_MAX: usize = 6;
/// Most events one settle may take before the run counts as a livelock.
pub const SETTLE_EVENTS_MAX: usize = 20_000;
/// Session Expiry Interval of persistent clients. The virtual clock never gets near it (see
/// `TIME_STEP_MAX_MS`), so no session of theirs expires.
const SESSION_EXPIRY_SECS: u32 = 3600;
/// Most virtual time one step of the clock advances.
const TIME_STEP_MAX_MS: u64 = 500;
/// Largest packet either side accepts.
const PACKET_SIZE_MAX: u32 = 1 << 20;
/// The connect timeout: longer than any run, so it never fires.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

const _: () = assert!(
    (ACTIONS_MAX as u64 + 2) * TIME_STEP_MAX_MS < SESSION_EXPIRY_SECS as u64 * 1000 / 2,
    "a run's virtual time stays far below the session expiry"
);

/// The filters clients subscribe to. Plain ones cover the `t/...` topics, each shared group
/// its own topics: a message is for the plain subscribers or for one group, never both.
pub const FILTERS: [&str; 7] = [
    "t/a",
    "t/b",
    "t/+",
    "t/#",
    "t/c/+",
    "$share/g1/s1/+",
    "$share/g2/s2/#",
];
/// The topics clients publish to.
pub const TOPICS: [&str; 8] = [
    "t/a", "t/b", "t/c/d", "t/c/e", "s1/a", "s1/b", "s2/x", "s2/y/z",
];
/// Shared groups: (index of its filter in `FILTERS`).
pub const GROUPS: [usize; 2] = [5, 6];

/// The group a filter belongs to, if it is shared.
pub fn group_of_filter(f: usize) -> Option<usize> {
    GROUPS.iter().position(|&g| g == f)
}

/// The group whose filter matches `topic`, if any (at most one, by construction).
pub fn group_of_topic(t: usize) -> Option<usize> {
    GROUPS.iter().position(|&g| matches(FILTERS[g], TOPICS[t]))
}

/// MQTT topic matching (`+`, `#`; a `$share/{group}/` prefix is dropped first).
pub fn matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What a run checks: each property is its own test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// The run settles every time it is asked to (no livelock).
    Progress,
    /// Clients see a well-formed conversation: every packet decodes, acknowledgements match,
    /// no CONNECT or SUBSCRIBE is refused, no client gets a message it never subscribed to.
    Conversation,
    /// (1, safety) Once quiet: at most one session per client id and one active connection,
    /// a session attached only to its own client's connection; where no claim of the client
    /// is in progress, the registry names the shard the session lives on and the client's
    /// live connection holds it.
    OneSession,
    /// (1, liveness) Once quiet, every claim has been answered: no connection still waits
    /// for its CONNACK, a takeover race left exactly one of its two connections.
    RaceResolves,
    /// (2) No SUBACK leaves a shard before every shard's replica routes the filter there; nor
    /// the CONNACK of a resumed session before they route the subscriptions it brought.
    SubackAfterRoutes,
    /// (3) A publish sent after a subscriber's SUBACK reaches it while it stays connected.
    DeliveredWhileConnected,
    /// (3, 5) A QoS 1/2 publish sent after a persistent subscriber's SUBACK reaches it at least
    /// once, through reconnects and takeovers.
    DeliveredAfterReconnect,
    /// (4) Each message of a shared group goes to one member: never more than one for QoS 0,
    /// exactly one while its members stay connected.
    SharedOnce,
    /// (5) A persistent session is kept while its client is away and present again (Session
    /// Present) when it reconnects with Clean Start 0, on any shard.
    SessionKept,
    /// (5) QoS 2 exactly once through takeovers of persistent sessions: never twice to one
    /// session (and, through `DeliveredAfterReconnect`, at least once).
    ExactlyOnce,
}

impl Property {
    /// Every property.
    pub const ALL: [Property; 10] = [
        Property::Progress,
        Property::Conversation,
        Property::OneSession,
        Property::RaceResolves,
        Property::SubackAfterRoutes,
        Property::DeliveredWhileConnected,
        Property::DeliveredAfterReconnect,
        Property::SharedOnce,
        Property::SessionKept,
        Property::ExactlyOnce,
    ];
}

/// Counters of what a run did and checked, to see that the properties are exercised.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub runs: u64,
    pub events: u64,
    pub actions: u64,
    pub connects: u64,
    pub moves: u64,
    pub races: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub quiet_points: u64,
    /// Expectations checked, per property (in `Property::ALL` order).
    pub checked: [u64; Property::ALL.len()],
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.runs += o.runs;
        self.events += o.events;
        self.actions += o.actions;
        self.connects += o.connects;
        self.moves += o.moves;
        self.races += o.races;
        self.publishes += o.publishes;
        self.deliveries += o.deliveries;
        self.quiet_points += o.quiet_points;
        for (a, b) in self.checked.iter_mut().zip(o.checked) {
            *a += b;
        }
    }

    pub fn count(&mut self, p: Property) {
        self.checked[p as usize] += 1;
    }
}

/// A subscription as the client knows it, in one session lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// Not subscribed.
    None,
    /// SUBSCRIBE sent, no SUBACK yet.
    Pending,
    /// SUBACK received at `since` (a step), granting `qos`; no UNSUBSCRIBE since.
    Active { since: u64, qos: QoS },
    /// UNSUBSCRIBE sent, no UNSUBACK yet.
    Leaving,
    /// The connection went before the answer: the server may or may not hold it.
    Unknown,
}

/// One session as its client sees it: from a Clean Start (or the first connect) through every
/// reconnect with Clean Start 0. The client's side of the session state lives here.
pub struct Lineage {
    /// Session Expiry Interval > 0: the server keeps it while the client is away.
    pub persistent: bool,
    pub filters: [Sub; FILTERS.len()],
    /// Outgoing QoS 1/2 publishes not completed: pkid → (message, QoS, PUBREC received).
    out: BTreeMap<u16, (usize, QoS, bool)>,
    /// Incoming QoS 2 packet ids received and not released (PUBREL) yet.
    inbound_qos2: BTreeSet<u16>,
    next_pkid: u16,
    /// A CONNACK of this lineage was received: the server holds the session.
    pub server_session: bool,
    /// Begun with Clean Start: until a CONNACK confirms it, the server may still hold the
    /// previous lineage's session, so the client has to say Clean Start again (else it would
    /// get Session Present 1 with no session state of its own, MQTT-3.2.2-4).
    started_clean: bool,
}

/// How the client's end of a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client reads and writes it.
    Using,
    /// The client closed it (after a DISCONNECT, or dropped it): the shell sees EOF.
    Closed,
    /// The client left it without closing (a takeover from another connection is coming,
    /// or the shell's keep-alive closes it).
    Abandoned,
}

/// A connection: the core's conn at one end, a client at the other.
pub struct Link {
    pub shard: usize,
    pub key: ConnKey,
    pub client: usize,
    pub lineage: usize,
    pub protocol: Protocol,
    pub clean_start: bool,
    /// The lineage's session was on the server when this CONNECT was sent: its CONNACK must
    /// say Session Present.
    pub session_expected: bool,
    /// Client → core: encoded packets with the step they were sent at.
    pub up: VecDeque<(Bytes, u64)>,
    up_decoder: Decoder,
    /// Core → client: what the core wrote, decoded, with the step it was written at, for the
    /// client to read.
    pub down: VecDeque<(u64, Packet)>,
    down_decoder: Decoder,
    /// The core holds the connection (`conn_closed` not called yet).
    pub open: bool,
    pub end: End,
    /// The step the client read its CONNACK at.
    pub connected_at: Option<u64>,
    /// The client saw the connection end.
    pub eof_seen: bool,
    /// SUBSCRIBEs sent and not answered: pkid → (filter, QoS asked).
    pub pending_subs: Vec<(u16, Vec<(usize, QoS)>)>,
    /// UNSUBSCRIBEs sent and not answered: pkid → filters.
    pending_unsubs: Vec<(u16, Vec<usize>)>,
}

pub struct Client {
    pub id: String,
    /// Connects with Clean Start 0 and a session expiry (else Clean Start 1, expiry 0).
    pub persistent: bool,
    /// The lineage of the latest CONNECT.
    pub lineage: Option<usize>,
    /// The connections the client uses: one, or two while a takeover race it started runs.
    pub wanted: Vec<usize>,
    /// Groups the client ever subscribed to (a bit per group).
    pub touched_groups: u8,
    /// Filters the client ever subscribed to (a bit per filter).
    pub ever_filters: u16,
}

/// One published message (its payload, `m{index}`, is unique).
pub struct Msg {
    pub topic: usize,
    pub qos: QoS,
    pub publisher: usize,
    /// The step the transmission the server routed first was sent at (`None`: not routed).
    pub sent: Option<u64>,
    /// Transmissions of it the server read on an active connection (a QoS 1 resend is
    /// routed again).
    pub routings: u32,
    /// The quiet point before it was routed.
    pub window: u64,
    pub deliveries: Vec<Delivery>,
}

/// A client read the message (for QoS 2: the first time for its packet id).
pub struct Delivery {
    pub client: usize,
    pub lineage: usize,
    pub qos: QoS,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// The next batch from shard `.0` to shard `.1`.
    Mesh(usize, usize),
    /// The core reads the next packet of a connection.
    Up(usize),
    /// The client reads the next packet (or the end) of a connection.
    Down(usize),
    /// The shell closes a connection (`conn_closed`).
    Close(usize),
}

/// How a client leaves a connection.
#[derive(Debug, Clone, Copy)]
enum Leave {
    Abandon,
    Drop,
    Disconnect,
}

pub struct World {
    rng: Rng,
    pub log: Option<Vec<String>>,
    base: Instant,
    now: Instant,
    /// Logical time: every event and action is one step.
    pub step: u64,
    pub nshards: usize,
    pub cores: Vec<ShardCore>,
    /// Batches in flight, `[from * nshards + to]`.
    mesh: Vec<VecDeque<shardmq_core::Batch>>,
    pub links: Vec<Link>,
    /// Links not finished (open, or with something left for the client).
    live: Vec<usize>,
    pub clients: Vec<Client>,
    pub lineages: Vec<Lineage>,
    pub msgs: Vec<Msg>,
    /// Bumped by anything that may change a group's members or their connections.
    pub group_epoch: [u64; GROUPS.len()],
    /// `group_epoch` at the last quiet point.
    pub epoch_at_quiet: [u64; GROUPS.len()],
    /// Whether the group had a connected member at the last quiet point.
    pub member_at_quiet: [bool; GROUPS.len()],
    /// Quiet points so far.
    pub quiet: u64,
    /// The first violation of each property: (step, what).
    pub violations: BTreeMap<Property, (u64, String)>,
    /// Stop the run (livelock).
    pub stopped: bool,
    pub stats: Stats,
    scratch: Vec<Event>,
}

impl World {
    pub fn new(seed: u64, log: bool) -> World {
        let mut rng = Rng::new(seed);
        let nshards = rng.range(SHARDS_MIN, SHARDS_MAX);
        let nclients = rng.range(CLIENTS_MIN, CLIENTS_MAX);
        let strategy = SharedStrategy::ALL[rng.below(SharedStrategy::ALL.len())];
        let limits = Limits {
            max_packet_size: PACKET_SIZE_MAX,
            max_inflight: [1, 4, 32][rng.below(3)],
            ..Limits::default()
        };
        let cfg = CoreSettings {
            node_name: "sim".to_string(),
            shards: nshards,
            auth: false,
            acl_deny_action: Default::default(),
            max_connections: 10_000,
            max_connection_rate: 0,
            connect_timeout: CONNECT_TIMEOUT,
            limits,
            shared_strategy: strategy,
            channel_capacity: 4,
            batch_max: rng.range(1, 8),
            sys_interval: None,
            authenticators: Default::default(),
            redirect: Default::default(),
        };
        cfg.validate().expect("the harness's settings are valid");
        let cfg = Arc::new(cfg);
        let base = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let cores = (0..nshards)
            .map(|id| {
                let mut nonce_seed = [0u8; 32];
                nonce_seed[..8].copy_from_slice(&seed.to_le_bytes());
                nonce_seed[8] = id as u8;
                ShardCore::new(base, wall, id, cfg.clone(), hasher.clone(), nonce_seed)
            })
            .collect();
        let clients = (0..nclients)
            .map(|i| Client {
                id: format!("c{i}"),
                persistent: rng.chance(2, 3),
                lineage: None,
                wanted: Vec::new(),
                touched_groups: 0,
                ever_filters: 0,
            })
            .collect();
        let mut w = World {
            rng,
            log: log.then(Vec::new),
            base,
            now: base,
            step: 0,
            nshards,
            cores,
            mesh: (0..nshards * nshards).map(|_| VecDeque::new()).collect(),
            links: Vec::new(),
            live: Vec::new(),
            clients,
            lineages: Vec::new(),
            msgs: Vec::new(),
            group_epoch: [0; GROUPS.len()],
            epoch_at_quiet: [0; GROUPS.len()],
            member_at_quiet: [false; GROUPS.len()],
            quiet: 0,
            violations: BTreeMap::new(),
            stopped: false,
            stats: Stats {
                runs: 1,
                ..Stats::default()
            },
            scratch: Vec::new(),
        };
        note!(
            w,
            "seed {seed}: {nshards} shards, {nclients} clients [{}], shared_strategy {strategy}, batch_max {}, max_inflight {}",
            w_clients_desc(&w.clients).join(" "),
            w.cores[0].cfg.batch_max,
            w.cores[0].limits().max_inflight
        );
        w
    }

    /// Appends a line to the log (the `note!` macro formats it only when the log is on).
    pub fn push_log(&mut self, line: String) {
        let step = self.step;
        if let Some(log) = self.log.as_mut() {
            log.push(format!("[{step}] {line}"));
        }
    }

    /// Whether a violation of `p` is still worth formatting (the first of each property is
    /// kept; with the log on, every one is logged).
    pub fn wants(&self, p: Property) -> bool {
        self.log.is_some() || !self.violations.contains_key(&p)
    }

    /// Records a violation of `p` (see the `violate!` macro).
    pub fn record(&mut self, p: Property, what: String) {
        note!(self, "VIOLATION {p:?}: {what}");
        self.violations.entry(p).or_insert((self.step, what));
    }

    /// The whole run: client actions between random events, settles now and then, and at the
    /// end every persistent client back online and the final checks.
    pub fn run(&mut self) {
        let actions = self.rng.range(ACTIONS_MIN, ACTIONS_MAX);
        self.snapshot_quiet();
        for _ in 0..actions {
            let events = self.rng.below(EVENTS_PER_ACTION_MAX + 1);
            for _ in 0..events {
                if !self.random_event() {
                    break;
                }
            }
            if self.rng.chance(1, 8) {
                self.advance_time();
            }
            if self.rng.chance(1, 10) {
                self.settle();
            }
            if self.stopped {
                return;
            }
            self.client_action();
        }
        self.settle();
        self.final_reconnects();
        self.settle();
        if self.stopped {
            return;
        }
        self.check_final();
        let elapsed = self.now.duration_since(self.base);
        if elapsed.as_secs() >= u64::from(SESSION_EXPIRY_SECS) / 2 {
            violate!(
                self,
                Property::Progress,
                "virtual time ran {elapsed:?}, near the session expiry"
            );
        }
    }

    /// The messages in flight from shard `from` to shard `to`, in order.
    pub fn mesh_from_to(&self, from: usize, to: usize) -> impl Iterator<Item = &ShardMsg> {
        self.mesh[from * self.nshards + to].iter().flatten()
    }

    // ---- events ------------------------------------------------------------------------

    /// Runs one event chosen at random among those that can happen; false if none can.
    fn random_event(&mut self) -> bool {
        let mut events = std::mem::take(&mut self.scratch);
        events.clear();
        self.collect_events(&mut events);
        let chosen = (!events.is_empty()).then(|| events[self.rng.below(events.len())]);
        self.scratch = events;
        match chosen {
            Some(e) => {
                self.run_event(e);
                true
            }
            None => false,
        }
    }

    fn collect_events(&mut self, events: &mut Vec<Event>) {
        let n = self.nshards;
        for from in 0..n {
            for to in 0..n {
                if !self.mesh[from * n + to].is_empty() {
                    events.push(Event::Mesh(from, to));
                }
            }
        }
        let links = &self.links;
        self.live.retain(|&l| {
            let link = &links[l];
            link.open || (link.end == End::Using && !link.eof_seen)
        });
        for i in 0..self.live.len() {
            let l = self.live[i];
            let link = &self.links[l];
            if link.open {
                let phase = self.cores[link.shard].conns[link.key].phase;
                let reads = matches!(
                    phase,
                    Phase::AwaitConnect | Phase::Authenticating | Phase::Active
                );
                if reads && !link.up.is_empty() {
                    events.push(Event::Up(l));
                }
                let client_gone = link.end == End::Closed && (link.up.is_empty() || !reads);
                // An abandoned connection is closed by the shell's keep-alive, some time.
                let keep_alive = link.end == End::Abandoned && self.rng.chance(1, 16);
                if phase == Phase::Closing || client_gone || keep_alive {
                    events.push(Event::Close(l));
                }
            }
            let link = &self.links[l];
            if link.end == End::Using && (!link.down.is_empty() || !link.open) && !link.eof_seen {
                // One client keeps one session state: what two connections of a race bring
                // is read in the order the core wrote it (the old connection's before the new
                // one's, as in time), else a QoS 2 flow finished on the new connection could be
                // read again from the old one's stale bytes.
                let written = link.down.front().map(|(at, _)| *at);
                let earlier_elsewhere = written.is_some_and(|at| {
                    self.live.iter().any(|&o| {
                        let other = &self.links[o];
                        o != l
                            && other.lineage == link.lineage
                            && other.end == End::Using
                            && other.down.front().is_some_and(|(t, _)| *t < at)
                    })
                });
                if !earlier_elsewhere {
                    events.push(Event::Down(l));
                }
            }
        }
    }

    fn run_event(&mut self, e: Event) {
        self.step += 1;
        self.stats.events += 1;
        match e {
            Event::Mesh(from, to) => {
                let batch = self.mesh[from * self.nshards + to]
                    .pop_front()
                    .expect("chosen because it is not empty");
                if self.log.is_some() {
                    let mut s = format!("mesh {from}→{to}:");
                    for m in &batch {
                        let _ = write!(s, " {}", describe(m));
                    }
                    self.push_log(s);
                }
                self.cores[to].handle_peer(self.now, from, batch);
                self.drain(to, None);
            }
            Event::Up(l) => self.core_reads(l),
            Event::Down(l) => self.client_reads(l),
            Event::Close(l) => self.shell_closes(l),
        }
    }

    /// Runs events until none can happen (a quiet point), then checks what must hold there.
    /// Connections the client abandoned are closed first (the shell's keep-alive would).
    pub fn settle(&mut self) {
        if self.stopped {
            return;
        }
        for _ in 0..SETTLE_EVENTS_MAX {
            if self.random_event() {
                continue;
            }
            let abandoned = self
                .live
                .iter()
                .copied()
                .find(|&l| self.links[l].open && self.links[l].end == End::Abandoned);
            match abandoned {
                Some(l) => {
                    self.step += 1;
                    self.shell_closes(l);
                }
                None => {
                    self.stats.quiet_points += 1;
                    self.stats.count(Property::Progress);
                    note!(self, "quiet");
                    self.check_quiet();
                    self.snapshot_quiet();
                    return;
                }
            }
        }
        violate!(
            self,
            Property::Progress,
            "no quiet point after {SETTLE_EVENTS_MAX} events: livelock"
        );
        self.stopped = true;
    }

    fn advance_time(&mut self) {
        let ms = self.rng.range(1, TIME_STEP_MAX_MS as usize) as u64;
        self.now += Duration::from_millis(ms);
        self.step += 1;
        note!(self, "time +{ms} ms; handle_timeout");
        for s in 0..self.nshards {
            self.cores[s].handle_timeout(self.now);
            self.drain(s, None);
        }
    }

    /// The shell's part after every input to core `s`: batches into the mesh, and the output
    /// of every listed connection (and of `input`, the one just read) to its client.
    fn drain(&mut self, s: usize, input: Option<usize>) {
        let n = self.nshards;
        let core = &mut self.cores[s];
        assert!(
            core.poll_verify().is_none(),
            "auth is off: nothing to verify"
        );
        core.take_flush_wanted();
        for to in 0..n {
            while let Some(batch) = core.take_batch(to) {
                assert_ne!(to, s, "a shard handles its own messages in place");
                self.mesh[s * n + to].push_back(batch);
            }
        }
        let mut ready: Vec<usize> = Vec::new();
        while let Some((key, token)) = self.cores[s].poll_conn() {
            let l = token as usize;
            assert!(
                self.links[l].open && self.links[l].shard == s && self.links[l].key == key,
                "poll_conn names a connection the shell holds"
            );
            ready.push(l);
        }
        if let Some(l) = input {
            if self.links[l].open {
                ready.push(l);
            }
        }
        for l in ready {
            self.take_output(l);
        }
    }

    /// Moves what the core wrote on link `l` to its client, decoded; checks each SUBACK
    /// against the route replicas on its way out (property 2).
    fn take_output(&mut self, l: usize) {
        let (s, key) = (self.links[l].shard, self.links[l].key);
        let conn = &mut self.cores[s].conns[key];
        if conn.out.is_empty() {
            return;
        }
        let phase = conn.phase;
        let mut out = conn.out.split();
        while !out.is_empty() {
            match self.links[l].down_decoder.decode(&mut out) {
                Ok(Some(packet)) => {
                    match (&packet, phase) {
                        (Packet::SubAck(ack), Phase::Active) => self.check_suback_routes(l, ack),
                        (Packet::ConnAck(ack), Phase::Active) if ack.session_present => {
                            self.check_connack_routes(l)
                        }
                        _ => {}
                    }
                    note!(
                        self,
                        "core {s} → {} (link {l}): {}",
                        self.clients[self.links[l].client].id,
                        describe_packet(&packet)
                    );
                    if self.links[l].end == End::Using {
                        let at = self.step;
                        self.links[l].down.push_back((at, packet));
                    }
                }
                Ok(None) => {
                    violate!(
                        self,
                        Property::Conversation,
                        "link {l}: the core wrote a partial packet"
                    );
                    break;
                }
                Err(e) => {
                    violate!(
                        self,
                        Property::Conversation,
                        "link {l}: the client cannot decode the core's output: {e}"
                    );
                    break;
                }
            }
        }
    }

    /// The core reads the next packet the client sent on link `l`.
    fn core_reads(&mut self, l: usize) {
        let (frame, sent) = self.links[l].up.pop_front().expect("chosen: not empty");
        let (s, key) = (self.links[l].shard, self.links[l].key);
        let mut buf = BytesMut::from(&frame[..]);
        let packet = match self.links[l].up_decoder.decode(&mut buf) {
            Ok(Some(p)) if buf.is_empty() => p,
            other => {
                violate!(
                    self,
                    Property::Conversation,
                    "link {l}: the core's decoder rejects a client packet: {other:?}"
                );
                return;
            }
        };
        note!(
            self,
            "{} → core {s} (link {l}, conn {key}): {}",
            self.clients[self.links[l].client].id,
            describe_packet(&packet)
        );
        let core = &mut self.cores[s];
        core.bytes_in(self.now, key, frame.len());
        if let Packet::Publish(p) = &packet {
            if core.conns[key].phase == Phase::Active {
                let id = msg_id(&p.payload);
                let m = &mut self.msgs[id];
                m.routings += 1;
                if m.sent.is_none() {
                    m.sent = Some(sent);
                    m.window = self.quiet;
                }
            }
        }
        self.cores[s].on_packet(self.now, key, packet);
        self.drain(s, Some(l));
    }

    /// The shell closes link `l`: what the core wrote goes out, then `conn_closed`.
    fn shell_closes(&mut self, l: usize) {
        let (s, key) = (self.links[l].shard, self.links[l].key);
        self.take_output(l);
        note!(
            self,
            "shell {s} closes link {l} of {} (conn {key}, phase {:?}, client end {:?})",
            self.clients[self.links[l].client].id,
            self.cores[s].conns[key].phase,
            self.links[l].end
        );
        self.links[l].open = false;
        self.links[l].up.clear();
        self.cores[s].conn_closed(self.now, key);
        self.drain(s, None);
        self.touch_groups(self.links[l].client);
    }

    // ---- the client's side ---------------------------------------------------------------

    /// Encodes `packet` onto link `l` (the client writes it).
    fn send(&mut self, l: usize, packet: Packet) {
        let link = &mut self.links[l];
        debug_assert_eq!(link.end, End::Using, "the client writes only what it uses");
        let mut buf = BytesMut::new();
        encode(&packet, link.protocol, &mut buf);
        link.up.push_back((buf.freeze(), self.step));
    }

    /// The client reads the next packet of link `l`, or sees it end.
    fn client_reads(&mut self, l: usize) {
        let Some((_, packet)) = self.links[l].down.pop_front() else {
            debug_assert!(!self.links[l].open);
            self.links[l].eof_seen = true;
            note!(
                self,
                "{} sees link {l} end",
                self.clients[self.links[l].client].id
            );
            self.link_lost(l);
            return;
        };
        self.stats.count(Property::Conversation);
        let lg = self.links[l].lineage;
        match packet {
            Packet::ConnAck(ack) => self.on_connack(l, ack.code, ack.session_present),
            Packet::Publish(p) => self.on_publish(l, *p),
            Packet::PubAck(a) => {
                let out = &mut self.lineages[lg].out;
                if out.get(&a.pkid).is_some_and(|o| o.1 == QoS::AtLeastOnce) {
                    out.remove(&a.pkid);
                }
            }
            Packet::PubRec(a) => {
                let out = &mut self.lineages[lg].out;
                let known = out.get(&a.pkid).is_some_and(|o| o.1 == QoS::ExactlyOnce);
                if a.reason.is_error() {
                    if known {
                        out.remove(&a.pkid);
                    }
                    violate!(
                        self,
                        Property::Conversation,
                        "link {l}: PUBREC {} refuses: {:?}",
                        a.pkid,
                        a.reason
                    );
                } else {
                    if let Some(o) = out.get_mut(&a.pkid).filter(|_| known) {
                        o.2 = true;
                    }
                    self.send(l, Packet::PubRel(ack(a.pkid)));
                }
            }
            Packet::PubRel(a) => {
                self.lineages[lg].inbound_qos2.remove(&a.pkid);
                self.send(l, Packet::PubComp(ack(a.pkid)));
            }
            Packet::PubComp(a) => {
                let out = &mut self.lineages[lg].out;
                if out.get(&a.pkid).is_some_and(|o| o.1 == QoS::ExactlyOnce) {
                    out.remove(&a.pkid);
                }
            }
            Packet::SubAck(ack) => self.on_suback(l, ack),
            Packet::UnsubAck(ack) => {
                let i = self.links[l]
                    .pending_unsubs
                    .iter()
                    .position(|(p, _)| *p == ack.pkid);
                match i {
                    Some(i) => {
                        let (_, filters) = self.links[l].pending_unsubs.remove(i);
                        for f in filters {
                            let st = &mut self.lineages[lg].filters[f];
                            if *st == Sub::Leaving {
                                *st = Sub::None;
                            }
                        }
                    }
                    None => violate!(
                        self,
                        Property::Conversation,
                        "link {l}: UNSUBACK {} answers nothing",
                        ack.pkid
                    ),
                }
            }
            Packet::Disconnect(_) | Packet::PingResp => {}
            other => violate!(
                self,
                Property::Conversation,
                "link {l}: the server sent a client's packet: {}",
                other.name()
            ),
        }
    }

    fn on_connack(&mut self, l: usize, code: ReasonCode, session_present: bool) {
        let c = self.links[l].client;
        if code != ReasonCode::SUCCESS {
            violate!(
                self,
                Property::Conversation,
                "link {l}: CONNECT of {} refused: {code:?}",
                self.clients[c].id
            );
            self.leave(l, Leave::Drop);
            return;
        }
        self.links[l].connected_at = Some(self.step);
        let lg = self.links[l].lineage;
        if self.links[l].clean_start && session_present {
            violate!(
                self,
                Property::Conversation,
                "link {l}: Clean Start, yet Session Present"
            );
        }
        if !self.links[l].clean_start {
            self.stats.count(Property::SessionKept);
        }
        if self.links[l].session_expected && !session_present {
            violate!(
                self,
                Property::SessionKept,
                "link {l}: {} reconnected with Clean Start 0 to its persistent session, and the CONNACK says no session",
                self.clients[c].id
            );
        }
        self.lineages[lg].server_session = true;
        if session_present {
            // Resend what the session has not completed (MQTT-4.4.0-1).
            let resend: Vec<(u16, usize, QoS, bool)> = self.lineages[lg]
                .out
                .iter()
                .map(|(&pkid, &(m, q, rel))| (pkid, m, q, rel))
                .collect();
            for (pkid, m, qos, released) in resend {
                let packet = if released {
                    Packet::PubRel(ack(pkid))
                } else {
                    Packet::Publish(Box::new(self.publish_packet(m, qos, pkid, true)))
                };
                self.send(l, packet);
            }
        } else if self.clients[c].wanted.len() == 1 {
            // A new session: the client's session state goes too (MQTT-3.2.2-...).
            let lin = &mut self.lineages[lg];
            lin.out.clear();
            lin.inbound_qos2.clear();
            lin.filters = [Sub::None; FILTERS.len()];
        }
    }

    fn on_publish(&mut self, l: usize, p: Publish) {
        let c = self.links[l].client;
        let lg = self.links[l].lineage;
        let id = msg_id(&p.payload);
        let (topic, qos) = (self.msgs[id].topic, self.msgs[id].qos);
        if p.topic.as_str() != TOPICS[topic] {
            violate!(
                self,
                Property::Conversation,
                "link {l}: message {id} came on topic {} not {}",
                p.topic,
                TOPICS[topic]
            );
        }
        let subscribed = (0..FILTERS.len()).any(|f| {
            self.clients[c].ever_filters & (1 << f) != 0 && matches(FILTERS[f], TOPICS[topic])
        });
        if !subscribed {
            violate!(
                self,
                Property::Conversation,
                "link {l}: {} got message {id} on {} it never subscribed to",
                self.clients[c].id,
                TOPICS[topic]
            );
        }
        if p.qos > qos {
            violate!(
                self,
                Property::Conversation,
                "link {l}: message {id} published at {:?} came at {:?}",
                qos,
                p.qos
            );
        }
        let new = match p.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                self.send(l, Packet::PubAck(ack(p.pkid)));
                true
            }
            QoS::ExactlyOnce => {
                let new = self.lineages[lg].inbound_qos2.insert(p.pkid);
                self.send(l, Packet::PubRec(ack(p.pkid)));
                new
            }
        };
        if new {
            self.stats.deliveries += 1;
            self.msgs[id].deliveries.push(Delivery {
                client: c,
                lineage: lg,
                qos: p.qos,
            });
        }
    }

    fn on_suback(&mut self, l: usize, ack: SubAck) {
        let lg = self.links[l].lineage;
        let Some(i) = self.links[l]
            .pending_subs
            .iter()
            .position(|(p, _)| *p == ack.pkid)
        else {
            violate!(
                self,
                Property::Conversation,
                "link {l}: SUBACK {} answers nothing",
                ack.pkid
            );
            return;
        };
        let (_, filters) = self.links[l].pending_subs.remove(i);
        if filters.len() != ack.reasons.len() {
            violate!(
                self,
                Property::Conversation,
                "link {l}: SUBACK {} has {} reasons for {} filters",
                ack.pkid,
                ack.reasons.len(),
                filters.len()
            );
        }
        for ((f, asked), reason) in filters.into_iter().zip(ack.reasons) {
            let granted = QoS::from_u8(reason.0);
            if granted != Some(asked) {
                violate!(
                    self,
                    Property::Conversation,
                    "link {l}: SUBSCRIBE {} at {asked:?} answered {reason:?}",
                    FILTERS[f]
                );
            }
            let st = &mut self.lineages[lg].filters[f];
            if *st == Sub::Pending {
                *st = match granted {
                    Some(qos) => Sub::Active {
                        since: self.step,
                        qos,
                    },
                    None => Sub::None,
                };
            }
        }
    }

    /// The client no longer has link `l`: what it asked there and got no answer for is now
    /// unknown.
    fn link_lost(&mut self, l: usize) {
        let c = self.links[l].client;
        let lg = self.links[l].lineage;
        self.clients[c].wanted.retain(|&w| w != l);
        let link = &mut self.links[l];
        let lin = &mut self.lineages[lg];
        for (_, filters) in link.pending_subs.drain(..) {
            for (f, _) in filters {
                if lin.filters[f] == Sub::Pending {
                    lin.filters[f] = Sub::Unknown;
                }
            }
        }
        for (_, filters) in link.pending_unsubs.drain(..) {
            for f in filters {
                if lin.filters[f] == Sub::Leaving {
                    lin.filters[f] = Sub::Unknown;
                }
            }
        }
        self.touch_groups(c);
    }

    /// The client leaves link `l`.
    fn leave(&mut self, l: usize, how: Leave) {
        note!(
            self,
            "{} leaves link {l}: {how:?}",
            self.clients[self.links[l].client].id
        );
        match how {
            Leave::Abandon => self.links[l].end = End::Abandoned,
            Leave::Drop => {
                if self.rng.chance(1, 2) {
                    self.links[l].up.clear();
                }
                self.links[l].end = End::Closed;
            }
            Leave::Disconnect => {
                self.send(
                    l,
                    Packet::Disconnect(Disconnect {
                        reason: ReasonCode::NORMAL_DISCONNECTION,
                        properties: Default::default(),
                    }),
                );
                self.links[l].end = End::Closed;
            }
        }
        self.links[l].down.clear();
        self.link_lost(l);
    }

    /// A group's members may change: anything its members do.
    fn touch_groups(&mut self, c: usize) {
        let touched = self.clients[c].touched_groups;
        for (g, e) in self.group_epoch.iter_mut().enumerate() {
            if touched & (1 << g) != 0 {
                *e += 1;
            }
        }
    }

    /// The link the client does things on: its one connection, once connected.
    pub fn active_link(&self, c: usize) -> Option<usize> {
        match self.clients[c].wanted[..] {
            [l] => {
                let link = &self.links[l];
                (link.connected_at.is_some() && !link.eof_seen && link.end == End::Using)
                    .then_some(l)
            }
            _ => None,
        }
    }

    /// Opens a connection from client `c` to shard `shard` and sends its CONNECT. A persistent
    /// client continues its lineage (Clean Start 0), unless `reset` (Clean Start 1, still
    /// with an expiry); any other starts a new one each time.
    fn connect(&mut self, c: usize, shard: usize, reset: bool) -> usize {
        let persistent = self.clients[c].persistent;
        let unconfirmed = self.clients[c]
            .lineage
            .is_some_and(|lg| self.lineages[lg].started_clean && !self.lineages[lg].server_session);
        let reset = reset || (persistent && unconfirmed);
        let clean = !persistent || reset;
        // A persistent client's Clean Start 1 keeps an expiry: only 5.0 can say both.
        let protocol = if reset || self.rng.chance(1, 2) {
            Protocol::V5
        } else {
            Protocol::V3_1_1
        };
        let lineage = match self.clients[c].lineage {
            Some(lg) if !clean => lg,
            _ => {
                self.lineages.push(Lineage {
                    persistent,
                    filters: [Sub::None; FILTERS.len()],
                    out: BTreeMap::new(),
                    inbound_qos2: BTreeSet::new(),
                    next_pkid: 0,
                    server_session: false,
                    started_clean: clean,
                });
                self.lineages.len() - 1
            }
        };
        self.clients[c].lineage = Some(lineage);
        let session_expected = !clean && self.lineages[lineage].server_session;
        let l = self.links.len();
        let open_now = self.links.iter().filter(|k| k.open).count() + 1;
        let (key, _) =
            self.cores[shard].open_conn(self.now, None, ListenerKind::Tcp, open_now, l as u32);
        self.links.push(Link {
            shard,
            key,
            client: c,
            lineage,
            protocol,
            clean_start: clean,
            session_expected,
            up: VecDeque::new(),
            up_decoder: Decoder::new(PACKET_SIZE_MAX),
            down: VecDeque::new(),
            down_decoder: Decoder::with_protocol(protocol, PACKET_SIZE_MAX),
            open: true,
            end: End::Using,
            connected_at: None,
            eof_seen: false,
            pending_subs: Vec::new(),
            pending_unsubs: Vec::new(),
        });
        self.live.push(l);
        self.clients[c].wanted.push(l);
        let expiry = persistent.then_some(SESSION_EXPIRY_SECS);
        let connect = Connect {
            protocol,
            clean_start: clean,
            keep_alive: 0,
            client_id: ByteStr::from(self.clients[c].id.as_str()),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: expiry.filter(|_| protocol.is_v5()),
                ..Default::default()
            },
        };
        note!(self,
                "{} CONNECT → core {shard} (link {l}, conn {key}): {protocol:?} clean_start {clean}, lineage {lineage}, session expected {session_expected}",
                self.clients[c].id
            );
        self.send(l, Packet::Connect(Box::new(connect)));
        self.stats.connects += 1;
        self.touch_groups(c);
        l
    }

    fn other_shard(&mut self, s: usize) -> usize {
        (s + 1 + self.rng.below(self.nshards - 1)) % self.nshards
    }

    fn next_pkid(&mut self, lg: usize) -> u16 {
        let lin = &mut self.lineages[lg];
        assert!(
            lin.out.len() < usize::from(u16::MAX),
            "a free packet id exists: the loop ends"
        );
        loop {
            lin.next_pkid = lin.next_pkid.wrapping_add(1).max(1);
            if !lin.out.contains_key(&lin.next_pkid) {
                return lin.next_pkid;
            }
        }
    }

    fn publish_packet(&self, m: usize, qos: QoS, pkid: u16, dup: bool) -> Publish {
        Publish {
            dup,
            qos,
            retain: false,
            topic: ByteStr::from_static(TOPICS[self.msgs[m].topic]),
            pkid,
            properties: Default::default(),
            payload: Bytes::from(format!("m{m}")),
        }
    }

    /// One thing a random client does.
    fn client_action(&mut self) {
        self.step += 1;
        self.stats.actions += 1;
        let c = self.rng.below(self.clients.len());
        let persistent = self.clients[c].persistent;
        if let Some(l) = self.active_link(c) {
            let lg = self.links[l].lineage;
            let active: Vec<usize> = (0..FILTERS.len())
                .filter(|&f| matches!(self.lineages[lg].filters[f], Sub::Active { .. }))
                .collect();
            let subscribable: Vec<usize> = (0..FILTERS.len())
                .filter(|&f| matches!(self.lineages[lg].filters[f], Sub::None | Sub::Unknown))
                .collect();
            let weights = [
                40,                                         // publish
                14 * usize::from(!subscribable.is_empty()), // subscribe
                6 * usize::from(!active.is_empty()),        // unsubscribe
                9,                                          // move to another connection
                3,                                          // race two connections
                4,                                          // disconnect
                4,                                          // drop the connection
                usize::from(persistent),                    // clean start, new session
            ];
            match self.rng.weighted(&weights) {
                0 => {
                    for _ in 0..self.rng.range(1, 3) {
                        self.publish(c, l);
                    }
                }
                1 => self.subscribe(c, l, &subscribable),
                2 => {
                    let f = active[self.rng.below(active.len())];
                    self.unsubscribe(c, l, f);
                }
                3 => {
                    self.stats.moves += 1;
                    let how = [Leave::Abandon, Leave::Drop, Leave::Disconnect][self.rng.below(3)];
                    let shard = if self.rng.chance(1, 6) {
                        self.links[l].shard
                    } else {
                        self.other_shard(self.links[l].shard)
                    };
                    self.leave(l, how);
                    self.connect(c, shard, false);
                }
                4 => {
                    let how = [Leave::Abandon, Leave::Drop][self.rng.below(2)];
                    self.leave(l, how);
                    self.race(c);
                }
                5 => self.leave(l, Leave::Disconnect),
                6 => self.leave(l, Leave::Drop),
                _ => {
                    let how = [Leave::Abandon, Leave::Drop, Leave::Disconnect][self.rng.below(3)];
                    self.leave(l, how);
                    let shard = self.rng.below(self.nshards);
                    self.connect(c, shard, true);
                }
            }
        } else if self.clients[c].wanted.is_empty() {
            match self.rng.weighted(&[10, 3, usize::from(persistent)]) {
                0 => {
                    let shard = self.rng.below(self.nshards);
                    self.connect(c, shard, false);
                }
                1 => self.race(c),
                _ => {
                    let shard = self.rng.below(self.nshards);
                    self.connect(c, shard, true);
                }
            }
        } else if self.rng.chance(1, 10) {
            // Still connecting: sometimes the client gives up on it.
            let l = self.clients[c].wanted[0];
            self.leave(l, Leave::Drop);
        }
    }

    /// Two connections of the same client on two shards, both sending CONNECT.
    fn race(&mut self, c: usize) {
        self.stats.races += 1;
        let a = self.rng.below(self.nshards);
        let b = self.other_shard(a);
        note!(
            self,
            "{} races connections on cores {a} and {b}",
            self.clients[c].id
        );
        self.connect(c, a, false);
        self.connect(c, b, false);
    }

    fn publish(&mut self, c: usize, l: usize) {
        let lg = self.links[l].lineage;
        let topic = self.rng.below(TOPICS.len());
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][self.rng.below(3)];
        let m = self.msgs.len();
        self.msgs.push(Msg {
            topic,
            qos,
            publisher: c,
            sent: None,
            routings: 0,
            window: 0,
            deliveries: Vec::new(),
        });
        self.stats.publishes += 1;
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            let pkid = self.next_pkid(lg);
            self.lineages[lg].out.insert(pkid, (m, qos, false));
            pkid
        };
        note!(
            self,
            "{} PUBLISH m{m} {} {qos:?} pkid {pkid} (link {l})",
            self.clients[c].id,
            TOPICS[topic]
        );
        let packet = self.publish_packet(m, qos, pkid, false);
        self.send(l, Packet::Publish(Box::new(packet)));
    }

    fn subscribe(&mut self, c: usize, l: usize, candidates: &[usize]) {
        let lg = self.links[l].lineage;
        let mut chosen: Vec<(usize, QoS)> = Vec::new();
        for _ in 0..self.rng.range(1, 2) {
            let f = candidates[self.rng.below(candidates.len())];
            if chosen.iter().all(|&(g, _)| g != f) {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][self.rng.below(3)];
                chosen.push((f, qos));
            }
        }
        let pkid = self.next_pkid(lg);
        for &(f, _) in &chosen {
            self.lineages[lg].filters[f] = Sub::Pending;
            self.clients[c].ever_filters |= 1 << f;
            if let Some(g) = group_of_filter(f) {
                self.clients[c].touched_groups |= 1 << g;
                self.group_epoch[g] += 1;
            }
        }
        if self.log.is_some() {
            let fs: Vec<String> = chosen
                .iter()
                .map(|&(f, q)| format!("{} {q:?}", FILTERS[f]))
                .collect();
            let line = format!(
                "{} SUBSCRIBE {pkid} [{}] (link {l})",
                self.clients[c].id,
                fs.join(", ")
            );
            self.push_log(line);
        }
        let packet = Subscribe {
            pkid,
            filters: chosen
                .iter()
                .map(|&(f, qos)| SubscribeFilter {
                    filter: ByteStr::from_static(FILTERS[f]),
                    options: SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                })
                .collect(),
            properties: Default::default(),
        };
        self.links[l].pending_subs.push((pkid, chosen));
        self.send(l, Packet::Subscribe(packet));
    }

    fn unsubscribe(&mut self, c: usize, l: usize, f: usize) {
        let lg = self.links[l].lineage;
        let pkid = self.next_pkid(lg);
        self.lineages[lg].filters[f] = Sub::Leaving;
        if let Some(g) = group_of_filter(f) {
            self.group_epoch[g] += 1;
        }
        note!(
            self,
            "{} UNSUBSCRIBE {pkid} {} (link {l})",
            self.clients[c].id,
            FILTERS[f]
        );
        self.links[l].pending_unsubs.push((pkid, vec![f]));
        self.send(
            l,
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters: vec![ByteStr::from_static(FILTERS[f])],
                properties: Default::default(),
            }),
        );
    }

    /// Every persistent client that is away comes back (Clean Start 0), so that what its
    /// session holds can reach it.
    fn final_reconnects(&mut self) {
        note!(self, "final: persistent clients reconnect");
        for c in 0..self.clients.len() {
            if self.clients[c].persistent && self.clients[c].wanted.is_empty() {
                self.step += 1;
                let shard = self.rng.below(self.nshards);
                self.connect(c, shard, false);
            }
        }
    }
}

fn w_clients_desc(clients: &[Client]) -> Vec<String> {
    clients
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c.id,
                if c.persistent { "persistent" } else { "clean" }
            )
        })
        .collect()
}

fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }
}

/// The message index in a payload `m{index}`.
fn msg_id(payload: &[u8]) -> usize {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.strip_prefix('m'))
        .and_then(|s| s.parse().ok())
        .expect("every payload is m{index}")
}

/// A packet in a log line.
pub fn describe_packet(p: &Packet) -> String {
    match p {
        Packet::Connect(c) => format!("CONNECT {} clean_start {}", c.client_id, c.clean_start),
        Packet::ConnAck(a) => format!("CONNACK {:?} session_present {}", a.code, a.session_present),
        Packet::Publish(p) => format!(
            "PUBLISH {} {} {:?} pkid {}{}",
            String::from_utf8_lossy(&p.payload),
            p.topic,
            p.qos,
            p.pkid,
            if p.dup { " dup" } else { "" }
        ),
        Packet::PubAck(a) => format!("PUBACK {}", a.pkid),
        Packet::PubRec(a) => format!("PUBREC {}", a.pkid),
        Packet::PubRel(a) => format!("PUBREL {}", a.pkid),
        Packet::PubComp(a) => format!("PUBCOMP {}", a.pkid),
        Packet::Subscribe(s) => {
            let fs: Vec<&str> = s.filters.iter().map(|f| f.filter.as_str()).collect();
            format!("SUBSCRIBE {} {fs:?}", s.pkid)
        }
        Packet::SubAck(a) => format!("SUBACK {} {:?}", a.pkid, a.reasons),
        Packet::Unsubscribe(u) => format!("UNSUBSCRIBE {} {:?}", u.pkid, u.filters),
        Packet::UnsubAck(a) => format!("UNSUBACK {}", a.pkid),
        Packet::Disconnect(d) => format!("DISCONNECT {:?}", d.reason),
        other => other.name().to_string(),
    }
}

/// A shard message in a log line.
pub fn describe(m: &ShardMsg) -> String {
    let payload = |m: &shardmq_broker::Message| String::from_utf8_lossy(&m.payload).into_owned();
    match m {
        ShardMsg::Publish { msg, stamp } | ShardMsg::DurablePublish { msg, stamp } => format!(
            "Publish({} #{} to {:?})",
            payload(msg),
            stamp.seq,
            stamp.dest.iter().collect::<Vec<_>>()
        ),
        ShardMsg::Forward {
            token,
            msg,
            origin,
            stamp,
        } => format!(
            "Forward({token:x} {} from {origin} #{} to {:?})",
            payload(msg),
            stamp.seq,
            stamp.dest.iter().collect::<Vec<_>>()
        ),
        ShardMsg::MoveMark { token, from, to } => format!("MoveMark({token:x} {from}->{to})"),
        ShardMsg::MoveMarkAck { token, upto } => format!("MoveMarkAck({token:x} upto #{upto})"),
        ShardMsg::ForwardEnd { token, upto } => format!("ForwardEnd({token:x} upto #{upto})"),
        ShardMsg::SharedPublish(sp) => {
            format!("SharedPublish({} {})", sp.key.group, payload(&sp.msg))
        }
        ShardMsg::SharedRoute {
            key,
            shard,
            counts,
            sync,
        } => format!(
            "SharedRoute({}/{} shard {shard} online {} offline {} sync {sync:?})",
            key.group, key.filter, counts.online, counts.offline
        ),
        ShardMsg::SharedRedispatch { key, msg } => {
            format!("SharedRedispatch({} {})", key.group, payload(msg))
        }
        ShardMsg::RouteAdd {
            filter,
            shard,
            sync,
        } => {
            format!("RouteAdd({filter} shard {shard} sync {sync:?})")
        }
        ShardMsg::RouteDel { filter, shard } => format!("RouteDel({filter} shard {shard})"),
        ShardMsg::RouteAck { token } => format!("RouteAck({token:x})"),
        ShardMsg::Claim {
            client_id,
            shard,
            token,
            clean_start,
        } => format!("Claim({client_id} shard {shard} token {token:x} clean {clean_start})"),
        ShardMsg::Release {
            client_id,
            shard,
            token,
        } => format!("Release({client_id} shard {shard} token {token:x})"),
        ShardMsg::Takeover {
            client_id,
            to,
            token,
            replaces,
            discard,
        } => format!(
            "Takeover({client_id} to {to} token {token:x} replaces {replaces:x} discard {discard})"
        ),
        ShardMsg::Handoff {
            client_id,
            token,
            session,
            ..
        } => format!(
            "Handoff({client_id} token {token:x} session {})",
            session.as_ref().map_or("none".to_string(), |s| format!(
                "{} subs, {} inflight, {} queued",
                s.subscriptions().count(),
                s.inflight_len(),
                s.queued_len()
            ))
        ),
        other => {
            let s = format!("{other:?}");
            s.chars().take(60).collect()
        }
    }
}
