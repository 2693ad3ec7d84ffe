//! `pubsub`: subscribers connect and subscribe, then publishers publish for a fixed time.
//! Each payload starts with its send time (8 bytes, little-endian ns since the process's time
//! base), so subscribers in the same process measure end-to-end latency.

use crate::client::{describe_io, Client, READ_CHUNK_BYTES};
use crate::runner::{self, Connector, Counters, Dial, Measured, Progress, Shared, POLL_FLAGS};
use crate::{clock, topic, CommonArgs};
use bytes::{Bytes, BytesMut};
use clap::Args;
use shardmq_broker::topic::filter_matches;
use shardmq_codec::{
    encode_publish, Ack, AckProperties, ByteStr, Disconnect, DisconnectProperties, Packet,
    Protocol, Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of the send timestamp at the start of every payload.
const TIMESTAMP_BYTES: usize = 8;
/// Most messages a publisher encodes into one write.
const PUBLISH_BATCH_MAX: u64 = 64;
/// How long a client's read waits before it looks at the run's flags again.
const READ_POLL: Duration = Duration::from_millis(100);
/// After the publishers stop, the run ends once nothing has been received for this long...
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// ...or after this long at most.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// A publisher waiting for outstanding messages to be received looks again after this long...
const WINDOW_POLL: Duration = Duration::from_micros(50);
/// ...and gives up waiting after this long (messages were lost: the window would never drain).
const WINDOW_WAIT_MAX: Duration = Duration::from_millis(100);
/// Most (publisher, subscriber) pairs whose topics are matched to know the fan-out.
const FANOUT_PAIRS_MAX: u64 = 10_000_000;
/// Extra time, beyond the connect timeout, allowed for subscribing and connecting publishers.
const SETUP_SLACK: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct PubsubArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Publishers (`pubsub`).
    #[arg(long, default_value_t = 1)]
    pubs: u64,
    /// Subscribers (`pubsub`).
    #[arg(long, default_value_t = 1)]
    subs: u64,
    /// Clients of a `sub` or `pub` run (emqtt-bench's -c); ignored by `pubsub`.
    #[arg(short = 'c', long = "count", default_value_t = 1)]
    count: u64,
    /// Subscribe through the shared-subscription group G: filters become $share/G/<filter>.
    #[arg(long, value_name = "G")]
    shared_group: Option<String>,
    /// Milliseconds between two messages of one publisher (emqtt-bench's -I); overrides --rate.
    #[arg(short = 'I', long = "interval-ms")]
    interval_ms: Option<u64>,
    /// Messages to publish over the whole run (all publishers); 0 = no limit.
    #[arg(short = 'L', long = "limit", default_value_t = 0)]
    limit: u64,
    /// `sub` and `pub`: spread the clients over this many worker processes (this program run
    /// again with a slice of the client numbers each); their counters and summaries are merged.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    procs: u64,
    /// Client numbers start after this one (set by --procs for its workers).
    #[arg(long, default_value_t = 0, hide = true)]
    index_offset: u64,
    /// Set by --procs on its workers: the JSON summary carries the latency histogram.
    #[arg(long, hide = true)]
    worker: bool,
    /// Topic template for publishers (and subscribers, unless --sub-topic): %i is the client's
    /// number from 1, %c its client identifier.
    #[arg(short = 't', long, default_value = "bench/%i")]
    topic: String,
    /// Topic filter template for subscribers, when it differs from --topic (e.g. "bench/#").
    #[arg(long)]
    sub_topic: Option<String>,
    /// QoS of the publishes and of the subscriptions.
    #[arg(short = 'q', long, default_value = "0", value_parser = crate::parse_qos)]
    qos: QoS,
    /// Payload size in bytes (at least 8: the payload starts with the send timestamp).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    size: usize,
    /// Seconds of publishing (of receiving, for `sub`); 0 = until Ctrl-C (or -L).
    #[arg(long, alias = "duration", default_value_t = 10)]
    duration_secs: u64,
    /// Messages per second per publisher; 0 = as fast as the connection takes them (QoS 0:
    /// until the socket pushes back; QoS 1/2: within the --inflight window).
    #[arg(short = 'r', long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    /// With --rate 0: messages sent but not yet received, per publisher, beyond which
    /// publishers wait (at most 100 ms) for subscribers to catch up; the run's pipeline bound.
    /// 0 = bounded only by the sockets (QoS 0 then measures the broker shedding load).
    /// Needs the fan-out, known when filters need no shared-subscription semantics.
    #[arg(long, default_value_t = 1000)]
    window: u64,
}

