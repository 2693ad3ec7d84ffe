//! One MQTT client connection on a glommio executor: opens the socket (optionally from a
//! chosen source address), does the CONNECT/CONNACK handshake, and moves packets through the
//! project's codec. It owns no policy: the commands decide what to send and when. TLS and
//! WebSocket, when asked for, sit between the socket and the codec ([`crate::transport`]).

use crate::transport::{Layers, Stream, WsFraming};
use bytes::BytesMut;
use glommio::net::TcpStream;
use shardmq_codec::{
    encode, ByteStr, Connect, ConnectProperties, Decoder, Packet, Protocol, ReasonCode,
};
use socket2::{Domain, Socket, Type};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest packet the client accepts from the broker.
pub(crate) const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;
/// Bytes asked of the socket per read on a busy connection.
pub(crate) const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes asked of the socket per read on an idle connection (it only expects PINGRESP or
/// DISCONNECT), so that ten thousand idle clients do not each pin a large buffer.
pub(crate) const IDLE_READ_CHUNK_BYTES: usize = 64;
/// A send buffer that drained keeps its allocation only up to this size.
const IDLE_WRITE_CAPACITY_MAX: usize = 64 * 1024;

/// How every client of a run connects.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub(crate) target: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) keep_alive_secs: u16,
    pub(crate) clean_start: bool,
    /// MQTT 5.0 Session Expiry Interval sent in CONNECT, seconds; `None` = absent (0).
    pub(crate) session_expiry_secs: Option<u32>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) nodelay: bool,
    /// TLS and WebSocket, if any.
    pub(crate) layers: Layers,
}

/// Why a client did not get a successful CONNACK.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Socket, bind or connect failure, or the broker closed the connection.
    Io(io::Error),
    /// The broker answered CONNACK with an error code.
    Refused(ReasonCode),
    /// The broker's first packet was not CONNACK.
    Unexpected(&'static str),
    /// No CONNACK within the connect timeout.
    Timeout,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "io: {}", describe_io(e)),
            ConnectError::Refused(code) => write!(f, "refused: CONNACK {code:?}"),
            ConnectError::Unexpected(name) => write!(f, "protocol: {name} before CONNACK"),
            ConnectError::Timeout => f.write_str("timeout: no CONNACK"),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> ConnectError {
        ConnectError::Io(e)
    }
}

