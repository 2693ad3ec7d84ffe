//! `shardmq-bench`: an MQTT load generator in the manner of emqtt-bench, on the same io_uring
//! thread-per-core runtime as the broker (glommio) and the broker's own codec.
//!
//! - `conn`: open many connections and hold them idle (connection rate, memory per connection).
//! - `pubsub`: subscribers and publishers in one process, so that every message carries its
//!   send time and the receiver measures end-to-end latency against the same clock.

mod addrs;
mod client;
mod clock;
mod conn;
mod procs;
mod pubsub;
mod routes;
mod runner;
mod topic;
mod transport;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use client::ConnectOptions;
use shardmq_codec::{Protocol, QoS};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// MQTT load generator for shardmq (and any MQTT broker).
#[derive(Debug, Parser)]
#[command(name = "shardmq-bench", version, about, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open connections and hold them idle; reports the connect rate.
    #[command(disable_help_flag = true, args_override_self = true)]
    Conn(conn::ConnArgs),
    /// Subscribers, then publishers, in one process; reports throughput and end-to-end latency.
    #[command(disable_help_flag = true, args_override_self = true)]
    Pubsub(pubsub::PubsubArgs),
    /// Subscribers only (emqtt-bench `sub`): receive until --duration-secs or Ctrl-C; latency
    /// from the CLOCK_MONOTONIC send time a `pub` process on the same host put in each payload.
    #[command(disable_help_flag = true, args_override_self = true)]
    Sub(pubsub::PubsubArgs),
    /// Publishers only (emqtt-bench `pub`): publish until --duration-secs, -L or Ctrl-C.
    #[command(disable_help_flag = true, args_override_self = true)]
    Pub(pubsub::PubsubArgs),
    /// A route storm: connections each subscribing many distinct filters, one per SUBSCRIBE;
    /// reports SUBACK latency and the storm's duration, then holds the connections.
    #[command(disable_help_flag = true, args_override_self = true)]
    Routes(routes::RoutesArgs),
}

/// Options every command shares: where to connect, how, and on which CPUs.
/// (`-h` is the host, as in emqtt-bench; help is `--help`.)
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// Broker host name or address.
    #[arg(short = 'h', long, default_value = "localhost")]
    host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// MQTT protocol version: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    #[arg(short = 'V', long = "version", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(3..=5))]
    protocol_version: u8,
    /// Keep alive in seconds sent in CONNECT; a client pings after 3/4 of it without traffic.
    /// 0 disables keep-alive.
    #[arg(short = 'k', long = "keepalive", default_value_t = 300)]
    keep_alive_secs: u16,
    /// Client identifier prefix; clients are named <prefix>-<role>-<n>.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// User name sent in CONNECT.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password sent in CONNECT.
    #[arg(short = 'P', long)]
    password: Option<String>,
    /// TLS to the broker (rustls, ring), every connection a full handshake (no resumption).
    /// With --ws: WebSocket over TLS (wss).
    #[arg(long)]
    tls: bool,
    /// PEM CA certificate(s) the broker's certificate must chain to; without it, with --tls,
    /// the certificate is not verified (handshake signatures still are).
    #[arg(long, value_name = "FILE", requires = "tls")]
    cafile: Option<PathBuf>,
    /// PEM client certificate chain to present (with --key).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    key: Option<PathBuf>,
    /// MQTT over WebSocket (subprotocol mqtt); with --tls, over TLS (wss).
    #[arg(long)]
    ws: bool,
    /// Path of the WebSocket upgrade request.
    #[arg(long, value_name = "PATH", default_value = "/mqtt", requires = "ws")]
    ws_path: String,
    /// Local source addresses to spread connections over, round robin by client number:
    /// a comma-separated list of addresses and ranges (127.0.0.2-127.0.0.50,10.0.0.1).
    /// Each socket binds one with IP_BIND_ADDRESS_NO_PORT before connecting.
    #[arg(long, value_name = "ADDRS", value_parser = addrs::ifaddrs_arg)]
    ifaddr: Option<addrs::IfAddrs>,
    /// CPUs to run on, one pinned executor each ("0,1", "0-3"); default one unpinned executor.
    #[arg(long, value_name = "CPUS", value_parser = addrs::cpus_arg)]
    cpus: Option<addrs::Cpus>,
    /// Connection handshakes (socket open to CONNACK) in flight per executor.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    handshakes_max: u64,
    /// Seconds to wait for CONNACK before counting a connection as failed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_secs: u64,
    /// Clean Start (Clean Session in 3.x) in CONNECT; `--clean-start false` keeps sessions.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    clean_start: bool,
    /// MQTT 5.0 Session Expiry Interval in CONNECT, seconds (absent = 0).
    #[arg(short = 'x', long = "session-expiry")]
    session_expiry_secs: Option<u32>,
    /// Print the summary as one JSON object on stdout (progress lines go to stderr).
    #[arg(long)]
    json: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