/// What every executor of a `pubsub` run needs.
#[derive(Debug, Clone)]
struct Plan {
    dial: Dial,
    prefix: String,
    pubs: u64,
    subs: u64,
    topic: String,
    sub_topic: String,
    qos: QoS,
    size: usize,
    /// Messages per second per publisher, for display; 0 = unpaced.
    rate: u64,
    /// Nanoseconds between two messages of one publisher; 0 = unpaced.
    interval_ns: u64,
    inflight: u16,
    /// Messages over the run (each publisher sends its share); 0 = no limit.
    limit: u64,
    /// Added to every client number (ids, topics, source addresses): a --procs worker's slice.
    index_offset: u64,
    /// Subscribers each publisher's topic reaches, by publisher number - 1; `None` unknown.
    fanout: Option<Arc<[u64]>>,
    /// Bound on messages sent and not yet received over all publishers; 0 = none.
    outstanding_max: u64,
}

/// Which clients a run has: `pubsub` both, `sub` and `pub` one kind each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Both,
    Sub,
    Pub,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Both => "pubsub",
            Mode::Sub => "sub",
            Mode::Pub => "pub",
        }
    }
}

/// Set by SIGINT/SIGTERM: the run ends as if its time were up and prints its summary.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub(crate) fn run(mut args: PubsubArgs, mode: Mode) -> anyhow::Result<()> {
    catch_interrupts();
    if args.procs > 1 {
        anyhow::ensure!(mode != Mode::Both, "--procs is for sub and pub");
        let progress = args.common.progress();
        return crate::procs::run(mode.name(), args.count, args.limit, args.procs, progress);
    }
    match mode {
        Mode::Both => {}
        Mode::Sub => (args.subs, args.pubs) = (args.count, 0),
        Mode::Pub => (args.subs, args.pubs) = (0, args.count),
    }
    if let Some(g) = &args.shared_group {
        let filter = args.sub_topic.clone().unwrap_or_else(|| args.topic.clone());
        args.sub_topic = Some(format!("$share/{g}/{filter}"));
    }
    let interval_ns = match (args.interval_ms, args.rate) {
        (Some(ms), _) => ms.saturating_mul(1_000_000).max(1),
        (None, 0) => 0,
        (None, r) => (1_000_000_000 / r).max(1),
    };
    args.rate = 1_000_000_000u64
        .checked_div(interval_ns)
        .map_or(0, |r| r.max(1));
    let args = args;
    let common = &args.common;
    anyhow::ensure!(
        args.size >= TIMESTAMP_BYTES,
        "--size must be at least {TIMESTAMP_BYTES} bytes: the payload starts with the send time"
    );
    anyhow::ensure!(
        args.pubs + args.subs > 0 && (mode != Mode::Both || (args.pubs > 0 && args.subs > 0)),
        "there must be at least one publisher and one subscriber (-c for sub and pub)"
    );
    let progress = common.progress();
    let plan = Plan {
        dial: common.dial(true)?,
        prefix: common.prefix.clone(),
        pubs: args.pubs,
        subs: args.subs,
        topic: args.topic.clone(),
        sub_topic: args.sub_topic.clone().unwrap_or_else(|| args.topic.clone()),
        qos: args.qos,
        size: args.size,
        rate: args.rate,
        interval_ns,
        inflight: args.inflight,
        limit: args.limit,
        index_offset: args.index_offset,
        fanout: None,
        outstanding_max: 0,
    };
    let plan = Plan {
        fanout: (mode == Mode::Both)
            .then(|| expected_fanout(&plan).map(Arc::from))
            .flatten(),
        ..plan
    };
    let plan = Plan {
        outstanding_max: match (&plan.fanout, args.rate) {
            (Some(_), 0) => args.window.saturating_mul(args.pubs),
            _ => 0,
        },
        ..plan
    };
    progress.line(&format!(
        "{}: {} publishers -> {} subscribers on {} over {} (MQTT level {}), topic {:?}, \
         filter {:?}, QoS {}, {} bytes, {}s, rate {}",
        mode.name(),
        plan.pubs,
        plan.subs,
        plan.dial.opts.target,
        plan.dial.opts.layers.describe(),
        plan.dial.opts.protocol.level(),
        plan.topic,
        plan.sub_topic,
        plan.qos as u8,
        plan.size,
        args.duration_secs,
        match plan.rate {
            0 => "unbounded".to_string(),
            r => format!("{r}/s per publisher"),
        },
    ));
    match (&plan.fanout, plan.outstanding_max) {
        (Some(f), max) => progress.line(&format!(
            "fan-out: {} deliveries per round of publishes; outstanding bound {}",
            f.iter().sum::<u64>(),
            match max {
                0 => "none".to_string(),
                m => m.to_string(),
            }
        )),
        (None, _) => progress.line("fan-out unknown: no outstanding bound, no loss count"),
    }
    let fanout_known = plan.fanout.is_some();
    let shared = Arc::new(Shared::default());
    let worker = runner::start(common.cpus(), plan, shared.clone(), executor)?;

    let outcome = drive(&args, mode, progress, &shared, &worker);
    shared.finish();
    let results = worker
        .join()
        .map_err(|_| anyhow::anyhow!("executor thread panicked"))??;
    let window = outcome?;
    let measured = Measured::merge_all(results);
    summary(
        &args,
        mode,
        progress,
        &shared,
        window,
        fanout_known,
        &measured,
    );
    Ok(())
}

