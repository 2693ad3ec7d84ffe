//! `shardmq tune`: the host tuning profiles in `tuning/` and a check of the running host against
//! them.
//!
//! A [`Profile`] is the files an operator installs as they are (`sysctl.conf`, `limits.conf`,
//! the systemd unit), embedded in the binary. [`check`] reads the host through a [`HostReader`]
//! (the real `/proc` and `/sys`, or a fake root for tests) and gives one [`Finding`] per
//! setting: what the profile requires, what the host has, and the command that fixes it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::cpus::{format_ranges, parse_ranges};

/// File descriptors a node needs besides its client sockets: listeners, io_uring rings,
/// eventfds and channels per shard, logs. `listener.max_connections` plus this must fit under
/// `RLIMIT_NOFILE`.
pub const NOFILE_MARGIN: u64 = 1024;

/// The open-file limit (`RLIMIT_NOFILE`) that `max_connections` connections need.
pub fn nofile_needed(max_connections: u64) -> u64 {
    max_connections.saturating_add(NOFILE_MARGIN)
}

/// If `max_connections` connections do not fit under the soft open-file limit `nofile`, the
/// limit they need.
pub fn nofile_shortfall(max_connections: u64, nofile: u64) -> Option<u64> {
    let needed = nofile_needed(max_connections);
    (nofile < needed).then_some(needed)
}

/// The systemd unit, shared by the profiles.
pub const SERVICE: &str = include_str!("../tuning/shardmq.service");

/// A tuning profile: the files of `tuning/<name>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// `million` or `default`.
    pub name: &'static str,
    /// `tuning/<name>/sysctl.conf`.
    pub sysctl_conf: &'static str,
    /// `tuning/<name>/limits.conf`.
    pub limits_conf: &'static str,
    /// Soft and hard `RLIMIT_NOFILE` the profile sets.
    pub nofile: u64,
    /// Soft `RLIMIT_MEMLOCK` the profile sets, in bytes (`u64::MAX` = unlimited).
    pub memlock: u64,
    /// Whether transparent huge pages must be `madvise` or `never`.
    pub thp_not_always: bool,
}

/// The profiles, `million` first.
pub const PROFILES: [Profile; 2] = [
    Profile {
        name: "million",
        sysctl_conf: include_str!("../tuning/million/sysctl.conf"),
        limits_conf: include_str!("../tuning/million/limits.conf"),
        nofile: 2_097_152,
        memlock: u64::MAX,
        thp_not_always: true,
    },
    Profile {
        name: "default",
        sysctl_conf: include_str!("../tuning/default/sysctl.conf"),
        limits_conf: include_str!("../tuning/default/limits.conf"),
        nofile: 65_536,
        memlock: 64 << 20,
        thp_not_always: false,
    },
];

impl Profile {
    /// The profile called `name`.
    pub fn named(name: &str) -> Option<Profile> {
        PROFILES.into_iter().find(|p| p.name == name)
    }

    /// The `key = value` settings of its `sysctl.conf`, in file order.
    pub fn sysctls(&self) -> Vec<(&'static str, &'static str)> {
        self.sysctl_conf
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim()))
            .collect()
    }

    /// The file called `file` (`sysctl.conf`, `limits.conf` or `shardmq.service`).
    pub fn file(&self, file: &str) -> Option<&'static str> {
        match file {
            "sysctl.conf" => Some(self.sysctl_conf),
            "limits.conf" => Some(self.limits_conf),
            "shardmq.service" => Some(SERVICE),
            _ => None,
        }
    }

    /// Every file of the profile, each under a `# ==> tuning/... <==` header.
    pub fn print_all(&self) -> String {
        format!(
            "# ==> tuning/{0}/sysctl.conf <==\n{1}\n# ==> tuning/{0}/limits.conf <==\n{2}\n# ==> tuning/shardmq.service <==\n{3}",
            self.name, self.sysctl_conf, self.limits_conf, SERVICE
        )
    }
}

/// Resource limits of the process that will run the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE` the broker will have: the hard limit, since it raises its soft limit to
    /// the hard one at start ([`raise_nofile_to_hard`]).
    pub nofile: u64,
    /// Soft `RLIMIT_MEMLOCK`, bytes; `u64::MAX` = unlimited.
    pub memlock: u64,
}

