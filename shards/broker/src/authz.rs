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

/// Most topics a session remembers answers for, per kind, before the cache starts over. A
/// client that publishes to more distinct topics than this pays a rule match per topic again.
pub const AUTHZ_CACHE_MAX: usize = 256;

/// A session's authorizer with its cached answers, per topic (publish, receive) and filter
/// (subscribe is not cached: it is not on the message path).
#[derive(Debug)]
pub struct AuthzCache {
    authorizer: SharedAuthorizer,
    deny_action: DenyAction,
    publish: ahash::AHashMap<Box<str>, bool>,
    receive: ahash::AHashMap<Box<str>, bool>,
}

impl AuthzCache {
    /// A cache over `authorizer`.
    pub fn new(authorizer: SharedAuthorizer, deny_action: DenyAction) -> AuthzCache {
        AuthzCache {
            authorizer,
            deny_action,
            publish: ahash::AHashMap::new(),
            receive: ahash::AHashMap::new(),
        }
    }

    /// What to do with a denied PUBLISH.
    pub fn deny_action(&self) -> DenyAction {
        self.deny_action
    }

    /// May the client publish to `topic`? Cached.
    pub fn may_publish(&mut self, topic: &str) -> bool {
        let authorizer = &self.authorizer;
        cached(&mut self.publish, topic, |t| authorizer.may_publish(t))
    }

    /// May the client receive messages on `topic`? Cached.
    pub fn may_receive(&mut self, topic: &str) -> bool {
        let authorizer = &self.authorizer;
        cached(&mut self.receive, topic, |t| authorizer.may_receive(t))
    }

    /// May the client subscribe to `filter` (without any `$share/{group}/` prefix)?
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.authorizer.may_subscribe(filter)
    }
}

fn cached(
    map: &mut ahash::AHashMap<Box<str>, bool>,
    topic: &str,
    decide: impl FnOnce(&str) -> bool,
) -> bool {
    if let Some(&allowed) = map.get(topic) {
        return allowed;
    }
    let allowed = decide(topic);
    if map.len() >= AUTHZ_CACHE_MAX {
        map.clear();
    }
    map.insert(topic.into(), allowed);
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Authorizer for Counting {
        fn may_publish(&self, topic: &str) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            topic.starts_with("ok/")
        }
        fn may_subscribe(&self, filter: &str) -> bool {
            filter.starts_with("ok/")
        }
        fn may_receive(&self, topic: &str) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            topic.starts_with("ok/")
        }
    }

    #[test]
    fn answers_are_cached_per_topic_and_bounded() {
        let rules = Arc::new(Counting::default());
        let mut cache = AuthzCache::new(rules.clone(), DenyAction::Ignore);
        for _ in 0..10 {
            assert!(cache.may_publish("ok/a"));
            assert!(!cache.may_publish("no/a"));
            assert!(!cache.may_receive("no/a"));
        }
        assert_eq!(
            rules.0.load(Ordering::Relaxed),
            3,
            "one rule match per topic and kind"
        );
        for i in 0..AUTHZ_CACHE_MAX * 2 {
            cache.may_publish(&format!("ok/{i}"));
        }
        assert!(cache.publish.len() <= AUTHZ_CACHE_MAX);
        assert!(cache.may_subscribe("ok/+") && !cache.may_subscribe("#"));
    }
}
