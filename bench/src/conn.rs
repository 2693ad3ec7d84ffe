//! `conn`: opens many connections, holds them idle, and reports how fast they came up.

use crate::clock;
use crate::runner::{self, Connector, Counters, Dial, Measured, Progress, Shared};
use crate::CommonArgs;
use clap::Args;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the reporting thread looks at the counters between its one-second lines.
const REPORT_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections to open.
    #[arg(short = 'c', long = "count", default_value_t = 200)]
    count: u64,
    /// Connections started per second over all executors; 0 = as fast as --handshakes-max
    /// allows.
    #[arg(short = 'R', long = "rate", default_value_t = 0)]
    rate: u64,
    /// Seconds to hold the connections once every one has been attempted, then exit;
    /// without it, hold until interrupted.
    #[arg(long)]
    hold_secs: Option<u64>,
}

/// What every executor of a `conn` run needs.
#[derive(Debug, Clone)]
struct Plan {
    dial: Dial,
    count: u64,
    rate: u64,
    keep_alive_secs: u16,
    prefix: String,
}

pub(crate) fn run(args: ConnArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let progress = common.progress();
    let dial = common.dial(false)?;
    progress.line(&format!(
        "conn: {} connections to {} over {} (MQTT level {}) from {}, rate {}",
        args.count,
        dial.opts.target,
        dial.opts.layers.describe(),
        dial.opts.protocol.level(),
        dial.describe_sources(),
        match args.rate {
            0 => "unbounded".to_string(),
            r => format!("{r}/s"),
        },
    ));
    let plan = Plan {
        dial,
        count: args.count,
        rate: args.rate,
        keep_alive_secs: common.keep_alive_secs,
        prefix: common.prefix.clone(),
    };
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let start_ns = clock::now_ns();
    shared.start(start_ns);
    let worker = runner::start(common.cpus(), plan, shared.clone(), executor)?;

    report(&args, progress, &shared, started, &worker);
    shared.finish();
    let results = worker
        .join()
        .map_err(|_| anyhow::anyhow!("executor thread panicked"))??;
    let total = Measured::merge_all(results);
    summary(&args, progress, &shared, start_ns, &total);
    Ok(())
}

/// Prints a line a second until every connection has been attempted and held for
/// `--hold-secs` (or forever), or the executors end.
fn report(
    args: &ConnArgs,
    progress: Progress,
    shared: &Shared,
    started: Instant,
    worker: &runner::Worker,
) {
    let c = &shared.counters;
    let mut tick = 1u64;
    let mut prev_succ = 0;
    let mut hold_until: Option<Instant> = None;
    loop {
        std::thread::sleep(REPORT_POLL);
        if worker.is_finished() {
            return;
        }
        let now = Instant::now();
        if now >= started + Duration::from_secs(tick) {
            let (succ, fail) = (
                Counters::get(&c.connect_succ),
                Counters::get(&c.connect_fail),
            );
            let disconnected = Counters::get(&c.disconnected);
            progress.line(&format!(
                "[{tick}s] connect_succ={succ} connect_fail={fail} rate={}/s connected={} \
                 disconnected={disconnected}",
                succ - prev_succ,
                succ - disconnected,
            ));
            prev_succ = succ;
            tick += 1;
        }
        if hold_until.is_none() {
            let (succ, fail) = (
                Counters::get(&c.connect_succ),
                Counters::get(&c.connect_fail),
            );
            if succ + fail >= args.count {
                let held = match args.hold_secs {
                    Some(s) => format!("for {s}s"),
                    None => "until interrupted".to_string(),
                };
                progress.line(&format!(
                    "all {} attempted in {:.2}s: connect_succ={succ} connect_fail={fail}; \
                     holding {held}",
                    args.count,
                    started.elapsed().as_secs_f64(),
                ));
                hold_until = Some(match args.hold_secs {
                    Some(s) => now + Duration::from_secs(s),
                    None => now + Duration::from_secs(u64::MAX / 4),
                });
            }
        }
        if hold_until.is_some_and(|h| now >= h) {
            return;
        }
    }
}

fn summary(args: &ConnArgs, progress: Progress, shared: &Shared, start_ns: u64, m: &Measured) {
    let c = &shared.counters;
    let succ = Counters::get(&c.connect_succ);
    let fail = Counters::get(&c.connect_fail);
    let disconnected = Counters::get(&c.disconnected);
    let secs = Counters::get(&c.last_connect_ns).saturating_sub(start_ns) as f64 / 1e9;
    let rate = if secs > 0.0 { succ as f64 / secs } else { 0.0 };
    if args.common.json {
        let json = serde_json::json!({
            "command": "conn",
            "count": args.count,
            "connect_succ": succ,
            "connect_fail": fail,
            "disconnected": disconnected,
            "connect_secs": secs,
            "connect_rate": rate,
            "handshake_latency_us": runner::latency_json(&m.latency_ns),
            "errors": m.errors.0,
        });
        println!("{json}");
        return;
    }
    progress.line(&format!(
        "summary: connect_succ={succ} connect_fail={fail} disconnected={disconnected} \
         in {secs:.2}s, connect rate {rate:.0}/s"
    ));
    m.print(progress, "handshake (socket open to CONNACK)");
}

/// One executor: starts its share of the connections, paced by `--rate`, and holds them until
/// the run is done.
async fn executor(index: usize, executors: usize, plan: Plan, shared: Arc<Shared>) -> Measured {
    let connector = Rc::new(Connector::new(&plan.dial));
    let measured = Rc::new(RefCell::new(Measured::default()));
    let start_ns = shared.start_ns().expect("started before the executors");
    let mut tasks = Vec::new();
    for seq in runner::my_share(plan.count, 0, index, executors) {
        if shared.stopped() {
            break;
        }
        runner::pace(start_ns, seq - 1, plan.rate).await;
        let client_id = format!("{}-conn-{seq}", plan.prefix);
        tasks.push(glommio::spawn_local(hold_one(
            seq,
            client_id,
            connector.clone(),
            plan.keep_alive_secs,
            shared.clone(),
            measured.clone(),
        )));
    }
    shared.wait_done().await;
    // Dropping the tasks cancels them, closing their sockets.
    drop(tasks);
    measured.take()
}

/// One connection: connect, then idle until the run ends or the broker drops it.
async fn hold_one(
    seq: u64,
    client_id: String,
    connector: Rc<Connector>,
    keep_alive_secs: u16,
    shared: Arc<Shared>,
    measured: Rc<RefCell<Measured>>,
) {
    let c = &shared.counters;
    let result = connector.connect(seq, &client_id).await;
    // Before the success/failure count, so that the reporter, seeing every connection
    // accounted for, also sees when the last one ended.
    Counters::max(&c.last_connect_ns, clock::now_ns());
    let mut client = match result {
        Ok((client, handshake_ns)) => {
            measured
                .borrow_mut()
                .latency_ns
                .saturating_record(handshake_ns);
            Counters::add(&c.connect_succ, 1);
            client
        }
        Err(e) => {
            measured.borrow_mut().errors.record(e);
            Counters::add(&c.connect_fail, 1);
            return;
        }
    };
    let why = client.hold_idle(keep_alive_secs).await;
    measured.borrow_mut().errors.record(format!(
        "dropped after CONNACK: {}",
        crate::client::describe_io(&why)
    ));
    Counters::add(&c.disconnected, 1);
}
