//! API keys and the file that holds them (`api.keys_file`).
//!
//! A key is `smq_` followed by 32 random bytes in unpadded base64url (47 characters). It is
//! shown once, when made; the file keeps only its SHA-256 (right for a random, high-entropy
//! secret: nothing to slow down a guess of 256 bits), with an id, a name and when it was made.
//! A presented key is hashed and compared with every stored hash in constant time.
//!
//! The file is JSON, written whole to a temporary file in the same directory (mode 0600),
//! synced and renamed over the old one, so that a reader sees the old file or the new one,
//! never a part. Read-modify-write cycles ([`KeyFile::update`]) hold an advisory lock on
//! `<file>.lock` so that two `shardmq ctl api-key` commands do not lose each other's change.
//!
//! [`KeySet`] is the form the API checks keys against; [`KeyFile`] is the on-disk form that
//! `ctl` edits. Randomness and time are arguments of the pure parts ([`KeyFile::add`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// What every key starts with.
pub const KEY_PREFIX: &str = "smq_";
/// Random bytes in a key.
pub const KEY_SECRET_BYTES: usize = 32;
/// Random bytes in a key id (shown as hex).
pub const KEY_ID_BYTES: usize = 6;
/// Keys one file may hold.
pub const KEYS_MAX: usize = 1024;
/// Longest key name, in bytes.
pub const KEY_NAME_LEN_MAX: usize = 64;
/// Largest key file read, in bytes (far above [`KEYS_MAX`] entries).
pub const KEYS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// The file format's version.
pub const KEYS_FILE_VERSION: u32 = 1;

/// One key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    /// 12 hex digits, random.
    pub id: String,
    /// Unique in the file; may be empty.
    pub name: String,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// SHA-256 of the whole key (prefix included), lower-case hex.
    pub sha256: String,
}

/// The key file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// [`KEYS_FILE_VERSION`].
    pub version: u32,
    /// In order of creation.
    pub keys: Vec<StoredKey>,
}

impl Default for KeyFile {
    fn default() -> Self {
        Self {
            version: KEYS_FILE_VERSION,
            keys: Vec::new(),
        }
    }
}

/// A key just made: the secret, to show once, and what is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key to give to clients.
    pub secret: String,
    /// Its stored form.
    pub stored: StoredKey,
}

