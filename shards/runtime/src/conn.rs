//! The per-connection driver: one task per client socket, written as a hand-rolled future so
//! that it borrows the shard's read buffer only inside `poll` (an idle connection holds no
//! buffer) and writes straight from the connection's buffer in the shard.

use crate::shard::{ConnKey, Phase, Shard};
use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use shardmq_broker::session::Close;
use shardmq_codec::{Decoder, ReasonCode};
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

pub(crate) struct ConnDriver {
    shard: Rc<RefCell<Shard>>,
    stream: TcpStream,
    key: ConnKey,
    decoder: Decoder,
    /// Bytes of a packet not yet complete; empty (unallocated) between packets.
    rbuf: BytesMut,
    timeout: Option<Duration>,
}

impl ConnDriver {
    pub(crate) fn new(
        shard: Rc<RefCell<Shard>>,
        stream: TcpStream,
        key: ConnKey,
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
            timeout: None,
        }
    }
}

impl Future for ConnDriver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let shard_rc = this.shard.clone();
        let mut shard = shard_rc.borrow_mut();
        let shard = &mut *shard;
        let now = Instant::now();
        let key = this.key;
        for _ in 0..ROUNDS_MAX {
            let conn = &mut shard.conns[key];
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
            if conn.read_timeout != this.timeout {
                this.timeout = conn.read_timeout;
                if let Err(e) = this.stream.set_read_timeout(this.timeout) {
                    debug!(error = %e, "set_read_timeout failed");
                }
            }
            // 1. Write what the shard queued for this client.
            while !conn.out.is_empty() {
                match Pin::new(&mut this.stream).poll_write(cx, &conn.out) {
                    Poll::Ready(Err(e)) if e.kind() == ErrorKind::TimedOut => {
                        warn!(
                            shard = shard.id,
                            conn = conn.id,
                            "client took no bytes for mqtt.send_timeout_ms; closing"
                        );
                        return finish(shard, now, key);
                    }
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return finish(shard, now, key),
                    Poll::Ready(Ok(n)) => {
                        conn.out.advance(n);
                        shard.stats.bytes_out += n as u64;
                    }
                    Poll::Pending => break,
                }
            }
            if conn.out.is_empty() && conn.out.capacity() > 0 {
                // An idle connection keeps no write buffer.
                conn.out = BytesMut::new();
            }
            let unwritten = conn.out.len();
            match conn.phase {
                Phase::Closing if unwritten == 0 => return finish(shard, now, key),
                Phase::Closing | Phase::Claiming => return Poll::Pending,
                Phase::AwaitConnect | Phase::Authenticating | Phase::Active => {}
            }
            // 2. Decode what is buffered.
            let mut progressed = false;
            while !this.rbuf.is_empty() {
                match this.decoder.decode(&mut this.rbuf) {
                    Ok(Some(packet)) => {
                        progressed = true;
                        shard.on_packet(now, key, packet);
                        if !matches!(shard.conns[key].phase, Phase::Active) {
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
            if unwritten >= shard.cfg.limits.max_write_buffer_bytes {
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
                    shard.stats.bytes_in += n as u64;
                    this.rbuf.extend_from_slice(&scratch[..n]);
                    shard.read_scratch = scratch;
                }
                Poll::Ready(Err(e)) if e.kind() == ErrorKind::TimedOut => {
                    shard.read_scratch = scratch;
                    let phase = shard.conns[key].phase;
                    warn!(
                        shard = shard.id,
                        conn = shard.conns[key].id,
                        ?phase,
                        "keep-alive or connect timeout; closing"
                    );
                    shard.close_conn(
                        key,
                        Close {
                            reason: ReasonCode::KEEP_ALIVE_TIMEOUT,
                            why: "keep-alive timeout",
                        },
                    );
                }
                Poll::Ready(Err(e)) => {
                    shard.read_scratch = scratch;
                    debug!(shard = shard.id, error = %e, "read failed");
                    return finish(shard, now, key);
                }
                Poll::Pending => {
                    shard.read_scratch = scratch;
                    return Poll::Pending;
                }
            }
        }
        // Fairness: let other connections run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn finish(shard: &mut Shard, now: Instant, key: ConnKey) -> Poll<()> {
    shard.conn_closed(now, key);
    Poll::Ready(())
}
