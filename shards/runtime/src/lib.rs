//! shardmq's data plane: one pinned glommio executor per configured CPU, each a *shard* that
//! accepts on its own `SO_REUSEPORT` listener, owns its connections and sessions, and keeps a
//! local replica of the node's routing table. Shards talk over glommio's bounded channel mesh,
//! in batches. No lock and no shared mutable state on the message path.
//!
//! glommio appears only in this crate, and inside it only in `lib.rs`, `conn.rs` and the task
//! functions below: moving to another io_uring runtime touches these files alone.
#![warn(missing_docs, unreachable_pub)]

mod conn;
mod durable;
use shardmq_link as link;
pub mod mgmt;
mod shell;
mod uring;

use shardmq_core::{bus, sys};

pub use durable::{DurabilityMode, ShardStorageFigures, StorageFigures, StorageSpec, LOCK_FILE};
pub use link::{
    link, ControlPlaneLink, DataPlaneLink, FromCluster, NodeId, NodeSet, SendError, ToCluster,
    LINK_CAPACITY,
};
pub use mgmt::Management;
pub use shardmq_core::{CoreSettings, ListenerKind, ShardId, ShardSet, MAX_SHARDS};
pub use sys::{rfc3339, FigureBoard, ShardFigures};

use bus::Batch;
use conn::ConnDriver;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::net::TcpListener;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares, TaskQueueHandle};
use shell::Shard;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Everything the data plane needs, already validated by the binary's config layer: the
/// shards' logic ([`CoreSettings`]) and what the I/O around it needs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// What every shard's core is configured with. `core.shards` is `cpus.len()` and
    /// `core.auth` is `auth.is_some()` ([`RuntimeConfig::validate`]).
    pub core: CoreSettings,
    /// One shard per CPU, pinned to it.
    pub cpus: Vec<usize>,
    /// The client listeners (MQTT over TCP, TLS, WebSocket, WebSocket over TLS), each bound by
    /// every shard with `SO_REUSEPORT`. At least one.
    pub listeners: Vec<ListenerSpec>,
    /// Verifies credentials off the shards' loops (`[auth]`); `None` = everyone may connect
    /// and no ACL applies.
    pub auth: Option<Arc<shardmq_auth::AuthService>>,
    /// Listen backlog.
    pub backlog: u32,
    /// A client whose socket takes no bytes for this long is disconnected.
    pub send_timeout: Duration,
    /// How long an idle shard polls before it sleeps in the kernel; `None` = not at all.
    pub spin_before_park: Option<Duration>,
    /// How often a shard's park guard wakes it ([`spawn_park_guard`]); `None` = no guard.
    pub park_guard: Option<Duration>,
    /// Pulled to move the node's clients to `core.redirect`'s `moved_to` (SIGUSR2 in the
    /// binary).
    pub move_trigger: MoveTrigger,
    /// `[storage]`; `None` = `durability = "off"`: nothing is written, nothing recovered.
    pub storage: Option<StorageSpec>,
    /// How the shards drive their connections (`shard.driver`).
    pub driver: ConnectionDriver,
}

