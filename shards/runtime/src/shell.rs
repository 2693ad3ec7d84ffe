//! The I/O shell around a shard's [`ShardCore`]: what only the shard's thread touches besides
//! the core (wakers of the tasks that serve it, the auth workers' inbox, the figure board, the
//! node's connection count), and [`step`], the one way the runtime's tasks reach the core.
//!
//! A [`Step`] borrows the shell for one input; when it ends it drains the core's outputs
//! ([`Shell::notify`]): credentials go to the auth workers, the flusher and the storage writer
//! are woken when the core queued work for them, and every connection the core listed is
//! handed to its driver (a slot on the io_uring driver's list, or the waker of its task). No
//! task can forget to do it, and a wake-up costs nothing when nothing changed.

use crate::RuntimeConfig;
use shardmq_core::verify::{Credentials, Verdict};
use shardmq_core::{ConnKey, ListenerKind, ShardCore};
use std::cell::{RefCell, RefMut};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// The runtime's name for a shard's state: the shell (which derefs to its core).
pub(crate) type Shard = Shell;

/// A shard's core and what the runtime keeps next to it.
pub(crate) struct Shell {
    /// The shard's logic.
    pub(crate) core: ShardCore,
    /// The runtime's configuration (listeners, timeouts of the drivers, the auth service).
    pub(crate) cfg: Arc<RuntimeConfig>,
    /// The flusher task, parked until the core queues batches.
    pub(crate) flush_waker: Option<Waker>,
    /// Readers parked while the core's outbox is over its bound ([`ShardCore::congested`]).
    pub(crate) blocked_readers: Vec<Waker>,
    /// The storage writer task, parked until records are pending.
    pub(crate) writer_waker: Option<Waker>,
    /// `shard.driver = "tasks"`: each connection's task, by connection key.
    pub(crate) conn_wakers: Vec<Option<Waker>>,
    /// `shard.driver = "uring"`: the driver lists the slots (`io_token`s) the core hands back.
    uring: bool,
    /// Where the auth workers' verdicts come back (`[auth]` configured).
    pub(crate) auth_inbox: Option<AuthInbox>,
    /// Where the management API reads this shard's figures.
    pub(crate) board: Option<Arc<crate::sys::FigureBoard>>,
    /// The node's connections, every shard's (for `listener.max_connections`).
    pub(crate) connections: Arc<AtomicUsize>,
    /// Read buffer the drivers share: idle connections hold none.
    pub(crate) read_scratch: Vec<u8>,
}

impl Deref for Shell {
    type Target = ShardCore;
    fn deref(&self) -> &ShardCore {
        &self.core
    }
}

impl DerefMut for Shell {
    fn deref_mut(&mut self) -> &mut ShardCore {
        &mut self.core
    }
}

/// One input to a shard: derefs to the shell (and through it to the core) and drains the
/// core's outputs when dropped.
pub(crate) struct Step<'a>(RefMut<'a, Shell>);

/// Borrows the shard for one input. Panics, like `RefCell::borrow_mut`, if it is borrowed.
pub(crate) fn step(shard: &Rc<RefCell<Shell>>) -> Step<'_> {
    Step(shard.borrow_mut())
}

impl Deref for Step<'_> {
    type Target = Shell;
    fn deref(&self) -> &Shell {
        &self.0
    }
}

impl DerefMut for Step<'_> {
    fn deref_mut(&mut self) -> &mut Shell {
        &mut self.0
    }
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.0.notify();
    }
}

impl Shell {
    pub(crate) fn new(
        core: ShardCore,
        cfg: Arc<RuntimeConfig>,
        connections: Arc<AtomicUsize>,
    ) -> Shell {
        Shell {
            uring: cfg.driver == crate::ConnectionDriver::Uring,
            core,
            cfg,
            flush_waker: None,
            blocked_readers: Vec::new(),
            writer_waker: None,
            conn_wakers: Vec::new(),
            auth_inbox: None,
            board: None,
            connections,
            read_scratch: vec![0; 64 * 1024],
        }
    }

    /// Drains the core's outputs: verdicts asked for, batches queued, records pending,
    /// connections listed. Runs at the end of every [`Step`].
    pub(crate) fn notify(&mut self) {
        if self.auth_inbox.is_some() {
            self.submit_credentials();
        }
        if self.core.take_flush_wanted() {
            if let Some(w) = self.flush_waker.take() {
                w.wake();
            }
        }
        if let Some(d) = self.core.durable.as_mut() {
            if d.take_writer_wanted() {
                if let Some(w) = self.writer_waker.take() {
                    w.wake();
                }
            }
        }
        if self.uring {
            if self.core.conn_ready() {
                crate::uring::wake_slots(&mut self.core);
            }
        } else {
            while let Some((key, _)) = self.core.poll_conn() {
                if let Some(w) = self.conn_wakers.get_mut(key).and_then(Option::take) {
                    w.wake();
                }
            }
        }
    }

