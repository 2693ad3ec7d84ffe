//! Mosquitto's `acl_file`, with Mosquitto 2.0's semantics (`src/security_default.c`,
//! `mosquitto_acl_check_default`, and `mosquitto.conf(5)`).
//!
//! Syntax, one rule a line, fields separated by spaces:
//! - `topic [read|write|readwrite|deny] <topic>`: no access word means `readwrite`; the topic is
//!   the rest of the line (it may contain spaces). Before the first `user` line a rule belongs
//!   to the anonymous section (clients without a username); after it, to that user.
//! - `user <username>`: starts (or continues) the section of that user (the rest of the line).
//! - `pattern [read|write|readwrite|deny] <pattern>`: applies to every client wherever it
//!   appears; `%c` is replaced by the client id and `%u` by the username (textually, as
//!   Mosquitto 2.0 does); a pattern that contains `%u` is skipped for a client without one.
//! - `#` starts a comment line; blank lines are ignored; anything else is an error.
//!
//! A check of `topic` for READ (a message delivered to the client) or WRITE (a PUBLISH):
//! 1. the client's own section (its user's, or the anonymous one): if a `deny` rule matches →
//!    denied; if a rule granting that access matches → allowed. Deny rules win whatever their
//!    place in the file (Mosquitto puts them first);
//! 2. if patterns exist and the username or client id contains `+` or `#` → denied;
//! 3. patterns, the same way (deny first);
//! 4. otherwise denied. A client with no section and no patterns is denied everything.
//!
//! Topics starting with `$` only match rules starting with `$`: `topic read #` does not grant
//! `$SYS/…`; `topic read $SYS/#` does. `#` matches every other topic, and `a/#` matches `a`.
//!
//! SUBSCRIBE: Mosquitto 2.0's acl_file does not check SUBSCRIBE at all (it answers success for
//! `MOSQ_ACL_SUBSCRIBE`, "FIXME - implement ACL subscription strings") and only filters each
//! delivery. shardmq checks both, so that a client learns at SUBACK (0x87; 3.x 0x80) that a
//! filter gives it nothing, as EMQX and Mosquitto 1.x users expect:
//! - [`Authorizer::may_subscribe`]: in the same order as above (own section, then patterns), a
//!   `deny` rule that covers the whole filter (every topic the filter matches is denied)
//!   refuses it; a `read`/`readwrite` rule that covers the whole filter (`a/#` covers `a/+/b`;
//!   `a/+` does not cover `a/#`) allows it; otherwise it is refused. A filter only partly
//!   covered (`#` with `topic read a/#`) is refused: subscribe to what the rules grant.
//! - [`Authorizer::may_receive`] still does the READ check on every delivery (retained
//!   messages and wills too), so a `deny` rule inside an allowed filter (`topic read a/#`,
//!   `topic deny a/secret`) withholds just those messages.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use shardmq_broker::authz::{Authorizer, SharedAuthorizer};

use crate::error::{read_bounded, AuthError};
use crate::topic::Filter;

/// Most rules (topic and pattern lines together) accepted in one acl_file.
pub const ACL_FILE_RULES_MAX: usize = 100_000;