impl RuntimeConfig {
    /// Checks the core's settings and how they agree with the runtime's.
    pub fn validate(&self) -> Result<(), shardmq_core::SettingsError> {
        self.core.validate()?;
        let fail = |m: String| Err(shardmq_core::SettingsError(m));
        if self.core.shards != self.cpus.len() {
            return fail(format!(
                "{} shards configured for {} CPUs",
                self.core.shards,
                self.cpus.len()
            ));
        }
        if self.core.auth != self.auth.is_some() {
            return fail("core.auth must say whether an auth service is given".into());
        }
        if self.listeners.is_empty() {
            return fail("at least one listener".into());
        }
        if self.send_timeout.is_zero() {
            return fail("mqtt.send_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// How a shard drives its client connections (`shard.driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionDriver {
    /// Every connection through one io_uring of the shard's own: multishot accept and
    /// receive into a shared buffer pool, no task and no buffer per idle connection.
    #[default]
    Uring,
    /// One glommio task and `TcpStream` per connection (the first driver; kept for kernels
    /// without multishot receive, before 6.0).
    Tasks,
}

/// One client listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// What it speaks.
    pub kind: ListenerKind,
    /// Its address.
    pub bind: SocketAddr,
    /// A PROXY v1/v2 header comes first on each connection.
    pub proxy_protocol: bool,
    /// TLS configuration (Tls and Wss), reloadable: each connection takes the current one.
    pub tls: Option<Arc<shardmq_transport::TlsConfigCell>>,
    /// Which client certificate name becomes the MQTT username (`peer_cert_as_username`).
    pub peer_cert_name: shardmq_transport::PeerCertName,
    /// WebSocket path (Ws and Wss).
    pub ws_path: Option<String>,
}

impl ListenerSpec {
    /// The layers a new connection of this listener needs; `None` for plain TCP.
    fn stack(&self, max_message_bytes: usize) -> Option<shardmq_transport::Stack> {
        let stack = shardmq_transport::Stack {
            proxy: self.proxy_protocol,
            tls: self.tls.as_ref().map(|cell| cell.current()),
            peer_cert_name: self.peer_cert_name,
            ws: self
                .ws_path
                .as_ref()
                .map(|path| shardmq_transport::WsSettings {
                    path: path.clone(),
                    max_message_bytes,
                }),
        };
        (!stack.is_plain()).then_some(stack)
    }
}

/// Moves a node's clients elsewhere when pulled: from the next housekeeping tick (≤ 250 ms)
/// every shard sends its connected clients away (MQTT 5.0: DISCONNECT 0x9D with the Server
/// Reference `listener.moved_to`; 3.x: closed), and new CONNECTs are refused with CONNACK 0x9D.
/// A one-way switch: cheap to share between threads, no lock (one atomic, read by the shards at
/// CONNECT and in housekeeping).
#[derive(Debug, Clone, Default)]
pub struct MoveTrigger(Arc<std::sync::atomic::AtomicBool>);

impl MoveTrigger {
    /// Moves the node (again: no effect).
    pub fn pull(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the node has been moved.
    pub fn pulled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A running data plane.
pub struct Node {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    connections: Arc<AtomicUsize>,
    figures: Arc<FigureBoard>,
    storage: Option<Arc<StorageFigures>>,
    management: Arc<Management>,
    /// The `flock` on `storage.dir`, held while the node runs.
    _storage_lock: Option<std::fs::File>,
}

impl Node {
    /// The node-wide count of open client connections (TCP accepted and not yet closed), shared
    /// with the shards; read it with `Ordering::Relaxed`.
    pub fn connections(&self) -> Arc<AtomicUsize> {
        self.connections.clone()
    }

    /// Every shard's figures (sessions, subscriptions, message and byte counters), refreshed
    /// on each shard's housekeeping tick: what `/metrics` reports.
    pub fn figures(&self) -> Arc<FigureBoard> {
        self.figures.clone()
    }

    /// The storage figures (bytes written, fsyncs, group commits, disk used, recovery);
    /// `None` with `durability = "off"`.
    pub fn storage(&self) -> Option<Arc<StorageFigures>> {
        self.storage.clone()
    }

    /// The management API's handle on the shards ([`mgmt`]).
    pub fn management(&self) -> Arc<Management> {
        self.management.clone()
    }

    /// Starts one pinned shard per configured CPU. Returns once every shard is listening, or
    /// with the first shard's start-up error.
    pub fn start(cfg: RuntimeConfig) -> io::Result<Node> {
        Node::start_linked(cfg, None)
    }

    /// Starts the data plane linked to a control plane (a node in a cluster): see [`link`].
    pub fn start_linked(cfg: RuntimeConfig, link: Option<DataPlaneLink>) -> io::Result<Node> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut cfg = cfg;
        if let Some(spec) = &mut cfg.storage {
            // glommio opens files relative to no directory (EBADF on a relative path): the
            // default `data` becomes `$PWD/data` here, once.
            spec.dir = std::path::absolute(&spec.dir).map_err(|e| {
                io::Error::new(e.kind(), format!("storage.dir {}: {e}", spec.dir.display()))
            })?;
        }
        let cfg = Arc::new(cfg);
        let n = cfg.cpus.len();
        let mesh: MeshBuilder<Batch, _> = MeshBuilder::full(n, cfg.core.channel_capacity);
        let connections = Arc::new(AtomicUsize::new(0));
        let figures = Arc::new(FigureBoard::new(n));
        let hasher = ahash::RandomState::new();
        // Recovery runs before any shard serves: sessions go to the shard that owns their
        // client id now (the same hash as `Shard::owner_of`).
        let (restored, storage, storage_lock) = match &cfg.storage {
            None => (None, None, None),
            Some(spec) => {
                let h = hasher.clone();
                let owner = move |client_id: &str| (h.hash_one(client_id) % n as u64) as usize;
                let (restored, figures, lock) = durable::start_up(spec, n, owner)?;
                (Some(Arc::new(restored)), Some(figures), Some(lock))
            }
        };
        let (management, mgmt_inboxes) = Management::new(n)?;
        let mut mgmt_inboxes: Vec<Option<mgmt::Inbox>> =
            mgmt_inboxes.into_iter().map(Some).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let mut handles = Vec::with_capacity(n);
        let (uplink, mut inboxes) = match link {
            Some(l) => {
                let (uplink, inboxes) = l.into_parts();
                assert_eq!(inboxes.len(), n, "one inbox per shard");
                (Some(uplink), inboxes.into_iter().map(Some).collect())
            }
            None => (None, (0..n).map(|_| None).collect::<Vec<_>>()),
        };
        for (i, &cpu) in cfg.cpus.iter().enumerate() {
            let uplink = uplink.clone();
            let inbox = inboxes[i].take();
            let mgmt_inbox = mgmt_inboxes[i].take().expect("one inbox per shard");
            let cfg = cfg.clone();
            let mesh = mesh.clone();
            let connections = connections.clone();
            let figures = figures.clone();
            let hasher = hasher.clone();
            let ready = ready_tx.clone();
            let restored = restored.clone();
            let storage = storage.clone();
            let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("shard-{i}"))
                .io_memory(512 * 1024);
            if cfg!(debug_assertions) {
                builder = builder.detect_stalls(Some(Box::new(StallLogger)));
            }
            if let Some(spin) = cfg.spin_before_park {
                builder = builder.spin_before_park(spin);
            }
            let handle = builder
                .spawn(move || async move {
                    let mut listeners = Vec::with_capacity(cfg.listeners.len());
                    for spec in &cfg.listeners {
                        match listen(spec, cfg.backlog) {
                            Ok(l) => listeners.push((l, spec.clone())),
                            Err(e) => {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        }
                    }
                    let listeners = match cfg.driver {
                        ConnectionDriver::Tasks => Listeners::Tasks(listeners),
                        ConnectionDriver::Uring => match uring::Driver::new(
                            listeners,
                            cfg.core.limits.max_packet_size,
                            cfg.send_timeout,
                        ) {
                            Ok((driver, eventfd)) => Listeners::Uring(Box::new(driver), eventfd),
                            Err(e) => {
                                let _ = ready.send(Err(io::Error::new(
                                    e.kind(),
                                    format!("cannot set up the shard's io_uring (shard.driver = \"uring\" needs Linux 6.0 or later; \"tasks\" works before): {e}"),
                                )));
                                return;
                            }
                        },
                    };
                    let (senders, receivers) = match mesh.join().await {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = ready.send(Err(io::Error::other(format!(
                                "channel mesh join failed: {e}"
                            ))));
                            return;
                        }
                    };
                    let id = senders.peer_id();
                    let mut seed = [0u8; 32];
                    getrandom::fill(&mut seed).expect("the operating system's random source works");
                    let core = shardmq_core::ShardCore::new(
                        Instant::now(),
                        std::time::SystemTime::now(),
                        id,
                        Arc::new(cfg.core.clone()),
                        hasher,
                        seed,
                    );
                    let mut state = shell::Shell::new(core, cfg.clone(), connections);
                    state.board = Some(figures);
                    if uplink.is_some() {
                        state.cluster = Some(Box::new(shardmq_core::ClusterShard::new()));
                    }
                    if let (Some(spec), Some(restored), Some(figures)) =
                        (&cfg.storage, &restored, storage)
                    {
                        state.restore(Instant::now(), spec, restored.part(id), figures);
                    }
                    drop(restored);
                    let shard = Rc::new(RefCell::new(state));
                    for spec in &cfg.listeners {
                        info!(shard = id, cpu, addr = %spec.bind, kind = ?spec.kind, proxy_protocol = spec.proxy_protocol, "shard listening");
                    }
                    let _ = ready.send(Ok(()));
                    let link = uplink.zip(inbox);
                    serve(shard, listeners, senders, receivers, link, mgmt_inbox).await;
                })
                .map_err(|e| io::Error::other(format!("cannot start shard on cpu {cpu}: {e}")))?;
            handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a shard exited during start-up")),
            }
        }
        Ok(Node {
            handles,
            connections,
            figures,
            storage,
            management: Arc::new(management),
            _storage_lock: storage_lock,
        })
    }

    /// Waits for every shard to stop (they run until the process ends).
    pub fn join(self) {
        for h in self.handles {
            if let Err(e) = h.join() {
                error!(error = ?e, "shard thread failed");
            }
        }
    }
}

/// Binds one of the shard's own listeners: `SO_REUSEPORT`, so the kernel spreads connections
/// over shards and no accept thread exists.
fn listen(spec: &ListenerSpec, backlog: u32) -> io::Result<std::os::fd::OwnedFd> {
    use socket2::{Domain, Socket, Type};
    let domain = if spec.bind.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sock = Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&spec.bind.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind {} {}: {e}", spec.kind.bind_key(), spec.bind),
        )
    })?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock.into())
}

