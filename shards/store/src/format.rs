//! The on-disk format: segment header, record frames, record bodies.
//!
//! # Segment file `NNNNNNNN.log` (little-endian throughout)
//! ```text
//! header (48 bytes):
//!   0  magic      8  b"SHARDMQS"
//!   8  version    2  FORMAT_VERSION (1)
//!  10  header_len 2  48
//!  12  shard      4  shard id that wrote it
//!  16  generation 8  start-up generation it belongs to (see crate docs)
//!  24  seq        8  segment number (equals the file name)
//!  32  base_lsn   8  LSN of its first record
//!  40  reserved   4  0
//!  44  crc        4  CRC32C of bytes 0..44
//! frames, back to back:
//!   len u32 | crc u32 | kind u8 | body (len - 1 bytes)
//!   crc = CRC32C(lsn as u64 LE ++ kind ++ body); a record's LSN is base_lsn + its index in
//!   the segment, so a frame copied to the wrong place fails its check.
//! ```
//! Bodies use LEB128 varints for integers and lengths. Messages embed an MQTT 5.0 PUBLISH
//! image and wills an MQTT 5.0 CONNECT image written by `shardmq-codec`, so every property
//! round-trips through the one encoder the broker already uses.

use crate::error::DecodeError;
use crate::record::*;
use bytes::{BufMut, Bytes, BytesMut};
use shardmq_codec::{
    encode, ByteStr, Connect, ConnectProperties, Decoder, LastWill, Packet, Protocol, Publish, QoS,
    RetainHandling, SubscriptionOptions,
};
use smallvec::SmallVec;
use std::collections::VecDeque;

/// Segment file magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHARDMQS";
/// Current segment format version.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 48;
/// Bytes of a frame header (length + checksum).
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest record body accepted (kind byte included). An MQTT packet is at most 256 MiB;
/// a session image is bounded by the broker's queue and inflight limits.
pub const RECORD_LEN_MAX: usize = 512 << 20;

/// The fixed header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u16,
    /// Shard that wrote the segment.
    pub shard: u32,
    /// Start-up generation the segment belongs to.
    pub generation: u64,
    /// Segment number.
    pub seq: SegmentSeq,
    /// LSN of the first record.
    pub base_lsn: Lsn,
}

/// Why a segment header was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Short,
    BadMagicOrCrc,
    Version(u16),
}

impl SegmentHeader {
    /// Appends the 48 header bytes.
    pub fn write(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_slice(&SEGMENT_MAGIC);
        out.put_u16_le(self.version);
        out.put_u16_le(SEGMENT_HEADER_LEN as u16);
        out.put_u32_le(self.shard);
        out.put_u64_le(self.generation);
        out.put_u64_le(self.seq);
        out.put_u64_le(self.base_lsn);
        out.put_u32_le(0);
        let crc = crc32c::crc32c(&out[start..]);
        out.put_u32_le(crc);
        debug_assert_eq!(out.len() - start, SEGMENT_HEADER_LEN);
    }

    pub(crate) fn read(buf: &[u8]) -> std::result::Result<SegmentHeader, HeaderError> {
        if buf.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Short);
        }
        let h = &buf[..SEGMENT_HEADER_LEN];
        let crc = u32::from_le_bytes(h[44..48].try_into().unwrap());
        if h[..8] != SEGMENT_MAGIC || crc32c::crc32c(&h[..44]) != crc {
            return Err(HeaderError::BadMagicOrCrc);
        }
        let version = u16::from_le_bytes(h[8..10].try_into().unwrap());
        if version == 0 || version > FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(SegmentHeader {
            version,
            shard: u32::from_le_bytes(h[12..16].try_into().unwrap()),
            generation: u64::from_le_bytes(h[16..24].try_into().unwrap()),
            seq: u64::from_le_bytes(h[24..32].try_into().unwrap()),
            base_lsn: u64::from_le_bytes(h[32..40].try_into().unwrap()),
        })
    }
}

