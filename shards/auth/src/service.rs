//! The service a shard runtime drives: [`AuthService::check`] per CONNECT.
//!
//! # Driving it
//! `check(request, reply)` never blocks and returns one of:
//! - [`Submitted::Done`]: decided at once, `reply` is dropped without being called. This is the
//!   case when nothing needs hashing or I/O: no username and no password (anonymous: allowed
//!   iff `allow_anonymous`), or no authentication method configured at all (everyone allowed
//!   iff `allow_anonymous`, with the username they gave).
//! - [`Submitted::Queued`]: `reply` will be called exactly once, from a worker thread or the
//!   delay thread. The runtime must carry the outcome back to its own loop itself.
//! - [`Submitted::Busy`]: the bounded queue (`queue_max`) is full; `reply` was dropped. Answer
//!   CONNACK 0x89 (v5) / rc 3 (3.x).
//!
//! # The order of methods (on a worker)
//! 1. `password_file`, when the client gave a username that is in the file: the password
//!    decides (wrong or missing → [`AuthOutcome::BadCredentials`], final). A username not in the
//!    file goes on.
//! 2. JWT, when configured and the password is shaped like a token (three base64url parts): a
//!    valid token → allowed; an invalid one (signature, algorithm, `exp`/`nbf`, username
//!    mismatch, bad `acl` claim) → `BadCredentials`, final. A password that is not a token goes
//!    on.
//! 3. HTTP hook: `allow` → allowed (`is_superuser` → no authorizer at all, i.e. everything
//!    allowed; `acl` → those rules); `deny` → `BadCredentials`, final; `ignore` (or a password
//!    that is not UTF-8) goes on; a failure (status ≠ 200, timeout, malformed answer) →
//!    [`AuthOutcome::NotAuthorized`], final, logged.
//! 4. Nobody accepted: a client without username is allowed anonymously iff
//!    `allow_anonymous` (any password it sent is ignored, as Mosquitto does); otherwise
//!    `BadCredentials` if it gave a username or password, `NotAuthorized` if it gave neither.
//!
//! The authorizer of an allowed client: the rules from its token or hook answer when there are
//! some (falling back to the acl_file, see [`crate::ClaimRule`]), else the acl_file's rules for
//! its username (the token's username when the client gave none), else `None` (everything
//! allowed).
//!
//! # Throttling
//! Every failure decided on a worker is counted per source address (IPv6 per /64). After
//! `free_failures` recent failures, the reply of the next failure is held back
//! `base_delay_ms × 2^k`, at most `max_delay_ms`, by the delay thread (no worker sleeps). A
//! success forgets the source's failures; failures older than `window_ms` are forgotten.
//!
//! # Reload
//! [`AuthService::reload`] re-reads the password, ACL and key files; on error the old state
//! stays and the error is returned. Clients already connected keep the authorizer they got.

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use shardmq_broker::authz::{DenyAction, SharedAuthorizer};

use crate::acl::Acl;
use crate::error::AuthError;
use crate::http::{HookAnswer, HttpHook};
use crate::jwt::{JwtVerdict, JwtVerifier};
use crate::passwd::{PasswordFile, PasswordVerdict};
use crate::rules::{ClaimRule, RuleAuthorizer};
use crate::throttle::{Delayer, FailureTable};
use crate::verified::VerifiedCache;

/// Failure throttling (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Most source addresses remembered (the least recently failing is forgotten). 0 disables
    /// throttling.
    pub table_max: usize,
    /// Failures older than this are forgotten, in ms.
    pub window_ms: u64,
    /// Failures answered without delay before the back-off starts.
    pub free_failures: u32,
    /// First delay, in ms; doubled with each further failure.
    pub base_delay_ms: u64,
    /// Longest delay, in ms.
    pub max_delay_ms: u64,
    /// Most replies held back at once; beyond that a failure is answered at once.
    pub delayed_max: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            table_max: 4096,
            window_ms: 60_000,
            free_failures: 3,
            base_delay_ms: 100,
            max_delay_ms: 5_000,
            delayed_max: 4096,
        }
    }
}

