//! Property test: the compiled acl_file authorizer agrees with a naive reading of Mosquitto
//! 2.0's `mosquitto_acl_check_default` (string rules, recursive matcher, textual patterns).

use proptest::prelude::*;
use shardmq_auth::Acl;

#[derive(Debug, Clone)]
enum Line {
    Topic(&'static str, String),
    Pattern(&'static str, String),
    User(&'static str),
}

fn matches(filter: &str, topic: &str) -> bool {
    fn m(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => m(&f[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => m(&f[1..], &t[1..]),
            (None, None) => true,
            _ => false,
        }
    }
    if topic.is_empty() || filter.starts_with('$') != topic.starts_with('$') {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    m(&f, &t)
}

fn grants(access: &str, write: bool) -> bool {
    matches!(
        (access, write),
        ("readwrite", _) | ("read", false) | ("write", true)
    )
}

/// Mosquitto 2.0's check, read naively.
fn reference(lines: &[Line], user: Option<&str>, cid: &str, topic: &str, write: bool) -> bool {
    let mut section: Option<&str> = None;
    let mut own: Vec<(&str, &str)> = Vec::new();
    let mut patterns: Vec<(&str, &str)> = Vec::new();
    for l in lines {
        match l {
            Line::User(u) => section = Some(u),
            Line::Topic(a, t) if section == user => own.push((a, t)),
            Line::Topic(..) => {}
            Line::Pattern(a, t) => patterns.push((a, t)),
        }
    }
    if own.iter().any(|(a, t)| *a == "deny" && matches(t, topic)) {
        return false;
    }
    if own
        .iter()
        .any(|(a, t)| grants(a, write) && matches(t, topic))
    {
        return true;
    }
    if !patterns.is_empty()
        && (user.is_some_and(|u| u.contains(['+', '#'])) || cid.contains(['+', '#']))
    {
        return false;
    }
    let subst = |t: &str| {
        let t = t.replace("%c", cid);
        match user {
            Some(u) => t.replace("%u", u),
            None => t,
        }
    };
    let usable: Vec<(&str, String)> = patterns
        .iter()
        .filter(|(_, t)| user.is_some() || !t.contains("%u"))
        .map(|(a, t)| (*a, subst(t)))
        .collect();
    if usable
        .iter()
        .any(|(a, t)| *a == "deny" && matches(t, topic))
    {
        return false;
    }
    usable
        .iter()
        .any(|(a, t)| grants(a, write) && matches(t, topic))
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("a"),
        Just("b"),
        Just("u1"),
        Just("c1"),
        Just("%u"),
        Just("%c"),
        Just("+"),
        Just("")
    ];
    (
        proptest::bool::weighted(0.15),
        prop::collection::vec(level, 1..4),
        proptest::bool::ANY,
    )
        .prop_map(|(dollar, levels, hash)| {
            let mut s: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
            if dollar {
                s[0] = "$SYS".into();
            }
            if hash {
                s.push("#".into());
            }
            s.join("/")
        })
}

fn topic() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("a"),
        Just("b"),
        Just("u1"),
        Just("c1"),
        Just("u+"),
        Just("")
    ];
    (
        proptest::bool::weighted(0.15),
        prop::collection::vec(level, 1..5),
    )
        .prop_map(|(dollar, levels)| {
            let mut s: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
            if dollar {
                s[0] = "$SYS".into();
            }
            s.join("/").replace('+', "")
        })
}

fn line() -> impl Strategy<Value = Line> {
    let access = prop_oneof![Just("read"), Just("write"), Just("readwrite"), Just("deny")];
    prop_oneof![
        3 => (access.clone(), filter()).prop_map(|(a, f)| Line::Topic(a, f)),
        2 => (access, filter()).prop_map(|(a, f)| Line::Pattern(a, f)),
        1 => prop_oneof![Just("u1"), Just("u2"), Just("u+")].prop_map(Line::User),
    ]
}

fn render(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| match l {
            Line::Topic(a, t) => format!("topic {a} {t}\n"),
            Line::Pattern(a, t) => format!("pattern {a} {t}\n"),
            Line::User(u) => format!("user {u}\n"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn compiled_acl_agrees_with_naive_mosquitto(
        lines in prop::collection::vec(line(), 0..10),
        user in prop_oneof![Just(None), Just(Some("u1")), Just(Some("u2")), Just(Some("u+"))],
        cid in prop_oneof![Just("c1"), Just("c2"), Just("c#"), Just("a/b")],
        topics in prop::collection::vec(topic(), 1..6),
    ) {
        let acl = Acl::parse(&render(&lines)).unwrap();
        let auth = acl.for_client(user, cid);
        for t in &topics {
            prop_assert_eq!(auth.may_publish(t), reference(&lines, user, cid, t, true), "publish {}", t);
            prop_assert_eq!(auth.may_receive(t), reference(&lines, user, cid, t, false), "receive {}", t);
            // A filter without wildcards is covered exactly when its one topic is readable.
            prop_assert_eq!(auth.may_subscribe(t), auth.may_receive(t), "subscribe {}", t);
        }
    }
}
