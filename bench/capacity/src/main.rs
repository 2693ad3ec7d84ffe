//! `shardmq-capacity`: inputs for the capacity model in `docs/capacity.md`.
//!
//! `sessions` builds N sessions with their subscriptions exactly as one shard holds them, but
//! without sockets and without a glommio executor: each session is created from a decoded
//! CONNECT through [`accept_connect`], [`Session::new`] and [`Session::attach`], subscribes
//! through a decoded SUBSCRIBE handled by [`Session::handle`], and the shard's bookkeeping is
//! replicated with the same types (`shards/runtime/src/shard.rs`): a slab of session slots,
//! the `by_client` map, the client registry, the local `SubscriptionTrie<Subscribers>` and the
//! `SubscriptionTrie<ShardSet>` route replica. It reports the process's `VmRSS` before and
//! after, per session, and the cost of matching a topic against the tries at that size.

mod floor;
mod uring_floor;

use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::{Parser, Subcommand};
use shardmq_broker::limits::Limits;
use shardmq_broker::session::{accept_connect, Action, Session, Subscription};
use shardmq_broker::trie::SubscriptionTrie;
use shardmq_codec::{
    encode, ByteStr, Connect, ConnectProperties, Decoder, Packet, Protocol, QoS, RetainHandling,
    Subscribe, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
};
use shardmq_shards::ShardSet;
use smallvec::SmallVec;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Capacity model inputs for shardmq (docs/capacity.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build N sessions with subscriptions as one shard holds them; report memory and matching.
    Sessions(SessionsArgs),
    /// Accept MQTT clients with glommio alone (CONNACK, then hold): glommio's floor per idle
    /// connection, for bench/why-idle.sh.
    Floor(floor::FloorArgs),
}

#[derive(clap::Args)]
struct SessionsArgs {
    /// Sessions to build.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    sessions: usize,
    /// Exact (wildcard-free) subscriptions per session.
    #[arg(long, default_value_t = 1)]
    subs_per_session: usize,
    /// Topic filter template; `%i` is the session number. A session's k-th subscription
    /// (k > 0) appends `/k`.
    #[arg(long, default_value = "dev/%i/state")]
    topic: String,
    /// Client id template; `%i` is the session number.
    #[arg(long, default_value = "client-%i")]
    client_id: String,
    /// Wildcard filters added after the memory figure (`dev/+/state`, then `dev/%i/+` and
    /// `dev/%i/#` on random sessions), subscribed by the first sessions.
    #[arg(long, default_value_t = 1000)]
    wildcards: usize,
    /// Random topic matches to time.
    #[arg(long, default_value_t = 1_000_000)]
    matches: usize,
    /// Shards of the node: only sets which shard the route replica names.
    #[arg(long, default_value_t = 2)]
    shards: usize,
}

/// The shard's per-filter set of local subscribers (`shard.rs`: `type Subscribers`).
type Subscribers = SmallVec<[(u32, Subscription); 1]>;

/// Replica of `shard.rs`'s `SessionSlot` (crate-private there): same fields, same types.
#[allow(dead_code)] // Held for its memory, as the shard holds it.
struct SessionSlot {
    session: Session,
    conn: Option<usize>,
    reg_token: u64,
    expires_at: Option<Instant>,
}

/// Replica of `shard.rs`'s `RegEntry`.
#[allow(dead_code)]
#[derive(Clone, Copy)]
struct RegEntry {
    shard: usize,
    token: u64,
}

/// The shard's session and routing state, as in `shard.rs`'s `Shard`.
struct ShardState {
    sessions: slab::Slab<SessionSlot>,
    by_client: ahash::AHashMap<ByteStr, usize>,
    subs: SubscriptionTrie<Subscribers>,
    routes: SubscriptionTrie<ShardSet>,
    registry: ahash::AHashMap<ByteStr, RegEntry>,
    next_token: u64,
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes one packet from `wire` as the connection driver does (slices of a read buffer).
fn decode_one(decoder: &mut Decoder, wire: &mut BytesMut) -> anyhow::Result<Packet> {
    decoder
        .decode(wire)
        .map_err(|e| anyhow::anyhow!("decode: {e:?}"))?
        .context("incomplete packet")
}

impl ShardState {
    fn new() -> ShardState {
        ShardState {
            sessions: slab::Slab::new(),
            by_client: Default::default(),
            subs: SubscriptionTrie::new(),
            routes: SubscriptionTrie::new(),
            registry: Default::default(),
            next_token: 0,
        }
    }

