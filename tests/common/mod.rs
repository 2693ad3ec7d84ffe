//! Shared harness for the integration tests: a real `shardmq` process on its own port, a raw
//! MQTT client built on `shardmq-codec` (exact bytes, flags and reason codes), and thin wrappers
//! around rumqttc's v3.1.1 and v5 clients.
//!
//! Every wait is bounded: a broker that stops answering fails the test instead of hanging it.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use shardmq_codec::{
    encode, ByteStr, ConnAck, Connect, ConnectProperties, Decoder, Packet, Protocol, Publish,
    PublishProperties, QoS, Subscribe, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a packet that should come may take.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for a packet that must not come.
pub const QUIET: Duration = Duration::from_millis(400);
/// Bound on the broker's start-up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest packet the test clients accept.
const CLIENT_MAX_PACKET: u32 = 16 * 1024 * 1024;

// ---- the broker process ---------------------------------------------------------------------

/// Ports handed out in this test process, so that parallel tests never share one (the broker
/// binds with `SO_REUSEPORT`: two brokers on one port would split each other's clients).
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A free port on 127.0.0.1 that no other test of this process gets: for a broker's extra
/// listeners (`SHARDMQ_LISTENER__TLS__BIND` and the like).
pub fn reserve_port() -> u16 {
    free_port()
}

/// A `shardmq` process listening on its own port, killed on drop. Its log (stdout and stderr,
/// `warn` and above plus the start-up lines) goes to a temporary file that tests can search;
/// when a test fails, the drop prints the log's tail.
pub struct Broker {
    child: Child,
    /// The MQTT port on 127.0.0.1.
    pub port: u16,
    /// The management API port on 127.0.0.1 (0 when the caller's env set `SHARDMQ_API__LISTEN`).
    pub api_port: u16,
    log: PathBuf,
    /// The storage folder the harness made for it (removed on drop), unless the test named one.
    storage: Option<PathBuf>,
}

impl Broker {
    /// A broker with the test defaults: 2 shards, `$SYS` every 100 ms.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// A broker with the test defaults plus `env` (`SHARDMQ_<SECTION>__<KEY>` overrides).
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        Broker::start_with_args(env, &[])
    }

    /// [`Broker::start_with`], with command-line arguments (e.g. `--config FILE`).
    pub fn start_with_args(env: &[(&str, &str)], args: &[&str]) -> Broker {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("shardmq-it-{}-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("create broker log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardmq"));
        cmd.args(args)
            .env("SHARDMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
            .env("SHARDMQ_NODE__CPUS", "0-1")
            .env("SHARDMQ_SYS__INTERVAL_MS", "100")
            .env("RUST_LOG", "warn,shardmq::node=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file);
        // Its own API port: the default (18083) would collide between parallel tests.
        let api_port = if env.iter().any(|(k, _)| *k == "SHARDMQ_API__LISTEN") {
            0
        } else {
            let api_port = free_port();
            cmd.env("SHARDMQ_API__LISTEN", format!("127.0.0.1:{api_port}"));
            api_port
        };
        // Its own storage folder: brokers of parallel tests must never share one (the broker
        // refuses a folder another live process holds).
        let storage = if env.iter().any(|(k, _)| *k == "SHARDMQ_STORAGE__DIR") {
            None
        } else {
            let dir =
                std::env::temp_dir().join(format!("shardmq-it-data-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            cmd.env("SHARDMQ_STORAGE__DIR", &dir);
            Some(dir)
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn shardmq");
        let mut broker = Broker {
            child,
            port,
            api_port,
            log,
            storage,
        };
        broker.wait_ready();
        broker
    }

    /// Waits until every shard listens ("shardmq ready") and the port accepts.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("shardmq exited during start-up ({status}):\n{}", self.log());
            }
            let ready = self.log().contains("shardmq ready");
            if ready && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "shardmq not ready within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<api_port>`: the management API.
    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// The whole log so far, without terminal colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Whether some log line contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Whether some `WARN` line contains `needle`.
    pub fn warned(&self, needle: &str) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains(needle))
    }

    /// Waits (bounded) until a `WARN` line containing `needle` is logged; panics otherwise.
    pub async fn expect_warn(&self, needle: &str) {
        let found = eventually(WAIT, || async { self.warned(needle) }).await;
        assert!(
            found,
            "expected a WARN line containing {needle:?}; log:\n{}",
            self.log()
        );
    }

    /// Resident set size of the broker process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- shardmq log tail (port {}) ----", self.port);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
        if let Some(dir) = &self.storage {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `check` every 20 ms until it holds or `within` passes. True if it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bounds a future: panics with `what` if it takes longer than `within`.
pub async fn bounded<T>(within: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?}: {what}"),
    }
}

// ---- packets for the raw client -------------------------------------------------------------

/// A CONNECT with no will, no credentials and no properties.
pub fn connect_packet(
    protocol: Protocol,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: ByteStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A PUBLISH (`pkid` is ignored for QoS 0).
pub fn publish_packet(topic: &str, payload: &[u8], qos: QoS, pkid: u16, retain: bool) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain,
        topic: ByteStr::from(topic),
        pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }))
}

