//! What a client's bytes travel over, below MQTT: plain TCP (the default, untouched), TLS
//! (futures-rustls, rustls with ring, over glommio's `TcpStream`) and WebSocket framing
//! (RFC 6455 frame headers from tungstenite; the upgrade request by tungstenite, its answer
//! parsed by httparse), alone or over TLS (`--tls --ws` = wss).
//!
//! The plain path stays what it was: [`Stream::Plain`] is the bare `TcpStream` (one enum
//! match per read or write, no box, no copy), and a client without `--ws` has no framing
//! state at all.

use bytes::{Buf, BufMut, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest HTTP answer to the WebSocket upgrade, headers included.
const WS_UPGRADE_ANSWER_BYTES_MAX: usize = 16 * 1024;
/// Largest WebSocket frame payload accepted from the broker.
pub(crate) const WS_FRAME_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// TLS and WebSocket settings of a run (`--tls`, `--cafile`, `--cert`, `--key`, `--ws`,
/// `--ws-path`).
#[derive(Clone, Default)]
pub(crate) struct Layers {
    pub(crate) tls: Option<Tls>,
    pub(crate) ws: Option<Ws>,
}

/// How clients start TLS.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    /// Whether the server certificate is checked against `--cafile`.
    pub(crate) verified: bool,
}

/// How clients open a WebSocket.
#[derive(Clone, Debug)]
pub(crate) struct Ws {
    /// `ws://host:port/path` or `wss://...`, for the upgrade request.
    pub(crate) url: String,
}

impl fmt::Debug for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Layers {
    /// "tcp", "tls", "ws /mqtt", "wss /mqtt", with "(server certificate not verified)".
    pub(crate) fn describe(&self) -> String {
        let mut text = match (&self.tls, &self.ws) {
            (None, None) => "tcp".to_string(),
            (Some(_), None) => "tls".to_string(),
            (None, Some(ws)) => format!("ws {}", ws.url),
            (Some(_), Some(ws)) => format!("wss {}", ws.url),
        };
        if self.tls.as_ref().is_some_and(|t| !t.verified) {
            text.push_str(" (server certificate not verified: no --cafile)");
        }
        text
    }
}

/// The rustls client configuration: trust `cafile` (or verify nothing but the handshake
/// signatures when `None`), present `cert` + `key` when given. Session resumption is off,
/// so that every connection costs the broker a full handshake.
pub(crate) fn tls_client_config(
    cafile: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<ClientConfig> {
    use anyhow::Context as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(cafile)
                .with_context(|| format!("--cafile {}", cafile.display()))?
            {
                let cert = cert.with_context(|| format!("--cafile {}", cafile.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("--cafile {}", cafile.display()))?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "--cafile {}: no certificate",
                cafile.display()
            );
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignaturesOnly(provider))),
    };
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .with_context(|| format!("--cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("--cert/--key")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("--cert and --key go together"),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Accepts any server certificate but still checks the handshake signatures (so the
/// handshake costs what a verifying client's does, less the chain check).
#[derive(Debug)]
struct SignaturesOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client's byte stream: TCP, or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Starts TLS on `tcp` when `tls` is given.
    pub(crate) async fn start(tcp: TcpStream, tls: Option<&Tls>) -> io::Result<Stream> {
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let stream = tls.connector.connect(tls.server_name.clone(), tcp).await?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    }

    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Writes all of `buf` (through TLS: and flushes the records).
    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.write_all(buf).await,
            Stream::Tls(tls) => {
                tls.write_all(buf).await?;
                tls.flush().await
            }
        }
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf).await,
            Stream::Tls(tls) => tls.read(buf).await,
        }
    }
}

/// A WebSocket client's framing state: raw bytes read but not yet unframed, the frames to
/// send, a pong owed, and the mask generator.
pub(crate) struct WsFraming {
    /// Bytes from the socket not yet unframed.
    pub(crate) inbuf: BytesMut,
    /// Frames to write.
    out: BytesMut,
    /// Control frames owed to the broker (pongs), sent with the next data.
    owed: BytesMut,
    mask_state: u64,
}