/// The client identifier of subscriber or publisher `seq`.
fn client_id(prefix: &str, role: Role, seq: u64) -> String {
    let tag = match role {
        Role::Subscriber => "sub",
        Role::Publisher => "pub",
    };
    format!("{prefix}-{tag}-{seq}")
}

/// How many subscribers each publisher's topic reaches, by matching every expanded topic
/// against every expanded filter (a shared group counts once); `None` when that is too many pairs.
fn expected_fanout(plan: &Plan) -> Option<Vec<u64>> {
    if plan.pubs.saturating_mul(plan.subs) > FANOUT_PAIRS_MAX {
        return None;
    }
    let filters: Vec<String> = (1..=plan.subs)
        .map(|seq| {
            let id = client_id(&plan.prefix, Role::Subscriber, seq);
            topic::expand(&plan.sub_topic, seq, &id)
        })
        .collect();
    // A shared subscription ($share/G/F) delivers each message to one member of group G:
    // a message counts once per group with a member whose F matches. ($queue/F is one group.)
    let split = |f: &str| -> (Option<String>, String) {
        if let Some(rest) = f.strip_prefix("$share/") {
            match rest.split_once('/') {
                Some((g, filter)) => (Some(g.to_string()), filter.to_string()),
                None => (None, f.to_string()),
            }
        } else if let Some(filter) = f.strip_prefix("$queue/") {
            (Some(String::new()), filter.to_string())
        } else {
            (None, f.to_string())
        }
    };
    let filters: Vec<(Option<String>, String)> = filters.iter().map(|f| split(f)).collect();
    let fanout = (1..=plan.pubs)
        .map(|seq| {
            let id = client_id(&plan.prefix, Role::Publisher, seq);
            let name = topic::expand(&plan.topic, seq, &id);
            let mut groups = std::collections::HashSet::new();
            filters
                .iter()
                .filter(|(group, f)| {
                    filter_matches(f, &name)
                        && group.as_ref().is_none_or(|g| groups.insert(g.clone()))
                })
                .count() as u64
        })
        .collect();
    Some(fanout)
}

/// When publishing started and stopped, in ns since the process base.
#[derive(Debug, Clone, Copy)]
struct Window {
    start_ns: u64,
    stop_ns: u64,
}

