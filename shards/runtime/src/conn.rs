//! The per-connection driver: one task per client socket, written as a hand-rolled future so
//! that it borrows the shard's read buffer only inside `poll` (an idle connection holds no
//! buffer) and writes straight from the connection's buffer in the shard.
//!
//! A connection of a TLS, WebSocket or PROXY listener also has a [`Transport`]: bytes read go
//! through it before the decoder, and the shard's MQTT bytes go through it before the socket.
//! Plaintext moves into the transport only once its previous wire bytes are written, so the
//! connection's write buffer still measures the client's backlog (`max_write_buffer_bytes`).

use crate::shell::Shard;
use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use shardmq_codec::Decoder;
use shardmq_core::{ConnKey, Phase};
use shardmq_transport::Transport;
use std::cell::RefCell;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Read/decode/write rounds before the driver yields to other tasks.
const ROUNDS_MAX: usize = 16;
/// Plaintext handed to a transport at once (a few TLS records or WebSocket frames).
const PLAIN_CHUNK_BYTES: usize = 64 * 1024;

pub(crate) struct ConnDriver {
    shard: Rc<RefCell<Shard>>,
    stream: TcpStream,
    key: ConnKey,
    decoder: Decoder,
    /// Bytes of a packet not yet complete; empty (unallocated) between packets.
    rbuf: BytesMut,
    /// TLS / WebSocket / PROXY layers; `None` for plain TCP.
    transport: Option<Box<Transport>>,
    /// Wire bytes from the transport not yet written; empty (unallocated) when idle.
    wout: BytesMut,
    /// The transport failed: write what it queued (an alert, a close frame), then close.
    broken: bool,
    /// The shard has been told the transport's peer address and certificate name.
    identity_told: bool,
    /// Ended by the broker with everything written: the write side is shut down and what the
    /// client still sends is read and dropped until it closes or this deadline passes
    /// ([`crate::uring::CLOSE_DRAIN`]); the shard no longer knows the connection.
    draining: Option<Instant>,
    /// Bytes dropped while draining (at most [`crate::uring::CLOSE_DRAIN_BYTES`]).
    drained: u32,
}

impl ConnDriver {
    pub(crate) fn new(
        shard: Rc<RefCell<Shard>>,
        stream: TcpStream,
        key: ConnKey,
        transport: Option<Box<Transport>>,
        max_packet_size: u32,
        send_timeout: Duration,
    ) -> ConnDriver {
        // A stuck subscriber cannot pin its buffers forever (EMQX's `send_timeout`).
        if let Err(e) = stream.set_write_timeout(Some(send_timeout)) {
            debug!(error = %e, "set_write_timeout failed");
        }
        ConnDriver {
            shard,
            stream,
            key,
            decoder: Decoder::new(max_packet_size),
            rbuf: BytesMut::new(),
            transport,
            wout: BytesMut::new(),
            broken: false,
            identity_told: false,
            draining: None,
            drained: 0,
        }
    }
}