impl WsFraming {
    /// Sends the upgrade request for `ws.url` (subprotocol `mqtt`) on `stream` and checks the
    /// answer: 101, the right `Sec-WebSocket-Accept`, subprotocol `mqtt`. Bytes after the
    /// answer are kept as the first frames.
    pub(crate) async fn open(stream: &mut Stream, ws: &Ws, seed: u64) -> io::Result<WsFraming> {
        use tungstenite::client::IntoClientRequest;
        let mut request = ws.url.as_str().into_client_request().map_err(invalid)?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        let (bytes, key) =
            tungstenite::handshake::client::generate_request(request).map_err(invalid)?;
        stream.write_all(&bytes).await?;
        let mut answer = BytesMut::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let header_len = loop {
            if let Some(at) = find_header_end(&answer) {
                break at;
            }
            if answer.len() > WS_UPGRADE_ANSWER_BYTES_MAX {
                return Err(invalid("WebSocket upgrade answer too long"));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the WebSocket upgrade",
                ));
            }
            answer.extend_from_slice(&chunk[..n]);
        };
        check_upgrade_answer(&answer[..header_len], &key)?;
        answer.advance(header_len);
        Ok(WsFraming {
            inbuf: answer,
            out: BytesMut::new(),
            owed: BytesMut::new(),
            mask_state: seed | 1,
        })
    }

    /// The frames for `payload` (one masked binary frame), after any owed pongs; written by
    /// the caller, then [`WsFraming::sent`].
    pub(crate) fn frame(&mut self, payload: &[u8]) -> &[u8] {
        self.out.clear();
        if !self.owed.is_empty() {
            self.out.extend_from_slice(&self.owed);
            self.owed.clear();
        }
        let mask = self.next_mask();
        push_frame(&mut self.out, OpCode::Data(Data::Binary), payload, mask);
        &self.out
    }

    /// After the frames were written: keeps at most a small buffer.
    pub(crate) fn sent(&mut self, keep_max: usize) {
        self.out.clear();
        if self.out.capacity() > keep_max {
            self.out = BytesMut::new();
        }
    }

    /// Moves the payloads of the whole frames in `inbuf` to `to`; returns the bytes moved.
    /// A close frame is `UnexpectedEof`; text or unknown opcodes are `InvalidData`. Pings
    /// owe a pong.
    pub(crate) fn unframe(&mut self, to: &mut BytesMut) -> io::Result<usize> {
        let mut moved = 0;
        loop {
            let mut cursor = io::Cursor::new(&self.inbuf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(invalid)? else {
                return Ok(moved);
            };
            if len > WS_FRAME_BYTES_MAX {
                return Err(invalid("WebSocket frame larger than the client accepts"));
            }
            let start = cursor.position() as usize;
            let end = start + len as usize;
            if self.inbuf.len() < end {
                return Ok(moved);
            }
            let mut frame = self.inbuf.split_to(end);
            frame.advance(start);
            if let Some(mask) = header.mask {
                apply_mask(&mut frame, mask);
            }
            match header.opcode {
                OpCode::Data(Data::Binary | Data::Continue) => {
                    to.extend_from_slice(&frame);
                    moved += frame.len();
                }
                OpCode::Control(Control::Ping) => {
                    let mask = self.next_mask();
                    push_frame(&mut self.owed, OpCode::Control(Control::Pong), &frame, mask);
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "WebSocket closed by the broker",
                    ));
                }
                other => {
                    return Err(invalid(format!("WebSocket {other} frame from the broker")));
                }
            }
            if self.inbuf.is_empty() && self.inbuf.capacity() > 0 && moved > 0 {
                // Idle clients keep no receive buffer.
                self.inbuf = BytesMut::new();
            }
        }
    }

    /// A mask key per frame (RFC 6455 §5.3: client frames are masked), from xorshift64.
    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_le_bytes()
    }
}