/// A shard's listeners, with what drives their connections.
enum Listeners {
    /// `shard.driver = "uring"`: the driver owns the listeners; the eventfd its task waits on.
    Uring(Box<uring::Driver>, std::os::fd::OwnedFd),
    /// `shard.driver = "tasks"`: an accept loop per listener, a task per connection.
    Tasks(Vec<(std::os::fd::OwnedFd, ListenerSpec)>),
}

/// The shard's task queues: CPU shares say what wins when the shard is saturated.
#[derive(Clone, Copy)]
struct Queues {
    /// Connection drivers and the accept loop.
    connections: TaskQueueHandle,
    /// Cross-shard receivers and the flusher: a stalled bus stalls every shard.
    bus: TaskQueueHandle,
    /// Expiry and `$SYS`.
    housekeeping: TaskQueueHandle,
}

impl Queues {
    fn create() -> Queues {
        let ex = glommio::executor();
        Queues {
            connections: ex.create_task_queue(
                Shares::Static(1000),
                Latency::NotImportant,
                "connections",
            ),
            bus: ex.create_task_queue(
                Shares::Static(1000),
                Latency::Matters(Duration::from_millis(1)),
                "bus",
            ),
            housekeeping: ex.create_task_queue(
                Shares::Static(100),
                Latency::NotImportant,
                "housekeeping",
            ),
        }
    }
}

