//! ACL rules carried by a JWT claim or an HTTP hook answer, in EMQX's format (EMQX ≥ 5.5,
//! "Access Control List" of JWT/HTTP authentication):
//! `[{"permission":"allow"|"deny","action":"publish"|"subscribe"|"all","topic":"t/${clientid}"}]`.
//!
//! Semantics (EMQX's): the rules are tried in order and the first that matches decides. A
//! topic may use `${username}` and `${clientid}`; a topic `eq <filter>` matches that filter
//! literally (a SUBSCRIBE to exactly that string). Where no rule matches, the client's
//! acl_file authorizer decides if an acl_file is configured; otherwise the operation is
//! denied (EMQX would continue to its other authorizers and then `no_match`, default allow;
//! shardmq denies: a token that carries rules is meant to restrict).
//!
//! How an operation meets a rule:
//! - PUBLISH `t`: the rule's filter matches `t` (or equals it, for `eq`);
//! - SUBSCRIBE `f`: an allow rule matches when its filter covers every topic `f` matches
//!   (`a/#` allows `a/+/b`; `a/+` does not allow `a/#`), a deny rule when the two filters share
//!   a topic; `eq` rules compare the strings;
//! - receiving a message on `t` (`may_receive`): subscribe/all rules whose filter matches `t`
//!   (not `eq` rules); no match → the acl_file's READ check if there is one, else allowed
//!   (the SUBSCRIBE was checked).
//!
//! `qos` and `retain` narrow a rule in EMQX; the [`Authorizer`] questions carry neither, so an
//! allow rule that narrows never matches and a deny rule that narrows always does (the safe
//! reading).

use std::sync::Arc;

use serde::Deserialize;
use shardmq_broker::authz::{Authorizer, SharedAuthorizer};

use crate::topic::Filter;

/// Most rules accepted in one token or hook answer.
pub const CLAIM_RULES_MAX: usize = 256;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimPermission {
    /// The operation is allowed.
    Allow,
    /// The operation is denied.
    Deny,
}

/// Which operations a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimAction {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE (and receiving).
    Subscribe,
    /// Both.
    All,
}

/// One rule, as found in a token's `acl` claim or a hook's `acl` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClaimRule {
    /// Allow or deny.
    pub permission: ClaimPermission,
    /// The operations.
    pub action: ClaimAction,
    /// A topic filter with `${username}`/`${clientid}`, or `eq <filter>`.
    pub topic: String,
    /// EMQX's QoS narrowing (see the module docs).
    #[serde(default)]
    pub qos: Option<Vec<u8>>,
    /// EMQX's retain narrowing (see the module docs).
    #[serde(default)]
    pub retain: Option<bool>,
}

/// Parses and validates a JSON array of rules.
pub(crate) fn parse_rules(value: &serde_json::Value) -> Result<Arc<[ClaimRule]>, String> {
    let arr = value.as_array().ok_or("acl is not an array")?;
    if arr.len() > CLAIM_RULES_MAX {
        return Err(format!("more than {CLAIM_RULES_MAX} acl rules"));
    }
    let mut out = Vec::with_capacity(arr.len());
    for v in arr {
        let rule: ClaimRule =
            serde_json::from_value(v.clone()).map_err(|e| format!("invalid acl rule: {e}"))?;
        // Validate the shape with the placeholders filled by a harmless word.
        let probe = rule
            .topic
            .replace("${username}", "u")
            .replace("${clientid}", "c");
        let probe = probe.strip_prefix("eq ").unwrap_or(&probe);
        Filter::parse(probe).map_err(|e| format!("invalid acl topic {:?}: {e}", rule.topic))?;
        out.push(rule);
    }
    Ok(out.into())
}

#[derive(Debug)]
enum Target {
    Eq(Box<str>),
    Filter(Filter),
    /// A placeholder with no value (or an unsafe one): matches nothing.
    Never,
}