fn push_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    out.reserve(header.len(len) + payload.len());
    header
        .format(len, &mut out.writer())
        .expect("formatting into memory does not fail");
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// 101, `Sec-WebSocket-Accept` for `key`, subprotocol `mqtt` (when the broker names one).
fn check_upgrade_answer(head: &[u8], key: &str) -> io::Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut answer = httparse::Response::new(&mut headers);
    match answer.parse(head).map_err(invalid)? {
        httparse::Status::Complete(_) => {}
        httparse::Status::Partial => return Err(invalid("partial WebSocket upgrade answer")),
    }
    if answer.code != Some(101) {
        return Err(invalid(format!(
            "WebSocket upgrade refused: HTTP {} {}",
            answer.code.unwrap_or(0),
            answer.reason.unwrap_or("")
        )));
    }
    let header = |name: &str| {
        answer
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header("Sec-WebSocket-Accept").as_deref() != Some(expected.as_str()) {
        return Err(invalid("WebSocket upgrade: wrong Sec-WebSocket-Accept"));
    }
    if let Some(protocol) = header("Sec-WebSocket-Protocol") {
        if !protocol.eq_ignore_ascii_case("mqtt") {
            return Err(invalid(format!(
                "WebSocket upgrade: subprotocol {protocol:?}, not mqtt"
            )));
        }
    }
    Ok(())
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing() -> WsFraming {
        WsFraming {
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            owed: BytesMut::new(),
            mask_state: 7,
        }
    }

    /// A server frame (unmasked).
    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader {
            opcode,
            ..FrameHeader::default()
        }
        .format(payload.len() as u64, &mut out)
        .unwrap();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn client_frames_are_masked_and_parse_back() {
        let mut ws = framing();
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = ws.frame(&payload).to_vec();
            let mut cursor = io::Cursor::new(&frame[..]);
            let (header, n) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(n as usize, len);
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            let mask = header.mask.expect("client frames are masked");
            let mut body = frame[cursor.position() as usize..].to_vec();
            if len > 8 {
                assert_ne!(body, payload, "masked on the wire");
            }
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn unframing_handles_split_frames_pings_and_close() {
        let mut ws = framing();
        let mut wire = server_frame(OpCode::Data(Data::Binary), b"hello ");
        wire.extend(server_frame(OpCode::Control(Control::Ping), b"p"));
        wire.extend(server_frame(OpCode::Data(Data::Continue), b"world"));
        let mut to = BytesMut::new();
        // Byte by byte: nothing lost, nothing early.
        for b in &wire {
            ws.inbuf.put_u8(*b);
            ws.unframe(&mut to).unwrap();
        }
        assert_eq!(&to[..], b"hello world");
        // The pong goes out before the next data frame.
        let out = ws.frame(b"x").to_vec();
        let mut cursor = io::Cursor::new(&out[..]);
        let (pong, n) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!((pong.opcode, n), (OpCode::Control(Control::Pong), 1));

        ws.inbuf
            .extend_from_slice(&server_frame(OpCode::Control(Control::Close), b""));
        let err = ws.unframe(&mut to).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut ws2 = framing();
        ws2.inbuf
            .extend_from_slice(&server_frame(OpCode::Data(Data::Text), b"t"));
        assert_eq!(
            ws2.unframe(&mut to).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn the_upgrade_answer_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        check_upgrade_answer(good.as_bytes(), key).unwrap();
        assert!(check_upgrade_answer(good.replace(&accept, "x").as_bytes(), key).is_err());
        assert!(check_upgrade_answer(good.replace("101", "404").as_bytes(), key).is_err());
        assert!(check_upgrade_answer(
            good.replace("Protocol: mqtt", "Protocol: x").as_bytes(),
            key
        )
        .is_err());
        assert_eq!(find_header_end(good.as_bytes()), Some(good.len()));
    }
}
