//! [`RetainedStore`]: retained messages keyed by topic name, looked up by topic filter.
//!
//! This is the reverse of the subscription problem: the stored keys are topic names and the
//! query is a filter. A trie of topic levels answers it by walking only the branches the filter
//! allows: a literal level follows one child, `+` follows every child, `#` takes a whole
//! subtree.

use ahash::AHashMap;
use smallvec::SmallVec;

use crate::topic::{has_wildcards, split_level};
use crate::trie::{get_or_insert_with, shrink_sparse};

/// Retained messages (or any `T`) keyed by exact topic name.
///
/// Topics must be valid topic names ([`validate_topic_name`](crate::topic::validate_topic_name));
/// filters passed to [`for_each_match`](Self::for_each_match) valid topic filters. Matching
/// follows [`filter_matches`](crate::topic::filter_matches), including the `$` rule.
///
/// Nesting depth, and so the depth of the recursion in [`remove`](Self::remove) and
/// [`retain`](Self::retain), is bounded by the number of levels of the longest stored topic:
/// validate topics with a level limit.
#[derive(Debug, Clone)]
pub struct RetainedStore<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    /// Next levels; `None` rather than an empty map.
    children: Option<Box<AHashMap<Box<str>, Node<T>>>>,
    /// The value stored for the topic whose levels end at this node.
    value: Option<T>,
}

impl<T> Node<T> {
    const fn new() -> Self {
        Node {
            children: None,
            value: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_none() && self.value.is_none()
    }

    fn child(&self, level: &str) -> Option<&Node<T>> {
        self.children.as_ref()?.get(level)
    }

    /// Drops the child `level` if it is empty, and the map if that leaves it empty.
    fn prune_child(&mut self, level: &str) {
        if let Some(children) = self.children.as_mut() {
            if children.get(level).is_some_and(Node::is_empty) {
                children.remove(level);
            }
            if children.is_empty() {
                self.children = None;
            } else {
                shrink_sparse(children);
            }
        }
    }

    /// Takes the value at `levels` below this node and prunes the nodes left empty.
    fn remove(&mut self, levels: Option<&str>) -> Option<T> {
        let Some(levels) = levels else {
            return self.value.take();
        };
        let (level, rest) = split_level(levels);
        let removed = self.children.as_mut()?.get_mut(level)?.remove(rest);
        if removed.is_some() {
            self.prune_child(level);
        }
        removed
    }

    /// Keeps the values below this node for which `keep` is true, prunes the nodes left empty
    /// and returns how many values it dropped. `path` holds this node's topic on entry and on
    /// return (empty for the root, `is_root`).
    fn retain(
        &mut self,
        path: &mut String,
        is_root: bool,
        keep: &mut impl FnMut(&str, &mut T) -> bool,
    ) -> usize {
        let mut dropped = 0;
        if let Some(value) = self.value.as_mut() {
            if !keep(path, value) {
                self.value = None;
                dropped += 1;
            }
        }
        if let Some(children) = self.children.as_mut() {
            let parent_len = path.len();
            children.retain(|level, child| {
                // The root's children start the topic; deeper ones follow a '/'.
                if !is_root {
                    path.push('/');
                }
                path.push_str(level);
                dropped += child.retain(path, false, keep);
                path.truncate(parent_len);
                !child.is_empty()
            });
            if children.is_empty() {
                self.children = None;
            } else {
                shrink_sparse(children);
            }
        }
        dropped
    }
}

/// What a pending node of a lookup still has to match.
#[derive(Clone, Copy)]
enum Pending<'f> {
    /// These filter levels below the node (`None`: the filter ends at the node).
    Levels(Option<&'f str>),
    /// The node and everything below it (`#`).
    Subtree,
}

/// The children of one node that a lookup still has to visit, produced lazily so that `+` or
/// `#` on a node with a million children costs no more memory than on a node with one.
enum Candidates<'a, T> {
    /// At most one child (a literal filter level), or none.
    One(Option<(&'a str, &'a Node<T>)>),
    /// Every child; at the root without those starting with `$` (the `$` rule).
    All {
        iter: std::collections::hash_map::Iter<'a, Box<str>, Node<T>>,
        skip_dollar: bool,
    },
}