#[derive(Debug)]
struct Compiled {
    allow: bool,
    publish: bool,
    subscribe: bool,
    narrowed: bool,
    target: Target,
}

impl Compiled {
    /// Does this rule speak about the operation? (With narrowing applied.)
    fn hit(&self, matched: bool) -> bool {
        if self.narrowed {
            // allow → never, deny → whenever the topic matches
            !self.allow && matched
        } else {
            matched
        }
    }
}

/// A client's authorizer built from rules (see the module docs).
#[derive(Debug)]
pub(crate) struct RuleAuthorizer {
    rules: Vec<Compiled>,
    fallback: Option<SharedAuthorizer>,
}

fn fill(topic: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let mut out = topic.to_owned();
    for (ph, value) in [("${username}", username), ("${clientid}", Some(client_id))] {
        if out.contains(ph) {
            let v = value.filter(|v| !v.is_empty() && !v.contains(['+', '#', '/']))?;
            out = out.replace(ph, v);
        }
    }
    Some(out)
}

impl RuleAuthorizer {
    pub(crate) fn new(
        rules: &[ClaimRule],
        username: Option<&str>,
        client_id: &str,
        fallback: Option<SharedAuthorizer>,
    ) -> RuleAuthorizer {
        let rules = rules
            .iter()
            .map(|r| {
                let target = match fill(&r.topic, username, client_id) {
                    None => Target::Never,
                    Some(t) => match t.strip_prefix("eq ") {
                        Some(eq) => Target::Eq(eq.into()),
                        None => Filter::parse(&t)
                            .map(Target::Filter)
                            .unwrap_or(Target::Never),
                    },
                };
                let all_qos = r
                    .qos
                    .as_ref()
                    .is_none_or(|q| (0..=2).all(|n| q.contains(&n)));
                Compiled {
                    allow: r.permission == ClaimPermission::Allow,
                    publish: matches!(r.action, ClaimAction::Publish | ClaimAction::All),
                    subscribe: matches!(r.action, ClaimAction::Subscribe | ClaimAction::All),
                    narrowed: !all_qos || r.retain.is_some(),
                    target,
                }
            })
            .collect();
        RuleAuthorizer { rules, fallback }
    }
}

impl Authorizer for RuleAuthorizer {
    fn may_publish(&self, topic: &str) -> bool {
        for r in self.rules.iter().filter(|r| r.publish) {
            let matched = match &r.target {
                Target::Eq(s) => &**s == topic,
                Target::Filter(f) => f.matches_topic(topic),
                Target::Never => false,
            };
            if r.hit(matched) {
                return r.allow;
            }
        }
        self.fallback.as_ref().is_some_and(|f| f.may_publish(topic))
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        let Ok(sub) = Filter::parse(filter) else {
            return false;
        };
        for r in self.rules.iter().filter(|r| r.subscribe) {
            let matched = match &r.target {
                Target::Eq(s) => &**s == filter,
                Target::Filter(f) if r.allow => f.covers(&sub),
                Target::Filter(f) => f.intersects(&sub),
                Target::Never => false,
            };
            if r.hit(matched) {
                return r.allow;
            }
        }
        self.fallback
            .as_ref()
            .is_some_and(|f| f.may_subscribe(filter))
    }