/// An I/O error as one stable line: glommio appends the operation and the descriptor number,
/// which would make every failure look different in a tally.
pub(crate) fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(", op: ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A connected MQTT client.
pub(crate) struct Client {
    stream: Stream,
    /// WebSocket framing, with `--ws`; `None` on TCP and TLS.
    ws: Option<Box<WsFraming>>,
    protocol: Protocol,
    decoder: Decoder,
    rbuf: BytesMut,
    /// Packets queued by [`Client::queue`], written by [`Client::flush`].
    pub(crate) wbuf: BytesMut,
}

impl Client {
    /// Opens a connection to `opts.target` from `source` (any address when `None`), sends
    /// CONNECT and waits for a successful CONNACK. No timeout here: the caller races it.
    pub(crate) async fn connect(
        opts: &ConnectOptions,
        client_id: &str,
        source: Option<IpAddr>,
    ) -> Result<Client, ConnectError> {
        let tcp = open_stream(opts.target, source).await?;
        if opts.nodelay {
            tcp.set_nodelay(true).map_err(io::Error::from)?;
        }
        let mut stream = Stream::start(tcp, opts.layers.tls.as_ref()).await?;
        let ws = match &opts.layers.ws {
            None => None,
            Some(ws) => {
                let seed = crate::clock::now_ns() ^ client_id.len() as u64;
                Some(Box::new(WsFraming::open(&mut stream, ws, seed).await?))
            }
        };
        let mut client = Client {
            stream,
            ws,
            protocol: opts.protocol,
            decoder: Decoder::with_protocol(opts.protocol, MAX_PACKET_BYTES),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        };
        client.queue(&Packet::Connect(Box::new(Connect {
            protocol: opts.protocol,
            clean_start: opts.clean_start,
            keep_alive: opts.keep_alive_secs,
            client_id: ByteStr::from(client_id),
            will: None,
            username: opts.username.as_deref().map(ByteStr::from),
            password: opts.password.clone().map(Into::into),
            properties: ConnectProperties {
                session_expiry_interval: opts.session_expiry_secs.filter(|_| opts.protocol.is_v5()),
                ..ConnectProperties::default()
            },
        })));
        // On a socket whose non-blocking connect is still in progress the send waits for
        // writability, which is when the handshake completes (or fails).
        client.flush().await?;
        match client.recv(READ_CHUNK_BYTES).await? {
            Packet::ConnAck(ack) if ack.code.is_error() => Err(ConnectError::Refused(ack.code)),
            Packet::ConnAck(_) => Ok(client),
            other => Err(ConnectError::Unexpected(other.name())),
        }
    }

    /// The protocol version this client speaks.
    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Encodes `packet` onto the send buffer.
    pub(crate) fn queue(&mut self, packet: &Packet) {
        encode(packet, self.protocol, &mut self.wbuf);
    }

    /// Writes the whole send buffer.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            match &mut self.ws {
                None => self.stream.write_all(&self.wbuf).await?,
                Some(ws) => {
                    let frames = ws.frame(&self.wbuf);
                    self.stream.write_all(frames).await?;
                    ws.sent(IDLE_WRITE_CAPACITY_MAX);
                }
            }
            self.wbuf.clear();
        }
        if self.wbuf.capacity() > IDLE_WRITE_CAPACITY_MAX {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Decodes one packet from what has been read, if a whole one is there.
    pub(crate) fn try_decode(&mut self) -> io::Result<Option<Packet>> {
        let packet = self
            .decoder
            .decode(&mut self.rbuf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            // Idle clients keep no receive buffer.
            self.rbuf = BytesMut::new();
        }
        Ok(packet)
    }

    /// Waits for the next packet, reading at most `chunk` bytes at a time.
    pub(crate) async fn recv(&mut self, chunk: usize) -> io::Result<Packet> {
        loop {
            if let Some(packet) = self.try_decode()? {
                return Ok(packet);
            }
            self.fill(chunk).await?;
        }
    }

    /// Reads once, at most `chunk` bytes, waiting for them. The broker closing the connection
    /// is an `UnexpectedEof` error; a read timeout (see [`Client::set_read_timeout`]) is a
    /// `TimedOut` error. Cancel-safe: dropping it loses no bytes.
    pub(crate) async fn fill(&mut self, chunk: usize) -> io::Result<usize> {
        let n = poll_fn(|cx| self.poll_fill(cx, chunk)).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the broker",
            ));
        }
        Ok(n)
    }

    /// Reads what the socket has without waiting: `None` when it has nothing.
    pub(crate) async fn try_fill(&mut self, chunk: usize) -> Option<io::Result<usize>> {
        futures_lite::future::poll_once(self.fill(chunk)).await
    }

    /// Holds the connection idle until it fails or the broker closes it, and says why it
    /// ended. Answers nothing, sends PINGREQ after 3/4 of `keep_alive_secs` without traffic
    /// (never when 0), and keeps no receive buffer between packets.
    pub(crate) async fn hold_idle(&mut self, keep_alive_secs: u16) -> io::Error {
        let ping_after =
            (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 750));
        if let Err(e) = self.set_read_timeout(ping_after) {
            return e;
        }
        loop {
            match self.fill(IDLE_READ_CHUNK_BYTES).await {
                Ok(_) => loop {
                    match self.try_decode() {
                        Ok(Some(Packet::Disconnect(d))) => {
                            return io::Error::other(format!("DISCONNECT {:?}", d.reason));
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return e,
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    self.queue(&Packet::PingReq);
                    if let Err(e) = self.flush().await {
                        return e;
                    }
                }
                Err(e) => return e,
            }
        }
    }

    /// Bounds how long [`Client::fill`] waits.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream
            .tcp()
            .set_read_timeout(timeout)
            .map_err(Into::into)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, chunk: usize) -> Poll<io::Result<usize>> {
        if self.ws.is_some() {
            return self.poll_fill_ws(cx, chunk);
        }
        // Resize, read and truncate within one poll so that no await point ever sees the
        // zero-filled tail.
        let start = self.rbuf.len();
        self.rbuf.resize(start + chunk, 0);
        let read = self.stream.poll_read(cx, &mut self.rbuf[start..]);
        let n = match read {
            Poll::Ready(Ok(n)) => n,
            _ => 0,
        };
        self.rbuf.truncate(start + n);
        read
    }

    /// [`Client::poll_fill`] through WebSocket framing: reads raw bytes until at least one
    /// payload byte is unframed (or the socket has nothing, or ends).
    fn poll_fill_ws(&mut self, cx: &mut Context<'_>, chunk: usize) -> Poll<io::Result<usize>> {
        let Client {
            stream, ws, rbuf, ..
        } = self;
        let ws = ws.as_mut().expect("a WebSocket client");
        loop {
            let start = ws.inbuf.len();
            ws.inbuf.resize(start + chunk, 0);
            let read = stream.poll_read(cx, &mut ws.inbuf[start..]);
            let n = match read {
                Poll::Ready(Ok(n)) => n,
                _ => 0,
            };
            ws.inbuf.truncate(start + n);
            match read {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(_)) => {
                    let moved = ws.unframe(rbuf)?;
                    if moved > 0 {
                        return Poll::Ready(Ok(moved));
                    }
                }
                other => return other,
            }
        }
    }
}

/// Opens a TCP connection. Without a source address glommio connects (through io_uring);
/// with one, the socket is bound first with `IP_BIND_ADDRESS_NO_PORT`, so that the kernel
/// picks the port at connect time per (source, destination) pair instead of reserving one
/// per bind: that is what lets one host open more than ~28k connections to one broker port.
async fn open_stream(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await.map_err(Into::into);
    };
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        None,
    )?;
    set_bind_address_no_port(&socket)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: `into_raw_fd` gives up ownership of an open TCP socket, which the stream takes.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