/// Appends one framed record (frame header + kind + body) with LSN `lsn` to `out`; returns
/// the frame's length in bytes.
pub fn encode_record(record: &Record, lsn: Lsn, out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u64_le(0); // frame header, filled below
    write_body(record, out);
    let len = out.len() - start - FRAME_HEADER_LEN;
    assert!(
        len <= RECORD_LEN_MAX,
        "record of {len} bytes over RECORD_LEN_MAX"
    );
    let mut crc = crc32c::crc32c(&lsn.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Appends the frames of `records`, numbered from `first_lsn`, to `out`; returns the LSN after
/// the last one.
pub fn encode_batch(records: &[Record], first_lsn: Lsn, out: &mut BytesMut) -> Lsn {
    let mut lsn = first_lsn;
    for r in records {
        encode_record(r, lsn, out);
        lsn += 1;
    }
    lsn
}

/// Decodes every frame of `buf`, numbered from `first_lsn` (what [`encode_batch`] wrote), all
/// or nothing: a frame cut short or with a bad checksum, or a record that does not decode, is
/// an error. For records that travel instead of being stored (a session moving to another node).
pub fn decode_batch(buf: &[u8], first_lsn: Lsn) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut rest = buf;
    let mut lsn = first_lsn;
    loop {
        match read_frame(rest, lsn) {
            Frame::End => return Ok(records),
            Frame::Good { payload, len } => {
                records.push(decode_record(payload)?);
                rest = &rest[len..];
                lsn += 1;
            }
            Frame::Incomplete => return Err(DecodeError::Truncated),
            Frame::BadChecksum { .. } => return Err(DecodeError::BadValue("frame checksum")),
        }
    }
}

/// What the frame at the front of a buffer is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A frame whose checksum matched: kind + body, and its total length.
    Good { payload: &'a [u8], len: usize },
    /// No more frames: the buffer is empty.
    End,
    /// The frame runs past the end of the buffer (or its length is impossible).
    Incomplete,
    /// The checksum does not match; `len` is the length the frame claims.
    BadChecksum { len: usize },
}

pub(crate) fn read_frame(buf: &[u8], lsn: Lsn) -> Frame<'_> {
    if buf.is_empty() {
        return Frame::End;
    }
    if buf.len() < FRAME_HEADER_LEN {
        return Frame::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if len == 0 || len > RECORD_LEN_MAX || buf.len() - FRAME_HEADER_LEN < len {
        return Frame::Incomplete;
    }
    let payload = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
    let got = crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), payload);
    if got != crc {
        return Frame::BadChecksum { len };
    }
    Frame::Good {
        payload,
        len: FRAME_HEADER_LEN + len,
    }
}

// Record kinds. Never renumber: they are on disk.
const K_MESSAGE_PUT: u8 = 1;
const K_RETAINED_SET: u8 = 2;
const K_RETAINED_CLEAR: u8 = 3;
const K_SESSION_IMAGE: u8 = 4;
const K_SESSION_DELETE: u8 = 5;
const K_ATTACHED: u8 = 6;
const K_DETACHED: u8 = 7;
const K_EXPIRY: u8 = 8;
const K_WILL_CLEARED: u8 = 9;
const K_SUBSCRIBED: u8 = 10;
const K_UNSUBSCRIBED: u8 = 11;
const K_ENQUEUED: u8 = 12;
const K_SENT: u8 = 13;
const K_DROPPED: u8 = 14;
const K_RELEASED: u8 = 15;
const K_COMPLETED: u8 = 16;
const K_REL_AWAITED: u8 = 17;
const K_REL_DONE: u8 = 18;

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

fn put_str(out: &mut BytesMut, s: &ByteStr) {
    put_bytes(out, s.as_str().as_bytes());
}

fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    match v {
        None => out.put_u8(0),
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v);
        }
    }
}

fn options_byte(o: SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn protocol_byte(p: Protocol) -> u8 {
    p.level()
}

fn put_delivery(out: &mut BytesMut, d: &StoredDelivery) {
    put_varint(out, d.seq);
    put_varint(out, d.message);
    out.put_u8(d.qos as u8 | u8::from(d.retain) << 2 | u8::from(d.shared.is_some()) << 3);
    put_varint(out, d.sub_ids.len() as u64);
    for id in &d.sub_ids {
        put_varint(out, u64::from(*id));
    }
    if let Some(s) = &d.shared {
        put_str(out, s);
    }
}

fn put_subscription(out: &mut BytesMut, filter: &ByteStr, s: &StoredSubscription) {
    put_str(out, filter);
    out.put_u8(options_byte(s.options));
    put_varint(out, s.id.map_or(0, |id| u64::from(id) + 1));
}

/// The will as an MQTT 5.0 CONNECT image (client id empty), written by the codec.
fn put_will(out: &mut BytesMut, will: &LastWill) {
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: ByteStr::default(),
        will: Some(will.clone()),
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }));
    let mut image = BytesMut::new();
    encode(&connect, Protocol::V5, &mut image);
    put_bytes(out, &image);
}

fn put_opt_will(out: &mut BytesMut, will: &Option<Box<LastWill>>) {
    match will {
        None => out.put_u8(0),
        Some(w) => {
            out.put_u8(1);
            put_will(out, w);
        }
    }
}

