//! `floor --hold uring`: what an idle connection costs when it is *not* a task. One pinned
//! thread per CPU, each with its own io_uring: a multishot accept on an `SO_REUSEPORT`
//! listener, one multishot receive per connection drawing from the thread's pool of provided
//! buffers, the CONNACK sent from a static buffer, and one byte of state per connection in a
//! table indexed by descriptor. No future, no task, no timer object, no buffer per connection.
//! The design a data plane would need to hold an idle connection in less user memory than
//! Mosquitto does (`bench/why-idle.sh`, docs/benchmarks.md); not a broker.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::floor::{connack_for, protocol_level};

/// Buffers in a thread's pool, and their size: enough for a burst of CONNECTs; shared by all of
/// the thread's connections.
const BUFS: u16 = 256;
const BUF_LEN: usize = 4096;
const GROUP: u16 = 1;

/// What a completion is for: the kind in the top byte of `user_data`, the descriptor (or buffer
/// id) below.
const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const SEND: u64 = 3 << 56;
const PROVIDE: u64 = 4 << 56;
const KIND: u64 = 0xff << 56;

/// A connection's state, by descriptor.
const FREE: u8 = 0;
const AWAITING_CONNECT: u8 = 1;
const HELD: u8 = 2;

pub fn run(bind: SocketAddr, cpus: &[usize]) -> anyhow::Result<()> {
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            std::thread::Builder::new()
                .name(format!("uring-floor-{cpu}"))
                .spawn(move || serve(bind, cpu))
        })
        .collect::<Result<_, _>>()?;
    eprintln!("listening on {bind} (io_uring, no task per connection)");
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a floor thread panicked"))??;
    }
    Ok(())
}

fn serve(bind: SocketAddr, cpu: usize) -> io::Result<()> {
    pin(cpu);
    let listener = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::STREAM,
        None,
    )?;
    listener.set_reuse_port(true)?;
    listener.set_reuse_address(true)?;
    listener.bind(&bind.into())?;
    listener.listen(4096)?;
    let mut ring = IoUring::new(4096)?;
    let mut pool = vec![0u8; usize::from(BUFS) * BUF_LEN];
    let mut state: Vec<u8> = Vec::new();
    let base = pool.as_mut_ptr();
    push(
        &mut ring,
        opcode::ProvideBuffers::new(base, BUF_LEN as i32, BUFS, GROUP, 0)
            .build()
            .user_data(PROVIDE),
    )?;
    let accept = || {
        opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT)
    };
    let recv = |fd: i32| {
        opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(RECV | fd as u64)
    };
    push(&mut ring, accept())?;
    let mut done = Vec::new();
    loop {
        ring.submit_and_wait(1)?;
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (data, res, flags) in done.drain(..) {
            match data & KIND {
                ACCEPT => {
                    if res >= 0 {
                        let fd = res as usize;
                        if state.len() <= fd {
                            state.resize(fd + 1, FREE);
                        }
                        state[fd] = AWAITING_CONNECT;
                        push(&mut ring, recv(res))?;
                    }
                    if !cqueue::more(flags) {
                        push(&mut ring, accept())?;
                    }
                }
                RECV => {
                    let fd = (data & !KIND) as i32;
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        let at = usize::from(bid) * BUF_LEN;
                        if res > 0 && state[fd as usize] == AWAITING_CONNECT {
                            let level = protocol_level(&pool[at..at + res as usize]);
                            let reply = connack_for(level);
                            push(
                                &mut ring,
                                opcode::Send::new(
                                    types::Fd(fd),
                                    reply.as_ptr(),
                                    reply.len() as u32,
                                )
                                .build()
                                .user_data(SEND | fd as u64),
                            )?;
                            state[fd as usize] = HELD;
                        }
                        // SAFETY: `at` is inside `pool`, which outlives the ring's use of it.
                        let buf = unsafe { base.add(at) };
                        push(
                            &mut ring,
                            opcode::ProvideBuffers::new(buf, BUF_LEN as i32, 1, GROUP, bid)
                                .build()
                                .user_data(PROVIDE),
                        )?;
                    }
                    if res == -libc::ENOBUFS {
                        // The pool ran dry for a moment: the receive ended, arm it again.
                        push(&mut ring, recv(fd))?;
                    } else if res <= 0 {
                        state[fd as usize] = FREE;
                        // SAFETY: fd came from accept and is closed once, here.
                        unsafe { libc::close(fd) };
                    } else if !cqueue::more(flags) {
                        push(&mut ring, recv(fd))?;
                    }
                }
                SEND => {}
                PROVIDE if res < 0 => {
                    return Err(io::Error::from_raw_os_error(-res));
                }
                _ => {}
            }
        }
    }
}

/// Queues `entry`, submitting what is queued first if the submission queue is full.
fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an entry points to (the pool, the static CONNACKs) outlives the
        // ring.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
