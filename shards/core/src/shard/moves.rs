//! A session's move between shards, with no QoS 1/2 message lost or doubled.
//!
//! Every other shard routes a publish by its replica of the routing table, and the replicas
//! learn of the move late and in any order: the old shard A drops the session's filters, the
//! new shard B announces them. Without more, a publish routed between the two finds no
//! subscriber (lost), and a publish routed to both A and B can reach the session at A before it
//! leaves and again at B after it arrived (doubled). So:
//!
//! - **Stamps.** Every shard numbers the publishes it routes (`handled[self]`, from 1) and sends
//!   each copy with the number and the set of shards it went to ([`Stamp`]); every shard keeps
//!   the last number it handled from each shard (`handled[x]`; the mesh keeps each pair's order).
//! - **A holds and forwards.** At the takeover A keeps the session's filters routed here
//!   (`route_holds`: no `RouteDel`) and forwards to B every publish that reaches them
//!   ([`Forward`](ShardMsg::Forward), stamped as it came), and hands B its `handled` numbers
//!   with the session: those publishes A delivered to the session before it left.
//! - **B takes each publish once.** B's own copy of a publish numbered `n` from shard X reaches
//!   the session unless `n <= left[X]` (A delivered it already). A forwarded one reaches it
//!   unless B had its own copy after the session arrived: X sent it to B and
//!   `n > arrived[X]`, B's `handled[X]` when the session came (its own copy then found the
//!   session here).
//! - **Chained moves.** Each acknowledgement and the old shard's end carry the sender's last
//!   publish number: every copy of one up to it that the sender sent came before, so the
//!   receiver's `handled` moves up to it. A session that got a publish forwarded and moves on
//!   is thereby handed over as having it (the next shard skips its own copy, however late).
//! - **Marks end it.** After the `RouteAdd`s of the session's filters B sends every shard a
//!   [`MoveMark`](ShardMsg::MoveMark); a shard that applied it routes the session's topics to B
//!   from then on, and says so to A and B ([`MoveMarkAck`](ShardMsg::MoveMarkAck)). A forwards
//!   nothing more of a shard whose mark came (B would skip it) and, when all came, releases the
//!   filters (a `RouteDel` if no session of its own holds them) and ends the forwarding
//!   ([`ForwardEnd`](ShardMsg::ForwardEnd)). B closes its window when the acknowledgements of
//!   the other shards and A's end came: no copy of a publish from before the move can reach it
//!   any more.
//!
//! A takeover of the session on B while B's window is open waits for the window to close (one
//! round trip over the mesh), so a session is never moving twice at once. A window and a
//! forwarder cost one entry each for the few turns of a move; there are at most as many as
//! moves in flight, which the connection limit bounds. Shared-group subscriptions are not
//! forwarded: a group's message goes to one member, placed again if that member left.
//!
//! Order: B holds its own copies for the session while the window is open and delivers them
//! when it closes, after the forwarded ones, which are older: one publisher's messages keep
//! their order. A window holds at most the session's queue limit; past it, what it held goes out
//! at once.

use super::*;

/// On the old shard: the session left for `to`; publishes that reach its filters here go on.
pub(super) struct Forwarder {
    to: ShardId,
    /// The session's plain filters (held routed here).
    filters: Vec<ByteStr>,
    /// Shards whose routing reaches the session at `to` directly now (their marks came).
    marked: ShardSet,
}

/// On the new shard: a session that arrived, while copies of publishes from before its move
/// may still come.
pub(super) struct MoveWindow {
    session: SessionKey,
    /// Per shard: the last publish of it the old shard handled before the session left.
    left: Box<[u64]>,
    /// Per shard: the last publish of it this shard handled before the session arrived.
    arrived: Box<[u64]>,
    /// Acknowledgements (and the old shard's `ForwardEnd`) still to come.
    waiting: usize,
    /// A takeover of the session that came meanwhile: (client id, to, token, replaces).
    deferred: Option<(ByteStr, ShardId, u64, u64)>,
    /// This shard's own copies for the session, held until the window closes so that the
    /// forwarded ones, which are older, go first: message, QoS, retain flag, subscription ids.
    held: Vec<Held>,
}

/// A delivery a move window holds: message, QoS, retain flag, subscription identifiers.
pub(super) type Held = (Arc<Message>, QoS, bool, SmallVec<[u32; 1]>);

impl ShardCore {
    /// Old shard, at a takeover that moves `skey` to shard `to` (another one) under claim
    /// `token`, before the session leaves the trie: hold its plain filters routed here and
    /// forward what reaches them. What to hand over with the session: `handled`.
    pub(super) fn forward_start(
        &mut self,
        skey: SessionKey,
        to: ShardId,
        token: u64,
    ) -> Box<[u64]> {
        let filters = self.hold_routes(skey);
        self.forwarders.insert(
            token,
            Forwarder {
                to,
                filters,
                marked: ShardSet::EMPTY,
            },
        );
        self.handled.clone().into_boxed_slice()
    }

