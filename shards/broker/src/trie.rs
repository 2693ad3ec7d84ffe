//! [`SubscriptionTrie`]: topic filter → the caller's per-filter value, matched by topic name.
//!
//! Filters without wildcards (most of them in practice) live in one hash map and cost one
//! lookup per publish. Wildcard filters live in a trie of levels: each node has its literal
//! children in a hash map, a dedicated `+` child and a slot for the filter that ends in `#` at
//! that node. A node keeps its children map behind an `Option<Box<…>>` so that a leaf costs no
//! map at all.

use ahash::AHashMap;
use smallvec::SmallVec;

use crate::topic::{has_wildcards, split_level};

/// A map from topic filter to a value `V`, matched by topic name.
///
/// `V` is the caller's per-filter set: which sessions of this shard subscribe, or which shards
/// or nodes have subscribers. Filters must be valid
/// ([`validate_topic_filter`](crate::topic::validate_topic_filter)); the trie never panics on an
/// invalid one, but what it then matches is unspecified. Matching follows
/// [`filter_matches`](crate::topic::filter_matches), including the `$` rule.
///
/// Nesting depth, and so the depth of the recursion in [`remove`](Self::remove), is bounded by
/// the number of levels of the longest stored filter: validate filters with a level limit.
#[derive(Debug, Clone)]
pub struct SubscriptionTrie<V> {
    /// Filters without wildcards, keyed by the filter itself.
    exact: AHashMap<Box<str>, V>,
    /// Filters with wildcards.
    root: Node<V>,
    /// Number of values stored in the `root` trie.
    wildcard_len: usize,
}

type Children<V> = AHashMap<Box<str>, Node<V>>;

#[derive(Debug, Clone)]
struct Node<V> {
    /// Literal next levels; `None` rather than an empty map.
    children: Option<Box<Children<V>>>,
    /// The `+` next level.
    plus: Option<Box<Node<V>>>,
    /// The filter whose levels end at this node.
    value: Option<V>,
    /// The filter made of this node's levels followed by `/#` (`#` alone at the root).
    hash: Option<V>,
}

/// Which value slot of a node a filter names.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Value,
    Hash,
}

/// Splits a wildcard filter into the levels leading to its node (`None`: the root) and the slot
/// it occupies there: `a/+/#` → (`Some("a/+")`, `Hash`), `#` → (`None`, `Hash`).
fn node_path(filter: &str) -> (Option<&str>, Slot) {
    if filter == "#" {
        (None, Slot::Hash)
    } else if let Some(parent) = filter.strip_suffix("/#") {
        (Some(parent), Slot::Hash)
    } else {
        (Some(filter), Slot::Value)
    }
}

