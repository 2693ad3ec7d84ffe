//! Topic names and topic filters: validation and the reference matcher.
//!
//! A *topic name* is what a PUBLISH carries (`sensors/kitchen/temp`); a *topic filter* is what a
//! SUBSCRIBE carries and may hold the wildcards `+` (exactly one level) and `#` (this level and
//! every level below, last level only). Levels are separated by `/`; an empty level is a real
//! level, so `a//b` has three levels and `/` has two.
//!
//! [`filter_matches`] is the naive, obviously-correct matcher. The fast structures
//! ([`SubscriptionTrie`](crate::trie::SubscriptionTrie) and
//! [`RetainedStore`](crate::retain::RetainedStore)) are tested against it.

/// The longest topic name or filter MQTT can carry: a UTF-8 string has a 16-bit length.
pub const TOPIC_LEN_MAX: usize = 65_535;

/// Why a topic name or topic filter was refused.
///
/// The caller maps it to a reason code: on PUBLISH every variant is *Topic Name invalid*
/// (0x90), on SUBSCRIBE/UNSUBSCRIBE *Topic Filter invalid* (0x8F).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is the empty string (MQTT-4.7.3-1).
    #[error("topic is empty")]
    Empty,
    /// The topic has more levels than the broker allows.
    #[error("topic has more than {max} levels")]
    TooManyLevels {
        /// The configured maximum number of levels.
        max: usize,
    },
    /// A topic name (PUBLISH) contains `+` or `#` (MQTT-3.3.2-2).
    #[error("topic name contains a wildcard")]
    WildcardInTopicName,
    /// A filter uses `+` or `#` as part of a level, or `#` not as the last level (MQTT-4.7.1-1/2).
    #[error("wildcard is not a whole level, or '#' is not the last level")]
    InvalidWildcard,
    /// The topic is longer than [`TOPIC_LEN_MAX`] bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
}

/// Checks a topic name as carried by PUBLISH: non-empty, at most [`TOPIC_LEN_MAX`] bytes, at
/// most `max_levels` levels, and no wildcard character anywhere.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    check_len(topic)?;
    let mut levels = 1usize;
    for b in topic.bytes() {
        match b {
            b'+' | b'#' => return Err(TopicError::WildcardInTopicName),
            b'/' => levels += 1,
            _ => {}
        }
    }
    if levels > max_levels {
        return Err(TopicError::TooManyLevels { max: max_levels });
    }
    Ok(())
}