/// Waits for the clients to be ready, starts the publishers, prints a line a second, stops
/// them after `--duration-secs` (or -L, or Ctrl-C) and waits for the subscribers to drain.
fn drive(
    args: &PubsubArgs,
    mode: Mode,
    progress: Progress,
    shared: &Shared,
    worker: &runner::Worker,
) -> anyhow::Result<Window> {
    let c = &shared.counters;
    let clients = args.pubs + args.subs;
    let connect_timeout = Duration::from_secs(args.common.connect_timeout_secs);
    let setup_deadline = Instant::now() + connect_timeout + SETUP_SLACK;
    let mut next_line = Instant::now() + Duration::from_secs(1);
    loop {
        let ready = Counters::get(&c.subscribed) + Counters::get(&c.pub_ready);
        let failed = Counters::get(&c.connect_fail) + Counters::get(&c.sub_fail);
        if ready + failed >= clients || interrupted() {
            break;
        }
        anyhow::ensure!(!worker.is_finished(), "the executors ended during setup");
        anyhow::ensure!(
            Instant::now() < setup_deadline,
            "setup timed out: {ready} of {clients} clients ready, {failed} failed"
        );
        if Instant::now() >= next_line {
            progress.line(&format!(
                "[setup] connect_succ={} ready={ready} failed={failed} of {clients}",
                Counters::get(&c.connect_succ)
            ));
            next_line += Duration::from_secs(1);
        }
        std::thread::sleep(POLL_FLAGS);
    }
    let (subscribed, pub_ready) = (Counters::get(&c.subscribed), Counters::get(&c.pub_ready));
    anyhow::ensure!(
        (subscribed > 0 || args.subs == 0) && (pub_ready > 0 || args.pubs == 0),
        "no subscriber ({subscribed}) or no publisher ({pub_ready}) is ready: connect_fail={} \
         sub_fail={}",
        Counters::get(&c.connect_fail),
        Counters::get(&c.sub_fail),
    );
    progress.line(&format!(
        "{subscribed} subscribers subscribed, {pub_ready} publishers connected; {}",
        if mode == Mode::Sub {
            "receiving"
        } else {
            "publishing"
        }
    ));

    let started = Instant::now();
    let start_ns = clock::now_ns();
    shared.start(start_ns);
    let (mut prev_sent, mut prev_recv) = (0, 0);
    let mut tick = 0u64;
    loop {
        if (args.duration_secs > 0 && tick >= args.duration_secs) || interrupted() {
            break;
        }
        if args.limit > 0 && Counters::get(&c.sent) >= args.limit {
            break;
        }
        tick += 1;
        let due = started + Duration::from_secs(tick);
        while Instant::now() < due && !interrupted() {
            anyhow::ensure!(
                !worker.is_finished(),
                "the executors ended while publishing"
            );
            if args.limit > 0 && Counters::get(&c.sent) >= args.limit {
                break;
            }
            std::thread::sleep(POLL_FLAGS.min(due.saturating_duration_since(Instant::now())));
        }
        let (sent, recv) = (Counters::get(&c.sent), Counters::get(&c.received));
        let errors = Counters::get(&c.connect_fail)
            + Counters::get(&c.sub_fail)
            + Counters::get(&c.disconnected);
        let line = format!(
            "[{tick}s] connect_succ={} pub={} recv={} pub_overrun={} errors={errors} \
             pub_total={sent} recv_total={recv}",
            Counters::get(&c.connect_succ),
            sent - prev_sent,
            recv - prev_recv,
            Counters::get(&c.pub_overrun),
        );
        if args.common.json {
            // One JSON object per second on stdout too, for a parent merging several runs.
            println!(
                "{}",
                serde_json::json!({
                    "tick": tick,
                    "connect_succ": Counters::get(&c.connect_succ),
                    "pub": sent - prev_sent,
                    "recv": recv - prev_recv,
                    "pub_overrun": Counters::get(&c.pub_overrun),
                    "errors": errors,
                })
            );
        }
        progress.line(&line);
        (prev_sent, prev_recv) = (sent, recv);
    }
    shared.stop();
    let stop_ns = clock::now_ns();

    if mode != Mode::Pub && !interrupted() {
        let drain_until = Instant::now() + DRAIN_MAX;
        let mut last = (Counters::get(&c.received), Instant::now());
        while Instant::now() < drain_until && last.1.elapsed() < DRAIN_QUIET && !interrupted() {
            std::thread::sleep(POLL_FLAGS);
            let recv = Counters::get(&c.received);
            if recv != last.0 {
                last = (recv, Instant::now());
            }
        }
    }
    Ok(Window { start_ns, stop_ns })
}

