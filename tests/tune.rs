//! `shardmq tune`, `node.control_cpu` and the open-file warning at start.
//!
//! `tune check` against this untuned host (its open-file limit is capped at 20,000) must fail
//! naming the open-file limit; against a fake root where the profile is applied it must pass.

mod common;

use common::*;
use shardmq::config::Config;
use shardmq::tune::{self, HostReader, Profile, Rlimits, PROFILES};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh directory under the system temp dir, removed on drop.
struct FakeRoot(PathBuf);

impl FakeRoot {
    fn new(name: &str) -> FakeRoot {
        let dir = std::env::temp_dir().join(format!(
            "shardmq-tune-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeRoot(dir)
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{text}\n")).unwrap();
    }

    /// A host with `profile` applied: its sysctls, two CPUs, THP on madvise, io_uring enabled.
    fn tuned(name: &str, profile: &Profile) -> FakeRoot {
        let root = FakeRoot::new(name);
        for (key, value) in profile.sysctls() {
            // /proc/sys separates multi-value sysctls with tabs.
            root.write(&tune::sysctl_path(key), &value.replace(' ', "\t"));
        }
        root.write("/proc/sys/kernel/io_uring_disabled", "0");
        root.write("/sys/devices/system/cpu/online", "0-1");
        root.write("/sys/devices/system/cpu/isolated", "");
        root.write(
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never",
        );
        root
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tuned_limits(profile: &Profile) -> Rlimits {
    Rlimits {
        nofile: profile.nofile,
        memlock: profile.memlock,
    }
}

fn config_with(vars: &[(&str, &str)]) -> Config {
    let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    shardmq::config::load_from(None, env).expect("valid configuration")
}

fn failed(findings: &[tune::Finding]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| !f.ok)
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn check_passes_on_a_host_where_each_profile_is_applied() {
    for profile in PROFILES {
        let root = FakeRoot::tuned(profile.name, &profile);
        let host = HostReader::with_root(root.path())
            .rlimits(tuned_limits(&profile))
            .io_uring(Ok(()));
        let config = config_with(&[("SHARDMQ_LISTENER__MAX_CONNECTIONS", "50000")]);
        let findings = tune::check(&host, &profile, &config);
        assert_eq!(failed(&findings), Vec::<String>::new(), "{}", profile.name);
        assert!(tune::report(&profile, &findings).contains("this host meets"));
    }
}

#[test]
fn check_names_each_shortfall_with_its_fix() {
    let profile = Profile::named("million").unwrap();
    let root = FakeRoot::tuned("short", &profile);
    root.write("/proc/sys/net/core/somaxconn", "4096");
    root.write("/proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t4194304");
    root.write(
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never",
    );
    root.write("/proc/sys/kernel/io_uring_disabled", "2");
    let host = HostReader::with_root(root.path())
        .rlimits(Rlimits {
            nofile: 20_000,
            memlock: 8 << 20,
        })
        .io_uring(Err("Operation not permitted (os error 1)".into()));
    let findings = tune::check(&host, &profile, &Config::default());
    let failed = failed(&findings);
    let line = |name: &str| {
        failed
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no FAIL line for {name}: {failed:#?}"))
            .clone()
    };
    assert!(line("net.core.somaxconn").ends_with("fix: sudo sysctl -w net.core.somaxconn=65535"));
    assert!(line("net.ipv4.tcp_wmem").contains("4096 16384 4194304"));
    let nofile = line("nofile");
    assert!(
        nofile.contains("20000") && nofile.contains("FAIL"),
        "{nofile}"
    );
    assert!(nofile.contains("LimitNOFILE=2097152"), "{nofile}");
    assert!(line("memlock").contains("LimitMEMLOCK=infinity"));
    assert!(line("transparent_hugepage").contains("echo madvise"));
    assert!(line("kernel.io_uring_disabled").contains("io_uring_disabled=0"));
    assert!(line("io_uring_setup").contains("Operation not permitted"));
    assert_eq!(failed.len(), 7, "{failed:#?}");
}

#[test]
fn nofile_requirement_grows_with_max_connections_and_conntrack_may_be_absent() {
    let profile = Profile::named("default").unwrap();
    let root = FakeRoot::tuned("big", &profile);
    let host = HostReader::with_root(root.path())
        .rlimits(tuned_limits(&profile))
        .io_uring(Ok(()));
    // 65,536 open files hold 50,000 connections but not the default 1,000,000.
    let findings = tune::check(&host, &profile, &Config::default());
    let failed = failed(&findings);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(failed[0].contains(">= 1001024"), "{}", failed[0]);

    // No nf_conntrack module: nothing to raise.
    let million = Profile::named("million").unwrap();
    let root = FakeRoot::tuned("noconntrack", &million);
    std::fs::remove_file(root.path().join("proc/sys/net/netfilter/nf_conntrack_max")).unwrap();
    let host = HostReader::with_root(root.path())
        .rlimits(tuned_limits(&million))
        .io_uring(Ok(()));
    let findings = tune::check(&host, &million, &Config::default());
    assert_eq!(self::failed(&findings), Vec::<String>::new());
}

#[test]
fn control_cpu_outside_the_host_or_on_a_shard_cpu_fails_the_check() {
    let profile = Profile::named("default").unwrap();
    let root = FakeRoot::tuned("control", &profile);
    let host = HostReader::with_root(root.path())
        .rlimits(tuned_limits(&profile))
        .io_uring(Ok(()));
    let limit = ("SHARDMQ_LISTENER__MAX_CONNECTIONS", "1000");
    for (control, cpus, expect) in [
        ("5", "0", "node.control_cpu: CPU 5 is offline"),
        ("1", "0-1", "also in node.cpus"),
    ] {
        let config = config_with(&[
            limit,
            ("SHARDMQ_NODE__CONTROL_CPU", control),
            ("SHARDMQ_NODE__CPUS", cpus),
        ]);
        let failed = failed(&tune::check(&host, &profile, &config));
        assert_eq!(failed.len(), 1, "{failed:#?}");
        assert!(failed[0].contains(expect), "{}", failed[0]);
    }
    let config = config_with(&[
        limit,
        ("SHARDMQ_NODE__CONTROL_CPU", "0"),
        ("SHARDMQ_NODE__CPUS", "1"),
    ]);
    assert_eq!(
        failed(&tune::check(&host, &profile, &config)),
        Vec::<String>::new()
    );
}

/// This sandbox caps the open-file limit at 20,000: the real check fails and says so.
#[test]
fn tune_check_fails_on_this_untuned_host_naming_the_open_file_limit() {
    let nofile = Rlimits::current().nofile;
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["tune", "check", "--profile", "million"])
        .output()
        .expect("runs shardmq tune check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if nofile >= 2_097_152 {
        eprintln!("open-file limit {nofile} already meets the profile; nothing to show here");
        return;
    }
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("nofile"))
        .unwrap_or_else(|| panic!("no nofile line:\n{stdout}"));
    assert!(line.contains("FAIL"), "{line}");
    assert!(line.contains(&nofile.to_string()), "{line}");
    assert!(line.contains("fix: "), "{line}");
    assert!(
        stderr.contains("falls short of the million profile"),
        "{stderr}"
    );
}

#[test]
fn tune_print_emits_the_files_as_installed() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args(args)
            .output()
            .expect("runs shardmq tune print");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let file = |path: &str| std::fs::read_to_string(dir.join(path)).unwrap();
    for name in ["million", "default"] {
        for (flag, path) in [
            ("sysctl.conf", format!("{name}/sysctl.conf")),
            ("limits.conf", format!("{name}/limits.conf")),
            ("shardmq.service", "shardmq.service".to_owned()),
        ] {
            assert_eq!(
                run(&["tune", "print", "--profile", name, "--file", flag]),
                file(&path)
            );
        }
        let all = run(&["tune", "print", "--profile", name]);
        assert!(all.contains(&file(&format!("{name}/sysctl.conf"))));
        assert!(all.contains(&file("shardmq.service")));
    }
}

#[test]
fn broker_warns_when_the_open_file_limit_cannot_hold_max_connections() {
    // The default listener.max_connections (1,000,000) is far above this host's limit.
    let broker = Broker::start();
    assert!(
        broker.warned("cannot hold listener.max_connections = 1000000"),
        "{}",
        broker.log()
    );
    assert!(broker.warned("RLIMIT_NOFILE"), "{}", broker.log());
    drop(broker);
    let broker = Broker::start_with(&[("SHARDMQ_LISTENER__MAX_CONNECTIONS", "1000")]);
    assert!(
        !broker.warned("cannot hold listener.max_connections"),
        "{}",
        broker.log()
    );
}

#[test]
fn control_cpu_pins_the_main_thread_and_warns_on_overlap() {
    let broker = Broker::start_with(&[
        ("SHARDMQ_NODE__CPUS", "0"),
        ("SHARDMQ_NODE__CONTROL_CPU", "1"),
    ]);
    let pid = broker.pid();
    let pinned = || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while pinned() != "1" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(pinned(), "1", "{}", broker.log());
    assert!(!broker.warned("also in node.cpus"), "{}", broker.log());
    drop(broker);

    let broker = Broker::start_with(&[("SHARDMQ_NODE__CONTROL_CPU", "1")]);
    assert!(
        broker.warned("node.control_cpu = 1 is also in node.cpus"),
        "{}",
        broker.log()
    );
}

/// Starts the broker with `var=value` and expects it to refuse to start; its stderr.
fn refused_at_start(var: &str, value: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .env("SHARDMQ_LISTENER__BIND", "127.0.0.1:0")
        .env(var, value)
        .output()
        .expect("runs shardmq");
    assert!(!out.status.success(), "{var}={value} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn control_cpu_that_is_not_usable_is_refused_at_start() {
    let stderr = refused_at_start("SHARDMQ_NODE__CONTROL_CPU", "4000");
    assert!(
        stderr.contains("node.control_cpu: CPU 4000 is offline or outside"),
        "{stderr}"
    );
}

#[test]
fn offline_shard_cpu_is_refused_at_start() {
    let stderr = refused_at_start("SHARDMQ_NODE__CPUS", "4000");
    assert!(
        stderr.contains("node.cpus: CPU 4000 is not online"),
        "{stderr}"
    );
}
