//! The connection driver without a task per connection (`shard.driver = "uring"`, the
//! default): each shard drives every one of its client sockets through one io_uring of its
//! own, next to glommio's. A multishot accept per listener, one multishot receive per
//! connection drawing from the shard's ring of provided buffers, one send in flight per
//! connection, keep-alive, connect and send timeouts in a coarse timer wheel. An idle
//! connection is a [`Slot`] in a slab and the shard's `Conn`: no future, no task, no timer
//! object, no buffer.
//!
//! glommio stays the executor: one task ([`run`]) reaps this ring's completions, drives the
//! connections they concern (and those the shard woke), and submits; when there is nothing to
//! do it waits for the ring's eventfd through a read on glommio's own ring, so either ring's
//! work wakes the shard's thread. A connection never waits on glommio's I/O, and the vendored
//! glommio no longer parks with runnable tasks (decision 0005; 0.9.0's bug, 0003, could strand
//! the whole loop until the park guard's timer).
//!
//! What a connection does with its bytes is the same as in the task driver (`conn.rs`): the
//! transport layers (PROXY, TLS, WebSocket), the decoder, the shard's packet handlers, the
//! durable write gates, backpressure (no reading while the client's backlog is over
//! `max_write_buffer_bytes` or the shard's outbound batches are over their bound).

use crate::shell::Shard;
use crate::ListenerSpec;
use bytes::{Buf, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use shardmq_codec::Decoder;
use shardmq_core::ChunkSlab as Slab;
use shardmq_core::Phase;
use shardmq_transport::Transport;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};

/// Read/decode/write rounds for one connection per turn before the others get theirs.
const ROUNDS_MAX: usize = 16;
/// Plaintext handed to a transport at once (a few TLS records or WebSocket frames).
const PLAIN_CHUNK_BYTES: usize = 64 * 1024;
/// Wire bytes a transport gathers for one send.
const WIRE_BATCH_BYTES: usize = 64 * 1024;
/// Submission queue entries; the completion queue has four times as many.
const RING_ENTRIES: u32 = 256;
/// The shard's receive pool: buffers and their size. Shared by all of the shard's connections;
/// a connection holds one only between the completion that fills it and the copy out of it.
/// A power of two (the buffer ring's size).
const BUFS: u16 = 64;
const BUF_LEN: usize = 2048;
const GROUP: u16 = 1;
/// Resolution of the timer wheel (keep-alive, connect and send timeouts).
const TICK: Duration = Duration::from_millis(100);
/// After accept fails (out of descriptors), wait this long before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What a completion is for: the kind in the top byte of `user_data`, the slot (or listener)
/// below.
const K_ACCEPT: u64 = 1 << 56;
const K_RECV: u64 = 2 << 56;
const K_SEND: u64 = 3 << 56;
const K_CANCEL: u64 = 5 << 56;
const K_MASK: u64 = 0xff << 56;

/// No wheel entry.
const NO_TICK: u32 = u32::MAX;

/// How long a connection the broker ended keeps being read (and what arrives dropped) after
/// its last bytes, so that the client's unread input does not make the close a reset, which
/// would discard a DISCONNECT or CONNACK still in the socket (MQTT-4.13: the client must be
/// able to read the reason code).
pub(crate) const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// Most bytes a draining connection is read for: a client that keeps flooding after the broker
/// ended it is closed (reset) past this. A well-behaved one reads the reason code long before.
pub(crate) const CLOSE_DRAIN_BYTES: u32 = 1024 * 1024;

// The limits' relations, checked when the crate compiles: a received buffer fits in a wire
// batch and a plaintext chunk; the wheel ticks within a drain and within the core's timer
// resolution; the buffer ring's size is a power of two; the kinds fit the tag bits.
const _: () = assert!(WIRE_BATCH_BYTES >= BUF_LEN && PLAIN_CHUNK_BYTES >= BUF_LEN);
const _: () = assert!(TICK.as_millis() < CLOSE_DRAIN.as_millis());
const _: () = assert!(TICK.as_millis() <= shardmq_core::TIMER_BUCKET.as_millis());
const _: () = assert!(BUFS.is_power_of_two());
const _: () = assert!(K_CANCEL & !K_MASK == 0 && ROUNDS_MAX > 0);

