//! `GET /api/v1/alarms`: what an operator should look at now, computed when asked.
//!
//! | name | severity | raised while |
//! |---|---|---|
//! | `queue_drops` | warning | messages were dropped for slow subscribers within the last minute |
//! | `fd_limit_near` | warning (critical over 95 %) | open connections over 80 % of the file limit |
//! | `connections_near_max` | warning | connections over 90 % of `listener.max_connections` |
//! | `replicant_lagging` | warning | an RLOG shard's lag over [`LAG_ALARM`] entries, or not `running` |
//! | `storage_failing` | critical | the durable log cannot write (`/api/v1/storage`) |

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use shardmq_shards::rfc3339;

use super::Shared;

/// RLOG entries a replicant may trail its upstream by before `replicant_lagging`.
pub const LAG_ALARM: u64 = 10_000;

/// The window `queue_drops` looks back over.
pub const DROP_WINDOW: Duration = Duration::from_secs(60);

/// Samples of the drop counter kept at most (one per call; older ones leave first).
const SAMPLES_MAX: usize = 1024;

/// What alarms remember between calls: drop-counter samples and when each alarm was raised.
#[derive(Debug, Default)]
pub struct AlarmState {
    drops: VecDeque<(Instant, u64)>,
    since: HashMap<&'static str, SystemTime>,
}

/// The node's soft limit on open files.
fn file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The alarms active on this node now.
pub async fn active(state: &Shared) -> Vec<Value> {
    let now = Instant::now();
    let connections = state.connections.load(Ordering::Relaxed) as u64;
    let dropped: u64 = state
        .figures
        .shards()
        .iter()
        .map(|f| f.messages_dropped)
        .sum();
    let mut raised: Vec<(&'static str, &'static str, String)> = Vec::new();
    {
        let mut st = state.alarms.lock().expect("alarm state");
        st.drops.push_back((now, dropped));
        while st.drops.len() > SAMPLES_MAX
            || st
                .drops
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= DROP_WINDOW)
        {
            st.drops.pop_front();
        }
        if let Some(&(_, before)) = st.drops.front() {
            if dropped > before {
                raised.push((
                    "queue_drops",
                    "warning",
                    format!(
                        "{} messages dropped for slow subscribers in the last minute",
                        dropped - before
                    ),
                ));
            }
        }
    }
    if let Some(limit) = file_limit() {
        if connections * 100 > limit * 80 {
            let severity = if connections * 100 > limit * 95 {
                "critical"
            } else {
                "warning"
            };
            raised.push((
                "fd_limit_near",
                severity,
                format!(
                    "{connections} connections, open-file limit {limit} (raise it: docs/tuning.md)"
                ),
            ));
        }
    }
    if state.max_connections > 0 && connections * 100 > state.max_connections * 90 {
        raised.push((
            "connections_near_max",
            "warning",
            format!(
                "{connections} of listener.max_connections = {}",
                state.max_connections
            ),
        ));
    }
    if let Some(cluster) = &state.cluster {
        if let Ok(Ok(rlog)) = tokio::time::timeout(
            Duration::from_millis(super::STATUS_TIMEOUT_MS),
            cluster.rlog_status(),
        )
        .await
        {
            for s in &rlog.shards {
                if s.lag > LAG_ALARM || s.state != "running" {
                    raised.push((
                        "replicant_lagging",
                        "warning",
                        format!("RLOG shard {} is {} with lag {}", s.shard, s.state, s.lag),
                    ));
                }
            }
        }
    }
    if crate::storage::status()["failing"].as_bool() == Some(true) {
        raised.push((
            "storage_failing",
            "critical",
            "the durable log cannot write (see /api/v1/storage)".into(),
        ));
    }
    let mut st = state.alarms.lock().expect("alarm state");
    let wall = SystemTime::now();
    st.since
        .retain(|name, _| raised.iter().any(|(n, _, _)| n == name));
    raised
        .into_iter()
        .map(|(name, severity, message)| {
            let since = *st.since.entry(name).or_insert(wall);
            json!({
                "node": state.node_id,
                "name": name,
                "severity": severity,
                "message": message,
                "since": rfc3339(since),
            })
        })
        .collect()
}
