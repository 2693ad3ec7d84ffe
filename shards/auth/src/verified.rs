//! Passwords already verified against the password file, so that a reconnecting client does not
//! pay the hash again (argon2id takes ~43 ms here; a reconnect storm of thousands of users would
//! otherwise queue for minutes behind the workers).
//!
//! Entries are keyed by HMAC-SHA256 under a random per-process key of `user \0 password`, so the
//! cache never holds a password nor a hash an attacker could test guesses against offline. It is
//! part of the password file's state: a reload (SIGHUP, `POST /api/v1/reload`) starts it empty,
//! so a changed or removed password stops working as soon as the file is reloaded. Bounded by
//! [`VERIFIED_MAX`] entries (full: it starts over) and [`VERIFIED_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Most verified credentials remembered.
pub(crate) const VERIFIED_MAX: usize = 100_000;
/// How long a verified credential is remembered.
pub(crate) const VERIFIED_TTL: Duration = Duration::from_secs(600);

/// The cache (see the module docs).
pub(crate) struct VerifiedCache {
    key: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache").finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// An empty cache with a fresh random key. Without OS randomness the key stays all zeros
    /// and the cache is off (every lookup misses): never a predictable key.
    pub(crate) fn new() -> VerifiedCache {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            tracing::warn!("no OS randomness: the verified-password cache is off");
            key = [0u8; 32];
        }
        VerifiedCache {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, user: &str, password: &[u8]) -> Option<[u8; 32]> {
        if self.key == [0u8; 32] {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        Some(mac.finalize().into_bytes().into())
    }

    /// True when `user` with `password` was verified less than [`VERIFIED_TTL`] ago.
    pub(crate) fn contains(&self, user: &str, password: &[u8], now: Instant) -> bool {
        let Some(tag) = self.tag(user, password) else {
            return false;
        };
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&tag)
            .is_some_and(|&at| now.duration_since(at) < VERIFIED_TTL)
    }

    /// Remembers a verified credential.
    pub(crate) fn insert(&self, user: &str, password: &[u8], now: Instant) {
        let Some(tag) = self.tag(user, password) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VERIFIED_MAX {
            entries.clear();
        }
        entries.insert(tag, now);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_credentials_for_a_while() {
        let c = VerifiedCache::new();
        let t0 = Instant::now();
        assert!(!c.contains("alice", b"pw", t0));
        c.insert("alice", b"pw", t0);
        assert!(c.contains("alice", b"pw", t0 + Duration::from_secs(1)));
        assert!(!c.contains("alice", b"pw2", t0), "another password");
        assert!(
            !c.contains("alic", b"epw", t0),
            "the separator keeps user and password apart"
        );
        assert!(!c.contains("alice", b"pw", t0 + VERIFIED_TTL), "expired");
        for i in 0..VERIFIED_MAX + 1 {
            c.insert(&format!("u{i}"), b"x", t0);
        }
        assert!(c.len() <= VERIFIED_MAX);
    }
}