fn spawn_into(queue: TaskQueueHandle, fut: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(fut, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => error!(error = %e, "cannot spawn into task queue"),
    }
}

/// Reports a stalled task queue in debug builds (glommio logs it, with a backtrace, through
/// the `log` facade, which the binary's subscriber receives): a task that runs too long delays
/// every client of the shard.
#[derive(Debug)]
struct StallLogger;

impl glommio::StallDetectionHandler for StallLogger {
    fn threshold(
        &self,
        _queue: TaskQueueHandle,
        _max_expected_runtime: Duration,
    ) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

async fn serve(
    shard: Rc<RefCell<Shard>>,
    listeners: Listeners,
    senders: Senders<Batch>,
    mut receivers: Receivers<Batch>,
    link: Option<(Uplink, link::ShardInbox)>,
    mgmt_inbox: mgmt::Inbox,
) {
    let queues = Queues::create();
    // Management calls run in the housekeeping queue: a busy API gets its small share of a
    // saturated shard, never the data plane's.
    spawn_into(queues.housekeeping, mgmt_calls(shard.clone(), mgmt_inbox));
    let uplink = match link {
        Some((uplink, inbox)) => {
            spawn_into(queues.bus, downlink(shard.clone(), inbox));
            Some(uplink)
        }
        None => None,
    };
    for (peer, stream) in receivers.streams() {
        let shard = shard.clone();
        spawn_into(queues.bus, async move {
            while let Some(batch) = stream.recv().await {
                shell::step(&shard).handle_peer(Instant::now(), peer, batch);
            }
            debug!(peer, "channel from peer closed");
        });
    }
    spawn_into(queues.bus, flusher(shard.clone(), senders, uplink));
    spawn_into(queues.housekeeping, housekeeping(shard.clone()));
    if shard.borrow().durable.is_some() {
        spawn_into(queues.bus, durable::writer(shard.clone()));
    }
    let guard = shard.borrow().cfg.park_guard;
    if let Some(period) = guard {
        let s = shard.clone();
        spawn_park_guard(period, PARK_GUARD_IDLE_MAX, move || {
            let stats = &s.borrow().stats;
            stats.bytes_in + stats.bytes_out
        });
    }
    if shard.borrow().cfg.auth.is_some() {
        let (inbox, wake) = shell::AuthInbox::new();
        shard.borrow_mut().auth_inbox = Some(inbox);
        spawn_into(queues.bus, auth_replies(shard.clone(), wake));
    }
    match listeners {
        Listeners::Uring(driver, eventfd) => {
            let driver = Rc::new(RefCell::new(*driver));
            spawn_into(
                queues.connections,
                uring::run(shard.clone(), driver.clone(), eventfd),
            );
            spawn_into(queues.housekeeping, uring::ticker(shard.clone(), driver));
        }
        Listeners::Tasks(listeners) => {
            for (listener, spec) in listeners {
                // SAFETY: the fd is a bound, listening TCP socket that we own and hand over.
                let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
                let accept = accept_loop(shard.clone(), listener, spec, queues.connections);
                spawn_into(queues.connections, accept);
            }
        }
    }
    futures_lite::future::pending::<()>().await;
}

/// Answers the management API: one byte on the wake socket, then every queued call.
async fn mgmt_calls(shard: Rc<RefCell<Shard>>, inbox: mgmt::Inbox) {
    use futures_lite::AsyncReadExt;
    // SAFETY: the fd is one end of a socket pair that the inbox owns and gives up here.
    let mut wake = unsafe { glommio::net::UnixStream::from_raw_fd(inbox.wake.into_raw_fd()) };
    let mut bytes = [0u8; 64];
    loop {
        match wake.read(&mut bytes).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "management wake socket failed");
                break;
            }
        }
        while let Ok(call) = inbox.rx.try_recv() {
            let reply = shell::step(&shard).handle_mgmt(Instant::now(), call.request);
            // The caller may have given up waiting: nothing to do then.
            let _ = call.reply.send(reply);
            // One call per task turn: a burst of calls never holds the shard for long.
            glommio::yield_if_needed().await;
        }
    }
    debug!("management link closed");
}