/// A SUBSCRIBE for `filters`, each with its maximum QoS.
pub fn subscribe_packet(pkid: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|&(f, qos)| SubscribeFilter {
                filter: ByteStr::from(f),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            })
            .collect(),
        properties: SubscribeProperties::default(),
    })
}

/// The bytes of `packet` for `protocol`.
pub fn encoded(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf);
    buf.to_vec()
}

// ---- raw client -----------------------------------------------------------------------------

/// What a raw client's read produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test code: matched inline, rarely moved
pub enum Next {
    /// A packet from the broker.
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time given.
    Timeout,
    /// Bytes the client's decoder refused.
    Garbage(String),
}

/// A client that speaks MQTT byte by byte: it sends exactly what the test says and shows every
/// flag the broker sets.
pub struct Raw {
    pub stream: TcpStream,
    pub protocol: Protocol,
    rbuf: BytesMut,
    decoder: Decoder,
    closed: bool,
}

impl Raw {
    /// Opens a TCP connection; nothing is sent.
    pub async fn open(port: u16, protocol: Protocol) -> Raw {
        let stream = bounded(WAIT, "TCP connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("TCP connect to the broker");
        stream.set_nodelay(true).expect("set_nodelay");
        Raw {
            stream,
            protocol,
            rbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(protocol, CLIENT_MAX_PACKET),
            closed: false,
        }
    }

    /// [`Raw::connect`] over a socket whose receive buffer is `rcvbuf` bytes: a client whose
    /// kernel takes little, so the broker's output waits in the broker's socket.
    pub async fn connect_small(port: u16, protocol: Protocol, client_id: &str, rcvbuf: u32) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let stream = bounded(
            WAIT,
            "TCP connect",
            socket.connect(([127, 0, 0, 1], port).into()),
        )
        .await
        .expect("TCP connect to the broker");
        stream.set_nodelay(true).expect("set_nodelay");
        let mut raw = Raw {
            stream,
            protocol,
            rbuf: BytesMut::new(),
            decoder: Decoder::with_protocol(protocol, CLIENT_MAX_PACKET),
            closed: false,
        };
        raw.send(&Packet::Connect(Box::new(connect_packet(
            protocol, client_id, true, 0,
        ))))
        .await;
        match raw.next(WAIT).await {
            Next::Packet(Packet::ConnAck(ack)) if ack.code.0 == 0 => raw,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with `connect` and returns the CONNACK (which may refuse).
    pub async fn connect_with(port: u16, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(port, connect.protocol).await;
        raw.send(&Packet::Connect(Box::new(connect))).await;
        match raw.next(WAIT).await {
            Next::Packet(Packet::ConnAck(ack)) => (raw, *ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends `connect`, expecting a refusal: returns every byte the broker wrote before it
    /// closed the connection (panics if it does not close).
    pub async fn refused(port: u16, connect: Connect) -> Vec<u8> {
        let mut raw = Raw::open(port, connect.protocol).await;
        raw.send(&Packet::Connect(Box::new(connect))).await;
        raw.read_to_close().await
    }

    /// Every byte the broker writes until it closes the connection, within [`WAIT`].
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut bytes = self.rbuf.split().to_vec();
        let read = self.stream.read_to_end(&mut bytes);
        match tokio::time::timeout(WAIT, read).await {
            Ok(_) => bytes,
            Err(_) => {
                panic!("broker did not close the connection within {WAIT:?}; sent {bytes:02x?}")
            }
        }
    }

    /// Connects with a plain CONNECT (keep-alive off) and asserts success.
    pub async fn connect(
        port: u16,
        protocol: Protocol,
        client_id: &str,
        clean: bool,
    ) -> (Raw, ConnAck) {
        let (raw, ack) =
            Raw::connect_with(port, connect_packet(protocol, client_id, clean, 0)).await;
        assert_eq!(ack.code.0, 0, "CONNACK refused {client_id}: {ack:?}");
        (raw, ack)
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: &Packet) {
        let bytes = encoded(packet, self.protocol);
        self.send_bytes(&bytes).await;
    }

    /// Sends raw bytes. A write to a connection the broker closed is not an error here.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = bounded(WAIT, "socket write", self.stream.write_all(bytes)).await;
    }

    /// The next packet, or why there is none, within `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(p)) => return Next::Packet(p),
                Ok(None) => {}
                Err(e) => return Next::Garbage(e.to_string()),
            }
            if self.closed {
                return Next::Closed;
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics on close or timeout.
    pub async fn expect(&mut self, within: Duration) -> Packet {
        match self.next(within).await {
            Next::Packet(p) => p,
            other => panic!("expected a packet within {within:?}, got {other:?}"),
        }
    }

    /// The next PUBLISH, answering nothing; panics if another packet comes first.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.expect(WAIT).await {
            Packet::Publish(p) => *p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection; returns the packets sent before.
    /// Panics if the connection is still open after `within`.
    pub async fn expect_closed(&mut self, within: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Packet(p) => got.push(p),
                Next::Closed => return got,
                Next::Garbage(e) => {
                    panic!("undecodable bytes from the broker: {e}; before: {got:?}")
                }
                Next::Timeout => panic!(
                    "broker did not close the connection within {within:?}; received {got:?}"
                ),
            }
        }
    }

    /// Asserts that nothing arrives (and the connection stays open) for `during`.
    pub async fn expect_silence(&mut self, during: Duration) {
        match self.next(during).await {
            Next::Timeout => {}
            other => panic!("expected silence for {during:?}, got {other:?}"),
        }
    }

    /// Subscribes and waits for the SUBACK; returns its reason codes.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
        self.send(&subscribe_packet(pkid, filters)).await;
        match self.expect(WAIT).await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, pkid, "SUBACK packet id");
                ack.reasons.iter().map(|r| r.0).collect()
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS handshake (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        pkid: u16,
        retain: bool,
    ) {
        self.send(&publish_packet(topic, payload, qos, pkid, retain))
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.expect(WAIT).await {
                Packet::PubAck(a) => assert_eq!(a.pkid, pkid),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.expect(WAIT).await {
                    Packet::PubRec(a) => assert_eq!(a.pkid, pkid),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&Packet::PubRel(ack_body(pkid))).await;
                match self.expect(WAIT).await {
                    Packet::PubComp(a) => assert_eq!(a.pkid, pkid),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close.
    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default())).await;
        self.expect_closed(WAIT).await;
    }
}

