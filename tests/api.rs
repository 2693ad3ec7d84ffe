//! The management API of a real broker: `/health`, `/metrics`, `/api/v1/...`, and `api.listen`.

mod common;

use common::{eventually, Broker, Raw, WAIT};
use serde_json::Value;
use shardmq_codec::{Protocol, QoS};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A blocking HTTP client that returns every status as an answer.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

/// `GET path` → (status, body).
fn get(api: &str, path: &str) -> (u16, String) {
    let mut r = agent()
        .get(&format!("http://{api}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path} at {api}: {e}"));
    let body = r.body_mut().read_to_string().expect("body");
    (r.status().as_u16(), body)
}

/// `POST path` with an optional JSON body → (status, body).
fn post(api: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let request = agent().post(&format!("http://{api}{path}"));
    let answer = match json {
        Some(json) => request
            .header("content-type", "application/json")
            .send(json),
        None => request.send_empty(),
    };
    let mut r = answer.unwrap_or_else(|e| panic!("POST {path} at {api}: {e}"));
    let body = r.body_mut().read_to_string().expect("body");
    (r.status().as_u16(), body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Parses OpenMetrics text: every sample line is `name{labels} value`, the text ends with
/// `# EOF`. Returns sample (name with labels) → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF:\n{text}");
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("sample value not a number: {line:?}"));
        samples.insert(name.to_owned(), value);
    }
    samples
}

fn connections(api: &str) -> f64 {
    let (status, text) = get(api, "/metrics");
    assert_eq!(status, 200, "{text}");
    parse_metrics(&text)["shardmq_connections"]
}

/// TCP ports `pid` listens on (from /proc: its socket inodes matched to /proc/net/tcp{,6}).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... inode (field 9); st 0A = LISTEN.
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[tokio::test]
async fn health_and_metrics_follow_the_connections() {
    let broker = Broker::start();
    let api = broker.api_addr();

    let (status, body) = get(&api, "/health");
    assert_eq!(status, 200, "{body}");
    let health = json(&body);
    assert_eq!(health["status"], "ok", "{body}");
    assert_eq!(health["mode"], "standalone", "{body}");

    let (status, text) = get(&api, "/metrics");
    assert_eq!(status, 200, "{text}");
    let samples = parse_metrics(&text);
    assert!(samples["shardmq_uptime_seconds"] >= 0.0, "{text}");
    assert!(text.contains("# TYPE shardmq_connections gauge"), "{text}");
    assert!(
        !text.contains("shardmq_rlog"),
        "no RLOG metrics standalone:\n{text}"
    );

    // The harness's readiness probe may still be counted for a moment.
    assert!(
        eventually(WAIT, || async { connections(&api) == 0.0 }).await,
        "connections never 0: {}",
        connections(&api)
    );
    let (raw, _) = Raw::connect(broker.port, Protocol::V5, "api-metrics", true).await;
    assert!(
        eventually(WAIT, || async { connections(&api) == 1.0 }).await,
        "connections never 1: {}",
        connections(&api)
    );
    raw.disconnect().await;
    assert!(
        eventually(WAIT, || async { connections(&api) == 0.0 }).await,
        "connections never back to 0: {}",
        connections(&api)
    );
}