fn put_session(out: &mut BytesMut, s: &StoredSession) {
    put_str(out, &s.client_id);
    out.put_u8(protocol_byte(s.protocol));
    put_varint(out, u64::from(s.expiry_secs));
    put_opt_u64(out, s.disconnected_at_unix_ms);
    put_varint(out, s.updated_unix_ms);
    put_varint(out, s.last_seq);
    put_varint(out, s.subscriptions.len() as u64);
    for (f, sub) in &s.subscriptions {
        put_subscription(out, f, sub);
    }
    put_varint(out, s.inflight.len() as u64);
    for i in &s.inflight {
        out.put_u16_le(i.pkid);
        out.put_u8(u8::from(i.released));
        put_delivery(out, &i.delivery);
    }
    put_varint(out, s.queue.len() as u64);
    for d in &s.queue {
        put_delivery(out, d);
    }
    put_varint(out, s.awaiting_rel.len() as u64);
    for p in &s.awaiting_rel {
        out.put_u16_le(*p);
    }
    put_opt_will(out, &s.will);
}

fn write_body(record: &Record, out: &mut BytesMut) {
    match record {
        Record::MessagePut { id, message } => {
            out.put_u8(K_MESSAGE_PUT);
            put_varint(out, *id);
            put_opt_u64(out, message.expires_at_unix_ms);
            put_str(out, &message.publisher);
            // The rest of the body: the message as an MQTT 5.0 PUBLISH.
            let publish = Publish {
                dup: false,
                qos: message.qos,
                retain: message.retain,
                topic: message.topic.clone(),
                pkid: if message.qos == QoS::AtMostOnce { 0 } else { 1 },
                properties: message.properties.clone(),
                payload: message.payload.clone(),
            };
            encode(&Packet::Publish(Box::new(publish)), Protocol::V5, out);
        }
        Record::RetainedSet {
            topic,
            message,
            at_unix_ns,
        } => {
            out.put_u8(K_RETAINED_SET);
            put_str(out, topic);
            put_varint(out, *message);
            out.put_u64_le(*at_unix_ns);
        }
        Record::RetainedClear { topic, at_unix_ns } => {
            out.put_u8(K_RETAINED_CLEAR);
            put_str(out, topic);
            out.put_u64_le(*at_unix_ns);
        }
        Record::SessionImage(s) => {
            out.put_u8(K_SESSION_IMAGE);
            put_session(out, s);
        }
        Record::SessionDelete { client_id } => {
            out.put_u8(K_SESSION_DELETE);
            put_str(out, client_id);
        }
        Record::Attached {
            client_id,
            protocol,
            expiry_secs,
            will,
            at_unix_ms,
        } => {
            out.put_u8(K_ATTACHED);
            put_str(out, client_id);
            out.put_u8(protocol_byte(*protocol));
            put_varint(out, u64::from(*expiry_secs));
            put_varint(out, *at_unix_ms);
            put_opt_will(out, will);
        }
        Record::Detached {
            client_id,
            at_unix_ms,
        } => {
            out.put_u8(K_DETACHED);
            put_str(out, client_id);
            put_varint(out, *at_unix_ms);
        }
        Record::Expiry {
            client_id,
            expiry_secs,
        } => {
            out.put_u8(K_EXPIRY);
            put_str(out, client_id);
            put_varint(out, u64::from(*expiry_secs));
        }
        Record::WillCleared { client_id } => {
            out.put_u8(K_WILL_CLEARED);
            put_str(out, client_id);
        }
        Record::Subscribed {
            client_id,
            filter,
            subscription,
        } => {
            out.put_u8(K_SUBSCRIBED);
            put_str(out, client_id);
            put_subscription(out, filter, subscription);
        }
        Record::Unsubscribed { client_id, filter } => {
            out.put_u8(K_UNSUBSCRIBED);
            put_str(out, client_id);
            put_str(out, filter);
        }
        Record::Enqueued {
            client_id,
            delivery,
        } => {
            out.put_u8(K_ENQUEUED);
            put_str(out, client_id);
            put_delivery(out, delivery);
        }
        Record::Sent {
            client_id,
            seq,
            pkid,
        } => {
            out.put_u8(K_SENT);
            put_str(out, client_id);
            put_varint(out, *seq);
            out.put_u16_le(*pkid);
        }
        Record::Dropped { client_id, seq } => {
            out.put_u8(K_DROPPED);
            put_str(out, client_id);
            put_varint(out, *seq);
        }
        Record::Released { client_id, pkid }
        | Record::Completed { client_id, pkid }
        | Record::RelAwaited { client_id, pkid }
        | Record::RelDone { client_id, pkid } => {
            out.put_u8(match record {
                Record::Released { .. } => K_RELEASED,
                Record::Completed { .. } => K_COMPLETED,
                Record::RelAwaited { .. } => K_REL_AWAITED,
                _ => K_REL_DONE,
            });
            put_str(out, client_id);
            out.put_u16_le(*pkid);
        }
    }
}

