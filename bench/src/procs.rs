//! `--procs N` for `sub` and `pub`: the parent re-executes itself N times, each worker with a
//! slice of the client numbers (`--index-offset`, `-c`, its share of `-L`) and `--json`, reads
//! the JSON lines every worker prints (one per second, then its summary with its latency
//! histogram) and prints the merged counters each second and one merged summary.

use crate::runner::{self, ErrorTally, Progress};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// The counters of a per-second line, summed over the workers.
const TICK_FIELDS: [&str; 5] = ["connect_succ", "pub", "recv", "pub_overrun", "errors"];
/// Summary fields summed over the workers.
const SUM_FIELDS: [&str; 11] = [
    "sent",
    "received",
    "expected",
    "lost",
    "window_stalls",
    "pub_overrun",
    "connect_succ",
    "connect_fail",
    "sub_fail",
    "disconnected",
    "subs",
];

/// Runs `procs` workers over `count` clients and merges what they print.
pub(crate) fn run(
    command: &str,
    count: u64,
    limit: u64,
    procs: u64,
    progress: Progress,
) -> anyhow::Result<()> {
    let procs = procs.min(count.max(1));
    let exe = std::env::current_exe()?;
    let original: Vec<String> = std::env::args().skip(1).collect();
    let (tx, rx) = mpsc::channel::<(usize, serde_json::Value)>();
    let mut children = Vec::new();
    let mut offset = 0;
    for w in 0..procs {
        let n = count / procs + u64::from(w < count % procs);
        let share = match limit {
            0 => 0,
            l => l / procs + u64::from(w < l % procs),
        };
        // Options may be repeated and the last one wins: the worker's slice goes last.
        let mut cmd = Command::new(&exe);
        cmd.args(&original)
            .args(["--procs", "1", "--json", "--worker"])
            .args(["--index-offset", &offset.to_string()])
            .args(["-c", &n.to_string(), "-L", &share.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        let index = w as usize;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send((index, v));
                }
            }
        });
        children.push(child);
        offset += n;
    }
    drop(tx);
    progress.line(&format!(
        "{command}: {count} clients over {procs} worker processes"
    ));
    let workers = children.len();
    let mut ticks: BTreeMap<u64, (usize, [u64; 5])> = BTreeMap::new();
    let mut summaries = Vec::new();
    for (_, v) in rx {
        if v.get("summary").is_some() {
            summaries.push(v);
            continue;
        }
        let Some(tick) = v.get("tick").and_then(|t| t.as_u64()) else {
            continue;
        };
        let entry = ticks.entry(tick).or_insert((0, [0; 5]));
        entry.0 += 1;
        for (i, f) in TICK_FIELDS.iter().enumerate() {
            entry.1[i] += v.get(*f).and_then(|x| x.as_u64()).unwrap_or(0);
        }
        if entry.0 == workers {
            let s = entry.1;
            progress.line(&format!(
                "[{tick}s] connect_succ={} pub={} recv={} pub_overrun={} errors={}",
                s[0], s[1], s[2], s[3], s[4]
            ));
            if progress.json {
                println!(
                    "{}",
                    serde_json::json!({"tick": tick, "connect_succ": s[0], "pub": s[1],
                        "recv": s[2], "pub_overrun": s[3], "errors": s[4]})
                );
            }
            ticks.remove(&tick);
        }
    }
    for mut child in children {
        child.wait()?;
    }
    anyhow::ensure!(!summaries.is_empty(), "no worker printed a summary");
    let mut merged = serde_json::Map::new();
    for f in SUM_FIELDS {
        let sum: u64 = summaries
            .iter()
            .filter_map(|s| s.get(f).and_then(|x| x.as_u64()))
            .sum();
        merged.insert(f.into(), sum.into());
    }
    for f in ["pub_rate", "recv_rate"] {
        let sum: f64 = summaries
            .iter()
            .filter_map(|s| s.get(f).and_then(|x| x.as_f64()))
            .sum();
        merged.insert(f.into(), sum.into());
    }
    let mut hist = runner::latency_histogram();
    let mut errors = ErrorTally::default();
    for s in &summaries {
        for pair in s
            .get("latency_hist")
            .and_then(|h| h.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(v), Some(n)) = (
                pair.get(0).and_then(|x| x.as_u64()),
                pair.get(1).and_then(|x| x.as_u64()),
            ) {
                let _ = hist.record_n(v, n);
            }
        }
        let mut tally = ErrorTally::default();
        for (k, n) in s
            .get("errors")
            .and_then(|e| e.as_object())
            .into_iter()
            .flatten()
        {
            tally.0.insert(k.clone(), n.as_u64().unwrap_or(0));
        }
        errors.merge(tally);
    }
    merged.insert("command".into(), command.into());
    merged.insert("summary".into(), true.into());
    merged.insert("procs".into(), (summaries.len() as u64).into());
    merged.insert("latency_us".into(), runner::latency_json(&hist));
    merged.insert("errors".into(), serde_json::to_value(&errors.0)?);
    if progress.json {
        println!("{}", serde_json::Value::Object(merged));
        return Ok(());
    }
    progress.line(&format!(
        "summary ({} workers): sent={} ({:.0} msg/s), received={} ({:.0} msg/s)",
        summaries.len(),
        merged["sent"],
        merged["pub_rate"].as_f64().unwrap_or(0.0),
        merged["received"],
        merged["recv_rate"].as_f64().unwrap_or(0.0),
    ));
    progress.line(&format!("latency: {}", runner::latency_line(&hist)));
    for (what, n) in &errors.0 {
        progress.line(&format!("error x{n}: {what}"));
    }
    Ok(())
}

/// A histogram as `[value, count]` pairs, for a parent to merge.
pub(crate) fn histogram_pairs(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    h.iter_recorded()
        .map(|v| serde_json::json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}
