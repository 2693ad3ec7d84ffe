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
