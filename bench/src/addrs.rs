//! Lists of addresses and CPUs given on the command line: `127.0.0.2-127.0.0.50,10.0.0.1`,
//! `0-3,6`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most source addresses one `--ifaddr` may expand to.
pub(crate) const IFADDRS_MAX: usize = 65_536;
/// Most CPUs one `--cpus` may name.
pub(crate) const CPUS_MAX: usize = 1024;

/// The value of `--ifaddr`, expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfAddrs(pub(crate) Vec<IpAddr>);

/// The value of `--cpus`, expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cpus(pub(crate) Vec<usize>);

/// `--ifaddr` for clap.
pub(crate) fn ifaddrs_arg(spec: &str) -> Result<IfAddrs, String> {
    parse_ifaddrs(spec).map(IfAddrs)
}

/// `--cpus` for clap.
pub(crate) fn cpus_arg(spec: &str) -> Result<Cpus, String> {
    parse_cpus(spec).map(Cpus)
}

/// Parses `--ifaddr`: a comma-separated list of addresses and inclusive ranges `a-b` of the
/// same family, expanded in order.
fn parse_ifaddrs(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    for part in items(spec) {
        let room = IFADDRS_MAX - out.len();
        match part.split_once('-') {
            None => {
                if room == 0 {
                    return Err(format!("more than {IFADDRS_MAX} addresses"));
                }
                out.push(parse_ip(part)?);
            }
            Some((a, b)) => match (parse_ip(a)?, parse_ip(b)?) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let (a, b) = (u32::from(a), u32::from(b));
                    check_range(part, u128::from(a), u128::from(b), room)?;
                    out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let (a, b) = (u128::from(a), u128::from(b));
                    check_range(part, a, b, room)?;
                    out.extend((a..=b).map(|x| IpAddr::V6(Ipv6Addr::from(x))));
                }
                _ => return Err(format!("{part:?}: a range must not mix IPv4 and IPv6")),
            },
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(out)
}

/// Parses `--cpus`: a comma-separated list of CPU numbers and inclusive ranges `a-b`.
fn parse_cpus(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in items(spec) {
        let (a, b) = match part.split_once('-') {
            None => (parse_cpu(part)?, parse_cpu(part)?),
            Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
        };
        if a > b || b - a >= CPUS_MAX - out.len() {
            return Err(format!(
                "{part:?}: empty range or more than {CPUS_MAX} CPUs"
            ));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err("no CPU given".into());
    }
    Ok(out)
}

fn items(spec: &str) -> impl Iterator<Item = &str> {
    spec.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{:?}: not an IP address ({e})", s.trim()))
}

fn parse_cpu(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{:?}: not a CPU number ({e})", s.trim()))
}

fn check_range(part: &str, a: u128, b: u128, room: usize) -> Result<(), String> {
    if a > b {
        return Err(format!("{part:?}: the range is empty"));
    }
    if b - a >= room as u128 {
        return Err(format!("{part:?}: more than {IFADDRS_MAX} addresses"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifaddr_lists_and_ranges() {
        let v = parse_ifaddrs("127.0.0.2-127.0.0.4, 10.0.0.1").unwrap();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.1"]);
        let v = parse_ifaddrs("127.0.0.255-127.0.1.0").unwrap();
        assert_eq!(v.len(), 2);
        let v = parse_ifaddrs("::1-::3").unwrap();
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn ifaddr_errors() {
        assert!(parse_ifaddrs("").is_err());
        assert!(parse_ifaddrs("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_ifaddrs("127.0.0.1-::1").is_err());
        assert!(parse_ifaddrs("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_ifaddrs("localhost").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0-2,5").unwrap(), [0, 1, 2, 5]);
        assert_eq!(parse_cpus("1").unwrap(), [1]);
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("0-100000").is_err());
        assert!(parse_cpus(",").is_err());
    }
}