impl Rlimits {
    /// This process's limits (`getrlimit`): the hard open-file limit, the soft memlock limit.
    pub fn current() -> Rlimits {
        Rlimits {
            nofile: limits(libc::RLIMIT_NOFILE).map_or(0, |(_, hard)| hard),
            memlock: limits(libc::RLIMIT_MEMLOCK).map_or(0, |(soft, _)| soft),
        }
    }
}

/// The soft and hard limits of `resource`; `u64::MAX` for unlimited.
fn limits(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return None;
    }
    let value = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v
        }
    };
    Some((value(limit.rlim_cur), value(limit.rlim_max)))
}

/// The current soft `RLIMIT_NOFILE` of this process (0 if it cannot be read).
pub fn nofile_limit() -> u64 {
    limits(libc::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (an unprivileged process may;
/// systemd, for one, starts services with a soft limit of 1024 under a much higher hard one).
/// An unlimited hard limit is capped at `fs.nr_open`, the most the kernel allows. Returns the
/// soft limit in effect afterwards.
pub fn raise_nofile_to_hard() -> u64 {
    let Some((soft, hard)) = limits(libc::RLIMIT_NOFILE) else {
        return 0;
    };
    let target = if hard == u64::MAX {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1_048_576)
    } else {
        hard
    };
    if soft >= target {
        return soft;
    }
    let limit = libc::rlimit {
        rlim_cur: target,
        rlim_max: if hard == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            hard
        },
    };
    // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return soft;
    }
    target
}

/// Reads the host: files under a root (`/` for the real host), the process's limits, and
/// whether io_uring can be set up.
#[derive(Debug, Clone)]
pub struct HostReader {
    root: PathBuf,
    rlimits: Rlimits,
    io_uring: Result<(), String>,
}

impl HostReader {
    /// The running host: `/proc`, `/sys`, this process's limits, a real `io_uring_setup`.
    pub fn live() -> HostReader {
        HostReader {
            root: PathBuf::from("/"),
            rlimits: Rlimits::current(),
            io_uring: probe_io_uring(),
        }
    }

    /// Reads `<root>/proc/sys/...` and `<root>/sys/...`; limits are this process's and io_uring
    /// is probed for real until [`Self::rlimits`] and [`Self::io_uring`] say otherwise.
    pub fn with_root(root: impl Into<PathBuf>) -> HostReader {
        HostReader {
            root: root.into(),
            ..HostReader::live()
        }
    }

    /// Uses these limits instead of the process's.
    pub fn rlimits(mut self, rlimits: Rlimits) -> HostReader {
        self.rlimits = rlimits;
        self
    }

    /// Uses this outcome instead of probing `io_uring_setup`.
    pub fn io_uring(mut self, outcome: Result<(), String>) -> HostReader {
        self.io_uring = outcome;
        self
    }

