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
/// filters passed to [`for_each_match`](Self::for_each_match) and
/// [`walk_matches`](Self::walk_matches) valid topic filters. Matching follows
/// [`filter_matches`](crate::topic::filter_matches), including the `$` rule.
///
/// Nesting depth, and so the depth of the recursion in [`remove`](Self::remove) and
/// [`retain`](Self::retain), is bounded by the number of levels of the longest stored topic:
/// validate topics with a level limit.
///
/// A shard that must not spend unbounded time in one turn walks in steps:
/// [`walk_matches`](Self::walk_matches) for a wildcard subscription's retained messages,
/// [`walk_all`](Self::walk_all) for a dump of the store. Each step examines a bounded number of
/// nodes and returns a [`WalkCursor`] to go on from in a later turn, while the store changes in
/// between:
///
/// ```
/// use shardmq_broker::retain::RetainedStore;
///
/// let mut store = RetainedStore::new();
/// for i in 0..100 {
///     store.insert(&format!("dev/{i}/temp"), i);
/// }
/// let (mut cursor, mut sent) = (None, Vec::new());
/// loop {
///     cursor = store.walk_matches("dev/+/temp", cursor.as_ref(), 32, |_, &v| sent.push(v));
///     let Some(at) = &cursor else { break };
///     // Next turn; meanwhile the store changes.
///     store.remove(at.topic());
///     store.insert("dev/new/temp", 100);
/// }
/// assert_eq!(sent.len(), 101);
/// ```
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
/// Measured against the hash maps (release build, counting allocator, a shared machine so
/// times are rough). Bytes per topic, level strings included: `site/<1000>/dev/<1000>/temp`
/// 287 → 130, `c<200k>/b/c/d/e` 902 → 325, ten levels of fan-out 4 (1M topics) 115 → 56, one
/// level of 1M random ids 85 → 67 (inserted in random order) or 80 (in order). `get` and
/// `insert` cost the same within noise except on a very wide level: with 1M random ids under
/// one node, `get` goes from about 0.4 to 2 µs and `insert` of a new or existing topic from
/// 0.5–0.7 to 2–2.5 µs (the B-tree's cache misses; a hit in the map form takes two lookups).
/// A `#` or `+` walk of a deep store got 2 to 4 times faster; over that one wide level it went
/// from 52 to 100 ms if the ids came in random order, to 28 ms if in order. A walk in steps
/// of 1000 nodes costs within 10% of one [`RetainedStore::for_each_match`], steps of 100
/// within 30%.
///
/// Keeping the hash maps and sorting a node's keys when a walk resumes there would cost
/// O(w log w) per step on a node of w children: unbounded, the very thing walks avoid.
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

/// What a node reached by a walk still has to match.
#[derive(Clone, Copy)]
enum Pending<'f> {
    /// These filter levels below the node (`None`: the filter ends at the node).
    Levels(Option<&'f str>),
    /// The node and everything below it (`#`). At the root (a full walk) that includes the
    /// topics starting with `$`; a filter's `#` never stands for the root.
    Subtree,
}

impl<'f> Pending<'f> {
    /// Whether the node's own value matches.
    fn takes_value(self) -> bool {
        // `a/#` matches `a` itself.
        matches!(self, Pending::Levels(None | Some("#")) | Pending::Subtree)
    }

    /// Which children of a node with this still to match a walk goes on to, and what each of
    /// them then has to match; `None` if none.
    fn next_levels(self, at_root: bool) -> Option<(Select<'f>, Pending<'f>)> {
        match self {
            Pending::Levels(None) => None,
            Pending::Levels(Some(levels)) => {
                let (level, rest) = split_level(levels);
                // The `$` rule: a first level `+` or `#` skips the topics starting with `$`.
                let every = Select::Every {
                    skip_dollar: at_root,
                };
                Some(match level {
                    "#" => (every, Pending::Subtree),
                    "+" => (every, Pending::Levels(rest)),
                    literal => (Select::Literal(literal), Pending::Levels(rest)),
                })
            }
            Pending::Subtree => Some((Select::Every { skip_dollar: false }, Pending::Subtree)),
        }
    }
}