impl CommonArgs {
    fn protocol(&self) -> Protocol {
        match self.protocol_version {
            3 => Protocol::V3_1,
            4 => Protocol::V3_1_1,
            _ => Protocol::V5,
        }
    }

    fn target(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }

    /// TLS and WebSocket as the flags ask.
    fn layers(&self) -> anyhow::Result<transport::Layers> {
        let tls = if self.tls {
            let config = transport::tls_client_config(
                self.cafile.as_deref(),
                self.cert.as_deref(),
                self.key.as_deref(),
            )?;
            let server_name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .with_context(|| format!("--host {}: not a TLS server name", self.host))?;
            Some(transport::Tls {
                connector: futures_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
                verified: self.cafile.is_some(),
            })
        } else {
            None
        };
        let ws = self.ws.then(|| {
            let scheme = if self.tls { "wss" } else { "ws" };
            let path = if self.ws_path.starts_with('/') {
                self.ws_path.clone()
            } else {
                format!("/{}", self.ws_path)
            };
            let host = if self.host.contains(':') {
                format!("[{}]", self.host)
            } else {
                self.host.clone()
            };
            transport::Ws {
                url: format!("{scheme}://{host}:{}{path}", self.port),
            }
        });
        Ok(transport::Layers { tls, ws })
    }

    fn connect_options(&self, nodelay: bool) -> anyhow::Result<ConnectOptions> {
        Ok(ConnectOptions {
            target: self.target()?,
            protocol: self.protocol(),
            keep_alive_secs: self.keep_alive_secs,
            clean_start: self.clean_start,
            session_expiry_secs: self.session_expiry_secs,
            username: self.username.clone(),
            password: self.password.clone(),
            nodelay,
            layers: self.layers()?,
        })
    }

    /// How clients connect; `nodelay` for clients whose latency is measured.
    fn dial(&self, nodelay: bool) -> anyhow::Result<runner::Dial> {
        Ok(runner::Dial {
            opts: self.connect_options(nodelay)?,
            sources: self
                .ifaddr
                .as_ref()
                .map(|a| a.0.clone())
                .unwrap_or_default(),
            handshakes_max: self.handshakes_max,
            timeout: Duration::from_secs(self.connect_timeout_secs),
        })
    }

    fn cpus(&self) -> Option<Vec<usize>> {
        self.cpus.as_ref().map(|c| c.0.clone())
    }

    fn progress(&self) -> runner::Progress {
        runner::Progress { json: self.json }
    }
}

/// Parses a QoS level, 0..=2.
fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("{s:?}: QoS is 0, 1 or 2"))
}

fn main() -> ExitCode {
    clock::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Conn(args) => conn::run(args),
        Command::Pubsub(args) => pubsub::run(args, pubsub::Mode::Both),
        Command::Sub(args) => pubsub::run(args, pubsub::Mode::Sub),
        Command::Pub(args) => pubsub::run(args, pubsub::Mode::Pub),
        Command::Routes(args) => routes::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
