//! The QUIC transport over real UDP on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardmq_cluster::transport::{StreamKind, Transport, TransportConfig, TransportError};

const WAIT: Duration = Duration::from_secs(5);

fn node(id: u64, cookie: &str) -> Transport {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Transport::bind(TransportConfig::new(id, listen, cookie)).unwrap()
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Msg {
    n: u64,
    text: String,
}

/// Answers every accepted stream by echoing its frames back with `n + 1`.
fn spawn_echo(t: Transport) {
    tokio::spawn(async move {
        while let Some(acc) = t.accept().await {
            tokio::spawn(async move {
                let mut s = acc.stream;
                while let Ok(Some(m)) = s.recv::<Msg>().await {
                    let reply = Msg {
                        n: m.n + 1,
                        text: format!("{:?}:{}:{}", acc.kind, acc.peer_node, m.text),
                    };
                    if s.send(&reply).await.is_err() {
                        break;
                    }
                }
                let _ = s.finish();
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_round_trip_on_two_kinds_in_parallel() -> anyhow::Result<()> {
    let a = node(1, "cookie");
    let b = node(2, "cookie");
    spawn_echo(b.clone());
    let mut tasks = Vec::new();
    for kind in [StreamKind::Raft, StreamKind::Rpc] {
        let a = a.clone();
        let peer = b.local_addr();
        tasks.push(tokio::spawn(async move {
            let mut s = a.open(peer, kind).await?;
            for n in 0..100u64 {
                s.send(&Msg {
                    n,
                    text: "x".repeat(n as usize * 10),
                })
                .await?;
                let r: Msg = tokio::time::timeout(WAIT, s.recv())
                    .await??
                    .expect("a reply");
                assert_eq!(r.n, n + 1);
                assert!(r.text.starts_with(&format!("{kind:?}:1:")));
            }
            s.finish()?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    a.close();
    b.close();
    Ok(())
}

async fn try_exchange(from: &Transport, to: SocketAddr) -> Result<Option<Msg>, TransportError> {
    let mut s = from.open(to, StreamKind::Rpc).await?;
    s.send(&Msg {
        n: 1,
        text: "hello".into(),
    })
    .await?;
    s.recv::<Msg>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_is_refused_both_ways() -> anyhow::Result<()> {
    let good = node(1, "cookie");
    let evil = node(9, "another cookie");
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    for t in [good.clone(), evil.clone()] {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(acc) = t.accept().await {
                let _ = tx.send((t.node_id(), acc.peer_node));
            }
        });
    }
    // The wrong node dials the right one, then the other way round.
    for (from, to) in [(&evil, &good), (&good, &evil)] {
        let r = tokio::time::timeout(WAIT, try_exchange(from, to.local_addr())).await;
        match r {
            Ok(Ok(m)) => panic!("exchange with a foreign cookie succeeded: {m:?}"),
            Ok(Err(e)) => eprintln!("refused as expected: {e}"),
            Err(_) => panic!("refusal took longer than {WAIT:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        delivered.try_recv().is_err(),
        "a stream from a foreign cookie was accepted"
    );

    // And the right cookie still works on the same endpoint.
    let friend = node(2, "cookie");
    spawn_echo(friend.clone());
    let r = tokio::time::timeout(WAIT, try_exchange(&good, friend.local_addr())).await??;
    assert_eq!(r.map(|m| m.n), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_fails_its_stream_only() -> anyhow::Result<()> {
    let a = node(1, "cookie");
    let mut cfg = TransportConfig::new(2, "127.0.0.1:0".parse()?, "cookie");
    cfg.frame_max_bytes = 1024;
    let b = Transport::bind(cfg)?;

    let mut s1 = a.open(b.local_addr(), StreamKind::Forward).await?;
    s1.send(&vec![7u8; 4096]).await?; // a's limit is 16 MiB: it goes out
    let mut acc1 = tokio::time::timeout(WAIT, b.accept())
        .await?
        .expect("accepted");
    assert_eq!(acc1.kind, StreamKind::Forward);
    assert_eq!(acc1.peer_node, 1);
    let err = acc1.stream.recv::<Vec<u8>>().await.unwrap_err();
    assert!(
        matches!(err, TransportError::FrameTooLarge { len, max: 1024 } if len > 4096),
        "{err}"
    );

    // The same connection carries another stream fine.
    let mut s2 = a.open(b.local_addr(), StreamKind::Raft).await?;
    s2.send(&Msg {
        n: 5,
        text: "small".into(),
    })
    .await?;
    let mut acc2 = tokio::time::timeout(WAIT, b.accept())
        .await?
        .expect("accepted");
    assert_eq!(acc2.kind, StreamKind::Raft);
    assert_eq!(
        acc2.stream.recv::<Msg>().await?,
        Some(Msg {
            n: 5,
            text: "small".into()
        })
    );
    // b refuses to send an oversize frame before writing anything; its stream stays usable.
    let err = acc2.stream.send(&vec![0u8; 2048]).await.unwrap_err();
    assert!(matches!(err, TransportError::FrameTooLarge { .. }), "{err}");
    acc2.stream
        .send(&Msg {
            n: 6,
            text: "back".into(),
        })
        .await?;
    acc2.stream.finish()?;
    assert_eq!(
        tokio::time::timeout(WAIT, s2.recv::<Msg>())
            .await??
            .map(|m| m.n),
        Some(6)
    );
    assert_eq!(tokio::time::timeout(WAIT, s2.recv::<Msg>()).await??, None);

    // A malformed frame (bytes that are not a Msg) is an error on its stream only.
    let mut s3 = a.open(b.local_addr(), StreamKind::Rpc).await?;
    s3.send(&[0xffu8; 3]).await?;
    let mut acc3 = tokio::time::timeout(WAIT, b.accept())
        .await?
        .expect("accepted");
    assert!(matches!(
        acc3.stream.recv::<Msg>().await,
        Err(TransportError::Malformed(_))
    ));
    let mut s4 = a.open(b.local_addr(), StreamKind::Rpc).await?;
    s4.send(&Msg {
        n: 9,
        text: String::new(),
    })
    .await?;
    let mut acc4 = tokio::time::timeout(WAIT, b.accept())
        .await?
        .expect("accepted");
    assert_eq!(acc4.stream.recv::<Msg>().await?.map(|m| m.n), Some(9));
    drop(s1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_peer_restarts() -> anyhow::Result<()> {
    let a = node(1, "cookie");
    let b = node(2, "cookie");
    let addr = b.local_addr();
    spawn_echo(b.clone());
    assert_eq!(try_exchange(&a, addr).await?.map(|m| m.n), Some(2));
    b.close();
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b2 = Transport::bind(TransportConfig::new(2, addr, "cookie"))?;
    spawn_echo(b2.clone());
    // The first try may still hit the dead connection; a retry must dial afresh.
    let mut ok = false;
    for _ in 0..20 {
        if let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(1), try_exchange(&a, addr)).await
        {
            assert_eq!(m.n, 2);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no exchange after the peer restarted");
    Ok(())
}