impl Future for ConnDriver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(until) = this.draining {
            return this.drain(cx, until);
        }
        let shard_rc = this.shard.clone();
        let mut step = crate::shell::step(&shard_rc);
        let shard: &mut Shard = &mut step;
        let now = Instant::now();
        let key = this.key;
        for _ in 0..ROUNDS_MAX {
            // `storage.durability = "sync"`: output past a durable gate waits (docs/durability.md).
            let limit = shard.write_limit(key);
            let w = &mut shard.conn_wakers[key];
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            let conn = &mut shard.core.conns[key];
            // 1. Write what the shard queued for this client (up to a durable gate).
            let mut taken = 0;
            // What goes out while the shard traces a client (`mgmt`), told after the write.
            let mut traced: Option<Vec<u8>> = None;
            let written = match &mut this.transport {
                None => {
                    if shard.core.traces.is_some() {
                        traced = Some(conn.out.to_vec());
                    }
                    let r = write_gated(&mut this.stream, cx, &mut conn.out, limit);
                    taken = *r.as_ref().unwrap_or(&0);
                    if let Some(bytes) = &mut traced {
                        bytes.truncate(taken);
                    }
                    r
                }
                Some(t) => {
                    let mut result = Ok(0);
                    loop {
                        if this.wout.is_empty() {
                            let n = conn.out.len().min(PLAIN_CHUNK_BYTES);
                            let n = limit.map_or(n, |l| n.min(l - taken));
                            if !this.broken && n > 0 && t.ready() {
                                if let Err(e) = t.on_plain_out(&conn.out[..n]) {
                                    warn!(shard = shard.core.id, conn = conn.id, error = %e, "transport refused output; closing");
                                    this.broken = true;
                                }
                                if shard.core.traces.is_some() {
                                    let out = traced.get_or_insert_with(Vec::new);
                                    out.extend_from_slice(&conn.out[..n]);
                                }
                                conn.out.advance(n);
                                taken += n;
                            }
                            t.take_wire_out(&mut this.wout);
                        }
                        if this.wout.is_empty() {
                            break;
                        }
                        match (write_out(&mut this.stream, cx, &mut this.wout), &mut result) {
                            (Ok(n), Ok(total)) => {
                                *total += n;
                                if !this.wout.is_empty() {
                                    break;
                                }
                            }
                            (Err(e), _) => {
                                result = Err(e);
                                break;
                            }
                            (Ok(_), Err(_)) => unreachable!("the loop ends on the first error"),
                        }
                    }
                    result
                }
            };
            if taken > 0 && conn.gated() {
                shard.wrote(key, taken);
            }
            if let Some(bytes) = traced {
                shard.trace_out(now, key, &bytes);
            }
            let conn = &mut shard.core.conns[key];
            match written {
                Ok(n) => shard.core.stats.bytes_out += n as u64,
                Err(WriteFailed::TimedOut) => {
                    warn!(
                        shard = shard.core.id,
                        conn = conn.id,
                        "client took no bytes for mqtt.send_timeout_ms; closing"
                    );
                    return finish(shard, now, key);
                }
                Err(WriteFailed::Closed) => return finish(shard, now, key),
            }
            if conn.out.is_empty() && conn.out.capacity() > 0 {
                // An idle connection keeps no write buffer.
                conn.out = BytesMut::new();
            }
            if this.wout.is_empty() && this.wout.capacity() > 0 {
                this.wout = BytesMut::new();
            }
            let unwritten = conn.out.len() + this.wout.len();
            if let Some(t) = &mut this.transport {
                if this.broken || t.closing() {
                    if this.wout.is_empty() {
                        if this.broken {
                            // A failed layer (garbage, a flood) is cut off.
                            return finish(shard, now, key);
                        }
                        shard.conn_closed(now, key);
                        return this.begin_drain(cx, now);
                    }
                    return Poll::Pending;
                }
                if conn.phase == Phase::Closing && unwritten == 0 {
                    // A clean end for the layers too: WebSocket close frame, TLS close_notify.
                    t.close();
                    continue;
                }
                if !this.identity_told && t.ready() {
                    this.identity_told = true;
                    if let Some(peer) = t.peer_addr() {
                        conn.set_peer(Some(peer));
                    }
                    conn.set_cert_name(t.peer_cert_name().map(Box::from));
                }
            }
            match conn.phase {
                Phase::Closing if unwritten == 0 => {
                    shard.conn_closed(now, key);
                    return this.begin_drain(cx, now);
                }
                Phase::Closing | Phase::Claiming | Phase::Verifying => return Poll::Pending,
                Phase::AwaitConnect | Phase::Authenticating | Phase::Active => {}
            }
            // 2. Decode what is buffered.
            let mut progressed = false;
            while !this.rbuf.is_empty() {
                match this.decoder.decode(&mut this.rbuf) {
                    Ok(Some(packet)) => {
                        progressed = true;
                        shard.on_packet(now, key, packet);
                        if !matches!(shard.core.conns[key].phase, Phase::Active) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        progressed = true;
                        shard.on_decode_error(key, e.reason_code(), &e.to_string());
                        this.rbuf.clear();
                        break;
                    }
                }
            }
            if this.rbuf.is_empty() && this.rbuf.capacity() > 0 {
                this.rbuf = BytesMut::new();
            }
            if progressed {
                continue;
            }
            // 3. Read more, unless the client is not reading its own acks or the shard's
            //    outbound batches are over their bound (backpressure on the publisher).
            if unwritten >= shard.limits().max_write_buffer_bytes {
                return Poll::Pending;
            }
            if shard.congested() {
                shard.blocked_readers.push(cx.waker().clone());
                return Poll::Pending;
            }
            let mut scratch = std::mem::take(&mut shard.read_scratch);
            let read = Pin::new(&mut this.stream).poll_read(cx, &mut scratch);
            match read {
                Poll::Ready(Ok(0)) => {
                    shard.read_scratch = scratch;
                    return finish(shard, now, key);
                }
                Poll::Ready(Ok(n)) => {
                    shard.core.bytes_in(now, key, n);
                    match &mut this.transport {
                        None => this.rbuf.extend_from_slice(&scratch[..n]),
                        Some(t) => {
                            if let Err(e) = t.on_wire_in(&scratch[..n], &mut this.rbuf) {
                                let conn = &shard.core.conns[key];
                                warn!(shard = shard.core.id, conn = conn.id, peer = ?conn.peer(), error = %e, what = e.description(), "transport error; closing");
                                this.broken = true;
                            }
                        }
                    }
                    shard.read_scratch = scratch;
                }
                Poll::Ready(Err(e)) => {
                    shard.read_scratch = scratch;
                    debug!(shard = shard.core.id, error = %e, "read failed");
                    return finish(shard, now, key);
                }
                Poll::Pending => {
                    shard.read_scratch = scratch;
                    if let Some(t) = &mut this.transport {
                        if t.wants_write() {
                            continue;
                        }
                        t.shrink();
                    }
                    return Poll::Pending;
                }
            }
        }
        // Fairness: let other connections run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Why a write ended the connection.