/// Applies the verdicts of the auth workers: one byte on the wake socket, then the whole queue.
async fn auth_replies(shard: Rc<RefCell<Shard>>, wake: std::os::unix::net::UnixStream) {
    use futures_lite::AsyncReadExt;
    // SAFETY: the fd is our end of a socket pair that we own and give up here.
    let mut wake = unsafe { glommio::net::UnixStream::from_raw_fd(wake.into_raw_fd()) };
    let mut bytes = [0u8; 256];
    loop {
        match wake.read(&mut bytes).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "auth wake socket failed");
                break;
            }
        }
        let now = Instant::now();
        shell::step(&shard).apply_auth_replies(now);
    }
}

async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    listener: TcpListener,
    spec: ListenerSpec,
    queue: TaskQueueHandle,
) {
    let max_packet_size = shard.borrow().cfg.core.limits.max_packet_size;
    let send_timeout = shard.borrow().cfg.send_timeout;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(error = %e, "set_nodelay failed");
                }
                let peer = stream.peer_addr().ok();
                let transport = match spec.stack(max_packet_size as usize) {
                    None => None,
                    Some(stack) => match shardmq_transport::Transport::new(&stack) {
                        Ok(t) => Some(Box::new(t)),
                        Err(e) => {
                            error!(error = %e, kind = ?spec.kind, "cannot set up a connection's transport");
                            continue;
                        }
                    },
                };
                let (key, _) = shell::step(&shard).open_conn(Instant::now(), peer, spec.kind, 0);
                spawn_into(
                    queue,
                    ConnDriver::new(
                        shard.clone(),
                        stream,
                        key,
                        transport,
                        max_packet_size,
                        send_timeout,
                    ),
                );
            }
            Err(e) => {
                // EMFILE/ENFILE: out of descriptors. Back off instead of spinning.
                warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The control plane's end of the shard's uplink.
type Uplink = tokio::sync::mpsc::Sender<Vec<ToCluster>>;

/// Receives the control plane's batches: one byte on the wake socket, then the whole queue.
async fn downlink(shard: Rc<RefCell<Shard>>, inbox: link::ShardInbox) {
    use futures_lite::AsyncReadExt;
    // SAFETY: the fd is one end of a socket pair that the inbox owns and gives up here.
    let mut wake = unsafe { glommio::net::UnixStream::from_raw_fd(inbox.wake.into_raw_fd()) };
    let mut bytes = [0u8; 256];
    loop {
        match wake.read(&mut bytes).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "control plane wake socket failed");
                break;
            }
        }
        while let Ok(batch) = inbox.rx.try_recv() {
            let now = Instant::now();
            let mut s = shell::step(&shard);
            for msg in batch {
                s.handle_cluster(now, msg);
            }
            s.drain_local(now);
        }
    }
    debug!("control plane link closed");
}

