//! `shardmq ctl` against a real broker's management API.

mod common;

use common::Broker;
use serde_json::Value;
use std::process::{Command, Output, Stdio};

/// Runs `shardmq <args>` with no `SHARDMQ_*` variables of ours but `env`.
fn shardmq(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardmq"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SHARDMQ_")) {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run shardmq")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {}; stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure; stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn cluster_and_rlog_status_as_text_and_json() {
    let broker = Broker::start();
    let api = broker.api_addr();

    let text = ok(&shardmq(&["ctl", "--api", &api, "cluster", "status"], &[]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("mode: standalone  node: 1"), "{text}");
    assert!(lines[0].contains("leader: 1"), "{text}");
    let header = lines
        .iter()
        .position(|l| l.starts_with("NODE"))
        .unwrap_or_else(|| panic!("no table header:\n{text}"));
    assert_eq!(
        lines[header].split_whitespace().collect::<Vec<_>>(),
        ["NODE", "ROLE", "ADDR", "API", "STATUS", "LEADER"],
        "{text}"
    );
    let row: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(row, ["1", "core", "-", "-", "running", "*"], "{text}");
    // Columns are aligned: the STATUS header starts where its cell does.
    assert_eq!(
        lines[header].find("STATUS"),
        lines[header + 1].find("running"),
        "{text}"
    );

    // --json, and the options after the subcommand.
    let json: Value = serde_json::from_str(&ok(&shardmq(
        &["ctl", "cluster", "status", "--json", "--api", &api],
        &[],
    )))
    .expect("--json prints JSON");
    assert_eq!(json["mode"], "standalone");
    assert_eq!(json["leader"], 1);

    let text = ok(&shardmq(&["ctl", "--api", &api, "rlog", "status"], &[]));
    assert!(
        text.starts_with("node: 1  role: core  leader: 1\n"),
        "{text}"
    );
    assert!(text.contains("no RLOG shards"), "{text}");
    let json: Value = serde_json::from_str(&ok(&shardmq(
        &["ctl", "--json", "--api", &api, "rlog", "status"],
        &[],
    )))
    .expect("--json prints JSON");
    assert_eq!(json["shards"], Value::Array(vec![]));
}

#[test]
fn api_address_defaults_to_the_configuration() {
    let broker = Broker::start();
    let api = broker.api_addr();

    // From the environment.
    let text = ok(&shardmq(
        &["ctl", "cluster", "status"],
        &[("SHARDMQ_API__LISTEN", &api)],
    ));
    assert!(text.starts_with("mode: standalone"), "{text}");

    // From --config FILE (given before or after `ctl`).
    let file = std::env::temp_dir().join(format!(
        "shardmq-ctl-test-{}-{}.toml",
        std::process::id(),
        broker.api_port
    ));
    std::fs::write(&file, format!("[api]\nlisten = \"{api}\"\n")).expect("write config");
    let path = file.to_str().expect("utf-8 path");
    let text = ok(&shardmq(&["-c", path, "ctl", "rlog", "status"], &[]));
    assert!(text.starts_with("node: 1"), "{text}");
    let text = ok(&shardmq(&["ctl", "--config", path, "rlog", "status"], &[]));
    assert!(text.starts_with("node: 1"), "{text}");
    let _ = std::fs::remove_file(&file);

    // An API switched off in the configuration, and no --api.
    let stderr = failed(&shardmq(
        &["ctl", "cluster", "status"],
        &[("SHARDMQ_API__LISTEN", "")],
    ));
    assert!(stderr.contains("api.listen"), "{stderr}");
    assert!(stderr.contains("--api"), "{stderr}");
}

#[test]
fn join_and_leave_on_a_standalone_node_fail_with_the_reason() {
    let broker = Broker::start();
    let api = broker.api_addr();
    let stderr = failed(&shardmq(
        &["ctl", "--api", &api, "cluster", "join", "2@127.0.0.1:4371"],
        &[],
    ));
    assert!(stderr.contains("409"), "{stderr}");
    assert!(stderr.contains("standalone"), "{stderr}");
    let stderr = failed(&shardmq(&["ctl", "--api", &api, "cluster", "leave"], &[]));
    assert!(stderr.contains("409"), "{stderr}");
}

#[test]
fn unreachable_api_fails_naming_the_address() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["ctl", "--api", addr.as_str(), "cluster", "status"],
        vec!["ctl", "--api", addr.as_str(), "rlog", "status", "--json"],
    ] {
        let stderr = failed(&shardmq(&args, &[]));
        assert!(stderr.contains(&addr), "{args:?}: {stderr}");
        assert!(stderr.contains("management API"), "{args:?}: {stderr}");
    }
    // The default address, from the configuration.
    let stderr = failed(&shardmq(
        &["ctl", "cluster", "status"],
        &[("SHARDMQ_API__LISTEN", addr.as_str())],
    ));
    assert!(stderr.contains(&addr), "{stderr}");
}

