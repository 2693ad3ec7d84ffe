//! Pure transport layers for MQTT connections: PROXY protocol v1/v2, TLS (rustls) and
//! WebSocket (RFC 6455), stacked per listener by [`Transport`].
//!
//! No sockets, no clock, no threads: the connection driver moves bytes between the socket and
//! a [`Transport`]; the layers transform them; the MQTT decoder sees plaintext.
//!
//! # Order on the wire
//!
//! PROXY header (plain, before TLS), then TLS, then WebSocket, then MQTT.
//!
//! # Driving a [`Transport`]
//!
//! A plain TCP listener without PROXY needs no `Transport` at all ([`Stack::is_plain`]): keep
//! an `Option<Box<Transport>>` in the connection and skip it when `None`.
//!
//! 1. At accept: `Transport::new(&stack)`, with `stack.tls` taken from
//!    [`TlsConfigCell::current`] (a reload later does not touch this connection).
//! 2. After each socket read: [`Transport::on_wire_in`]`(bytes, &mut plain_in)`, then decode
//!    MQTT packets from `plain_in` as for a plain connection (only once [`Transport::ready`]
//!    is true can there be any; `plain_in` never grows by more than the bytes read).
//! 3. After each input and each [`Transport::on_plain_out`]: [`Transport::take_wire_out`]
//!    `(&mut wire_out)` and write `wire_out` to the socket. The TLS handshake, the WebSocket
//!    101 reply, pongs, alerts and close frames all come out here, so call it even when the
//!    broker sent nothing.
//! 4. After that, if [`Transport::closing`]: finish writing `wire_out`, then close. An `Err` from
//!    an input means the same (`closing()` is then true) and deserves a `warn!` with
//!    [`TransportError::description`]; the bytes telling the peer why (a TLS alert, an HTTP
//!    404/400/426, a WebSocket close 1002/1003/1009) are already queued for `take_wire_out`.
//! 5. To close from the broker side (a DISCONNECT sent, a takeover): [`Transport::close`],
//!    `take_wire_out`, write, close.
//! 6. When the connection goes idle (a read left `plain_in` empty and `wire_out` is written):
//!    [`Transport::shrink`] releases every empty buffer. Between bursts the layers hold no
//!    buffer: measured (tests/memory.rs) 3.6 KB of heap for an idle TLS 1.3 connection
//!    (`Box<Transport>` 200 B, `TlsLayer` 1.2 KB, rustls's keys and state 2.2 KB), 4.2 KB with
//!    a client certificate, 450 B for PROXY + WebSocket without TLS, 200 B for PROXY only.
//!
//! MQTT bytes given to `on_plain_out` before `ready()` are refused ([`TransportError::NotReady`]).
//! Nothing here reads a clock: rustls checks certificate validity against the system time.
#![warn(missing_docs, unreachable_pub)]

pub mod proxy;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

pub use proxy::{ProxyError, ProxyHeader, ProxyInfo};
pub use tls::{
    load_server_config, PeerCertName, TlsConfigCell, TlsError, TlsLayer, TlsSettings, VerifyPeer,
};
pub use ws::{WsError, WsLayer, WsSettings};

/// Why a connection's transport failed. Every variant closes the connection (after the
/// driver has written what [`Transport::take_wire_out`] gives).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The PROXY header is missing, malformed or too long.
    #[error("PROXY header: {0}")]
    Proxy(#[from] ProxyError),
    /// TLS failed: garbage or non-TLS bytes, a handshake failure, a refused client
    /// certificate, a record the peer should not have sent.
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// A TLS bound was hit (an oversized handshake message or record, too much plaintext
    /// queued before the handshake).
    #[error("TLS limit: {0}")]
    TlsLimit(&'static str),
    /// The WebSocket upgrade was refused or a frame broke the rules.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] WsError),
    /// MQTT bytes were given before [`Transport::ready`] (a driver bug).
    #[error("MQTT bytes sent before the transport is ready")]
    NotReady,
}

impl TransportError {
    /// A short, static description for logs and metrics labels.
    pub fn description(&self) -> &'static str {
        match self {
            TransportError::Proxy(e) => e.description(),
            TransportError::Tls(rustls::Error::InvalidMessage(_)) => "not TLS or malformed TLS",
            TransportError::Tls(rustls::Error::InvalidCertificate(_)) => {
                "client certificate refused"
            }
            TransportError::Tls(rustls::Error::NoCertificatesPresented) => {
                "client certificate missing"
            }
            TransportError::Tls(rustls::Error::PeerMisbehaved(_)) => "TLS peer misbehaved",
            TransportError::Tls(rustls::Error::PeerIncompatible(_)) => "TLS peer incompatible",
            TransportError::Tls(rustls::Error::NoApplicationProtocol) => "no common ALPN protocol",
            TransportError::Tls(rustls::Error::AlertReceived(_)) => "TLS alert received",
            TransportError::Tls(_) => "TLS error",
            TransportError::TlsLimit(_) => "TLS limit exceeded",
            TransportError::WebSocket(e) => match e {
                WsError::BadRequest(_) | WsError::RequestTooLarge | WsError::NotUpgrade(_) => {
                    "bad WebSocket upgrade"
                }
                WsError::NotFound(_) => "WebSocket path not found",
                WsError::Version => "unsupported WebSocket version",
                WsError::Subprotocol => "no MQTT WebSocket subprotocol",
                WsError::Protocol(_) => "WebSocket protocol error",
                WsError::Text => "WebSocket text frame",
                WsError::TooBig { .. } => "WebSocket message too big",
            },
            TransportError::NotReady => "MQTT bytes before the transport is ready",
        }
    }
}