fn summary(
    args: &PubsubArgs,
    mode: Mode,
    progress: Progress,
    shared: &Shared,
    w: Window,
    fanout_known: bool,
    m: &Measured,
) {
    let c = &shared.counters;
    let sent = Counters::get(&c.sent);
    let received = Counters::get(&c.received);
    let pub_secs = w.stop_ns.saturating_sub(w.start_ns) as f64 / 1e9;
    // A `sub` run counts from its first message: its publishers start when they like.
    let recv_from = match mode {
        Mode::Sub => Counters::get(&c.first_recv_ns).max(w.start_ns),
        _ => w.start_ns,
    };
    let recv_secs = Counters::get(&c.last_recv_ns).saturating_sub(recv_from) as f64 / 1e9;
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let (pub_rate, recv_rate) = (per_sec(sent, pub_secs), per_sec(received, recv_secs));
    let expected = fanout_known.then(|| Counters::get(&c.expected));
    let lost = expected.map(|e| e.saturating_sub(received));
    let stalls = Counters::get(&c.window_stalls);
    if args.common.json {
        let json = serde_json::json!({
            "command": mode.name(),
            "summary": true,
            "pubs": args.pubs,
            "subs": args.subs,
            "qos": args.qos as u8,
            "payload_bytes": args.size,
            "rate_per_pub": args.rate,
            "duration_secs": pub_secs,
            "sent": sent,
            "received": received,
            "expected": expected,
            "lost": lost,
            "window_stalls": stalls,
            "pub_overrun": Counters::get(&c.pub_overrun),
            "connect_succ": Counters::get(&c.connect_succ),
            "pub_rate": pub_rate,
            "recv_rate": recv_rate,
            "latency_us": runner::latency_json(&m.latency_ns),
            "connect_fail": Counters::get(&c.connect_fail),
            "sub_fail": Counters::get(&c.sub_fail),
            "disconnected": Counters::get(&c.disconnected),
            "errors": m.errors.0,
            "latency_hist": args.worker.then(|| crate::procs::histogram_pairs(&m.latency_ns)),
        });
        println!("{json}");
        return;
    }
    progress.line(&format!(
        "summary: sent={sent} in {pub_secs:.2}s ({pub_rate:.0} msg/s), received={received} in \
         {recv_secs:.2}s ({recv_rate:.0} msg/s)"
    ));
    if let (Some(expected), Some(lost)) = (expected, lost) {
        progress.line(&format!(
            "expected deliveries={expected} lost={lost} window_stalls={stalls}"
        ));
    }
    m.print(progress, "latency (publisher encode to subscriber decode)");
}

/// One executor: its share of the subscribers, then of the publishers, until the run is done.
async fn executor(index: usize, executors: usize, plan: Plan, shared: Arc<Shared>) -> Measured {
    let connector = Rc::new(Connector::new(&plan.dial));
    let plan = Rc::new(plan);
    let measured = Rc::new(RefCell::new(Measured::default()));
    let mut tasks = Vec::new();
    for seq in runner::my_share(plan.subs, 0, index, executors) {
        let role = Role::Subscriber;
        tasks.push(glommio::spawn_local(client_task(
            role,
            seq,
            plan.clone(),
            connector.clone(),
            shared.clone(),
            measured.clone(),
        )));
    }
    // Publishers continue the deal after the subscribers, and connect with publisher numbers
    // (and source addresses) after theirs.
    let offset = (plan.subs % executors as u64) as usize;
    for seq in runner::my_share(plan.pubs, offset, index, executors) {
        tasks.push(glommio::spawn_local(client_task(
            Role::Publisher,
            seq,
            plan.clone(),
            connector.clone(),
            shared.clone(),
            measured.clone(),
        )));
    }
    for task in tasks {
        task.await;
    }
    measured.take()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Subscriber,
    Publisher,
}

/// One client from connect to the end of the run; failures are counted and tallied.
async fn client_task(
    role: Role,
    seq: u64,
    plan: Rc<Plan>,
    connector: Rc<Connector>,
    shared: Arc<Shared>,
    measured: Rc<RefCell<Measured>>,
) {
    let c = &shared.counters;
    let (tag, connect_seq) = match role {
        Role::Subscriber => ("sub", seq + plan.index_offset),
        Role::Publisher => ("pub", plan.subs + seq + plan.index_offset),
    };
    let number = seq + plan.index_offset;
    let client_id = client_id(&plan.prefix, role, number);
    let mut client = match connector.connect(connect_seq, &client_id).await {
        Ok((client, _)) => client,
        Err(e) => {
            measured.borrow_mut().errors.record(format!("{tag}: {e}"));
            Counters::add(&c.connect_fail, 1);
            return;
        }
    };
    Counters::add(&c.connect_succ, 1);
    let result = match role {
        Role::Subscriber => {
            let filter = topic::expand(&plan.sub_topic, number, &client_id);
            subscribe(&mut client, &filter, &plan, &shared, &measured).await
        }
        Role::Publisher => {
            let topic = topic::expand(&plan.topic, number, &client_id);
            let fanout = plan.fanout.as_ref().map(|f| f[(seq - 1) as usize]);
            // -L is over the whole run: publisher `seq` gets its share of it.
            let limit = match plan.limit {
                0 => u64::MAX,
                l => l / plan.pubs + u64::from(seq <= l % plan.pubs),
            };
            publish(&mut client, &topic, fanout, limit, &plan, &shared).await
        }
    };
    match result {
        Ok(()) => {
            let bye = Packet::Disconnect(Disconnect {
                reason: ReasonCode::NORMAL_DISCONNECTION,
                properties: DisconnectProperties::default(),
            });
            client.queue(&bye);
            // Best effort: the run is over either way.
            let _ = client.flush().await;
        }
        Err(e) => {
            measured
                .borrow_mut()
                .errors
                .record(format!("{tag}: {}", describe_io(&e)));
            Counters::add(&c.disconnected, 1);
        }
    }
}

