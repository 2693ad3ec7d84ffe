//! Mosquitto's `password_file`, as written by `mosquitto_passwd` (Mosquitto 2.x), plus argon2id.
//!
//! One user a line, `username:hash`; lines starting with `#` and lines without `:` are skipped
//! (as Mosquitto does). The username is trimmed of blanks; the hash ends at the next `:`.
//! Hashes understood (the constructions of Mosquitto's `pw__digest`):
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 of the password with the
//!   salt, 64 bytes (`mosquitto_passwd`'s default, 101 iterations);
//! - `$6$<base64 salt>$<base64 hash>`: SHA-512 over the password bytes followed by the salt
//!   bytes (`mosquitto_passwd -H sha512`, Mosquitto ≤ 1.6's default);
//! - `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`: a PHC string (what [`passwd_set`] writes).
//!
//! A line whose hash cannot be decoded is dropped with a warning, like Mosquitto does; the rest
//! of the file still loads.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::error::{read_bounded, AuthError};

/// argon2id memory cost written by [`passwd_set`], in KiB (19 MiB: OWASP's first choice).
pub const ARGON2_M_KIB: u32 = 19_456;
/// argon2id passes written by [`passwd_set`].
pub const ARGON2_T: u32 = 2;
/// argon2id lanes written by [`passwd_set`].
pub const ARGON2_P: u32 = 1;

/// Largest argon2id memory cost accepted from a file, in KiB (256 MiB).
const ARGON2_M_KIB_MAX: u32 = 256 * 1024;
/// Most argon2id passes accepted from a file.
const ARGON2_T_MAX: u32 = 64;
/// Most argon2id lanes accepted from a file.
const ARGON2_P_MAX: u32 = 16;
/// Most PBKDF2 iterations accepted from a file (101 is `mosquitto_passwd`'s default).
const PBKDF2_ITERATIONS_MAX: u32 = 10_000_000;
/// Longest salt accepted for `$6$`/`$7$` (Mosquitto writes 12 bytes, reads 12 or 64).
const SALT_BYTES_MAX: usize = 64;
/// Length of a `$6$`/`$7$` hash.
const SHA512_BYTES: usize = 64;
/// Longest username or hash field accepted (Mosquitto's limit).
const FIELD_BYTES_MAX: usize = 65_535;

/// A decoded hash.
#[derive(Clone)]
enum StoredHash {
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; SHA512_BYTES],
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; SHA512_BYTES],
    },
    Argon2id(String),
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoredHash::Sha512 { .. } => "$6$",
            StoredHash::Pbkdf2 { .. } => "$7$",
            StoredHash::Argon2id(_) => "$argon2id$",
        })
    }
}

/// The answer for one username and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordVerdict {
    /// The user is not in the file (the next method may be tried).
    UnknownUser,
    /// The password matches.
    Accepted,
    /// The user is in the file and the password does not match (or none was given).
    Rejected,
}

/// A loaded password file.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, StoredHash>,
}

fn b64() -> GeneralPurpose {
    GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

impl PasswordFile {
    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        Ok(PasswordFile::parse(&read_bounded(path)?))
    }

    /// Parses password file text; undecodable lines are skipped with a warning.
    pub fn parse(text: &str) -> PasswordFile {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let Some((user, hash)) = split_line(line) else {
                continue;
            };
            if user.is_empty() || user.len() > FIELD_BYTES_MAX || hash.len() > FIELD_BYTES_MAX {
                tracing::warn!(line = i + 1, "password file: invalid line skipped");
                continue;
            }
            match decode_hash(hash) {
                Ok(h) => {
                    if users.contains_key(user) {
                        tracing::warn!(line = i + 1, "password file: duplicate user, first kept");
                    } else {
                        users.insert(user.to_owned(), h);
                    }
                }
                Err(why) => {
                    tracing::warn!(line = i + 1, user, why, "password file: line skipped");
                }
            }
        }
        PasswordFile { users }
    }

    /// Number of users loaded.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is loaded.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `username` has a line.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Checks a password. This hashes (milliseconds for argon2id): call it off the event loop.
    pub fn verify(&self, username: &str, password: Option<&[u8]>) -> PasswordVerdict {
        let Some(stored) = self.users.get(username) else {
            return PasswordVerdict::UnknownUser;
        };
        let Some(password) = password else {
            return PasswordVerdict::Rejected;
        };
        if verify_hash(stored, password) {
            PasswordVerdict::Accepted
        } else {
            PasswordVerdict::Rejected
        }
    }
}

/// `user:hash[:…]` → (trimmed user, hash up to the next ':'); `None` for comments and lines
/// without ':'.
fn split_line(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (user, rest) = line.split_once(':')?;
    let hash = rest.split(':').next().unwrap_or("").trim();
    Some((user.trim(), hash))
}