/// The `[auth]` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Clients without a username (and without an accepted token) may connect. Default false
    /// (Mosquitto 2.0's default).
    pub allow_anonymous: bool,
    /// Mosquitto password file.
    pub password_file: Option<PathBuf>,
    /// Mosquitto acl_file.
    pub acl_file: Option<PathBuf>,
    /// What the session does with a denied PUBLISH (not used by the service itself).
    pub acl_deny_action: DenyAction,
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// RS256 or ES256 public key, PEM.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds. Default 5.
    pub jwt_leeway_s: u64,
    /// HTTP hook URL (`http://`; `https://` needs a TLS-enabled ureq).
    pub http_url: Option<String>,
    /// Whole-request timeout of the hook, in ms. Default 5000.
    pub http_timeout_ms: u64,
    /// Most cached hook answers. Default 10000; 0 disables the cache.
    pub http_cache_max: usize,
    /// How long a hook answer is cached, in ms. Default 60000; 0 disables the cache.
    pub http_cache_ttl_ms: u64,
    /// Worker threads. Default 2.
    pub workers: usize,
    /// Most requests waiting for a worker. Default 1024.
    pub queue_max: usize,
    /// Failure throttling.
    pub throttle: ThrottleSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            allow_anonymous: false,
            password_file: None,
            acl_file: None,
            acl_deny_action: DenyAction::Ignore,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_leeway_s: 5,
            http_url: None,
            http_timeout_ms: 5_000,
            http_cache_max: 10_000,
            http_cache_ttl_ms: 60_000,
            workers: 2,
            queue_max: 1024,
            throttle: ThrottleSettings::default(),
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("password_file", &self.password_file)
            .field("acl_file", &self.acl_file)
            .field("acl_deny_action", &self.acl_deny_action)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_leeway_s", &self.jwt_leeway_s)
            .field("http_url", &self.http_url)
            .field("http_timeout_ms", &self.http_timeout_ms)
            .field("http_cache_max", &self.http_cache_max)
            .field("http_cache_ttl_ms", &self.http_cache_ttl_ms)
            .field("workers", &self.workers)
            .field("queue_max", &self.queue_max)
            .field("throttle", &self.throttle)
            .finish()
    }
}

impl AuthSettings {
    /// Whether any method that checks credentials is configured.
    pub fn has_method(&self) -> bool {
        self.password_file.is_some()
            || self.jwt_secret.is_some()
            || self.jwt_public_key_file.is_some()
            || self.http_url.is_some()
    }
}

/// What a CONNECT presents.
#[derive(Clone)]
pub struct AuthRequest {
    /// The client identifier (the assigned one when the client sent none).
    pub client_id: String,
    /// The username, if any.
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<Bytes>,
    /// The client's address.
    pub peer: IpAddr,
    /// The TLS client certificate's common name, if any (passed to the HTTP hook).
    pub cert_name: Option<String>,
    /// MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol_version: u8,
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field(
                "password",
                &self
                    .password
                    .as_ref()
                    .map(|p| format!("<{} bytes>", p.len())),
            )
            .field("peer", &self.peer)
            .field("cert_name", &self.cert_name)
            .field("protocol_version", &self.protocol_version)
            .finish()
    }
}

/// The verdict on a CONNECT.
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// Connect. `username` is the client's effective username (a token's when the client
    /// gave none); `authorizer` `None` means everything is allowed (no ACL, or a superuser).
    Allowed {
        /// The effective username.
        username: Option<String>,
        /// The client's authorizer.
        authorizer: Option<SharedAuthorizer>,
    },
    /// Credentials were presented and refused: v5 0x86, 3.1.1 rc 4.
    BadCredentials,
    /// Not allowed (no credentials and no anonymous access, or the hook failed): v5 0x87,
    /// 3.1.1 rc 5.
    NotAuthorized,
}

impl AuthOutcome {
    /// Whether the client may connect.
    pub fn is_allowed(&self) -> bool {
        matches!(self, AuthOutcome::Allowed { .. })
    }
}

/// A reply closure, called once.
pub type Reply = Box<dyn FnOnce(AuthOutcome) + Send>;

/// Calls a reply; a panicking reply is logged and does not take its thread down.
pub(crate) fn deliver(reply: Reply, outcome: AuthOutcome) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || reply(outcome))).is_err() {
        tracing::error!("auth reply closure panicked");
    }
}

/// What [`AuthService::check`] did with a request.
#[derive(Debug)]
pub enum Submitted {
    /// Decided at once; the reply closure is not called.
    Done(AuthOutcome),
    /// Queued; the reply closure will be called once, from another thread.
    Queued,
    /// The queue is full; the reply closure is not called (CONNACK 0x89 / rc 3).
    Busy,
}