/// Reads fields from a record body.
struct Reader<'a> {
    buf: &'a [u8],
}

type Result<T> = std::result::Result<T, DecodeError>;

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(DecodeError::BadValue("varint"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadValue("varint"))
    }
    fn u32v(&mut self, what: &'static str) -> Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::BadValue(what))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.varint()?;
        if n > self.buf.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
    fn str(&mut self, what: &'static str) -> Result<ByteStr> {
        let b = self.bytes()?;
        ByteStr::try_from_bytes(Bytes::copy_from_slice(b)).map_err(|_| DecodeError::BadValue(what))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue(what)),
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>> {
        Ok(if self.bool("option flag")? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    /// A count of items each at least `min_item` bytes long, checked against what is left.
    fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.varint()?;
        if n.saturating_mul(min_item as u64) > self.buf.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }
    fn protocol(&mut self) -> Result<Protocol> {
        match self.u8()? {
            3 => Ok(Protocol::V3_1),
            4 => Ok(Protocol::V3_1_1),
            5 => Ok(Protocol::V5),
            _ => Err(DecodeError::BadValue("protocol")),
        }
    }
    fn qos(&mut self, bits: u8) -> Result<QoS> {
        QoS::from_u8(bits).ok_or(DecodeError::BadValue("qos"))
    }
    fn options(&mut self) -> Result<SubscriptionOptions> {
        let b = self.u8()?;
        if b & 0xc0 != 0 {
            return Err(DecodeError::BadValue("subscription options"));
        }
        Ok(SubscriptionOptions {
            qos: self.qos(b & 3)?,
            no_local: b & 4 != 0,
            retain_as_published: b & 8 != 0,
            retain_handling: match (b >> 4) & 3 {
                0 => RetainHandling::OnSubscribe,
                1 => RetainHandling::OnNewSubscribe,
                2 => RetainHandling::Never,
                _ => return Err(DecodeError::BadValue("retain handling")),
            },
        })
    }
    fn subscription(&mut self) -> Result<(ByteStr, StoredSubscription)> {
        let filter = self.str("filter")?;
        let options = self.options()?;
        let id = match self.varint()? {
            0 => None,
            n => Some(u32::try_from(n - 1).map_err(|_| DecodeError::BadValue("subscription id"))?),
        };
        Ok((filter, StoredSubscription { options, id }))
    }
    fn delivery(&mut self) -> Result<StoredDelivery> {
        let seq = self.varint()?;
        let message = self.varint()?;
        let flags = self.u8()?;
        if flags & 0xf0 != 0 {
            return Err(DecodeError::BadValue("delivery flags"));
        }
        let qos = self.qos(flags & 3)?;
        let n = self.count(1)?;
        let mut sub_ids = SmallVec::with_capacity(n);
        for _ in 0..n {
            sub_ids.push(self.u32v("subscription id")?);
        }
        let shared = if flags & 8 != 0 {
            Some(self.str("shared group")?)
        } else {
            None
        };
        Ok(StoredDelivery {
            seq,
            message,
            qos,
            retain: flags & 4 != 0,
            sub_ids,
            shared,
        })
    }
    fn will(&mut self) -> Result<Option<Box<LastWill>>> {
        if !self.bool("will flag")? {
            return Ok(None);
        }
        let image = self.bytes()?;
        let mut buf = BytesMut::from(image);
        match Decoder::new(u32::MAX).decode(&mut buf) {
            Ok(Some(Packet::Connect(c))) if buf.is_empty() => match c.will {
                Some(w) => Ok(Some(Box::new(w))),
                None => Err(DecodeError::BadImage("will", "no will in image".into())),
            },
            Ok(_) => Err(DecodeError::BadImage("will", "not one CONNECT".into())),
            Err(e) => Err(DecodeError::BadImage("will", e.to_string())),
        }
    }
    fn session(&mut self) -> Result<StoredSession> {
        let client_id = self.str("client id")?;
        let protocol = self.protocol()?;
        let expiry_secs = self.u32v("expiry")?;
        let disconnected_at_unix_ms = self.opt_u64()?;
        let updated_unix_ms = self.varint()?;
        let last_seq = self.varint()?;
        let n = self.count(3)?;
        let mut subscriptions = Vec::with_capacity(n);
        for _ in 0..n {
            subscriptions.push(self.subscription()?);
        }
        let n = self.count(7)?;
        let mut inflight = Vec::with_capacity(n);
        for _ in 0..n {
            let pkid = self.u16()?;
            let released = self.bool("released")?;
            let delivery = self.delivery()?;
            inflight.push(StoredInflight {
                pkid,
                released,
                delivery,
            });
        }
        let n = self.count(4)?;
        let mut queue = VecDeque::with_capacity(n);
        for _ in 0..n {
            queue.push_back(self.delivery()?);
        }
        let n = self.count(2)?;
        let mut awaiting_rel = Vec::with_capacity(n);
        for _ in 0..n {
            awaiting_rel.push(self.u16()?);
        }
        let will = self.will()?;
        Ok(StoredSession {
            client_id,
            protocol,
            expiry_secs,
            disconnected_at_unix_ms,
            updated_unix_ms,
            subscriptions,
            inflight,
            queue,
            awaiting_rel,
            will,
            last_seq,
        })
    }
    fn finish<T>(&self, value: T) -> Result<T> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

fn decode_message(r: &mut Reader<'_>) -> Result<(MessageId, StoredMessage)> {
    let id = r.varint()?;
    let expires_at_unix_ms = r.opt_u64()?;
    let publisher = r.str("publisher")?;
    let image = std::mem::take(&mut r.buf);
    let mut buf = BytesMut::from(image);
    let publish = match Decoder::with_protocol(Protocol::V5, u32::MAX).decode(&mut buf) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
        Ok(_) => return Err(DecodeError::BadImage("message", "not one PUBLISH".into())),
        Err(e) => return Err(DecodeError::BadImage("message", e.to_string())),
    };
    Ok((
        id,
        StoredMessage {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at_unix_ms,
            publisher,
        },
    ))
}

/// Decodes a record from its kind byte and body (a frame's payload). Strings and payloads are
/// copied out of `payload`, so the record does not borrow the (memory-mapped) segment.
pub fn decode_record(payload: &[u8]) -> Result<Record> {
    let mut r = Reader { buf: payload };
    let kind = r.u8()?;
    let record = match kind {
        K_MESSAGE_PUT => {
            let (id, message) = decode_message(&mut r)?;
            Record::MessagePut { id, message }
        }
        K_RETAINED_SET => Record::RetainedSet {
            topic: r.str("topic")?,
            message: r.varint()?,
            at_unix_ns: r.u64()?,
        },
        K_RETAINED_CLEAR => Record::RetainedClear {
            topic: r.str("topic")?,
            at_unix_ns: r.u64()?,
        },
        K_SESSION_IMAGE => Record::SessionImage(Box::new(r.session()?)),
        K_SESSION_DELETE => Record::SessionDelete {
            client_id: r.str("client id")?,
        },
        K_ATTACHED => Record::Attached {
            client_id: r.str("client id")?,
            protocol: r.protocol()?,
            expiry_secs: r.u32v("expiry")?,
            at_unix_ms: r.varint()?,
            will: r.will()?,
        },
        K_DETACHED => Record::Detached {
            client_id: r.str("client id")?,
            at_unix_ms: r.varint()?,
        },
        K_EXPIRY => Record::Expiry {
            client_id: r.str("client id")?,
            expiry_secs: r.u32v("expiry")?,
        },
        K_WILL_CLEARED => Record::WillCleared {
            client_id: r.str("client id")?,
        },
        K_SUBSCRIBED => {
            let client_id = r.str("client id")?;
            let (filter, subscription) = r.subscription()?;
            Record::Subscribed {
                client_id,
                filter,
                subscription,
            }
        }
        K_UNSUBSCRIBED => Record::Unsubscribed {
            client_id: r.str("client id")?,
            filter: r.str("filter")?,
        },
        K_ENQUEUED => Record::Enqueued {
            client_id: r.str("client id")?,
            delivery: r.delivery()?,
        },
        K_SENT => Record::Sent {
            client_id: r.str("client id")?,
            seq: r.varint()?,
            pkid: r.u16()?,
        },
        K_DROPPED => Record::Dropped {
            client_id: r.str("client id")?,
            seq: r.varint()?,
        },
        K_RELEASED | K_COMPLETED | K_REL_AWAITED | K_REL_DONE => {
            let client_id = r.str("client id")?;
            let pkid = r.u16()?;
            match kind {
                K_RELEASED => Record::Released { client_id, pkid },
                K_COMPLETED => Record::Completed { client_id, pkid },
                K_REL_AWAITED => Record::RelAwaited { client_id, pkid },
                _ => Record::RelDone { client_id, pkid },
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    r.finish(record)
}