impl<V> Node<V> {
    const fn new() -> Self {
        Node {
            children: None,
            plus: None,
            value: None,
            hash: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_none()
            && self.plus.is_none()
            && self.value.is_none()
            && self.hash.is_none()
    }

    fn literal(&self, level: &str) -> Option<&Node<V>> {
        self.children.as_ref()?.get(level)
    }

    /// The child for one filter level (`+` is the wildcard child).
    fn child(&self, level: &str) -> Option<&Node<V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.literal(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.as_mut()?.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<V> {
        if level == "+" {
            return self.plus.get_or_insert_with(|| Box::new(Node::new()));
        }
        let children = self.children.get_or_insert_with(Box::default);
        get_or_insert_with(children, level, Node::new)
    }

    fn slot(&self, slot: Slot) -> &Option<V> {
        match slot {
            Slot::Value => &self.value,
            Slot::Hash => &self.hash,
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<V> {
        match slot {
            Slot::Value => &mut self.value,
            Slot::Hash => &mut self.hash,
        }
    }

    /// Takes the value at `levels`/`slot` below this node and prunes the nodes left empty.
    /// Recursion depth is bounded by the trie's depth.
    fn remove(&mut self, levels: Option<&str>, slot: Slot) -> Option<V> {
        let Some(levels) = levels else {
            return self.slot_mut(slot).take();
        };
        let (level, rest) = split_level(levels);
        let child = self.child_mut(level)?;
        let removed = child.remove(rest, slot);
        if removed.is_some() && child.is_empty() {
            if level == "+" {
                self.plus = None;
            } else if let Some(children) = self.children.as_mut() {
                children.remove(level);
                if children.is_empty() {
                    self.children = None;
                } else {
                    shrink_sparse(children);
                }
            }
        }
        removed
    }

    /// One matching step at this node with topic levels `levels` still to match: visits the
    /// `#` value and pushes the children that match the next level. `skip_wildcards` applies
    /// the `$` rule at the root.
    fn step<'a, 't>(
        &'a self,
        levels: &'t str,
        skip_wildcards: bool,
        stack: &mut MatchStack<'a, 't, V>,
        visit: &mut impl FnMut(&'a V),
    ) {
        let (level, rest) = split_level(levels);
        if !skip_wildcards {
            if let Some(v) = &self.hash {
                visit(v);
            }
            if let Some(plus) = &self.plus {
                stack.push((plus, rest));
            }
        }
        if let Some(child) = self.literal(level) {
            stack.push((child, rest));
        }
    }
}

/// Gives memory back after a removal once `map` is at most a quarter full, so that a burst of
/// subscriptions does not pin a large table forever. Halving the capacity at a quarter keeps
/// the cost amortised O(1) per removal.
pub(crate) fn shrink_sparse<K: Eq + std::hash::Hash, V>(map: &mut AHashMap<K, V>) {
    let len = map.len();
    if len * 4 <= map.capacity() {
        map.shrink_to(len * 2);
    }
}

/// The value for `key`, inserting `f()` first if there is none; allocates the boxed key only
/// when it inserts.
pub(crate) fn get_or_insert_with<'m, V>(
    map: &'m mut AHashMap<Box<str>, V>,
    key: &str,
    f: impl FnOnce() -> V,
) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.into(), f());
    }
    match map.get_mut(key) {
        Some(value) => value,
        None => unreachable!("value inserted above"),
    }
}

/// Pending (node, topic levels still to match) pairs of a match. The depth of a match is
/// bounded by the trie's depth and each step pops one entry and pushes at most two, so this
/// stays on the stack for filters of up to about 30 levels.
type MatchStack<'a, 't, V> = SmallVec<[(&'a Node<V>, Option<&'t str>); 32]>;

impl<V> SubscriptionTrie<V> {
    /// An empty trie. Allocates nothing.
    pub fn new() -> Self {
        SubscriptionTrie {
            exact: AHashMap::new(),
            root: Node::new(),
            wildcard_len: 0,
        }
    }

    /// Number of filters holding a value.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard_len
    }

