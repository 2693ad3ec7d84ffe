//! What a shard asks the verifier of credentials (`[auth]`) and what it hears back. The
//! verifier itself (password files, JWT, the HTTP hook, worker threads) is outside the core:
//! the shell polls [`ShardCore::poll_verify`](crate::ShardCore::poll_verify) and answers with
//! [`ShardCore::handle_verdict`](crate::ShardCore::handle_verdict).

use bytes::Bytes;
use shardmq_broker::authz::SharedAuthorizer;
use std::net::IpAddr;

/// A CONNECT's credentials.
#[derive(Clone)]
pub struct Credentials {
    /// The client identifier (the assigned one when the client sent none).
    pub client_id: String,
    /// The username (the certificate's name with `peer_cert_as_username`), if any.
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<Bytes>,
    /// The client's address.
    pub peer: IpAddr,
    /// The TLS client certificate's name, if the listener makes it the username: then the
    /// certificate is the credential and only its ACL is looked up.
    pub cert_name: Option<String>,
    /// MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol_version: u8,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("peer", &self.peer)
            .field("cert_name", &self.cert_name)
            .finish()
    }
}

/// The verifier's answer.
#[derive(Clone)]
pub enum Verdict {
    /// Connect as `username` (the effective one), under `authorizer` (`None`: no ACL).
    Allowed {
        /// The effective username.
        username: Option<String>,
        /// The client's authorizer.
        authorizer: Option<SharedAuthorizer>,
    },
    /// Credentials presented and refused: v5 0x86, 3.1.1 return code 4.
    BadCredentials,
    /// Not allowed: v5 0x87, 3.1.1 return code 5.
    NotAuthorized,
    /// The verifier's queue is full (`auth.queue_max`): v5 0x89 Server busy, 3.1.1 code 3.
    Busy,
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allowed { username, .. } => f
                .debug_struct("Allowed")
                .field("username", username)
                .finish(),
            Verdict::BadCredentials => f.write_str("BadCredentials"),
            Verdict::NotAuthorized => f.write_str("NotAuthorized"),
            Verdict::Busy => f.write_str("Busy"),
        }
    }
}