#[tokio::test]
async fn standalone_cluster_and_rlog_status_and_join_refused() {
    let broker = Broker::start_with(&[("SHARDMQ_NODE__NAME", "api-test@127.0.0.1")]);
    let api = broker.api_addr();

    let (status, body) = get(&api, "/api/v1/cluster");
    assert_eq!(status, 200, "{body}");
    let cluster = json(&body);
    assert_eq!(cluster["mode"], "standalone", "{body}");
    assert_eq!(cluster["node_name"], "api-test@127.0.0.1", "{body}");
    assert_eq!(cluster["node"], 1, "{body}");
    assert_eq!(cluster["leader"], 1, "{body}");
    let members = cluster["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{body}");
    assert_eq!(members[0]["node"], 1, "{body}");

    let (status, body) = get(&api, "/api/v1/rlog");
    assert_eq!(status, 200, "{body}");
    let rlog = json(&body);
    assert_eq!(rlog["leader"], 1, "{body}");
    assert_eq!(rlog["shards"].as_array().map(Vec::len), Some(0), "{body}");

    let (status, body) = post(
        &api,
        "/api/v1/cluster/join",
        Some(r#"{"seed":"2@127.0.0.1:4371"}"#),
    );
    assert_eq!(status, 409, "{body}");
    let error = json(&body)["error"]
        .as_str()
        .expect("error text")
        .to_owned();
    assert!(error.contains("standalone"), "{error}");
    assert!(error.contains("cluster.enabled"), "{error}");

    let (status, body) = post(&api, "/api/v1/cluster/leave", None);
    assert_eq!(status, 409, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");

    let (status, body) = post(&api, "/api/v1/cluster/join", Some("{\"sed\": 1}"));
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");

    let (status, body) = get(&api, "/api/v1/nothing");
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");

    let (status, _) = get(&api, "/api/v1/cluster/join");
    assert_eq!(status, 405, "GET on a POST route");
}

#[tokio::test]
async fn empty_api_listen_disables_the_api() {
    let on = Broker::start();
    assert_eq!(
        listening_ports(on.pid()),
        vec![on.port.min(on.api_port), on.port.max(on.api_port)],
        "MQTT and API ports"
    );

    let off = Broker::start_with(&[("SHARDMQ_API__LISTEN", "")]);
    assert_eq!(off.api_port, 0);
    assert_eq!(
        listening_ports(off.pid()),
        vec![off.port],
        "only the MQTT port"
    );
    // Still a working broker.
    let (_raw, ack) = Raw::connect(off.port, Protocol::V3_1_1, "no-api", true).await;
    assert_eq!(ack.code.0, 0);
}

/// Runs the broker with `api_listen`; it must exit non-zero within the start-up bound.
/// Returns its stderr.
fn broker_refusing(api_listen: &str) -> String {
    let mqtt = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mqtt_port = mqtt.local_addr().expect("addr").port();
    drop(mqtt);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .env("SHARDMQ_LISTENER__BIND", format!("127.0.0.1:{mqtt_port}"))
        .env("SHARDMQ_NODE__CPUS", "0")
        .env("SHARDMQ_API__LISTEN", api_listen)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardmq");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardmq still running with api.listen = {api_listen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    stderr
}

#[test]
fn api_listen_that_cannot_be_used_stops_the_broker_naming_the_key() {
    let stderr = broker_refusing("not-an-address");
    assert!(stderr.contains("api.listen"), "{stderr}");
    assert!(stderr.contains("not-an-address"), "{stderr}");

    // Taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let stderr = broker_refusing(&addr);
    assert!(stderr.contains("api.listen"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

/// The sum over shards of `name` (samples labelled `shard="…"`), or its unlabelled value.
fn summed(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_count_messages_sessions_and_drops_per_shard() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_QUEUED_MESSAGES", "2")]);
    let api = broker.api_addr();
    // A persistent subscriber goes away; five QoS 1 messages arrive for it; two fit its queue.
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V3_1_1, "metrics-sub", false).await;
    assert_eq!(
        sub.subscribe(1, &[("metrics/t", QoS::AtLeastOnce)]).await,
        vec![1]
    );
    sub.disconnect().await;
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "metrics-pub", true).await;
    for pkid in 1..=5 {
        publisher
            .publish("metrics/t", b"m", QoS::AtLeastOnce, pkid, false)
            .await;
    }
    let want = |samples: &BTreeMap<String, f64>| {
        summed(samples, "shardmq_sessions") == 2.0
            && summed(samples, "shardmq_subscriptions") == 1.0
            && summed(samples, "shardmq_routes") == 1.0
            && summed(samples, "shardmq_messages_received_total") >= 5.0
            && summed(samples, "shardmq_messages_dropped_total") == 3.0
            && summed(samples, "shardmq_bytes_received_total") > 0.0
    };
    let mut last = String::new();
    let seen = eventually(WAIT, || {
        let (status, text) = get(&api, "/metrics");
        assert_eq!(status, 200, "{text}");
        let ok = want(&parse_metrics(&text));
        last = text;
        async move { ok }
    })
    .await;
    assert!(seen, "figures never matched:\n{last}");
    assert!(
        last.contains("# TYPE shardmq_messages_dropped counter")
            && last.contains("shardmq_sessions{shard=\"0\"}"),
        "{last}"
    );

    // Back online, the subscriber gets the two queued messages: counted as sent.
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V3_1_1, "metrics-sub", false).await;
    for _ in 0..2 {
        let p = sub.expect_publish().await;
        sub.send(&common::puback(p.pkid)).await;
    }
    let sent = eventually(WAIT, || {
        let (_, text) = get(&api, "/metrics");
        let n = summed(&parse_metrics(&text), "shardmq_messages_sent_total");
        async move { n >= 2.0 }
    })
    .await;
    assert!(sent, "messages sent never reached 2");
}
