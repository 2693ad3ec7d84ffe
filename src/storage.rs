//! What the node tells about its storage (docs/durability.md): the `/api/v1/storage` answer,
//! the `/metrics` samples, and `shardmq ctl storage status`'s table.

use crate::api::Sample;
use serde_json::{json, Value};
use shardmq_shards::{DurabilityMode, StorageFigures};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

static STORAGE: OnceLock<Arc<StorageFigures>> = OnceLock::new();

/// The data plane's storage figures, for the API (set once at start-up; never with
/// `durability = "off"`).
pub(crate) fn set(figures: Arc<StorageFigures>) {
    let _ = STORAGE.set(figures);
}

fn mode(m: DurabilityMode) -> &'static str {
    match m {
        DurabilityMode::Async => "async",
        DurabilityMode::Sync => "sync",
    }
}

/// `GET /api/v1/storage`.
pub fn status() -> Value {
    let Some(f) = STORAGE.get() else {
        return json!({ "durability": "off" });
    };
    let batches = f.total(|s| &s.batches);
    let records = f.total(|s| &s.records);
    let shards: Vec<Value> = f
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "shard": i,
                "bytes_written": s.bytes_written.load(Ordering::Relaxed),
                "fsyncs": s.fsyncs.load(Ordering::Relaxed),
                "batches": s.batches.load(Ordering::Relaxed),
                "records": s.records.load(Ordering::Relaxed),
                "disk_bytes": s.disk_bytes.load(Ordering::Relaxed),
                "messages": s.messages.load(Ordering::Relaxed),
                "write_errors": s.write_errors.load(Ordering::Relaxed),
                "failing": s.failing.load(Ordering::Relaxed),
            })
        })
        .collect();
    json!({
        "durability": mode(f.mode),
        "dir": f.dir.display().to_string(),
        "failing": f.failing(),
        "recovery_ms": f.recovery_ms,
        "restored_sessions": f.restored_sessions,
        "restored_retained": f.restored_retained,
        "recovery_cut_tails": f.recovery_cut_records,
        "bytes_written": f.total(|s| &s.bytes_written),
        "fsyncs": f.total(|s| &s.fsyncs),
        "batches": batches,
        "records": records,
        "group_commit_records_mean": if batches == 0 { 0.0 } else { records as f64 / batches as f64 },
        "disk_bytes": f.total(|s| &s.disk_bytes),
        "write_errors": f.total(|s| &s.write_errors),
        "shards": shards,
    })
}

/// The storage figures as `/metrics` samples (none with `durability = "off"`).
pub(crate) fn samples() -> Vec<Sample> {
    let Some(f) = STORAGE.get() else {
        return Vec::new();
    };
    let sample =
        |name: &str, help: &str, labels: Vec<(String, String)>, value: f64, counter| Sample {
            name: name.to_string(),
            help: help.to_string(),
            labels,
            value,
            counter,
        };
    let mut out = vec![sample(
        "shardmq_storage_recovery_seconds",
        "Start-up recovery time (read, split, snapshot, commit)",
        Vec::new(),
        f.recovery_ms as f64 / 1000.0,
        false,
    )];
    for (i, s) in f.shards.iter().enumerate() {
        let labels = || vec![("shard".to_string(), i.to_string())];
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.extend([
            sample(
                "shardmq_storage_bytes_written",
                "Bytes written to the shard's log",
                labels(),
                get(&s.bytes_written),
                true,
            ),
            sample(
                "shardmq_storage_fsyncs",
                "fdatasync calls of the shard's log",
                labels(),
                get(&s.fsyncs),
                true,
            ),
            sample(
                "shardmq_storage_batches",
                "Group commits (batches made durable)",
                labels(),
                get(&s.batches),
                true,
            ),
            sample(
                "shardmq_storage_records",
                "Records made durable (divided by batches: the group-commit size)",
                labels(),
                get(&s.records),
                true,
            ),
            sample(
                "shardmq_storage_disk_bytes",
                "Bytes of the shard's live log segments",
                labels(),
                get(&s.disk_bytes),
                false,
            ),
            sample(
                "shardmq_storage_write_errors",
                "Writes or fdatasyncs the disk refused (full disk, I/O error)",
                labels(),
                get(&s.write_errors),
                true,
            ),
            sample(
                "shardmq_storage_failing",
                "1 while the shard's disk refuses writes (QoS 1/2 PUBLISHes refused)",
                labels(),
                f64::from(u8::from(s.failing.load(Ordering::Relaxed))),
                false,
            ),
        ]);
    }
    out
}

/// `shardmq ctl storage status` as a table.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let get = |k: &str| status.get(k).map_or("-".to_owned(), |v| v.to_string());
    if status.get("durability").and_then(Value::as_str) == Some("off") {
        return "durability: off (nothing is stored)\n".to_owned();
    }
    let _ = writeln!(
        out,
        "durability: {}  dir: {}  failing: {}",
        status["durability"].as_str().unwrap_or("-"),
        status["dir"].as_str().unwrap_or("-"),
        get("failing")
    );
    let _ = writeln!(
        out,
        "recovery: {} ms, {} sessions, {} retained, {} cut tails",
        get("recovery_ms"),
        get("restored_sessions"),
        get("restored_retained"),
        get("recovery_cut_tails")
    );
    let _ = writeln!(
        out,
        "written: {} bytes, {} fsyncs, {} batches, {} records ({:.1} per batch), disk {} bytes, {} write errors\n",
        get("bytes_written"),
        get("fsyncs"),
        get("batches"),
        get("records"),
        status["group_commit_records_mean"].as_f64().unwrap_or(0.0),
        get("disk_bytes"),
        get("write_errors")
    );
    let fields = [
        "shard",
        "bytes_written",
        "fsyncs",
        "batches",
        "records",
        "disk_bytes",
        "messages",
        "write_errors",
        "failing",
    ];
    let _ = writeln!(out, "{}", fields.join("  "));
    for s in status["shards"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let row: Vec<String> = fields
            .iter()
            .map(|f| s.get(*f).map_or("-".to_owned(), |v| v.to_string()))
            .collect();
        let _ = writeln!(out, "{}", row.join("  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_renders_as_off() {
        assert_eq!(status()["durability"], "off");
        assert!(render(&status()).contains("off"));
        assert!(samples().is_empty());
    }

    #[test]
    fn a_status_renders_its_shards() {
        let s = json!({
            "durability": "sync", "dir": "data", "failing": false, "recovery_ms": 3,
            "restored_sessions": 1, "restored_retained": 2, "recovery_cut_tails": 0,
            "bytes_written": 10, "fsyncs": 2, "batches": 2, "records": 4,
            "group_commit_records_mean": 2.0, "disk_bytes": 100, "write_errors": 0,
            "shards": [{"shard": 0, "bytes_written": 10, "fsyncs": 2, "batches": 2,
                        "records": 4, "disk_bytes": 100, "messages": 1,
                        "write_errors": 0, "failing": false}]
        });
        let text = render(&s);
        assert!(text.contains("durability: sync"), "{text}");
        assert!(text.contains("2.0 per batch"), "{text}");
        assert!(text
            .lines()
            .last()
            .unwrap()
            .starts_with("0  10  2  2  4  100  1  0  false"));
    }
}
