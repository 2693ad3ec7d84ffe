//! What every command shares: the executors, the connector (source addresses, pacing, bounded
//! handshakes, timeout), the counters the reporting thread reads, and latency histograms.

use crate::client::{Client, ConnectError, ConnectOptions};
use crate::clock;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// glommio's registered I/O memory per executor: the bench does no file I/O.
const IO_MEMORY_BYTES: usize = 1024 * 1024;
/// How long a task may run before the executor polls for I/O again. Short, so that a
/// publisher sending flat out on one executor delays its subscribers' reads by at most this.
const PREEMPT: Duration = Duration::from_millis(1);
/// The longest a client task may be stranded by glommio 0.9's park bug (a run of the load
/// generator once hung forever on it): see `shardmq_shards::spawn_park_guard`.
const PARK_GUARD: Duration = Duration::from_millis(5);
/// How often tasks waiting on a flag set by the reporting thread look at it.
pub(crate) const POLL_FLAGS: Duration = Duration::from_millis(20);
/// Highest latency a histogram records, in nanoseconds (higher values are clamped).
const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Distinct error messages kept per run; further kinds are counted under "other".
const ERROR_KINDS_MAX: usize = 32;

/// Counters shared by all executors and read by the reporting thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connect_succ: AtomicU64,
    pub(crate) connect_fail: AtomicU64,
    /// Connections that were up and then closed by the broker or failed.
    pub(crate) disconnected: AtomicU64,
    pub(crate) subscribed: AtomicU64,
    /// Publishers connected and waiting for the start.
    pub(crate) pub_ready: AtomicU64,
    pub(crate) sub_fail: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Deliveries the messages sent should make, when the fan-out is known.
    pub(crate) expected: AtomicU64,
    /// Times a publisher stopped waiting for the outstanding window to drain (messages lost).
    pub(crate) window_stalls: AtomicU64,
    /// When the last message was received, in ns since the process base.
    pub(crate) last_recv_ns: AtomicU64,
    /// When the first message was received; 0 until then.
    pub(crate) first_recv_ns: AtomicU64,
    /// Times a paced publisher was more than a batch behind its schedule (`pub_overrun`).
    pub(crate) pub_overrun: AtomicU64,
    /// When the last connection attempt ended, in ns since the process base.
    pub(crate) last_connect_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn max(counter: &AtomicU64, v: u64) {
        counter.fetch_max(v, Ordering::Relaxed);
    }

    /// Sets `counter` to `v` if it is still 0.
    pub(crate) fn first(counter: &AtomicU64, v: u64) {
        let _ = counter.compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The state of a run that the reporting thread and every executor see.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    /// When the measured phase started, in ns since the process base; 0 until then.
    start_ns: AtomicU64,
    /// Set when the measured phase ends (publishers stop; idle connections are released).
    stop: AtomicBool,
    /// Set when every client should disconnect and every executor return.
    done: AtomicBool,
}

impl Shared {
    pub(crate) fn start(&self, now_ns: u64) {
        self.start_ns.store(now_ns.max(1), Ordering::Release);
    }

    pub(crate) fn start_ns(&self) -> Option<u64> {
        match self.start_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(ns),
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(crate) fn finish(&self) {
        self.stop();
        self.done.store(true, Ordering::Release);
    }

    pub(crate) fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Waits, on an executor, until `done`.
    pub(crate) async fn wait_done(&self) {
        while !self.done() {
            glommio::timer::sleep(POLL_FLAGS).await;
        }
    }
}

/// The thread running a command's executors; joins to what each measured.
pub(crate) type Worker = std::thread::JoinHandle<anyhow::Result<Vec<Measured>>>;

/// Starts, on a thread of its own, `executor(index, count, plan, shared)` on every executor
/// (see [`on_executors`]), leaving the calling thread free to report.
pub(crate) fn start<P, F, Fut>(
    cpus: Option<Vec<usize>>,
    plan: P,
    shared: Arc<Shared>,
    executor: F,
) -> std::io::Result<Worker>
where
    P: Clone + Send + 'static,
    F: Fn(usize, usize, P, Arc<Shared>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = Measured> + 'static,
{
    std::thread::Builder::new()
        .name("bench-executors".into())
        .spawn(move || {
            on_executors(cpus.as_deref(), move |index, count| {
                executor(index, count, plan.clone(), shared.clone())
            })
        })
}

/// Runs `make(index, count)` on one executor per CPU in `cpus` (pinned), or on one unpinned
/// executor when `cpus` is `None`, and returns what each produced, in order.
pub(crate) fn on_executors<T, F, Fut>(cpus: Option<&[usize]>, make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = T> + 'static,
{
    let placements: Vec<Placement> = match cpus {
        None => vec![Placement::Unbound],
        Some(cpus) => cpus.iter().map(|&cpu| Placement::Fixed(cpu)).collect(),
    };
    let count = placements.len();
    let mut handles = Vec::with_capacity(count);
    for (index, placement) in placements.into_iter().enumerate() {
        let make = make.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("bench-{index}"))
            .io_memory(IO_MEMORY_BYTES)
            .preempt_timer(PREEMPT)
            .spawn(move || async move {
                // Fixed period: a load generator is never idle for long.
                shardmq_shards::spawn_park_guard(PARK_GUARD, PARK_GUARD, || 0);
                make(index, count).await
            })
            .map_err(|e| anyhow::anyhow!("cannot start executor {index}: {e}"))?;
        handles.push(handle);
    }
    handles
        .into_iter()
        .enumerate()
        .map(|(index, h)| {
            h.join()
                .map_err(|e| anyhow::anyhow!("executor {index}: {e}"))
        })
        .collect()
}

/// The sequence numbers (from 1) of the `total` clients that executor `index` of `count` runs,
/// dealt round robin starting `offset` executors along (so that two groups of clients, say
/// subscribers then publishers, continue one deal instead of both starting on executor 0).
pub(crate) fn my_share(
    total: u64,
    offset: usize,
    index: usize,
    count: usize,
) -> impl Iterator<Item = u64> {
    assert!(index < count);
    let first = (index + count - offset % count) % count;
    (1..=total).skip(first).step_by(count)
}

/// How a run's clients connect: options, source addresses, handshake bound, timeout.
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    pub(crate) opts: ConnectOptions,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) handshakes_max: u64,
    pub(crate) timeout: Duration,
}

