//! The shard's storage hooks (docs/durability.md): each is a no-op costing one `Option` check
//! when `storage.durability = "off"`.
//!
//! - Journals: after every call into a session, [`ShardCore::journal_flush`] turns its drained
//!   changes into records. A session is journaled while it is persistent (expiry ≠ 0): its
//!   whole image is written when it becomes so here ([`ShardCore::durable_install`]), an end
//!   record when it ends ([`ShardCore::durable_end`]). A session handed to another shard stays in
//!   this shard's log until the new shard says its copy is durable (`SessionStored`), so a
//!   crash during a takeover never loses it.
//! - Retained changes are written by the shard where the PUBLISH arrives.
//! - `"sync"` gates: output that depends on a stored change waits for its batch's fdatasync
//!   and, for publishes delivered by other shards, for their durable acknowledgement.
//! - Start-up: [`ShardCore::restore`] installs what recovery gave this shard.

use super::{ConnKey, Phase, RegEntry, SessionKey, SessionSlot, ShardCore};
use crate::bus::{Batch, ShardId, ShardMsg, ShardSet};
use crate::durable::{
    Compaction, ConnGates, DurabilityMode, Gate, Restored, ShardDurable, StorageFigures,
    StorageSpec, COMPACT_STEP_ITEMS, CONN_GATES_MAX,
};
use crate::link::ToCluster;
use crate::store::{Clock, ShardLog};
use shardmq_broker::session::{Close, Session, EXPIRY_NEVER};
use shardmq_broker::shared::is_shared;
use shardmq_broker::Message;
use shardmq_codec::{encode, Ack, AckProperties, ByteStr, Packet, Protocol, QoS, ReasonCode};
use shardmq_store::{LogConfig, LogWriter, MessageTable, ShardStart, StoredMessage};
use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info};

