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

/// Runs the broker with the test's `env` (`api.listen` among them); it must exit non-zero
/// within the start-up bound. Returns its stderr.
fn broker_refusing_with(env: &[(&str, &std::ffi::OsStr)]) -> String {
    let mqtt = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mqtt_port = mqtt.local_addr().expect("addr").port();
    drop(mqtt);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .env("SHARDMQ_LISTENER__BIND", format!("127.0.0.1:{mqtt_port}"))
        .env("SHARDMQ_NODE__CPUS", "0")
        .envs(env.iter().copied())
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
            panic!("shardmq still running with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    stderr
}

/// [`broker_refusing_with`] `api.listen = api_listen`.
fn broker_refusing(api_listen: &str) -> String {
    broker_refusing_with(&[("SHARDMQ_API__LISTEN", api_listen.as_ref())])
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
    // The alarms' first look: nothing dropped yet.
    let (_, alarms) = call(&api, "GET", "/api/v1/alarms", None);
    assert_eq!(alarms["data"], serde_json::json!([]), "{alarms}");
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
    let (_, alarms) = call(&api, "GET", "/api/v1/alarms", None);
    assert_eq!(alarms["data"][0]["name"], "queue_drops", "{alarms}");
    assert!(
        alarms["data"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("3 messages dropped"),
        "{alarms}"
    );
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

// ---- authentication and HTTPS -----------------------------------------------------------------

/// A fresh directory for one test's files.
fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardmq-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs `shardmq ctl api-key <args>` on `keys_file`; returns stdout, asserting success.
fn api_key(keys_file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("ctl")
        .arg("api-key")
        .args(args)
        .env("SHARDMQ_API__KEYS_FILE", keys_file)
        .stdin(Stdio::null())
        .output()
        .expect("run shardmq ctl");
    assert!(
        out.status.success(),
        "ctl api-key {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `GET path` with an `Authorization` header (or none) → (status, WWW-Authenticate, body).
fn get_as(api: &str, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut request = agent().get(&format!("http://{api}{path}"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let mut r = request
        .call()
        .unwrap_or_else(|e| panic!("GET {path} at {api}: {e}"));
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = r.body_mut().read_to_string().expect("body");
    (r.status().as_u16(), challenge, body)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[test]
fn api_keys_guard_every_route_but_health_and_follow_the_file() {
    let dir = scratch_dir("keys");
    let keys_file = dir.join("api_keys.json");
    let keys = keys_file.to_str().expect("utf-8 path");
    // Made before the broker runs, by the real command.
    let key = api_key(&keys_file, &["create", "--name", "monitoring"]);
    let key = key.trim().to_owned();
    assert!(key.starts_with("smq_"), "{key}");

    let broker = Broker::start_with(&[
        ("SHARDMQ_API__KEYS_FILE", keys),
        ("SHARDMQ_API__ALLOW_UNAUTHENTICATED_LOOPBACK", "false"),
    ]);
    let api = broker.api_addr();

    let (status, _, body) = get_as(&api, "/health", None);
    assert_eq!(status, 200, "/health stays open: {body}");

    for path in [
        "/metrics",
        "/api/v1/cluster",
        "/api/v1/rlog",
        "/no/such/route",
    ] {
        let (status, challenge, body) = get_as(&api, path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(
            challenge.contains("Bearer") && challenge.contains("Basic"),
            "{challenge}"
        );
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    let (status, _, _) = get_as(&api, "/metrics", Some("Bearer smq_not-a-key"));
    assert_eq!(status, 401);
    let (status, _, _) = get_as(&api, "/metrics", Some(&basic("x", "smq_not-a-key")));
    assert_eq!(status, 401);

    let bearer = format!("Bearer {key}");
    let (status, _, text) = get_as(&api, "/metrics", Some(&bearer));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("shardmq_connections"), "{text}");
    let (status, _, body) = get_as(&api, "/api/v1/cluster", Some(&basic("x", &key)));
    assert_eq!(status, 200, "Basic, any user: {body}");
    let (status, _, _) = get_as(&api, "/metrics", Some(&basic("", &key)));
    assert_eq!(status, 200, "Basic, empty user");
    // A POST route too.
    let request = agent()
        .post(&format!("http://{api}/api/v1/cluster/leave"))
        .header("authorization", &bearer);
    let r = request.send_empty().expect("POST");
    assert_eq!(
        r.status().as_u16(),
        409,
        "authenticated, then refused standalone"
    );

    // A second key works at once; the deleted one stops at once (no restart, no signal).
    let second = api_key(&keys_file, &["create"]).trim().to_owned();
    let (status, _, _) = get_as(&api, "/metrics", Some(&format!("Bearer {second}")));
    assert_eq!(status, 200, "a key made while the node runs");
    api_key(&keys_file, &["delete", "monitoring"]);
    let (status, _, _) = get_as(&api, "/metrics", Some(&bearer));
    assert_eq!(status, 401, "a deleted key");
    let (status, _, _) = get_as(&api, "/metrics", Some(&format!("Bearer {second}")));
    assert_eq!(status, 200, "the other key still works");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loopback_needs_no_key_by_default() {
    let dir = scratch_dir("loopback");
    let keys_file = dir.join("api_keys.json");
    api_key(&keys_file, &["create"]);
    let broker = Broker::start_with(&[("SHARDMQ_API__KEYS_FILE", keys_file.to_str().unwrap())]);
    let (status, _, body) = get_as(&broker.api_addr(), "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_api_with_a_test_certificate() {
    let dir = scratch_dir("https");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("test certificate");
    let (cert_file, key_file) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
    let keys_file = dir.join("api_keys.json");
    let key = api_key(&keys_file, &["create", "--name", "tls"]);
    let broker = Broker::start_with(&[
        ("SHARDMQ_API__TLS_CERT_FILE", cert_file.to_str().unwrap()),
        ("SHARDMQ_API__TLS_KEY_FILE", key_file.to_str().unwrap()),
        ("SHARDMQ_API__KEYS_FILE", keys_file.to_str().unwrap()),
        ("SHARDMQ_API__ALLOW_UNAUTHENTICATED_LOOPBACK", "false"),
    ]);
    let api = broker.api_addr();

    let ca = ureq::tls::Certificate::from_der(cert.cert.der()).to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .build();
    let https: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .tls_config(tls)
        .build()
        .into();
    for host in ["127.0.0.1", "localhost"] {
        let port = broker.api_port;
        let mut r = https
            .get(&format!("https://{host}:{port}/health"))
            .call()
            .unwrap_or_else(|e| panic!("HTTPS /health via {host}: {e}"));
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            json(&r.body_mut().read_to_string().unwrap())["status"],
            "ok"
        );
    }
    let url = format!("https://127.0.0.1:{}/metrics", broker.api_port);
    let r = https.get(&url).call().expect("HTTPS /metrics");
    assert_eq!(r.status().as_u16(), 401, "keys over HTTPS too");
    let mut r = https
        .get(&url)
        .header("authorization", format!("Bearer {}", key.trim()))
        .call()
        .expect("HTTPS /metrics with a key");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("shardmq_connections"));

    // Plain HTTP on the HTTPS port gets no answer; an untrusting client fails the handshake.
    assert!(agent().get(&format!("http://{api}/health")).call().is_err());
    let strict: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[]))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        )
        .build()
        .into();
    assert!(strict.get(&url).call().is_err(), "unknown CA must fail");
    // The server still serves after those failures.
    let r = https
        .get(&format!("https://127.0.0.1:{}/health", broker.api_port))
        .call()
        .expect("HTTPS /health again");
    assert_eq!(r.status().as_u16(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_files_that_cannot_be_used_stop_the_broker_naming_the_key() {
    let dir = scratch_dir("badtls");
    let missing = dir.join("missing.pem");
    let stderr = broker_refusing_with(&[
        ("SHARDMQ_API__LISTEN", "127.0.0.1:0".as_ref()),
        ("SHARDMQ_API__TLS_CERT_FILE", missing.as_os_str()),
        ("SHARDMQ_API__TLS_KEY_FILE", missing.as_os_str()),
    ]);
    assert!(stderr.contains("api.tls_cert_file"), "{stderr}");

    // One file without the other is a configuration error.
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("check-config")
        .env("SHARDMQ_API__TLS_CERT_FILE", &missing)
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("api.tls_key_file"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `method path` with an optional JSON body → (status, JSON body).
fn call(api: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let url = format!("http://{api}{path}");
    let a = agent();
    let answer = match (method, body) {
        ("GET", _) => a.get(&url).call(),
        ("DELETE", _) => a.delete(&url).call(),
        (_, Some(b)) => a
            .post(&url)
            .header("content-type", "application/json")
            .send(b),
        (_, None) => a.post(&url).send_empty(),
    };
    let mut r = answer.unwrap_or_else(|e| panic!("{method} {path} at {api}: {e}"));
    let text = r.body_mut().read_to_string().expect("body");
    (r.status().as_u16(), json(&text))
}

/// Every item of a paged list, following `next` with pages of `limit`; returns the items and
/// the number of pages.
fn all_pages(api: &str, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 1..=10_000 {
        let url = match &cursor {
            None => format!("{path}{sep}limit={limit}"),
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
        };
        let (status, body) = call(api, "GET", &url, None);
        assert_eq!(status, 200, "{url}: {body}");
        let data = body["data"].as_array().expect("data");
        assert!(data.len() <= limit, "a page holds at most limit items");
        items.extend(data.iter().cloned());
        match body["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (items, page),
        }
    }
    panic!("{path}: more than 10,000 pages");
}

#[tokio::test]
async fn the_management_api_lists_and_acts_on_clients_sessions_subscriptions_and_retained() {
    let broker = Broker::start();
    let api = broker.api_addr();
    // A v5 subscriber with two subscriptions, a 3.1.1 persistent session gone offline.
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V5, "watched", true).await;
    assert_eq!(
        sub.subscribe(1, &[("m/#", QoS::AtLeastOnce), ("x/+", QoS::AtMostOnce)])
            .await,
        [1, 0]
    );
    let (offline, _) = Raw::connect(broker.port, Protocol::V3_1_1, "sleeper", false).await;
    offline.disconnect().await;
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "pub", true).await;
    publisher
        .publish("m/r", b"kept", QoS::AtLeastOnce, 1, true)
        .await;
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"kept");

    let (s, clients) = call(&api, "GET", "/api/v1/clients", None);
    assert_eq!(s, 200, "{clients}");
    let ids: Vec<&str> = clients["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientid"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"watched") && ids.contains(&"pub") && !ids.contains(&"sleeper"),
        "{clients}"
    );
    let (s, one) = call(&api, "GET", "/api/v1/clients/watched", None);
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["protocol"], "5.0");
    assert_eq!(one["subscriptions"], 2);
    assert_eq!(one["listener"], "mqtt");
    assert!(
        one["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{one}"
    );
    let filters: Vec<&str> = one["subscriptions_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["filter"].as_str().unwrap())
        .collect();
    assert_eq!(filters, ["m/#", "x/+"]);
    assert_eq!(call(&api, "GET", "/api/v1/clients/nobody", None).0, 404);
    let (_, filtered) = call(&api, "GET", "/api/v1/clients?clientid=atch", None);
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1, "{filtered}");

    let (_, sessions) = call(&api, "GET", "/api/v1/sessions?connected=false", None);
    let offline_ids: Vec<&str> = sessions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["clientid"].as_str().unwrap())
        .collect();
    assert_eq!(offline_ids, ["sleeper"], "{sessions}");
    let (_, subs) = call(&api, "GET", "/api/v1/subscriptions?match=m/a/b", None);
    assert_eq!(subs["data"][0]["filter"], "m/#", "{subs}");
    assert_eq!(subs["data"][0]["qos"], 1, "{subs}");
    let (_, topics) = call(&api, "GET", "/api/v1/topics", None);
    let routes: Vec<&str> = topics["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["filter"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["m/#", "x/+"], "{topics}");

    // Retained: listed, read, deleted (an empty retained publish reaches subscribers too).
    let (_, retained) = call(&api, "GET", "/api/v1/retained?topic=m/%23", None);
    assert_eq!(retained["data"][0]["topic"], "m/r", "{retained}");
    let (s, r) = call(&api, "GET", "/api/v1/retained/m/r", None);
    assert_eq!((s, r["payload"].as_str()), (200, Some("kept")), "{r}");
    assert_eq!(call(&api, "DELETE", "/api/v1/retained/m/r", None).0, 200);
    let cleared = sub.expect_publish().await;
    assert_eq!((&cleared.topic[..], cleared.payload.len()), ("m/r", 0));
    assert_eq!(call(&api, "GET", "/api/v1/retained/m/r", None).0, 404);
    assert_eq!(call(&api, "DELETE", "/api/v1/retained/m/r", None).0, 404);

    // Publish as the broker, traced.
    let (s, t) = call(
        &api,
        "POST",
        "/api/v1/trace/watched",
        Some(r#"{"seconds":30,"max_packets":100}"#),
    );
    assert_eq!(s, 200, "{t}");
    let (s, p) = call(
        &api,
        "POST",
        "/api/v1/publish",
        Some(r#"{"topic":"m/api","payload":"aGk=","encoding":"base64","qos":1}"#),
    );
    assert_eq!(s, 200, "{p}");
    let got = sub.expect_publish().await;
    assert_eq!(
        (&got.topic[..], got.payload.as_ref()),
        ("m/api", &b"hi"[..])
    );
    sub.send(&shardmq_codec::Packet::PubAck(common::ack_body(got.pkid)))
        .await;
    let traced = eventually(WAIT, || async {
        let (_, t) = call(&api, "GET", "/api/v1/trace/watched", None);
        let lines: Vec<String> = t["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l["dir"].as_str().unwrap(),
                    l["packet"].as_str().unwrap()
                )
            })
            .collect();
        lines
            .iter()
            .any(|l| l.starts_with("out PUBLISH topic=m/api qos=1"))
            && lines.iter().any(|l| l.starts_with("in PUBACK"))
    })
    .await;
    assert!(
        traced,
        "{}",
        call(&api, "GET", "/api/v1/trace/watched", None).1
    );
    assert_eq!(call(&api, "DELETE", "/api/v1/trace/watched", None).0, 200);
    for bad in [
        r#"{"topic":"a/+"}"#,
        r#"{"topic":"$SYS/x"}"#,
        r#"{"topic":"a","qos":3}"#,
        r#"{"topic":"a","encoding":"hex"}"#,
        "{",
    ] {
        assert_eq!(
            call(&api, "POST", "/api/v1/publish", Some(bad)).0,
            400,
            "{bad}"
        );
    }
    assert_eq!(call(&api, "GET", "/api/v1/clients?limit=0", None).0, 400);
    assert_eq!(
        call(&api, "GET", "/api/v1/clients?cursor=junk", None).0,
        400
    );

    // Kick: a v5 client reads DISCONNECT 0x98; its session stays.
    assert_eq!(call(&api, "DELETE", "/api/v1/clients/watched", None).0, 200);
    let last = sub.expect_closed(WAIT).await;
    assert!(
        last.iter()
            .any(|p| matches!(p, shardmq_codec::Packet::Disconnect(d) if d.reason.0 == 0x98)),
        "{last:?}"
    );
    assert_eq!(call(&api, "DELETE", "/api/v1/clients/watched", None).0, 404);
    // Delete the offline session: it is gone, and a reconnect finds no session.
    assert_eq!(
        call(&api, "DELETE", "/api/v1/sessions/sleeper", None).0,
        200
    );
    assert_eq!(call(&api, "GET", "/api/v1/sessions/sleeper", None).0, 404);
    let (_, ack) = Raw::connect(broker.port, Protocol::V3_1_1, "sleeper", false).await;
    assert!(!ack.session_present);

    let (s, overview) = call(&api, "GET", "/api/v1/overview", None);
    assert_eq!(s, 200);
    assert_eq!(overview["node"]["shards"], 2, "{overview}");
    assert_eq!(
        overview["nodes"][0]["shards"].as_array().unwrap().len(),
        2,
        "{overview}"
    );
    let (s, alarms) = call(&api, "GET", "/api/v1/alarms", None);
    assert_eq!(s, 200);
    assert_eq!(alarms["data"], serde_json::json!([]), "{alarms}");
}

#[tokio::test]
async fn listing_clients_pages_through_every_shard_once() {
    let broker = Broker::start();
    let api = broker.api_addr();
    let mut held = Vec::new();
    for i in 0..230 {
        let (raw, _) =
            Raw::connect(broker.port, Protocol::V3_1_1, &format!("page-{i:03}"), true).await;
        held.push(raw);
    }
    let (items, pages) = all_pages(&api, "/api/v1/clients", 50);
    let ids: std::collections::BTreeSet<String> = items
        .iter()
        .map(|c| c["clientid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 230, "every client once");
    assert_eq!(items.len(), 230, "no client twice");
    assert!(pages >= 5, "{pages} pages of 50");
    let shards: std::collections::BTreeSet<u64> =
        items.iter().map(|c| c["shard"].as_u64().unwrap()).collect();
    assert_eq!(shards.len(), 2, "clients on both shards");
    let (sessions, _) = all_pages(&api, "/api/v1/sessions", 1000);
    assert_eq!(sessions.len(), 230);
    let (filtered, _) = all_pages(&api, "/api/v1/clients?clientid=page-1", 7);
    assert_eq!(filtered.len(), 100, "page-100 .. page-199");
}

#[tokio::test]
async fn a_reload_puts_limits_in_force_without_dropping_connections_and_names_what_needs_a_restart()
{
    let dir = std::env::temp_dir().join(format!("shardmq-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shardmq.toml");
    let write = |text: &str| std::fs::write(&file, text).expect("write config");
    write("[listener]\nmax_connections = 1000\n[log]\nlevel = \"warn,shardmq::node=info\"\n");
    let path = file.to_str().unwrap().to_string();
    let broker = Broker::start_with_args(&[], &["--config", &path]);
    let api = broker.api_addr();
    let (mut held, _) = Raw::connect(broker.port, Protocol::V5, "held", true).await;

    write("[listener]\nmax_connections = 1\n[mqtt]\nsend_timeout_ms = 5000\n[log]\nlevel = \"warn,shardmq::node=info\"\n");
    let (s, outcome) = call(&api, "POST", "/api/v1/config/reload", None);
    assert_eq!(s, 200, "{outcome}");
    assert_eq!(
        outcome["applied"],
        serde_json::json!(["listener.max_connections"]),
        "{outcome}"
    );
    assert_eq!(
        outcome["restart_required"],
        serde_json::json!(["mqtt.send_timeout_ms"]),
        "{outcome}"
    );
    let (_, ack) = Raw::connect_with(
        broker.port,
        common::connect_packet(Protocol::V5, "over", true, 0),
    )
    .await;
    assert_eq!(
        ack.code.0, 0x89,
        "max_connections = 1 is in force: Server busy"
    );
    // The connection that was there stays up.
    held.send(&shardmq_codec::Packet::PingReq).await;
    assert!(matches!(
        held.expect(WAIT).await,
        shardmq_codec::Packet::PingResp
    ));

    // An invalid file changes nothing.
    write("[listener]\nmax_connections = \"many\"\n");
    let (s, failed) = call(&api, "POST", "/api/v1/config/reload", None);
    assert_eq!(s, 500, "{failed}");
    assert_eq!(failed["reloaded"], false, "{failed}");

    // SIGHUP does the same: the limit goes back up.
    write("[listener]\nmax_connections = 1000\n");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) }, 0);
    let admitted = eventually(WAIT, || async {
        let (_, ack) = Raw::connect_with(
            broker.port,
            common::connect_packet(Protocol::V5, "later", true, 0),
        )
        .await;
        ack.code.0 == 0
    })
    .await;
    assert!(admitted, "{}", broker.log());
    broker.expect_warn("take effect only after a restart").await;
    held.send(&shardmq_codec::Packet::PingReq).await;
    assert!(matches!(
        held.expect(WAIT).await,
        shardmq_codec::Packet::PingResp
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
