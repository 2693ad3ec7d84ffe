//! Which CPUs the shards run on: the `node.cpus` setting and the set of online CPUs.
//!
//! `node.cpus` is `"all"`, a list of CPU ids (`[0, 1]`), or a string of ranges (`"0-3,6"`, the
//! format of `/sys/devices/system/cpu/online`). [`CpuSpec::resolve`] turns it into the CPUs to
//! pin one shard each on, checked against [`online_cpus`].

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Largest CPU id accepted plus one (Linux's largest `NR_CPUS`). Bounds what a range such as
/// `"0-4000000000"` may allocate.
pub const CPU_ID_LIMIT: usize = 8192;

/// The `node.cpus` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuSpec {
    /// Every online CPU.
    All,
    /// These CPU ids, in this order (shard `i` runs on the `i`-th).
    List(Vec<usize>),
}

/// Why `node.cpus` cannot be used. Every message names `node.cpus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuError {
    /// A string that is neither `"all"` nor a list of ranges.
    Syntax {
        /// The text as written.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No CPU at all.
    Empty,
    /// The same CPU listed twice.
    Duplicate(usize),
    /// A CPU id at or above [`CPU_ID_LIMIT`].
    TooLarge(usize),
    /// A CPU that is not online (or does not exist).
    Offline {
        /// The CPU asked for.
        cpu: usize,
        /// The online CPUs, as ranges.
        online: String,
    },
}

impl fmt::Display for CpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { input, reason } => {
                write!(f, "node.cpus: {input:?} is not \"all\" nor a list of CPU ranges such as \"0-3,6\": {reason}")
            }
            Self::Empty => write!(
                f,
                "node.cpus: no CPU given; use \"all\" or at least one CPU id"
            ),
            Self::Duplicate(cpu) => write!(f, "node.cpus: CPU {cpu} is listed more than once"),
            Self::TooLarge(cpu) => {
                write!(
                    f,
                    "node.cpus: CPU {cpu} is out of range (ids are below {CPU_ID_LIMIT})"
                )
            }
            Self::Offline { cpu, online } => {
                write!(
                    f,
                    "node.cpus: CPU {cpu} is not online (online CPUs: {online})"
                )
            }
        }
    }
}

impl std::error::Error for CpuError {}

impl CpuSpec {
    /// Parses `"all"` (any case) or a comma-separated list of CPU ids and inclusive ranges
    /// (`"0-3,6"`, spaces allowed around items). Refuses empty lists, reversed ranges,
    /// duplicates and ids at or above [`CPU_ID_LIMIT`].
    pub fn parse(input: &str) -> Result<Self, CpuError> {
        if input.trim().eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let cpus = parse_ranges(input)?;
        check_list(&cpus)?;
        Ok(Self::List(cpus))
    }

    /// The CPUs to run shards on, given the online CPUs (see [`online_cpus`]). `All` gives every
    /// online CPU in ascending order; a list is kept in its order and must name distinct online
    /// CPUs. An empty result is an error.
    pub fn resolve(&self, online: &[usize]) -> Result<Vec<usize>, CpuError> {
        let cpus = match self {
            Self::All => {
                let set: BTreeSet<usize> = online.iter().copied().collect();
                set.into_iter().collect()
            }
            Self::List(cpus) => {
                check_list(cpus)?;
                if let Some(&cpu) = cpus.iter().find(|cpu| !online.contains(cpu)) {
                    return Err(CpuError::Offline {
                        cpu,
                        online: format_ranges(online),
                    });
                }
                cpus.clone()
            }
        };
        if cpus.is_empty() {
            return Err(CpuError::Empty);
        }
        Ok(cpus)
    }

    /// Checks what can be checked without knowing the machine: a list is non-empty, has no
    /// duplicates and no id at or above [`CPU_ID_LIMIT`].
    pub fn check(&self) -> Result<(), CpuError> {
        match self {
            Self::All => Ok(()),
            Self::List(cpus) => check_list(cpus),
        }
    }
}

fn check_list(cpus: &[usize]) -> Result<(), CpuError> {
    if cpus.is_empty() {
        return Err(CpuError::Empty);
    }
    let mut seen = BTreeSet::new();
    for &cpu in cpus {
        if cpu >= CPU_ID_LIMIT {
            return Err(CpuError::TooLarge(cpu));
        }
        if !seen.insert(cpu) {
            return Err(CpuError::Duplicate(cpu));
        }
    }
    Ok(())
}