    /// Hands each CONNECT's credentials to the auth workers; a verdict they give at once is
    /// applied at once.
    fn submit_credentials(&mut self) {
        let Some(service) = self.cfg.auth.clone() else {
            return;
        };
        while let Some((token, credentials)) = self.core.poll_verify() {
            let now = Instant::now();
            if let Some(name) = &credentials.cert_name {
                // `peer_cert_as_username`: the verified certificate is the credential (Mosquitto's
                // `use_identity_as_username`); the ACL applies to its name.
                let authorizer = service.acl_for(Some(name), &credentials.client_id);
                let verdict = Verdict::Allowed {
                    username: Some(name.clone()),
                    authorizer,
                };
                self.core.handle_verdict(now, token, verdict);
                continue;
            }
            let inbox = self.auth_inbox.as_ref().expect("checked by the caller");
            match service.check(auth_request(credentials), inbox.reply_to(token)) {
                shardmq_auth::Submitted::Done(outcome) => {
                    self.core.handle_verdict(now, token, verdict_of(outcome));
                }
                shardmq_auth::Submitted::Queued => {}
                shardmq_auth::Submitted::Busy => {
                    self.core.handle_verdict(now, token, Verdict::Busy);
                }
            }
        }
    }

    /// The auth workers' verdicts that arrived since the last call.
    pub(crate) fn apply_auth_replies(&mut self, now: Instant) {
        let Some(inbox) = &self.auth_inbox else {
            return;
        };
        let replies: Vec<_> = inbox.rx.try_iter().collect();
        for (token, outcome) in replies {
            self.core.handle_verdict(now, token, verdict_of(outcome));
        }
    }

    /// Registers an accepted connection with the core; `io_token` comes back from
    /// [`ShardCore::poll_conn`] (the io_uring driver's slot).
    pub(crate) fn open_conn(
        &mut self,
        now: Instant,
        peer: Option<std::net::SocketAddr>,
        listener: ListenerKind,
        io_token: u32,
    ) -> (ConnKey, u64) {
        let node = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (key, id) = self.core.open_conn(now, peer, listener, node, io_token);
        if !self.uring {
            if self.conn_wakers.len() <= key {
                self.conn_wakers.resize(key + 1, None);
            }
            self.conn_wakers[key] = None;
        }
        (key, id)
    }

    /// The driver is done with the connection.
    pub(crate) fn conn_closed(&mut self, now: Instant, key: ConnKey) {
        let was = self.connections.fetch_sub(1, Ordering::Relaxed);
        assert!(was > 0, "the node's connections are counted");
        if let Some(w) = self.conn_wakers.get_mut(key) {
            *w = None;
        }
        self.core.conn_closed(now, key);
    }

    /// A decoded packet from the connection at `key`. A CONNECT first checks the node's move
    /// trigger (a one-way switch another thread pulls), so it is refused from the moment the
    /// trigger is pulled.
    pub(crate) fn on_packet(&mut self, now: Instant, key: ConnKey, packet: shardmq_codec::Packet) {
        if matches!(packet, shardmq_codec::Packet::Connect(_)) && self.cfg.move_trigger.pulled() {
            self.core.pull_move();
        }
        self.core.on_packet(now, key, packet);
    }

    /// Housekeeping: time-driven work of the core, then its figures on the board.
    pub(crate) fn housekeeping(&mut self, now: Instant) {
        if self.cfg.move_trigger.pulled() {
            self.core.pull_move();
        }
        self.core.handle_timeout(now);
        if let Some(board) = &self.board {
            board.store(self.core.id, self.core.post_figures());
        }
    }
}

fn auth_request(c: Credentials) -> shardmq_auth::AuthRequest {
    shardmq_auth::AuthRequest {
        client_id: c.client_id,
        username: c.username,
        password: c.password,
        peer: c.peer,
        cert_name: c.cert_name,
        protocol_version: c.protocol_version,
    }
}

fn verdict_of(outcome: shardmq_auth::AuthOutcome) -> Verdict {
    match outcome {
        shardmq_auth::AuthOutcome::Allowed {
            username,
            authorizer,
        } => Verdict::Allowed {
            username,
            authorizer,
        },
        shardmq_auth::AuthOutcome::BadCredentials => Verdict::BadCredentials,
        shardmq_auth::AuthOutcome::NotAuthorized => Verdict::NotAuthorized,
    }
}

/// Where the auth workers' verdicts come back to a shard: a queue, and a socket pair whose
/// byte wakes the shard's `auth_replies` task (the same pattern as the control plane's link).
pub(crate) struct AuthInbox {
    tx: crossbeam_channel::Sender<(u64, shardmq_auth::AuthOutcome)>,
    rx: crossbeam_channel::Receiver<(u64, shardmq_auth::AuthOutcome)>,
    wake: Arc<std::os::unix::net::UnixStream>,
}

impl AuthInbox {
    /// An inbox and the end of its wake socket that the shard awaits.
    pub(crate) fn new() -> (AuthInbox, std::os::unix::net::UnixStream) {
        let (wake, read) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        wake.set_nonblocking(true).expect("non-blocking socket");
        // Verdicts in flight are bounded by the service's queue; the channel needs no bound.
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            AuthInbox {
                tx,
                rx,
                wake: Arc::new(wake),
            },
            read,
        )
    }

    /// The closure a worker calls with the verdict for `token`.
    fn reply_to(&self, token: u64) -> Box<dyn FnOnce(shardmq_auth::AuthOutcome) + Send> {
        let tx = self.tx.clone();
        let wake = self.wake.clone();
        Box::new(move |outcome| {
            use std::io::Write;
            if tx.send((token, outcome)).is_ok() {
                // A full socket buffer already holds a wake-up: nothing is lost.
                let _ = (&*wake).write(&[1]);
            }
        })
    }
}