    /// The trimmed content of `path` (absolute, as on the host) under the root.
    pub fn read(&self, path: &str) -> Option<String> {
        let path = self.root.join(path.trim_start_matches('/'));
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_owned())
    }

    /// The value of sysctl `key` (`net.core.somaxconn`), whitespace-normalised.
    pub fn sysctl(&self, key: &str) -> Option<String> {
        self.read(&sysctl_path(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The root the reader reads under.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// `/proc/sys/...` path of sysctl `key`.
pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Sets up and tears down a small io_uring (`io_uring_setup(2)`); the error says why not.
pub fn probe_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; all-zero asks for the defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a 120-byte io_uring_params, which `params` is.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` is a descriptor io_uring_setup just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// One line of `tune check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The setting: a sysctl key, `nofile`, `memlock`, ...
    pub name: String,
    /// What the profile requires, in words (`>= 65535`).
    pub required: String,
    /// What the host has.
    pub actual: String,
    /// Whether the host meets it.
    pub ok: bool,
    /// The command that fixes it (empty when ok or when there is nothing to run).
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<34} {:<24} {:<24} {}",
            self.name,
            self.required,
            self.actual,
            if self.ok { "ok" } else { "FAIL" }
        )?;
        if !self.ok && !self.fix.is_empty() {
            write!(f, "  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// How a sysctl value is compared with the profile's.
enum Rule {
    /// Every number at least the profile's.
    AtLeast,
    /// Every number at most the profile's.
    AtMost,
    /// The last number (the cap) at most the profile's.
    CapAtMost,
    /// A range `low high` covering the profile's.
    Covers,
    /// Exactly the profile's value.
    Equal,
}

fn rule(key: &str) -> Rule {
    match key {
        "net.ipv4.tcp_fin_timeout" => Rule::AtMost,
        "net.ipv4.tcp_rmem" | "net.ipv4.tcp_wmem" | "net.core.rmem_max" | "net.core.wmem_max" => {
            Rule::CapAtMost
        }
        "net.ipv4.ip_local_port_range" => Rule::Covers,
        "net.ipv4.tcp_tw_reuse" => Rule::Equal,
        _ => Rule::AtLeast,
    }
}

fn numbers(text: &str) -> Option<Vec<u64>> {
    text.split_whitespace().map(|n| n.parse().ok()).collect()
}

fn meets(key: &str, want: &str, have: &str) -> bool {
    let (Some(want_n), Some(have_n)) = (numbers(want), numbers(have)) else {
        return want == have;
    };
    if want_n.len() != have_n.len() {
        return false;
    }
    let pairs = || want_n.iter().zip(&have_n);
    match rule(key) {
        Rule::AtLeast => pairs().all(|(w, h)| h >= w),
        Rule::AtMost => pairs().all(|(w, h)| h <= w),
        Rule::CapAtMost => want_n.last() >= have_n.last(),
        Rule::Covers => have_n[0] <= want_n[0] && have_n.last() >= want_n.last(),
        Rule::Equal => want_n == have_n,
    }
}

fn required_text(key: &str, want: &str) -> String {
    match rule(key) {
        Rule::AtLeast => format!(">= {want}"),
        Rule::AtMost => format!("<= {want}"),
        Rule::CapAtMost => format!("max <= {}", want.split_whitespace().last().unwrap_or(want)),
        Rule::Covers => format!("covers {want}"),
        Rule::Equal => want.to_owned(),
    }
}

fn limit_text(value: u64) -> String {
    if value == u64::MAX {
        "unlimited".to_owned()
    } else {
        value.to_string()
    }
}

/// Checks the host `host` against `profile` and the node configuration `config`: sysctls,
/// limits (the open-file limit must also hold `listener.max_connections`), CPUs, transparent
/// huge pages, io_uring.
pub fn check(host: &HostReader, profile: &Profile, config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for (key, want) in profile.sysctls() {
        let have = host.sysctl(key);
        let conntrack = key == "net.netfilter.nf_conntrack_max";
        let (ok, actual) = match &have {
            Some(have) => (meets(key, want, have), have.clone()),
            // No conntrack module loaded: nothing tracks the connections.
            None if conntrack => (true, "absent (conntrack off)".to_owned()),
            None => (false, "absent".to_owned()),
        };
        let value = if want.contains(' ') {
            format!("\"{want}\"")
        } else {
            want.to_owned()
        };
        out.push(Finding {
            name: key.to_owned(),
            required: required_text(key, want),
            actual,
            ok,
            fix: format!("sudo sysctl -w {key}={value}"),
        });
    }

    let r = host.rlimits;
    let nofile = profile
        .nofile
        .max(nofile_needed(config.listener.max_connections));
    out.push(Finding {
        name: "nofile (RLIMIT_NOFILE hard)".to_owned(),
        required: format!(">= {nofile}"),
        actual: limit_text(r.nofile),
        ok: r.nofile >= nofile,
        fix: format!(
            "LimitNOFILE={nofile} in the systemd unit (tuning/shardmq.service), or: shardmq tune print --profile {} --file limits.conf | sudo tee /etc/security/limits.d/90-shardmq.conf (then log in again)",
            profile.name
        ),
    });
    out.push(Finding {
        name: "memlock (RLIMIT_MEMLOCK)".to_owned(),
        required: format!(">= {}", limit_text(profile.memlock)),
        actual: limit_text(r.memlock),
        ok: r.memlock >= profile.memlock,
        fix: format!(
            "LimitMEMLOCK={} in the systemd unit, or: shardmq tune print --profile {} --file limits.conf | sudo tee /etc/security/limits.d/90-shardmq.conf",
            if profile.memlock == u64::MAX {
                "infinity".to_owned()
            } else {
                profile.memlock.to_string()
            },
            profile.name
        ),
    });

    check_cpus(host, config, &mut out);

    let thp = host.read("/sys/kernel/mm/transparent_hugepage/enabled");
    // "always [madvise] never": the bracketed word is the mode.
    let mode = thp.as_deref().and_then(|t| {
        t.split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(['[', ']']).to_owned())
    });
    out.push(Finding {
        name: "transparent_hugepage".to_owned(),
        required: if profile.thp_not_always {
            "madvise|never".to_owned()
        } else {
            "any".to_owned()
        },
        actual: mode.clone().unwrap_or_else(|| "absent".to_owned()),
        ok: !profile.thp_not_always || mode.as_deref() != Some("always"),
        fix: "echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled".to_owned(),
    });

    let disabled = host.sysctl("kernel.io_uring_disabled");
    out.push(Finding {
        name: "kernel.io_uring_disabled".to_owned(),
        required: "0".to_owned(),
        actual: disabled
            .clone()
            .unwrap_or_else(|| "absent (not in this kernel)".to_owned()),
        ok: disabled.as_deref().is_none_or(|d| d == "0"),
        fix: "sudo sysctl -w kernel.io_uring_disabled=0".to_owned(),
    });
    out.push(Finding {
        name: "io_uring_setup".to_owned(),
        required: "works".to_owned(),
        actual: match &host.io_uring {
            Ok(()) => "works".to_owned(),
            Err(e) => e.clone(),
        },
        ok: host.io_uring.is_ok(),
        fix: "use Linux 5.8 or newer with io_uring enabled, outside a seccomp profile that blocks it (docker: --security-opt seccomp=unconfined)".to_owned(),
    });
    out
}

/// CPU count, isolation, and whether `node.cpus` and `node.control_cpu` are usable here.
fn check_cpus(host: &HostReader, config: &Config, out: &mut Vec<Finding>) {
    let read_set = |path: &str| {
        host.read(path)
            .filter(|t| !t.is_empty())
            .and_then(|t| parse_ranges(&t).ok())
    };
    let online = read_set("/sys/devices/system/cpu/online").unwrap_or_else(|| {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    });
    let isolated = read_set("/sys/devices/system/cpu/isolated").unwrap_or_default();
    let nohz = read_set("/sys/devices/system/cpu/nohz_full").unwrap_or_default();
    out.push(Finding {
        name: "cpus online".to_owned(),
        required: ">= 1".to_owned(),
        actual: format!("{} ({})", online.len(), format_ranges(&online)),
        ok: !online.is_empty(),
        fix: String::new(),
    });
    out.push(Finding {
        name: "cpus isolated / nohz_full".to_owned(),
        required: "optional".to_owned(),
        actual: format!("{} / {}", format_ranges(&isolated), format_ranges(&nohz)),
        ok: true,
        fix: String::new(),
    });
    let shards = config.node.cpus.resolve(&online);
    out.push(Finding {
        name: "node.cpus".to_owned(),
        required: "online CPUs".to_owned(),
        actual: match &shards {
            Ok(cpus) => format_ranges(cpus),
            Err(e) => e.to_string(),
        },
        ok: shards.is_ok(),
        fix: format!(
            "set node.cpus to CPUs among {} (or \"all\")",
            format_ranges(&online)
        ),
    });
    let control = config.node.control_cpu.resolve(&online);
    let overlap = match (&control, &shards) {
        (Ok(Some(cpu)), Ok(cpus)) => cpus.contains(cpu),
        _ => false,
    };
    out.push(Finding {
        name: "node.control_cpu".to_owned(),
        required: "online, not a shard CPU".to_owned(),
        actual: match &control {
            Ok(None) => "none (unpinned)".to_owned(),
            Ok(Some(cpu)) if overlap => format!("{cpu} (also in node.cpus)"),
            Ok(Some(cpu)) => cpu.to_string(),
            Err(e) => e.clone(),
        },
        ok: control.is_ok() && !overlap,
        fix: "set node.control_cpu to an online CPU outside node.cpus, or \"none\"".to_owned(),
    });
}

/// The report `tune check` prints: a header, one line per finding, and a summary.
pub fn report(profile: &Profile, findings: &[Finding]) -> String {
    let mut text = format!(
        "{:<34} {:<24} {:<24} {}\n",
        "name", "required", "actual", "status"
    );
    for finding in findings {
        text.push_str(&finding.to_string());
        text.push('\n');
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed == 0 {
        text.push_str(&format!("# this host meets the {} profile\n", profile.name));
    } else {
        text.push_str(&format!(
            "# {failed} setting(s) fall short of the {0} profile; to make the sysctls permanent: shardmq tune print --profile {0} --file sysctl.conf | sudo tee /etc/sysctl.d/90-shardmq.conf && sudo sysctl --system\n",
            profile.name
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_every_setting_has_a_reason() {
        for profile in PROFILES {
            assert!(!profile.sysctls().is_empty(), "{}", profile.name);
            for text in [profile.sysctl_conf, profile.limits_conf, SERVICE] {
                let lines: Vec<&str> = text.lines().map(str::trim).collect();
                for (i, line) in lines.iter().enumerate() {
                    if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                        continue;
                    }
                    let above = if i == 0 { "" } else { lines[i - 1] };
                    assert!(
                        above.starts_with('#'),
                        "{}: {line:?} has no reason comment above it",
                        profile.name
                    );
                }
            }
        }
        let million = Profile::named("million").unwrap();
        let keys: Vec<&str> = million.sysctls().iter().map(|(k, _)| *k).collect();
        for key in [
            "fs.file-max",
            "fs.nr_open",
            "net.ipv4.ip_local_port_range",
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.core.netdev_max_backlog",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.ipv4.tcp_mem",
            "net.netfilter.nf_conntrack_max",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_tw_reuse",
            "vm.max_map_count",
        ] {
            assert!(keys.contains(&key), "million lacks {key}");
        }
    }

    #[test]
    fn nr_open_is_above_the_nofile_the_profile_asks_for() {
        for profile in PROFILES {
            let nr_open = profile
                .sysctls()
                .into_iter()
                .find(|(k, _)| *k == "fs.nr_open")
                .map_or(1_048_576, |(_, v)| v.parse::<u64>().unwrap());
            assert!(nr_open > profile.nofile, "{}", profile.name);
            assert!(
                profile
                    .limits_conf
                    .contains(&format!("nofile   {}", profile.nofile)),
                "{}",
                profile.name
            );
        }
        assert!(SERVICE.contains("LimitNOFILE=2097152"));
        assert!(SERVICE.contains("Environment=MIMALLOC_ARENA_EAGER_COMMIT=0"));
        assert!(Profile::named("million").unwrap().nofile >= 1_048_576);
    }

    #[test]
    fn comparisons_follow_the_rules() {
        assert!(meets("net.core.somaxconn", "65535", "65535"));
        assert!(!meets("net.core.somaxconn", "65535", "4096"));
        assert!(meets("net.ipv4.tcp_fin_timeout", "15", "10"));
        assert!(!meets("net.ipv4.tcp_fin_timeout", "15", "60"));
        assert!(meets(
            "net.ipv4.tcp_wmem",
            "4096 16384 262144",
            "4096 65536 262144"
        ));
        assert!(!meets(
            "net.ipv4.tcp_wmem",
            "4096 16384 262144",
            "4096 16384 4194304"
        ));
        assert!(meets(
            "net.ipv4.ip_local_port_range",
            "1024 65535",
            "1024 65535"
        ));
        assert!(!meets(
            "net.ipv4.ip_local_port_range",
            "1024 65535",
            "32768 60999"
        ));
        assert!(!meets("net.ipv4.tcp_tw_reuse", "1", "2"));
        assert!(!meets("net.ipv4.tcp_mem", "1 2 3", "1 2"));
    }

    #[test]
    fn nofile_shortfall_counts_the_margin() {
        assert_eq!(nofile_shortfall(1_000_000, 20_000), Some(1_001_024));
        assert_eq!(nofile_shortfall(1000, 20_000), None);
        assert_eq!(nofile_shortfall(18_976, 20_000), None);
        assert_eq!(nofile_shortfall(18_977, 20_000), Some(20_001));
        assert_eq!(nofile_shortfall(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn raising_nofile_reaches_the_hard_limit() {
        let hard = Rlimits::current().nofile;
        let soft = raise_nofile_to_hard();
        assert_eq!(nofile_limit(), soft);
        assert!(soft == hard || hard == u64::MAX, "soft {soft}, hard {hard}");
    }

    #[test]
    fn io_uring_probe_answers() {
        // Either way it must not crash; the sandbox normally allows it.
        let _ = probe_io_uring();
    }
}