    /// Whether no filter holds a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn node(&self, levels: Option<&str>) -> Option<&Node<V>> {
        let mut node = &self.root;
        for level in levels.into_iter().flat_map(|l| l.split('/')) {
            node = node.child(level)?;
        }
        Some(node)
    }

    fn node_mut(&mut self, levels: Option<&str>) -> Option<&mut Node<V>> {
        let mut node = &mut self.root;
        for level in levels.into_iter().flat_map(|l| l.split('/')) {
            node = node.child_mut(level)?;
        }
        Some(node)
    }

    /// The value stored for exactly this filter.
    pub fn get(&self, filter: &str) -> Option<&V> {
        if !has_wildcards(filter) {
            return self.exact.get(filter);
        }
        let (levels, slot) = node_path(filter);
        self.node(levels)?.slot(slot).as_ref()
    }

    /// The value stored for exactly this filter, mutably.
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        if !has_wildcards(filter) {
            return self.exact.get_mut(filter);
        }
        let (levels, slot) = node_path(filter);
        self.node_mut(levels)?.slot_mut(slot).as_mut()
    }

    /// The value stored for `filter`, inserting `f()` first if there is none.
    pub fn entry_or_insert_with(&mut self, filter: &str, f: impl FnOnce() -> V) -> &mut V {
        if !has_wildcards(filter) {
            return get_or_insert_with(&mut self.exact, filter, f);
        }
        let (levels, slot) = node_path(filter);
        let mut node = &mut self.root;
        for level in levels.into_iter().flat_map(|l| l.split('/')) {
            node = node.child_or_insert(level);
        }
        let value = node.slot_mut(slot);
        if value.is_none() {
            self.wildcard_len += 1;
        }
        value.get_or_insert_with(f)
    }

    /// Removes the value stored for `filter` and frees the trie nodes left empty.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        if !has_wildcards(filter) {
            let removed = self.exact.remove(filter);
            shrink_sparse(&mut self.exact);
            return removed;
        }
        let (levels, slot) = node_path(filter);
        let removed = self.root.remove(levels, slot);
        if removed.is_some() {
            self.wildcard_len -= 1;
        }
        removed
    }

    /// Calls `visit(value)` once for every stored filter matching `topic`, a topic name (no
    /// wildcards), in no particular order. Allocates nothing unless the trie is more than 32
    /// levels deep.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a V)) {
        if let Some(v) = self.exact.get(topic) {
            visit(v);
        }
        if self.wildcard_len == 0 {
            return;
        }
        let mut stack = MatchStack::new();
        self.root
            .step(topic, topic.starts_with('$'), &mut stack, &mut visit);
        while let Some((node, levels)) = stack.pop() {
            match levels {
                Some(levels) => node.step(levels, false, &mut stack, &mut visit),
                None => {
                    // All topic levels matched: the filter ending here matches, and so does
                    // the one ending in `/#` here (`a/#` matches `a`).
                    if let Some(v) = &node.value {
                        visit(v);
                    }
                    if let Some(v) = &node.hash {
                        visit(v);
                    }
                }
            }
        }
    }

    /// Every stored (filter, value) pair, in no particular order. Builds one `String` per
    /// filter; meant for snapshots and handover, not for the message path.
    pub fn iter(&self) -> impl Iterator<Item = (String, &V)> {
        Iter {
            exact: self.exact.iter(),
            stack: vec![(&self.root, None)],
            pending: None,
        }
    }
}