impl Dial {
    /// "any source address" or "N source addresses", for the opening line.
    pub(crate) fn describe_sources(&self) -> String {
        match self.sources.len() {
            0 => "any source address".to_string(),
            n => format!("{n} source addresses"),
        }
    }
}

/// Opens client connections for one executor: picks the source address by sequence number,
/// bounds the handshakes in flight, and gives up after a timeout.
pub(crate) struct Connector {
    pub(crate) opts: ConnectOptions,
    sources: Vec<IpAddr>,
    gate: Semaphore,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(dial: &Dial) -> Connector {
        assert!(dial.handshakes_max > 0);
        Connector {
            opts: dial.opts.clone(),
            sources: dial.sources.clone(),
            gate: Semaphore::new(dial.handshakes_max),
            timeout: dial.timeout,
        }
    }

    /// Connects client `seq` (from 1) as `client_id`; also returns how long the handshake took
    /// (socket open to CONNACK, in ns), not counting the wait for a handshake slot.
    pub(crate) async fn connect(
        &self,
        seq: u64,
        client_id: &str,
    ) -> Result<(Client, u64), ConnectError> {
        let _permit = self
            .gate
            .acquire_permit(1)
            .await
            .expect("semaphore never closed");
        let started_ns = clock::now_ns();
        let source = match self.sources.len() {
            0 => None,
            n => Some(self.sources[((seq - 1) % n as u64) as usize]),
        };
        let handshake = Client::connect(&self.opts, client_id, source);
        let timeout = async {
            glommio::timer::sleep(self.timeout).await;
            Err(ConnectError::Timeout)
        };
        let client = futures_lite::future::or(handshake, timeout).await?;
        Ok((client, clock::now_ns() - started_ns))
    }
}

/// Waits until start `i` (from 0) is due when starts are spread at `rate` per second from
/// `start_ns`; no wait when `rate` is 0.
pub(crate) async fn pace(start_ns: u64, i: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = start_ns + (u128::from(i) * 1_000_000_000 / u128::from(rate)) as u64;
    let wait = clock::until(due);
    if !wait.is_zero() {
        glommio::timer::sleep(wait).await;
    }
}

/// A latency histogram in nanoseconds.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

/// Error messages seen, with how often.
#[derive(Debug, Default)]
pub(crate) struct ErrorTally(pub(crate) BTreeMap<String, u64>);

impl ErrorTally {
    pub(crate) fn record(&mut self, what: impl ToString) {
        let what = what.to_string();
        let key = if self.0.len() < ERROR_KINDS_MAX || self.0.contains_key(&what) {
            what
        } else {
            "other".to_string()
        };
        *self.0.entry(key).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: ErrorTally) {
        for (what, n) in other.0 {
            *self.0.entry(what).or_default() += n;
        }
    }
}

/// What one executor measured: a latency histogram (its meaning depends on the command) and
/// the errors its clients met.
pub(crate) struct Measured {
    pub(crate) latency_ns: Histogram<u64>,
    pub(crate) errors: ErrorTally,
}

impl Default for Measured {
    fn default() -> Measured {
        Measured {
            latency_ns: latency_histogram(),
            errors: ErrorTally::default(),
        }
    }
}

impl Measured {
    /// Adds up what the executors measured.
    pub(crate) fn merge_all(all: Vec<Measured>) -> Measured {
        let mut total = Measured::default();
        for m in all {
            total
                .latency_ns
                .add(&m.latency_ns)
                .expect("histograms with the same bounds");
            total.errors.merge(m.errors);
        }
        total
    }
}

impl Measured {
    /// The latency line, labelled `what`, then one line per distinct error with its count.
    pub(crate) fn print(&self, progress: Progress, what: &str) {
        progress.line(&format!("{what}: {}", latency_line(&self.latency_ns)));
        for (what, n) in &self.errors.0 {
            progress.line(&format!("error x{n}: {what}"));
        }
    }
}

/// Latency percentiles in microseconds, as the summaries print them.
pub(crate) fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p99_9": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": h.mean() / 1000.0,
    })
}

/// One line of latency percentiles, in microseconds.
pub(crate) fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_string();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    format!(
        "p50={:.0}us p90={:.0}us p99={:.0}us p99.9={:.0}us max={:.0}us mean={:.0}us (n={})",
        us(h.value_at_quantile(0.50)),
        us(h.value_at_quantile(0.90)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        h.mean() / 1000.0,
        h.len()
    )
}

/// Where progress lines go: stdout, or stderr when stdout carries the JSON summary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) json: bool,
}

impl Progress {
    pub(crate) fn line(self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::my_share;

    #[test]
    fn shares_cover_every_client_once() {
        for count in 1..4 {
            for offset in 0..5 {
                let mut all: Vec<u64> = (0..count)
                    .flat_map(|i| my_share(7, offset, i, count))
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (1..=7).collect::<Vec<_>>());
            }
        }
        // Publisher 1 after one subscriber lands on the second executor.
        assert_eq!(my_share(1, 1, 1, 2).collect::<Vec<_>>(), [1]);
        assert_eq!(my_share(1, 1, 0, 2).count(), 0);
    }
}
