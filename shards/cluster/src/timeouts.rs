//! The cluster's liveness timeouts, named in one place with their relations checked at compile
//! time: a node pings every member each [`PING_INTERVAL`]; a member that answered none for
//! [`LIVENESS`] (several pings lost in a row) is shown `stopped` and is no place to send
//! clients to; the Raft leader purges a member silent for `cluster.node_down_purge_ms`, which
//! must be longer than [`LIVENESS`] ([`check_purge`]), so a node is seen down before it is
//! purged, never the other way round.

use std::time::Duration;

/// How often every node pings every member.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// A member whose last ping answer is older than this is down as far as this node can tell:
/// `stopped` in the cluster status, no target for evacuated or rebalanced clients.
pub const LIVENESS: Duration = Duration::from_secs(3);

// ping < liveness: a single lost ping (or a slow answer) does not make a member look down.
const _: () = assert!(PING_INTERVAL.as_millis() * 2 < LIVENESS.as_millis());

/// Checks `cluster.node_down_purge_ms` (0: never purge) against [`LIVENESS`].
pub fn check_purge(purge_ms: u64) -> Result<(), String> {
    if purge_ms == 0 || u128::from(purge_ms) > LIVENESS.as_millis() {
        Ok(())
    } else {
        Err(format!(
            "{purge_ms} must be 0 (never) or more than {} ms, the time after which a silent node is seen down",
            LIVENESS.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_comes_after_liveness() {
        assert!(check_purge(0).is_ok());
        assert!(check_purge(30_000).is_ok());
        assert!(check_purge(LIVENESS.as_millis() as u64 + 1).is_ok());
        assert!(check_purge(LIVENESS.as_millis() as u64).is_err());
        assert!(check_purge(1).is_err());
    }
}