/// Which children of a node a walk goes on to.
#[derive(Clone, Copy)]
enum Select<'f> {
    /// The one child with this level, if any.
    Literal(&'f str),
    /// Every child; without those starting with `$` if `skip_dollar`.
    Every { skip_dollar: bool },
}

impl Select<'_> {
    /// Whether the child `level` is one of those selected.
    fn takes(self, level: &str) -> bool {
        match self {
            Select::Literal(literal) => level == literal,
            Select::Every { skip_dollar } => !(skip_dollar && level.starts_with('$')),
        }
    }
}

/// Whether `level` is above `lower`.
fn above(level: &str, lower: Bound<&str>) -> bool {
    match lower {
        Bound::Unbounded => true,
        Bound::Included(lower) => level >= lower,
        Bound::Excluded(lower) => level > lower,
    }
}

/// The children of one node that a walk still has to examine, in level order, produced lazily
/// so that `+` or `#` on a node with a million children costs no more memory than on a node
/// with one.
enum Candidates<'a, T> {
    /// At most one child (a literal filter level), or none.
    One(Option<(&'a str, &'a Node<T>)>),
    /// Every child from some level on; without those starting with `$` if `skip_dollar`,
    /// skipped with one seek.
    Every {
        children: &'a Children<T>,
        iter: ChildIter<'a, T>,
        skip_dollar: bool,
    },
}

impl<'a, T> Candidates<'a, T> {
    /// The `children` that `select` takes, from the first above `lower` on.
    fn new(children: &'a Children<T>, select: Select<'_>, lower: Bound<&str>) -> Self {
        match select {
            Select::Literal(level) if above(level, lower) => Candidates::One(children.get(level)),
            Select::Literal(_) => Candidates::One(None),
            Select::Every { skip_dollar } => Candidates::Every {
                children,
                iter: children.iter_from(lower),
                skip_dollar,
            },
        }
    }
}