fn decode_hash(s: &str) -> Result<StoredHash, &'static str> {
    if s.starts_with("$argon2id$") {
        let parsed = PasswordHash::new(s).map_err(|_| "invalid argon2id PHC string")?;
        let params = Params::try_from(&parsed).map_err(|_| "invalid argon2id parameters")?;
        if params.m_cost() > ARGON2_M_KIB_MAX
            || params.t_cost() > ARGON2_T_MAX
            || params.p_cost() > ARGON2_P_MAX
        {
            return Err("argon2id parameters above the accepted maximum");
        }
        if parsed.hash.is_none() {
            return Err("argon2id string without a hash");
        }
        return Ok(StoredHash::Argon2id(s.to_owned()));
    }
    let mut parts = s.split('$');
    if parts.next() != Some("") {
        return Err("hash does not start with '$'");
    }
    let kind = parts.next().ok_or("empty hash")?;
    let iterations = match kind {
        "6" => None,
        "7" => {
            let n: u32 = parts
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or("invalid iterations")?;
            if n == 0 || n > PBKDF2_ITERATIONS_MAX {
                return Err("iterations out of range");
            }
            Some(n)
        }
        _ => return Err("unknown hash type"),
    };
    let salt = b64()
        .decode(parts.next().ok_or("missing salt")?)
        .map_err(|_| "bad salt")?;
    if salt.is_empty() || salt.len() > SALT_BYTES_MAX {
        return Err("salt length out of range");
    }
    let hash_v = b64()
        .decode(parts.next().ok_or("missing hash")?)
        .map_err(|_| "bad hash")?;
    let hash: [u8; SHA512_BYTES] = hash_v.try_into().map_err(|_| "hash is not 64 bytes")?;
    if parts.next().is_some() {
        return Err("trailing fields");
    }
    Ok(match iterations {
        None => StoredHash::Sha512 { salt, hash },
        Some(iterations) => StoredHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        },
    })
}

fn verify_hash(stored: &StoredHash, password: &[u8]) -> bool {
    match stored {
        StoredHash::Sha512 { salt, hash } => {
            let mut d = Sha512::new();
            d.update(password);
            d.update(salt);
            bool::from(d.finalize().as_slice().ct_eq(hash))
        }
        StoredHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        } => {
            let mut out = [0u8; SHA512_BYTES];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
            bool::from(out.ct_eq(hash))
        }
        StoredHash::Argon2id(phc) => match PasswordHash::new(phc) {
            Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
            Err(_) => false,
        },
    }
}

/// Hashes `password` into an argon2id PHC string with this crate's parameters
/// ([`ARGON2_M_KIB`], [`ARGON2_T`], [`ARGON2_P`]) and a random 16-byte salt.
pub fn hash_argon2id(password: &[u8]) -> io::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| io::Error::other(e.to_string()))?;
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hash = argon
        .hash_password(password, &salt)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hash.to_string())
}

fn check_username(user: &str) -> io::Result<()> {
    let bad = user.is_empty()
        || user.len() > FIELD_BYTES_MAX
        || user.trim() != user
        || user.starts_with('#')
        || user.contains([':', '\n', '\r', '\0']);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "username must be non-empty, without ':', newlines, NUL, surrounding blanks or a leading '#'",
        ));
    }
    Ok(())
}

/// Adds `user` to the password file at `path` (created if missing) or replaces its line, with
/// an argon2id hash of `password`. Every other line is kept as it is. The file is replaced
/// atomically (a temporary file in the same folder, fsync, rename); a new file gets mode 0600,
/// an existing one keeps its permissions.
pub fn passwd_set(path: &Path, user: &str, password: &str) -> io::Result<()> {
    check_username(user)?;
    let line = format!("{user}:{}", hash_argon2id(password.as_bytes())?);
    rewrite(path, user, Some(&line)).map(|_| ())
}

/// Removes `user`'s line(s) from the password file at `path`, atomically like [`passwd_set`].
/// Returns whether a line was removed (the file is not rewritten when none was).
pub fn passwd_delete(path: &Path, user: &str) -> io::Result<bool> {
    check_username(user)?;
    rewrite(path, user, None)
}