/// Sends each destination's pending messages as batches of at most `batch_max`, and the
/// control plane's batch over the uplink.
async fn flusher(shard: Rc<RefCell<Shard>>, senders: Senders<Batch>, uplink: Option<Uplink>) {
    let n = shard.borrow().outbox.len();
    loop {
        poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            if s.has_output() {
                Poll::Ready(())
            } else {
                s.flush_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        for peer in 0..n {
            loop {
                let Some(batch) = shard.borrow_mut().take_batch(peer) else {
                    break;
                };
                if let Err(e) = senders.send_to(peer, batch).await {
                    error!(peer, error = %e, "cross-shard send failed");
                }
            }
        }
        if let Some(uplink) = &uplink {
            send_uplink(&shard, uplink).await;
        }
        let mut s = shard.borrow_mut();
        if !s.congested() {
            for w in s.blocked_readers.drain(..) {
                w.wake();
            }
        }
    }
}

/// Sends the shard's batch for the control plane. A full uplink is backpressure: the batch
/// stays (new forwarded publishes beyond `CLUSTER_OUT_MAX` are dropped) and the flusher
/// retries after a millisecond.
async fn send_uplink(shard: &Rc<RefCell<Shard>>, uplink: &Uplink) {
    loop {
        let batch = shard.borrow_mut().take_cluster_out();
        if batch.is_empty() {
            return;
        }
        match uplink.try_send(batch) {
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::TrySendError::Full(batch)) => {
                shard.borrow_mut().return_cluster_out(batch);
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                error!("control plane gone: cluster messages dropped");
                return;
            }
        }
    }
}