/// A fresh directory for one test's files.
fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardmq-ctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn api_keys_are_made_listed_and_deleted_on_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch_dir("keys");
    let file = dir.join("nested").join("api_keys.json");
    let env = [("SHARDMQ_API__KEYS_FILE", file.to_str().expect("utf-8 path"))];

    let listed = ok(&shardmq(&["ctl", "api-key", "list"], &env));
    assert!(listed.starts_with("no API keys in "), "{listed}");

    let out = shardmq(&["ctl", "api-key", "create", "--name", "grafana"], &env);
    let key = ok(&out).trim().to_owned();
    assert!(key.starts_with("smq_") && key.len() == 47, "{key}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("shown") && note.contains("grafana"), "{note}");
    let second: Value =
        serde_json::from_str(&ok(&shardmq(&["ctl", "api-key", "create", "--json"], &env)))
            .expect("--json");
    let second_key = second["key"].as_str().expect("key").to_owned();
    assert_ne!(second_key, key);

    // The file: mode 0600, hashes only.
    let mode = std::fs::metadata(&file)
        .expect("keys file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let stored = std::fs::read_to_string(&file).expect("read");
    assert!(
        !stored.contains(&key[4..]) && !stored.contains(&second_key[4..]),
        "{stored}"
    );

    let stderr = failed(&shardmq(
        &["ctl", "api-key", "create", "--name", "grafana"],
        &env,
    ));
    assert!(stderr.contains("exists already"), "{stderr}");

    let listed = ok(&shardmq(&["ctl", "api-key", "list"], &env));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "CREATED"]
    );
    assert!(lines[1].contains("grafana"), "{listed}");
    assert!(!listed.contains("smq_"), "no secrets listed:\n{listed}");
    let json: Value =
        serde_json::from_str(&ok(&shardmq(&["ctl", "api-key", "list", "--json"], &env)))
            .expect("--json");
    let ids: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|k| k["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], second["id"].as_str().unwrap());
    assert!(
        json[0]["created"].as_str().unwrap().ends_with('Z'),
        "{json}"
    );

    // Delete by name, then by id; an unknown one fails.
    ok(&shardmq(&["ctl", "api-key", "delete", "grafana"], &env));
    let text = ok(&shardmq(&["ctl", "api-key", "delete", ids[1]], &env));
    assert!(text.contains(ids[1]), "{text}");
    let stderr = failed(&shardmq(&["ctl", "api-key", "delete", "grafana"], &env));
    assert!(stderr.contains("no key"), "{stderr}");
    assert!(ok(&shardmq(&["ctl", "api-key", "list"], &env)).starts_with("no API keys"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctl_sends_its_api_key() {
    let dir = scratch_dir("send");
    let file = dir.join("api_keys.json");
    let file = file.to_str().expect("utf-8 path");
    let env = [("SHARDMQ_API__KEYS_FILE", file)];
    let key = ok(&shardmq(&["ctl", "api-key", "create"], &env))
        .trim()
        .to_owned();
    let broker = Broker::start_with(&[
        ("SHARDMQ_API__KEYS_FILE", file),
        ("SHARDMQ_API__ALLOW_UNAUTHENTICATED_LOOPBACK", "false"),
    ]);
    let api = broker.api_addr();

    let stderr = failed(&shardmq(&["ctl", "--api", &api, "cluster", "status"], &[]));
    assert!(
        stderr.contains("401") && stderr.contains("--api-key"),
        "{stderr}"
    );
    let stderr = failed(&shardmq(
        &[
            "ctl",
            "--api",
            &api,
            "--api-key",
            "smq_wrong",
            "rlog",
            "status",
        ],
        &[],
    ));
    assert!(
        stderr.contains("401") && stderr.contains("not in"),
        "{stderr}"
    );

    let text = ok(&shardmq(
        &["ctl", "--api", &api, "--api-key", &key, "cluster", "status"],
        &[],
    ));
    assert!(text.starts_with("mode: standalone"), "{text}");
    let text = ok(&shardmq(
        &["ctl", "--api", &api, "rlog", "status"],
        &[("SHARDMQ_API_KEY", &key)],
    ));
    assert!(text.starts_with("node: 1"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctl_reaches_an_https_api() {
    let dir = scratch_dir("https");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let (cert_file, key_file) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
    let (cert_path, key_path) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let broker = Broker::start_with(&[
        ("SHARDMQ_API__TLS_CERT_FILE", cert_path),
        ("SHARDMQ_API__TLS_KEY_FILE", key_path),
    ]);
    let api = broker.api_addr();
    let https = format!("https://{api}");

    let text = ok(&shardmq(
        &[
            "ctl", "--api", &https, "--cacert", cert_path, "cluster", "status",
        ],
        &[],
    ));
    assert!(text.starts_with("mode: standalone"), "{text}");
    // From the configuration: HTTPS, trusting api.tls_cert_file.
    let text = ok(&shardmq(
        &["ctl", "rlog", "status"],
        &[
            ("SHARDMQ_API__LISTEN", &api),
            ("SHARDMQ_API__TLS_CERT_FILE", cert_path),
            ("SHARDMQ_API__TLS_KEY_FILE", key_path),
        ],
    ));
    assert!(text.starts_with("node: 1"), "{text}");
    let stderr = failed(&shardmq(
        &["ctl", "--api", &https, "cluster", "status"],
        &[],
    ));
    assert!(stderr.contains("--cacert"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
