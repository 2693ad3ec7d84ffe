//! `routes`: a route storm. Opens `-c` connections and has each subscribe `--filters` distinct
//! filters, one filter per SUBSCRIBE, at most `--pipeline` SUBSCRIBEs unanswered per
//! connection. Measures the SUBACK latency (SUBSCRIBE written to SUBACK read; on a cluster node
//! the SUBACK waits for the route to commit) and the storm's duration (first SUBSCRIBE to last
//! SUBACK), prints the summary, then holds the connections (so that the routes stay) for
//! `--hold-secs`.

use crate::client::{Client, READ_CHUNK_BYTES};
use crate::runner::{self, latency_histogram, latency_json, Connector, Dial};
use crate::{clock, topic, CommonArgs};
use clap::Args;
use hdrhistogram::Histogram;
use shardmq_codec::{
    ByteStr, Packet, QoS, Subscribe, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
};
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often the reporting thread looks at the counters.
const REPORT_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
pub(crate) struct RoutesArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections.
    #[arg(short = 'c', long = "count", default_value_t = 100)]
    count: u64,
    /// Distinct filters each connection subscribes, one per SUBSCRIBE.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=65535))]
    filters: u64,
    /// Filter template: %i is the connection's number from 1, %f the filter's number from 1.
    #[arg(long, default_value = "storm/%i/%f")]
    filter: String,
    /// SUBSCRIBEs unanswered per connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=65535))]
    pipeline: u64,
    /// Seconds to hold the connections (and so the routes) after the storm, then exit.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Bound on the storm: a SUBACK that takes longer fails its connection.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    suback_timeout_secs: u64,
}

/// What every executor needs.
#[derive(Debug, Clone)]
struct Plan {
    dial: Dial,
    count: u64,
    filters: u64,
    filter: String,
    pipeline: u64,
    prefix: String,
    keep_alive_secs: u16,
    suback_timeout: Duration,
    hold_until: Arc<AtomicU64>,
}

/// Counters shared by the executors and the reporting thread.
#[derive(Debug, Default)]
struct Tally {
    connected: AtomicU64,
    subscribed: AtomicU64,
    refused: AtomicU64,
    /// Connections done with their storm, failed or not.
    finished: AtomicU64,
    failed: AtomicU64,
    first_sent_ns: AtomicU64,
    last_ack_ns: AtomicU64,
}

pub(crate) fn run(args: RoutesArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let progress = common.progress();
    let dial = common.dial(false)?;
    progress.line(&format!(
        "routes: {} connections x {} filters ({}) to {}, pipeline {}",
        args.count, args.filters, args.filter, dial.opts.target, args.pipeline
    ));
    let tally = Arc::new(Tally {
        first_sent_ns: AtomicU64::new(u64::MAX),
        ..Tally::default()
    });
    let hold_until = Arc::new(AtomicU64::new(u64::MAX));
    let plan = Plan {
        dial,
        count: args.count,
        filters: args.filters,
        filter: args.filter.clone(),
        pipeline: args.pipeline,
        prefix: common.prefix.clone(),
        keep_alive_secs: common.keep_alive_secs,
        suback_timeout: Duration::from_secs(args.suback_timeout_secs),
        hold_until: hold_until.clone(),
    };
    let (hist_tx, hist_rx) = mpsc::channel::<(Histogram<u64>, Vec<String>)>();
    let cpus = common.cpus();
    let t = tally.clone();
    let worker = std::thread::Builder::new()
        .name("bench-executors".into())
        .spawn(move || {
            runner::on_executors(cpus.as_deref(), move |index, count| {
                executor(index, count, plan.clone(), t.clone(), hist_tx.clone())
            })
        })?;
    let executors = common.cpus().map_or(1, |c| c.len());
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut hist = latency_histogram();
    let mut errors: Vec<String> = Vec::new();
    let mut reported = 0;
    while reported < executors {
        match hist_rx.recv_timeout(REPORT_POLL) {
            Ok((h, e)) => {
                hist.add(&h).expect("histograms with the same bounds");
                errors.extend(e);
                reported += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            progress.line(&format!(
                "{:>4}s connected {} subscribed {} failed {}",
                started.elapsed().as_secs(),
                tally.connected.load(Ordering::Relaxed),
                tally.subscribed.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
            ));
        }
    }
    let first = tally.first_sent_ns.load(Ordering::Relaxed);
    let last = tally.last_ack_ns.load(Ordering::Relaxed);
    let storm_ms = if last > first {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    let subscribed = tally.subscribed.load(Ordering::Relaxed);
    errors.sort();
    errors.dedup();
    // Wall-clock times of the first SUBSCRIBE and last SUBACK, for other tools' samples.
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let to_unix_ms = |mono_ns: u64| {
        (unix_ns.saturating_sub(clock::now_ns().saturating_sub(mono_ns))) / 1_000_000
    };
    let summary = serde_json::json!({
        "summary": true,
        "connections": args.count,
        "filters_per_connection": args.filters,
        "connected": tally.connected.load(Ordering::Relaxed),
        "subscribed": subscribed,
        "refused": tally.refused.load(Ordering::Relaxed),
        "failed_connections": tally.failed.load(Ordering::Relaxed),
        "storm_ms": storm_ms,
        "subscribes_per_s": if storm_ms > 0.0 { subscribed as f64 / storm_ms * 1000.0 } else { 0.0 },
        "suback_latency_us": latency_json(&hist),
        "first_subscribe_unix_ms": if first == u64::MAX { 0 } else { to_unix_ms(first) },
        "last_suback_unix_ms": if last == 0 { 0 } else { to_unix_ms(last) },
        "errors": errors.iter().take(10).collect::<Vec<_>>(),
    });
    if common.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    // Hold: the executors keep the connections until this deadline.
    let hold_ns = clock::now_ns() + args.hold_secs * 1_000_000_000;
    hold_until.store(hold_ns, Ordering::Release);
    progress.line(&format!("holding the connections for {} s", args.hold_secs));
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("executor thread panicked"))??;
    Ok(())
}

/// One executor: its share of the connections, each storming then holding.
async fn executor(
    index: usize,
    count: usize,
    plan: Plan,
    tally: Arc<Tally>,
    hist_tx: mpsc::Sender<(Histogram<u64>, Vec<String>)>,
) {
    let connector = Rc::new(Connector::new(&plan.dial));
    let hist = Rc::new(RefCell::new(latency_histogram()));
    let errors: Rc<RefCell<Vec<String>>> = Rc::default();
    let plan = Rc::new(plan);
    let mine: Vec<u64> = runner::my_share(plan.count, 0, index, count).collect();
    let left = Rc::new(std::cell::Cell::new(mine.len()));
    let sent = Rc::new(std::cell::Cell::new(false));
    let mut tasks = Vec::with_capacity(mine.len());
    for seq in mine {
        let (connector, plan, tally, hist, errors) = (
            connector.clone(),
            plan.clone(),
            tally.clone(),
            hist.clone(),
            errors.clone(),
        );
        let (left, sent, hist_tx) = (left.clone(), sent.clone(), hist_tx.clone());
        tasks.push(glommio::spawn_local(async move {
            let client = storm(&connector, seq, &plan, &tally, &hist).await;
            tally.finished.fetch_add(1, Ordering::Relaxed);
            left.set(left.get() - 1);
            let mut client = match client {
                Ok(c) => Some(c),
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.borrow_mut().push(e.to_string());
                    None
                }
            };
            if left.get() == 0 && !sent.replace(true) {
                let h = hist.borrow().clone();
                let _ = hist_tx.send((h, errors.borrow().clone()));
            }
            if let Some(client) = client.as_mut() {
                hold(client, &plan).await;
            }
        }));
    }
    if tasks.is_empty() {
        let _ = hist_tx.send((latency_histogram(), Vec::new()));
    }
    for t in tasks {
        t.await;
    }
}

