//! MQTT 5.0 enhanced authentication (§4.12, AUTH §3.15): pluggable methods behind
//! [`Authenticator`], a registry of them by method name ([`Authenticators`]), and the
//! per-connection [`AuthExchange`] that checks every AUTH packet of an exchange against the
//! protocol.
//!
//! Pure: no I/O, no clock, no randomness. The runtime passes a fresh [`Nonce`] in whenever an
//! exchange starts. How the runtime drives an exchange:
//! - CONNECT with an Authentication Method: [`Authenticators::begin`]. An unknown method is
//!   refused (CONNACK 0x8C); otherwise the first [`AuthOutcome`] says what to do.
//! - every AUTH from the client: [`AuthExchange::on_auth`] (continues the exchange, or starts a
//!   re-authentication with reason 0x19 once connected). `Err` is a protocol violation: close
//!   (v5 DISCONNECT or CONNACK 0x82).
//! - [`AuthOutcome::Challenge`]: write the AUTH packet and wait for the client's next AUTH.
//! - [`AuthOutcome::Success`]: on connect, go on to the session claim and put
//!   [`AuthExchange::complete_connack`]'s properties in the CONNACK; on re-authentication,
//!   write the AUTH 0x00 packet it carries.
//! - [`AuthOutcome::Fail`]: refuse the CONNECT with that CONNACK reason code, or, on
//!   re-authentication, DISCONNECT with it (§4.12.1).
//!
//! The one method shipped is [`HMAC_SHA256_METHOD`], a challenge-response over a shared secret:
//! the server sends a 16-byte nonce as Authentication Data in AUTH 0x18, the client answers in
//! AUTH 0x18 with `HMAC-SHA256(secret, nonce || client_id)`, where `client_id` is the Client
//! Identifier exactly as the client sent it in CONNECT (empty if it sent none); the server
//! verifies it in constant time.

use crate::session::Close;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shardmq_codec::{Auth, AuthProperties, ByteStr, ConnAck, Connect, ReasonCode};
use smallvec::SmallVec;
use std::fmt;
use std::sync::Arc;

/// Random bytes the runtime draws for each exchange (and each re-authentication).
pub type Nonce = [u8; 16];

/// Most AUTH packets a client may send in one exchange before it fails with 0x87.
pub const AUTH_ROUNDS_MAX: u8 = 8;

/// The challenge-response method shipped with shardmq.
pub const HMAC_SHA256_METHOD: &str = "SHARDMQ-HMAC-SHA256";

/// What an authenticator keeps between the steps of one exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthState {
    /// The Client Identifier as the client sent it in CONNECT (empty if it sent none; an
    /// identifier the server assigns is not known to the client while it authenticates).
    pub client_id: ByteStr,
    /// The method's own bytes: for [`HMAC_SHA256_METHOD`], the challenge nonce.
    pub scratch: SmallVec<[u8; 16]>,
}

/// One step of a method, as the method sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this Authentication Data to the client in AUTH 0x18 and wait for its answer.
    Continue(Bytes),
    /// The client is authenticated; optional Authentication Data for the CONNACK or AUTH 0x00.
    Success(Option<Bytes>),
    /// The client is not authenticated: this reason code (0x87 Not authorized, 0x8C, ...).
    Fail(ReasonCode),
}

/// An enhanced authentication method. Implementations are pure: the nonce is given, and
/// everything they remember between steps is in [`AuthState`].
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// The Authentication Method name, as clients send it.
    fn method(&self) -> &str;
    /// Starts an exchange (at CONNECT or on re-authentication) with the client's
    /// Authentication Data, if any. `state.client_id` is set; `state.scratch` is empty.
    fn start(&self, state: &mut AuthState, data: Option<&[u8]>, nonce: Nonce) -> AuthStep;
    /// The client's next AUTH 0x18 in this exchange.
    fn step(&self, state: &mut AuthState, data: Option<&[u8]>) -> AuthStep;
}