/// The access bits of a rule; deny is no bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Deny,
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn grants(self, want: Want) -> bool {
        matches!(
            (self, want),
            (Access::Read | Access::ReadWrite, Want::Read)
                | (Access::Write | Access::ReadWrite, Want::Write)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

/// The compiled rules of one section, deny rules apart.
#[derive(Debug, Default)]
struct RuleSet {
    deny: Vec<Filter>,
    allow: Vec<(Filter, Access)>,
}

impl RuleSet {
    fn push(&mut self, filter: Filter, access: Access) {
        if access == Access::Deny {
            self.deny.push(filter);
        } else {
            self.allow.push((filter, access));
        }
    }

    /// `Some(verdict)` when a rule decides, `None` when none matches.
    fn decide(&self, topic: &str, want: Want) -> Option<bool> {
        if self.deny.iter().any(|f| f.matches_topic(topic)) {
            return Some(false);
        }
        if self
            .allow
            .iter()
            .any(|(f, a)| a.grants(want) && f.matches_topic(topic))
        {
            return Some(true);
        }
        None
    }

    /// Like [`RuleSet::decide`] for a SUBSCRIBE filter: rules must cover all of it.
    fn decide_filter(&self, filter: &Filter) -> Option<bool> {
        if self.deny.iter().any(|f| f.covers(filter)) {
            return Some(false);
        }
        if self
            .allow
            .iter()
            .any(|(f, a)| a.grants(Want::Read) && f.covers(filter))
        {
            return Some(true);
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }
}

/// A pattern as written (substituted per client in [`Acl::for_client`]).
#[derive(Debug, Clone)]
struct Pattern {
    text: Box<str>,
    access: Access,
    has_user: bool,
}

/// A loaded acl_file. Cheap to share; [`Acl::for_client`] builds a client's authorizer.
#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Option<Arc<RuleSet>>,
    users: HashMap<String, Arc<RuleSet>>,
    patterns: Vec<Pattern>,
}

impl Acl {
    /// Reads and parses an acl_file.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = read_bounded(path)?;
        Acl::parse_named(&text, path)
    }

    /// Parses acl_file text (errors name no file).
    pub fn parse(text: &str) -> Result<Acl, AuthError> {
        Acl::parse_named(text, Path::new(""))
    }

    fn parse_named(text: &str, path: &Path) -> Result<Acl, AuthError> {
        let err = |line: usize, message: String| AuthError::AclFile {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut anonymous = RuleSet::default();
        let mut users: HashMap<String, RuleSet> = HashMap::new();
        let mut patterns = Vec::new();
        let mut user: Option<String> = None;
        let mut rules = 0usize;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = split_word(line);
            match word {
                "topic" | "pattern" => {
                    let (access_s, rest) = split_word(rest);
                    if access_s.is_empty() {
                        return Err(err(line_no, "empty topic".into()));
                    }
                    let rest = rest.trim();
                    let (access, topic) = if rest.is_empty() {
                        (Access::ReadWrite, access_s)
                    } else {
                        let access = match access_s {
                            "read" => Access::Read,
                            "write" => Access::Write,
                            "readwrite" => Access::ReadWrite,
                            "deny" => Access::Deny,
                            other => {
                                return Err(err(line_no, format!("invalid access type {other:?}")))
                            }
                        };
                        (access, rest)
                    };
                    let filter = Filter::parse(topic)
                        .map_err(|e| err(line_no, format!("invalid topic {topic:?}: {e}")))?;
                    rules += 1;
                    if rules > ACL_FILE_RULES_MAX {
                        return Err(err(
                            line_no,
                            format!("more than {ACL_FILE_RULES_MAX} rules"),
                        ));
                    }
                    if word == "topic" {
                        match &user {
                            None => anonymous.push(filter, access),
                            Some(u) => users.entry(u.clone()).or_default().push(filter, access),
                        }
                    } else {
                        if !topic.contains("%c") && !topic.contains("%u") {
                            tracing::warn!(
                                line = line_no,
                                pattern = topic,
                                "acl_file pattern contains neither %c nor %u"
                            );
                        }
                        patterns.push(Pattern {
                            text: topic.into(),
                            access,
                            has_user: topic.contains("%u"),
                        });
                    }
                }
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(err(line_no, "missing username".into()));
                    }
                    users.entry(name.to_owned()).or_default();
                    user = Some(name.to_owned());
                }
                _ => return Err(err(line_no, format!("invalid line: {line:?}"))),
            }
        }
        // Deny patterns first, as Mosquitto orders them (the order of checks is irrelevant to
        // the verdict; kept for the reader).
        patterns.sort_by_key(|p: &Pattern| p.access != Access::Deny);
        Ok(Acl {
            anonymous: (!anonymous.is_empty()).then(|| Arc::new(anonymous)),
            users: users.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            patterns,
        })
    }

    /// The authorizer of one client: its section shared (no copy), the patterns substituted
    /// and compiled for it. Nothing is parsed per check.
    pub fn for_client(&self, username: Option<&str>, client_id: &str) -> SharedAuthorizer {
        Arc::new(self.file_authorizer(username, client_id))
    }

    pub(crate) fn file_authorizer(
        &self,
        username: Option<&str>,
        client_id: &str,
    ) -> FileAuthorizer {
        let own = match username {
            Some(u) => self.users.get(u).cloned(),
            None => self.anonymous.clone(),
        };
        let mut patterns = RuleSet::default();
        for p in &self.patterns {
            if p.has_user && username.is_none() {
                continue;
            }
            let text = substitute(&p.text, client_id, username);
            // A substituted id with `+`/`#` is refused below; anything else that fails to
            // compile (e.g. longer than the topic limit) simply never matches.
            if let Ok(filter) = Filter::parse(&text) {
                patterns.push(filter, p.access);
            }
        }
        let dangerous = !self.patterns.is_empty()
            && (username.is_some_and(|u| u.contains(['+', '#'])) || client_id.contains(['+', '#']));
        FileAuthorizer {
            own,
            patterns,
            dangerous,
        }
    }
}

