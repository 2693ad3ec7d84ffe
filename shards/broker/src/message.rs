//! An application message as the broker routes it: decoded once, shared by every receiver.

use bytes::Bytes;
use shardmq_codec::{ByteStr, PublishProperties, QoS};
use std::sync::Arc;
use std::time::Instant;

/// A routed message. Shared as `Arc<Message>` between shards and sessions; never mutated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (aliases already resolved).
    pub topic: ByteStr,
    /// Payload, zero-copy from the publisher's read buffer (or detached when stored for long).
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Properties forwarded to subscribers (topic alias and subscription identifiers removed).
    pub properties: PublishProperties,
    /// When the message expires (from Message Expiry Interval), if it does.
    pub expires_at: Option<Instant>,
    /// Client identifier of the publisher, for No Local; empty for broker-made messages.
    pub publisher: ByteStr,
}

impl Message {
    /// True once `now` is at or past the expiry time.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// Seconds left before expiry, rounded up, for the forwarded Message Expiry Interval.
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.clamp(1, u64::from(u32::MAX)) as u32
        })
    }

    /// A copy whose topic and payload own their memory, so storing it for long does not pin the
    /// read buffer it was decoded from.
    pub fn detached(&self) -> Arc<Message> {
        let mut m = self.clone();
        m.topic = self.topic.detach();
        m.payload = Bytes::copy_from_slice(&self.payload);
        Arc::new(m)
    }
}