/// Checks a topic filter as carried by SUBSCRIBE/UNSUBSCRIBE: non-empty, at most
/// [`TOPIC_LEN_MAX`] bytes, at most `max_levels` levels, `+` and `#` only as whole levels, and
/// `#` only as the last level.
///
/// Shared-subscription prefixes (`$share/group/…`) are not interpreted here: strip them first.
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_len(filter)?;
    let mut levels = filter.split('/').peekable();
    let mut count = 0usize;
    while let Some(level) = levels.next() {
        count += 1;
        if count > max_levels {
            return Err(TopicError::TooManyLevels { max: max_levels });
        }
        match level {
            "+" => {}
            "#" if levels.peek().is_none() => {}
            _ if level.bytes().any(|b| b == b'+' || b == b'#') => {
                return Err(TopicError::InvalidWildcard)
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_len(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        Err(TopicError::Empty)
    } else if topic.len() > TOPIC_LEN_MAX {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

/// Whether `filter` matches the topic name `topic`: the reference matcher.
///
/// Rules: `+` matches exactly one level (an empty one too), `#` matches the level it stands in
/// and every level below, and also the parent level alone (`a/#` matches `a`). A filter whose
/// first level is `+` or `#` does not match a topic starting with `$` (MQTT-4.7.2-1), so `#`
/// does not match `$SYS/uptime` but `$SYS/#` does.
///
/// Both arguments are expected to be valid ([`validate_topic_filter`], [`validate_topic_name`]);
/// for invalid input the answer is unspecified, but it never panics.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && matches!(first_level(filter), "+" | "#") {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` contains a wildcard character (`+` or `#`). For a valid filter this says
/// whether it can match more than one topic name.
pub fn has_wildcards(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

fn first_level(s: &str) -> &str {
    split_level(s).0
}

/// Splits off the first level: `"a/b/c"` gives `("a", Some("b/c"))`, `"a/"` gives
/// `("a", Some(""))` (one more, empty, level) and `"a"` gives `("a", None)`.
pub(crate) fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}

/// Proptest strategies for topics and filters over a small alphabet, so that matches happen,
/// with `$` first levels and empty levels.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;

    fn level(wildcard: bool) -> impl Strategy<Value = &'static str> {
        let mut levels = vec!["a", "b", "", "$SYS", "$"];
        if wildcard {
            levels.push("+");
        }
        prop::sample::select(levels)
    }

    /// A valid topic name of 1 to 4 levels.
    pub(crate) fn topic() -> impl Strategy<Value = String> {
        // A single empty level would be the empty topic: "/" stands in for it.
        prop::collection::vec(level(false), 1..5).prop_map(|l| match l.join("/") {
            t if t.is_empty() => "/".to_owned(),
            t => t,
        })
    }

    /// A valid topic filter of 1 to 5 levels, some with `+`, some with a trailing `#`, some
    /// exact.
    pub(crate) fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(level(true), 0..5), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash || l.is_empty() || l == [""] {
                l.push("#");
            }
            l.join("/")
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::strategies::{filter, topic};
    use super::*;

    #[test]
    fn topic_name_validation() {
        assert_eq!(validate_topic_name("a/b", 8), Ok(()));
        assert_eq!(validate_topic_name("/", 8), Ok(()));
        assert_eq!(validate_topic_name("a//b", 8), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x", 8), Ok(()));
        assert_eq!(validate_topic_name("", 8), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+", 8),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a#", 8),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(
            validate_topic_name("a/b/c/", 3),
            Err(TopicError::TooManyLevels { max: 3 })
        );
        let long = "x".repeat(TOPIC_LEN_MAX + 1);
        assert_eq!(validate_topic_name(&long, 8), Err(TopicError::TooLong));
        assert_eq!(validate_topic_name(&long[1..], 8), Ok(()));
    }

    #[test]
    fn topic_filter_validation() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/+", "+/", "a//#", "$SYS/#", "a/b",
        ] {
            assert_eq!(validate_topic_filter(ok, 8), Ok(()), "{ok}");
        }
        for bad in ["a/#/b", "#/a", "a#", "a/b#", "+a", "a/+b/c", "##", "++"] {
            assert_eq!(
                validate_topic_filter(bad, 8),
                Err(TopicError::InvalidWildcard),
                "{bad}"
            );
        }
        assert_eq!(validate_topic_filter("", 8), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("+/+/#", 3), Ok(()));
        assert_eq!(
            validate_topic_filter("+/+/+/#", 3),
            Err(TopicError::TooManyLevels { max: 3 })
        );
        let long = "x".repeat(TOPIC_LEN_MAX + 1);
        assert_eq!(validate_topic_filter(&long, 8), Err(TopicError::TooLong));
    }

    #[test]
    fn plus_matches_exactly_one_level() {
        assert!(filter_matches("a/+", "a/b"));
        assert!(filter_matches("a/+", "a/"));
        assert!(!filter_matches("a/+", "a"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("a/+/c", "a//c"));
        assert!(filter_matches("+", "a"));
    }

    #[test]
    fn hash_matches_level_children_and_parent() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(!filter_matches("a/#", "b"));
        assert!(!filter_matches("a/#", "ab"));
        assert!(filter_matches("#", "a"));
        assert!(filter_matches("#", "/"));
        assert!(filter_matches("+/#", "a"));
        assert!(filter_matches("a/+/#", "a/b"));
        assert!(!filter_matches("a/+/#", "a"));
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        assert!(!filter_matches("#", "$SYS/uptime"));
        assert!(!filter_matches("+/uptime", "$SYS/uptime"));
        assert!(!filter_matches("+", "$"));
        assert!(filter_matches("$SYS/#", "$SYS/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS"));
        assert!(filter_matches("$SYS/+", "$SYS/uptime"));
        assert!(filter_matches("a/+", "a/$b"));
        assert!(filter_matches("#", "a/$b"));
    }

    #[test]
    fn exact_and_empty_levels() {
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/b/"));
        assert!(!filter_matches("a/b", "a"));
        assert!(filter_matches("a//b", "a//b"));
        assert!(!filter_matches("a//b", "a/b"));
        assert!(filter_matches("/", "/"));
        assert!(!filter_matches("/", "a/"));
    }

    #[test]
    fn wildcard_detection_and_level_split() {
        assert!(has_wildcards("a/+"));
        assert!(has_wildcards("#"));
        assert!(!has_wildcards("a/b"));
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("a/"), ("a", Some("")));
        assert_eq!(split_level(""), ("", None));
    }

    proptest! {
        #[test]
        fn generated_topics_and_filters_are_valid(t in topic(), f in filter()) {
            prop_assert_eq!(validate_topic_name(&t, 8), Ok(()));
            prop_assert_eq!(validate_topic_filter(&f, 8), Ok(()));
            prop_assert_eq!(validate_topic_filter(&t, 8), Ok(()));
            prop_assert!(!has_wildcards(&t));
        }

        #[test]
        fn a_topic_matches_itself_and_its_generalisations(t in topic()) {
            prop_assert!(filter_matches(&t, &t));
            let dollar = t.starts_with('$');
            prop_assert_eq!(filter_matches("#", &t), !dollar);
            let levels: Vec<&str> = t.split('/').collect();
            for i in 0..levels.len() {
                let mut plus = levels.clone();
                plus[i] = "+";
                prop_assert_eq!(filter_matches(&plus.join("/"), &t), !(dollar && i == 0));
                let hash = [&levels[..i], &["#"][..]].concat().join("/");
                prop_assert_eq!(filter_matches(&hash, &t), !(dollar && i == 0));
            }
        }
    }
}