    fn may_receive(&self, topic: &str) -> bool {
        for r in self.rules.iter().filter(|r| r.subscribe) {
            let matched = match &r.target {
                Target::Filter(f) => f.matches_topic(topic),
                Target::Eq(_) | Target::Never => false,
            };
            if r.hit(matched) {
                return r.allow;
            }
        }
        self.fallback.as_ref().is_none_or(|f| f.may_receive(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Arc<[ClaimRule]> {
        parse_rules(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn first_match_decides_with_placeholders() {
        let r = rules(
            r##"[{"permission":"deny","action":"publish","topic":"t/${clientid}/locked"},
                {"permission":"allow","action":"publish","topic":"t/${clientid}/#"},
                {"permission":"allow","action":"subscribe","topic":"u/${username}/#"},
                {"permission":"allow","action":"all","topic":"eq shared/#"},
                {"permission":"deny","action":"all","topic":"#"}]"##,
        );
        let a = RuleAuthorizer::new(&r, Some("ann"), "c1", None);
        assert!(a.may_publish("t/c1/x"));
        assert!(!a.may_publish("t/c1/locked"));
        assert!(!a.may_publish("t/c2/x"));
        assert!(a.may_subscribe("u/ann/+"));
        assert!(!a.may_subscribe("u/bob/+"));
        assert!(a.may_subscribe("shared/#"), "eq matches the literal filter");
        assert!(
            !a.may_subscribe("shared/x"),
            "eq does not match other filters"
        );
        assert!(a.may_receive("u/ann/x"));
        assert!(
            !a.may_receive("shared/x"),
            "eq rules do not speak for receiving; deny # does"
        );
        assert!(!a.may_subscribe("a/+b"), "invalid filters are refused");
    }

    #[test]
    fn subscribe_covers_and_deny_intersects() {
        let r = rules(
            r##"[{"permission":"deny","action":"subscribe","topic":"a/secret"},
                {"permission":"allow","action":"subscribe","topic":"a/+"}]"##,
        );
        let a = RuleAuthorizer::new(&r, None, "c", None);
        assert!(a.may_subscribe("a/b"));
        assert!(!a.may_subscribe("a/+"), "a/+ reaches a/secret");
        assert!(!a.may_subscribe("a/#"), "a/+ does not cover a/#");
        assert!(a.may_receive("a/b"));
        assert!(!a.may_receive("a/secret"));
    }

    #[test]
    fn missing_username_never_matches_and_no_match_falls_back() {
        let r = rules(r##"[{"permission":"allow","action":"all","topic":"u/${username}"}]"##);
        let a = RuleAuthorizer::new(&r, None, "c", None);
        assert!(
            !a.may_publish("u/"),
            "no username: the rule matches nothing"
        );
        assert!(!a.may_publish("u/${username}"));
        assert!(!a.may_subscribe("x"), "no match, no acl_file: denied");
        assert!(
            a.may_receive("x"),
            "receiving is left to the checked subscription"
        );
        let file = crate::Acl::parse("topic write x\n")
            .unwrap()
            .for_client(None, "c");
        let b = RuleAuthorizer::new(&r, None, "c", Some(file));
        assert!(b.may_publish("x"), "acl_file decides where no rule matches");
        assert!(!b.may_receive("x"));
    }

    #[test]
    fn narrowing_fields_are_read_safely() {
        let r = rules(
            r##"[{"permission":"allow","action":"publish","topic":"q","qos":[1]},
                {"permission":"deny","action":"publish","topic":"r","retain":true},
                {"permission":"allow","action":"publish","topic":"#"}]"##,
        );
        let a = RuleAuthorizer::new(&r, None, "c", None);
        assert!(
            a.may_publish("q"),
            "narrowed allow skipped, the later allow # decides"
        );
        assert!(!a.may_publish("r"), "narrowed deny applies");
    }

    #[test]
    fn invalid_rules_are_errors() {
        for bad in [
            r#"{"permission":"allow"}"#,
            r##"[{"permission":"maybe","action":"all","topic":"a"}]"##,
            r##"[{"permission":"allow","action":"all","topic":"a/#/b"}]"##,
            r##"[{"permission":"allow","action":"pub","topic":"a"}]"##,
            r##"[{"permission":"allow","action":"all"}]"##,
        ] {
            assert!(
                parse_rules(&serde_json::from_str(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        let many: Vec<_> = (0..=CLAIM_RULES_MAX)
            .map(|_| serde_json::json!({"permission":"allow","action":"all","topic":"a"}))
            .collect();
        assert!(parse_rules(&serde_json::Value::Array(many)).is_err());
    }
}
