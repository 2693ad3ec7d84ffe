//! Topic filters as ACL rules use them: compiled once into levels, matched without allocation.
//!
//! Matching follows MQTT 3.1.1 §4.7 and Mosquitto's `mosquitto_topic_matches_sub`: `+` is one
//! whole level (an empty one too), `#` is the last level and also matches its parent
//! (`a/#` matches `a`), and a topic that starts with `$` only matches a filter that starts with
//! `$` (so `#` and `+/…` never reach `$SYS`), and the other way round.

/// Longest filter or topic accepted (the MQTT string limit).
pub(crate) const TOPIC_BYTES_MAX: usize = 65_535;

/// One level of a compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    /// A literal level (may be empty).
    Lit(Box<str>),
    /// `+`
    Plus,
    /// `#` (always the last level)
    Hash,
}

/// A validated, compiled topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    levels: Box<[Level]>,
    dollar: bool,
}

/// Why a string is not a valid filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterError {
    Empty,
    TooLong,
    /// `+` or `#` not alone in its level, or `#` not last.
    Wildcard,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FilterError::Empty => "empty topic filter",
            FilterError::TooLong => "topic filter longer than 65535 bytes",
            FilterError::Wildcard => "'+' or '#' not alone in its level, or '#' not last",
        })
    }
}

impl Filter {
    /// Compiles `s` (the check of Mosquitto's `mosquitto_sub_topic_check`).
    pub(crate) fn parse(s: &str) -> Result<Filter, FilterError> {
        if s.is_empty() {
            return Err(FilterError::Empty);
        }
        if s.len() > TOPIC_BYTES_MAX {
            return Err(FilterError::TooLong);
        }
        let count = s.split('/').count();
        let mut levels = Vec::with_capacity(count);
        for (i, part) in s.split('/').enumerate() {
            let level = match part {
                "+" => Level::Plus,
                "#" if i + 1 == count => Level::Hash,
                _ if part.contains(['+', '#']) => return Err(FilterError::Wildcard),
                _ => Level::Lit(part.into()),
            };
            levels.push(level);
        }
        Ok(Filter {
            levels: levels.into_boxed_slice(),
            dollar: s.starts_with('$'),
        })
    }

    /// Does the topic name `topic` match this filter? A topic with wildcards or an empty one
    /// matches nothing.
    pub(crate) fn matches_topic(&self, topic: &str) -> bool {
        if topic.is_empty() || topic.starts_with('$') != self.dollar {
            return false;
        }
        let mut parts = topic.split('/');
        for level in self.levels.iter() {
            match level {
                Level::Hash => return !topic.contains(['+', '#']),
                Level::Plus => match parts.next() {
                    Some(p) if !p.contains(['+', '#']) => {}
                    _ => return false,
                },
                Level::Lit(l) => match parts.next() {
                    Some(p) if p == &**l => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// Is every topic that `sub` matches also matched by `self`? (`sub` ⊆ `self`.) Used to
    /// allow a SUBSCRIBE by a rule: `a/#` covers `a/+/b`, `a/+` does not cover `a/#`.
    pub(crate) fn covers(&self, sub: &Filter) -> bool {
        if self.dollar != sub.dollar {
            return false;
        }
        let mut mine = self.levels.iter();
        let mut theirs = sub.levels.iter();
        loop {
            match (mine.next(), theirs.next()) {
                (Some(Level::Hash), _) => return true,
                (None, None) => return true,
                (Some(Level::Plus), Some(Level::Plus | Level::Lit(_))) => {}
                (Some(Level::Lit(a)), Some(Level::Lit(b))) if a == b => {}
                // `a/#` in `sub` also matches `a` itself: `self` must then match `a`, which a
                // further level of `self` other than `#` does not.
                _ => return false,
            }
        }
    }

    /// Is there a topic that both filters match? Used to deny a SUBSCRIBE by a deny rule.
    pub(crate) fn intersects(&self, other: &Filter) -> bool {
        if self.dollar != other.dollar {
            return false;
        }
        let mut a = self.levels.iter();
        let mut b = other.levels.iter();
        loop {
            match (a.next(), b.next()) {
                (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
                (None, None) => return true,
                (Some(Level::Plus), Some(_)) | (Some(_), Some(Level::Plus)) => {}
                (Some(Level::Lit(x)), Some(Level::Lit(y))) if x == y => {}
                // One ended and the other goes on with something other than `#`.
                (None, Some(_)) | (Some(_), None) => return false,
                _ => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    #[test]
    fn parse_rejects_bad_wildcards() {
        for bad in ["", "a+", "a/b#", "#/a", "a/#/b", "+a/b", "a/+b"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        for good in ["#", "+", "a/+/b", "a/#", "/", "+/+", "$SYS/#", "a//b"] {
            assert!(Filter::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn matching_follows_mqtt() {
        assert!(f("a/b").matches_topic("a/b"));
        assert!(!f("a/b").matches_topic("a/b/c"));
        assert!(f("a/+").matches_topic("a/b"));
        assert!(f("a/+").matches_topic("a/"));
        assert!(!f("a/+").matches_topic("a"));
        assert!(f("a/#").matches_topic("a"));
        assert!(f("a/#").matches_topic("a/b/c"));
        assert!(f("+/#").matches_topic("a"));
        assert!(f("#").matches_topic("/"));
        assert!(f("+/+").matches_topic("/x"));
        assert!(!f("a/#").matches_topic("ab"));
        assert!(!f("#").matches_topic(""));
        assert!(
            !f("#").matches_topic("a/+"),
            "a topic with wildcards matches nothing"
        );
    }

    #[test]
    fn dollar_topics_need_dollar_filters() {
        assert!(!f("#").matches_topic("$SYS/broker/load"));
        assert!(!f("+/broker/load").matches_topic("$SYS/broker/load"));
        assert!(f("$SYS/#").matches_topic("$SYS/broker/load"));
        assert!(f("$SYS/broker/+").matches_topic("$SYS/broker/load"));
        assert!(!f("$SYS/#").matches_topic("SYS/x"));
    }

    #[test]
    fn covers_and_intersects() {
        assert!(f("a/#").covers(&f("a/+/b")));
        assert!(f("a/#").covers(&f("a/#")));
        assert!(f("a/#").covers(&f("a")));
        assert!(!f("a/+").covers(&f("a/#")));
        assert!(!f("a/b").covers(&f("a/+")));
        assert!(f("a/+").covers(&f("a/b")));
        assert!(!f("#").covers(&f("$SYS/#")));
        assert!(f("a/+").intersects(&f("+/b")));
        assert!(f("a/#").intersects(&f("a")));
        assert!(f("a").intersects(&f("a/#")));
        assert!(!f("a/b").intersects(&f("a/c")));
        assert!(!f("a").intersects(&f("a/b")));
        assert!(f("#").intersects(&f("x/y")));
        assert!(!f("#").intersects(&f("$SYS/x")));
    }
}
