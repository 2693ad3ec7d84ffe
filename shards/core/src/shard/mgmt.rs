//! The shard's answers to the management API ([`crate::mgmt`]): pages of its connections,
//! sessions, subscriptions and replicas, kicks and deletions, publishing as the broker, and
//! the traces of clients' packets.

use super::{Conn, Phase, SessionKey, ShardCore};
use crate::mgmt::{
    ClientFilter, ClientInfo, Reply, Request, RetainedInfo, RouteInfo, SessionInfo,
    SubscriptionInfo, TraceLine, MAX_PAGE, TRACES_MAX, TRACE_MAX_DURATION, TRACE_MAX_PACKETS,
};
use crate::ListenerKind;
use bytes::{Bytes, BytesMut};
use shardmq_broker::rate::TokenBucket;
use shardmq_broker::session::{Close, Subscription};
use shardmq_broker::topic::filter_matches;
use shardmq_broker::Message;
use shardmq_codec::{ByteStr, Decoder, Packet, Protocol, PublishProperties, QoS, ReasonCode};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info};

/// Most slab entries one page request visits, matching or not: a filtered listing of a large
/// shard takes several calls, each bounded, rather than one long walk.
pub const SCAN_MAX: usize = 4096;

// A full page can come from one call's scan; traces are bounded in count, length and time.
const _: () = assert!(crate::mgmt::MAX_PAGE <= SCAN_MAX);
const _: () = assert!(crate::mgmt::TRACES_MAX > 0 && crate::mgmt::TRACE_MAX_PACKETS > 0);
const _: () = assert!(crate::mgmt::TRACE_MAX_DURATION.as_secs() > 0);

/// Clients traced on this shard.
#[derive(Default)]
pub struct Traces {
    by_client: ahash::AHashMap<ByteStr, Trace>,
}

/// One client's trace.
struct Trace {
    /// Recording stops then.
    until: Instant,
    /// Packets it may still record.
    remaining: usize,
    lines: VecDeque<TraceLine>,
    next_seq: u64,
    /// Decodes what the broker writes to the client (which reaches the driver as bytes).
    out: Option<(Decoder, BytesMut)>,
}

impl Trace {
    fn recording(&self, now: Instant) -> bool {
        self.remaining > 0 && now < self.until
    }

    fn record(&mut self, at: SystemTime, inbound: bool, packet: String) {
        self.next_seq += 1;
        assert!(
            self.remaining > 0,
            "a trace records only while packets remain"
        );
        self.remaining -= 1;
        self.lines.push_back(TraceLine {
            seq: self.next_seq,
            at,
            inbound,
            packet,
        });
    }
}

/// Describes a packet in one line, as a trace shows it.
pub fn describe(packet: &Packet) -> String {
    use std::fmt::Write;
    let mut s = String::from(packet.name());
    let _ = match packet {
        Packet::Connect(c) => write!(
            s,
            " clientid={} clean_start={} keepalive={} username={}",
            c.client_id,
            c.clean_start,
            c.keep_alive,
            c.username.as_deref().unwrap_or("-")
        ),
        Packet::ConnAck(a) => write!(
            s,
            " session_present={} code=0x{:02X}",
            a.session_present, a.code.0
        ),
        Packet::Publish(p) => write!(
            s,
            " topic={} qos={} id={} retain={} dup={} payload={} B",
            p.topic,
            p.qos as u8,
            p.pkid,
            p.retain,
            p.dup,
            p.payload.len()
        ),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write!(s, " id={} code=0x{:02X}", a.pkid, a.reason.0)
        }
        Packet::Subscribe(sub) => {
            let _ = write!(s, " id={}", sub.pkid);
            for f in &sub.filters {
                let _ = write!(s, " {}@{}", f.filter, f.options.qos as u8);
            }
            Ok(())
        }
        Packet::SubAck(a) => {
            let _ = write!(s, " id={} codes=", a.pkid);
            let codes: Vec<String> = a.reasons.iter().map(|r| format!("0x{:02X}", r.0)).collect();
            s.push_str(&codes.join(","));
            Ok(())
        }
        Packet::Unsubscribe(u) => {
            let _ = write!(s, " id={}", u.pkid);
            for f in &u.filters {
                let _ = write!(s, " {f}");
            }
            Ok(())
        }
        Packet::UnsubAck(a) => write!(s, " id={}", a.pkid),
        Packet::Disconnect(d) => write!(s, " code=0x{:02X}", d.reason.0),
        Packet::Auth(a) => write!(s, " code=0x{:02X}", a.reason.0),
        Packet::PingReq | Packet::PingResp => Ok(()),
    };
    s
}

