//! API key authentication: the tower middleware the router runs every request through.
//!
//! Every route but `/health` needs a key from `api.keys_file`, given as
//! `Authorization: Bearer <key>` or HTTP Basic with any user name and the key as the password.
//! A missing or wrong key is 401 with `WWW-Authenticate: Bearer realm="shardmq", Basic
//! realm="shardmq"`. With `api.allow_unauthenticated_loopback`, a request whose peer address
//! is loopback needs none (the peer comes from [`ConnectInfo`]; without it a request is not
//! taken for loopback).
//!
//! Reload: [`KeyRing::current`] stats the key file on each request that needs a key (one
//! `stat(2)`, microseconds) and reads it again when its modification time, size or inode
//! changed; `ctl api-key` replaces it by rename, so every change is a new inode. A file that
//! cannot be read or parsed accepts no key until it is fixed (logged once per change).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::json;

use super::keys::{KeyFile, KeySet};

/// The `WWW-Authenticate` value of a 401.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"shardmq\", Basic realm=\"shardmq\"";

/// Routes that need no key.
pub const OPEN_PATHS: &[&str] = &["/health"];

/// What identifies one version of the key file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }
}

#[derive(Debug)]
struct Loaded {
    /// `None`: the file does not exist (or was never looked at).
    stamp: Option<FileStamp>,
    keys: Arc<KeySet>,
    checked: bool,
}

/// The keys of `api.keys_file`, re-read when the file changes.
#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl KeyRing {
    /// The keys of `path`, read on first use.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            loaded: Mutex::new(Loaded {
                stamp: None,
                keys: Arc::new(KeySet::default()),
                checked: false,
            }),
        }
    }

    /// The file's keys as they are now: re-read if it changed since the last call.
    pub fn current(&self) -> Arc<KeySet> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(FileStamp::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "api.keys_file: cannot stat; accepting no key");
                return Arc::new(KeySet::default());
            }
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked && loaded.stamp == stamp {
            return loaded.keys.clone();
        }
        let keys = match &stamp {
            None => KeySet::default(),
            Some(_) => match KeyFile::read(&self.path) {
                Ok(file) => {
                    tracing::info!(file = %self.path.display(), keys = file.keys.len(), "api.keys_file loaded");
                    KeySet::new(&file)
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %format!("{e:#}"), "api.keys_file: unreadable; accepting no key until it is fixed");
                    KeySet::default()
                }
            },
        };
        *loaded = Loaded {
            stamp,
            keys: Arc::new(keys),
            checked: true,
        };
        loaded.keys.clone()
    }
}

/// What the middleware needs.
#[derive(Debug)]
pub struct Authenticator {
    /// The accepted keys.
    pub keys: KeyRing,
    /// `api.allow_unauthenticated_loopback`.
    pub allow_unauthenticated_loopback: bool,
}

/// A key given in `Authorization`: Bearer, or Basic's password. `None` for any other scheme
/// or a malformed header.
pub fn presented_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// Whether `peer` is a loopback address (an IPv4-mapped one included).
pub fn is_loopback(peer: &SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// The middleware: lets `/health`, loopback peers (when allowed) and requests with a valid
/// key through; answers 401 otherwise.
pub async fn require_key(
    State(auth): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if auth.allow_unauthenticated_loopback && peer.as_ref().is_some_and(is_loopback) {
        return next.run(request).await;
    }
    let Some(key) = presented_key(request.headers()) else {
        return unauthorized(
            "an API key is required: Authorization: Bearer KEY, or Basic with the key as password",
        );
    };
    match auth.keys.current().verify(&key) {
        Some(stored) => {
            tracing::debug!(key_id = %stored.id, path = %request.uri().path(), peer = ?peer, "API request authenticated");
            next.run(request).await
        }
        None => {
            tracing::debug!(path = %request.uri().path(), peer = ?peer, "API request with an unknown key");
            unauthorized("unknown API key")
        }
    }
}

fn unauthorized(why: &str) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, Json(json!({ "error": why }))).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(WWW_AUTHENTICATE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_and_basic_give_the_key() {
        assert_eq!(
            presented_key(&with("Bearer smq_abc")).as_deref(),
            Some("smq_abc")
        );
        assert_eq!(
            presented_key(&with("bearer  smq_abc ")).as_deref(),
            Some("smq_abc")
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("x:smq_k:with:colons");
        assert_eq!(
            presented_key(&with(&format!("Basic {basic}"))).as_deref(),
            Some("smq_k:with:colons")
        );
        assert_eq!(presented_key(&HeaderMap::new()), None);
        assert_eq!(presented_key(&with("Basic !!!")), None);
        assert_eq!(presented_key(&with("Digest abc")), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("justauser");
        assert_eq!(presented_key(&with(&format!("Basic {no_colon}"))), None);
    }

    #[test]
    fn loopback_includes_mapped_v4() {
        for (addr, want) in [
            ("127.0.0.1:1", true),
            ("127.3.2.1:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.1:1", false),
            ("[::ffff:10.0.0.1]:1", false),
            ("[2001:db8::1]:1", false),
        ] {
            assert_eq!(is_loopback(&addr.parse().unwrap()), want, "{addr}");
        }
    }

    #[test]
    fn the_ring_follows_the_file() {
        let dir = std::env::temp_dir().join(format!("shardmq-ring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("keys.json");
        let ring = KeyRing::new(path.clone());
        assert!(ring.current().is_empty());
        let a = KeyFile::update(&path, |f| f.add(Some("a"), 1, [1; 32], [1; 6])).unwrap();
        assert!(ring.current().verify(&a.secret).is_some());
        // Same second, same size: the rename gives a new inode.
        let b = KeyFile::update(&path, |f| {
            f.remove("a")?;
            f.add(Some("b"), 1, [2; 32], [2; 6])
        })
        .unwrap();
        let now = ring.current();
        assert!(now.verify(&a.secret).is_none());
        assert!(now.verify(&b.secret).is_some());
        // Broken: no key accepted; fixed: back.
        std::fs::write(&path, "{not json").unwrap();
        assert!(ring.current().verify(&b.secret).is_none());
        KeyFile::default().write(&path).unwrap();
        assert!(ring.current().is_empty());
        std::fs::remove_file(&path).unwrap();
        assert!(ring.current().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
