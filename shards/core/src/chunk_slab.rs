//! A slab that grows by fixed chunks and never moves an entry: the shard's tables of
//! connections, sessions and driver slots.
//!
//! `slab::Slab` is one `Vec`: it doubles, so at 5,000 connections per shard its 8,192 slots
//! were resident, and each doubling copied the whole table on the shard's loop (at a million
//! sessions, a copy of hundreds of MiB in one turn). Here a full table gets one more chunk of
//! [`CHUNK`] entries: the unused room is at most one chunk, growth copies nothing, and keys
//! stay dense (`chunk * CHUNK + offset`), so freed keys are reused first (LIFO), as in `slab`.

use std::ops::{Index, IndexMut};

/// Entries per chunk.
pub const CHUNK: usize = 256;

const NONE: usize = usize::MAX;

enum Entry<T> {
    Vacant(usize),
    Occupied(T),
}

/// A slab of `T` keyed by `usize`.
pub struct ChunkSlab<T> {
    /// Every chunk but the last holds exactly `CHUNK` entries; none ever reallocates.
    chunks: Vec<Vec<Entry<T>>>,
    /// The most recently freed key, heading the list of vacant entries.
    free: usize,
    len: usize,
}

impl<T> Default for ChunkSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ChunkSlab<T> {
    pub fn new() -> Self {
        ChunkSlab {
            chunks: Vec::new(),
            free: NONE,
            len: 0,
        }
    }

    /// Occupied entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key the next [`ChunkSlab::insert`] returns.
    pub fn vacant_key(&self) -> usize {
        if self.free != NONE {
            return self.free;
        }
        match self.chunks.last() {
            Some(last) => (self.chunks.len() - 1) * CHUNK + last.len(),
            None => 0,
        }
    }

    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        if self.free != NONE {
            let key = self.free;
            let e = &mut self.chunks[key / CHUNK][key % CHUNK];
            match std::mem::replace(e, Entry::Occupied(value)) {
                Entry::Vacant(next) => self.free = next,
                Entry::Occupied(_) => unreachable!("the free list holds vacant entries"),
            }
            return key;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = self.chunks.len() - 1;
        let last = &mut self.chunks[n];
        last.push(Entry::Occupied(value));
        n * CHUNK + last.len() - 1
    }

    /// Removes the entry at `key`. Panics if there is none.
    pub fn remove(&mut self, key: usize) -> T {
        let e = self
            .chunks
            .get_mut(key / CHUNK)
            .and_then(|c| c.get_mut(key % CHUNK))
            .expect("remove: key out of range");
        match std::mem::replace(e, Entry::Vacant(self.free)) {
            Entry::Occupied(v) => {
                self.free = key;
                assert!(self.len > 0, "an occupied entry is counted");
                self.len -= 1;
                v
            }
            Entry::Vacant(next) => {
                *e = Entry::Vacant(next);
                panic!("remove: key {key} is vacant");
            }
        }
    }

    pub fn get(&self, key: usize) -> Option<&T> {
        match self.chunks.get(key / CHUNK)?.get(key % CHUNK)? {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant(_) => None,
        }
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        match self.chunks.get_mut(key / CHUNK)?.get_mut(key % CHUNK)? {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant(_) => None,
        }
    }

    /// Every occupied entry with a key of at least `start`, with its key, in key order.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = (usize, &T)> {
        let first = start / CHUNK;
        self.chunks
            .iter()
            .enumerate()
            .skip(first)
            .flat_map(move |(c, chunk)| {
                let skip = if c == first { start % CHUNK } else { 0 };
                chunk
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .filter_map(move |(i, e)| match e {
                        Entry::Occupied(v) => Some((c * CHUNK + i, v)),
                        Entry::Vacant(_) => None,
                    })
            })
    }

    /// Every occupied entry with its key, in key order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.chunks.iter_mut().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter_mut()
                .enumerate()
                .filter_map(move |(i, e)| match e {
                    Entry::Occupied(v) => Some((c * CHUNK + i, v)),
                    Entry::Vacant(_) => None,
                })
        })
    }
}

impl<T> Index<usize> for ChunkSlab<T> {
    type Output = T;

    fn index(&self, key: usize) -> &T {
        self.get(key).expect("no entry at this key")
    }
}

impl<T> IndexMut<usize> for ChunkSlab<T> {
    fn index_mut(&mut self, key: usize) -> &mut T {
        self.get_mut(key).expect("no entry at this key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        Remove(usize),
    }

    proptest! {
        /// Behaves as `slab::Slab` does: same keys, same contents, same vacant key.
        #[test]
        fn matches_slab(ops in proptest::collection::vec(
            prop_oneof![any::<u32>().prop_map(Op::Insert), any::<usize>().prop_map(Op::Remove)],
            0..2000,
        )) {
            let mut ours = ChunkSlab::new();
            let mut theirs = slab::Slab::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(v) => {
                        prop_assert_eq!(ours.vacant_key(), theirs.vacant_key());
                        let k = ours.insert(v);
                        prop_assert_eq!(k, theirs.insert(v));
                        model.insert(k, v);
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let k = *model.keys().nth(i % model.len()).unwrap();
                        prop_assert_eq!(ours.remove(k), theirs.remove(k));
                        model.remove(&k);
                        prop_assert!(ours.get(k).is_none());
                    }
                    Op::Remove(_) => {}
                }
                prop_assert_eq!(ours.len(), model.len());
            }
            for start in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, model.len() / 2, 3 * CHUNK] {
                let got: Vec<(usize, u32)> = ours.iter_from(start).map(|(k, v)| (k, *v)).collect();
                let want: Vec<(usize, u32)> = model.range(start..).map(|(&k, &v)| (k, v)).collect();
                prop_assert_eq!(got, want, "iter_from({})", start);
            }
            let got: Vec<(usize, u32)> = ours.iter_mut().map(|(k, v)| (k, *v)).collect();
            let want: Vec<(usize, u32)> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn grows_by_chunks_without_moving_entries() {
        let mut s = ChunkSlab::new();
        let first: *const u64 = {
            let k = s.insert(7u64);
            &s[k]
        };
        for i in 0..(3 * CHUNK as u64) {
            s.insert(i);
        }
        assert_eq!(s.chunks.len(), 4);
        assert!(s.chunks.iter().all(|c| c.capacity() == CHUNK));
        assert_eq!(first, &s[0] as *const u64, "the first entry never moved");
    }

    #[test]
    #[should_panic(expected = "vacant")]
    fn removing_a_vacant_key_panics() {
        let mut s = ChunkSlab::new();
        let k = s.insert(1);
        s.remove(k);
        s.remove(k);
    }
}