fn listener_name(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Tcp => "mqtt",
        ListenerKind::Tls => "mqtts",
        ListenerKind::Ws => "ws",
        ListenerKind::Wss => "wss",
    }
}

fn subscription_info(client_id: &str, filter: &str, sub: &Subscription) -> SubscriptionInfo {
    SubscriptionInfo {
        client_id: client_id.to_string(),
        filter: filter.to_string(),
        qos: sub.options.qos,
        no_local: sub.options.no_local,
        retain_as_published: sub.options.retain_as_published,
        retain_handling: sub.options.retain_handling as u8,
        identifier: sub.id,
    }
}

/// Keeps the `limit` smallest keys greater than `after`; `more` once one more was seen.
struct Smallest<V> {
    after: Option<String>,
    limit: usize,
    kept: BTreeMap<String, V>,
    more: bool,
}

impl<V> Smallest<V> {
    fn new(after: Option<String>, limit: usize) -> Self {
        Smallest {
            after,
            limit: limit.clamp(1, MAX_PAGE),
            kept: BTreeMap::new(),
            more: false,
        }
    }

    fn wants(&self, key: &str) -> bool {
        if self.after.as_deref().is_some_and(|a| key <= a) {
            return false;
        }
        self.kept.len() < self.limit
            || self
                .kept
                .last_key_value()
                .is_some_and(|(last, _)| key < last.as_str())
    }

    fn offer(&mut self, key: String, value: V) {
        if self.after.as_deref().is_some_and(|a| key.as_str() <= a) {
            return;
        }
        if !self.wants(&key) {
            self.more = true;
            return;
        }
        self.kept.insert(key, value);
        if self.kept.len() > self.limit {
            self.kept.pop_last();
            self.more = true;
        }
    }
}