/// What the files said, swapped whole on reload.
#[derive(Debug, Default)]
struct State {
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
    jwt: Option<JwtVerifier>,
    /// Passwords verified against `passwords` (emptied with it on reload).
    verified: VerifiedCache,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache::new()
    }
}

impl State {
    fn load(s: &AuthSettings) -> Result<State, AuthError> {
        Ok(State {
            passwords: s
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            acl: s.acl_file.as_deref().map(Acl::load).transpose()?,
            jwt: JwtVerifier::new(
                s.jwt_secret.as_deref(),
                s.jwt_public_key_file.as_deref(),
                s.jwt_leeway_s,
            )?,
            verified: VerifiedCache::new(),
        })
    }

    fn file_authorizer(&self, username: Option<&str>, client_id: &str) -> Option<SharedAuthorizer> {
        self.acl.as_ref().map(|a| a.for_client(username, client_id))
    }

    fn allowed(
        &self,
        username: Option<String>,
        client_id: &str,
        rules: Option<&[ClaimRule]>,
    ) -> AuthOutcome {
        let file = self.file_authorizer(username.as_deref(), client_id);
        let authorizer = match rules {
            Some(r) => Some(
                Arc::new(RuleAuthorizer::new(r, username.as_deref(), client_id, file))
                    as SharedAuthorizer,
            ),
            None => file,
        };
        AuthOutcome::Allowed {
            username,
            authorizer,
        }
    }
}

struct Shared {
    settings: AuthSettings,
    state: ArcSwap<State>,
    http: Option<HttpHook>,
    throttle: Mutex<FailureTable>,
    delayer: Delayer,
    epoch: Instant,
}

struct Job {
    req: AuthRequest,
    reply: Reply,
}

/// Authentication off the event loop (see the module docs).
pub struct AuthService {
    shared: Arc<Shared>,
    tx: Sender<Job>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("settings", &self.shared.settings)
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl AuthService {
    /// Loads the files, starts `workers` threads and the delay thread.
    pub fn new(settings: &AuthSettings) -> Result<Arc<AuthService>, AuthError> {
        if settings.workers == 0 || settings.workers > 64 {
            return Err(AuthError::Settings("workers must be 1..=64".into()));
        }
        if settings.queue_max == 0 {
            return Err(AuthError::Settings("queue_max must be at least 1".into()));
        }
        if let Some(url) = &settings.http_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(AuthError::Settings(format!(
                    "http_url {url:?} is not an http URL"
                )));
            }
        }
        let state = State::load(settings)?;
        let http = settings.http_url.as_deref().map(|u| {
            HttpHook::new(
                u,
                settings.http_timeout_ms,
                settings.http_cache_max,
                settings.http_cache_ttl_ms,
            )
        });
        let delayer = Delayer::start(settings.throttle.delayed_max).map_err(AuthError::Spawn)?;
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            state: ArcSwap::from_pointee(state),
            http,
            throttle: Mutex::new(FailureTable::new(settings.throttle)),
            delayer,
            epoch: Instant::now(),
        });
        let (tx, rx) = crossbeam_channel::bounded::<Job>(settings.queue_max);
        for i in 0..settings.workers {
            let mine = shared.clone();
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || worker(&mine, &rx))
                .map_err(|e| {
                    shared.delayer.shutdown();
                    AuthError::Spawn(e)
                })?;
        }
        Ok(Arc::new(AuthService { shared, tx }))
    }

    /// The settings the service runs with.
    pub fn settings(&self) -> &AuthSettings {
        &self.shared.settings
    }

    /// Submits a CONNECT's credentials. Never blocks (see the module docs).
    pub fn check(&self, req: AuthRequest, reply: Reply) -> Submitted {
        let s = &self.shared.settings;
        let anonymous = req.username.is_none() && req.password.is_none();
        if !s.has_method() || anonymous {
            let outcome = if s.allow_anonymous {
                let state = self.shared.state.load();
                state.allowed(req.username.clone(), &req.client_id, None)
            } else {
                AuthOutcome::NotAuthorized
            };
            return Submitted::Done(outcome);
        }
        if let (Some(user), Some(password)) = (&req.username, &req.password) {
            // A password verified a moment ago (a reconnect) needs no worker: one HMAC here.
            let state = self.shared.state.load();
            if state.passwords.as_ref().is_some_and(|p| p.contains(user))
                && state.verified.contains(user, password, Instant::now())
            {
                return Submitted::Done(state.allowed(req.username.clone(), &req.client_id, None));
            }
        }
        match self.tx.try_send(Job { req, reply }) {
            Ok(()) => Submitted::Queued,
            Err(TrySendError::Full(_)) => Submitted::Busy,
            Err(TrySendError::Disconnected(_)) => Submitted::Done(AuthOutcome::NotAuthorized),
        }
    }

    /// The acl_file authorizer for a client (e.g. one authenticated by a TLS certificate);
    /// `None` when no acl_file is configured.
    pub fn acl_for(&self, username: Option<&str>, client_id: &str) -> Option<SharedAuthorizer> {
        self.shared
            .state
            .load()
            .file_authorizer(username, client_id)
    }

    /// Re-reads the password, ACL and key files. On error the previous state stays.
    pub fn reload(&self) -> Result<(), AuthError> {
        let state = State::load(&self.shared.settings)?;
        self.shared.state.store(Arc::new(state));
        if let Some(h) = &self.shared.http {
            h.clear_cache();
        }
        tracing::info!("auth files reloaded");
        Ok(())
    }

    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        // Workers end when the queue's sender is gone and the queue is drained; replies still
        // held back are delivered at once.
        self.shared.delayer.shutdown();
    }
}

