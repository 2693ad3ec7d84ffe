//! The shard's sessions by client id.
//!
//! A map from client id to session key held a second copy of every id (a 32 B `ByteStr`) and
//! its key: 40 B an entry, about 67 B a session with the table's spare room. Each session
//! already holds its id, so the index keeps only the session's slab key (4 B) and compares ids
//! through the slab: about 9 B a session.

use hashbrown::HashTable;

use super::{SessionKey, SessionSlot, Slab};

/// Session keys, hashed by the client id of the session each names. Every key in it names a
/// session in the slab while `get` and `insert` run.
#[derive(Default)]
pub(super) struct ClientIndex {
    table: HashTable<u32>,
    hasher: ahash::RandomState,
}

impl ClientIndex {
    fn hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    /// The session of `client_id`.
    pub(super) fn get(&self, sessions: &Slab<SessionSlot>, client_id: &str) -> Option<SessionKey> {
        let hash = self.hash(client_id);
        self.table
            .find(hash, |&k| {
                sessions[k as usize].session.client_id().as_str() == client_id
            })
            .map(|&k| k as usize)
    }

    /// Indexes session `skey` (already in `sessions`) by its client id, replacing the entry of
    /// another session with the same id.
    pub(super) fn insert(&mut self, sessions: &Slab<SessionSlot>, skey: SessionKey) {
        let key = u32::try_from(skey).expect("a shard holds fewer than 2^32 sessions");
        let client_id = sessions[skey].session.client_id().as_str();
        let hash = self.hash(client_id);
        let hasher = &self.hasher;
        let rehash = |&k: &u32| hasher.hash_one(sessions[k as usize].session.client_id().as_str());
        match self.table.entry(
            hash,
            |&k| k == key || sessions[k as usize].session.client_id().as_str() == client_id,
            rehash,
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = key,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(key);
            }
        }
    }

    /// Forgets session `skey`, whose client id is `client_id`. Needs no slab: the session may
    /// be gone from it already. Returns whether it was indexed.
    pub(super) fn remove(&mut self, client_id: &str, skey: SessionKey) -> bool {
        let hash = self.hash(client_id);
        match self.table.find_entry(hash, |&k| k as usize == skey) {
            Ok(e) => {
                e.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// The indexed session keys, in no order.
    pub(super) fn keys(&self) -> impl Iterator<Item = SessionKey> + '_ {
        self.table.iter().map(|&k| k as usize)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shardmq_broker::session::Session;
    use shardmq_codec::{ByteStr, Protocol};

    fn slot(id: &str) -> SessionSlot {
        SessionSlot {
            session: Session::new(ByteStr::from(id), Protocol::V5, 0),
            conn: None,
            reg_token: 0,
            expires_at: None,
            connected_at: 0,
            clean_start: false,
        }
    }

    #[test]
    fn finds_replaces_and_forgets_sessions_by_client_id() {
        let mut slab = Slab::new();
        let mut index = ClientIndex::default();
        let a = slab.insert(slot("a"));
        let b = slab.insert(slot("b"));
        index.insert(&slab, a);
        index.insert(&slab, b);
        assert_eq!(index.get(&slab, "a"), Some(a));
        assert_eq!(index.get(&slab, "b"), Some(b));
        assert_eq!(index.get(&slab, "c"), None);
        // A second session of "a" replaces the first in the index.
        let a2 = slab.insert(slot("a"));
        index.insert(&slab, a2);
        assert_eq!(index.get(&slab, "a"), Some(a2));
        assert_eq!(index.len(), 2);
        // Removal works with the session already gone from the slab, and only for its key.
        assert!(!index.remove("a", a), "the replaced key is not indexed");
        slab.remove(a2);
        assert!(index.remove("a", a2));
        assert_eq!(index.get(&slab, "b"), Some(b));
        assert_eq!(index.keys().collect::<Vec<_>>(), vec![b]);
        assert!(index.remove("b", b));
        assert!(index.is_empty());
    }

    proptest! {
        /// Against a plain map, through inserts and removals of a few ids (many collide on
        /// purpose: the same id named again replaces its session).
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((0u8..40, any::<bool>()), 1..400)) {
            let mut slab = Slab::new();
            let mut index = ClientIndex::default();
            let mut model: std::collections::HashMap<String, SessionKey> = Default::default();
            for (n, add) in ops {
                let id = format!("client-{n}");
                if add {
                    let key = slab.insert(slot(&id));
                    index.insert(&slab, key);
                    if let Some(old) = model.insert(id.clone(), key) {
                        slab.remove(old);
                    }
                } else if let Some(key) = model.remove(&id) {
                    slab.remove(key);
                    prop_assert!(index.remove(&id, key));
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for n in 0u8..40 {
                let id = format!("client-{n}");
                prop_assert_eq!(index.get(&slab, &id), model.get(&id).copied());
            }
        }
    }
}
