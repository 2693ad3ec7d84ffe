//! `floor`: what glommio alone costs per idle connection, measured the way the broker holds one.
//!
//! One pinned executor per CPU with the broker's settings (`io_memory` 512 KiB, mimalloc with
//! lazy arena commit, `SO_REUSEPORT` listeners), accepting MQTT clients and answering each
//! CONNECT with a fixed MQTT 3.1.1 CONNACK, and nothing else: no session, no registry, no
//! routing. `--hold` says how much of the broker's per-connection machinery each connection keeps:
//! the glommio `TcpStream` only (`socket`), plus one task whose pending read uses a shared
//! scratch buffer exactly as the broker's connection driver does (`read`), plus the keep-alive
//! read timeout the broker arms on every connection (`read-timeout`, the default). The broker's
//! RSS per idle connection minus this floor is shardmq's own state (`bench/why-idle.sh`).

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use clap::{Args, ValueEnum};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

/// The CONNACK every client gets (session not present, accepted), for MQTT 3.1.1 and for 5.0
/// (with an empty property list).
const CONNACK_V4: &[u8] = &[0x20, 0x02, 0x00, 0x00];
const CONNACK_V5: &[u8] = &[0x20, 0x03, 0x00, 0x00, 0x00];
/// The broker's read scratch buffer size (`shards/runtime/src/shard.rs`).
const SCRATCH: usize = 64 * 1024;

#[derive(Args)]
pub struct FloorArgs {
    /// Address to listen on (every executor binds it with SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:18990")]
    bind: SocketAddr,
    /// CPUs to run one executor each on.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    cpus: Vec<usize>,
    /// What each connection keeps after its CONNACK.
    #[arg(long, value_enum, default_value = "read-timeout")]
    hold: Hold,
    /// The read timeout of `--hold read-timeout`, as the broker's keep-alive × 1.5 would be.
    #[arg(long, default_value_t = 450)]
    timeout_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Hold {
    /// The glommio `TcpStream` in a list; no task.
    Socket,
    /// The stream in a task with a pending read into a shared scratch buffer.
    Read,
    /// `read` plus the keep-alive read timeout.
    ReadTimeout,
    /// No glommio: io_uring with a multishot receive per connection and no task
    /// (`uring_floor.rs`).
    Uring,
}

pub fn run(args: FloorArgs) -> anyhow::Result<()> {
    if args.hold == Hold::Uring {
        return crate::uring_floor::run(args.bind, &args.cpus);
    }
    let mut handles = Vec::new();
    for &cpu in &args.cpus {
        let (bind, hold, timeout) = (args.bind, args.hold, Duration::from_secs(args.timeout_secs));
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("floor-{cpu}"))
            .io_memory(512 * 1024)
            .spawn(move || async move {
                let ms10 = Duration::from_millis(10);
                shardmq_shards::spawn_park_guard(ms10, ms10, || 0);
                if let Err(e) = serve(bind, hold, timeout).await {
                    eprintln!("executor on cpu {cpu}: {e:#}");
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start an executor on cpu {cpu}: {e}"))?;
        handles.push(handle);
    }
    eprintln!("listening on {}", args.bind);
    for h in handles {
        h.join().map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    }
    Ok(())
}

async fn serve(bind: SocketAddr, hold: Hold, timeout: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind).map_err(|e| anyhow::anyhow!("bind {bind}: {e}"))?;
    let scratch = Rc::new(RefCell::new(vec![0u8; SCRATCH]));
    let kept = Rc::new(RefCell::new(Vec::new()));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (scratch, kept) = (scratch.clone(), kept.clone());
        glommio::spawn_local(async move {
            let mut stream = stream;
            if connack(&mut stream, &scratch).await.is_err() {
                return;
            }
            match hold {
                Hold::Socket => kept.borrow_mut().push(stream),
                Hold::Read => hold_reading(stream, &scratch).await,
                Hold::ReadTimeout => {
                    if stream.set_read_timeout(Some(timeout)).is_ok() {
                        hold_reading(stream, &scratch).await;
                    }
                }
                Hold::Uring => unreachable!("served by uring_floor"),
            }
        })
        .detach();
    }
}

/// Reads the CONNECT (one read suffices for a small CONNECT on loopback), then writes the
/// CONNACK of its protocol version.
async fn connack(stream: &mut TcpStream, scratch: &Rc<RefCell<Vec<u8>>>) -> std::io::Result<()> {
    let v5 = poll_fn(|cx| {
        let mut buf = scratch.borrow_mut();
        Pin::new(&mut *stream)
            .poll_read(cx, &mut buf)
            .map_ok(|n| protocol_level(&buf[..n]) == Some(5))
    })
    .await?;
    let reply = connack_for(v5.then_some(5));
    let mut written = 0;
    while written < reply.len() {
        written += poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, &reply[written..])).await?;
    }
    Ok(())
}

/// The CONNACK for a CONNECT of protocol `level` (MQTT 3.1.1's unless 5).
pub(crate) fn connack_for(level: Option<u8>) -> &'static [u8] {
    if level == Some(5) {
        CONNACK_V5
    } else {
        CONNACK_V4
    }
}

/// The protocol level byte of a CONNECT: after the fixed header (type byte, remaining length
/// of 1–4 bytes) and the protocol name "MQTT" (2-byte length + 4 bytes).
pub(crate) fn protocol_level(connect: &[u8]) -> Option<u8> {
    let len_bytes = connect.get(1..)?.iter().position(|b| b & 0x80 == 0)? + 1;
    connect.get(1 + len_bytes + 6).copied()
}

/// Keeps a pending read on the stream, as the broker's connection driver does, until the peer
/// closes, errs or times out. The scratch buffer is borrowed only for each poll.
async fn hold_reading(mut stream: TcpStream, scratch: &Rc<RefCell<Vec<u8>>>) {
    poll_fn(|cx| loop {
        let mut buf = scratch.borrow_mut();
        match Pin::new(&mut stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => continue,
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::protocol_level;

    #[test]
    fn reads_the_protocol_level_after_a_one_or_two_byte_length() {
        // CONNECT, remaining length 16, "MQTT", level 4.
        let v4 = [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        assert_eq!(protocol_level(&v4), Some(4));
        // Remaining length 200 takes two bytes (0xC8 0x01); level 5.
        let v5 = [0x10, 0xC8, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 5, 2];
        assert_eq!(protocol_level(&v5), Some(5));
        assert_eq!(protocol_level(&[0x10, 0x80]), None);
        assert_eq!(protocol_level(&[0x10, 16, 0, 4, b'M']), None);
    }
}