/// One connection, as the driver sees it.
struct Slot {
    fd: OwnedFd,
    /// The shard's key for the connection (valid while `open`).
    conn: u32,
    /// Tells this slot's wheel entries from those of an earlier slot at the same index.
    serial: u32,
    /// The shard still has the connection.
    open: bool,
    /// A multishot receive is armed (until its final completion).
    recv_armed: bool,
    /// A cancel of the receive is on its way.
    recv_cancelling: bool,
    send_inflight: bool,
    /// Cancels for the slot's operations have been submitted (closing).
    cancelled: bool,
    /// The peer closed its side, or a read failed: finish after decoding what is buffered.
    eof: bool,
    /// A send failed: the peer is gone.
    dead: bool,
    /// Closed by us with everything written: the write side is shut down and what the
    /// client still sends is read and dropped until it closes or [`CLOSE_DRAIN`] passes.
    draining: bool,
    /// Bytes read and dropped while draining.
    drained: u32,
    /// In the driver's ready list.
    ready: bool,
    /// The transport failed: write what it queued (an alert, a close frame), then close.
    broken: bool,
    /// The shard has been told the transport's peer address and certificate name.
    identity_told: bool,
    decoder: Decoder,
    /// Bytes of a packet not yet complete, and the bytes of the send in flight (the kernel
    /// reads them until it completes; between sends, where a transport's wire bytes gather:
    /// empty whenever no send is in flight on an open connection). Boxed only while one of
    /// them holds bytes: an idle connection holds neither.
    bufs: Bufs,
    /// TLS / WebSocket / PROXY layers; `None` for plain TCP.
    transport: Option<Box<Transport>>,
    /// The read timeout in force (the shard's `Conn::read_timeout`) in milliseconds, 0 for
    /// none, and since when (the driver's clock: [`Driver::ms`]) the connection has been
    /// waiting for bytes.
    read_timeout_ms: u32,
    read_since: u32,
    /// When the send in flight started or last made progress.
    send_since: u32,
    /// The earliest tick at which the wheel holds an entry for this slot.
    wheel_due: u32,
}

/// A connection's read buffer and send buffer, in a box that exists only while one of them
/// holds bytes.
#[derive(Default)]
struct Bufs(Option<Box<[BytesMut; 2]>>);

impl Bufs {
    fn rbuf(&mut self) -> &mut BytesMut {
        &mut self.0.get_or_insert_with(Default::default)[0]
    }

    fn sending(&mut self) -> &mut BytesMut {
        &mut self.0.get_or_insert_with(Default::default)[1]
    }

    fn rbuf_len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b[0].len())
    }

    fn sending_len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b[1].len())
    }

    /// Frees the empty buffers, and the box once both are (a send in flight is never empty,
    /// so its bytes stay).
    fn trim(&mut self) {
        if let Some(b) = &mut self.0 {
            for buf in b.iter_mut() {
                if buf.is_empty() && buf.capacity() > 0 {
                    *buf = BytesMut::new();
                }
            }
            if b.iter().all(|buf| buf.capacity() == 0) {
                self.0 = None;
            }
        }
    }
}

/// A listener of the shard.
struct Listen {
    fd: OwnedFd,
    spec: ListenerSpec,
    armed: bool,
    retry_at: Option<Instant>,
}

/// The receive pool's buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel takes a buffer from
/// its head for each receive, the driver gives it back at its tail with two stores, no
/// submission and no completion (`ProvideBuffers` cost one of each per receive).
struct BufRing {
    /// `BUFS` entries in a page of their own (the kernel requires page alignment).
    entries: *mut types::BufRingEntry,
    /// Our tail: buffers given so far (wrapping); published with each `give`.
    tail: u16,
}

const BUF_RING_BYTES: usize = BUFS as usize * std::mem::size_of::<types::BufRingEntry>();

impl BufRing {
    fn new() -> io::Result<BufRing> {
        // SAFETY: an anonymous private mapping; the result is checked.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BUF_RING_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(BufRing {
            entries: at.cast(),
            tail: 0,
        })
    }

    /// Hands buffer `bid` of the pool at `base` (to the kernel, once registered).
    fn give(&mut self, base: *mut u8, bid: u16) {
        let at = usize::from(self.tail & (BUFS - 1));
        // SAFETY: `at` < BUFS entries of the mapping; the kernel reads an entry only once the
        // tail below covers it, and never writes one. The buffer lies inside the pool, which
        // lives as long as the driver.
        unsafe {
            let e = &mut *self.entries.add(at);
            e.set_addr(base.add(usize::from(bid) * BUF_LEN) as u64);
            e.set_len(BUF_LEN as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the first entry's reserved field, a u16 that the kernel only
        // reads; the release store publishes the entry written above.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail)
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once; the ring that used it is closed (field order).
        unsafe { libc::munmap(self.entries.cast(), BUF_RING_BYTES) };
    }
}

/// The shard's connection driver: the ring, the slots, the receive pool, the timer wheel.
pub(crate) struct Driver {
    ring: IoUring,
    slots: Slab<Slot>,
    listeners: Vec<Listen>,
    /// `BUFS` buffers of `BUF_LEN` bytes, lent to the kernel through `bufs`.
    pool: Box<[u8]>,
    /// After `ring`: unmapped when the ring is gone.
    bufs: BufRing,
    /// Tick → slots to look at then.
    wheel: BTreeMap<u32, Vec<(u32, u32)>>,
    epoch: Instant,
    serial: u32,
    /// Slots to drive in this turn.
    ready: Vec<u32>,
    /// Completions reaped but not handled yet.
    cqes: Vec<(u64, i32, u32)>,
    max_packet_size: u32,
    send_timeout: Duration,
    _eventfd: OwnedFd,
}

// ---- waking a connection ---------------------------------------------------------------
//
// The core lists a connection (new output, a phase change, the end of congestion) and hands
// back its `io_token`, which here is the slot index. While the driver turns it takes them from
// the core itself; after any other task's step the shell puts them on this thread's list and
// wakes the driver's task.

struct Woken {
    slots: Vec<u32>,
    task: Option<Waker>,
}

thread_local! {
    static WOKEN: RefCell<Woken> = const { RefCell::new(Woken { slots: Vec::new(), task: None }) };
}

static VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake, waker_drop);