    /// Old shard: a publish stamped `stamp` by `origin` reached this shard: forward it to each
    /// moved session whose filter it matches and whose new shard does not get it directly.
    pub(super) fn forward_moved(&mut self, msg: &Arc<Message>, origin: ShardId, stamp: Stamp) {
        let mut to: SmallVec<[(ShardId, u64); 2]> = SmallVec::new();
        for (&token, f) in &self.forwarders {
            if !f.marked.contains(origin)
                && f.filters.iter().any(|flt| filter_matches(flt, &msg.topic))
            {
                to.push((f.to, token));
            }
        }
        for (shard, token) in to {
            self.send(
                shard,
                ShardMsg::Forward {
                    token,
                    msg: msg.clone(),
                    origin,
                    stamp,
                },
            );
        }
    }

    /// Old shard: `shards` route the moved session's topics to its new shard now.
    fn forward_marked(&mut self, token: u64, shards: ShardSet) {
        let Some(f) = self.forwarders.get_mut(&token) else {
            return;
        };
        f.marked = f.marked.union(shards);
        if f.marked.iter().count() < self.nshards {
            return;
        }
        let f = self.forwarders.remove(&token).expect("present");
        self.release_routes(f.filters);
        let upto = self.handled[self.id];
        self.send(f.to, ShardMsg::ForwardEnd { token, upto });
    }

    /// Keeps the plain filters of session `skey` routed here while it leaves the trie (no
    /// `RouteDel`, which another shard could apply before the `RouteAdd` that follows).
    pub(super) fn hold_routes(&mut self, skey: SessionKey) -> Vec<ByteStr> {
        let filters: Vec<ByteStr> = self.sessions[skey]
            .session
            .subscriptions()
            .map(|(f, _)| f)
            .filter(|f| !is_shared(f))
            .cloned()
            .collect();
        for f in &filters {
            *self.route_holds.entry(f.clone()).or_insert(0) += 1;
        }
        filters
    }

    /// Ends a [`hold_routes`](Self::hold_routes): a filter no session here subscribes to any
    /// more is withdrawn.
    pub(super) fn release_routes(&mut self, filters: Vec<ByteStr>) {
        for filter in filters {
            let held = self.route_holds.get_mut(&filter).expect("held");
            assert!(*held > 0, "route holds are counted");
            *held -= 1;
            if *held == 0 {
                self.route_holds.remove(&filter);
                if self.subs.get(&filter).is_none() {
                    self.route_gone(&filter);
                }
            }
        }
    }

    /// New shard, at the handoff of a session moved from `from` (`left`: its `handled`), after
    /// the announcements of its filters: open the window and mark the move on every shard.
    pub(super) fn move_arrived(
        &mut self,
        skey: SessionKey,
        from: ShardId,
        token: u64,
        left: Box<[u64]>,
    ) {
        assert_eq!(left.len(), self.nshards, "one number per shard");
        self.move_windows.insert(
            token,
            MoveWindow {
                session: skey,
                left,
                arrived: self.handled.clone().into_boxed_slice(),
                // The other shards' acknowledgements and the old shard's end.
                waiting: self.nshards - 1,
                deferred: None,
                held: Vec::new(),
            },
        );
        self.moving_in.insert(skey as u32, token);
        self.send_move_marks(token, from);
    }

    /// New shard: a [`MoveMark`](ShardMsg::MoveMark) to every other shard, after the routes.
    pub(super) fn send_move_marks(&mut self, token: u64, from: ShardId) {
        let me = self.id;
        for shard in (0..self.nshards).filter(|&s| s != me) {
            self.send(
                shard,
                ShardMsg::MoveMark {
                    token,
                    from,
                    to: me,
                },
            );
        }
    }

    /// Any shard: the new shard of a move says its routes are sent.
    pub(super) fn move_mark(&mut self, token: u64, from: ShardId, to: ShardId) {
        if from == self.id {
            // The mesh from `to` delivered its routes before this mark: this shard routes to
            // it now, and nothing of `to`'s from before the move is still coming.
            self.forward_marked(token, ShardSet::EMPTY.with(from).with(to));
        } else {
            let upto = self.handled[self.id];
            self.send(from, ShardMsg::MoveMarkAck { token, upto });
            self.send(to, ShardMsg::MoveMarkAck { token, upto });
        }
    }