fn worker(shared: &Shared, rx: &Receiver<Job>) {
    while let Ok(Job { req, reply }) = rx.recv() {
        let now_ms = shared.epoch.elapsed().as_millis() as u64;
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let state = shared.state.load_full();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            evaluate(shared, &state, &req, now_ms, now_s)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(client_id = %req.client_id, "auth check panicked; refusing");
            AuthOutcome::NotAuthorized
        });
        let mut table = shared.throttle.lock().unwrap_or_else(|e| e.into_inner());
        if outcome.is_allowed() {
            table.success(req.peer);
            drop(table);
            deliver(reply, outcome);
        } else {
            let delay_ms = table.failure(req.peer, now_ms);
            drop(table);
            if delay_ms == 0 {
                deliver(reply, outcome);
            } else {
                tracing::debug!(peer = %req.peer, delay_ms, "auth failure reply held back");
                let due = Instant::now() + Duration::from_millis(delay_ms);
                shared.delayer.schedule(due, reply, outcome);
            }
        }
    }
}

fn evaluate(
    shared: &Shared,
    state: &State,
    req: &AuthRequest,
    now_ms: u64,
    now_s: u64,
) -> AuthOutcome {
    let client_id = req.client_id.as_str();
    let password = req.password.as_deref();
    if let (Some(pf), Some(user)) = (&state.passwords, &req.username) {
        match pf.verify(user, password) {
            PasswordVerdict::Accepted => {
                if let Some(pw) = password {
                    state.verified.insert(user, pw, Instant::now());
                }
                return state.allowed(Some(user.clone()), client_id, None);
            }
            PasswordVerdict::Rejected => {
                tracing::debug!(client_id, user = %user, "password rejected");
                return AuthOutcome::BadCredentials;
            }
            PasswordVerdict::UnknownUser => {}
        }
    }
    if let (Some(jwt), Some(pw)) = (&state.jwt, password) {
        match jwt.verify(pw, req.username.as_deref(), now_s) {
            JwtVerdict::NotAToken => {}
            JwtVerdict::Rejected(why) => {
                tracing::debug!(client_id, why, "token rejected");
                return AuthOutcome::BadCredentials;
            }
            JwtVerdict::Accepted { username, acl } => {
                return state.allowed(username, client_id, acl.as_deref());
            }
        }
    }
    if let Some(hook) = &shared.http {
        match hook.ask(req, now_ms) {
            Ok(HookAnswer::Allow {
                superuser: true, ..
            }) => {
                return AuthOutcome::Allowed {
                    username: req.username.clone(),
                    authorizer: None,
                };
            }
            Ok(HookAnswer::Allow {
                superuser: false,
                acl,
            }) => {
                return state.allowed(req.username.clone(), client_id, acl.as_deref());
            }
            Ok(HookAnswer::Deny) => return AuthOutcome::BadCredentials,
            Ok(HookAnswer::Ignore) => {}
            Err(why) => {
                tracing::warn!(client_id, why, "http auth hook failed; refusing");
                return AuthOutcome::NotAuthorized;
            }
        }
    }
    if req.username.is_none() && shared.settings.allow_anonymous {
        return state.allowed(None, client_id, None);
    }
    if req.username.is_some() || password.is_some() {
        AuthOutcome::BadCredentials
    } else {
        AuthOutcome::NotAuthorized
    }
}