unsafe fn waker_clone(p: *const ()) -> RawWaker {
    RawWaker::new(p, &VTABLE)
}

unsafe fn waker_wake(p: *const ()) {
    let task = WOKEN
        .try_with(|w| {
            let mut w = w.borrow_mut();
            w.slots.push(p as usize as u32);
            w.task.take()
        })
        .ok()
        .flatten();
    if let Some(t) = task {
        t.wake();
    }
}

unsafe fn waker_drop(_: *const ()) {}

/// A waker for the connection in slot `idx`, for the shell's list of readers blocked on
/// congestion. It is only meaningful on the shard's own thread (elsewhere it lists the slot
/// on that thread's empty list: harmless). Allocates nothing.
fn conn_waker(idx: usize) -> Waker {
    // SAFETY: the vtable's functions treat the data pointer as a plain integer and never
    // dereference it; they are sound on any thread.
    unsafe { Waker::from_raw(RawWaker::new(idx as *const (), &VTABLE)) }
}

/// Lists every slot the core has ready on this thread's list and wakes the driver's task.
pub(crate) fn wake_slots(core: &mut shardmq_core::ShardCore) {
    let task = WOKEN.with(|w| {
        let mut w = w.borrow_mut();
        while let Some((_, token)) = core.poll_conn() {
            w.slots.push(token);
        }
        w.task.take()
    });
    if let Some(t) = task {
        t.wake();
    }
}