fn unix_ns(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn clock(now: Instant, wall: SystemTime) -> Clock {
    Clock {
        now,
        unix_ns: unix_ns(wall),
    }
}

/// A stored message back in the broker's terms: its wall-clock expiry on the monotonic clock.
fn message_of(m: &StoredMessage, now: Instant, now_unix_ms: u64) -> Message {
    crate::store::message_of(
        m,
        Clock {
            now,
            unix_ns: now_unix_ms * 1_000_000,
        },
    )
}

impl ShardCore {
    // ---- start-up ----------------------------------------------------------------------

    /// Installs this shard's part of the recovered state: its log continues where its
    /// snapshot ended, its sessions (offline, expiry resumed from their wall-clock disconnect
    /// time, wills scheduled), every shard's retained messages in the replica and every
    /// restored subscription in the route replica. Runs before the shard serves.
    ///
    /// `start` is this shard's part; `retained` and `routes` are every shard's (see the
    /// runtime's start-up recovery).
    pub fn restore(
        &mut self,
        now: Instant,
        spec: &StorageSpec,
        restored: Restored<'_>,
        figures: Arc<StorageFigures>,
    ) {
        let id = self.id;
        let wall = self.wall(now);
        let ShardStart { state, position } = restored.start;
        let put_segment = position.segments.first().map_or(1, |s| s.0);
        let mut config = LogConfig::new(id as u32, restored.generation);
        config.segment_bytes_max = spec.segment_bytes;
        config.compact_min_bytes = spec.compact_min_bytes;
        let writer = LogWriter::new(config, position);
        figures.shards[id]
            .disk_bytes
            .store(writer.disk_bytes(), Ordering::Relaxed);
        let mut log = ShardLog::new(writer, MessageTable::new(state.next_message_id));
        let now_ms = unix_ns(wall) / 1_000_000;
        let mut refs: ahash::AHashMap<u64, u64> = Default::default();
        for e in state.retained.values() {
            if let Some(m) = e.message {
                *refs.entry(m).or_default() += 1;
            }
        }
        for s in state.sessions.values() {
            for m in s.message_ids() {
                *refs.entry(m).or_default() += 1;
            }
        }
        let mut arcs: ahash::AHashMap<u64, Arc<Message>> = Default::default();
        for (mid, m) in &state.messages {
            let Some(&n) = refs.get(mid) else { continue };
            let arc = Arc::new(message_of(m, now, now_ms));
            log.adopt(&arc, *mid, n, put_segment);
            arcs.insert(*mid, arc);
        }
        for (topic, e) in &state.retained {
            if let Some(a) = e.message.and_then(|m| arcs.get(&m)) {
                self.retained.insert(topic, a.clone());
                log.adopt_retained(topic, a, e.at_unix_ns);
            }
        }
        for (owner, topic, m) in restored.retained {
            if *owner != id {
                self.retained
                    .insert(topic, Arc::new(message_of(m, now, now_ms)));
            }
        }
        for (filter, shard) in restored.routes {
            if *shard != id && !is_shared(filter) {
                let set = self.routes.entry_or_insert_with(filter, || ShardSet::EMPTY);
                *set = set.with(*shard);
            }
        }
        self.durable = Some(Box::new(ShardDurable::new(
            id,
            self.nshards,
            spec,
            log,
            figures,
        )));
        let sessions = state.sessions.len();
        for (_, s) in state.sessions {
            self.restore_session(now, now_ms, s, &arcs);
        }
        if sessions > 0 {
            info!(
                shard = id,
                sessions,
                retained = state.retained.len(),
                "restored"
            );
        }
        self.drain_local(now);
    }

    fn restore_session(
        &mut self,
        now: Instant,
        now_ms: u64,
        s: shardmq_store::StoredSession,
        arcs: &ahash::AHashMap<u64, Arc<Message>>,
    ) {
        let client_id = s.client_id.clone();
        let expiry = s.expiry_secs;
        let disconnected_at = s.disconnected_at_unix_ms;
        let image = crate::store::session_image_of(s, arcs);
        let subscriptions = image.subscriptions.clone();
        let session = Session::from_image(image);
        // Down since it disconnected, or since the crash if it was connected then.
        let gone_ms = now_ms.saturating_sub(disconnected_at.unwrap_or(now_ms));
        // Kept in the session until it is published (see `expire_sessions`).
        let will = session.will().cloned();
        let token = self.token();
        let skey = self.sessions.insert(SessionSlot {
            session,
            conn: None,
            reg_token: token,
            expires_at: None,
            connected_at: 0,
            clean_start: false,
        });
        self.by_client.insert(&self.sessions, skey);
        self.registry.insert(
            Box::from(client_id.as_str()),
            RegEntry {
                shard: self.id,
                token,
            },
        );
        let shard = self.id;
        self.tell_cluster(ToCluster::SessionRestored {
            client_id: client_id.clone(),
            shard,
        });
        for (filter, sub) in subscriptions {
            if self.trie_insert(&filter, skey, sub) {
                self.announce_route(&filter, None);
                if !is_shared(&filter) {
                    let shard = self.id;
                    self.tell_cluster(ToCluster::RouteAdd {
                        filter,
                        shard,
                        sync: None,
                    });
                }
            }
        }
        if expiry != EXPIRY_NEVER {
            let left_ms = (u64::from(expiry) * 1000).saturating_sub(gone_ms);
            let at = now + Duration::from_millis(left_ms);
            self.sessions[skey].expires_at = Some(at);
            self.offline.insert((at, skey, token));
        }
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let left_ms = (u64::from(delay.min(expiry)) * 1000).saturating_sub(gone_ms);
            self.delayed_wills
                .schedule(client_id, now + Duration::from_millis(left_ms), will);
        }
        self.journal_flush(now, skey);
    }

    // ---- journals ------------------------------------------------------------------------

    /// Writes what session `skey` changed since the last call (nothing if it is not journaled).
    pub(super) fn journal_flush(&mut self, now: Instant, skey: SessionKey) {
        let wall = self.wall(now);
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        let Some(slot) = self.sessions.get_mut(skey) else {
            return;
        };
        if !slot.session.has_changes() {
            return;
        }
        let mut changes = std::mem::take(&mut d.changes);
        slot.session.drain_changes(&mut changes);
        d.log
            .session_changes(slot.session.client_id(), &mut changes, clock(now, wall));
        d.changes = changes;
        d.wake_writer();
    }

    /// Session `skey` was just installed here for a connection (`persistent`: its expiry is
    /// not 0; `moved_in`: it came from a session this node held, maybe on another shard).
    pub(super) fn durable_install(
        &mut self,
        now: Instant,
        skey: SessionKey,
        persistent: bool,
        moved_in: bool,
    ) {
        let wall = self.wall(now);
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        let slot = &mut self.sessions[skey];
        let client_id = slot.session.client_id().clone();
        let ours = d.moved_out.remove(&client_id);
        if persistent {
            let n = &d.figures.shards[self.id].persistent_sessions;
            n.fetch_add(1, Ordering::Relaxed);
            slot.session.enable_journal();
            // The image says all the journal would.
            slot.session.drain_changes(&mut d.changes);
            d.changes.clear();
            d.log.session_image(&slot.session.image(), clock(now, wall));
        } else {
            if let Some(image) = &ours {
                d.log.session_deleted(image);
            }
            slot.session.disable_journal();
        }
        if moved_in && ours.is_none() {
            // Another shard's log holds the previous copy: it deletes it once ours is durable.
            let at = d.log.ticket();
            d.stored_notices.push_back((at, client_id));
        }
        d.wake_writer();
        self.durable_moved(now);
    }

    /// `session` left this shard (`discard`: for good, a Clean Start; else handed over).
    pub(super) fn durable_extracted(&mut self, session: &Session, discard: bool) {
        if self.durable.is_none() || !session.is_journaled() {
            return;
        }
        self.persistent_count(-1);
        let d = self.durable.as_deref_mut().expect("storage");
        let image = session.image();
        if discard {
            d.log.session_deleted(&image);
            d.wake_writer();
        } else {
            d.moved_out.insert(image.client_id.clone(), image);
        }
    }

    /// Session `skey` ends (expired, Clean Start, expiry 0, evicted).
    pub(super) fn durable_end(&mut self, skey: SessionKey) {
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        let Some(slot) = self.sessions.get(skey) else {
            return;
        };
        if slot.session.is_journaled() {
            d.log.session_deleted(&slot.session.image());
            d.wake_writer();
            self.persistent_count(-1);
        }
    }

    /// Another shard holds `client_id`'s session durably now: our old copy goes.
    pub(super) fn session_stored(&mut self, client_id: &ByteStr) {
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        if let Some(image) = d.moved_out.remove(client_id) {
            d.log.session_deleted(&image);
            d.wake_writer();
        }
    }

    /// A retained change from a PUBLISH this shard received (`stored`: the detached copy
    /// every replica keeps; `None` clears); returns the change's wall-clock time (ns), 0
    /// when nothing is stored.
    pub(super) fn durable_retained(
        &mut self,
        now: Instant,
        topic: &ByteStr,
        stored: Option<&Arc<Message>>,
    ) -> u64 {
        let wall = self.wall(now);
        let Some(d) = self.durable.as_deref_mut() else {
            return 0;
        };
        if topic.starts_with("$SYS/") {
            return 0;
        }
        let previous = self.retained.get(topic);
        let c = clock(now, wall);
        d.log.retained(topic, stored, previous, c);
        d.wake_writer();
        c.unix_ns
    }

    /// Another shard's retained change (made at `at_unix_ns`) replaced `topic` in this
    /// shard's replica.
    pub(super) fn durable_retained_replaced(&mut self, topic: &ByteStr, at_unix_ns: u64) {
        if let Some(d) = self.durable.as_deref_mut() {
            if d.log.retained_replaced(topic, at_unix_ns) {
                d.wake_writer();
            }
        }
    }

    // ---- compaction while serving ----------------------------------------------------------

    /// Called by the writer task before it takes a batch: starts a compaction pass when the
    /// log is due (`LogWriter::compaction_due`), and re-writes up to [`COMPACT_STEP_ITEMS`]
    /// live items of the running pass (whole sessions, retained topics) into the batch; when
    /// none is left the pass ends, and once it is durable the writer deletes the segments
    /// before it (docs/durability.md).
    pub fn compaction_step(&mut self, now: Instant) {
        let wall = self.wall(now);
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        if d.compaction.is_none() {
            if !d.log.writer.compaction_due() {
                return;
            }
            let (pass, retained) = d.log.begin_compaction();
            let mut sessions: Vec<ByteStr> = self
                .by_client
                .keys()
                .map(|k| &self.sessions[k].session)
                .filter(|s| s.is_journaled())
                .map(|s| s.client_id().clone())
                .collect();
            sessions.extend(d.moved_out.keys().cloned());
            info!(
                shard = self.id,
                disk_bytes = d.log.writer.disk_bytes(),
                sessions = sessions.len(),
                retained = retained.len(),
                "storage: compaction pass started"
            );
            d.compaction = Some(Compaction {
                pass,
                sessions,
                retained,
            });
        }
        let c = clock(now, wall);
        let now_ms = c.unix_ns / 1_000_000;
        let d = self.durable.as_deref_mut().expect("storage");
        let work = d.compaction.as_mut().expect("a pass");
        let mut budget = COMPACT_STEP_ITEMS;
        while budget > 0 {
            budget -= 1;
            if let Some(client_id) = work.sessions.pop() {
                let slot = self
                    .by_client
                    .get(&self.sessions, &client_id)
                    .and_then(|k| self.sessions.get(k))
                    .filter(|s| s.session.is_journaled());
                if let Some(slot) = slot {
                    let image = slot.session.image();
                    // A big session counts as many items: one step stays short.
                    budget = budget.saturating_sub(image.queue.len() + image.inflight.len());
                    // Offline since: its expiry runs from then.
                    let since = (!image.connected).then(|| match slot.expires_at {
                        Some(at) => (now_ms + at.saturating_duration_since(now).as_millis() as u64)
                            .saturating_sub(u64::from(image.expiry_secs) * 1000),
                        None => now_ms,
                    });
                    d.log.compact_session(&image, since, c);
                } else if let Some(image) = d.moved_out.get(&client_id) {
                    // Handed to another shard, not yet durable there: our copy stays.
                    d.log.compact_session(image, Some(now_ms), c);
                }
            } else if let Some(topic) = work.retained.pop() {
                d.log.compact_retained(&topic, c);
            } else {
                let pass = work.pass;
                d.log.writer.end_compaction(pass);
                d.compaction = None;
                break;
            }
        }
    }

    // ---- sync: gates and cross-shard acknowledgements ------------------------------------

    fn syncing(&self) -> Option<&ShardDurable> {
        self.durable
            .as_deref()
            .filter(|d| d.mode == DurabilityMode::Sync)
    }

    /// A publish goes to shard `to`, which stores it for its persistent sessions: whether the
    /// publisher's acknowledgement waits for `to`'s durable acknowledgement (`"sync"`, QoS ≥ 1,
    /// and `to` holds persistent sessions). If so, it is sent as `DurablePublish`, counted.
    pub(super) fn durable_sent(&mut self, to: ShardId, qos: QoS) -> bool {
        if qos == QoS::AtMostOnce {
            return false;
        }
        let Some(d) = self
            .durable
            .as_deref_mut()
            .filter(|d| d.mode == DurabilityMode::Sync)
        else {
            return false;
        };
        // Plain QoS 1 to a shard without persistent sessions pays nothing: nothing is stored
        // there for it, so its PUBACK does not wait a round trip between shards.
        if d.figures.shards[to]
            .persistent_sessions
            .load(Ordering::Relaxed)
            == 0
        {
            return false;
        }
        d.sent[to] += 1;
        true
    }

    /// A persistent session arrived on (`+1`) or left (`-1`) this shard.
    fn persistent_count(&self, delta: i64) {
        if let Some(d) = self.durable.as_deref() {
            let n = &d.figures.shards[self.id].persistent_sessions;
            if delta > 0 {
                n.fetch_add(1, Ordering::Relaxed);
            } else {
                let was = n.fetch_sub(1, Ordering::Relaxed);
                assert!(was > 0, "persistent session count below 0");
            }
        }
    }

    /// Before a batch from a peer is handled: how many publishes in it wait for our durable
    /// acknowledgement, and how many records the log held (to see whether they stored any).
    pub fn durable_count(&self, batch: &Batch) -> Option<(u64, u64)> {
        let d = self.syncing()?;
        let n = batch
            .iter()
            .filter(|m| matches!(m, ShardMsg::DurablePublish { .. }))
            .count() as u64;
        (n > 0).then_some((n, d.log.records))
    }

    /// `n` publishes from `peer` are handled (`records_before`: the log's record count before
    /// they were): acknowledge them once what they stored here is durable; at once if they
    /// stored nothing and no earlier acknowledgement to `peer` waits.
    pub fn durable_received(
        &mut self,
        now: Instant,
        peer: ShardId,
        (n, records_before): (u64, u64),
    ) {
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        d.received[peer] += n;
        let upto = d.received[peer];
        let stored_nothing = d.log.records == records_before && d.pending_acks[peer].is_empty();
        match d.log.ticket().filter(|_| !stored_nothing) {
            None => {
                let me = self.id;
                self.send(peer, ShardMsg::DurableAck { shard: me, upto });
                self.drain_local(now);
            }
            Some(ticket) => {
                let q = &mut d.pending_acks[peer];
                match q.back_mut() {
                    Some(back) if back.0 == ticket => back.1 = upto,
                    _ => q.push_back((ticket, upto)),
                }
            }
        }
    }

    /// `peer` stored (durably) the publishes we sent it up to `upto`.
    pub(super) fn durable_acked(&mut self, now: Instant, peer: ShardId, upto: u64) {
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        d.acked[peer] = d.acked[peer].max(upto);
        self.durable_moved(now);
    }

    /// Durability moved (a batch is durable, a peer acknowledged): acknowledge peers, tell
    /// shards about sessions stored here, wake connections whose gate may have opened.
    pub fn durable_moved(&mut self, now: Instant) {
        let me = self.id;
        let Some(d) = self.durable.as_deref_mut() else {
            return;
        };
        let mut out: SmallVec<[(ShardId, ShardMsg); 4]> = SmallVec::new();
        for (peer, q) in d.pending_acks.iter_mut().enumerate() {
            let mut upto = None;
            while let Some(&(ticket, n)) = q.front() {
                if !d.log.is_durable(ticket) {
                    break;
                }
                upto = Some(n);
                q.pop_front();
            }
            if let Some(upto) = upto {
                out.push((peer, ShardMsg::DurableAck { shard: me, upto }));
            }
        }
        let mut stored = Vec::new();
        while let Some((ticket, _)) = d.stored_notices.front() {
            if !d.is_durable(*ticket) {
                break;
            }
            stored.push(d.stored_notices.pop_front().expect("front").1);
        }
        let gated = std::mem::take(&mut d.gated);
        for (peer, msg) in out {
            self.send(peer, msg);
        }
        for client_id in stored {
            for to in (0..self.nshards).filter(|&s| s != me) {
                self.send(
                    to,
                    ShardMsg::SessionStored {
                        client_id: client_id.clone(),
                    },
                );
            }
        }
        for (key, id) in gated {
            if let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) {
                if let Some(g) = conn.cold.as_mut().and_then(|c| c.gates.as_mut()) {
                    g.listed = false;
                }
                Self::wake_conn(&mut self.ready, conn);
            }
        }
        self.drain_local(now);
    }

    /// `"sync"`: the output of connection `key` from `start` (its buffer's length before the
    /// acknowledgement was written) waits until everything stored so far is durable here and
    /// on every shard this one sent publishes to.
    pub(super) fn durable_gate(&mut self, key: ConnKey, start: usize) {
        let Some(d) = self.syncing() else {
            return;
        };
        let ticket = d.log.ticket();
        let marks: SmallVec<[(u8, u64); 2]> = (0..self.nshards)
            .filter(|&p| d.sent[p] > d.acked[p])
            .map(|p| (p as u8, d.sent[p]))
            .collect();
        if ticket.is_none() && marks.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let g = conn
            .cold_mut()
            .gates
            .get_or_insert_with(Box::<ConnGates>::default);
        let start = g.taken + start as u64;
        let full = g.gates.len() >= CONN_GATES_MAX;
        match g.gates.back_mut() {
            Some(back) if full || back.start == start => {
                back.ticket = back.ticket.max(ticket);
                for (p, n) in marks {
                    match back.marks.iter_mut().find(|m| m.0 == p) {
                        Some(m) => m.1 = m.1.max(n),
                        None => back.marks.push((p, n)),
                    }
                }
            }
            _ => g.gates.push_back(Gate {
                start,
                ticket,
                marks,
            }),
        }
    }

    /// How many bytes of connection `key`'s output may be written now (`None`: all).
    pub fn write_limit(&mut self, key: ConnKey) -> Option<usize> {
        let conn = &mut self.conns[key];
        let cold = conn.cold.as_mut()?;
        let g = cold.gates.as_mut()?;
        let d = self
            .durable
            .as_deref_mut()
            .expect("gates only with storage");
        while g.gates.front().is_some_and(|front| d.passes(front)) {
            g.gates.pop_front();
        }
        let Some(front) = g.gates.front() else {
            cold.gates = None;
            return None;
        };
        assert!(front.start >= g.taken, "output written past a gate");
        if !g.listed {
            g.listed = true;
            d.gated.push((key, conn.id));
        }
        Some((front.start - g.taken) as usize)
    }

    /// The driver wrote `n` bytes of connection `key`'s output.
    pub fn wrote(&mut self, key: ConnKey, n: usize) {
        if let Some(g) = self.conns[key].cold.as_mut().and_then(|c| c.gates.as_mut()) {
            g.taken += n as u64;
        }
    }

    // ---- a full disk -----------------------------------------------------------------------

    /// The disk refuses writes: QoS ≥ 1 PUBLISHes are refused rather than acknowledged.
    pub(super) fn storage_refuses(&self) -> bool {
        self.durable
            .as_deref()
            .is_some_and(|d| d.failing || d.figures.failing_shards.load(Ordering::Relaxed) > 0)
    }

    /// Refuses a QoS ≥ 1 PUBLISH while the disk refuses writes: MQTT 5.0 PUBACK/PUBREC 0x97
    /// Quota exceeded; 3.x has no negative acknowledgement: the connection is closed.
    pub(super) fn refuse_publish(&mut self, key: ConnKey, qos: QoS, pkid: u16) {
        let conn = &mut self.conns[key];
        if conn.phase != Phase::Active {
            return;
        }
        debug!(
            shard = self.id,
            "storage failing: QoS {qos:?} PUBLISH refused"
        );
        if conn.protocol == Some(Protocol::V5) {
            let ack = Ack {
                pkid,
                reason: ReasonCode::QUOTA_EXCEEDED,
                properties: AckProperties {
                    reason_string: Some(ByteStr::from("storage full: not stored")),
                    ..Default::default()
                },
            };
            let packet = if qos == QoS::ExactlyOnce {
                Packet::PubRec(ack)
            } else {
                Packet::PubAck(ack)
            };
            encode(&packet, Protocol::V5, &mut conn.out);
            Self::wake_conn(&mut self.ready, conn);
        } else {
            self.close_conn(
                key,
                Close {
                    reason: ReasonCode::QUOTA_EXCEEDED,
                    why: "storage full",
                },
            );
        }
    }
}