/// The shard's one timer: sleeps until the core's next deadline ([`ShardCore::poll_timeout`]:
/// a connection's connect or keep-alive timeout, an offline session's expiry, a delayed will),
/// at most 250 ms (or the `$SYS` interval, if shorter), then gives the core the time
/// (`handle_timeout`), posts the shard's figures and, at the `$SYS` interval, publishes them
/// (and, on shard 0, the node's).
///
/// [`ShardCore::poll_timeout`]: shardmq_core::ShardCore::poll_timeout
async fn housekeeping(shard: Rc<RefCell<Shard>>) {
    let mut next_sys = Instant::now();
    loop {
        // Read each turn: a configuration reload may change it.
        let (sys_interval, deadline) = {
            let s = shard.borrow();
            (s.sys_interval, s.poll_timeout())
        };
        let tick = sys_interval.map_or(HOUSEKEEPING_MAX, |i| {
            i.clamp(Duration::from_millis(10), HOUSEKEEPING_MAX)
        });
        let now = Instant::now();
        let wait = deadline.map_or(tick, |d| d.saturating_duration_since(now).min(tick));
        glommio::timer::sleep(wait.max(HOUSEKEEPING_MIN)).await;
        let now = Instant::now();
        let mut s = shell::step(&shard);
        s.housekeeping(now);
        if let Some(interval) = sys_interval {
            if now >= next_sys {
                s.publish_sys(now, std::time::SystemTime::now());
                next_sys = now + interval;
            }
        }
    }
}

/// Longest sleep of a shard's timer task.
const HOUSEKEEPING_MAX: Duration = Duration::from_millis(250);
/// Shortest sleep of a shard's timer task: a burst of deadlines is handled in one turn.
const HOUSEKEEPING_MIN: Duration = Duration::from_millis(5);
const _: () = assert!(HOUSEKEEPING_MIN.as_millis() < shardmq_core::TIMER_BUCKET.as_millis());

/// The environment variable that makes mimalloc commit arena memory as it is used.
pub const MI_EAGER_COMMIT_ENV: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// Re-executes the running binary once with `MIMALLOC_ARENA_EAGER_COMMIT=0`, unless the caller
/// set that variable already. Call it first thing in `main` of a binary that uses mimalloc.
///
/// A broker holds many small long-lived objects per connection, and mimalloc's default commits
/// whole arenas up front. Measured with `bench/measure-idle.sh 10000` on 2 shards: 4.4 KB of RSS
/// per idle connection with the default, 1.7 KB with lazy commit (docs/performance.md). The
/// option is read when the allocator starts, before `main`, hence the re-exec. If exec fails, the
/// process goes on with the allocator's defaults after a line on stderr.
pub fn reexec_with_lazy_commit() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(MI_EAGER_COMMIT_ENV).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(MI_EAGER_COMMIT_ENV, "0")
        .exec();
    eprintln!("warning: could not re-execute with {MI_EAGER_COMMIT_ENV}=0: {err}");
}

/// The longest a shard's park guard sleeps while the shard moves no client bytes.
const PARK_GUARD_IDLE_MAX: Duration = Duration::from_millis(200);

/// Keeps a glommio 0.9 executor from sleeping forever with runnable tasks: spawns a detached
/// task that wakes the executor every `period`.
///
/// glommio 0.9.0 parks when its preemption timer has fired before the first task queue of a
/// loop iteration ran (`run_task_queues` reports "nothing ran", and the loop parks as if
/// nothing were runnable). The timer fires in that window whenever the thread is descheduled for
/// longer than the preemption interval between arming and checking it, which a loaded host with
/// shared CPUs does (1 ms here: the bus queue's `Latency::Matters`). Parked, the executor waits
/// for I/O or a timer; if none is due, its runnable tasks never run. Fixed upstream in
/// glommio/glommio#53 (not released). A due timer ends such a park.
///
/// The guard wakes every `period` while `activity` (any counter that moves when the executor
/// does work) changed since its last wake, and backs off by doubling up to `idle_max` while it
/// did not, because every wake costs a park (≈120 µs of CPU on a VM, measured: 10 ms on two
/// idle shards was 2.5–2.9 % of a CPU). A task stranded while the executor is busy waits at most
/// `period`; one stranded on the first work after an idle stretch, at most `idle_max`.
/// `shards/runtime/tests/park_guard.rs` reproduces the strand.
pub fn spawn_park_guard(
    period: Duration,
    idle_max: Duration,
    activity: impl Fn() -> u64 + 'static,
) {
    glommio::spawn_local(async move {
        let mut sleep = period;
        let mut last = activity();
        loop {
            glommio::timer::sleep(sleep).await;
            let now = activity();
            sleep = if now == last {
                (sleep * 2).min(idle_max.max(period))
            } else {
                period
            };
            last = now;
        }
    })
    .detach();
}