impl Driver {
    /// A driver for `listeners` (bound, listening sockets of this shard).
    pub(crate) fn new(
        listeners: Vec<(OwnedFd, ListenerSpec)>,
        max_packet_size: u32,
        send_timeout: Duration,
    ) -> io::Result<(Driver, OwnedFd)> {
        // Cooperative task running: a completion that the network stack produces while the
        // shard runs in user space is not signalled with an interrupt (an IPI, a VM exit on a
        // virtual machine); the shard runs it at its next syscall, or at its next `submit`,
        // which the task-run flag asks for. A sleeping shard is still woken. The shard's
        // thread is the ring's only submitter.
        let ring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 4)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(RING_ENTRIES * 4)
                    .build(RING_ENTRIES)
            })?;
        // SAFETY: plain syscall; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let waiter = efd.try_clone()?;
        let mut d = Driver {
            ring,
            slots: Slab::new(),
            listeners: listeners
                .into_iter()
                .map(|(fd, spec)| Listen {
                    fd,
                    spec,
                    armed: false,
                    retry_at: None,
                })
                .collect(),
            pool: vec![0u8; usize::from(BUFS) * BUF_LEN].into_boxed_slice(),
            bufs: BufRing::new()?,
            wheel: BTreeMap::new(),
            epoch: Instant::now(),
            serial: 0,
            ready: Vec::new(),
            cqes: Vec::new(),
            max_packet_size,
            send_timeout,
            _eventfd: efd,
        };
        let base = d.pool.as_mut_ptr();
        for bid in 0..BUFS {
            d.bufs.give(base, bid);
        }
        // SAFETY: the ring's memory is mapped until `bufs` is dropped, after `ring`.
        unsafe {
            d.ring.submitter().register_buf_ring_with_flags(
                d.bufs.entries as u64,
                BUFS,
                GROUP,
                0,
            )?;
        }
        for i in 0..d.listeners.len() {
            d.arm_accept(i);
        }
        d.ring.submit()?;
        Ok((d, waiter))
    }

    // ---- the ring ----------------------------------------------------------------------

    /// Queues `entry`, submitting what is queued first if the submission queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to outlives the operation: the pool lives
            // as long as the ring, a send's bytes stay in its slot's `sending` until the send
            // completes, and a slot (and its descriptor) is removed only when none of its
            // operations is in flight.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    // The completion queue is full: reap, then submit again.
                    self.reap();
                } else {
                    error!(error = %e, "io_uring submit failed");
                    return;
                }
            }
        }
    }

    /// Moves the completion queue's entries to `cqes`.
    fn reap(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        self.cqes
            .extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
    }

    fn arm_accept(&mut self, li: usize) {
        let fd = self.listeners[li].fd.as_raw_fd();
        self.listeners[li].armed = true;
        self.listeners[li].retry_at = None;
        self.push(
            opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(K_ACCEPT | li as u64),
        );
    }

    fn arm_recv(&mut self, idx: usize, now: Instant) {
        let slot = &mut self.slots[idx];
        if slot.recv_armed || slot.eof || slot.dead {
            return;
        }
        slot.recv_armed = true;
        if !slot.draining {
            // A drain keeps its start: re-arming never extends it.
            slot.read_since = ms(self.epoch, now);
        }
        let fd = slot.fd.as_raw_fd();
        let due = (slot.read_timeout_ms > 0)
            .then(|| now + Duration::from_millis(u64::from(slot.read_timeout_ms)));
        self.push(
            opcode::RecvMulti::new(types::Fd(fd), GROUP)
                .build()
                .user_data(K_RECV | idx as u64),
        );
        if let Some(due) = due {
            self.schedule(idx, due);
        }
    }

    /// Stops reading the connection (backpressure, a phase that reads nothing): the bytes
    /// the client sends wait in the kernel.
    fn pause_recv(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        if !slot.recv_armed || slot.recv_cancelling {
            return;
        }
        slot.recv_cancelling = true;
        self.push(
            opcode::AsyncCancel::new(K_RECV | idx as u64)
                .build()
                .user_data(K_CANCEL | idx as u64),
        );
    }

    fn submit_send(&mut self, idx: usize, now: Instant) {
        let slot = &mut self.slots[idx];
        debug_assert!(!slot.send_inflight && slot.bufs.sending_len() > 0);
        slot.send_inflight = true;
        slot.send_since = ms(self.epoch, now);
        let fd = slot.fd.as_raw_fd();
        let sending = slot.bufs.sending();
        let len = sending.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(types::Fd(fd), sending.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(K_SEND | idx as u64);
        self.push(entry);
        self.schedule(idx, now + self.send_timeout);
    }

    /// Looks at slot `idx` again at `at` (or a little after: the wheel's tick).
    fn schedule(&mut self, idx: usize, at: Instant) {
        let tick = (at.saturating_duration_since(self.epoch).as_millis() as u64)
            .div_ceil(TICK.as_millis() as u64)
            .min(u64::from(NO_TICK - 1)) as u32;
        let slot = &mut self.slots[idx];
        if tick < slot.wheel_due {
            slot.wheel_due = tick;
            self.wheel
                .entry(tick)
                .or_default()
                .push((idx as u32, slot.serial));
        }
    }

    fn mark_ready(&mut self, idx: usize) {
        if let Some(slot) = self.slots.get_mut(idx) {
            if !slot.ready {
                slot.ready = true;
                self.ready.push(idx as u32);
            }
        }
    }

    // ---- one turn ----------------------------------------------------------------------

    /// Handles every completion, drives every connection that has something to do, submits.
    /// Returns whether anything happened.
    pub(crate) fn turn(&mut self, shard: &mut Shard, now: Instant) -> bool {
        self.reap();
        let mut worked = !self.cqes.is_empty();
        let mut cqes = std::mem::take(&mut self.cqes);
        for (data, res, flags) in cqes.drain(..) {
            self.complete(shard, now, data, res, flags);
        }
        if self.cqes.is_empty() {
            self.cqes = cqes;
        }
        let woken = WOKEN.with(|w| std::mem::take(&mut w.borrow_mut().slots));
        worked |= !woken.is_empty();
        for idx in woken {
            self.mark_ready(idx as usize);
        }
        while let Some((_, idx)) = shard.core.poll_conn() {
            worked = true;
            self.mark_ready(idx as usize);
        }
        let mut ready = std::mem::take(&mut self.ready);
        worked |= !ready.is_empty();
        for &idx in ready.iter() {
            if let Some(s) = self.slots.get_mut(idx as usize) {
                s.ready = false;
                self.drive(shard, now, idx as usize);
            }
        }
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready;
        }
        self.submit();
        worked
    }

    fn submit(&mut self) {
        let sq = self.ring.submission();
        let enter = !sq.is_empty() || sq.cq_overflow() || sq.taskrun();
        drop(sq);
        if enter {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => error!(error = %e, "io_uring submit failed"),
            }
        }
    }

    /// Whether the ring signals its eventfd on each completion. Only a driver about to sleep
    /// needs it: an awake one reaps the queue anyway, and each signal is an eventfd write
    /// in the kernel's completion path. The kernel reads the flag after publishing a
    /// completion without a full barrier, so a completion that races the re-enable can go
    /// unsignalled; the ticker's turn (every [`TICK`]) reaps it then.
    fn signal_completions(&mut self, on: bool) {
        let cq = self.ring.completion();
        if on {
            cq.enable_eventfd();
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        } else {
            cq.disable_eventfd();
        }
    }

    /// Whether a completion or a woken connection waits (the loop must not sleep).
    fn has_work(&mut self) -> bool {
        !self.ready.is_empty()
            || !self.cqes.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().taskrun()
            || WOKEN.with(|w| !w.borrow().slots.is_empty())
    }

    fn complete(&mut self, shard: &mut Shard, now: Instant, data: u64, res: i32, flags: u32) {
        let idx = (data & !K_MASK) as usize;
        match data & K_MASK {
            K_ACCEPT => self.accepted(shard, now, idx, res, flags),
            K_RECV => self.received(shard, now, idx, res, flags),
            K_SEND => self.sent(shard, now, idx, res),
            _ => {}
        }
    }

    fn accepted(&mut self, shard: &mut Shard, now: Instant, li: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.listeners[li].armed = false;
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            // EMFILE/ENFILE: out of descriptors. Back off instead of spinning.
            warn!(error = %e, "accept failed");
            if !self.listeners[li].armed {
                self.listeners[li].retry_at = Some(now + ACCEPT_RETRY);
            }
            return;
        }
        if !self.listeners[li].armed {
            self.arm_accept(li);
        }
        // SAFETY: a new descriptor from accept that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let sock = socket2::SockRef::from(&fd);
        if let Err(e) = sock.set_nodelay(true) {
            debug!(error = %e, "set_nodelay failed");
        }
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let spec = &self.listeners[li].spec;
        let transport = match spec.stack(self.max_packet_size as usize) {
            None => None,
            Some(stack) => match Transport::new(&stack) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    error!(error = %e, kind = ?spec.kind, "cannot set up a connection's transport");
                    return;
                }
            },
        };
        let (key, _) = shard.open_conn(now, peer, spec.kind, 0);
        self.serial = self.serial.wrapping_add(1);
        // Connect and keep-alive timeouts are the core's (its timer table); this one is for
        // the drain of a graceful close only.
        let read_timeout_ms = 0;
        let since = ms(self.epoch, now);
        let idx = self.slots.insert(Slot {
            fd,
            conn: key as u32,
            serial: self.serial,
            open: true,
            recv_armed: false,
            recv_cancelling: false,
            send_inflight: false,
            cancelled: false,
            eof: false,
            dead: false,
            draining: false,
            drained: 0,
            ready: false,
            broken: false,
            identity_told: false,
            decoder: Decoder::new(self.max_packet_size),
            bufs: Bufs::default(),
            transport,
            read_timeout_ms,
            read_since: since,
            send_since: since,
            wheel_due: NO_TICK,
        });
        shard.core.conns[key].io_token = u32::try_from(idx).expect("fewer than 2^32 slots");
        self.arm_recv(idx, now);
    }

    fn received(&mut self, shard: &mut Shard, now: Instant, idx: usize, res: i32, flags: u32) {
        let slot = &mut self.slots[idx];
        if !cqueue::more(flags) {
            slot.recv_armed = false;
            slot.recv_cancelling = false;
        }
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0 && slot.draining {
                slot.drained = slot.drained.saturating_add(res as u32);
                if slot.drained > CLOSE_DRAIN_BYTES {
                    // Still flooding: no more patience (the close is a reset now).
                    slot.eof = true;
                }
            }
            if res > 0 && slot.open && !slot.eof && !slot.dead {
                let at = usize::from(bid) * BUF_LEN;
                let data = &self.pool[at..at + res as usize];
                shard.core.bytes_in(now, slot.conn as usize, res as usize);
                slot.read_since = ms(self.epoch, now);
                match &mut slot.transport {
                    None => slot.bufs.rbuf().extend_from_slice(data),
                    Some(t) => {
                        if let Err(e) = t.on_wire_in(data, slot.bufs.rbuf()) {
                            let conn = &shard.core.conns[slot.conn as usize];
                            warn!(shard = shard.core.id, conn = conn.id, peer = ?conn.peer(), error = %e, what = e.description(), "transport error; closing");
                            slot.broken = true;
                        }
                    }
                }
            }
            self.bufs.give(self.pool.as_mut_ptr(), bid);
        }
        let slot = &mut self.slots[idx];
        match res {
            0 => slot.eof = true,
            r if r > 0 => {}
            r if -r == libc::ENOBUFS || -r == libc::ECANCELED => {}
            r => {
                debug!(shard = shard.core.id, error = %io::Error::from_raw_os_error(-r), "read failed");
                slot.eof = true;
            }
        }
        self.mark_ready(idx);
    }

    fn sent(&mut self, shard: &mut Shard, now: Instant, idx: usize, res: i32) {
        let slot = &mut self.slots[idx];
        slot.send_inflight = false;
        if res > 0 {
            shard.core.stats.bytes_out += res as u64;
            slot.bufs.sending().advance(res as usize);
            slot.send_since = ms(self.epoch, now);
            if slot.bufs.sending_len() > 0 && slot.open && !slot.dead {
                self.submit_send(idx, now);
            }
        } else if res != -libc::ECANCELED {
            slot.dead = true;
        }
        self.mark_ready(idx);
    }

    // ---- one connection ----------------------------------------------------------------

    /// Writes what the shard queued, decodes what was read, and arms or pauses the receive:
    /// what the task driver's `poll` does, for one connection.
    fn drive(&mut self, shard: &mut Shard, now: Instant, idx: usize) {
        if !self.slots[idx].open {
            let slot = &self.slots[idx];
            if slot.draining && !slot.eof && !slot.dead {
                // Keep reading (and dropping) until the client closes or the drain ends.
                return self.arm_recv(idx, now);
            }
            self.release(idx);
            return;
        }
        for _ in 0..ROUNDS_MAX {
            let key = self.slots[idx].conn as usize;
            if self.slots[idx].dead {
                return self.finish(shard, now, idx);
            }
            // `storage.durability = "sync"`: output past a durable gate waits.
            let limit = shard.write_limit(key);
            let slot = &mut self.slots[idx];
            let conn = &mut shard.core.conns[key];
            // 1. Hand the kernel what the shard queued (up to a durable gate), one send at a
            //    time: plaintext goes into a transport only once its previous wire bytes are
            //    sent, so the connection's write buffer still measures the client's backlog.
            let mut taken = 0;
            // What goes out while the shard traces a client (`mgmt`), told below.
            let mut traced: Option<Vec<u8>> = None;
            if !slot.send_inflight {
                match &mut slot.transport {
                    None => {
                        let n = limit.map_or(conn.out.len(), |l| l.min(conn.out.len()));
                        if n > 0 && slot.bufs.sending_len() == 0 {
                            if n == conn.out.len() {
                                std::mem::swap(slot.bufs.sending(), &mut conn.out);
                            } else {
                                *slot.bufs.sending() = conn.out.split_to(n);
                            }
                            taken = n;
                            if shard.core.traces.is_some() {
                                traced = Some(slot.bufs.sending().to_vec());
                            }
                        }
                    }
                    Some(t) => loop {
                        if t.wants_write() {
                            t.take_wire_out(slot.bufs.sending());
                        }
                        if slot.bufs.sending_len() >= WIRE_BATCH_BYTES {
                            break;
                        }
                        let n = conn.out.len().min(PLAIN_CHUNK_BYTES);
                        let n = limit.map_or(n, |l| n.min(l - taken));
                        if slot.broken || n == 0 || !t.ready() {
                            break;
                        }
                        if let Err(e) = t.on_plain_out(&conn.out[..n]) {
                            warn!(shard = shard.core.id, conn = conn.id, error = %e, "transport refused output; closing");
                            slot.broken = true;
                        }
                        if shard.core.traces.is_some() {
                            let out = traced.get_or_insert_with(Vec::new);
                            out.extend_from_slice(&conn.out[..n]);
                        }
                        conn.out.advance(n);
                        taken += n;
                    },
                }
                if slot.bufs.sending_len() > 0 {
                    self.submit_send(idx, now);
                }
            }
            if taken > 0 && shard.core.conns[key].gated() {
                shard.wrote(key, taken);
            }
            if let Some(bytes) = traced {
                shard.trace_out(now, key, &bytes);
            }
            let slot = &mut self.slots[idx];
            let conn = &mut shard.core.conns[key];
            if conn.out.is_empty() && conn.out.capacity() > 0 {
                // An idle connection keeps no write buffer.
                conn.out = BytesMut::new();
            }
            slot.bufs.trim();
            let unwritten = conn.out.len() + slot.bufs.sending_len();
            if let Some(t) = &mut slot.transport {
                if slot.broken || t.closing() {
                    if unwritten == 0 && !t.wants_write() {
                        // A failed layer (garbage, a flood) is cut off; a clean close drains.
                        if slot.broken {
                            return self.finish(shard, now, idx);
                        }
                        return self.finish_graceful(shard, now, idx);
                    }
                    if !slot.send_inflight && t.wants_write() {
                        continue;
                    }
                    return self.pause_recv(idx);
                }
                if conn.phase == Phase::Closing && unwritten == 0 {
                    // A clean end for the layers too: WebSocket close frame, TLS close_notify.
                    t.close();
                    continue;
                }
                if !slot.identity_told && t.ready() {
                    slot.identity_told = true;
                    if let Some(peer) = t.peer_addr() {
                        conn.set_peer(Some(peer));
                    }
                    conn.set_cert_name(t.peer_cert_name().map(Box::from));
                }
            }
            match conn.phase {
                Phase::Closing if unwritten == 0 => return self.finish_graceful(shard, now, idx),
                Phase::Closing | Phase::Claiming | Phase::Verifying => {
                    return self.pause_recv(idx);
                }
                Phase::AwaitConnect | Phase::Authenticating | Phase::Active => {}
            }
            // 2. Decode what is buffered.
            let mut progressed = false;
            while slot.bufs.rbuf_len() > 0 {
                match slot.decoder.decode(slot.bufs.rbuf()) {
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
                        slot.bufs.rbuf().clear();
                        break;
                    }
                }
            }
            slot.bufs.trim();
            if progressed {
                continue;
            }
            // 3. Read more, unless the client is not reading its own acks or the shard's
            //    outbound batches are over their bound (backpressure on the publisher).
            if slot.eof {
                return self.finish(shard, now, idx);
            }
            if let Some(t) = &mut slot.transport {
                if t.wants_write() && !slot.send_inflight {
                    continue;
                }
                t.shrink();
            }
            if unwritten >= shard.limits().max_write_buffer_bytes {
                return self.pause_recv(idx);
            }
            if shard.congested() {
                shard.blocked_readers.push(conn_waker(idx));
                return self.pause_recv(idx);
            }
            return self.arm_recv(idx, now);
        }
        // Come back in the next turn, after the other connections.
        self.mark_ready(idx);
    }

    /// The connection is over: the shard forgets it, the slot goes once its operations end.
    fn finish(&mut self, shard: &mut Shard, now: Instant, idx: usize) {
        let slot = &mut self.slots[idx];
        if slot.open {
            slot.open = false;
            shard.conn_closed(now, slot.conn as usize);
        }
        self.release(idx);
    }

    /// The connection is over and everything it was sent is in the kernel: the shard forgets
    /// it now; the socket is shut for writing (the FIN follows the last bytes) and drained for
    /// at most [`CLOSE_DRAIN`], then closed, unless it failed already.
    fn finish_graceful(&mut self, shard: &mut Shard, now: Instant, idx: usize) {
        let slot = &mut self.slots[idx];
        if slot.open {
            slot.open = false;
            shard.conn_closed(now, slot.conn as usize);
        }
        if slot.eof || slot.dead || slot.draining {
            return self.release(idx);
        }
        // SAFETY: shutdown(2) on a socket this slot owns.
        if unsafe { libc::shutdown(slot.fd.as_raw_fd(), libc::SHUT_WR) } != 0 {
            return self.release(idx);
        }
        slot.draining = true;
        slot.read_timeout_ms = timeout_ms(Some(CLOSE_DRAIN));
        slot.read_since = ms(self.epoch, now);
        self.schedule(idx, now + CLOSE_DRAIN);
        self.arm_recv(idx, now);
    }

    /// Cancels what the closed slot still has in flight, or frees it (closing the socket)
    /// when nothing is.
    fn release(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        debug_assert!(!slot.open);
        slot.draining = false;
        if slot.recv_armed || slot.send_inflight {
            if !slot.cancelled {
                slot.cancelled = true;
                let (recv, send) = (slot.recv_armed, slot.send_inflight);
                for (on, kind) in [(recv, K_RECV), (send, K_SEND)] {
                    if on {
                        self.push(
                            opcode::AsyncCancel::new(kind | idx as u64)
                                .build()
                                .user_data(K_CANCEL | idx as u64),
                        );
                    }
                }
            }
            return;
        }
        // Dropping the slot closes the descriptor.
        self.slots.remove(idx);
    }

    // ---- time --------------------------------------------------------------------------

    /// Fires due timeouts and retries accepts; called every [`TICK`].
    pub(crate) fn tick(&mut self, shard: &mut Shard, now: Instant) {
        for li in 0..self.listeners.len() {
            let l = &self.listeners[li];
            if !l.armed && l.retry_at.is_some_and(|t| t <= now) {
                self.arm_accept(li);
            }
        }
        let now_tick = (now.saturating_duration_since(self.epoch).as_millis() as u64
            / TICK.as_millis() as u64)
            .min(u64::from(NO_TICK - 1)) as u32;
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > now_tick {
                break;
            }
            let (tick, due) = entry.remove_entry();
            for (idx, serial) in due {
                let idx = idx as usize;
                match self.slots.get_mut(idx) {
                    Some(s) if s.serial == serial && s.wheel_due == tick => s.wheel_due = NO_TICK,
                    _ => continue,
                }
                self.timeouts(shard, now, idx);
            }
        }
        self.turn(shard, now);
    }

    /// Acts on slot `idx`'s expired timeouts; schedules the next look.
    fn timeouts(&mut self, shard: &mut Shard, now: Instant, idx: usize) {
        let slot = &self.slots[idx];
        if !slot.open {
            if slot.draining {
                let waited = ms(self.epoch, now).wrapping_sub(slot.read_since);
                if waited >= slot.read_timeout_ms {
                    self.release(idx);
                } else {
                    let left = slot.read_timeout_ms - waited;
                    self.schedule(idx, now + Duration::from_millis(u64::from(left)));
                }
            }
            return;
        }
        let now_ms = ms(self.epoch, now);
        if slot.send_inflight {
            let waited = Duration::from_millis(u64::from(now_ms.wrapping_sub(slot.send_since)));
            if waited >= self.send_timeout {
                let conn = &shard.core.conns[slot.conn as usize];
                warn!(
                    shard = shard.core.id,
                    conn = conn.id,
                    "client took no bytes for mqtt.send_timeout_ms; closing"
                );
                return self.finish(shard, now, idx);
            }
            self.schedule(idx, now + (self.send_timeout - waited));
        }
        // Connect and keep-alive timeouts are the core's (its timer table).
    }
}