/// An acknowledgement body with success and no properties.
pub fn ack_body(pkid: u16) -> shardmq_codec::Ack {
    shardmq_codec::Ack {
        pkid,
        ..Default::default()
    }
}

/// PUBACK for `pkid`.
pub fn puback(pkid: u16) -> Packet {
    Packet::PubAck(ack_body(pkid))
}

// ---- rumqttc clients ------------------------------------------------------------------------

/// Incoming packets from a rumqttc event loop running in its own task, buffered so a test can
/// wait for one kind while keeping the others.
pub struct Inbox<P> {
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    held: VecDeque<P>,
    task: JoinHandle<()>,
    /// The event loop's error, once it stopped.
    pub error: Option<String>,
}

impl<P: Debug> Inbox<P> {
    /// Waits up to `within` for a packet `pick` accepts; others stay held in order.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&P) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.held.iter().position(|p| pick(p).is_some()) {
            let p = self.held.remove(i).expect("index in range");
            return pick(&p);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => {
                    // The loop stopped; wait out the deadline is pointless.
                    return None;
                }
                Ok(Some(Err(e))) => {
                    self.error = Some(e);
                }
                Ok(Some(Ok(p))) => match pick(&p) {
                    Some(t) => return Some(t),
                    None => self.held.push_back(p),
                },
            }
        }
    }

    /// Whether the event loop has stopped (connection closed or failed).
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits (bounded) until the event loop stops; returns its error text.
    pub async fn closed(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        let _ = self.wait_for(within, |_| None::<()>).await;
        // The loop drops its sender just before its task ends.
        while !self.task.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.error.clone()
    }
}