    /// CONNECT through the registry claim, `handoff` and `finish_connect` of `shard.rs`,
    /// single-shard: the registry entry lives here too.
    fn connect(
        &mut self,
        connect: Connect,
        limits: &Limits,
        out: &mut BytesMut,
    ) -> anyhow::Result<usize> {
        let accepted = accept_connect(&connect, limits, || ByteStr::from_static("unused"))
            .map_err(|r| anyhow::anyhow!("CONNECT refused: {r:?}"))?;
        drop(connect);
        self.next_token += 1;
        let token = self.next_token << 8;
        let client_id = accepted.client_id.clone();
        self.registry
            .insert(client_id.clone(), RegEntry { shard: 0, token });
        let session = Session::new(client_id.clone(), accepted.protocol, accepted.expiry_secs);
        let skey = self.sessions.insert(SessionSlot {
            session,
            conn: None,
            reg_token: token,
            expires_at: None,
        });
        self.by_client.insert(client_id, skey);
        let slot = &mut self.sessions[skey];
        slot.conn = Some(skey);
        slot.session.attach(Instant::now(), &accepted, limits, out);
        Ok(skey)
    }

    /// SUBSCRIBE through `Session::handle`, then the shard's `trie_insert` and, for a filter
    /// new on this shard, the route replica's entry (`announce_route` reaches every shard,
    /// this one included).
    fn subscribe(
        &mut self,
        skey: usize,
        packet: Packet,
        limits: &Limits,
        shard: usize,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) -> anyhow::Result<()> {
        let session = &mut self.sessions[skey].session;
        if let Err(close) = session.handle(Instant::now(), packet, limits, out, actions) {
            bail!("SUBSCRIBE closed the session: {close:?}");
        }
        for action in actions.drain(..) {
            if let Action::Subscribe {
                filter,
                subscription,
                ..
            } = action
            {
                let set = self.subs.entry_or_insert_with(&filter, SmallVec::new);
                let was_empty = set.is_empty();
                match set.iter_mut().find(|(k, _)| *k == skey as u32) {
                    Some(entry) => entry.1 = subscription,
                    None => set.push((skey as u32, subscription)),
                }
                if was_empty {
                    let set = self
                        .routes
                        .entry_or_insert_with(&filter, || ShardSet::EMPTY);
                    *set = set.with(shard);
                }
            }
        }
        Ok(())
    }
}

fn template(t: &str, i: usize) -> String {
    t.replace("%i", &i.to_string())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn sessions(args: SessionsArgs) -> anyhow::Result<()> {
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let limits = Limits::default();
    let shard = 0;
    let _ = args.shards;
    let mut decoder = Decoder::new(u32::MAX);
    let mut wire = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut actions = Vec::new();
    let mut st = ShardState::new();
    println!(
        "sizes: Session {} B, SessionSlot {} B, slab entry {} B, Subscription {} B, \
         Subscribers {} B, ByteStr {} B, by_client entry {} B, registry entry {} B",
        size_of::<Session>(),
        size_of::<SessionSlot>(),
        size_of::<slab::Slab<SessionSlot>>().max(size_of::<SessionSlot>() + 8),
        size_of::<Subscription>(),
        size_of::<Subscribers>(),
        size_of::<ByteStr>(),
        size_of::<(ByteStr, usize)>(),
        size_of::<(ByteStr, RegEntry)>(),
    );
    let rss_before = vm_rss_kib();
    let started = Instant::now();
    for i in 0..args.sessions {
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 300,
            client_id: ByteStr::from(template(&args.client_id, i)),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        encode(&Packet::Connect(Box::new(connect)), Protocol::V5, &mut wire);
        decoder = Decoder::new(u32::MAX);
        let Packet::Connect(connect) = decode_one(&mut decoder, &mut wire)? else {
            bail!("decoded something other than CONNECT");
        };
        out.clear();
        let skey = st.connect(*connect, &limits, &mut out)?;
        let base = template(&args.topic, i);
        let filters = (0..args.subs_per_session)
            .map(|k| SubscribeFilter {
                filter: ByteStr::from(if k == 0 {
                    base.clone()
                } else {
                    format!("{base}/{k}")
                }),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnSubscribe,
                },
            })
            .collect();
        let subscribe = Subscribe {
            pkid: 1,
            filters,
            properties: SubscribeProperties::default(),
        };
        if args.subs_per_session > 0 {
            encode(&Packet::Subscribe(subscribe), Protocol::V5, &mut wire);
            let packet = decode_one(&mut decoder, &mut wire)?;
            out.clear();
            st.subscribe(skey, packet, &limits, shard, &mut out, &mut actions)?;
        }
    }
    let build_secs = started.elapsed().as_secs_f64();
    let rss_after = vm_rss_kib();
    let n = args.sessions as u64;
    let total_subs = args.sessions * args.subs_per_session;
    println!(
        "built {} sessions with {} subscriptions in {:.2}s ({:.0} sessions/s)",
        args.sessions,
        total_subs,
        build_secs,
        args.sessions as f64 / build_secs
    );
    println!(
        "VmRSS: before {rss_before} KiB, after {rss_after} KiB, bytes per session {}",
        (rss_after.saturating_sub(rss_before)) * 1024 / n
    );
    println!(
        "capacities: sessions slab {}, by_client {}, registry {}, subs exact {} filters, routes {} filters",
        st.sessions.capacity(),
        st.by_client.capacity(),
        st.registry.capacity(),
        st.subs.len(),
        st.routes.len(),
    );

    // Wildcard filters, subscribed by the first sessions, after the memory figure.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut wild = Vec::new();
    if args.wildcards > 0 {
        wild.push("dev/+/state".to_string());
        while wild.len() < args.wildcards {
            let r = rng.below(args.sessions);
            wild.push(if wild.len() % 2 == 0 {
                format!("dev/{r}/+")
            } else {
                format!("dev/{r}/#")
            });
        }
    }
    for (j, f) in wild.iter().enumerate() {
        let subscribe = Subscribe {
            pkid: 2,
            filters: vec![SubscribeFilter {
                filter: ByteStr::from(f.clone()),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnSubscribe,
                },
            }],
            properties: SubscribeProperties::default(),
        };
        encode(&Packet::Subscribe(subscribe), Protocol::V5, &mut wire);
        let packet = decode_one(&mut decoder, &mut wire)?;
        out.clear();
        st.subscribe(
            j % args.sessions,
            packet,
            &limits,
            shard,
            &mut out,
            &mut actions,
        )?;
    }

