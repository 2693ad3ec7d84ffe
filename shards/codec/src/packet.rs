//! The fifteen MQTT control packets and their MQTT 5.0 properties, as plain data.
//!
//! One struct per packet; properties are per packet so that a type holds exactly the properties
//! the spec allows on it. MQTT 3.x packets use the same types with empty properties and
//! `ReasonCode::SUCCESS` where 3.x carries no reason.

use crate::types::{ByteStr, Protocol, QoS, ReasonCode, RetainHandling};
use bytes::Bytes;
use smallvec::SmallVec;

/// User Property pairs (0x26), in the order received; names may repeat.
pub type UserProperties = Vec<(ByteStr, ByteStr)>;

/// Any MQTT control packet. The three large bodies (CONNECT, CONNACK, PUBLISH: 232–440 B) are
/// boxed, so that a packet is 136 B and moving one through the decoder, the shard and the
/// session copies a pointer, not the body (the moves were ~10 % of a shard's CPU at QoS 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// 1: client asks to connect.
    Connect(Box<Connect>),
    /// 2: server answers CONNECT.
    ConnAck(Box<ConnAck>),
    /// 3: an application message.
    Publish(Box<Publish>),
    /// 4: QoS 1 acknowledgement.
    PubAck(Ack),
    /// 5: QoS 2, part 1.
    PubRec(Ack),
    /// 6: QoS 2, part 2.
    PubRel(Ack),
    /// 7: QoS 2, part 3.
    PubComp(Ack),
    /// 8: client subscribes.
    Subscribe(Subscribe),
    /// 9: server answers SUBSCRIBE.
    SubAck(SubAck),
    /// 10: client unsubscribes.
    Unsubscribe(Unsubscribe),
    /// 11: server answers UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// 12: keep-alive ping.
    PingReq,
    /// 13: keep-alive answer.
    PingResp,
    /// 14: either side ends the connection.
    Disconnect(Disconnect),
    /// 15: MQTT 5.0 enhanced authentication exchange.
    Auth(Auth),
}

impl Packet {
    /// The control packet type, 1..=15, as in the fixed header.
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }

    /// Human name of the packet type, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name and level together.
    pub protocol: Protocol,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty.
    pub client_id: ByteStr,
    /// Will message, if the Will Flag is set.
    pub will: Option<LastWill>,
    /// User Name, if its flag is set.
    pub username: Option<ByteStr>,
    /// Password, if its flag is set (binary data).
    pub password: Option<Bytes>,
    /// MQTT 5.0 CONNECT properties.
    pub properties: ConnectProperties,
}

/// The Will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will Topic.
    pub topic: ByteStr,
    /// Will Payload (binary).
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// MQTT 5.0 Will properties.
    pub properties: WillProperties,
}

/// CONNECT properties (§3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum; 0 is a protocol error.
    pub receive_maximum: Option<u16>,
    /// 0x27 Maximum Packet Size; 0 is a protocol error.
    pub maximum_packet_size: Option<u32>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19 Request Response Information (0 or 1).
    pub request_response_information: Option<u8>,
    /// 0x17 Request Problem Information (0 or 1).
    pub request_problem_information: Option<u8>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// Will properties (§3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x01 Payload Format Indicator (0 or 1).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteStr>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteStr>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
}

/// CONNACK (§3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// Connect Reason Code; on 3.x encoded through `ReasonCode::to_v3_connack`.
    pub code: ReasonCode,
    /// MQTT 5.0 CONNACK properties.
    pub properties: ConnAckProperties,
}

/// CONNACK properties (§3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// 0x11 Session Expiry Interval.
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1).
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available.
    pub retain_available: Option<bool>,
    /// 0x27 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteStr>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
    /// 0x13 Server Keep Alive.
    pub server_keep_alive: Option<u16>,
    /// 0x1A Response Information.
    pub response_information: Option<ByteStr>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteStr>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name; may be empty in 5.0 when a Topic Alias stands for it.
    pub topic: ByteStr,
    /// Packet Identifier; 0 for QoS 0 (and absent on the wire), non-zero otherwise.
    pub pkid: u16,
    /// MQTT 5.0 PUBLISH properties.
    pub properties: PublishProperties,
    /// Application payload, zero-copy.
    pub payload: Bytes,
}

