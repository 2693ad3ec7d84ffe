//! Authorization as the session sees it: a per-client [`Authorizer`] decided once at CONNECT
//! (from the ACL file, a JWT's claims or the HTTP hook), and a bounded per-session cache of its
//! answers so that the message path does no rule matching for a topic it has already seen.

use std::fmt;
use std::sync::Arc;

/// What a connected client may do. Built once per connection by the authentication layer;
/// `None` in a session means "allowed everything" (no ACL configured, or a superuser).
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// May this client publish to `topic` (a topic name, no wildcards)?
    fn may_publish(&self, topic: &str) -> bool;
    /// May this client subscribe to `filter` (a topic filter, wildcards allowed; for shared
    /// subscriptions the filter without the `$share/{group}/` prefix)?
    fn may_subscribe(&self, filter: &str) -> bool;
    /// May this client receive a message published to `topic`?
    fn may_receive(&self, topic: &str) -> bool;
}

/// A shared authorizer.
pub type SharedAuthorizer = Arc<dyn Authorizer>;

/// What to do when a PUBLISH is denied (`auth.acl_deny_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyAction {
    /// v5: PUBACK/PUBREC 0x87; 3.x: acknowledged and dropped.
    #[default]
    Ignore,
    /// Close the connection (v5: DISCONNECT 0x87 first).
    Disconnect,
}
