//! Codec micro-benchmarks: decode and encode PUBLISH (QoS 0 and 1, 16 B and 256 B, MQTT 3.1.1
//! and 5.0) and CONNECT. `cargo bench -p shardmq-codec`; under `cargo test` each runs once.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardmq_codec::{
    encode, ByteStr, Connect, ConnectProperties, Decoder, Packet, Protocol, Publish,
    PublishProperties, QoS,
};

fn publish(qos: QoS, size: usize) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from_static("bench/sensors/device-000042/temperature"),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 4242 },
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0xA5u8; size]),
    }))
}

fn connect(protocol: Protocol) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteStr::from_static("bench-pub-000042"),
        will: None,
        username: Some(ByteStr::from_static("user")),
        password: Some(Bytes::from_static(b"secret")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(1024),
            ..ConnectProperties::default()
        },
    }))
}

fn wire(packet: &Packet, protocol: Protocol) -> Bytes {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf);
    buf.freeze()
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            for size in [16usize, 256] {
                let packet = publish(qos, size);
                let bytes = wire(&packet, protocol);
                let name = format!("v{}/qos{}/{size}B", protocol.level(), qos as u8);
                group.throughput(Throughput::Bytes(bytes.len() as u64));
                group.bench_function(format!("decode/{name}"), |b| {
                    let mut decoder = Decoder::with_protocol(protocol, 1 << 20);
                    b.iter_batched_ref(
                        || BytesMut::from(&bytes[..]),
                        |buf| black_box(decoder.decode(buf).unwrap().unwrap()),
                        BatchSize::SmallInput,
                    )
                });
                group.bench_function(format!("encode/{name}"), |b| {
                    let mut buf = BytesMut::with_capacity(4096);
                    b.iter(|| {
                        buf.clear();
                        encode(black_box(&packet), protocol, &mut buf);
                        black_box(buf.len())
                    })
                });
            }
        }
    }
    group.finish();
}

fn bench_connect(c: &mut Criterion) {
    let mut group = c.benchmark_group("connect");
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let packet = connect(protocol);
        let bytes = wire(&packet, protocol);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let name = format!("v{}", protocol.level());
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&bytes[..]),
                |buf| black_box(Decoder::new(1 << 20).decode(buf).unwrap().unwrap()),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("encode/{name}"), |b| {
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                encode(black_box(&packet), protocol, &mut buf);
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_publish, bench_connect);
criterion_main!(benches);