/// Parses `"0-3,6"` into `[0, 1, 2, 3, 6]`, keeping the written order. Does not check for
/// duplicates.
pub(crate) fn parse_ranges(input: &str) -> Result<Vec<usize>, CpuError> {
    let syntax = |reason: String| CpuError::Syntax {
        input: input.to_owned(),
        reason,
    };
    let id = |text: &str| -> Result<usize, CpuError> {
        let text = text.trim();
        let cpu: usize = text
            .parse()
            .map_err(|_| syntax(format!("{text:?} is not a CPU id")))?;
        if cpu >= CPU_ID_LIMIT {
            return Err(CpuError::TooLarge(cpu));
        }
        Ok(cpu)
    };
    if input.trim().is_empty() {
        return Err(CpuError::Empty);
    }
    let mut cpus = Vec::new();
    for item in input.split(',') {
        match item.split_once('-') {
            None => cpus.push(id(item)?),
            Some((first, last)) => {
                let (first, last) = (id(first)?, id(last)?);
                if first > last {
                    return Err(syntax(format!("range {first}-{last} is reversed")));
                }
                cpus.extend(first..=last);
            }
        }
    }
    Ok(cpus)
}

/// Formats CPU ids as ascending ranges: `[0, 1, 2, 3, 6]` gives `"0-3,6"`.
pub fn format_ranges(cpus: &[usize]) -> String {
    let set: BTreeSet<usize> = cpus.iter().copied().collect();
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.into_iter().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    if out.is_empty() {
        "none".to_owned()
    } else {
        out.join(",")
    }
}

/// The CPUs this process may run on, ascending: the online CPUs of the machine
/// (`/sys/devices/system/cpu/online`) that are also in the process's affinity mask
/// (`sched_getaffinity`: `taskset`, cgroup cpusets, systemd `CPUAffinity`). If only one of the
/// two can be read, that one; if neither, `0..available_parallelism`.
pub fn online_cpus() -> Vec<usize> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| parse_ranges(text.trim()).ok())
        .filter(|cpus| !cpus.is_empty());
    match (online, affinity_cpus()) {
        (Some(online), Some(allowed)) => {
            let both: Vec<usize> = online
                .iter()
                .copied()
                .filter(|c| allowed.contains(c))
                .collect();
            if !both.is_empty() {
                return both;
            }
            return allowed;
        }
        (Some(cpus), None) | (None, Some(cpus)) => return cpus,
        (None, None) => {}
    }
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..count).collect()
}

/// The CPUs in the calling thread's affinity mask, or `None` if it cannot be read or is empty.
fn affinity_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t and the size passed is its exact size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    let limit = (libc::CPU_SETSIZE as usize).min(CPU_ID_LIMIT);
    // SAFETY: CPU_ISSET only reads `set`, and every id is below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..limit)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// The `node.control_cpu` setting: the CPU the control plane runs on, or none (unpinned).
///
/// Written `"none"` or a CPU id (`0`, or `"0"` as an environment value). Until the control plane
/// has its own thread, the node pins its main thread there once the shards have started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlCpu {
    /// Not pinned: the control plane may run on any CPU of the process's affinity mask.
    #[default]
    None,
    /// Pinned to this CPU.
    Cpu(usize),
}

impl ControlCpu {
    /// Checks that the CPU (if any) is usable: online and in the process's affinity mask, i.e.
    /// in `usable` (see [`online_cpus`]). Returns the CPU. The message names `node.control_cpu`.
    pub fn resolve(&self, usable: &[usize]) -> Result<Option<usize>, String> {
        match *self {
            Self::None => Ok(None),
            Self::Cpu(cpu) if usable.contains(&cpu) => Ok(Some(cpu)),
            Self::Cpu(cpu) => Err(format!(
                "node.control_cpu: CPU {cpu} is offline or outside this process's CPU affinity \
                 mask (usable CPUs: {}); pick one of them or \"none\"",
                format_ranges(usable)
            )),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(Self::None);
        }
        let cpu: usize = text
            .parse()
            .map_err(|_| format!("{text:?} is not \"none\" nor a CPU id"))?;
        Self::from_id(cpu)
    }