/// Connects client `seq` and subscribes its filters; returns the connected client.
async fn storm(
    connector: &Connector,
    seq: u64,
    plan: &Plan,
    tally: &Tally,
    hist: &RefCell<Histogram<u64>>,
) -> io::Result<Client> {
    let client_id = format!("{}-route-{seq}", plan.prefix);
    let (mut client, _) = connector
        .connect(seq, &client_id)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    tally.connected.fetch_add(1, Ordering::Relaxed);
    client.set_read_timeout(Some(plan.suback_timeout))?;
    let mut sent_at = vec![0u64; plan.filters as usize + 1];
    let (mut next, mut acked) = (1u64, 0u64);
    while acked < plan.filters {
        let mut queued = false;
        while next <= plan.filters && next - 1 - acked < plan.pipeline {
            let filter =
                topic::expand(&plan.filter, seq, &client_id).replace("%f", &next.to_string());
            client.queue(&Packet::Subscribe(Subscribe {
                pkid: next as u16,
                filters: vec![SubscribeFilter {
                    filter: ByteStr::from(filter.as_str()),
                    options: SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        ..SubscriptionOptions::default()
                    },
                }],
                properties: SubscribeProperties::default(),
            }));
            let now = clock::now_ns();
            sent_at[next as usize] = now;
            tally.first_sent_ns.fetch_min(now, Ordering::Relaxed);
            next += 1;
            queued = true;
        }
        if queued {
            client.flush().await?;
        }
        if let Packet::SubAck(ack) = client.recv(READ_CHUNK_BYTES).await? {
            let now = clock::now_ns();
            let at = sent_at.get(ack.pkid as usize).copied().unwrap_or(0);
            if at > 0 {
                hist.borrow_mut().saturating_record(now.saturating_sub(at));
            }
            tally.last_ack_ns.fetch_max(now, Ordering::Relaxed);
            match ack.reasons.first() {
                Some(code) if !code.is_error() => {
                    tally.subscribed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            acked += 1;
        }
    }
    Ok(client)
}

/// Keeps `client` connected (pinging within its keep-alive) until the hold deadline.
async fn hold(client: &mut Client, plan: &Plan) {
    let idle = client.hold_idle(plan.keep_alive_secs);
    let deadline = async {
        loop {
            let until = plan.hold_until.load(Ordering::Acquire);
            if until != u64::MAX && clock::now_ns() >= until {
                return io::Error::other("hold over");
            }
            glommio::timer::sleep(runner::POLL_FLAGS).await;
        }
    };
    let _ = futures_lite::future::or(idle, deadline).await;
}