impl<V> Default for SubscriptionTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// The iterator behind [`SubscriptionTrie::iter`]: the exact map first, then a depth-first walk
/// of the trie with each pending node's filter prefix (`None`: the root).
struct Iter<'a, V> {
    exact: std::collections::hash_map::Iter<'a, Box<str>, V>,
    stack: Vec<(&'a Node<V>, Option<String>)>,
    /// A node's `#` value, yielded after its plain value.
    pending: Option<(String, &'a V)>,
}

/// `prefix/level`, or `level` at the root.
fn join(prefix: Option<&str>, level: &str) -> String {
    match prefix {
        None => level.to_owned(),
        Some(prefix) => [prefix, level].join("/"),
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (String, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((filter, v)) = self.exact.next() {
            return Some((filter.to_string(), v));
        }
        loop {
            if let Some(item) = self.pending.take() {
                return Some(item);
            }
            let (node, path) = self.stack.pop()?;
            let prefix = path.as_deref();
            if let Some(children) = &node.children {
                for (level, child) in children.iter() {
                    self.stack.push((child, Some(join(prefix, level))));
                }
            }
            if let Some(plus) = &node.plus {
                self.stack.push((plus, Some(join(prefix, "+"))));
            }
            if let Some(v) = &node.hash {
                self.pending = Some((join(prefix, "#"), v));
            }
            // The root never holds a plain value: a filter always has at least one level.
            if let (Some(v), Some(path)) = (&node.value, path) {
                return Some((path, v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::topic::strategies::{filter, topic};
    use crate::topic::{filter_matches, validate_topic_filter, validate_topic_name};

    impl<V> Node<V> {
        fn count(&self) -> usize {
            let children = self.children.iter().flat_map(|c| c.values());
            1 + children.map(Node::count).sum::<usize>()
                + self.plus.as_ref().map_or(0, |p| p.count())
        }
    }

    impl<V> SubscriptionTrie<V> {
        /// Trie nodes below the root.
        fn node_count(&self) -> usize {
            self.root.count() - 1
        }
    }

    fn trie_of(filters: &[&str]) -> SubscriptionTrie<String> {
        let mut trie = SubscriptionTrie::new();
        for f in filters {
            trie.entry_or_insert_with(f, || f.to_string());
        }
        trie
    }

    fn matches(trie: &SubscriptionTrie<String>, topic: &str) -> Vec<String> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |f| found.push(f.clone()));
        found.sort();
        found
    }

    #[test]
    fn plus_matches_one_level() {
        let trie = trie_of(&["a/+", "+/b", "+", "a/+/c"]);
        assert_eq!(matches(&trie, "a/b"), ["+/b", "a/+"]);
        assert_eq!(matches(&trie, "a"), ["+"]);
        assert_eq!(matches(&trie, "a/x/c"), ["a/+/c"]);
        assert!(matches(&trie, "a/x/c/d").is_empty());
    }

    #[test]
    fn hash_matches_subtree_and_parent() {
        let trie = trie_of(&["#", "a/#", "a/b/#", "+/#"]);
        assert_eq!(matches(&trie, "a"), ["#", "+/#", "a/#"]);
        assert_eq!(matches(&trie, "a/b"), ["#", "+/#", "a/#", "a/b/#"]);
        assert_eq!(matches(&trie, "a/b/c/d"), ["#", "+/#", "a/#", "a/b/#"]);
        assert_eq!(matches(&trie, "b"), ["#", "+/#"]);
    }

    #[test]
    fn dollar_topics_skip_root_wildcards() {
        let trie = trie_of(&["#", "+/uptime", "$SYS/#", "$SYS/+", "$SYS/uptime", "+"]);
        assert_eq!(
            matches(&trie, "$SYS/uptime"),
            ["$SYS/#", "$SYS/+", "$SYS/uptime"]
        );
        assert_eq!(matches(&trie, "$SYS"), ["$SYS/#"]);
        assert!(matches(&trie, "$").is_empty());
        assert_eq!(matches(&trie, "a/uptime"), ["#", "+/uptime"]);
        // Only the first level counts.
        assert_eq!(matches(&trie, "a/$SYS"), ["#"]);
    }

    #[test]
    fn empty_levels_are_levels() {
        let trie = trie_of(&["/", "+/+", "/+", "+", "a//b", "a/+/b", "/#"]);
        assert_eq!(matches(&trie, "/"), ["+/+", "/", "/#", "/+"]);
        assert_eq!(matches(&trie, "/a"), ["+/+", "/#", "/+"]);
        assert_eq!(matches(&trie, "a//b"), ["a/+/b", "a//b"]);
        assert_eq!(matches(&trie, "a/"), ["+/+"]);
        assert_eq!(matches(&trie, "a"), ["+"]);
    }

    #[test]
    fn exact_and_wildcard_filters_mix() {
        let trie = trie_of(&["a/b", "a/+", "a/b/c", "#"]);
        assert_eq!(matches(&trie, "a/b"), ["#", "a/+", "a/b"]);
        assert_eq!(matches(&trie, "a/b/c"), ["#", "a/b/c"]);
        assert_eq!(trie.len(), 4);
        assert_eq!(trie.get("a/b").map(String::as_str), Some("a/b"));
        assert_eq!(trie.get("a/+").map(String::as_str), Some("a/+"));
        assert_eq!(trie.get("#").map(String::as_str), Some("#"));
        assert_eq!(trie.get("a/#"), None);
        assert_eq!(trie.get("a"), None);
        assert_eq!(trie.get("+"), None);
    }

    #[test]
    fn entry_get_mut_and_iter() {
        let mut trie: SubscriptionTrie<Vec<u32>> = SubscriptionTrie::default();
        assert!(trie.is_empty());
        trie.entry_or_insert_with("a/+", Vec::new).push(1);
        trie.entry_or_insert_with("a/+", || unreachable!()).push(2);
        trie.entry_or_insert_with("a/b", Vec::new).push(3);
        trie.entry_or_insert_with("#", Vec::new).push(4);
        trie.entry_or_insert_with("a/#", Vec::new).push(5);
        trie.entry_or_insert_with("a", Vec::new).push(6);
        assert_eq!(trie.len(), 5);
        if let Some(v) = trie.get_mut("a/#") {
            v.push(7);
        }
        assert_eq!(trie.get_mut("b/#"), None);
        let all: BTreeMap<String, Vec<u32>> = trie.iter().map(|(f, v)| (f, v.clone())).collect();
        let expected: BTreeMap<String, Vec<u32>> = [
            ("#", vec![4]),
            ("a", vec![6]),
            ("a/#", vec![5, 7]),
            ("a/+", vec![1, 2]),
            ("a/b", vec![3]),
        ]
        .into_iter()
        .map(|(f, v)| (f.to_owned(), v))
        .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn removal_prunes_nodes() {
        let filters = ["a/+/c/#", "a/+/c", "a/+", "+/+/+", "#", "/#", "a/b"];
        let mut trie = trie_of(&filters);
        assert_eq!(trie.len(), filters.len());
        assert!(trie.node_count() > 0);
        assert_eq!(trie.remove("a/+/c/d"), None);
        assert_eq!(trie.remove("x/#"), None);
        assert_eq!(trie.remove("a/+/c").as_deref(), Some("a/+/c"));
        // "a/+/c/#" still needs the nodes a, +, c.
        assert_eq!(matches(&trie, "a/x/c"), ["#", "+/+/+", "a/+/c/#"]);
        for f in filters {
            trie.remove(f);
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 0);
        assert!(trie.root.is_empty());
        assert_eq!(trie.exact.capacity(), 0);
        assert!(matches(&trie, "a/x/c").is_empty());
    }

    #[test]
    fn deep_filters_spill_the_match_stack() {
        let filter = vec!["+"; 40].join("/");
        let topic = vec!["x"; 40].join("/");
        let deep_hash = format!("{}/#", vec!["x"; 39].join("/"));
        let trie = trie_of(&[&filter, &deep_hash]);
        assert_eq!(matches(&trie, &topic), [filter.clone(), deep_hash.clone()]);
    }

    proptest! {
        #[test]
        fn matches_like_the_reference(
            filters in prop::collection::vec(filter(), 0..40),
            topics in prop::collection::vec(topic(), 1..20),
        ) {
            let mut trie = SubscriptionTrie::new();
            for f in &filters {
                prop_assert_eq!(validate_topic_filter(f, 8), Ok(()));
                trie.entry_or_insert_with(f, || f.clone());
            }
            for t in &topics {
                prop_assert_eq!(validate_topic_name(t, 8), Ok(()));
                let mut expected: Vec<String> =
                    filters.iter().filter(|f| filter_matches(f, t)).cloned().collect();
                expected.sort();
                expected.dedup();
                prop_assert_eq!(matches(&trie, t), expected, "topic {}", t);
            }
        }

        #[test]
        fn insert_remove_follow_a_map(
            pool in prop::collection::vec(filter(), 1..8),
            ops in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 0..100),
        ) {
            let mut trie = SubscriptionTrie::new();
            let mut model = BTreeMap::new();
            for (insert, i) in &ops {
                let f = i.get(&pool);
                if *insert {
                    *trie.entry_or_insert_with(f, || 0u32) += 1;
                    *model.entry(f.clone()).or_insert(0u32) += 1;
                } else {
                    prop_assert_eq!(trie.remove(f), model.remove(f));
                }
                prop_assert_eq!(trie.len(), model.len());
                prop_assert_eq!(trie.get(f), model.get(f));
            }
            let all: BTreeMap<String, u32> = trie.iter().map(|(f, v)| (f, *v)).collect();
            prop_assert_eq!(&all, &model);
            for f in model.keys() {
                prop_assert!(trie.remove(f).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert_eq!(trie.node_count(), 0);
        }
    }
}
