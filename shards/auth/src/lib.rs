//! Authentication and authorization for shardmq.
//!
//! What a shard's event loop uses is [`AuthService`]: it takes an [`AuthRequest`] from a
//! CONNECT and either decides at once ([`Submitted::Done`], nothing expensive to do), queues it
//! to a small pool of worker threads ([`Submitted::Queued`], the reply closure is called once
//! from a worker or from the delay thread), or refuses it ([`Submitted::Busy`], the bounded
//! queue is full: CONNACK 0x89 / 3.x rc 3). The caller never blocks: password hashing, the
//! HTTP hook and failure back-off all happen off the caller's thread.
//!
//! The methods, in the order the service tries them (see [`service`] for the exact rules):
//! 1. a Mosquitto `password_file` ([`PasswordFile`]: `$7$` PBKDF2-SHA512, `$6$` SHA-512,
//!    argon2id PHC lines; [`passwd_set`] / [`passwd_delete`] maintain it);
//! 2. a JWT in the password field (`jwt_secret` HS256, `jwt_public_key_file` RS256/ES256), with
//!    optional EMQX-style `acl` claims;
//! 3. an HTTP hook (`http_url`), EMQX-like answers, with a bounded answer cache.
//!
//! Authorization is an [`Authorizer`] built once per client at CONNECT: from a
//! Mosquitto `acl_file` ([`Acl::for_client`]) and/or from rules carried by a token or the HTTP
//! hook's answer ([`ClaimRule`]).
#![warn(missing_docs, unreachable_pub)]

mod acl;
mod error;
mod http;
mod jwt;
mod passwd;
mod rules;
pub mod service;
mod throttle;
mod topic;
mod verified;

pub use acl::{Acl, ACL_FILE_RULES_MAX};
pub use error::AuthError;
pub use passwd::{
    hash_argon2id, passwd_delete, passwd_set, PasswordFile, PasswordVerdict, ARGON2_M_KIB,
    ARGON2_P, ARGON2_T,
};
pub use rules::{ClaimAction, ClaimPermission, ClaimRule, CLAIM_RULES_MAX};
pub use service::{
    AuthOutcome, AuthRequest, AuthService, AuthSettings, Reply, Submitted, ThrottleSettings,
};
pub use shardmq_broker::authz::{Authorizer, DenyAction, SharedAuthorizer};