/// A PUBLISH to write from borrowed parts: a delivery of a stored message. Its topic, payload
/// and properties are the message's; the three properties a broker sets per delivery (Message
/// Expiry Interval, Topic Alias, Subscription Identifiers) are given here and replace the
/// message's own. Encodes to the same bytes as the [`Publish`] with those fields set, without
/// building one (no clone of the topic, payload or properties): the broker's delivery path.
#[derive(Debug, Clone, Copy)]
pub struct PublishOut<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name; empty when `topic_alias` stands for it (5.0).
    pub topic: &'a str,
    /// Packet Identifier; ignored for QoS 0.
    pub pkid: u16,
    /// The message's properties, written for 5.0 but for the three below.
    pub properties: &'a PublishProperties,
    /// 0x02 Message Expiry Interval, seconds left.
    pub message_expiry_interval: Option<u32>,
    /// 0x23 Topic Alias.
    pub topic_alias: Option<u16>,
    /// 0x0B Subscription Identifiers of the matching subscriptions.
    pub subscription_identifiers: &'a [u32],
    /// Application payload.
    pub payload: &'a [u8],
}

/// PUBLISH properties (§3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// 0x01 Payload Format Indicator (0 bytes, 1 UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x23 Topic Alias; 0 is a protocol error.
    pub topic_alias: Option<u16>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteStr>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
    /// 0x0B Subscription Identifiers (server → client only; may repeat).
    pub subscription_identifiers: SmallVec<[u32; 1]>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteStr>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one layout (§3.4–§3.7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// Packet Identifier.
    pub pkid: u16,
    /// Reason Code; `SUCCESS` when omitted on the wire.
    pub reason: ReasonCode,
    /// Reason String and User Properties.
    pub properties: AckProperties,
}

/// The properties every acknowledgement may carry: Reason String and User Properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
}

/// Subscription Options byte (§3.8.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// Topic Filter; the codec checks UTF-8 only, the broker checks wildcard placement.
    pub filter: ByteStr,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub pkid: u16,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
    /// MQTT 5.0 SUBSCRIBE properties.
    pub properties: SubscribeProperties,
}

/// SUBSCRIBE properties (§3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// 0x0B Subscription Identifier, 1..=268,435,455.
    pub subscription_identifier: Option<u32>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
}

/// SUBACK (§3.9).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier.
    pub pkid: u16,
    /// One per filter: granted QoS or failure (3.x encodes any failure as 0x80).
    pub reasons: Vec<ReasonCode>,
    /// Reason String and User Properties.
    pub properties: AckProperties,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub pkid: u16,
    /// At least one filter.
    pub filters: Vec<ByteStr>,
    /// MQTT 5.0 User Properties.
    pub properties: UnsubscribeProperties,
}

/// UNSUBSCRIBE properties (§3.10.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
}

/// UNSUBACK (§3.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier.
    pub pkid: u16,
    /// One per filter in 5.0; empty (not on the wire) in 3.x.
    pub reasons: Vec<ReasonCode>,
    /// Reason String and User Properties.
    pub properties: AckProperties,
}

/// DISCONNECT (§3.14).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Disconnect Reason Code (5.0); `NORMAL_DISCONNECTION` in 3.x.
    pub reason: ReasonCode,
    /// MQTT 5.0 DISCONNECT properties.
    pub properties: DisconnectProperties,
}

/// DISCONNECT properties (§3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// 0x11 Session Expiry Interval (client → server only).
    pub session_expiry_interval: Option<u32>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteStr>,
}

/// AUTH (§3.15), MQTT 5.0 only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Authenticate Reason Code: 0x00, 0x18 or 0x19.
    pub reason: ReasonCode,
    /// AUTH properties.
    pub properties: AuthProperties,
}

/// AUTH properties (§3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Properties.
    pub user_properties: UserProperties,
}