impl<'a, T> Candidates<'a, T> {
    /// The children of `node` that the first of the filter `levels` selects.
    fn select(node: &'a Node<T>, level: &str, at_root: bool) -> Self {
        let Some(children) = node.children.as_deref() else {
            return Candidates::One(None);
        };
        match level {
            "+" | "#" => Candidates::All {
                iter: children.iter(),
                skip_dollar: at_root,
            },
            _ => Candidates::One(
                children
                    .get_key_value(level)
                    .map(|(level, node)| (&**level, node)),
            ),
        }
    }
}

impl<'a, T> Iterator for Candidates<'a, T> {
    type Item = (&'a str, &'a Node<T>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Candidates::One(one) => one.take(),
            Candidates::All { iter, skip_dollar } => iter
                .find(|(level, _)| !(*skip_dollar && level.starts_with('$')))
                .map(|(level, node)| (&**level, node)),
        }
    }
}

/// One level of a lookup in progress: the children still to visit, where their parent's topic
/// ends in the path buffer (`None`: the parent is the root) and what they have to match.
type Frame<'a, 'f, T> = (Candidates<'a, T>, Option<usize>, Pending<'f>);

/// The frame for the children of `node` that the filter `levels` selects. `here` is where
/// `node`'s topic ends in the path buffer (`None`: the root).
fn frame<'a, 'f, T>(node: &'a Node<T>, here: Option<usize>, levels: &'f str) -> Frame<'a, 'f, T> {
    let (level, rest) = split_level(levels);
    let pending = if level == "#" {
        Pending::Subtree
    } else {
        Pending::Levels(rest)
    };
    (
        Candidates::select(node, level, here.is_none()),
        here,
        pending,
    )
}

impl<T> RetainedStore<T> {
    /// An empty store. Allocates nothing.
    pub fn new() -> Self {
        RetainedStore {
            root: Node::new(),
            len: 0,
        }
    }

    /// Number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` for `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            let children = node.children.get_or_insert_with(Box::default);
            node = get_or_insert_with(children, level, Node::new);
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the value stored for `topic` and frees the nodes left empty.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let removed = self.root.remove(Some(topic));
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value stored for exactly this topic.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.child(level)?;
        }
        node.value.as_ref()
    }

    /// Calls `visit(topic, value)` once for every stored topic that `filter` matches, in no
    /// particular order. Topics starting with `$` are not matched by a filter starting with `+`
    /// or `#`. Uses one `String` buffer for the topics and, for filters of more than 16 levels, a
    /// heap stack; memory does not grow with the number of children a wildcard visits.
    pub fn for_each_match<'a>(&'a self, filter: &str, mut visit: impl FnMut(&str, &'a T)) {
        if !has_wildcards(filter) {
            if let Some(value) = self.get(filter) {
                visit(filter, value);
            }
            return;
        }
        let mut path = String::new();
        let mut stack: SmallVec<[Frame<'a, '_, T>; 16]> = SmallVec::new();
        stack.push(frame(&self.root, None, filter));
        while let Some((candidates, parent_len, pending)) = stack.last_mut() {
            let (parent_len, pending) = (*parent_len, *pending);
            let Some((level, node)) = candidates.next() else {
                stack.pop();
                continue;
            };
            // Frames above this one are exhausted: the buffer ends with the parent's topic.
            match parent_len {
                None => path.clear(),
                Some(len) => {
                    path.truncate(len);
                    path.push('/');
                }
            }
            path.push_str(level);
            let here = Some(path.len());
            match pending {
                Pending::Levels(None) => {
                    if let Some(value) = &node.value {
                        visit(&path, value);
                    }
                }
                Pending::Levels(Some(levels)) => {
                    // `a/#` matches `a` itself.
                    if levels == "#" {
                        if let Some(value) = &node.value {
                            visit(&path, value);
                        }
                    }
                    stack.push(frame(node, here, levels));
                }
                Pending::Subtree => {
                    if let Some(value) = &node.value {
                        visit(&path, value);
                    }
                    stack.push((Candidates::select(node, "#", false), here, Pending::Subtree));
                }
            }
        }
    }

    /// Keeps only the values for which `keep(topic, value)` is true (e.g. drops expired
    /// messages) and frees the nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut T) -> bool) {
        let mut path = String::new();
        self.len -= self.root.retain(&mut path, true, &mut keep);
    }
}