/// The layers of one listener.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    /// Expect a PROXY v1/v2 header first.
    pub proxy: bool,
    /// Speak TLS with this configuration (take it from [`TlsConfigCell::current`] at accept).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Which client certificate name [`Transport::peer_cert_name`] reports.
    pub peer_cert_name: PeerCertName,
    /// Speak WebSocket (inside TLS when both are set).
    pub ws: Option<WsSettings>,
}

impl Stack {
    /// True when the stack has no layer: the connection needs no [`Transport`].
    pub fn is_plain(&self) -> bool {
        !self.proxy && self.tls.is_none() && self.ws.is_none()
    }
}

/// The transport layers of one connection: PROXY, TLS, WebSocket, in wire order.
#[derive(Debug)]
///
/// Kept small (80 bytes): every idle TLS or WebSocket connection holds one; what only some
/// stacks need is boxed.
pub struct Transport {
    /// The PROXY header, expected or parsed; `None` when the listener has no PROXY protocol.
    proxy: Option<Box<Proxy>>,
    tls: Option<Box<TlsLayer>>,
    cert_name_kind: PeerCertName,
    cert_name: Option<Box<str>>,
    cert_name_done: bool,
    /// The WebSocket layer, and the plaintext from TLS on its way to it (empty between calls).
    ws: Option<Box<(WsLayer, BytesMut)>>,
    /// Wire bytes when there is no TLS (WebSocket replies and frames).
    out: BytesMut,
    closing: bool,
}

/// A PROXY header: the bytes of an incomplete one, then what it said.
#[derive(Debug)]
struct Proxy {
    /// `None` once parsed.
    pending: Option<BytesMut>,
    info: Option<ProxyInfo>,
}

impl Transport {
    /// The layers for a new connection.
    pub fn new(stack: &Stack) -> Result<Self, TransportError> {
        Ok(Self {
            proxy: stack.proxy.then(|| {
                Box::new(Proxy {
                    pending: Some(BytesMut::new()),
                    info: None,
                })
            }),
            tls: stack
                .tls
                .clone()
                .map(TlsLayer::new)
                .transpose()?
                .map(Box::new),
            cert_name_kind: stack.peer_cert_name,
            cert_name: None,
            cert_name_done: false,
            ws: stack
                .ws
                .as_ref()
                .map(|w| Box::new((WsLayer::new(w), BytesMut::new()))),
            out: BytesMut::new(),
            closing: false,
        })
    }

    /// Consumes bytes read from the socket; appends MQTT plaintext to `plain_in`.
    ///
    /// On `Err`, write [`Transport::take_wire_out`] and close; [`Transport::closing`] is true.
    pub fn on_wire_in(
        &mut self,
        wire: &[u8],
        plain_in: &mut BytesMut,
    ) -> Result<(), TransportError> {
        let r = self.wire_in(wire, plain_in);
        if r.is_err() {
            self.closing = true;
        }
        r
    }

