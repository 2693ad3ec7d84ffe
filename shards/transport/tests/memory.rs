//! Heap held by an idle connection's layers, measured with a counting global allocator.
//!
//! Each figure is the heap freed when the idle `Box<Transport>` is dropped (so it counts the
//! box itself and everything the layers own, and nothing shared such as the `ServerConfig`).
//! One `#[test]` only: the allocator counts every thread of the process.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::BytesMut;
use common::*;
use shardmq_transport::{PeerCertName, Stack, Transport, VerifyPeer};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn owned_by(t: Box<Transport>) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    drop(t);
    before - LIVE.load(Ordering::Relaxed)
}

fn idle_tls(stack: &Stack, id: Option<&Identity>) -> Box<Transport> {
    let mut c = client(client_config(&rustls::version::TLS13, id, &[b"mqtt"]));
    let mut s = Box::new(Transport::new(stack).unwrap());
    let (mut plain, mut app) = (BytesMut::new(), Vec::new());
    pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    assert!(s.ready());
    c.writer().write_all(&[0x10, 2, 0, 0]).unwrap();
    pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    s.on_plain_out(&[0x20, 2, 0, 0]).unwrap();
    pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    assert_eq!(app, [0x20, 2, 0, 0]);
    s.shrink();
    s
}

#[test]
fn idle_connection_heap() {
    let tls = stack_tls(VerifyPeer::None, PeerCertName::None);
    let mtls = stack_tls(VerifyPeer::Required, PeerCertName::Cn);
    let p = pki();
    // Warm up lazily initialised statics (ring CPU features, tracing callsites).
    drop(idle_tls(&tls, None));

    let fresh = owned_by(Box::new(Transport::new(&tls).unwrap()));
    let tls13 = owned_by(idle_tls(&tls, None));
    let tls13_mtls = owned_by(idle_tls(&mtls, Some(&p.client)));
    let tls12 = {
        let mut c = client(client_config(&rustls::version::TLS12, None, &[b"mqtt"]));
        let mut s = Box::new(Transport::new(&tls).unwrap());
        pump_tls(&mut c, &mut s, &mut BytesMut::new(), &mut Vec::new(), &[]);
        assert!(s.ready());
        s.shrink();
        drop(c);
        owned_by(s)
    };

    let ws_stack = Stack {
        proxy: true,
        ws: Some(ws_settings()),
        ..Stack::default()
    };
    let mut ws = Box::new(Transport::new(&ws_stack).unwrap());
    let mut plain = BytesMut::new();
    ws.on_wire_in(b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n", &mut plain)
        .unwrap();
    ws.on_wire_in(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n", &mut plain).unwrap();
    assert!(ws.ready());
    let mut out = BytesMut::new();
    ws.take_wire_out(&mut out);
    ws.shrink();
    let ws_idle = owned_by(ws);

    let proxy_stack = Stack {
        proxy: true,
        ..Stack::default()
    };
    let mut px = Box::new(Transport::new(&proxy_stack).unwrap());
    px.on_wire_in(b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n", &mut plain)
        .unwrap();
    px.shrink();
    let proxy_idle = owned_by(px);

    println!(
        "size_of::<Transport>() = {} B",
        std::mem::size_of::<Transport>()
    );
    println!(
        "size_of::<TlsLayer>() = {} B",
        std::mem::size_of::<shardmq_transport::TlsLayer>()
    );
    println!("fresh TLS transport (before any byte): {fresh} B");
    println!(
        "idle TLS 1.3 (P-256 server cert), after handshake + CONNECT/CONNACK + shrink: {tls13} B"
    );
    println!("idle TLS 1.3 with a client certificate (verify_peer = required): {tls13_mtls} B");
    println!("idle TLS 1.2 (P-256 server cert), after handshake + shrink: {tls12} B");
    println!("idle PROXY + WebSocket (no TLS), after upgrade + shrink: {ws_idle} B");
    println!("idle PROXY only, after the header + shrink: {proxy_idle} B");
    // Budgets (assertions so regressions show): see the crate docs for the figures.
    assert!(tls13 < 4 * 1024, "idle TLS connection costs {tls13} B");
    assert!(ws_idle < 512, "idle WebSocket costs {ws_idle} B");
    assert!(proxy_idle < 512, "idle PROXY-only costs {proxy_idle} B");
}