/// Splits off the first space-separated word (Mosquitto tokenizes on spaces only; runs of
/// spaces count as one).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(' ');
    match s.find(' ') {
        Some(i) => (&s[..i], s[i + 1..].trim_start_matches(' ')),
        None => (s, ""),
    }
}

/// Mosquitto 2.0's textual substitution: every `%c` becomes the client id, every `%u` the
/// username (when there is one; otherwise `%u` stays, but such patterns are skipped anyway).
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("%c") {
            out.push_str(client_id);
            rest = after;
        } else if let (Some(after), Some(u)) = (tail.strip_prefix("%u"), username) {
            out.push_str(u);
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A client's view of an acl_file (see the module documentation for the order of checks).
#[derive(Debug)]
pub(crate) struct FileAuthorizer {
    own: Option<Arc<RuleSet>>,
    patterns: RuleSet,
    dangerous: bool,
}

impl FileAuthorizer {
    fn check(&self, topic: &str, want: Want) -> bool {
        if let Some(own) = &self.own {
            if let Some(verdict) = own.decide(topic, want) {
                return verdict;
            }
        }
        if self.dangerous {
            return false;
        }
        self.patterns.decide(topic, want).unwrap_or(false)
    }
}

impl Authorizer for FileAuthorizer {
    fn may_publish(&self, topic: &str) -> bool {
        self.check(topic, Want::Write)
    }

    /// The filter must be covered by a rule granting read (see the module docs).
    fn may_subscribe(&self, filter: &str) -> bool {
        let Ok(filter) = Filter::parse(filter) else {
            return false;
        };
        if let Some(own) = &self.own {
            if let Some(verdict) = own.decide_filter(&filter) {
                return verdict;
            }
        }
        if self.dangerous {
            return false;
        }
        self.patterns.decide_filter(&filter).unwrap_or(false)
    }

    fn may_receive(&self, topic: &str) -> bool {
        self.check(topic, Want::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text).unwrap()
    }

    const SAMPLE: &str = "\
# anonymous section
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic write sensors/+/alice
topic deny alice/private
topic $SYS/broker/#

user bob
topic read #
topic  read   spaced topic/with space

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern deny devices/%c/locked
";

    #[test]
    fn anonymous_section_applies_to_clients_without_username() {
        let a = acl(SAMPLE).for_client(None, "c1");
        assert!(a.may_receive("public/news"));
        assert!(!a.may_publish("public/news"), "read only");
        assert!(!a.may_receive("public/secret"), "deny wins");
        assert!(!a.may_receive("alice/x"));
        // anonymous clients still get %c patterns, not %u ones
        assert!(a.may_publish("devices/c1/state"));
        assert!(!a.may_receive("users/c1/inbox"));
    }

    #[test]
    fn user_sections_and_access_words() {
        let acl = acl(SAMPLE);
        let alice = acl.for_client(Some("alice"), "a1");
        assert!(alice.may_publish("alice/x/y"));
        assert!(alice.may_receive("alice"));
        assert!(alice.may_publish("sensors/t/alice"));
        assert!(!alice.may_receive("sensors/t/alice"), "write only");
        assert!(
            !alice.may_publish("alice/private"),
            "deny wins over an earlier readwrite"
        );
        assert!(
            !alice.may_receive("public/news"),
            "the anonymous section is not alice's"
        );
        assert!(
            alice.may_receive("$SYS/broker/load"),
            "no access word = readwrite"
        );
        assert!(alice.may_publish("$SYS/broker/load"));
        let bob = acl.for_client(Some("bob"), "b1");
        assert!(bob.may_receive("anything/at/all"));
        assert!(
            !bob.may_receive("$SYS/broker/load"),
            "# does not reach $SYS"
        );
        assert!(!bob.may_publish("anything"));
        assert!(bob.may_receive("spaced topic/with space"));
        // patterns with %u
        assert!(bob.may_receive("users/bob/inbox"));
        assert!(
            bob.may_receive("users/alice/inbox"),
            "bob's own `read #` already allows it"
        );
        let carol = acl.for_client(Some("carol"), "c9");
        assert!(carol.may_receive("users/carol/inbox"));
        assert!(!carol.may_receive("users/bob/inbox"));
        assert!(
            !carol.may_receive("public/news"),
            "unknown user: no section, only patterns"
        );
    }

    #[test]
    fn patterns_with_client_id_and_deny() {
        let acl = acl(SAMPLE);
        let c = acl.for_client(Some("carol"), "dev7");
        assert!(c.may_publish("devices/dev7/temp"));
        assert!(c.may_receive("devices/dev7"));
        assert!(!c.may_publish("devices/dev8/temp"));
        assert!(!c.may_publish("devices/dev7/locked"), "deny pattern wins");
    }

    #[test]
    fn user_section_allow_is_decided_before_patterns() {
        // Mosquitto checks the client's own rules first: an allow there returns before a deny
        // pattern is seen.
        let acl = acl("user u\ntopic x/#\npattern deny x/%u\n");
        let u = acl.for_client(Some("u"), "c");
        assert!(u.may_publish("x/u"));
        let v = acl.for_client(Some("v"), "c");
        assert!(!v.may_publish("x/v"));
    }

    #[test]
    fn dangerous_ids_are_refused_by_patterns_only() {
        let acl = acl("user al+ce\ntopic a/#\npattern devices/%c/#\n");
        let a = acl.for_client(Some("al+ce"), "x");
        assert!(a.may_publish("a/b"), "own section still applies");
        assert!(!a.may_publish("devices/x/y"));
        let b = acl.for_client(Some("b"), "dev/#");
        assert!(!b.may_publish("devices/dev/anything"));
        let c = acl.for_client(Some("b"), "c#");
        assert!(!c.may_publish("devices/c#/x"));
    }

    #[test]
    fn percent_u_pattern_without_username_is_skipped() {
        let acl = acl("pattern readwrite %u/#\n");
        let anon = acl.for_client(None, "c");
        assert!(!anon.may_publish("%u/x"));
        assert!(!anon.may_publish("c/x"));
        let u = acl.for_client(Some("u"), "c");
        assert!(u.may_publish("u/x"));
    }

    #[test]
    fn textual_substitution_like_mosquitto_2_0() {
        // `%c` inside a level and a client id with '/' both substitute textually.
        let acl = acl("pattern write pre-%c/x\npattern write d/%c/#\n");
        let a = acl.for_client(None, "abc");
        assert!(a.may_publish("pre-abc/x"));
        let b = acl.for_client(None, "a/b");
        assert!(b.may_publish("d/a/b/c"));
        assert_eq!(substitute("%x%%c", "id", None), "%x%id");
    }

    #[test]
    fn no_rules_for_client_denies_everything() {
        let acl = acl("user alice\ntopic #\n");
        let bob = acl.for_client(Some("bob"), "b");
        assert!(!bob.may_publish("x"));
        assert!(!bob.may_receive("x"));
        assert!(!bob.may_subscribe("#"), "no rule covers the filter");
        let anon = acl.for_client(None, "b");
        assert!(!anon.may_receive("x"));
    }

    #[test]
    fn a_subscription_needs_a_read_rule_covering_all_of_it() {
        let acl = acl("user alice
topic read a/#
topic deny a/secret/#
topic write w/#
                       pattern read own/%u/+
");
        let a = acl.for_client(Some("alice"), "c");
        assert!(a.may_subscribe("a/#") && a.may_subscribe("a/+/x") && a.may_subscribe("a"));
        assert!(!a.may_subscribe("#"), "only partly covered");
        assert!(!a.may_subscribe("a/secret/#"), "wholly denied");
        assert!(
            a.may_receive("a/b") && !a.may_receive("a/secret/x"),
            "deliveries still checked"
        );
        assert!(
            !a.may_subscribe("w/#"),
            "write does not grant a subscription"
        );
        assert!(!a.may_subscribe("$SYS/#"));
        // The own section decides nothing for own/...: the pattern does.
        assert!(a.may_subscribe("own/alice/+") && !a.may_subscribe("own/bob/+"));
        assert!(!a.may_subscribe("a/+b"), "an invalid filter is refused");
    }

    #[test]
    fn sections_continue_when_a_user_repeats() {
        let acl = acl("user a\ntopic one\nuser b\ntopic two\nuser a\ntopic three\n");
        let a = acl.for_client(Some("a"), "c");
        assert!(a.may_publish("one") && a.may_publish("three") && !a.may_publish("two"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, line) in [
            ("topic\n", 1),
            ("\n\ntopic bogus a/b\n", 3),
            ("topic read a/#/b\n", 1),
            ("user\n", 1),
            ("frobnicate x\n", 1),
            ("# ok\ntopic read a+\n", 2),
        ] {
            match Acl::parse(text) {
                Err(AuthError::AclFile { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let acl = acl("# c\r\n\r\n   \r\ntopic read a\r\n  # indented comment\r\n");
        assert!(acl.for_client(None, "c").may_receive("a"));
    }
}