/// Subscribes, then receives until the run is done: counts messages, records their latency
/// and acknowledges QoS 1/2.
async fn subscribe(
    client: &mut Client,
    filter: &str,
    plan: &Plan,
    shared: &Shared,
    measured: &RefCell<Measured>,
) -> io::Result<()> {
    let c = &shared.counters;
    client.queue(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter {
            filter: ByteStr::from(filter),
            options: SubscriptionOptions {
                qos: plan.qos,
                ..SubscriptionOptions::default()
            },
        }],
        properties: SubscribeProperties::default(),
    }));
    client.flush().await?;
    client.set_read_timeout(Some(plan.dial.timeout))?;
    let granted = loop {
        let answer = client.recv(READ_CHUNK_BYTES).await;
        match answer {
            Ok(Packet::SubAck(ack)) => break ack.reasons.first().copied(),
            Ok(_) => {}
            Err(e) => {
                Counters::add(&c.sub_fail, 1);
                return Err(e);
            }
        }
    };
    match granted {
        Some(code) if !code.is_error() => Counters::add(&c.subscribed, 1),
        other => {
            Counters::add(&c.sub_fail, 1);
            return Err(io::Error::other(format!("SUBACK {other:?}")));
        }
    }
    client.set_read_timeout(Some(READ_POLL))?;
    // Decode first: what came in the same read as the SUBACK (retained messages, an early
    // publish) is already buffered and must not wait for more bytes.
    loop {
        let now_ns = clock::now_ns();
        let mut received = 0;
        while let Some(packet) = client.try_decode()? {
            match packet {
                Packet::Publish(p) => {
                    received += 1;
                    if let Some(ts) = p.payload.get(..TIMESTAMP_BYTES) {
                        let sent_ns = u64::from_le_bytes(ts.try_into().expect("8 bytes"));
                        measured
                            .borrow_mut()
                            .latency_ns
                            .saturating_record(now_ns.saturating_sub(sent_ns));
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => client.queue(&Packet::PubAck(ack(p.pkid))),
                        QoS::ExactlyOnce => client.queue(&Packet::PubRec(ack(p.pkid))),
                    }
                }
                Packet::PubRel(a) => client.queue(&Packet::PubComp(ack(a.pkid))),
                Packet::Disconnect(d) => {
                    return Err(io::Error::other(format!("DISCONNECT {:?}", d.reason)));
                }
                _ => {}
            }
        }
        if received > 0 {
            Counters::first(&c.first_recv_ns, now_ns);
            Counters::max(&c.last_recv_ns, now_ns);
            Counters::add(&c.received, received);
        }
        client.flush().await?;
        if shared.done() {
            return Ok(());
        }
        match client.fill(READ_CHUNK_BYTES).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
}

fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        reason: ReasonCode::SUCCESS,
        properties: AckProperties::default(),
    }
}

