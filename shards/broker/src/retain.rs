//! [`RetainedStore`]: retained messages keyed by topic name, looked up by topic filter.
//!
//! This is the reverse of the subscription problem: the stored keys are topic names and the
//! query is a filter. A trie of topic levels answers it by walking only the branches the filter
//! allows: a literal level follows one child, `+` follows every child, `#` takes a whole
//! subtree.
//!
//! Each node keeps its children in level order (byte order of the level strings), so that a
//! walk visits topics in one fixed order and can seek to any point of it (see `Children`).

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

use smallvec::SmallVec;

use crate::topic::{has_wildcards, split_level};

/// Most children a node keeps in a sorted slice; one more turns the slice into a `BTreeMap`.
const FEW_CHILDREN_MAX: usize = 16;
/// A `BTreeMap` of children that shrinks to this many turns back into a slice. Below
/// [`FEW_CHILDREN_MAX`] so that one insert and one remove at the boundary do not convert back
/// and forth.
const MANY_CHILDREN_MIN: usize = FEW_CHILDREN_MAX / 2;
const _: () = assert!(MANY_CHILDREN_MIN < FEW_CHILDREN_MAX);

/// The least level after every level that starts with `$`: those are exactly the levels in
/// `"$"..AFTER_DOLLAR`, so a walk skips all of them with one seek.
const AFTER_DOLLAR: &str = "%";
const _: () = assert!(AFTER_DOLLAR.as_bytes()[0] == b'$' + 1 && AFTER_DOLLAR.len() == 1);

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
    /// Next levels; `None` rather than no children.
    children: Option<Box<Children<T>>>,
    /// The value stored for the topic whose levels end at this node.
    value: Option<T>,
}

/// One child of a node: its level and its node.
type Entry<T> = (Box<str>, Node<T>);

/// The next levels of a node (at least one), in level order: byte order of the level strings.
///
/// The order is what lets a walk stop after any node and later seek to the node after it in
/// O(log n) per level, whatever was inserted or removed meanwhile. Most nodes of a topic tree
/// have one child or a few, and a few (`device/<id>`) have millions, so there are two forms:
///
/// - up to [`FEW_CHILDREN_MAX`] children: one exactly sized slice sorted by level. Lookup is a
///   binary search (at most 5 comparisons); insert and remove move at most 16 entries and
///   reallocate the slice.
/// - more: a `BTreeMap`, O(log n) comparisons per lookup.
///
/// Cost, for `T` a pointer (`Arc<Message>`): an entry is 32 bytes (16 for the boxed level, 16
/// for the node). A node with children pays its boxed `Children` (32 bytes) and, in the slice
/// form, 32 bytes per child, nothing more: 64 bytes for the common single child, against about
/// 210 bytes for the smallest `AHashMap` (its 64-byte boxed header and a 4-bucket table) used
/// before. In the map form a B-tree leaf of 11 entries takes 368 bytes and is at least half full
/// (bulk-built ones, from a slice that outgrew itself, are full): 33 to 74 bytes per child,
/// about what the hash table took at its load factor of 7/16 to 7/8 (37 to 75). The boxed
/// level strings are unchanged.
///
/// Measured against the hash maps (1M topics, release build, counting allocator; bytes per
/// topic including the level strings): `site/<1000>/dev/<1000>/temp` 287 → 130,
/// `c<200k>/b/c/d/e` 902 → 325, ten levels of fan-out 4 115 → 56, one level of 1M random ids
/// 85 → 67 (inserted in random order) or 80 (in order). Lookups and inserts cost the same or
/// less (fewer, smaller allocations to touch) except on a very wide level: with 1M random
/// ids under one node, `get` goes from about 0.5 to 1.9 µs and `insert` from about 1 to 2 µs,
/// the B-tree's cache misses; a full `#` walk got 2 to 6 times faster.
#[derive(Debug, Clone)]
enum Children<T> {
    /// 1 to [`FEW_CHILDREN_MAX`] children, sorted by level, exactly sized.
    Few(Box<[Entry<T>]>),
    /// More than [`MANY_CHILDREN_MIN`] children.
    Many(BTreeMap<Box<str>, Node<T>>),
}