    // Publish matching as `shard.rs` routes a PUBLISH: the route replica names the shards,
    // then the local trie collects (session, subscription) pairs into a reused scratch vector.
    let topics: Vec<String> = (0..args.matches.min(1 << 20))
        .map(|_| template(&args.topic, rng.below(args.sessions)))
        .collect();
    let mut scratch: Vec<(u32, Subscription)> = Vec::new();
    let mut route_ns = Vec::with_capacity(args.matches);
    let mut local_ns = Vec::with_capacity(args.matches);
    let mut delivered = 0usize;
    let mut routed = 0usize;
    for m in 0..args.matches {
        let topic = topics[m % topics.len()].as_str();
        let t0 = Instant::now();
        let mut targets = ShardSet::EMPTY;
        st.routes
            .for_each_match(topic, |s| targets = targets.union(*s));
        let t1 = Instant::now();
        scratch.clear();
        st.subs
            .for_each_match(topic, |subs| scratch.extend(subs.iter().copied()));
        let t2 = Instant::now();
        delivered += scratch.len();
        routed += usize::from(!targets.is_empty());
        route_ns.push((t1 - t0).as_nanos() as u64);
        local_ns.push((t2 - t1).as_nanos() as u64);
    }
    route_ns.sort_unstable();
    local_ns.sort_unstable();
    println!(
        "matching {} random topics '{}' against {} exact + {} wildcard filters \
         (matched {:.2} subscriptions per topic on average; the route replica named a shard \
         for {:.1} % of the topics):",
        args.matches,
        args.topic,
        st.subs.len() - wild.len(),
        wild.len(),
        delivered as f64 / args.matches.max(1) as f64,
        100.0 * routed as f64 / args.matches.max(1) as f64,
    );
    for (name, v) in [("route replica", &route_ns), ("local trie", &local_ns)] {
        let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        println!(
            "  {name}: mean {mean:.0} ns, p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
            percentile(v, 0.50),
            percentile(v, 0.99),
            percentile(v, 0.999),
            v.last().copied().unwrap_or(0)
        );
    }
    println!("(Instant::now() around each match adds ~20-40 ns to every figure)");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    shardmq_shards::reexec_with_lazy_commit();
    let cli = Cli::parse();
    match cli.command {
        Command::Sessions(args) => sessions(args),
        Command::Floor(args) => floor::run(args),
    }
}