impl KeyFile {
    /// Parses and checks `text` (see [`KeyFile::check`]).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: Self = serde_json::from_str(text).context("not a valid key file")?;
        file.check()?;
        Ok(file)
    }

    /// The version is known, ids and names are unique, hashes are 64 hex digits, at most
    /// [`KEYS_MAX`] keys.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.version == KEYS_FILE_VERSION,
            "version {} is not {KEYS_FILE_VERSION}",
            self.version
        );
        ensure!(
            self.keys.len() <= KEYS_MAX,
            "{} keys, more than {KEYS_MAX}",
            self.keys.len()
        );
        for (i, key) in self.keys.iter().enumerate() {
            ensure!(
                digest_from_hex(&key.sha256).is_some(),
                "key {}: sha256 is not 64 hex digits",
                key.id
            );
            for other in &self.keys[..i] {
                ensure!(other.id != key.id, "key id {} appears twice", key.id);
                ensure!(
                    key.name.is_empty() || other.name != key.name,
                    "key name {:?} appears twice",
                    key.name
                );
            }
        }
        Ok(())
    }

    /// Reads `path`; a file that does not exist is an empty one.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = match read_bounded(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Writes the file atomically: a temporary file beside it (mode 0600), synced, renamed
    /// over `path`, the directory synced. Creates the directory if needed.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        self.check()?;
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
        let mut text = serde_json::to_string_pretty(self).context("encoding the key file")?;
        text.push('\n');
        let tmp = temp_path(path);
        let result = (|| -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing {}", path.display()))
    }

    /// Reads `path`, applies `change` and writes the result, holding `<path>.lock` so that
    /// concurrent updates are serialised. Returns what `change` returned.
    pub fn update<T>(
        path: &Path,
        change: impl FnOnce(&mut KeyFile) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let _lock = FileLock::acquire(path)?;
        let mut file = Self::read(path)?;
        let answer = change(&mut file)?;
        file.write(path)?;
        Ok(answer)
    }

    /// Adds a key made from `secret` and `id`, named `name`, made at `now_unix_secs`.
    /// Refuses a name in use, one too long or with control characters, and a full file.
    pub fn add(
        &mut self,
        name: Option<&str>,
        now_unix_secs: u64,
        secret: [u8; KEY_SECRET_BYTES],
        id: [u8; KEY_ID_BYTES],
    ) -> anyhow::Result<NewKey> {
        let name = name.unwrap_or("").trim();
        ensure!(
            name.len() <= KEY_NAME_LEN_MAX,
            "--name: longer than {KEY_NAME_LEN_MAX} bytes"
        );
        ensure!(
            !name.chars().any(char::is_control),
            "--name: control characters are not allowed"
        );
        ensure!(
            name.is_empty() || !self.keys.iter().any(|k| k.name == name),
            "a key named {name:?} exists already (delete it first, or choose another name)"
        );
        ensure!(
            self.keys.len() < KEYS_MAX,
            "the key file holds {KEYS_MAX} keys already"
        );
        let id = hex(&id);
        ensure!(
            !self.keys.iter().any(|k| k.id == id),
            "key id {id} exists already"
        );
        let secret = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let stored = StoredKey {
            id,
            name: name.to_owned(),
            created_unix_secs: now_unix_secs,
            sha256: hex(&digest(&secret)),
        };
        self.keys.push(stored.clone());
        Ok(NewKey { secret, stored })
    }

    /// Removes the key whose id, or else whose name, is `which`.
    pub fn remove(&mut self, which: &str) -> anyhow::Result<StoredKey> {
        let which = which.trim();
        ensure!(!which.is_empty(), "no key id or name given");
        let at = self
            .keys
            .iter()
            .position(|k| k.id == which)
            .or_else(|| self.keys.iter().position(|k| k.name == which));
        match at {
            Some(at) => Ok(self.keys.remove(at)),
            None => bail!("no key with id or name {which:?}"),
        }
    }
}

/// The keys the API accepts: hashes decoded once, per load of the file.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<(StoredKey, [u8; 32])>,
}