/// Where `level` is, or would go, among sorted `entries`.
fn search<T>(entries: &[Entry<T>], level: &str) -> Result<usize, usize> {
    entries.binary_search_by(|(key, _)| (**key).cmp(level))
}

impl<T> Children<T> {
    /// No children yet: an empty slice, which allocates nothing. Kept only while the first
    /// child is inserted; a node with no children has `children: None`.
    fn empty() -> Box<Self> {
        Box::new(Children::Few(Box::default()))
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Few(entries) => entries.is_empty(),
            Children::Many(map) => map.is_empty(),
        }
    }

    /// The child `level`, with the level as stored.
    fn get(&self, level: &str) -> Option<(&str, &Node<T>)> {
        match self {
            Children::Few(entries) => {
                let (key, node) = &entries[search(entries, level).ok()?];
                Some((key, node))
            }
            Children::Many(map) => map.get_key_value(level).map(|(key, node)| (&**key, node)),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match self {
            Children::Few(entries) => Some(&mut entries[search(entries, level).ok()?].1),
            Children::Many(map) => map.get_mut(level),
        }
    }

    /// The child `level`, inserting an empty node first if there is none; allocates the boxed
    /// level only when it inserts.
    fn get_or_insert(&mut self, level: &str) -> &mut Node<T> {
        if let Children::Few(entries) = self {
            if entries.len() >= FEW_CHILDREN_MAX && search(entries, level).is_err() {
                let map = std::mem::take(entries).into_vec().into_iter().collect();
                *self = Children::Many(map);
            }
        }
        match self {
            Children::Few(entries) => {
                let at = match search(entries, level) {
                    Ok(at) => at,
                    Err(at) => {
                        let mut grown = std::mem::take(entries).into_vec();
                        grown.reserve_exact(1);
                        grown.insert(at, (level.into(), Node::new()));
                        *entries = grown.into_boxed_slice();
                        at
                    }
                };
                &mut entries[at].1
            }
            Children::Many(map) => {
                if !map.contains_key(level) {
                    map.insert(level.into(), Node::new());
                }
                match map.get_mut(level) {
                    Some(node) => node,
                    None => unreachable!("child inserted above"),
                }
            }
        }
    }

    /// Drops the child `level` if it is empty.
    fn remove_empty(&mut self, level: &str) {
        match self {
            Children::Few(entries) => {
                if let Ok(at) = search(entries, level) {
                    if entries[at].1.is_empty() {
                        let mut shrunk = std::mem::take(entries).into_vec();
                        shrunk.remove(at);
                        *entries = shrunk.into_boxed_slice();
                    }
                }
            }
            Children::Many(map) => {
                if map.get(level).is_some_and(Node::is_empty) {
                    map.remove(level);
                }
                self.shrink();
            }
        }
    }

    /// Keeps the children for which `keep(level, child)` is true, in level order.
    fn retain(&mut self, mut keep: impl FnMut(&str, &mut Node<T>) -> bool) {
        match self {
            Children::Few(entries) => {
                let mut kept = std::mem::take(entries).into_vec();
                kept.retain_mut(|(level, child)| keep(level, child));
                // Reallocates only if some were dropped.
                *entries = kept.into_boxed_slice();
            }
            Children::Many(map) => {
                map.retain(|level, child| keep(level, child));
                self.shrink();
            }
        }
    }

    /// Turns a map that has become small back into a slice.
    fn shrink(&mut self) {
        if let Children::Many(map) = self {
            if map.len() <= MANY_CHILDREN_MIN {
                *self = Children::Few(std::mem::take(map).into_iter().collect());
            }
        }
    }

    /// The children whose level is above `lower`, in level order.
    fn iter_from(&self, lower: Bound<&str>) -> ChildIter<'_, T> {
        match self {
            Children::Few(entries) => {
                let start = match lower {
                    Bound::Unbounded => 0,
                    Bound::Included(level) => entries.partition_point(|(key, _)| **key < *level),
                    Bound::Excluded(level) => entries.partition_point(|(key, _)| **key <= *level),
                };
                ChildIter::Few(entries.get(start..).unwrap_or_default().iter())
            }
            Children::Many(map) => ChildIter::Many(map.range::<str, _>((lower, Bound::Unbounded))),
        }
    }

    /// Every child node, in level order.
    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Node<T>> {
        self.iter_from(Bound::Unbounded).map(|(_, node)| node)
    }
}

