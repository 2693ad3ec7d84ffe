//! `$SYS` figures: this shard's, and on shard 0 the node's totals.

use super::*;

impl ShardCore {
    /// Publishes this shard's `$SYS` figures as retained messages and sends its snapshot to
    /// shard 0; shard 0 then publishes the node's totals from the latest snapshot of every
    /// shard. `wall` is the wall-clock time for `datetime`.
    pub fn publish_sys(&mut self, now: Instant, wall: SystemTime) {
        let figures = self.figures();
        let base = format!("$SYS/brokers/{}/shards/{}", self.cfg.node_name, self.id);
        let uptime = now.duration_since(self.started);
        let per_shard = [
            ("connections", figures.connections),
            ("sessions", figures.sessions),
            ("subscriptions", figures.subscriptions),
            ("messages/received", figures.messages_received),
            ("messages/sent", figures.messages_sent),
            ("messages/dropped", figures.messages_dropped),
            ("bytes/received", figures.bytes_received),
            ("bytes/sent", figures.bytes_sent),
            ("uptime_secs", uptime.as_secs()),
        ];
        for (name, value) in per_shard {
            self.publish_sys_topic(now, format!("{base}/{name}"), value.to_string());
        }
        let me = self.id;
        self.send(0, ShardMsg::Figures { shard: me, figures });
        self.drain_local(now);
        let Some(node) = &mut self.node_figures else {
            return;
        };
        let Some(totals) = node.totals() else {
            return;
        };
        let max = node.connections_max();
        let name = self.cfg.node_name.clone();
        self.publish_sys_topic(now, "$SYS/brokers".to_string(), name.clone());
        for (topic, value) in crate::sys::node_topics(&totals, max, uptime, wall) {
            self.publish_sys_topic(now, format!("$SYS/brokers/{name}/{topic}"), value);
        }
        self.drain_local(now);
    }

    /// This shard's `$SYS` snapshot.
    pub(super) fn figures(&self) -> ShardFigures {
        ShardFigures {
            connections: self.conns.len() as u64,
            sessions: self.sessions.len() as u64,
            subscriptions: self.stats.subscriptions,
            topics: self.routes.len() as u64,
            retained: self.retained.len() as u64,
            messages_received: self.stats.messages_in,
            messages_sent: self.stats.messages_out,
            messages_dropped: self.stats.messages_dropped,
            bytes_received: self.stats.bytes_in,
            bytes_sent: self.stats.bytes_out,
        }
    }

    /// This shard's figures now, for the board the management API reads.
    pub fn post_figures(&self) -> ShardFigures {
        self.figures()
    }

    /// A shard's snapshot arrived (shard 0 only).
    pub(super) fn record_figures(&mut self, shard: ShardId, figures: ShardFigures) {
        self.node_figures
            .as_mut()
            .expect("$SYS snapshots go to shard 0")
            .record(shard, figures);
    }

    pub(super) fn publish_sys_topic(&mut self, now: Instant, topic: String, payload: String) {
        let msg = Message {
            topic: ByteStr::from(topic),
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: ByteStr::default(),
        };
        self.route(now, Arc::new(msg));
    }
}