enum WriteFailed {
    /// `mqtt.send_timeout_ms` passed without the socket taking a byte.
    TimedOut,
    /// The peer is gone.
    Closed,
}

/// Writes from `buf`, at most `limit` bytes (`None`: all), until done or the socket would
/// block; returns the bytes written.
fn write_gated(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    limit: Option<usize>,
) -> Result<usize, WriteFailed> {
    match limit {
        Some(l) if l < buf.len() => {
            let rest = buf.split_off(l);
            let r = write_out(stream, cx, buf);
            buf.unsplit(rest);
            r
        }
        _ => write_out(stream, cx, buf),
    }
}

/// Writes from `buf` until it is empty or the socket would block; returns the bytes written.
fn write_out(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Result<usize, WriteFailed> {
    let mut total = 0;
    while !buf.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == ErrorKind::TimedOut => {
                return Err(WriteFailed::TimedOut)
            }
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(WriteFailed::Closed),
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                total += n;
            }
            Poll::Pending => break,
        }
    }
    Ok(total)
}

impl ConnDriver {
    /// Shuts the write side (the FIN follows the last bytes) and starts dropping input.
    fn begin_drain(&mut self, cx: &mut Context<'_>, now: Instant) -> Poll<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on the socket this driver owns.
        if unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) } != 0 {
            return Poll::Ready(());
        }
        let _ = self
            .stream
            .set_read_timeout(Some(crate::uring::CLOSE_DRAIN));
        self.rbuf = BytesMut::new();
        let until = now + crate::uring::CLOSE_DRAIN;
        self.draining = Some(until);
        self.drain(cx, until)
    }

    /// Reads and drops until the client closes, a read fails or times out, or `until`.
    fn drain(&mut self, cx: &mut Context<'_>, until: Instant) -> Poll<()> {
        let mut scratch = [0u8; 2048];
        for _ in 0..ROUNDS_MAX {
            if Instant::now() >= until || self.drained > crate::uring::CLOSE_DRAIN_BYTES {
                return Poll::Ready(());
            }
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(n)) if n > 0 => self.drained += n as u32,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn finish(shard: &mut Shard, now: Instant, key: ConnKey) -> Poll<()> {
    shard.conn_closed(now, key);
    Poll::Ready(())
}