/// Children of one node in level order, from some level on.
enum ChildIter<'a, T> {
    Few(std::slice::Iter<'a, Entry<T>>),
    Many(btree_map::Range<'a, Box<str>, Node<T>>),
}

impl<'a, T> Iterator for ChildIter<'a, T> {
    type Item = (&'a str, &'a Node<T>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ChildIter::Few(iter) => iter.next().map(|(level, node)| (&**level, node)),
            ChildIter::Many(iter) => iter.next().map(|(level, node)| (&**level, node)),
        }
    }
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
        Some(self.children.as_ref()?.get(level)?.1)
    }

    /// Drops the child `level` if it is empty, and the children if that leaves none.
    fn prune_child(&mut self, level: &str) {
        if let Some(children) = self.children.as_mut() {
            children.remove_empty(level);
            if children.is_empty() {
                self.children = None;
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
    /// Every child in level order; at the root without those starting with `$` (the `$`
    /// rule), skipped with one seek.
    All {
        children: &'a Children<T>,
        iter: ChildIter<'a, T>,
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
                children,
                iter: children.iter_from(Bound::Unbounded),
                skip_dollar: at_root,
            },
            _ => Candidates::One(children.get(level)),
        }
    }
}

impl<'a, T> Iterator for Candidates<'a, T> {
    type Item = (&'a str, &'a Node<T>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Candidates::One(one) => one.take(),
            Candidates::All {
                children,
                iter,
                skip_dollar,
            } => loop {
                let (level, node) = iter.next()?;
                if *skip_dollar && level.starts_with('$') {
                    *iter = children.iter_from(Bound::Included(AFTER_DOLLAR));
                    *skip_dollar = false;
                    continue;
                }
                return Some((level, node));
            },
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
            let children = node.children.get_or_insert_with(Children::empty);
            node = children.get_or_insert(level);
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

    /// How the children of the node at `topic` are held: `Some(true)` for the map form.
    fn is_map(store: &RetainedStore<String>, topic: &str) -> Option<bool> {
        let mut node = &store.root;
        for level in topic.split('/') {
            node = node.child(level)?;
        }
        Some(matches!(**node.children.as_ref()?, Children::Many(_)))
    }

    #[test]
    fn wide_levels_move_between_slice_and_map() {
        let mut store = RetainedStore::new();
        // Inserted out of order, so that the slice has to keep itself sorted.
        let topic = |i: usize| format!("w/{:02}", (i * 7) % 40);
        for i in 0..FEW_CHILDREN_MAX {
            store.insert(&topic(i), topic(i));
        }
        assert_eq!(is_map(&store, "w"), Some(false));
        store.insert("w/16/x", "w/16/x".to_owned());
        assert_eq!(
            is_map(&store, "w"),
            Some(false),
            "an existing level converts nothing"
        );
        for i in FEW_CHILDREN_MAX..40 {
            store.insert(&topic(i), topic(i));
        }
        assert_eq!(is_map(&store, "w"), Some(true));
        assert_eq!(store.len(), 41);
        let all: Vec<String> = (0..40).map(|i| format!("w/{i:02}")).collect();
        assert_eq!(matches(&store, "w/+"), all);
        for i in 0..40 {
            assert_eq!(store.get(&topic(i)), Some(&topic(i)));
        }
        store.remove("w/16/x");
        for i in 0..40 - MANY_CHILDREN_MIN - 1 {
            assert_eq!(store.remove(&topic(i)), Some(topic(i)));
        }
        assert_eq!(is_map(&store, "w"), Some(true));
        store.retain(|t, _| t != topic(39));
        assert_eq!(is_map(&store, "w"), Some(false));
        assert_eq!(store.len(), MANY_CHILDREN_MIN);
        let left: Vec<String> = (40 - MANY_CHILDREN_MIN - 1..39).map(topic).collect();
        for t in &left {
            assert_eq!(store.get(t), Some(t));
        }
        let mut left = left;
        left.sort();
        assert_eq!(matches(&store, "#"), left);
        assert_eq!(store.root.count(), 1 + 1 + MANY_CHILDREN_MIN);
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