    /// Shard `from` routed publishes up to number `upto`, and every copy it sent here of one of
    /// them came before (the mesh keeps the pair's order): none of them is still coming. So a
    /// session that got one of them forwarded here, and moves on, is handed over as having it.
    pub(super) fn handled_upto(&mut self, from: ShardId, upto: u64) {
        let h = &mut self.handled[from];
        *h = (*h).max(upto);
    }

    /// Old or new shard of a move: shard `from` applied the mark.
    pub(super) fn move_mark_acked(&mut self, now: Instant, token: u64, from: ShardId) {
        if self.forwarders.contains_key(&token) {
            self.forward_marked(token, ShardSet::EMPTY.with(from));
        } else {
            self.move_window_step(now, token);
        }
    }

    /// New shard: one of the window's acknowledgements (or the old shard's end) came.
    pub(super) fn move_window_step(&mut self, now: Instant, token: u64) {
        let Some(w) = self.move_windows.get_mut(&token) else {
            return;
        };
        assert!(w.waiting > 0, "a move window waits for this");
        w.waiting -= 1;
        if w.waiting > 0 {
            return;
        }
        let w = self.move_windows.remove(&token).expect("present");
        if self.moving_in.get(&(w.session as u32)) == Some(&token) {
            self.moving_in.remove(&(w.session as u32));
            self.deliver_held(now, w.session as u32, w.held);
        }
        if let Some((client_id, to, t, replaces)) = w.deferred {
            self.takeover(now, client_id, to, t, replaces, false);
        }
    }

    /// New shard: whether the session `skey`'s move window holds back this shard's own copy of
    /// a publish (`seq` from `origin`): the old shard delivered it before the session left.
    pub(super) fn move_skips(&self, skey: u32, origin: ShardId, seq: u64) -> bool {
        self.moving_in
            .get(&skey)
            .and_then(|t| self.move_windows.get(t))
            .is_some_and(|w| seq <= w.left[origin])
    }

    /// New shard: holds this shard's own copy of a publish for session `skey` while its move
    /// window is open. Gives it back if there is none, or when the window holds the session's
    /// queue limit already: then what it held goes out now, in order, and this one after it.
    pub(super) fn move_hold(&mut self, now: Instant, skey: u32, delivery: Held) -> Option<Held> {
        let cap = self.limits.max_queued_messages.max(1);
        let Some(w) = self
            .moving_in
            .get(&skey)
            .and_then(|t| self.move_windows.get_mut(t))
        else {
            return Some(delivery);
        };
        if w.held.len() < cap {
            w.held.push(delivery);
            return None;
        }
        let held = std::mem::take(&mut w.held);
        self.deliver_held(now, skey, held);
        Some(delivery)
    }

    /// Delivers what a move window held for session `skey`, in order.
    fn deliver_held(&mut self, now: Instant, skey: u32, held: Vec<Held>) {
        for (msg, qos, retain, ids) in held {
            self.deliver_to(now, skey, &msg, qos, retain, &ids, None);
        }
    }

    /// New shard: a publish the old shard forwarded for the session of move `token`.
    pub(super) fn forwarded(
        &mut self,
        now: Instant,
        token: u64,
        msg: &Arc<Message>,
        origin: ShardId,
        stamp: Stamp,
    ) {
        let Some(w) = self.move_windows.get(&token) else {
            return;
        };
        let here = origin == self.id || stamp.dest.contains(self.id);
        if here && stamp.seq > w.arrived[origin] {
            // This shard's own copy came after the session: it had it.
            return;
        }
        let skey = w.session;
        if self
            .sessions
            .get(skey)
            .is_some_and(|s| s.reg_token == token)
        {
            self.deliver_matching(now, msg, Some(skey as u32), None);
        }
    }

    /// New shard: a takeover of a session whose move window is open waits for it to close.
    /// True if deferred.
    pub(super) fn defer_in_window(
        &mut self,
        skey: SessionKey,
        client_id: &ByteStr,
        to: ShardId,
        token: u64,
        replaces: u64,
    ) -> bool {
        let Some(&t) = self.moving_in.get(&(skey as u32)) else {
            return false;
        };
        let Some(w) = self.move_windows.get_mut(&t) else {
            return false;
        };
        // The registry replaces the session's registration (the move's token) once.
        let earlier = w.deferred.replace((client_id.clone(), to, token, replaces));
        assert!(earlier.is_none(), "a registration is replaced once");
        true
    }

    /// The session `skey` leaves this shard (ended or taken over): its window, if any, no
    /// longer holds back its deliveries (the window itself runs to its end).
    pub(super) fn move_session_gone(&mut self, skey: SessionKey) {
        if !self.moving_in.is_empty() {
            self.moving_in.remove(&(skey as u32));
        }
    }
}