impl ShardCore {
    /// Answers one management request, on the shard's thread.
    pub fn handle_mgmt(&mut self, now: Instant, request: Request) -> Reply {
        let reply = match request {
            Request::Clients {
                after,
                limit,
                filter,
            } => self.list_clients(after, limit, &filter),
            Request::Client { client_id } => Reply::Client(
                self.client_info(&client_id)
                    .map(|(skey, info)| Box::new((info, self.subscriptions_of(skey)))),
            ),
            Request::Kick { client_id } => Reply::Done(self.kick(&client_id)),
            Request::Sessions {
                after,
                limit,
                client_id,
                connected,
            } => self.list_sessions(now, after, limit, client_id.as_deref(), connected),
            Request::Session { client_id } => Reply::Session(
                self.session_of(&client_id)
                    .map(|skey| self.session_info(now, skey)),
            ),
            Request::DeleteSession { client_id } => {
                Reply::Done(self.delete_session(now, &client_id))
            }
            Request::Subscriptions {
                after,
                limit,
                client_id,
                filter,
                matching,
            } => self.list_subscriptions(
                after,
                limit,
                client_id.as_deref(),
                filter.as_deref(),
                matching.as_deref(),
            ),
            Request::Routes {
                after,
                limit,
                matching,
            } => self.list_routes(after, limit, matching.as_deref()),
            Request::Retained {
                after,
                limit,
                filter,
            } => {
                let mut page = Smallest::new(after, limit);
                self.retained.for_each_match(&filter, |topic, msg| {
                    if page.wants(topic) {
                        page.offer(topic.to_string(), (msg.qos, msg.payload.len()));
                    } else if page.after.as_deref().is_none_or(|a| topic > a) {
                        page.more = true;
                    }
                });
                Reply::Retained {
                    items: page
                        .kept
                        .into_iter()
                        .map(|(topic, (qos, payload_bytes))| RetainedInfo {
                            topic,
                            qos,
                            payload_bytes,
                        })
                        .collect(),
                    more: page.more,
                }
            }
            Request::RetainedGet { topic } => {
                Reply::RetainedGet(self.retained.get(&topic).map(|msg| {
                    (
                        RetainedInfo {
                            topic: topic.clone(),
                            qos: msg.qos,
                            payload_bytes: msg.payload.len(),
                        },
                        msg.payload.clone(),
                    )
                }))
            }
            Request::Publish {
                topic,
                payload,
                qos,
                retain,
            } => {
                self.publish_as_broker(now, topic, payload, qos, retain);
                Reply::Done(true)
            }
            Request::TraceStart {
                client_id,
                duration,
                max_packets,
            } => self.trace_start(now, client_id, duration, max_packets),
            Request::TraceRead { client_id, after } => {
                let traces = self.traces.as_ref();
                match traces.and_then(|t| t.by_client.get(client_id.as_str())) {
                    None => Reply::Trace {
                        active: false,
                        lines: Vec::new(),
                    },
                    Some(t) => Reply::Trace {
                        active: t.recording(now),
                        lines: t
                            .lines
                            .iter()
                            .filter(|l| l.seq > after)
                            .take(MAX_PAGE)
                            .cloned()
                            .collect(),
                    },
                }
            }
            Request::Configure(settings) => {
                let s = *settings;
                info!(shard = self.id, max_connections = s.max_connections, max_connection_rate = s.max_connection_rate, sys_interval = ?s.sys_interval, "reloaded settings in force");
                self.limits = s.limits;
                self.max_connections = s.max_connections;
                self.connect_timeout = s.connect_timeout;
                self.sys_interval = s.sys_interval;
                self.connect_rate = (s.max_connection_rate > 0)
                    .then(|| TokenBucket::share_of(s.max_connection_rate, self.nshards));
                Reply::Done(true)
            }
            Request::Evacuate { refuse_with, send } => self.evacuate_step(refuse_with, &send),
            Request::EvacuateStop => Reply::Done(self.evacuate_stop()),
            Request::TraceStop { client_id } => {
                let removed = self
                    .traces
                    .as_mut()
                    .and_then(|t| t.by_client.remove(client_id.as_str()))
                    .is_some();
                if self.traces.as_ref().is_some_and(|t| t.by_client.is_empty()) {
                    self.traces = None;
                }
                Reply::Done(removed)
            }
        };
        self.drain_local(now);
        reply
    }

    /// The connected client `client_id`, if its session is here and attached.
    fn client_info(&self, client_id: &str) -> Option<(SessionKey, ClientInfo)> {
        let skey = self.session_of(client_id)?;
        let conn_key = self.sessions[skey].conn?;
        let conn = self.conns.get(conn_key)?;
        Some((skey, self.describe_client(conn, skey)?))
    }

