//! Per-listener MQTT limits. Every queue and window in a session is bounded by one of these.

/// The limits a shard enforces on each client. Relations between them are asserted by
/// [`Limits::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet accepted from a client, bytes (advertised as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Longest client identifier accepted, bytes.
    pub max_client_id_len: usize,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement per session.
    pub max_inflight: u16,
    /// Messages queued per session beyond the inflight window (offline or window full).
    pub max_queued_messages: usize,
    /// Incoming QoS 2 messages awaiting PUBREL (advertised as Receive Maximum).
    pub max_awaiting_rel: u16,
    /// Levels a topic name or filter may have.
    pub max_topic_levels: usize,
    /// Subscriptions per client; 0 means unlimited.
    pub max_subscriptions: usize,
    /// Cap on the session expiry interval a client may ask for, seconds.
    pub session_expiry_max_secs: u32,
    /// Cap on the keep-alive an MQTT 5.0 client may ask for, seconds (announced as Server Keep
    /// Alive). 3.x clients cannot be told, so their keep-alive is used as asked.
    pub max_keepalive_secs: u16,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Outbound bytes buffered per connection; beyond it QoS 0 messages are dropped.
    pub max_write_buffer_bytes: usize,
    /// Topic aliases a client may set per connection (announced as CONNACK Topic Alias
    /// Maximum); 0 refuses aliases.
    pub max_topic_alias: u16,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_packet_size: 1024 * 1024,
            max_client_id_len: 65535,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_awaiting_rel: 100,
            max_topic_levels: 128,
            max_subscriptions: 0,
            session_expiry_max_secs: u32::MAX,
            max_keepalive_secs: u16::MAX,
            retain_available: true,
            max_write_buffer_bytes: 1024 * 1024,
            max_topic_alias: 65535,
        }
    }
}

impl Limits {
    /// Checks the relations between limits; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_packet_size < 2 || self.max_packet_size > 268_435_460 {
            return Err("mqtt.max_packet_size must be within 2..=268435460".into());
        }
        if self.max_inflight == 0 {
            return Err("mqtt.max_inflight must be at least 1".into());
        }
        if self.max_awaiting_rel == 0 {
            return Err("mqtt.max_awaiting_rel must be at least 1".into());
        }
        if self.max_topic_levels == 0 {
            return Err("mqtt.max_topic_levels must be at least 1".into());
        }
        if self.max_write_buffer_bytes < 1024 {
            return Err("mqtt.max_write_buffer_bytes must be at least 1024".into());
        }
        Ok(())
    }
}
