//! Server side of RFC 6455 for MQTT: the HTTP upgrade, then binary frames carrying MQTT bytes.
//!
//! The upgrade request is parsed by [`httparse`], the accept key is derived by tungstenite, and
//! frame headers are parsed and written by tungstenite's frame codec
//! ([`tungstenite::protocol::frame::FrameHeader`]). Payloads are *streamed*: the bytes of a
//! binary frame are unmasked straight into the caller's plaintext buffer as they arrive, so
//! the layer buffers no message (MQTT packets may span frames, and a frame may hold several
//! packets: the MQTT decoder does its own framing). An open, idle WebSocket holds no heap
//! memory beyond its own struct (a partial frame header and a 125-byte control payload sit
//! inline); the upgrade buffer is released at the upgrade.

use std::io::Cursor;

use bytes::{BufMut, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest upgrade request (request line and headers) accepted.
pub const WS_MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most headers in an upgrade request.
pub const WS_MAX_HEADERS: usize = 32;
/// Largest control frame payload (RFC 6455 §5.5).
pub const WS_MAX_CONTROL_BYTES: usize = 125;
/// Longest frame header (RFC 6455 §5.2): 2 + 8 (length) + 4 (mask).
const WS_MAX_HEADER_BYTES: usize = 14;
/// Default request path.
pub const WS_DEFAULT_PATH: &str = "/mqtt";
/// Subprotocols accepted, in order of preference.
pub const WS_SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Settings of a WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// Request path to accept (compared without the query string).
    pub path: String,
    /// Largest frame payload and largest message (sum of its fragments) accepted; the broker
    /// passes its `mqtt.max_packet_size`.
    pub max_message_bytes: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            path: WS_DEFAULT_PATH.to_owned(),
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// Why a WebSocket connection ends with an error. The reply telling the peer (an HTTP error
/// status or a close frame) has been queued when this is returned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// The upgrade request is not valid HTTP/1.1.
    #[error("malformed upgrade request: {0}")]
    BadRequest(&'static str),
    /// The upgrade request is longer than [`WS_MAX_REQUEST_BYTES`] or has too many headers.
    #[error("upgrade request too large")]
    RequestTooLarge,
    /// The request is for another path (HTTP 404).
    #[error("unknown path {0:?}")]
    NotFound(String),
    /// The request is not a WebSocket upgrade (HTTP 400).
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
    /// The client speaks another version of WebSocket (HTTP 426).
    #[error("unsupported Sec-WebSocket-Version")]
    Version,
    /// The client offered no MQTT subprotocol (HTTP 400).
    #[error("no MQTT subprotocol offered")]
    Subprotocol,
    /// A frame that breaks RFC 6455 (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text frame (close 1003).
    #[error("text frame")]
    Text,
    /// A frame or message over the size limit (close 1009).
    #[error("message of at least {len_bytes} bytes exceeds the limit of {max_bytes}")]
    TooBig {
        /// Size of the frame or message so far.
        len_bytes: u64,
        /// The limit.
        max_bytes: usize,
    },
}

/// The state of a WebSocket connection.
#[derive(Debug)]
enum Phase {
    /// Waiting for the complete upgrade request (bytes so far).
    Upgrade(BytesMut),
    /// Upgraded: frames flow.
    Open(Frames),
    /// A close frame was sent; input is ignored.
    Closed,
}

/// Frame-level state after the upgrade (no heap).
#[derive(Debug)]
struct Frames {
    /// Bytes of a frame header split across feeds.
    head: [u8; WS_MAX_HEADER_BYTES],
    head_len: u8,
    /// The frame whose payload is being read.
    current: Option<Current>,
    /// A data message is open (its last frame had FIN clear).
    in_message: bool,
    /// Payload bytes of the open message so far.
    message_bytes: u64,
    /// Payload of the control frame being read.
    control: [u8; WS_MAX_CONTROL_BYTES],
}

impl Default for Frames {
    fn default() -> Self {
        Self {
            head: [0; WS_MAX_HEADER_BYTES],
            head_len: 0,
            current: None,
            in_message: false,
            message_bytes: 0,
            control: [0; WS_MAX_CONTROL_BYTES],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Current {
    kind: Kind,
    remaining: u64,
    /// Payload bytes of this frame already read (position in the mask).
    read: u64,
    mask: [u8; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Binary,
    Ping,
    Pong,
    Close,
}

/// The server side of one WebSocket connection, sans-I/O.
///
/// Input: [`WsLayer::feed`] (bytes from below: the upgrade request, then frames), appending
/// MQTT bytes to the caller's buffer; [`WsLayer::send`] (MQTT bytes to frame). Output: bytes
/// for the layer below, taken with [`WsLayer::take_out`] (the 101 or error reply, pongs, close
/// frames, binary frames).
#[derive(Debug)]
pub struct WsLayer {
    settings_path: Box<str>,
    max_message_bytes: usize,
    phase: Phase,
    out: BytesMut,
    subprotocol: Option<&'static str>,
}

impl WsLayer {
    /// A connection waiting for its upgrade request.
    pub fn new(settings: &WsSettings) -> Self {
        Self {
            settings_path: settings.path.as_str().into(),
            max_message_bytes: settings.max_message_bytes,
            phase: Phase::Upgrade(BytesMut::new()),
            out: BytesMut::new(),
            subprotocol: None,
        }
    }

    /// True once the upgrade is done and until a close frame is sent.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// True once a close frame (or an HTTP error) was queued: flush and close.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The subprotocol chosen at the upgrade.
    pub fn subprotocol(&self) -> Option<&'static str> {
        self.subprotocol
    }

    /// True when output is waiting for [`WsLayer::take_out`].
    pub fn has_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// Moves the queued output into `out`.
    pub fn take_out(&mut self, out: &mut BytesMut) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// Frames `plain` as one binary frame (server frames are not masked). Before the upgrade
    /// or after a close, the bytes are dropped.
    pub fn send(&mut self, plain: &[u8]) {
        if !self.is_open() {
            return;
        }
        write_frame(&mut self.out, OpCode::Data(Data::Binary), plain);
    }

    /// Queues a close frame with `code` (the layer is closed afterwards).
    pub fn close(&mut self, code: CloseCode) {
        if self.is_open() {
            let mut payload = [0u8; 2];
            payload.copy_from_slice(&u16::from(code).to_be_bytes());
            write_frame(&mut self.out, OpCode::Control(Control::Close), &payload);
        }
        self.phase = Phase::Closed;
    }

    /// Releases empty buffers.
    pub fn shrink(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    /// Heap bytes held by this layer (buffers' capacity), for accounting.
    pub fn heap_bytes(&self) -> usize {
        let phase = match &self.phase {
            Phase::Upgrade(b) => b.capacity(),
            Phase::Open(_) => 0,
            Phase::Closed => 0,
        };
        phase + self.out.capacity() + self.settings_path.len()
    }

    /// Feeds bytes from the layer below; appends MQTT bytes to `plain`.
    ///
    /// On `Err`, the reply for the peer is queued (an HTTP error or a close frame) and the
    /// layer is closed: flush [`WsLayer::take_out`], then close the connection.
    pub fn feed(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<(), WsError> {
        let mut rest = input;
        match &mut self.phase {
            Phase::Closed => return Ok(()),
            Phase::Open(_) => {}
            Phase::Upgrade(buf) => {
                let mut pending = std::mem::take(buf);
                let before = pending.len();
                let result = if before == 0 {
                    self.try_upgrade(input)
                } else {
                    pending.extend_from_slice(input);
                    self.try_upgrade(&pending)
                };
                match result {
                    Err(e) => return Err(self.refuse(e)),
                    Ok(None) => {
                        if before == 0 {
                            pending.extend_from_slice(input);
                        }
                        if pending.len() > WS_MAX_REQUEST_BYTES {
                            return Err(self.refuse(WsError::RequestTooLarge));
                        }
                        self.phase = Phase::Upgrade(pending);
                        return Ok(());
                    }
                    Ok(Some(n)) => {
                        assert!(n > before, "the request ends in the new bytes");
                        rest = &input[n - before..];
                    }
                }
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        match self.frames(rest, plain) {
            Ok(()) => Ok(()),
            Err(e) => {
                let code = match &e {
                    WsError::Text => CloseCode::Unsupported,
                    WsError::TooBig { .. } => CloseCode::Size,
                    _ => CloseCode::Protocol,
                };
                self.close(code);
                Err(e)
            }
        }
    }

    /// Answers a refused upgrade with its HTTP status and closes.
    fn refuse(&mut self, e: WsError) -> WsError {
        let (status, extra) = match &e {
            WsError::NotFound(_) => ("404 Not Found", ""),
            WsError::Version => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            WsError::RequestTooLarge => ("431 Request Header Fields Too Large", ""),
            _ => ("400 Bad Request", ""),
        };
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out.extend_from_slice(status.as_bytes());
        self.out
            .extend_from_slice(b"\r\nConnection: close\r\nContent-Length: 0\r\n");
        self.out.extend_from_slice(extra.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.phase = Phase::Closed;
        e
    }

    /// Parses the upgrade request in `buf`. `Ok(Some(n))`: upgraded, the request took `n`
    /// bytes and the 101 reply is queued.
    fn try_upgrade(&mut self, buf: &[u8]) -> Result<Option<usize>, WsError> {
        let mut headers = [httparse::EMPTY_HEADER; WS_MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(WsError::RequestTooLarge),
            Err(_) => return Err(WsError::BadRequest("invalid HTTP request")),
        };
        if n > WS_MAX_REQUEST_BYTES {
            return Err(WsError::RequestTooLarge);
        }
        if req.method != Some("GET") {
            return Err(WsError::NotUpgrade("method is not GET"));
        }
        if req.version != Some(1) {
            return Err(WsError::NotUpgrade("not HTTP/1.1"));
        }
        let path = req.path.unwrap_or("");
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if path != &*self.settings_path {
            return Err(WsError::NotFound(path.chars().take(64).collect()));
        }
        let mut upgrade = false;
        let mut connection = false;
        let mut version = None;
        let mut key = None;
        let mut chosen: Option<usize> = None;
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("");
            let tokens = || value.split(',').map(str::trim);
            if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("websocket"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                connection |= tokens().any(|t| t.eq_ignore_ascii_case("upgrade"));
            } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
                version = Some(value.trim());
            } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim());
            } else if h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
                for t in tokens() {
                    if let Some(i) = WS_SUBPROTOCOLS
                        .iter()
                        .position(|p| p.eq_ignore_ascii_case(t))
                    {
                        chosen = Some(chosen.map_or(i, |c| c.min(i)));
                    }
                }
            }
        }
        if !upgrade {
            return Err(WsError::NotUpgrade("no Upgrade: websocket"));
        }
        if !connection {
            return Err(WsError::NotUpgrade("no Connection: upgrade"));
        }
        if version != Some("13") {
            return Err(WsError::Version);
        }
        let key = match key {
            // The key is 16 random bytes in base64: 24 characters.
            Some(k) if k.len() == 24 => k,
            _ => {
                return Err(WsError::NotUpgrade(
                    "missing or malformed Sec-WebSocket-Key",
                ))
            }
        };
        let protocol = WS_SUBPROTOCOLS[chosen.ok_or(WsError::Subprotocol)?];
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        self.out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        self.out.extend_from_slice(accept.as_bytes());
        self.out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        self.out.extend_from_slice(protocol.as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.subprotocol = Some(protocol);
        self.phase = Phase::Open(Frames::default());
        Ok(Some(n))
    }

    /// Processes frame bytes.
    fn frames(&mut self, mut input: &[u8], plain: &mut BytesMut) -> Result<(), WsError> {
        let max = self.max_message_bytes;
        while !input.is_empty() {
            let Phase::Open(f) = &mut self.phase else {
                return Ok(());
            };
            let Some(cur) = f.current.as_mut() else {
                // Read a frame header, possibly completing one split across feeds.
                let had = usize::from(f.head_len);
                let take = input.len().min(WS_MAX_HEADER_BYTES - had);
                f.head[had..had + take].copy_from_slice(&input[..take]);
                let avail = had + take;
                let mut cursor = Cursor::new(&f.head[..avail]);
                let parsed = FrameHeader::parse(&mut cursor)
                    .map_err(|_| WsError::Protocol("invalid frame header"))?;
                let Some((header, len)) = parsed else {
                    assert!(
                        avail < WS_MAX_HEADER_BYTES,
                        "a full header fits in 14 bytes"
                    );
                    f.head_len = avail as u8;
                    return Ok(());
                };
                let used = cursor.position() as usize;
                assert!(used > had && used <= avail);
                input = &input[used - had..];
                f.head_len = 0;
                f.current = Some(start_frame(f, &header, len, max)?);
                let cur = f.current.as_ref().expect("just set");
                if cur.remaining == 0 {
                    self.end_frame()?;
                }
                continue;
            };
            let n = input
                .len()
                .min(usize::try_from(cur.remaining).unwrap_or(usize::MAX));
            let (chunk, rest) = input.split_at(n);
            input = rest;
            match cur.kind {
                Kind::Binary => {
                    let start = plain.len();
                    plain.extend_from_slice(chunk);
                    unmask(&mut plain[start..], cur.mask, cur.read);
                }
                Kind::Ping | Kind::Pong | Kind::Close => {
                    let at = cur.read as usize;
                    f.control[at..at + n].copy_from_slice(chunk);
                    unmask(&mut f.control[at..at + n], cur.mask, cur.read);
                }
            }
            cur.read += n as u64;
            cur.remaining -= n as u64;
            if cur.remaining == 0 {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// A frame's payload is complete: act on control frames.
    fn end_frame(&mut self) -> Result<(), WsError> {
        let Phase::Open(f) = &mut self.phase else {
            return Ok(());
        };
        let cur = f.current.take().expect("a frame is being read");
        let len = cur.read as usize;
        match cur.kind {
            Kind::Binary | Kind::Pong => {}
            Kind::Ping => {
                let payload = f.control;
                write_frame(
                    &mut self.out,
                    OpCode::Control(Control::Pong),
                    &payload[..len],
                );
            }
            Kind::Close => {
                let code = match len {
                    0 => CloseCode::Normal,
                    1 => return Err(WsError::Protocol("close frame of 1 byte")),
                    _ => {
                        let code =
                            CloseCode::from(u16::from_be_bytes([f.control[0], f.control[1]]));
                        if !code.is_allowed() {
                            return Err(WsError::Protocol("invalid close code"));
                        }
                        if std::str::from_utf8(&f.control[2..len]).is_err() {
                            return Err(WsError::Protocol("close reason is not UTF-8"));
                        }
                        code
                    }
                };
                // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                self.close(code);
            }
        }
        Ok(())
    }
}

/// Checks a new frame's header against RFC 6455 and the size limit.
fn start_frame(f: &mut Frames, h: &FrameHeader, len: u64, max: usize) -> Result<Current, WsError> {
    if h.rsv1 || h.rsv2 || h.rsv3 {
        return Err(WsError::Protocol(
            "reserved bits set (no extension negotiated)",
        ));
    }
    let Some(mask) = h.mask else {
        return Err(WsError::Protocol("unmasked client frame"));
    };
    let kind = match h.opcode {
        OpCode::Data(Data::Text) => return Err(WsError::Text),
        OpCode::Data(Data::Binary) if f.in_message => {
            return Err(WsError::Protocol("new message inside a fragmented one"))
        }
        OpCode::Data(Data::Continue) if !f.in_message => {
            return Err(WsError::Protocol("continuation without a message"))
        }
        OpCode::Data(Data::Binary | Data::Continue) => {
            if !f.in_message {
                f.message_bytes = 0;
            }
            let total = f.message_bytes.saturating_add(len);
            if len > max as u64 || total > max as u64 {
                return Err(WsError::TooBig {
                    len_bytes: total,
                    max_bytes: max,
                });
            }
            f.message_bytes = total;
            f.in_message = !h.is_final;
            Kind::Binary
        }
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(WsError::Protocol("reserved opcode"))
        }
        OpCode::Control(c) => {
            if !h.is_final {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if len > WS_MAX_CONTROL_BYTES as u64 {
                return Err(WsError::Protocol("control frame over 125 bytes"));
            }
            match c {
                Control::Ping => Kind::Ping,
                Control::Pong => Kind::Pong,
                Control::Close => Kind::Close,
                Control::Reserved(_) => unreachable!("matched above"),
            }
        }
    };
    Ok(Current {
        kind,
        remaining: len,
        read: 0,
        mask,
    })
}

/// XORs `buf` with `mask`, `buf` starting at payload offset `offset`.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(i + shift) & 3];
    }
}

/// Appends one unmasked server frame.
fn write_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    out.reserve(header.len(len) + payload.len());
    header
        .format(len, &mut out.writer())
        .expect("writing to a BytesMut cannot fail");
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqttv3.1\r\n\r\n";

    fn open() -> WsLayer {
        let mut ws = WsLayer::new(&WsSettings {
            path: "/mqtt".into(),
            max_message_bytes: 100,
        });
        ws.feed(UPGRADE, &mut BytesMut::new()).unwrap();
        let mut out = BytesMut::new();
        ws.take_out(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        // RFC 6455 §1.3's example key and accept value.
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
            "{text}"
        );
        assert_eq!(ws.subprotocol(), Some("mqttv3.1"));
        ws
    }

    /// A masked client frame: first byte as given (FIN, RSV, opcode), then the payload.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut v = vec![first];
        assert!(payload.len() < 126);
        v.push(0x80 | payload.len() as u8);
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    fn close_code(ws: &mut WsLayer) -> u16 {
        let mut out = BytesMut::new();
        ws.take_out(&mut out);
        assert_eq!(out[0], 0x88, "a close frame: {out:?}");
        u16::from_be_bytes([out[2], out[3]])
    }

    #[test]
    fn byte_by_byte_frames() {
        let mut ws = open();
        let mut bytes = frame(0x02, &[1, 2, 3, 4, 5]); // binary, no FIN
        bytes.extend(frame(0x89, b"ping")); // ping inside a fragmented message
        bytes.extend(frame(0x80, &[6, 7])); // continuation, FIN
        let mut plain = BytesMut::new();
        for b in &bytes {
            ws.feed(std::slice::from_ref(b), &mut plain).unwrap();
        }
        assert_eq!(&plain[..], &[1, 2, 3, 4, 5, 6, 7]);
        let mut out = BytesMut::new();
        ws.take_out(&mut out);
        assert_eq!(&out[..], b"\x8a\x04ping");
        ws.send(&[9; 200]);
        let mut out = BytesMut::new();
        ws.take_out(&mut out);
        assert_eq!(&out[..4], &[0x82, 126, 0, 200]);
        assert_eq!(out.len(), 204);
    }

    #[test]
    fn protocol_errors_close_1002() {
        let cases: Vec<Vec<u8>> = vec![
            frame(0xc2, &[1]),                               // RSV1 set
            frame(0x80, &[1]),                               // continuation without a message
            frame(0x09, b"x"),                               // fragmented ping
            frame(0x83, &[1]),                               // reserved data opcode
            frame(0x8b, &[]),                                // reserved control opcode
            frame(0x88, &[3]),                               // close with 1 byte
            frame(0x88, &[0x03, 0xec]),                      // close 1004 (reserved)
            [frame(0x02, &[1]), frame(0x82, &[2])].concat(), // new message inside one
            vec![0x82, 0x7e, 0x01, 0x00],                    // unmasked
        ];
        for bytes in cases {
            let mut ws = open();
            let e = ws.feed(&bytes, &mut BytesMut::new()).unwrap_err();
            assert!(matches!(e, WsError::Protocol(_)), "{bytes:?}: {e:?}");
            assert_eq!(close_code(&mut ws), 1002, "{bytes:?}");
            assert!(ws.is_closed());
            ws.feed(&frame(0x82, &[1]), &mut BytesMut::new()).unwrap();
        }
        // A ping over 125 bytes, announced with a 16-bit length.
        let mut ws = open();
        let e = ws
            .feed(&[0x89, 0xfe, 0, 126, 1, 2, 3, 4], &mut BytesMut::new())
            .unwrap_err();
        assert!(matches!(e, WsError::Protocol(_)));
    }

    #[test]
    fn close_echoes_the_code() {
        let mut ws = open();
        ws.feed(
            &frame(0x88, &[0x03, 0xe9, b'b', b'y', b'e']),
            &mut BytesMut::new(),
        )
        .unwrap();
        assert_eq!(close_code(&mut ws), 1001);
        assert!(ws.is_closed());
        ws.send(b"dropped");
        assert!(!ws.has_out());
    }

    #[test]
    fn size_limit_from_the_header() {
        let mut ws = open();
        // 64-bit length of 2^40 bytes: refused from the header alone.
        let mut bytes = vec![0x82, 0xff];
        bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let e = ws.feed(&bytes, &mut BytesMut::new()).unwrap_err();
        assert!(matches!(e, WsError::TooBig { .. }));
        assert_eq!(close_code(&mut ws), 1009);
    }

    #[test]
    fn pipelined_frames_after_the_request() {
        let mut ws = WsLayer::new(&WsSettings::default());
        let mut bytes = UPGRADE.to_vec();
        bytes.extend(frame(0x82, &[0xc0, 0]));
        let mut plain = BytesMut::new();
        ws.feed(&bytes[..10], &mut plain).unwrap();
        ws.feed(&bytes[10..], &mut plain).unwrap();
        assert!(ws.is_open());
        assert_eq!(&plain[..], &[0xc0, 0]);
    }
}