    fn describe_client(&self, conn: &Conn, skey: SessionKey) -> Option<ClientInfo> {
        if conn.phase != Phase::Active {
            return None;
        }
        let slot = self.sessions.get(skey)?;
        let session = &slot.session;
        Some(ClientInfo {
            client_id: session.client_id().to_string(),
            username: conn.ident().and_then(|i| i.username.clone()),
            shard: self.id,
            address: conn.peer(),
            protocol: session.protocol(),
            keep_alive: session.conn_params().map_or(0, |p| p.keep_alive_secs),
            connected_at: SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::from(slot.connected_at)),
            clean_start: slot.clean_start,
            expiry_secs: session.expiry_secs(),
            inflight: session.inflight_len(),
            queued: session.queued_len(),
            subscriptions: session.subscriptions().count(),
            listener: listener_name(conn.listener),
        })
    }

    fn list_clients(&self, after: Option<usize>, limit: usize, filter: &ClientFilter) -> Reply {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = after.map_or(0, |a| a + 1);
        let mut items = Vec::new();
        let mut last = None;
        let mut exhausted = true;
        for (scanned, (key, conn)) in self.conns.iter_from(start).enumerate() {
            if items.len() == limit || scanned == SCAN_MAX {
                exhausted = false;
                break;
            }
            last = Some(key);
            let Some(info) = conn.session().and_then(|s| self.describe_client(conn, s)) else {
                continue;
            };
            if filter
                .client_id
                .as_deref()
                .is_some_and(|f| !info.client_id.contains(f))
                || filter
                    .username
                    .as_deref()
                    .is_some_and(|u| info.username.as_deref() != Some(u))
                || filter.address.as_deref().is_some_and(|a| {
                    !info
                        .address
                        .is_some_and(|addr| addr.to_string().contains(a))
                })
            {
                continue;
            }
            items.push(info);
        }
        Reply::Clients {
            items,
            next: if exhausted { None } else { last },
        }
    }

    fn session_info(&self, now: Instant, skey: SessionKey) -> SessionInfo {
        let slot = &self.sessions[skey];
        let session = &slot.session;
        SessionInfo {
            client_id: session.client_id().to_string(),
            shard: self.id,
            connected: slot.conn.is_some(),
            expiry_secs: session.expiry_secs(),
            expires_in_secs: slot
                .expires_at
                .filter(|_| slot.conn.is_none())
                .map(|at| at.saturating_duration_since(now).as_secs()),
            subscriptions: session.subscriptions().count(),
            inflight: session.inflight_len(),
            queued: session.queued_len(),
        }
    }

    fn list_sessions(
        &self,
        now: Instant,
        after: Option<usize>,
        limit: usize,
        client_id: Option<&str>,
        connected: Option<bool>,
    ) -> Reply {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = after.map_or(0, |a| a + 1);
        let mut items = Vec::new();
        let mut last = None;
        let mut exhausted = true;
        for (scanned, (key, slot)) in self.sessions.iter_from(start).enumerate() {
            if items.len() == limit || scanned == SCAN_MAX {
                exhausted = false;
                break;
            }
            last = Some(key);
            if connected.is_some_and(|c| c != slot.conn.is_some())
                || client_id.is_some_and(|c| !slot.session.client_id().contains(c))
            {
                continue;
            }
            items.push(self.session_info(now, key));
        }
        Reply::Sessions {
            items,
            next: if exhausted { None } else { last },
        }
    }

    fn subscriptions_of(&self, skey: SessionKey) -> Vec<SubscriptionInfo> {
        let session = &self.sessions[skey].session;
        let id = session.client_id();
        let mut subs: Vec<SubscriptionInfo> = session
            .subscriptions()
            .map(|(filter, sub)| subscription_info(id, filter, sub))
            .collect();
        subs.sort_by(|a, b| a.filter.cmp(&b.filter));
        subs
    }

    fn list_subscriptions(
        &self,
        after: Option<(usize, usize)>,
        limit: usize,
        client_id: Option<&str>,
        filter: Option<&str>,
        matching: Option<&str>,
    ) -> Reply {
        let limit = limit.clamp(1, MAX_PAGE);
        let wanted = |f: &str| {
            filter.is_none_or(|x| x == f) && matching.is_none_or(|topic| filter_matches(f, topic))
        };
        if let Some(id) = client_id {
            // One session: its subscriptions sorted, paged by position.
            let Some(skey) = self.session_of(id) else {
                return Reply::Subscriptions {
                    items: Vec::new(),
                    next: None,
                };
            };
            let skip = after.map_or(0, |(_, n)| n);
            let all: Vec<SubscriptionInfo> = self
                .subscriptions_of(skey)
                .into_iter()
                .filter(|s| wanted(&s.filter))
                .collect();
            let end = (skip + limit).min(all.len());
            let next = (end < all.len()).then_some((skey, end));
            return Reply::Subscriptions {
                items: all.get(skip..end).unwrap_or_default().to_vec(),
                next,
            };
        }
        let (start, mut skip) = after.unwrap_or((0, 0));
        let mut items = Vec::new();
        let mut scanned = 0;
        for (key, slot) in self.sessions.iter_from(start) {
            if key != start {
                skip = 0;
            }
            let session = &slot.session;
            for (pos, (f, sub)) in session.subscriptions().enumerate().skip(skip) {
                if items.len() == limit || scanned == SCAN_MAX {
                    return Reply::Subscriptions {
                        items,
                        next: Some((key, pos)),
                    };
                }
                scanned += 1;
                if wanted(f) {
                    items.push(subscription_info(session.client_id(), f, sub));
                }
            }
            scanned += 1;
        }
        Reply::Subscriptions { items, next: None }
    }

    fn list_routes(&self, after: Option<String>, limit: usize, matching: Option<&str>) -> Reply {
        let mut page: Smallest<(bool, Vec<u64>)> = Smallest::new(after, limit);
        let wanted = |f: &str| matching.is_none_or(|topic| filter_matches(f, topic));
        for (filter, _) in self.routes.iter() {
            if wanted(&filter) {
                page.offer(filter, (true, Vec::new()));
            }
        }
        if let Some(c) = &self.cluster {
            for (filter, nodes) in c.remote.iter() {
                if !wanted(&filter) {
                    continue;
                }
                if let Some(entry) = page.kept.get_mut(&filter) {
                    entry.1 = nodes.to_vec();
                } else {
                    page.offer(filter, (false, nodes.to_vec()));
                }
            }
        }
        Reply::Routes {
            items: page
                .kept
                .into_iter()
                .map(|(filter, (local, nodes))| RouteInfo {
                    filter,
                    local,
                    nodes,
                })
                .collect(),
            more: page.more,
        }
    }

    /// Closes the client's connection (v5: DISCONNECT 0x98); its session stays.
    fn kick(&mut self, client_id: &str) -> bool {
        let Some(conn) = self
            .session_of(client_id)
            .and_then(|s| self.sessions[s].conn)
        else {
            return false;
        };
        info!(
            shard = self.id,
            client_id, "client kicked through the management API"
        );
        self.close_conn(
            conn,
            Close {
                reason: ReasonCode::ADMINISTRATIVE_ACTION,
                why: "kicked by an administrator",
            },
        );
        true
    }

    /// Ends the session: a connected client is closed first (no will), and the session ends
    /// when its connection does.
    fn delete_session(&mut self, now: Instant, client_id: &str) -> bool {
        let Some(skey) = self.session_of(client_id) else {
            return false;
        };
        info!(
            shard = self.id,
            client_id, "session deleted through the management API"
        );
        self.delayed_wills.cancel(client_id);
        let slot = &mut self.sessions[skey];
        slot.session.take_will();
        slot.session.set_expiry_secs(0);
        match slot.conn {
            Some(conn) => {
                self.conns[conn].graceful = Some(false);
                self.close_conn(
                    conn,
                    Close {
                        reason: ReasonCode::ADMINISTRATIVE_ACTION,
                        why: "session deleted by an administrator",
                    },
                );
            }
            None => {
                self.journal_flush(now, skey);
                self.end_session(skey);
            }
        }
        true
    }

    /// Routes a message from nobody (`$SYS`-style): to this node's subscribers and the
    /// cluster's, retained if asked.
    fn publish_as_broker(
        &mut self,
        now: Instant,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) {
        debug!(
            shard = self.id,
            topic,
            qos = qos as u8,
            retain,
            "publish through the management API"
        );
        let msg = Message {
            topic: ByteStr::from(topic),
            payload,
            qos,
            retain,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: ByteStr::default(),
        };
        self.route(now, Arc::new(msg));
    }

    fn trace_start(
        &mut self,
        now: Instant,
        client_id: String,
        duration: Duration,
        max_packets: usize,
    ) -> Reply {
        let traces = self.traces.get_or_insert_with(Default::default);
        if traces.by_client.len() >= TRACES_MAX
            && !traces.by_client.contains_key(client_id.as_str())
        {
            return Reply::Refused(format!(
                "{TRACES_MAX} clients are traced already: stop one first"
            ));
        }
        let protocol = self
            .session_of(&client_id)
            .map(|s| self.sessions[s].session.protocol());
        let traces = self.traces.get_or_insert_with(Default::default);
        traces.by_client.insert(
            ByteStr::from(client_id),
            Trace {
                until: now + duration.min(TRACE_MAX_DURATION),
                remaining: max_packets.clamp(1, TRACE_MAX_PACKETS),
                lines: VecDeque::new(),
                next_seq: 0,
                out: protocol.map(|p| (Decoder::with_protocol(p, u32::MAX), BytesMut::new())),
            },
        );
        Reply::Done(true)
    }

    /// The client id of the connection at `key`, for a trace: its session's, or the CONNECT's.
    fn traced_id(&self, key: usize, packet: Option<&Packet>) -> Option<ByteStr> {
        let conn = self.conns.get(key)?;
        match (conn.session(), packet) {
            (Some(s), _) => Some(self.sessions.get(s)?.session.client_id().clone()),
            (None, Some(Packet::Connect(c))) => Some(c.client_id.clone()),
            _ => None,
        }
    }

    /// Records `packet` from the connection at `key` if its client is traced.
    pub fn trace_in(&mut self, now: Instant, key: usize, packet: &Packet) {
        let Some(id) = self.traced_id(key, Some(packet)) else {
            return;
        };
        let wall = self.wall(now);
        let Some(t) = self.traces.as_mut().and_then(|t| t.by_client.get_mut(&id)) else {
            return;
        };
        if let Packet::Connect(c) = packet {
            t.out = Some((
                Decoder::with_protocol(c.protocol, u32::MAX),
                BytesMut::new(),
            ));
        }
        if t.recording(now) {
            t.record(wall, true, describe(packet));
        }
    }

    /// Records the packets in `bytes`, which the driver takes from the connection's write
    /// buffer at `key`, if its client is traced.
    pub fn trace_out(&mut self, now: Instant, key: usize, bytes: &[u8]) {
        let Some(id) = self.traced_id(key, None) else {
            return;
        };
        let protocol = self.conns[key].protocol.unwrap_or(Protocol::V3_1_1);
        let wall = self.wall(now);
        let Some(t) = self.traces.as_mut().and_then(|t| t.by_client.get_mut(&id)) else {
            return;
        };
        if !t.recording(now) {
            return;
        }
        let (decoder, pending) = t
            .out
            .get_or_insert_with(|| (Decoder::with_protocol(protocol, u32::MAX), BytesMut::new()));
        pending.extend_from_slice(bytes);
        let mut described = Vec::new();
        loop {
            match decoder.decode(pending) {
                Ok(Some(packet)) => described.push(describe(&packet)),
                Ok(None) => break,
                Err(e) => {
                    described.push(format!("(undecodable output: {e})"));
                    pending.clear();
                    break;
                }
            }
        }
        for line in described {
            if !t.recording(now) {
                break;
            }
            t.record(wall, false, line);
        }
    }

    /// Forgets traces that ended more than [`TRACE_MAX_DURATION`] ago (housekeeping).
    pub fn expire_traces(&mut self, now: Instant) {
        let Some(traces) = &mut self.traces else {
            return;
        };
        traces
            .by_client
            .retain(|_, t| now < t.until + TRACE_MAX_DURATION);
        if traces.by_client.is_empty() {
            self.traces = None;
        }
    }
}