/// The methods a listener offers, by name. Empty: every Authentication Method is refused with
/// CONNACK 0x8C Bad authentication method.
#[derive(Debug, Clone, Default)]
pub struct Authenticators {
    methods: Vec<Arc<dyn Authenticator>>,
}

impl Authenticators {
    /// No methods.
    pub fn new() -> Authenticators {
        Authenticators::default()
    }

    /// Offers `authenticator`'s method (replacing one of the same name).
    pub fn register(&mut self, authenticator: Arc<dyn Authenticator>) {
        self.methods
            .retain(|a| a.method() != authenticator.method());
        self.methods.push(authenticator);
    }

    /// The authenticator for `method`, if offered.
    pub fn get(&self, method: &str) -> Option<&Arc<dyn Authenticator>> {
        self.methods.iter().find(|a| a.method() == method)
    }

    /// Names of the methods offered.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().map(|a| a.method())
    }

    /// Whether no method is offered.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Starts the exchange a CONNECT asks for. `Ok(None)`: no Authentication Method, nothing
    /// to do. `Err`: the CONNACK reason code to refuse with (0x8C for a method not offered).
    pub fn begin(
        &self,
        connect: &Connect,
        nonce: impl FnOnce() -> Nonce,
    ) -> Result<Option<(AuthExchange, AuthOutcome)>, ReasonCode> {
        let props = &connect.properties;
        let Some(method) = &props.authentication_method else {
            return Ok(None);
        };
        let authenticator = self
            .get(method)
            .ok_or(ReasonCode::BAD_AUTHENTICATION_METHOD)?
            .clone();
        let mut exchange = AuthExchange {
            authenticator,
            method: method.detach(),
            state: AuthState {
                client_id: connect.client_id.detach(),
                scratch: SmallVec::new(),
            },
            phase: ExchangePhase::Connecting,
            rounds: 0,
            success_data: None,
        };
        let step = exchange.authenticator.start(
            &mut exchange.state,
            props.authentication_data.as_deref(),
            nonce(),
        );
        let outcome = exchange.outcome(step);
        Ok(Some((exchange, outcome)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExchangePhase {
    /// Between CONNECT and CONNACK.
    Connecting,
    /// Authenticated; a re-authentication may start.
    Authenticated,
    /// A re-authentication is under way.
    Reauthenticating,
}

/// What the runtime must do after a step of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Write this AUTH (0x18 Continue authentication) and wait for the client's AUTH.
    Challenge(Auth),
    /// Authenticated. On connect: claim the session, then CONNACK with
    /// [`AuthExchange::complete_connack`]. On re-authentication: write this AUTH 0x00.
    Success(Option<Auth>),
    /// Not authenticated: CONNACK (on connect) or DISCONNECT (re-authentication) with this code.
    Fail(ReasonCode),
}

/// One connection's enhanced authentication: the method it chose and where its exchange is.
/// It lives as long as the connection, for re-authentication.
#[derive(Debug)]
pub struct AuthExchange {
    authenticator: Arc<dyn Authenticator>,
    method: ByteStr,
    state: AuthState,
    phase: ExchangePhase,
    /// Client AUTH packets in the current exchange.
    rounds: u8,
    /// Authentication Data of a connect-time success, for the CONNACK.
    success_data: Option<Bytes>,
}

impl AuthExchange {
    /// The Authentication Method.
    pub fn method(&self) -> &ByteStr {
        &self.method
    }

    /// Whether the connect-time exchange has not finished yet.
    pub fn is_connecting(&self) -> bool {
        self.phase == ExchangePhase::Connecting
    }

    /// An AUTH from the client. `nonce` is drawn only when the AUTH starts a
    /// re-authentication. `Err`: a protocol violation (§4.12, §4.12.1); close the connection.
    pub fn on_auth(
        &mut self,
        auth: &Auth,
        nonce: impl FnOnce() -> Nonce,
    ) -> Result<AuthOutcome, Close> {
        let props = &auth.properties;
        if props.authentication_method.as_deref() != Some(&*self.method) {
            return Err(Close {
                reason: ReasonCode::PROTOCOL_ERROR,
                why: "AUTH with another authentication method",
            });
        }
        let data = props.authentication_data.as_deref();
        let step = match (self.phase, auth.reason) {
            (ExchangePhase::Connecting | ExchangePhase::Reauthenticating, r)
                if r == ReasonCode::CONTINUE_AUTHENTICATION =>
            {
                self.rounds += 1;
                if self.rounds > AUTH_ROUNDS_MAX {
                    AuthStep::Fail(ReasonCode::NOT_AUTHORIZED)
                } else {
                    self.authenticator.step(&mut self.state, data)
                }
            }
            (ExchangePhase::Authenticated, r) if r == ReasonCode::RE_AUTHENTICATE => {
                self.phase = ExchangePhase::Reauthenticating;
                self.rounds = 0;
                self.state.scratch.clear();
                self.authenticator.start(&mut self.state, data, nonce())
            }
            (ExchangePhase::Authenticated, _) => {
                return Err(Close {
                    reason: ReasonCode::PROTOCOL_ERROR,
                    why: "AUTH other than 0x19 outside an exchange",
                })
            }
            _ => {
                return Err(Close {
                    reason: ReasonCode::PROTOCOL_ERROR,
                    why: "AUTH other than 0x18 during an exchange",
                })
            }
        };
        Ok(self.outcome(step))
    }

    /// Sets the CONNACK's Authentication Method and the success's Authentication Data.
    pub fn complete_connack(&mut self, connack: &mut ConnAck) {
        connack.properties.authentication_method = Some(self.method.clone());
        connack.properties.authentication_data = self.success_data.take();
    }

    fn packet(&self, reason: ReasonCode, data: Option<Bytes>) -> Auth {
        Auth {
            reason,
            properties: AuthProperties {
                authentication_method: Some(self.method.clone()),
                authentication_data: data,
                ..AuthProperties::default()
            },
        }
    }

    fn outcome(&mut self, step: AuthStep) -> AuthOutcome {
        match step {
            AuthStep::Continue(data) => {
                AuthOutcome::Challenge(self.packet(ReasonCode::CONTINUE_AUTHENTICATION, Some(data)))
            }
            AuthStep::Success(data) => {
                let connecting = self.phase == ExchangePhase::Connecting;
                self.phase = ExchangePhase::Authenticated;
                self.state.scratch.clear();
                if connecting {
                    self.success_data = data;
                    AuthOutcome::Success(None)
                } else {
                    AuthOutcome::Success(Some(self.packet(ReasonCode::SUCCESS, data)))
                }
            }
            AuthStep::Fail(code) => {
                assert!(
                    code.is_error(),
                    "an authentication failure is an error code"
                );
                AuthOutcome::Fail(code)
            }
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// [`HMAC_SHA256_METHOD`]: challenge-response with a shared secret. Any of the configured
/// secrets is accepted (to rotate one, offer both for a while).
pub struct HmacSha256Auth {
    secrets: Vec<Vec<u8>>,
}

impl HmacSha256Auth {
    /// The method with these secrets; at least one, none empty.
    pub fn new<S: AsRef<[u8]>>(secrets: impl IntoIterator<Item = S>) -> HmacSha256Auth {
        let secrets: Vec<Vec<u8>> = secrets.into_iter().map(|s| s.as_ref().to_vec()).collect();
        assert!(
            !secrets.is_empty() && secrets.iter().all(|s| !s.is_empty()),
            "HMAC secrets are given and not empty"
        );
        HmacSha256Auth { secrets }
    }

    /// What a client must answer: `HMAC-SHA256(secret, nonce || client_id)`.
    pub fn response(secret: &[u8], nonce: &[u8], client_id: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(nonce);
        mac.update(client_id);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for HmacSha256Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("HmacSha256Auth")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Authenticator for HmacSha256Auth {
    fn method(&self) -> &str {
        HMAC_SHA256_METHOD
    }

    fn start(&self, state: &mut AuthState, _data: Option<&[u8]>, nonce: Nonce) -> AuthStep {
        state.scratch = SmallVec::from_slice(&nonce);
        AuthStep::Continue(Bytes::copy_from_slice(&nonce))
    }

    fn step(&self, state: &mut AuthState, data: Option<&[u8]>) -> AuthStep {
        let (Some(answer), false) = (data, state.scratch.is_empty()) else {
            return AuthStep::Fail(ReasonCode::NOT_AUTHORIZED);
        };
        let verified = self.secrets.iter().any(|secret| {
            let mut mac =
                HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
            mac.update(&state.scratch);
            mac.update(state.client_id.as_bytes());
            // Constant-time comparison.
            mac.verify_slice(answer).is_ok()
        });
        if verified {
            AuthStep::Success(None)
        } else {
            AuthStep::Fail(ReasonCode::NOT_AUTHORIZED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_codec::{ConnAckProperties, ConnectProperties, Protocol};

    const SECRET: &[u8] = b"s3cret";
    const NONCE: Nonce = [7; 16];

    fn registry() -> Authenticators {
        let mut a = Authenticators::new();
        a.register(Arc::new(HmacSha256Auth::new([SECRET])));
        a
    }

    fn connect(method: Option<&str>, client_id: &str) -> Connect {
        Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                authentication_method: method.map(ByteStr::from),
                ..Default::default()
            },
        }
    }

    fn auth(reason: ReasonCode, method: &str, data: Option<&[u8]>) -> Auth {
        Auth {
            reason,
            properties: AuthProperties {
                authentication_method: Some(ByteStr::from(method)),
                authentication_data: data.map(Bytes::copy_from_slice),
                ..Default::default()
            },
        }
    }

    /// Computed with the crates directly, not through the code under test.
    fn answer(secret: &[u8], nonce: &[u8], client_id: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(nonce);
        mac.update(client_id.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn no_nonce() -> Nonce {
        panic!("no nonce expected")
    }

    /// CONNECT → challenge; returns the exchange and the nonce sent.
    fn challenged(client_id: &str) -> (AuthExchange, Bytes) {
        let (exchange, outcome) = registry()
            .begin(&connect(Some(HMAC_SHA256_METHOD), client_id), || NONCE)
            .expect("method offered")
            .expect("exchange started");
        let AuthOutcome::Challenge(challenge) = outcome else {
            panic!("expected a challenge, got {outcome:?}");
        };
        assert_eq!(challenge.reason, ReasonCode::CONTINUE_AUTHENTICATION);
        assert_eq!(
            challenge.properties.authentication_method.as_deref(),
            Some(HMAC_SHA256_METHOD)
        );
        let nonce = challenge
            .properties
            .authentication_data
            .expect("nonce sent");
        (exchange, nonce)
    }

    #[test]
    fn a_connect_without_a_method_needs_no_exchange() {
        assert!(registry()
            .begin(&connect(None, "c"), || NONCE)
            .unwrap()
            .is_none());
        assert!(Authenticators::new()
            .begin(&connect(None, "c"), || NONCE)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_method_not_offered_is_refused_with_0x8c() {
        let err = registry()
            .begin(&connect(Some("SCRAM-SHA-256"), "c"), || NONCE)
            .unwrap_err();
        assert_eq!(err, ReasonCode::BAD_AUTHENTICATION_METHOD);
        let err = Authenticators::new()
            .begin(&connect(Some(HMAC_SHA256_METHOD), "c"), || NONCE)
            .unwrap_err();
        assert_eq!(err, ReasonCode::BAD_AUTHENTICATION_METHOD);
    }

    #[test]
    fn hmac_challenge_is_the_nonce_and_the_right_answer_succeeds() {
        let (mut ex, nonce) = challenged("dev-1");
        assert_eq!(&nonce[..], &NONCE[..]);
        assert!(ex.is_connecting());
        let reply = auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            HMAC_SHA256_METHOD,
            Some(&answer(SECRET, &nonce, "dev-1")),
        );
        assert_eq!(ex.on_auth(&reply, no_nonce), Ok(AuthOutcome::Success(None)));
        assert!(!ex.is_connecting());
        let mut connack = ConnAck {
            session_present: false,
            code: ReasonCode::SUCCESS,
            properties: ConnAckProperties::default(),
        };
        ex.complete_connack(&mut connack);
        assert_eq!(
            connack.properties.authentication_method.as_deref(),
            Some(HMAC_SHA256_METHOD)
        );
    }

    #[test]
    fn hmac_wrong_secret_nonce_or_client_id_fails_with_0x87() {
        let bad = [
            answer(b"other", &NONCE, "dev-1"),
            answer(SECRET, &[8; 16], "dev-1"),
            answer(SECRET, &NONCE, "dev-2"),
            answer(SECRET, &NONCE, "dev-1")[..31].to_vec(),
            Vec::new(),
        ];
        for data in bad {
            let (mut ex, _) = challenged("dev-1");
            let reply = auth(
                ReasonCode::CONTINUE_AUTHENTICATION,
                HMAC_SHA256_METHOD,
                Some(&data),
            );
            assert_eq!(
                ex.on_auth(&reply, no_nonce),
                Ok(AuthOutcome::Fail(ReasonCode::NOT_AUTHORIZED)),
                "{data:02x?}"
            );
        }
        let (mut ex, _) = challenged("dev-1");
        let reply = auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            HMAC_SHA256_METHOD,
            None,
        );
        assert_eq!(
            ex.on_auth(&reply, no_nonce),
            Ok(AuthOutcome::Fail(ReasonCode::NOT_AUTHORIZED))
        );
    }

    #[test]
    fn any_configured_secret_is_accepted() {
        let mut reg = Authenticators::new();
        reg.register(Arc::new(HmacSha256Auth::new(["old", "new"])));
        for secret in [&b"old"[..], b"new"] {
            let (mut ex, outcome) = reg
                .begin(&connect(Some(HMAC_SHA256_METHOD), "c"), || NONCE)
                .unwrap()
                .unwrap();
            assert!(matches!(outcome, AuthOutcome::Challenge(_)));
            let reply = auth(
                ReasonCode::CONTINUE_AUTHENTICATION,
                HMAC_SHA256_METHOD,
                Some(&answer(secret, &NONCE, "c")),
            );
            assert_eq!(ex.on_auth(&reply, no_nonce), Ok(AuthOutcome::Success(None)));
        }
    }

    #[test]
    fn wrong_reason_or_method_during_the_exchange_is_a_protocol_error() {
        let ok = answer(SECRET, &NONCE, "c");
        let cases = [
            auth(ReasonCode::RE_AUTHENTICATE, HMAC_SHA256_METHOD, Some(&ok)),
            auth(ReasonCode::SUCCESS, HMAC_SHA256_METHOD, Some(&ok)),
            auth(ReasonCode::CONTINUE_AUTHENTICATION, "OTHER", Some(&ok)),
        ];
        for reply in cases {
            let (mut ex, _) = challenged("c");
            let err = ex.on_auth(&reply, no_nonce).unwrap_err();
            assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR, "{reply:?}");
        }
        let (mut ex, _) = challenged("c");
        let mut no_method = auth(ReasonCode::CONTINUE_AUTHENTICATION, "x", Some(&ok));
        no_method.properties.authentication_method = None;
        assert!(ex.on_auth(&no_method, no_nonce).is_err());
    }

    /// CONNECT → challenge → right answer; returns the exchange and the answer sent.
    fn authenticated(client_id: &str) -> (AuthExchange, Auth) {
        let (mut ex, nonce) = challenged(client_id);
        let reply = auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            HMAC_SHA256_METHOD,
            Some(&answer(SECRET, &nonce, client_id)),
        );
        assert_eq!(ex.on_auth(&reply, no_nonce), Ok(AuthOutcome::Success(None)));
        (ex, reply)
    }

    #[test]
    fn reauthentication_challenges_with_a_fresh_nonce_and_ends_with_auth_success() {
        let (mut ex, reply) = authenticated("c");

        // Continue outside an exchange: protocol error.
        let stray = auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            HMAC_SHA256_METHOD,
            None,
        );
        assert!(ex.on_auth(&stray, no_nonce).is_err());

        let fresh = [9u8; 16];
        let start = auth(ReasonCode::RE_AUTHENTICATE, HMAC_SHA256_METHOD, None);
        let AuthOutcome::Challenge(ch) = ex.on_auth(&start, || fresh).unwrap() else {
            panic!("expected a challenge");
        };
        assert_eq!(
            ch.properties.authentication_data.as_deref(),
            Some(&fresh[..])
        );
        // The old nonce's answer no longer works: a replay fails.
        let (mut ex2, _) = authenticated("c");
        ex2.on_auth(&start, || fresh).unwrap();
        assert_eq!(
            ex2.on_auth(&reply, no_nonce),
            Ok(AuthOutcome::Fail(ReasonCode::NOT_AUTHORIZED))
        );
        // The right answer: AUTH 0x00 with the method.
        let reply = auth(
            ReasonCode::CONTINUE_AUTHENTICATION,
            HMAC_SHA256_METHOD,
            Some(&answer(SECRET, &fresh, "c")),
        );
        let Ok(AuthOutcome::Success(Some(done))) = ex.on_auth(&reply, no_nonce) else {
            panic!("expected AUTH success");
        };
        assert_eq!(done.reason, ReasonCode::SUCCESS);
        assert_eq!(
            done.properties.authentication_method.as_deref(),
            Some(HMAC_SHA256_METHOD)
        );
    }

    #[test]
    fn reauthentication_with_another_method_is_a_protocol_error() {
        let (mut ex, _) = authenticated("c");
        let other = auth(ReasonCode::RE_AUTHENTICATE, "SCRAM-SHA-1", None);
        assert_eq!(
            ex.on_auth(&other, || NONCE).unwrap_err().reason,
            ReasonCode::PROTOCOL_ERROR
        );
    }

    /// A method that never finishes: the exchange stops at the round limit.
    #[derive(Debug)]
    struct Endless;

    impl Authenticator for Endless {
        fn method(&self) -> &str {
            "ENDLESS"
        }
        fn start(&self, _: &mut AuthState, _: Option<&[u8]>, _: Nonce) -> AuthStep {
            AuthStep::Continue(Bytes::new())
        }
        fn step(&self, _: &mut AuthState, _: Option<&[u8]>) -> AuthStep {
            AuthStep::Continue(Bytes::new())
        }
    }

    #[test]
    fn an_exchange_ends_after_auth_rounds_max() {
        let mut reg = Authenticators::new();
        reg.register(Arc::new(Endless));
        let (mut ex, _) = reg
            .begin(&connect(Some("ENDLESS"), "c"), || NONCE)
            .unwrap()
            .unwrap();
        let more = auth(ReasonCode::CONTINUE_AUTHENTICATION, "ENDLESS", None);
        for _ in 0..AUTH_ROUNDS_MAX {
            assert!(matches!(
                ex.on_auth(&more, no_nonce),
                Ok(AuthOutcome::Challenge(_))
            ));
        }
        assert_eq!(
            ex.on_auth(&more, no_nonce),
            Ok(AuthOutcome::Fail(ReasonCode::NOT_AUTHORIZED))
        );
    }

    #[test]
    fn registry_lists_methods_and_debug_hides_secrets() {
        let reg = registry();
        assert_eq!(reg.methods().collect::<Vec<_>>(), [HMAC_SHA256_METHOD]);
        assert!(!reg.is_empty());
        let shown = format!("{reg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            HmacSha256Auth::response(SECRET, &NONCE, b"c").to_vec(),
            answer(SECRET, &NONCE, "c")
        );
    }
}