impl KeySet {
    /// The keys of `file` (checked: every hash decodes).
    pub fn new(file: &KeyFile) -> Self {
        let keys = file
            .keys
            .iter()
            .filter_map(|k| Some((k.clone(), digest_from_hex(&k.sha256)?)))
            .collect();
        Self { keys }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The stored key that `presented` is, if any. Compares the presented key's hash with
    /// every stored hash in constant time, without stopping at a match.
    pub fn verify(&self, presented: &str) -> Option<&StoredKey> {
        let wanted = digest(presented);
        let mut found = None;
        for (key, stored) in &self.keys {
            if bool::from(stored.ct_eq(&wanted)) {
                found = Some(key);
            }
        }
        found
    }
}

/// New random key material from the operating system.
pub fn random_key_material() -> anyhow::Result<([u8; KEY_SECRET_BYTES], [u8; KEY_ID_BYTES])> {
    let mut secret = [0u8; KEY_SECRET_BYTES];
    let mut id = [0u8; KEY_ID_BYTES];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok((secret, id))
}

/// Seconds since the Unix epoch, now.
pub fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the Unix epoch as RFC 3339 UTC, e.g. `2026-12-01T09:30:00Z`.
pub fn rfc3339_utc(secs: u64) -> String {
    shardmq_shards::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(KEYS_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > KEYS_FILE_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {KEYS_FILE_BYTES_MAX} bytes"),
        ));
    }
    Ok(text)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// An exclusive `flock(2)` on `<path>.lock`, released on drop (the file stays).
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn acquire(path: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let lock_path = path.with_file_name(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", lock_path.display()));
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardmq-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_made_key_verifies_and_only_its_hash_is_stored() {
        let mut file = KeyFile::default();
        let made = file.add(Some("ops"), 10, [7; 32], [1; 6]).unwrap();
        assert!(made.secret.starts_with(KEY_PREFIX), "{}", made.secret);
        assert_eq!(made.secret.len(), KEY_PREFIX.len() + 43);
        assert_eq!(made.stored.id, "010101010101");
        let text = serde_json::to_string(&file).unwrap();
        assert!(!text.contains(&made.secret[KEY_PREFIX.len()..]), "{text}");

        let other = file.add(None, 11, [8; 32], [2; 6]).unwrap();
        let set = KeySet::new(&file);
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.verify(&made.secret).map(|k| k.name.as_str()),
            Some("ops")
        );
        assert_eq!(
            set.verify(&other.secret).map(|k| k.id.as_str()),
            Some("020202020202")
        );
        assert!(set.verify("smq_wrong").is_none());
        assert!(set.verify("").is_none());
        // One character off.
        let mut near = made.secret.clone();
        near.pop();
        near.push('x');
        assert!(set.verify(&near).is_none());
    }

    #[test]
    fn names_are_unique_and_delete_takes_an_id_or_a_name() {
        let mut file = KeyFile::default();
        let a = file.add(Some("a"), 1, [1; 32], [1; 6]).unwrap();
        let err = file.add(Some("a"), 2, [2; 32], [2; 6]).unwrap_err();
        assert!(err.to_string().contains("exists already"), "{err}");
        assert!(file.add(Some("x\u{7}y"), 2, [2; 32], [2; 6]).is_err());
        assert!(file.add(Some(&"n".repeat(65)), 2, [2; 32], [2; 6]).is_err());
        // Unnamed keys may be many.
        file.add(None, 2, [2; 32], [2; 6]).unwrap();
        file.add(None, 3, [3; 32], [3; 6]).unwrap();
        assert_eq!(file.remove("a").unwrap().id, a.stored.id);
        assert_eq!(file.remove("030303030303").unwrap().created_unix_secs, 3);
        assert!(file.remove("a").is_err());
        assert_eq!(file.keys.len(), 1);
    }

    #[test]
    fn written_atomically_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("write");
        let path = dir.join("sub").join("api_keys.json");
        assert_eq!(KeyFile::read(&path).unwrap(), KeyFile::default());
        let made = KeyFile::update(&path, |f| f.add(Some("n"), 5, [9; 32], [9; 6])).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let back = KeyFile::read(&path).unwrap();
        assert_eq!(back.keys, vec![made.stored.clone()]);
        assert!(KeySet::new(&back).verify(&made.secret).is_some());
        // No temporary file left behind.
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp.")), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_file_is_refused_with_the_reason() {
        assert!(KeyFile::parse("{").is_err());
        let bad_hash =
            r#"{"version":1,"keys":[{"id":"a","name":"","created_unix_secs":0,"sha256":"zz"}]}"#;
        let err = format!("{:#}", KeyFile::parse(bad_hash).unwrap_err());
        assert!(err.contains("sha256"), "{err}");
        let twice = format!(
            r#"{{"version":1,"keys":[{k},{k}]}}"#,
            k = format_args!(
                r#"{{"id":"a","name":"","created_unix_secs":0,"sha256":"{}"}}"#,
                "0".repeat(64)
            )
        );
        let err = format!("{:#}", KeyFile::parse(&twice).unwrap_err());
        assert!(err.contains("twice"), "{err}");
        assert!(KeyFile::parse(r#"{"version":2,"keys":[]}"#).is_err());
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_113_845), "2026-12-01T08:30:45Z");
    }
}