/// One step of a rumqttc event loop, the same for both protocol versions.
pub enum Step<P> {
    /// An incoming packet.
    Packet(P),
    /// An outgoing event of no interest.
    Skip,
    /// DISCONNECT was written: the loop is done.
    Done,
    /// The connection failed or closed.
    Failed(String),
}

/// A rumqttc event loop, either protocol version.
pub trait EventSource: Send + 'static {
    /// Its incoming packet type.
    type Packet: Send + 'static;
    /// Polls once.
    fn step(&mut self) -> impl Future<Output = Step<Self::Packet>> + Send;
}

impl EventSource for rumqttc::EventLoop {
    type Packet = rumqttc::Packet;
    async fn step(&mut self) -> Step<rumqttc::Packet> {
        use rumqttc::{Event, Outgoing};
        match self.poll().await {
            Ok(Event::Incoming(p)) => Step::Packet(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::Done,
            Ok(Event::Outgoing(_)) => Step::Skip,
            Err(e) => Step::Failed(e.to_string()),
        }
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    type Packet = rumqttc::v5::mqttbytes::v5::Packet;
    async fn step(&mut self) -> Step<Self::Packet> {
        use rumqttc::v5::Event;
        use rumqttc::Outgoing;
        match self.poll().await {
            Ok(Event::Incoming(p)) => Step::Packet(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::Done,
            Ok(Event::Outgoing(_)) => Step::Skip,
            Err(e) => Step::Failed(e.to_string()),
        }
    }
}

impl<P: Send + 'static> Inbox<P> {
    /// Runs `source` in its own task until DISCONNECT or the first error (no automatic
    /// reconnect), forwarding incoming packets.
    pub fn spawn<S: EventSource<Packet = P>>(mut source: S) -> Inbox<P> {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match source.step().await {
                    Step::Packet(p) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Step::Skip => {}
                    Step::Done => return,
                    Step::Failed(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Inbox {
            rx,
            held: VecDeque::new(),
            task,
            error: None,
        }
    }
}

impl<P> Drop for Inbox<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A rumqttc MQTT 3.1.1 client.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub inbox: Inbox<rumqttc::Packet>,
}

/// rumqttc v3.1.1 options for 127.0.0.1:`port`.
pub fn v4_options(port: u16, client_id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(CLIENT_MAX_PACKET as usize, CLIENT_MAX_PACKET as usize);
    o
}

impl V4 {
    /// Connects with `options`; panics unless the CONNACK accepts. The event loop stops at the
    /// first error (no automatic reconnect).
    pub async fn connect_opts(options: rumqttc::MqttOptions) -> (V4, rumqttc::ConnAck) {
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 1024);
        let mut inbox = Inbox::spawn(eventloop);
        let connack = inbox
            .wait_for(WAIT, |p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        let connack = connack.unwrap_or_else(|| panic!("no CONNACK: {:?}", inbox.error));
        assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
        (V4 { client, inbox }, connack)
    }

    /// Connects as `client_id`.
    pub async fn connect(port: u16, client_id: &str, clean: bool) -> (V4, rumqttc::ConnAck) {
        V4::connect_opts(v4_options(port, client_id, clean)).await
    }

    /// Subscribes and waits for the SUBACK; returns the granted QoS (None = failure).
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> Option<rumqttc::QoS> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        let codes = self
            .inbox
            .wait_for(WAIT, |p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("no SUBACK for {filter}: {:?}", self.inbox.error));
        match codes.as_slice() {
            [rumqttc::SubscribeReasonCode::Success(q)] => Some(*q),
            [rumqttc::SubscribeReasonCode::Failure] => None,
            other => panic!("unexpected SUBACK codes {other:?}"),
        }
    }

    /// Publishes and, for QoS 1/2, waits until the broker acknowledged (PUBACK / PUBCOMP).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("queue PUBLISH");
        let acked = match qos {
            rumqttc::QoS::AtMostOnce => return,
            rumqttc::QoS::AtLeastOnce => {
                self.inbox
                    .wait_for(WAIT, |p| {
                        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                    })
                    .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.inbox
                    .wait_for(WAIT, |p| {
                        matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                    })
                    .await
            }
        };
        assert!(
            acked.is_some(),
            "publish to {topic} not acknowledged: {:?}",
            self.inbox.error
        );
    }

    /// The next PUBLISH within `within`.
    pub async fn next_publish(&mut self, within: Duration) -> Option<rumqttc::Publish> {
        self.inbox
            .wait_for(within, |p| match p {
                rumqttc::Packet::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
    }

    /// The next PUBLISH; panics if none comes within [`WAIT`].
    pub async fn expect_publish(&mut self) -> rumqttc::Publish {
        match self.next_publish(WAIT).await {
            Some(p) => p,
            None => panic!("no PUBLISH within {WAIT:?}: {:?}", self.inbox.error),
        }
    }

    /// Asserts no PUBLISH arrives for `during`.
    pub async fn expect_no_publish(&mut self, during: Duration) {
        if let Some(p) = self.next_publish(during).await {
            panic!("unexpected PUBLISH {p:?}");
        }
    }

    /// Sends DISCONNECT and waits until the event loop has written it.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let _ = self.inbox.closed(WAIT).await;
        assert!(
            self.inbox.finished(),
            "event loop still running after DISCONNECT"
        );
    }
}

/// A rumqttc MQTT 5.0 client.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub inbox: Inbox<rumqttc::v5::mqttbytes::v5::Packet>,
}

/// rumqttc v5 options for 127.0.0.1:`port`.
pub fn v5_options(port: u16, client_id: &str, clean: bool) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_start(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl V5 {
    /// Connects with `options`; panics unless the CONNACK accepts.
    pub async fn connect_opts(
        options: rumqttc::v5::MqttOptions,
    ) -> (V5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 1024);
        let mut inbox = Inbox::spawn(eventloop);
        let connack = inbox
            .wait_for(WAIT, |p| match p {
                Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        let connack = connack.unwrap_or_else(|| panic!("no CONNACK: {:?}", inbox.error));
        assert_eq!(connack.code, ConnectReturnCode::Success);
        (V5 { client, inbox }, connack)
    }

    /// Connects as `client_id`.
    pub async fn connect(
        port: u16,
        client_id: &str,
        clean: bool,
    ) -> (V5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        V5::connect_opts(v5_options(port, client_id, clean)).await
    }

    /// Subscribes and waits for the SUBACK; returns the granted QoS (None = failure).
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Option<rumqttc::v5::mqttbytes::QoS> {
        use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
        match self.suback(filter, qos).await {
            SubscribeReasonCode::Success(q) => Some(q),
            _ => None,
        }
    }

    /// Subscribes to one filter and waits for the SUBACK; returns its reason code.
    pub async fn suback(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> rumqttc::v5::mqttbytes::v5::SubscribeReasonCode {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        let codes = self
            .inbox
            .wait_for(WAIT, |p| match p {
                Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("no SUBACK for {filter}: {:?}", self.inbox.error));
        match codes.as_slice() {
            [code] => *code,
            other => panic!("unexpected SUBACK codes {other:?}"),
        }
    }

    /// Publishes and, for QoS 1/2, waits until the broker acknowledged.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<Bytes>,
    ) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::mqttbytes::QoS as Q;
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("queue PUBLISH");
        let acked = match qos {
            Q::AtMostOnce => return,
            Q::AtLeastOnce => {
                self.inbox
                    .wait_for(WAIT, |p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
            }
            Q::ExactlyOnce => {
                self.inbox
                    .wait_for(WAIT, |p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
            }
        };
        assert!(
            acked.is_some(),
            "publish to {topic} not acknowledged: {:?}",
            self.inbox.error
        );
    }

    /// The next PUBLISH within `within`.
    pub async fn next_publish(
        &mut self,
        within: Duration,
    ) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.inbox
            .wait_for(within, |p| match p {
                Packet::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
    }

    /// The next PUBLISH; panics if none comes within [`WAIT`].
    pub async fn expect_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        match self.next_publish(WAIT).await {
            Some(p) => p,
            None => panic!("no PUBLISH within {WAIT:?}: {:?}", self.inbox.error),
        }
    }

    /// Sends DISCONNECT and waits until the event loop has written it.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let _ = self.inbox.closed(WAIT).await;
        assert!(
            self.inbox.finished(),
            "event loop still running after DISCONNECT"
        );
    }
}

// ---- a client that must survive an attack --------------------------------------------------

/// A subscriber and a publisher (rumqttc, MQTT 3.1.1) connected before an attack;
/// [`Healthy::check`] proves they still work.
pub struct Healthy {
    /// Subscribed to `healthy/t`.
    pub sub: V4,
    /// Publishes to `healthy/t`.
    pub publisher: V4,
    round: u32,
}

impl Healthy {
    /// Connects both on the plain listener at `port` and checks them once.
    pub async fn connect(port: u16) -> Healthy {
        let (mut sub, _) = V4::connect(port, "healthy-sub", true).await;
        sub.subscribe("healthy/t", rumqttc::QoS::AtLeastOnce).await;
        let (publisher, _) = V4::connect(port, "healthy-pub", true).await;
        let mut h = Healthy {
            sub,
            publisher,
            round: 0,
        };
        h.check().await;
        h
    }

    /// A QoS 1 message from the publisher reaches the subscriber.
    pub async fn check(&mut self) {
        self.round += 1;
        let body = format!("still here {}", self.round);
        self.publisher
            .publish("healthy/t", rumqttc::QoS::AtLeastOnce, false, body.clone())
            .await;
        loop {
            let p = self.sub.expect_publish().await;
            if p.payload == body.as_bytes() {
                return;
            }
        }
    }
}

// ---- shards ---------------------------------------------------------------------------------

/// A raw MQTT 5.0 connection known to be served by `shard`. The broker names a client that
/// sends an empty identifier `shardmq-<shard>-<conn>-<n>`; connections are opened until the
/// kernel's SO_REUSEPORT spreading lands one on `shard` (bounded).
pub async fn connect_on_shard(port: u16, shard: usize) -> (Raw, String) {
    for _ in 0..64 {
        let (raw, ack) = Raw::connect_with(port, connect_packet(Protocol::V5, "", true, 0)).await;
        let id = ack
            .properties
            .assigned_client_identifier
            .expect("assigned client identifier")
            .to_string();
        let on: usize = id
            .split('-')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("assigned id {id:?} does not name its shard"));
        if on == shard {
            return (raw, id);
        }
    }
    panic!("64 connections and none on shard {shard}: SO_REUSEPORT spreading broken?");
}

// ---- $SYS -----------------------------------------------------------------------------------

/// Reads the retained `$SYS/brokers/+/shards/+/connections` figures: shard id → connections.
/// Waits until every shard in `0..nshards` has reported.
pub async fn shard_connections(port: u16, nshards: usize) -> HashMap<usize, u64> {
    let (mut raw, _) = Raw::connect(port, Protocol::V3_1_1, "sys-reader", true).await;
    raw.send(&subscribe_packet(
        1,
        &[("$SYS/brokers/+/shards/+/connections", QoS::AtMostOnce)],
    ))
    .await;
    // The server may send matching PUBLISHes before the SUBACK (MQTT 3.1.1 §3.8.4).
    let mut acked = false;
    let mut figures = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while !acked || figures.len() < nshards {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.next(left).await {
            Next::Packet(Packet::Publish(p)) => {
                let levels: Vec<&str> = p.topic.split('/').collect();
                let shard: usize = levels[4].parse().expect("shard id in $SYS topic");
                let n: u64 = std::str::from_utf8(&p.payload)
                    .expect("UTF-8 figure")
                    .parse()
                    .expect("numeric figure");
                figures.insert(shard, n);
            }
            Next::Packet(Packet::SubAck(ack)) => {
                assert_eq!(ack.reasons.iter().map(|r| r.0).collect::<Vec<_>>(), [0]);
                acked = true;
            }
            Next::Packet(_) => {}
            other => panic!("reading $SYS connections: {other:?}; so far {figures:?}"),
        }
    }
    figures
}

// ---- clusters -------------------------------------------------------------------------------

/// The environment of cluster node `id` (`role` "core" or "replicant") on QUIC address `quic`
/// with `seeds` (`id@addr,…`) and its cluster data under `dir`: the test timings (heartbeat
/// 100 ms, election 500 ms, purge of a node down 3.5 s, write timeout 1 s).
pub fn cluster_env(
    id: u64,
    role: &str,
    quic: &str,
    seeds: &str,
    cookie: &str,
    dir: &std::path::Path,
) -> Vec<(String, String)> {
    [
        ("SHARDMQ_CLUSTER__ENABLED", "true"),
        ("SHARDMQ_CLUSTER__NODE_ID", &id.to_string()),
        ("SHARDMQ_NODE__ROLE", role),
        ("SHARDMQ_CLUSTER__LISTEN", quic),
        ("SHARDMQ_CLUSTER__SEEDS", seeds),
        ("SHARDMQ_CLUSTER__COOKIE", cookie),
        ("SHARDMQ_CLUSTER__DATA_DIR", &dir.display().to_string()),
        ("SHARDMQ_CLUSTER__HEARTBEAT_MS", "100"),
        ("SHARDMQ_CLUSTER__ELECTION_TIMEOUT_MS", "500"),
        ("SHARDMQ_CLUSTER__REPLICA_PERSIST_MS", "200"),
        ("SHARDMQ_CLUSTER__NODE_DOWN_PURGE_MS", "3500"),
        ("SHARDMQ_CLUSTER__WRITE_TIMEOUT_MS", "1000"),
        ("RUST_LOG", "warn,shardmq=info,shardmq_cluster=info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A tiny HTTP/1.1 client: the JSON body, or None on any failure.
pub fn http(addr: &str, method: &str, path: &str) -> Option<serde_json::Value> {
    http_with_key(addr, method, path, None)
}

/// [`http`] with an API key (`Authorization: Bearer KEY`).
pub fn http_with_key(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = if method == "POST" { "{}" } else { "" };
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}
