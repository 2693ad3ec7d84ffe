//! Routing-trie micro-benchmarks: `for_each_match` against 10^3 … 10^6 stored filters, a mix of
//! exact filters (70 %), filters with `+` (20 %) and filters ending in `#` (10 %), plus a
//! topic that matches nothing. `cargo bench -p shardmq-broker --bench trie`.
//!
//! Each filter set is built once per size, outside the measured loop. The 10^6 set is only
//! built under `cargo bench` (criterion's `--bench` flag) or with `SHARDMQ_BENCH_TRIE_MAX`
//! set to a larger cap, so `cargo test --all-targets` (which runs each benchmark once, in a
//! debug build) stays quick: there the largest size is 10^4.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardmq_broker::trie::SubscriptionTrie;

const SITES: u32 = 100;

/// The i-th filter of the benchmark set.
fn filter(i: u32) -> String {
    match i % 10 {
        0 => format!("site/{}/dev/{i}/#", i % SITES),
        1 | 2 => format!("site/+/dev/{i}/+"),
        _ => format!("site/{}/dev/{i}/temp", i % SITES),
    }
}

fn build(n: u32) -> SubscriptionTrie<u32> {
    let mut trie = SubscriptionTrie::new();
    for i in 0..n {
        *trie.entry_or_insert_with(&filter(i), || 0) = i;
    }
    trie
}

/// Largest size measured: 10^6 under `cargo bench`, 10^4 in test mode, or the env cap.
fn max_size() -> u32 {
    if let Some(v) = std::env::var("SHARDMQ_BENCH_TRIE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}

fn bench_match(c: &mut Criterion) {
    let max = max_size();
    for n in [1_000u32, 10_000, 100_000, 1_000_000] {
        if n > max {
            continue;
        }
        let trie = build(n);
        // 64 topics spread over the filter set, so lookups do not hit one hot path.
        let topics: Vec<String> = (0..64u32)
            .map(|k| {
                let i = (k.wrapping_mul(2_654_435_761) % n) / 10 * 10;
                format!("site/{}/dev/{i}/temp", i % SITES)
            })
            .collect();
        let plus: Vec<String> = (0..64u32)
            .map(|k| {
                let i = (k.wrapping_mul(2_654_435_761) % n) / 10 * 10 + 1;
                format!("site/{}/dev/{i}/humidity", i % SITES)
            })
            .collect();
        let mut group = c.benchmark_group(format!("trie/{n}"));
        group.throughput(Throughput::Elements(topics.len() as u64));
        // `site/S/dev/I/temp` with I ≡ 0 (mod 10): matches `site/S/dev/I/#` only.
        group.bench_function("match_hash", |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for t in &topics {
                    trie.for_each_match(black_box(t), |_| hits += 1);
                }
                black_box(hits)
            })
        });
        // `site/S/dev/I/humidity` with I ≡ 1: matches `site/+/dev/I/+`.
        group.bench_function("match_plus", |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for t in &plus {
                    trie.for_each_match(black_box(t), |_| hits += 1);
                }
                black_box(hits)
            })
        });
        group.bench_function("match_exact", |b| {
            let exact: Vec<String> = (3..67u32)
                .map(|k| {
                    let i = (k.wrapping_mul(2_654_435_761) % n) / 10 * 10 + 3;
                    format!("site/{}/dev/{i}/temp", i % SITES)
                })
                .collect();
            b.iter(|| {
                let mut hits = 0u32;
                for t in &exact {
                    trie.for_each_match(black_box(t), |_| hits += 1);
                }
                black_box(hits)
            })
        });
        group.bench_function("match_none", |b| {
            b.iter(|| {
                let mut hits = 0u32;
                trie.for_each_match(black_box("other/1/dev/2/temp"), |_| hits += 1);
                black_box(hits)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