fn rewrite(path: &Path, user: &str, replacement: Option<&str>) -> io::Result<bool> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound && replacement.is_some() => None,
        Err(e) => return Err(e),
    };
    let text = existing.as_deref().unwrap_or("");
    let mut out = String::with_capacity(text.len() + 160);
    let mut found = false;
    for line in text.lines() {
        if split_line(line).is_some_and(|(u, _)| u == user) {
            if !found {
                if let Some(r) = replacement {
                    out.push_str(r);
                    out.push('\n');
                }
            }
            found = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !found {
        match replacement {
            Some(r) => {
                out.push_str(r);
                out.push('\n');
            }
            None => return Ok(false),
        }
    }
    write_atomic(path, out.as_bytes())?;
    Ok(found)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename durable; a folder that cannot be opened is not an error.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines written by Mosquitto 2.0.11's `mosquitto_passwd` (`-b`, and `-H sha512 -b`).
    const REAL: &str = include_str!("../tests/fixtures/passwd_mosquitto");

    #[test]
    fn real_mosquitto_passwd_lines_verify() {
        let f = PasswordFile::parse(REAL);
        assert_eq!(f.len(), 4);
        let ok = |u: &str, p: &str| f.verify(u, Some(p.as_bytes()));
        assert_eq!(ok("alice", "secret7"), PasswordVerdict::Accepted);
        assert_eq!(ok("alice", "secret6"), PasswordVerdict::Rejected);
        assert_eq!(ok("bob", "secret6"), PasswordVerdict::Accepted);
        assert_eq!(ok("bob", "Secret6"), PasswordVerdict::Rejected);
        assert_eq!(ok("ünï cödé", "pässwörd"), PasswordVerdict::Accepted);
        assert_eq!(ok("carol", ""), PasswordVerdict::Accepted);
        assert_eq!(ok("carol", "x"), PasswordVerdict::Rejected);
        assert_eq!(ok("dave", "x"), PasswordVerdict::UnknownUser);
        assert_eq!(f.verify("alice", None), PasswordVerdict::Rejected);
    }

    #[test]
    fn sha512_construction_is_password_then_salt() {
        // Computed here per Mosquitto's pw__digest (SHA-512 over password ‖ salt) and compared
        // with the real mosquitto_passwd -H sha512 line for bob.
        let line = REAL.lines().find(|l| l.starts_with("bob:")).unwrap();
        let mut parts = line.split('$');
        let salt = b64().decode(parts.nth(2).unwrap()).unwrap();
        let hash = b64().decode(parts.next().unwrap()).unwrap();
        let mut d = Sha512::new();
        d.update(b"secret6");
        d.update(&salt);
        assert_eq!(d.finalize().as_slice(), hash.as_slice());
    }

    #[test]
    fn comments_blank_and_bad_lines_are_skipped() {
        let argon = hash_argon2id(b"pw").unwrap();
        let text = format!(
            "# comment\n\n  \nnocolon\nx:$9$zz$zz\ny:$7$0$AAAA$AAAA\nz:$6$!!$AA\n\
             w:\n{}\n a :{argon}:extra\n",
            REAL.lines().next().unwrap()
        );
        let f = PasswordFile::parse(&text);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f.verify("a", Some(b"pw")), PasswordVerdict::Accepted);
        assert_eq!(
            f.verify("alice", Some(b"secret7")),
            PasswordVerdict::Accepted
        );
        assert_eq!(f.verify("x", Some(b"pw")), PasswordVerdict::UnknownUser);
    }

    #[test]
    fn argon2_limits_refuse_hostile_parameters() {
        let huge = "u:$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$\
                    AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(PasswordFile::parse(huge).is_empty());
    }

    #[test]
    fn hostile_passwords_do_not_panic() {
        let f = PasswordFile::parse(REAL);
        let big = vec![0xffu8; 64 * 1024];
        assert_eq!(f.verify("alice", Some(&big)), PasswordVerdict::Rejected);
        assert_eq!(f.verify("bob", Some(&big)), PasswordVerdict::Rejected);
        assert_eq!(
            f.verify("\u{0}\u{fffd}", Some(&big)),
            PasswordVerdict::UnknownUser
        );
    }

    #[test]
    fn set_replace_and_delete_keep_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, format!("# keep me\n{REAL}\n")).unwrap();
        passwd_set(&path, "alice", "new").unwrap();
        passwd_set(&path, "erin", "e").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# keep me\nalice:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
        assert!(text.contains("\nbob:$6$"));
        let f = PasswordFile::parse(&text);
        assert_eq!(f.verify("alice", Some(b"new")), PasswordVerdict::Accepted);
        assert_eq!(
            f.verify("alice", Some(b"secret7")),
            PasswordVerdict::Rejected
        );
        assert_eq!(f.verify("erin", Some(b"e")), PasswordVerdict::Accepted);
        assert_eq!(f.verify("bob", Some(b"secret6")), PasswordVerdict::Accepted);
        assert!(passwd_delete(&path, "bob").unwrap());
        assert!(!passwd_delete(&path, "bob").unwrap());
        let f = PasswordFile::load(&path).unwrap();
        assert_eq!(
            f.verify("bob", Some(b"secret6")),
            PasswordVerdict::UnknownUser
        );
        assert_eq!(f.len(), 4);
        assert!(passwd_set(&path, "bad:name", "x").is_err());
        assert!(passwd_set(&path, "", "x").is_err());
        // a new file is created with mode 0600
        let fresh = dir.path().join("fresh");
        passwd_set(&fresh, "u", "p").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(passwd_delete(&dir.path().join("missing"), "u").is_err());
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(names.len(), 2);
    }
}