impl<'a, T> Iterator for Candidates<'a, T> {
    type Item = (&'a str, &'a Node<T>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Candidates::One(one) => one.take(),
            Candidates::Every {
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

/// One level of a walk in progress: the children still to examine, where their parent's topic
/// ends in the path buffer (`None`: the parent is the root) and what they have to match.
struct Frame<'a, 'f, T> {
    candidates: Candidates<'a, T>,
    parent_len: Option<usize>,
    pending: Pending<'f>,
}

/// Where a resumable walk of a [`RetainedStore`] stopped: the topic of the last trie node it
/// examined. That node need not hold a value (`a/b` on the way to `a/b/c`) and may since have
/// been removed; the walk goes on with the nodes after it in level order.
///
/// Owned and independent of the store, so that a shard can keep it across turns while the
/// store changes: 16 bytes and one allocation of the topic's length. Pass it back to the walk
/// it came from (the same filter, or [`walk_all`](RetainedStore::walk_all)); given to another
/// walk it still resumes after that node in level order, never panics, but the guarantees of
/// [`walk_matches`](RetainedStore::walk_matches) are then not those of one walk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalkCursor {
    topic: Box<str>,
}

impl WalkCursor {
    /// The topic of the last node the walk examined (for logs and metrics).
    pub fn topic(&self) -> &str {
        &self.topic
    }
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

    /// Calls `visit(topic, value)` once for every stored topic that `filter` matches, in level
    /// order (see [`walk_matches`](Self::walk_matches)). Topics starting with `$` are not
    /// matched by a filter starting with `+` or `#`. Uses one `String` buffer for the topics
    /// and, for filters of more than 16 levels, a heap stack; memory does not grow with the
    /// number of children a wildcard visits. Unbounded: a shard walking a large store in turns
    /// uses [`walk_matches`](Self::walk_matches).
    pub fn for_each_match<'a>(&'a self, filter: &str, mut visit: impl FnMut(&str, &'a T)) {
        if !has_wildcards(filter) {
            if let Some(value) = self.get(filter) {
                visit(filter, value);
            }
            return;
        }
        self.walk(Pending::Levels(Some(filter)), None, usize::MAX, &mut visit);
    }

    /// One step of a resumable walk of the topics that `filter` matches: calls
    /// `visit(topic, value)` for those among the next `budget` trie nodes after `cursor` (from
    /// the start if `None`), and returns the cursor to continue from, or `None` once the walk
    /// is complete. Matching is that of [`for_each_match`](Self::for_each_match): the `$` rule
    /// holds and `a/#` matches `a`.
    ///
    /// # Order
    ///
    /// Topics come in level order: compared level by level, each level by its bytes, a topic
    /// before the topics below it (`a` < `a/b` < `a/b/c` < `a/c` < `a!` < `b`). Children are
    /// stored in that order, so a step seeks to the cursor's place (one lookup per level of the
    /// cursor) instead of scanning from the start: a whole walk costs about as much as one
    /// [`for_each_match`](Self::for_each_match), plus that seek per step.
    ///
    /// # Budget
    ///
    /// `budget` counts trie nodes examined: each node the walk reaches through the filter, one
    /// for a literal level, every child for a `+` or under a `#`, whether or not the node holds
    /// a value or leads to a match. So a step visits at most `budget` values, and a filter that
    /// matches little still stops on time: `w/+/x` over a million `w/<id>` with no `x` below
    /// examines a million nodes in all, `budget` per step. On top of that the seek looks up the
    /// cursor's node again, at most one node per level of the cursor (bounded by the level
    /// limit on topic names). A step costs O(`budget` + cursor levels) node steps, each a
    /// binary search or a B-tree step, and allocates its topic buffer and the returned cursor
    /// (and, past 16 levels, a heap stack). A `budget` of 0 counts as 1, so every step makes
    /// progress.
    ///
    /// # Changes between steps
    ///
    /// The store may change in any way between steps: inserts, removes, replaced values,
    /// [`retain`](Self::retain). Each step goes on strictly after the node the previous one
    /// stopped at, in level order, so over the whole walk:
    ///
    /// - a matching topic that is stored for the whole walk (with any value, replaced or not)
    ///   is visited exactly once, with the value it holds at that step;
    /// - a topic inserted or removed during the walk is visited at most once: once if it is
    ///   stored when the walk passes its place, else not at all;
    /// - no topic is visited twice, even if removed and re-inserted between steps.
    ///
    /// A step that returns a cursor leaves at least one node to examine; the last step returns
    /// `None` without an extra empty one.
    pub fn walk_matches<'a>(
        &'a self,
        filter: &str,
        cursor: Option<&WalkCursor>,
        budget: usize,
        mut visit: impl FnMut(&str, &'a T),
    ) -> Option<WalkCursor> {
        self.walk(Pending::Levels(Some(filter)), cursor, budget, &mut visit)
            .0
    }

    /// One step of a resumable walk of every stored topic, those starting with `$` included
    /// (the retained dump): [`walk_matches`](Self::walk_matches) with a filter that matches
    /// everything, same order, budget and guarantees.
    pub fn walk_all<'a>(
        &'a self,
        cursor: Option<&WalkCursor>,
        budget: usize,
        mut visit: impl FnMut(&str, &'a T),
    ) -> Option<WalkCursor> {
        self.walk(Pending::Subtree, cursor, budget, &mut visit).0
    }

    /// The walk behind [`for_each_match`](Self::for_each_match),
    /// [`walk_matches`](Self::walk_matches) and [`walk_all`](Self::walk_all): examines at
    /// most `budget` nodes after `cursor`, visiting the values that the root's `pending`
    /// matches. Returns the cursor after the last node examined (`None`: no node left) and how
    /// many nodes it touched: examined, plus looked up again by the seek.
    fn walk<'a>(
        &'a self,
        pending: Pending<'_>,
        cursor: Option<&WalkCursor>,
        budget: usize,
        visit: &mut impl FnMut(&str, &'a T),
    ) -> (Option<WalkCursor>, usize) {
        let budget = budget.max(1);
        let mut touched = 0usize;
        let mut path = String::new();
        let mut stack: SmallVec<[Frame<'a, '_, T>; 16]> = SmallVec::new();

        // Seek: one frame per level of the cursor for the siblings after it, then the cursor
        // node's own children, as the walk left them. Stops early where a node is gone.
        let mut levels = cursor.map(|cursor| cursor.topic.split('/'));
        let (mut node, mut here, mut pending) = (&self.root, None, pending);
        loop {
            let level = levels.as_mut().and_then(Iterator::next);
            let Some((select, child_pending)) = pending.next_levels(here.is_none()) else {
                break;
            };
            let Some(children) = node.children.as_deref() else {
                break;
            };
            let lower = level.map_or(Bound::Unbounded, Bound::Excluded);
            stack.push(Frame {
                candidates: Candidates::new(children, select, lower),
                parent_len: here,
                pending: child_pending,
            });
            let Some(level) = level.filter(|level| select.takes(level)) else {
                break;
            };
            touched += 1;
            let Some((_, child)) = children.get(level) else {
                break;
            };
            if here.is_some() {
                path.push('/');
            }
            path.push_str(level);
            (node, here, pending) = (child, Some(path.len()), child_pending);
        }

        let mut examined = 0usize;
        while let Some(frame) = stack.last_mut() {
            let Some((level, node)) = frame.candidates.next() else {
                stack.pop();
                continue;
            };
            if examined == budget {
                // `path` still holds the last node examined.
                let topic = path.as_str().into();
                return (Some(WalkCursor { topic }), touched);
            }
            examined += 1;
            touched += 1;
            let pending = frame.pending;
            // Frames above this one are exhausted: the buffer ends with the parent's topic.
            match frame.parent_len {
                None => path.clear(),
                Some(len) => {
                    path.truncate(len);
                    path.push('/');
                }
            }
            path.push_str(level);
            if pending.takes_value() {
                if let Some(value) = &node.value {
                    visit(&path, value);
                }
            }
            if let (Some((select, child_pending)), Some(children)) =
                (pending.next_levels(false), node.children.as_deref())
            {
                stack.push(Frame {
                    candidates: Candidates::new(children, select, Bound::Unbounded),
                    parent_len: Some(path.len()),
                    pending: child_pending,
                });
            }
        }
        (None, touched)
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

    /// Resumable walks: against a model of the store, in level order, under changes between
    /// steps, and with the work of each step counted.
    mod walks {
        use std::collections::{BTreeMap, BTreeSet};

        use proptest::prelude::*;

        use super::*;

        /// What a walk looks for: a filter, or every topic (`None`).
        fn query(filter: Option<&str>) -> Pending<'_> {
            filter.map_or(Pending::Subtree, |f| Pending::Levels(Some(f)))
        }

        fn matches_query(filter: Option<&str>, topic: &str) -> bool {
            filter.is_none_or(|f| filter_matches(f, topic))
        }

        /// A topic's place in level order.
        fn place(topic: &str) -> Vec<&str> {
            topic.split('/').collect()
        }

        fn levels(cursor: Option<&WalkCursor>) -> usize {
            cursor.map_or(0, |c| c.topic().split('/').count())
        }

        /// One step of a walk, checking that it touched at most `budget` nodes beyond the
        /// seek's one per level of the cursor.
        fn step<'a, T>(
            store: &'a RetainedStore<T>,
            filter: Option<&str>,
            cursor: Option<&WalkCursor>,
            budget: usize,
            visit: &mut impl FnMut(&str, &'a T),
        ) -> Option<WalkCursor> {
            let (next, touched) = store.walk(query(filter), cursor, budget, visit);
            let bound = budget.max(1) + levels(cursor);
            assert!(touched <= bound, "{touched} nodes touched, bound {bound}");
            next
        }

        /// Walks in steps of `budget` with no change between them: the topics visited, in
        /// order, and the number of steps.
        fn walk_in_steps(
            store: &RetainedStore<String>,
            filter: Option<&str>,
            budget: usize,
        ) -> (Vec<String>, usize) {
            let (mut seen, mut steps, mut cursor) = (Vec::new(), 0, None);
            loop {
                steps += 1;
                cursor = step(
                    store,
                    filter,
                    cursor.as_ref(),
                    budget,
                    &mut |t, v: &String| {
                        assert_eq!(t, v);
                        seen.push(v.clone());
                    },
                );
                if cursor.is_none() {
                    return (seen, steps);
                }
                assert!(steps <= store.root.count(), "no progress");
            }
        }

        /// The topics of `store` that the query matches, in level order.
        fn expected(topics: &[&str], filter: Option<&str>) -> Vec<String> {
            let mut found: Vec<&str> = topics
                .iter()
                .copied()
                .filter(|t| matches_query(filter, t))
                .collect();
            found.sort_by(|a, b| place(a).cmp(&place(b)));
            found.dedup();
            found.into_iter().map(str::to_owned).collect()
        }

        #[test]
        fn steps_resume_in_level_order() {
            let topics = ["b", "a!", "a/c", "a/b/c", "a/b", "a", "$SYS/x", "/"];
            let store = store_of(&topics);
            let all = ["/", "$SYS/x", "a", "a/b", "a/b/c", "a/c", "a!", "b"];
            // Ten nodes: "", "/", "$SYS", "$SYS/x", "a", "a/b", "a/b/c", "a/c", "a!", "b".
            assert_eq!(
                walk_in_steps(&store, None, 1),
                (all.map(String::from).into(), 10)
            );
            assert_eq!(walk_in_steps(&store, None, 4).1, 3);
            assert_eq!(walk_in_steps(&store, None, 10).1, 1, "no empty last step");
            assert_eq!(
                walk_in_steps(&store, None, 0).1,
                10,
                "a budget of 0 counts as 1"
            );
            let no_dollar: Vec<String> = all
                .iter()
                .filter(|t| !t.starts_with('$'))
                .map(|t| t.to_string())
                .collect();
            for budget in 1..12 {
                assert_eq!(walk_in_steps(&store, Some("#"), budget).0, no_dollar);
            }
            let mut order = Vec::new();
            store.for_each_match("#", |t, _| order.push(t.to_owned()));
            assert_eq!(order, no_dollar, "for_each_match in level order too");

            let mut cursor = None;
            let mut stops = Vec::new();
            while let Some(next) = store.walk_all(cursor.as_ref(), 3, |_, _| {}) {
                stops.push(next.topic().to_owned());
                assert!(stops.len() < 10, "no progress");
                cursor = Some(next);
            }
            assert_eq!(stops, ["$SYS", "a/b", "a!"]);
        }

        #[test]
        fn steps_keep_the_matching_rules() {
            let store = store_of(&["$SYS/x", "$SYS", "a/x", "a", "a/b/x", "%/x", "!/x"]);
            for budget in [1, 2, 100] {
                let walk = |f: &str| walk_in_steps(&store, Some(f), budget).0;
                assert_eq!(walk("+/x"), ["!/x", "%/x", "a/x"]);
                assert_eq!(walk("$SYS/#"), ["$SYS", "$SYS/x"]);
                assert_eq!(walk("a/#"), ["a", "a/b/x", "a/x"]);
                assert_eq!(walk("+/+/x"), ["a/b/x"]);
                assert_eq!(walk("a/x"), ["a/x"]);
                assert!(walk("a/y").is_empty());
                assert_eq!(walk_in_steps(&store, None, budget).0.len(), 7);
            }
        }

        #[test]
        fn changes_between_steps() {
            let mut store = store_of(&["a/1", "a/2", "a/3", "a/4", "a/5"]);
            let mut seen = Vec::new();
            let mut visit = |t: &str, v: &String| seen.push(format!("{t}={v}"));
            // Nodes "a" and "a/1".
            let cursor = store.walk_matches("a/+", None, 2, &mut visit);
            assert_eq!(cursor.as_ref().map(WalkCursor::topic), Some("a/1"));
            // Removed and re-inserted, inserted before the cursor, removed, replaced, inserted
            // after it.
            store.remove("a/1");
            store.insert("a/1", "again".to_owned());
            store.insert("a/0", "new".to_owned());
            store.remove("a/3");
            store.insert("a/4", "replaced".to_owned());
            store.insert("a/9", "new".to_owned());
            let (mut cursor, mut steps) = (cursor, 0);
            while let Some(next) = store.walk_matches("a/+", cursor.as_ref(), 1, &mut visit) {
                steps += 1;
                assert!(steps < 10, "no progress");
                cursor = Some(next);
            }
            assert_eq!(
                seen,
                ["a/1=a/1", "a/2=a/2", "a/4=replaced", "a/5=a/5", "a/9=new"]
            );
        }

        #[test]
        fn cursor_outlives_its_node() {
            let mut store = store_of(&["a/b/c", "a/d", "b"]);
            let mut seen = Vec::new();
            let cursor = store.walk_all(None, 2, |t, _| seen.push(t.to_owned()));
            assert_eq!(cursor.as_ref().map(WalkCursor::topic), Some("a/b"));
            // Prunes "a/b": the walk goes on after where it was.
            store.remove("a/b/c");
            store.insert("a/b!", "a/b!".to_owned());
            let cursor = store.walk_all(cursor.as_ref(), 2, |t, _| seen.push(t.to_owned()));
            assert_eq!(cursor.as_ref().map(WalkCursor::topic), Some("a/d"));
            assert_eq!(seen, ["a/b!", "a/d"]);
            // Everything under "a" gone, and the root's other child with it.
            store.remove("a/b!");
            store.remove("a/d");
            store.insert("c", "c".to_owned());
            let cursor = store.walk_all(cursor.as_ref(), 5, |t, _| seen.push(t.to_owned()));
            assert_eq!(cursor, None);
            assert_eq!(seen, ["a/b!", "a/d", "b", "c"]);
            // A cursor whose levels are all gone still resumes where they were.
            let store = store_of(&["a", "z"]);
            let gone = WalkCursor {
                topic: "m/n/o".into(),
            };
            let mut seen = Vec::new();
            assert_eq!(
                store.walk_all(Some(&gone), 5, |t, _| seen.push(t.to_owned())),
                None
            );
            assert_eq!(seen, ["z"]);
        }

        /// A step examines at most its budget of nodes even where a wide level matches
        /// nothing, and a walk of n nodes takes about n / budget steps: no rescans.
        #[test]
        fn steps_are_bounded_on_wide_levels_that_match_nothing() {
            const WIDE: usize = 5_000;
            const BUDGET: usize = 64;
            let mut store = RetainedStore::new();
            for i in 0..WIDE {
                store.insert(&format!("w/{i}/x"), ());
            }
            for (filter, examined) in [
                // "w", then every "w/<i>" (the literal "y" below finds nothing to examine).
                ("w/+/y", 1 + WIDE),
                ("+/+/y", 1 + WIDE),
                // Every node but the root, down to the "x" leaves, none of them four deep.
                ("+/+/+/+", 1 + 2 * WIDE),
                ("w/+/x/#", 1 + 2 * WIDE),
                ("#", 1 + 2 * WIDE),
            ] {
                let (mut cursor, mut steps, mut touched, mut visits) = (None, 0, 0, 0);
                loop {
                    steps += 1;
                    let (next, n) =
                        store.walk(query(Some(filter)), cursor.as_ref(), BUDGET, &mut |_, _| {
                            visits += 1;
                        });
                    assert!(n <= BUDGET + levels(cursor.as_ref()), "{filter}: {n} nodes");
                    touched += n;
                    assert!(steps <= examined, "{filter}: no progress");
                    cursor = next;
                    if cursor.is_none() {
                        break;
                    }
                }
                assert_eq!(steps, examined.div_ceil(BUDGET), "{filter}");
                // Examined once each, plus a seek of at most 3 levels per step.
                assert!(
                    touched <= examined + 3 * steps,
                    "{filter}: {touched} touched"
                );
                let expected = if filter.ends_with('#') { WIDE } else { 0 };
                assert_eq!(visits, expected, "{filter}");
                // One step with a budget above the count.
                let (next, n) = store.walk(query(Some(filter)), None, examined, &mut |_, _| {});
                assert_eq!((next, n), (None, examined), "{filter}");
            }
        }

        #[test]
        fn a_huge_budget_walks_in_one_step() {
            let topics = ["a/b", "$SYS/x", "a", "c/d/e"];
            let store = store_of(&topics);
            for filter in ["#", "+/b", "a/#", "$SYS/+", "c/d/e"] {
                let mut seen = Vec::new();
                let done =
                    store.walk_matches(filter, None, usize::MAX, |t, _| seen.push(t.to_owned()));
                assert_eq!(done, None);
                seen.sort();
                assert_eq!(seen, matches(&store, filter));
            }
            let mut seen = Vec::new();
            assert_eq!(
                store.walk_all(None, usize::MAX, |t, _| seen.push(t.to_owned())),
                None
            );
            assert_eq!(seen, ["$SYS/x", "a", "a/b", "c/d/e"]);
        }

        /// Levels of the walk tests: the usual small alphabet, levels just below and above `$`,
        /// and 24 numbers so that some nodes have more than [`FEW_CHILDREN_MAX`] children.
        fn level() -> impl Strategy<Value = String> {
            let names = vec!["a", "b", "", "$SYS", "$", "%", "!", "a!"];
            prop_oneof![
                prop::sample::select(names).prop_map(str::to_owned),
                (0..24u8).prop_map(|n| n.to_string()),
            ]
        }

        fn walk_topic() -> impl Strategy<Value = String> {
            prop::collection::vec(level(), 1..5).prop_map(|l| match l.join("/") {
                t if t.is_empty() => "/".to_owned(),
                t => t,
            })
        }

        /// A filter, with `+` and `#`, or `None` for a walk of every topic.
        fn walk_filter() -> impl Strategy<Value = Option<String>> {
            let level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
            let filter = (prop::collection::vec(level, 0..5), any::<bool>()).prop_map(
                |(mut levels, hash)| {
                    if hash || levels.is_empty() || levels == [""] {
                        levels.push("#".to_owned());
                    }
                    levels.join("/")
                },
            );
            prop_oneof![4 => filter.prop_map(Some), 1 => Just(None)]
        }

        /// A change to the store between two steps.
        #[derive(Debug, Clone)]
        enum Change {
            Insert(String),
            Remove(String),
            /// Drops every topic whose first level is this.
            RetainNot(String),
        }

        fn change(topics: Vec<String>) -> impl Strategy<Value = Change> {
            let pick = prop::sample::select(topics);
            prop_oneof![
                2 => walk_topic().prop_map(Change::Insert),
                1 => pick.clone().prop_map(Change::Insert),
                2 => pick.prop_map(Change::Remove),
                1 => level().prop_map(Change::RetainNot),
            ]
        }

        /// Steps of a walk: each a budget and the changes made after it.
        type Steps = Vec<(usize, Vec<Change>)>;

        /// A store, a query, and steps.
        fn walk_case() -> impl Strategy<Value = (Vec<String>, Option<String>, Steps)> {
            prop::collection::vec(walk_topic(), 1..80).prop_flat_map(|topics| {
                let steps = prop::collection::vec(
                    (
                        1..12usize,
                        prop::collection::vec(change(topics.clone()), 0..4),
                    ),
                    0..30,
                );
                (Just(topics), walk_filter(), steps)
            })
        }

        proptest! {
            #[test]
            fn steps_without_changes_visit_what_for_each_match_does(
                topics in prop::collection::vec(walk_topic(), 0..80),
                filter in walk_filter(),
                budget in 1..20usize,
            ) {
                let store = store_of(&topics.iter().map(String::as_str).collect::<Vec<_>>());
                let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                let want = expected(&refs, filter.as_deref());
                let (seen, _) = walk_in_steps(&store, filter.as_deref(), budget);
                prop_assert_eq!(&seen, &want);
                let (seen, steps) = walk_in_steps(&store, filter.as_deref(), usize::MAX);
                prop_assert_eq!(&seen, &want);
                prop_assert_eq!(steps, 1);
                if let Some(filter) = filter.as_deref() {
                    let mut order = Vec::new();
                    store.for_each_match(filter, |t, _| order.push(t.to_owned()));
                    prop_assert_eq!(&order, &want);
                }
            }

            #[test]
            fn any_cursor_resumes_after_its_place(
                topics in prop::collection::vec(walk_topic(), 0..80),
                filter in walk_filter(),
                after in walk_topic(),
                budget in 1..20usize,
            ) {
                // Any cursor, also one that no walk of this filter would return: the walk goes
                // on with the matching topics after its place, and only those.
                let store = store_of(&topics.iter().map(String::as_str).collect::<Vec<_>>());
                let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                let want: Vec<String> = expected(&refs, filter.as_deref())
                    .into_iter()
                    .filter(|t| place(t) > place(&after))
                    .collect();
                let mut cursor = Some(WalkCursor { topic: after.as_str().into() });
                let mut seen = Vec::new();
                while let Some(at) = cursor {
                    cursor = step(&store, filter.as_deref(), Some(&at), budget, &mut |t, _| {
                        seen.push(t.to_owned());
                    });
                    prop_assert!(seen.len() <= topics.len());
                    if let Some(next) = &cursor {
                        prop_assert!(place(next.topic()) > place(at.topic()), "no progress");
                    }
                }
                prop_assert_eq!(seen, want);
            }

            #[test]
            fn steps_under_changes_keep_their_guarantees(
                (topics, filter, steps) in walk_case(),
            ) {
                let filter = filter.as_deref();
                // The store holds (topic, version); the model the version of each topic.
                let mut store = RetainedStore::new();
                let mut model: BTreeMap<String, u32> = BTreeMap::new();
                let mut version = 0u32;
                for t in &topics {
                    version += 1;
                    store.insert(t, (t.clone(), version));
                    model.insert(t.clone(), version);
                }
                // Topics stored, with any value, since the walk began.
                let mut throughout: BTreeSet<String> = model.keys().cloned().collect();
                let mut visited: BTreeSet<String> = BTreeSet::new();
                let mut last: Option<String> = None;
                let mut cursor = None;
                let mut changes = steps.into_iter();
                let mut quiet_steps = 0usize;
                loop {
                    let (budget, change) = changes.next().unwrap_or((3, Vec::new()));
                    let mut visit = |t: &str, (topic, v): &(String, u32)| {
                        assert_eq!(t, topic);
                        assert_eq!(model.get(t), Some(v), "visited {} with its value now", t);
                        assert!(matches_query(filter, t), "{t} does not match");
                        assert!(visited.insert(t.to_owned()), "{t} visited twice");
                        if let Some(last) = &last {
                            assert!(place(last) < place(t), "{t} after {last}");
                        }
                        last = Some(t.to_owned());
                    };
                    cursor = step(&store, filter, cursor.as_ref(), budget, &mut visit);
                    if cursor.is_none() {
                        break;
                    }
                    if change.is_empty() {
                        quiet_steps += 1;
                        prop_assert!(quiet_steps <= store.root.count(), "no progress");
                    }
                    for c in change {
                        match c {
                            Change::Insert(t) => {
                                version += 1;
                                store.insert(&t, (t.clone(), version));
                                model.insert(t, version);
                            }
                            Change::Remove(t) => {
                                prop_assert_eq!(store.remove(&t).map(|v| v.1), model.remove(&t));
                                throughout.remove(&t);
                            }
                            Change::RetainNot(first) => {
                                let keep = |t: &str| t.split('/').next() != Some(first.as_str());
                                store.retain(|t, _| keep(t));
                                model.retain(|t, _| keep(t));
                                throughout.retain(|t| keep(t));
                            }
                        }
                    }
                    prop_assert_eq!(store.len(), model.len());
                }
                for t in &throughout {
                    if matches_query(filter, t) {
                        prop_assert!(visited.contains(t), "{} stored throughout, not visited", t);
                    }
                }
            }
        }
    }
}
