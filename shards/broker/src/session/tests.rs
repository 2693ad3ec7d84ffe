//! The session's inline size (paid by every idle connection) and the containers behind it.

use super::*;

fn sub(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
        id: None,
    }
}

fn filters(m: &SubMap) -> Vec<&str> {
    m.iter().map(|(f, _)| f.as_str()).collect()
}

#[test]
fn an_empty_subscription_map_is_two_words() {
    assert!(std::mem::size_of::<SubMap>() <= 16);
}

#[test]
fn few_subscriptions_keep_their_order_through_replace_and_remove() {
    let mut m = SubMap::new();
    for f in ["a", "b", "c", "d"] {
        m.insert(f.into(), sub(QoS::AtMostOnce));
    }
    // Replacing keeps the entry's place and its options change.
    m.insert("b".into(), sub(QoS::ExactlyOnce));
    assert_eq!(filters(&m), ["a", "b", "c", "d"]);
    assert_eq!(m.get("b").map(|s| s.options.qos), Some(QoS::ExactlyOnce));
    let (removed, _) = m.remove_entry("b").expect("present");
    assert_eq!(removed.as_str(), "b");
    assert!(m.remove_entry("b").is_none());
    assert_eq!(filters(&m), ["a", "c", "d"]);
    assert_eq!(m.len(), 3);
    assert!(matches!(&m, SubMap::Few(v) if v.len() == 3));
    let taken = m.take_filters();
    assert_eq!(
        taken.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        ["a", "c", "d"]
    );
    assert_eq!(m.len(), 0);
}

#[test]
fn the_ninth_subscription_moves_the_map_to_a_hash_map() {
    let mut m = SubMap::new();
    let names: Vec<String> = (0..=SubMap::FEW).map(|i| format!("t/{i}")).collect();
    for f in &names[..SubMap::FEW] {
        m.insert(f.as_str().into(), sub(QoS::AtLeastOnce));
    }
    assert!(matches!(&m, SubMap::Few(v) if v.len() == SubMap::FEW));
    m.insert(names[SubMap::FEW].as_str().into(), sub(QoS::AtLeastOnce));
    assert!(matches!(&m, SubMap::Many(_)));
    assert_eq!(m.len(), SubMap::FEW + 1);
    for f in &names {
        assert!(m.contains_key(f), "{f}");
    }
    let mut taken: Vec<String> = m.take_filters().iter().map(|f| f.to_string()).collect();
    taken.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(taken, expected);
    assert!(matches!(&m, SubMap::Few(v) if v.is_empty()));
}