/// Milliseconds since `epoch` on a 32-bit clock that wraps after 49 days: only differences
/// of at most a day or so (keep-alive, connect and send timeouts) are taken.
fn ms(epoch: Instant, now: Instant) -> u32 {
    now.saturating_duration_since(epoch).as_millis() as u32
}

/// A read timeout in milliseconds, 0 for none.
fn timeout_ms(t: Option<Duration>) -> u32 {
    t.map_or(0, |t| t.as_millis().clamp(1, u128::from(u32::MAX)) as u32)
}

/// The driver's task: turns while there is work (yielding to the shard's other tasks between
/// turns), sleeps on the ring's eventfd when there is none.
pub(crate) async fn run(shard: Rc<RefCell<Shard>>, driver: Rc<RefCell<Driver>>, eventfd: OwnedFd) {
    // SAFETY: the descriptor is ours (a duplicate of the ring's eventfd) and given up here.
    let efd = Rc::new(unsafe { glommio::io::BufferedFile::from_raw_fd(eventfd.into_raw_fd()) });
    let mut wait: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
    loop {
        let worked = {
            let mut d = driver.borrow_mut();
            let mut s = crate::shell::step(&shard);
            d.turn(&mut s, Instant::now())
        };
        if worked {
            futures_lite::future::yield_now().await;
            continue;
        }
        poll_fn(|cx| {
            WOKEN.with(|w| {
                let mut w = w.borrow_mut();
                if !w.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    w.task = Some(cx.waker().clone());
                }
            });
            {
                // Signals on first, then the check: a completion after the check signals.
                let mut d = driver.borrow_mut();
                d.signal_completions(true);
                if d.has_work() {
                    d.signal_completions(false);
                    return Poll::Ready(());
                }
            }
            let fut = wait.get_or_insert_with(|| {
                let f = efd.clone();
                Box::pin(async move {
                    if let Err(e) = f.read_at(0, 8).await {
                        error!(error = %e, "io_uring eventfd read failed");
                        glommio::timer::sleep(TICK).await;
                    }
                })
            });
            match fut.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    wait = None;
                    driver.borrow_mut().signal_completions(false);
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
    }
}

/// Calls [`Driver::tick`] every [`TICK`].
pub(crate) async fn ticker(shard: Rc<RefCell<Shard>>, driver: Rc<RefCell<Driver>>) {
    loop {
        glommio::timer::sleep(TICK).await;
        let mut d = driver.borrow_mut();
        let mut s = crate::shell::step(&shard);
        d.tick(&mut s, Instant::now());
    }
}