/// Waits for the start, publishes until the stop (paced by `--rate`, QoS 1/2 within the
/// inflight window), then waits for the run to be done.
async fn publish(
    client: &mut Client,
    topic: &str,
    fanout: Option<u64>,
    limit: u64,
    plan: &Plan,
    shared: &Shared,
) -> io::Result<()> {
    let c = &shared.counters;
    Counters::add(&c.pub_ready, 1);
    let start_ns = loop {
        if shared.done() {
            return Ok(());
        }
        if let Some(ns) = shared.start_ns() {
            break ns;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    let template = PublishTemplate::new(topic, plan.qos, plan.size, client.protocol());
    let acked = plan.qos != QoS::AtMostOnce;
    let mut window = PacketIds::new(plan.inflight);
    let mut sent = 0u64;
    client.set_read_timeout(Some(READ_POLL))?;
    while !shared.stopped() && sent < limit {
        let due = match plan.interval_ns {
            0 => PUBLISH_BATCH_MAX,
            interval => {
                let elapsed = clock::now_ns() - start_ns;
                let behind = (elapsed / interval + 1).saturating_sub(sent);
                if behind > PUBLISH_BATCH_MAX {
                    Counters::add(&c.pub_overrun, 1);
                }
                behind.min(PUBLISH_BATCH_MAX)
            }
        }
        .min(limit - sent);
        if plan.outstanding_max > 0 {
            wait_for_subscribers(plan.outstanding_max, shared).await;
        }
        let batch = if acked {
            due.min(window.room() as u64)
        } else {
            due
        };
        for _ in 0..batch {
            let pkid = if acked { window.take() } else { 0 };
            template.append(&mut client.wbuf, pkid, clock::now_ns());
        }
        if batch > 0 {
            client.flush().await?;
            sent += batch;
            Counters::add(&c.sent, batch);
            if let Some(f) = fanout {
                Counters::add(&c.expected, f * batch);
            }
        }
        if acked {
            let read = if batch == 0 && window.room() == 0 {
                Some(client.fill(READ_CHUNK_BYTES).await)
            } else {
                client.try_fill(READ_CHUNK_BYTES).await
            };
            handle_acks(client, read, &mut window)?;
            client.flush().await?;
        }
        if plan.interval_ns > 0 && due == 0 {
            let next_ns = start_ns + sent.saturating_mul(plan.interval_ns);
            glommio::timer::sleep(clock::until(next_ns).max(Duration::from_micros(10))).await;
        } else {
            glommio::yield_if_needed().await;
        }
    }
    // Complete the QoS 1/2 exchanges in flight (a QoS 2 message may only be delivered once
    // the broker has our PUBREL).
    while window.room() < usize::from(plan.inflight) && !shared.done() {
        let read = Some(client.fill(READ_CHUNK_BYTES).await);
        handle_acks(client, read, &mut window)?;
        client.flush().await?;
    }
    shared.wait_done().await;
    Ok(())
}

/// Takes the result of a read (`None`: nothing was there) and handles the acks decoded:
/// frees packet identifiers, queues PUBREL for PUBREC.
fn handle_acks(
    client: &mut Client,
    read: Option<io::Result<usize>>,
    window: &mut PacketIds,
) -> io::Result<()> {
    match read {
        None | Some(Ok(_)) => {}
        Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {}
        Some(Err(e)) => return Err(e),
    }
    while let Some(packet) = client.try_decode()? {
        match packet {
            Packet::PubAck(a) | Packet::PubComp(a) => {
                window.release(a.pkid);
            }
            Packet::PubRec(a) => client.queue(&Packet::PubRel(ack(a.pkid))),
            Packet::Disconnect(d) => {
                return Err(io::Error::other(format!("DISCONNECT {:?}", d.reason)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Waits while more than `max` deliveries are outstanding over the whole run, for at most
/// [`WINDOW_WAIT_MAX`] (past that, messages were lost and the window would never drain).
async fn wait_for_subscribers(max: u64, shared: &Shared) {
    let c = &shared.counters;
    let outstanding = || Counters::get(&c.expected).saturating_sub(Counters::get(&c.received));
    if outstanding() < max {
        return;
    }
    let give_up_ns = clock::now_ns() + WINDOW_WAIT_MAX.as_nanos() as u64;
    while outstanding() >= max && !shared.stopped() {
        if clock::now_ns() >= give_up_ns {
            Counters::add(&c.window_stalls, 1);
            return;
        }
        glommio::timer::sleep(WINDOW_POLL).await;
    }
}

/// One PUBLISH encoded once; each message copies it and patches the packet identifier and
/// the timestamp at the start of the payload.
#[derive(Debug)]
struct PublishTemplate {
    bytes: Bytes,
    timestamp_at: usize,
    pkid_at: Option<usize>,
}

impl PublishTemplate {
    fn new(topic: &str, qos: QoS, size: usize, protocol: Protocol) -> PublishTemplate {
        assert!(size >= TIMESTAMP_BYTES);
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteStr::from(topic),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; size]),
        };
        let mut buf = BytesMut::new();
        encode_publish(&publish, protocol, &mut buf);
        // The payload ends the packet; the packet identifier follows the topic, after the
        // fixed header (type byte and a 1..=4-byte remaining length).
        let length_bytes = buf[1..]
            .iter()
            .position(|b| b & 0x80 == 0)
            .expect("a remaining length")
            + 1;
        let pkid_at = (qos != QoS::AtMostOnce).then(|| 1 + length_bytes + 2 + topic.len());
        if let Some(at) = pkid_at {
            assert_eq!(buf[at..at + 2], [0, 1], "packet identifier where expected");
        }
        PublishTemplate {
            timestamp_at: buf.len() - size,
            bytes: buf.freeze(),
            pkid_at,
        }
    }

    fn append(&self, out: &mut BytesMut, pkid: u16, timestamp_ns: u64) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        let ts = at + self.timestamp_at;
        out[ts..ts + TIMESTAMP_BYTES].copy_from_slice(&timestamp_ns.to_le_bytes());
        if let Some(p) = self.pkid_at {
            out[at + p..at + p + 2].copy_from_slice(&pkid.to_be_bytes());
        }
    }
}

/// Packet identifiers of a publisher's unacknowledged QoS 1/2 messages, at most `max`.
#[derive(Debug)]
struct PacketIds {
    in_use: Box<[u64; 1024]>,
    len: usize,
    max: usize,
    next: u16,
}

impl PacketIds {
    fn new(max: u16) -> PacketIds {
        assert!(max > 0);
        PacketIds {
            in_use: Box::new([0; 1024]),
            len: 0,
            max: usize::from(max),
            next: 1,
        }
    }

    fn room(&self) -> usize {
        self.max - self.len
    }

    /// A free identifier; only when there is room.
    fn take(&mut self) -> u16 {
        assert!(self.room() > 0);
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            let (word, bit) = (usize::from(id / 64), id % 64);
            if self.in_use[word] & (1 << bit) == 0 {
                self.in_use[word] |= 1 << bit;
                self.len += 1;
                return id;
            }
        }
    }

    /// Frees `id`; false if it was not in use (a duplicate or stray ack).
    fn release(&mut self, id: u16) -> bool {
        let (word, bit) = (usize::from(id / 64), id % 64);
        if self.in_use[word] & (1 << bit) == 0 {
            return false;
        }
        self.in_use[word] &= !(1 << bit);
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_codec::Decoder;

    #[test]
    fn template_patches_timestamp_and_packet_id() {
        for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for size in [8, 64, 300] {
                    let template = PublishTemplate::new("bench/12", qos, size, protocol);
                    let mut buf = BytesMut::new();
                    template.append(&mut buf, 77, 0x0102_0304_0506_0708);
                    template.append(&mut buf, 65535, 9);
                    let mut decoder = Decoder::with_protocol(protocol, 1 << 20);
                    for (pkid, ts) in [(77u16, 0x0102_0304_0506_0708u64), (65535, 9)] {
                        let Some(Packet::Publish(p)) = decoder.decode(&mut buf).unwrap() else {
                            panic!("not a publish");
                        };
                        assert_eq!(p.topic.as_str(), "bench/12");
                        assert_eq!(p.qos, qos);
                        assert_eq!(p.payload.len(), size);
                        assert_eq!(p.payload[..8], ts.to_le_bytes());
                        if qos != QoS::AtMostOnce {
                            assert_eq!(p.pkid, pkid);
                        }
                    }
                    assert!(buf.is_empty());
                }
            }
        }
    }

    #[test]
    fn packet_ids_wrap_and_skip_those_in_use() {
        let mut ids = PacketIds::new(3);
        assert_eq!((ids.take(), ids.take(), ids.take()), (1, 2, 3));
        assert_eq!(ids.room(), 0);
        assert!(ids.release(2));
        assert!(!ids.release(2));
        ids.next = u16::MAX;
        assert_eq!(ids.take(), u16::MAX);
        assert!(ids.release(1));
        // 1 is free again, 2 too; 3 is still in use.
        assert_eq!(ids.take(), 1);
        assert_eq!(ids.room(), 0);
    }
}