    fn from_id(cpu: usize) -> Result<Self, String> {
        if cpu >= CPU_ID_LIMIT {
            return Err(format!(
                "CPU {cpu} is out of range (ids are below {CPU_ID_LIMIT})"
            ));
        }
        Ok(Self::Cpu(cpu))
    }
}

impl fmt::Display for ControlCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Cpu(cpu) => write!(f, "{cpu}"),
        }
    }
}

impl Serialize for ControlCpu {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_str("none"),
            Self::Cpu(cpu) => serializer.serialize_u64(*cpu as u64),
        }
    }
}

impl<'de> Deserialize<'de> for ControlCpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ControlCpuVisitor)
    }
}

/// Accepts `"none"`, a CPU id, or a CPU id as a string.
struct ControlCpuVisitor;

impl Visitor<'_> for ControlCpuVisitor {
    type Value = ControlCpu;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"none\" or a CPU id")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<ControlCpu, E> {
        ControlCpu::parse(value).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<ControlCpu, E> {
        ControlCpu::from_id(usize::try_from(value).unwrap_or(usize::MAX)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<ControlCpu, E> {
        match u64::try_from(value) {
            Ok(value) => self.visit_u64(value),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
        }
    }
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`).
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its exact size; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Serialize for CpuSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => serializer.serialize_str("all"),
            Self::List(cpus) => serializer.collect_seq(cpus),
        }
    }
}

impl<'de> Deserialize<'de> for CpuSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CpuSpecVisitor)
    }
}

/// Accepts a string (`"all"`, `"0-3,6"`), a list of integers, or one integer (what an
/// environment value such as `SHARDMQ_NODE__CPUS=3` becomes once parsed).
struct CpuSpecVisitor;

impl<'de> Visitor<'de> for CpuSpecVisitor {
    type Value = CpuSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"all\", a list of CPU ids, or a string of CPU ranges such as \"0-3,6\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<CpuSpec, E> {
        CpuSpec::parse(value).map_err(|e| E::custom(without_key(&e)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<CpuSpec, E> {
        let spec = CpuSpec::List(vec![usize::try_from(value).unwrap_or(usize::MAX)]);
        spec.check().map_err(|e| E::custom(without_key(&e)))?;
        Ok(spec)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<CpuSpec, E> {
        match u64::try_from(value) {
            Ok(value) => self.visit_u64(value),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuSpec, A::Error> {
        let mut cpus = Vec::new();
        while let Some(cpu) = seq.next_element::<usize>()? {
            cpus.push(cpu);
        }
        let spec = CpuSpec::List(cpus);
        spec.check()
            .map_err(|e| de::Error::custom(without_key(&e)))?;
        Ok(spec)
    }
}

/// The message of `e` without its leading `node.cpus: `, for errors the configuration loader
/// prefixes with the key itself.
fn without_key(e: &CpuError) -> String {
    let text = e.to_string();
    match text.strip_prefix("node.cpus: ") {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_single_ids() {
        assert_eq!(
            CpuSpec::parse("0-3,6"),
            Ok(CpuSpec::List(vec![0, 1, 2, 3, 6]))
        );
        assert_eq!(CpuSpec::parse(" 1 , 2 "), Ok(CpuSpec::List(vec![1, 2])));
        assert_eq!(CpuSpec::parse("5"), Ok(CpuSpec::List(vec![5])));
        assert_eq!(CpuSpec::parse("6,0-1"), Ok(CpuSpec::List(vec![6, 0, 1])));
        assert_eq!(CpuSpec::parse("2 - 3"), Ok(CpuSpec::List(vec![2, 3])));
    }

    #[test]
    fn parses_all_in_any_case() {
        assert_eq!(CpuSpec::parse("all"), Ok(CpuSpec::All));
        assert_eq!(CpuSpec::parse(" ALL "), Ok(CpuSpec::All));
    }

    #[test]
    fn refuses_bad_syntax() {
        for bad in ["3-1", "a", "1,,2", "-1", "1-", "0-1-2", "1.5"] {
            let err = CpuSpec::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("node.cpus: "), "{bad}: {err}");
        }
        assert!(CpuSpec::parse("3-1")
            .unwrap_err()
            .to_string()
            .contains("reversed"));
        assert_eq!(CpuSpec::parse(""), Err(CpuError::Empty));
        assert_eq!(CpuSpec::parse("  "), Err(CpuError::Empty));
    }

    #[test]
    fn refuses_duplicates_and_huge_ids() {
        assert_eq!(CpuSpec::parse("0-3,2"), Err(CpuError::Duplicate(2)));
        assert_eq!(CpuSpec::parse("1,1"), Err(CpuError::Duplicate(1)));
        assert_eq!(
            CpuSpec::parse("0-4000000000"),
            Err(CpuError::TooLarge(4_000_000_000))
        );
        assert_eq!(
            CpuSpec::List(vec![0, 0]).resolve(&[0, 1]),
            Err(CpuError::Duplicate(0))
        );
    }

    #[test]
    fn resolves_against_online_cpus() {
        let online = [0, 1, 2, 3];
        assert_eq!(CpuSpec::All.resolve(&[3, 1, 0, 2]), Ok(vec![0, 1, 2, 3]));
        assert_eq!(CpuSpec::List(vec![2, 0]).resolve(&online), Ok(vec![2, 0]));
        let err = CpuSpec::List(vec![1, 6]).resolve(&online).unwrap_err();
        assert_eq!(
            err,
            CpuError::Offline {
                cpu: 6,
                online: "0-3".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "node.cpus: CPU 6 is not online (online CPUs: 0-3)"
        );
    }

    #[test]
    fn refuses_empty_sets() {
        assert_eq!(CpuSpec::List(vec![]).resolve(&[0]), Err(CpuError::Empty));
        assert_eq!(CpuSpec::All.resolve(&[]), Err(CpuError::Empty));
    }

    #[test]
    fn formats_ranges() {
        assert_eq!(format_ranges(&[6, 0, 1, 2, 3]), "0-3,6");
        assert_eq!(format_ranges(&[1, 3, 5]), "1,3,5");
        assert_eq!(format_ranges(&[]), "none");
    }

    #[test]
    fn online_cpus_is_not_empty_and_ascending() {
        let cpus = online_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
        assert_eq!(CpuSpec::All.resolve(&cpus), Ok(cpus.clone()));
    }

    #[test]
    fn offline_cpus_in_node_cpus_are_refused_naming_the_key() {
        let usable = online_cpus();
        let missing = usable.iter().max().copied().unwrap_or(0) + 1;
        let err = CpuSpec::List(vec![missing]).resolve(&usable).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("node.cpus: CPU {missing} is not online")),
            "{err}"
        );
    }

    #[test]
    fn control_cpu_parses_none_and_ids() {
        assert_eq!(ControlCpu::parse("none"), Ok(ControlCpu::None));
        assert_eq!(ControlCpu::parse(" NONE "), Ok(ControlCpu::None));
        assert_eq!(ControlCpu::parse("3"), Ok(ControlCpu::Cpu(3)));
        assert!(ControlCpu::parse("0-1").is_err());
        assert!(ControlCpu::parse("8192")
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(ControlCpu::default(), ControlCpu::None);
        assert_eq!(ControlCpu::Cpu(2).to_string(), "2");
        assert_eq!(ControlCpu::None.to_string(), "none");
    }

    #[test]
    fn control_cpu_must_be_usable() {
        assert_eq!(ControlCpu::None.resolve(&[0, 1]), Ok(None));
        assert_eq!(ControlCpu::Cpu(1).resolve(&[0, 1]), Ok(Some(1)));
        let err = ControlCpu::Cpu(5).resolve(&[0, 1]).unwrap_err();
        assert!(
            err.starts_with("node.control_cpu: CPU 5 is offline"),
            "{err}"
        );
        assert!(err.contains("usable CPUs: 0-1"), "{err}");
    }

    #[test]
    fn pinning_to_a_usable_cpu_works_on_a_thread() {
        let cpu = online_cpus()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).expect("pins");
            assert_eq!(affinity_cpus(), Some(vec![cpu]));
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(CPU_ID_LIMIT * 4).is_err());
    }

    #[test]
    fn affinity_mask_is_readable_here() {
        let cpus = affinity_cpus().expect("sched_getaffinity works on Linux");
        assert!(!cpus.is_empty());
    }
}