    fn wire_in(&mut self, mut wire: &[u8], plain_in: &mut BytesMut) -> Result<(), TransportError> {
        if self.closing {
            return Ok(());
        }
        if let Some(proxy) = self.proxy.as_mut().filter(|p| p.pending.is_some()) {
            let pending = proxy.pending.as_mut().expect("filtered");
            let before = pending.len();
            let parsed = if before == 0 {
                ProxyHeader::parse(wire)?
            } else {
                pending.extend_from_slice(wire);
                ProxyHeader::parse(pending)?
            };
            match parsed {
                None => {
                    if before == 0 {
                        pending.extend_from_slice(wire);
                    }
                    assert!(
                        pending.len() <= proxy::PROXY_MAX_BYTES,
                        "parse bounds the header"
                    );
                    return Ok(());
                }
                Some((info, consumed)) => {
                    assert!(consumed > before, "the header ends in the new bytes");
                    wire = &wire[consumed - before..];
                    proxy.info = Some(info);
                    proxy.pending = None;
                }
            }
        }
        if wire.is_empty() {
            return Ok(());
        }
        match (&mut self.tls, &mut self.ws) {
            (None, None) => plain_in.extend_from_slice(wire),
            (None, Some(ws)) => {
                let ws = &mut ws.0;
                let r = ws.feed(wire, plain_in);
                ws.take_out(&mut self.out);
                if ws.is_closed() {
                    self.closing = true;
                }
                r?;
            }
            (Some(tls), ws) => {
                let r = match ws {
                    None => tls.feed(wire, plain_in),
                    Some(ws) => {
                        let (ws, scratch) = &mut **ws;
                        debug_assert!(scratch.is_empty());
                        let r = tls.feed(wire, scratch);
                        let w = if scratch.is_empty() {
                            Ok(())
                        } else {
                            let w = ws.feed(scratch, plain_in);
                            scratch.clear();
                            w
                        };
                        if ws.has_out() {
                            ws.take_out(&mut self.out);
                            tls.send(&self.out)?;
                            self.out.clear();
                        }
                        if ws.is_closed() {
                            self.closing = true;
                            tls.send_close_notify();
                        }
                        r.and(w.map_err(TransportError::from))
                    }
                };
                if tls.peer_closed() && !self.closing {
                    self.closing = true;
                    tls.send_close_notify();
                }
                if !self.cert_name_done && !tls.is_handshaking() {
                    self.cert_name_done = true;
                    self.cert_name = tls.peer_identity(self.cert_name_kind).map(Into::into);
                }
                r?;
            }
        }
        Ok(())
    }

    /// MQTT bytes the broker wants to send.
    pub fn on_plain_out(&mut self, plain: &[u8]) -> Result<(), TransportError> {
        if self.closing {
            return Ok(());
        }
        if !self.ready() {
            return Err(TransportError::NotReady);
        }
        match (&mut self.tls, &mut self.ws) {
            (None, None) => self.out.extend_from_slice(plain),
            (None, Some(ws)) => {
                ws.0.send(plain);
                ws.0.take_out(&mut self.out);
            }
            (Some(tls), None) => tls.send(plain)?,
            (Some(tls), Some(ws)) => {
                let ws = &mut ws.0;
                ws.send(plain);
                ws.take_out(&mut self.out);
                tls.send(&self.out)?;
                self.out.clear();
            }
        }
        Ok(())
    }

    /// Moves the bytes to write to the socket into `wire_out` (TLS records, WebSocket frames,
    /// handshake replies, pongs, alerts, close frames).
    pub fn take_wire_out(&mut self, wire_out: &mut BytesMut) {
        if !self.out.is_empty() {
            if wire_out.is_empty() {
                std::mem::swap(wire_out, &mut self.out);
            } else {
                wire_out.extend_from_slice(&self.out);
                self.out.clear();
            }
        }
        if let Some(tls) = &mut self.tls {
            tls.take_wire_out(wire_out);
        }
    }

    /// True when bytes wait for [`Transport::take_wire_out`].
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The client address reported by the PROXY header.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.proxy_info().and_then(|i| i.source)
    }

    /// What the PROXY header reported, once parsed.
    pub fn proxy_info(&self) -> Option<ProxyInfo> {
        self.proxy.as_ref().and_then(|p| p.info)
    }

    /// The client certificate's name chosen by [`Stack::peer_cert_name`], after the handshake.
    pub fn peer_cert_name(&self) -> Option<&str> {
        self.cert_name.as_deref()
    }

    /// The TLS layer, if any (protocol version, ALPN).
    pub fn tls(&self) -> Option<&TlsLayer> {
        self.tls.as_deref()
    }

    /// True when every handshake is done and MQTT may flow.
    pub fn ready(&self) -> bool {
        self.proxy.as_ref().is_none_or(|p| p.pending.is_none())
            && self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
            && self.ws.as_ref().is_none_or(|w| w.0.is_open())
            && !self.closing
    }

    /// True when the layers want the connection closed once `take_wire_out` is written.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Starts a clean close: a WebSocket close frame (1000) and a TLS close_notify are queued.
    pub fn close(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        if let Some(ws) = &mut self.ws {
            let ws = &mut ws.0;
            ws.close(tungstenite::protocol::frame::coding::CloseCode::Normal);
            ws.take_out(&mut self.out);
        }
        if let Some(tls) = &mut self.tls {
            if !self.out.is_empty() {
                // Cannot fail: rustls's buffer limit is off.
                let _ = tls.send(&self.out);
                self.out.clear();
            }
            tls.send_close_notify();
        }
    }

    /// Releases empty buffers; call when the connection goes idle (after `take_wire_out`).
    pub fn shrink(&mut self) {
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        if let Some(ws) = &mut self.ws {
            if ws.1.is_empty() {
                ws.1 = BytesMut::new();
            }
            ws.0.shrink();
        }
        if let Some(tls) = &mut self.tls {
            tls.shrink();
        }
    }
}