impl<T> Default for RetainedStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::topic::filter_matches;
    use crate::topic::strategies::{filter, topic};

    impl<T> Node<T> {
        fn count(&self) -> usize {
            let children = self.children.iter().flat_map(|c| c.values());
            1 + children.map(Node::count).sum::<usize>()
        }
    }

    fn store_of(topics: &[&str]) -> RetainedStore<String> {
        let mut store = RetainedStore::new();
        for t in topics {
            store.insert(t, t.to_string());
        }
        store
    }

    /// The topics `filter` matches; checks that each visit names its value's topic.
    fn matches(store: &RetainedStore<String>, filter: &str) -> Vec<String> {
        let mut found = Vec::new();
        store.for_each_match(filter, |topic, value| {
            assert_eq!(topic, value);
            found.push(value.clone());
        });
        found.sort();
        found
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        assert_eq!(store.insert("a/b", 1), None);
        assert_eq!(store.insert("a/b", 2), Some(1));
        assert_eq!(store.insert("a", 3), None);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("a/b"), Some(&2));
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.get("b"), None);
        assert_eq!(store.remove("a/b/c"), None);
        assert_eq!(store.remove("a/b"), Some(2));
        assert_eq!(store.remove("a/b"), None);
        assert_eq!(store.len(), 1);
        assert_eq!(store.get("a"), Some(&3));
    }

    #[test]
    fn wildcards_select_stored_topics() {
        let store = store_of(&["a", "a/b", "a/c", "a/b/c", "b/b", "a/"]);
        assert_eq!(matches(&store, "a/+"), ["a/", "a/b", "a/c"]);
        assert_eq!(matches(&store, "+/b"), ["a/b", "b/b"]);
        assert_eq!(matches(&store, "a/#"), ["a", "a/", "a/b", "a/b/c", "a/c"]);
        assert_eq!(matches(&store, "a/b/#"), ["a/b", "a/b/c"]);
        assert_eq!(
            matches(&store, "+/+/#"),
            ["a/", "a/b", "a/b/c", "a/c", "b/b"]
        );
        assert_eq!(matches(&store, "a/b"), ["a/b"]);
        assert!(matches(&store, "a/b/c/d").is_empty());
        assert!(matches(&store, "c/#").is_empty());
        assert_eq!(matches(&store, "#").len(), 6);
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        let store = store_of(&["$SYS/uptime", "$SYS", "$", "a/$b"]);
        assert_eq!(matches(&store, "#"), ["a/$b"]);
        assert!(matches(&store, "+").is_empty());
        assert!(matches(&store, "+/uptime").is_empty());
        assert_eq!(matches(&store, "$SYS/#"), ["$SYS", "$SYS/uptime"]);
        assert_eq!(matches(&store, "$SYS/+"), ["$SYS/uptime"]);
        assert_eq!(matches(&store, "a/+"), ["a/$b"]);
    }

    #[test]
    fn empty_levels_and_slash_topics() {
        let store = store_of(&["/", "//", "/a", "a//b"]);
        assert_eq!(matches(&store, "+/+"), ["/", "/a"]);
        assert_eq!(matches(&store, "/+"), ["/", "/a"]);
        assert_eq!(matches(&store, "/#"), ["/", "//", "/a"]);
        assert_eq!(matches(&store, "a/+/b"), ["a//b"]);
        assert_eq!(matches(&store, "+"), Vec::<String>::new());
        assert_eq!(matches(&store, "/"), ["/"]);
    }

    #[test]
    fn removal_and_retain_prune_nodes() {
        let topics = ["a/b/c", "a/b", "a/x/y/z", "/", "$SYS/q"];
        let mut store = store_of(&topics);
        assert_eq!(store.remove("a/b").as_deref(), Some("a/b"));
        assert_eq!(matches(&store, "a/#"), ["a/b/c", "a/x/y/z"]);
        store.retain(|topic, value| {
            assert_eq!(topic, value);
            topic.starts_with('a')
        });
        assert_eq!(store.len(), 2);
        assert_eq!(matches(&store, "#"), ["a/b/c", "a/x/y/z"]);
        assert_eq!(store.root.count(), 1 + 6);
        store.retain(|_, value| {
            value.push('!');
            value.ends_with("c!")
        });
        assert_eq!(store.get("a/b/c").map(String::as_str), Some("a/b/c!"));
        assert_eq!(store.root.count(), 1 + 3);
        store.remove("a/b/c");
        assert!(store.is_empty());
        assert!(store.root.is_empty());
    }

    #[test]
    fn deep_topics_spill_the_match_stack() {
        let topic = vec!["x"; 40].join("/");
        let store = store_of(&[&topic]);
        assert_eq!(matches(&store, &vec!["+"; 40].join("/")), [topic.as_str()]);
        assert_eq!(matches(&store, "x/#"), [topic.as_str()]);
    }

    proptest! {
        #[test]
        fn matches_like_the_reference(
            topics in prop::collection::vec(topic(), 0..40),
            filters in prop::collection::vec(filter(), 1..20),
        ) {
            let mut store = RetainedStore::new();
            for t in &topics {
                store.insert(t, t.clone());
            }
            for f in &filters {
                let mut expected: Vec<String> =
                    topics.iter().filter(|t| filter_matches(f, t)).cloned().collect();
                expected.sort();
                expected.dedup();
                prop_assert_eq!(matches(&store, f), expected, "filter {}", f);
            }
        }

        #[test]
        fn insert_remove_retain_follow_a_map(
            pool in prop::collection::vec(topic(), 1..8),
            ops in prop::collection::vec((0..4u8, any::<prop::sample::Index>()), 0..100),
        ) {
            let mut store = RetainedStore::new();
            let mut model: BTreeMap<String, usize> = BTreeMap::new();
            for (n, (op, i)) in ops.iter().enumerate() {
                let t = i.get(&pool);
                match op {
                    0 => prop_assert_eq!(store.remove(t), model.remove(t)),
                    1 => {
                        // Drop what topic `t` holds and every value older than 20 operations.
                        let keep = |topic: &str, v: &mut usize| topic != t.as_str() && *v + 20 > n;
                        store.retain(keep);
                        model.retain(|topic, v| keep(topic.as_str(), v));
                    }
                    _ => prop_assert_eq!(store.insert(t, n), model.insert(t.clone(), n)),
                }
                prop_assert_eq!(store.len(), model.len());
                prop_assert_eq!(store.get(t), model.get(t));
            }
            let mut all = BTreeMap::new();
            store.for_each_match("#", |t, v| { all.insert(t.to_owned(), *v); });
            for (t, v) in &model {
                if !t.starts_with('$') {
                    prop_assert_eq!(all.remove(t), Some(*v));
                }
            }
            prop_assert!(all.is_empty());
            for t in model.keys() {
                prop_assert!(store.remove(t).is_some());
            }
            prop_assert!(store.is_empty());
            prop_assert!(store.root.is_empty());
        }
    }
}
