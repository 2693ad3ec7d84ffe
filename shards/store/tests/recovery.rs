//! Property tests of the record format, the log writer and recovery.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use shardmq_store::*;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

/// Recovers one shard directory of `generation` and finishes the state.
fn recover_one(root: &Path, shard: u32, generation: u64) -> (State, ShardReport) {
    let (mut st, rep) = recover_shard(&shard_dir(root, shard), shard, generation).unwrap();
    st.finish();
    (st, rep)
}

fn same(a: &State, b: &State) -> bool {
    let mut a = a.normalized();
    let mut b = b.normalized();
    a.next_message_id = 0;
    b.next_message_id = 0;
    a == b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// A crash can leave any prefix of the bytes written: whatever the cut, recovery gives
    /// exactly the state of the records wholly before it, reports at most a torn tail, and
    /// sees no anomaly (every prefix of a log is a consistent state).
    #[test]
    fn every_prefix_recovers(seed in any::<u64>()) {
        every_prefix(seed);
    }
}

proptest! {
    #![proptest_config(cfg())]

    /// Every record survives encode → decode unchanged, whatever LSN it carries.
    #[test]
    fn records_round_trip(seed in any::<u64>(), lsn in any::<u64>()) {
        for r in generate(seed, 120) {
            let mut buf = BytesMut::new();
            let n = encode_record(&r, lsn, &mut buf);
            prop_assert_eq!(n, buf.len());
            let back = decode_record(&buf[8..]).unwrap();
            prop_assert_eq!(back, r);
        }
    }

    /// What the writer writes (batches of random sizes, segments rolled small) recovers to the
    /// in-memory replay of the same records, with no stop and no anomaly.
    #[test]
    fn written_log_recovers_to_replay(seed in any::<u64>(), seg in 200u64..4000) {
        let records = generate(seed, 300);
        let dir = tempfile::tempdir().unwrap();
        let w = write_log(dir.path(), 0, 0, &records, seg, seed);
        prop_assert!(w.segments().len() > 1 || seg > 3000);
        let (st, rep) = recover_one(dir.path(), 0, 0);
        prop_assert_eq!(rep.stop, None);
        prop_assert_eq!(rep.records, records.len() as u64);
        prop_assert_eq!(rep.bytes, w.disk_bytes());
        prop_assert_eq!(st.anomalies, 0);
        prop_assert_eq!(st.dangling, 0);
        prop_assert!(same(&st, &replay(&records)));
    }

    /// Damage anywhere never panics, and recovery gives the state of the records before the
    /// reported stop: the longest valid prefix.
    #[test]
    fn random_corruption_never_panics(seed in any::<u64>(), flips in 1usize..4) {
        let records = generate(seed, 150);
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 0, 0, &records, 1500, seed);
        let files = list_segments(&shard_dir(dir.path(), 0)).unwrap();
        let mut rng = common::Rng::new(seed ^ 0xdead);
        for _ in 0..flips {
            let (_, path) = &files[rng.below(files.len() as u64) as usize];
            let mut bytes = std::fs::read(path).unwrap();
            let i = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[i] ^= 1 << rng.below(8),
                1 => bytes[i] = rng.next() as u8,
                _ => bytes.truncate(i),
            }
            std::fs::write(path, &bytes).unwrap();
        }
        let (st, rep) = recover_one(dir.path(), 0, 0);
        // A cut exactly at a frame boundary of the last segment reads as a shorter log.
        let k = rep.stop.as_ref().map_or(rep.records, |s| s.lsn) as usize;
        prop_assert_eq!(rep.records, k as u64);
        prop_assert!(same(&st, &replay(&records[..k])));
    }

    /// The snapshot of the state after k records (k between two runtime steps), followed by
    /// the records after k, replays to the same state as all the records.
    #[test]
    fn snapshot_plus_tail_is_full_replay(seed in any::<u64>(), pick in any::<prop::sample::Index>()) {
        let (records, boundaries) = generate_with_boundaries(seed, 300);
        let k = boundaries[pick.index(boundaries.len())];
        let mut st = replay(&records[..k]);
        let snap: Vec<Record> = st.snapshot_records().collect();
        let mut combined = snap.clone();
        combined.extend_from_slice(&records[k..]);
        prop_assert!(same(&replay(&combined), &replay(&records)));
        // And through the disk: write_snapshot, then the tail appended by a writer.
        let dir = tempfile::tempdir().unwrap();
        let pos = write_snapshot(dir.path(), LogConfig::new(0, 1), &st).unwrap();
        let mut w = LogWriter::new(LogConfig::new(0, 1), pos);
        for r in &records[k..] {
            w.append(r);
        }
        flush(&shard_dir(dir.path(), 0), &mut w);
        let (back, rep) = recover_one(dir.path(), 0, 1);
        prop_assert_eq!(rep.stop, None);
        prop_assert!(same(&back, &replay(&records)));
        st.finish();
    }

    /// An incremental compaction pass, interleaved with new changes, then deleting the
    /// segments before it, recovers to the full replay (the protocol the runtime follows).
    #[test]
    fn compaction_pass_keeps_everything(seed in any::<u64>(), k in 1usize..250) {
        let records = generate(seed, 300);
        let dir = tempfile::tempdir().unwrap();
        let sdir = shard_dir(dir.path(), 0);
        let mut w = write_log(dir.path(), 0, 0, &records[..k], 700, seed);
        // The runtime's live state (unfinished: it still has every message's content).
        let mut live = State::new();
        for (lsn, r) in records[..k].iter().enumerate() {
            live.apply(0, lsn as Lsn, r.clone());
        }
        let pass = w.begin_compaction();
        let mut reput = std::collections::HashSet::new();
        let mut todo: Vec<_> = live.sessions.keys().cloned().collect();
        todo.sort();
        let mut topics: Vec<_> = live.retained.keys().cloned().collect();
        topics.sort();
        let mut rng = common::Rng::new(seed);
        let mut tail = records[k..].iter();
        let mut lsn = k as Lsn;
        loop {
            // Interleave: some changes, then re-image one item.
            for _ in 0..rng.below(3) {
                if let Some(r) = tail.next() {
                    // What MessageTable::acquire enforces: a reference written during the
                    // pass to a message put before it puts the message again first.
                    let referenced = match r {
                        Record::MessagePut { id, .. } => {
                            reput.insert(*id);
                            None
                        }
                        Record::Enqueued { delivery, .. } => Some(delivery.message),
                        Record::RetainedSet { message, .. } => Some(*message),
                        _ => None,
                    };
                    if let Some(id) = referenced {
                        if reput.insert(id) {
                            let message = live.messages[&id].clone();
                            w.append(&Record::MessagePut { id, message: message.clone() });
                            live.apply(0, lsn, Record::MessagePut { id, message });
                            lsn += 1;
                        }
                    }
                    w.append(r);
                    live.apply(0, lsn, r.clone());
                    lsn += 1;
                }
            }
            let emit = |w: &mut LogWriter, live: &mut State, lsn: &mut Lsn, r: Record| {
                w.append(&r);
                live.apply(0, *lsn, r);
                *lsn += 1;
            };
            let reput_ids = |ids: Vec<MessageId>, w: &mut LogWriter, live: &mut State, lsn: &mut Lsn, reput: &mut std::collections::HashSet<MessageId>| {
                for id in ids {
                    if reput.insert(id) {
                        if let Some(m) = live.messages.get(&id).cloned() {
                            emit(w, live, lsn, Record::MessagePut { id, message: m });
                        }
                    }
                }
            };
            if let Some(c) = todo.pop() {
                if let Some(sess) = live.sessions.get(&c).cloned() {
                    reput_ids(sess.message_ids().collect(), &mut w, &mut live, &mut lsn, &mut reput);
                    emit(&mut w, &mut live, &mut lsn, Record::SessionImage(Box::new(sess)));
                }
            } else if let Some(t) = topics.pop() {
                if let Some(e) = live.retained.get(&t).cloned() {
                    match e.message {
                        Some(id) => {
                            reput_ids(vec![id], &mut w, &mut live, &mut lsn, &mut reput);
                            emit(&mut w, &mut live, &mut lsn, Record::RetainedSet { topic: t, message: id, at_unix_ns: e.at_unix_ns });
                        }
                        None => emit(&mut w, &mut live, &mut lsn, Record::RetainedClear { topic: t, at_unix_ns: e.at_unix_ns }),
                    }
                }
            } else {
                break;
            }
            if rng.chance(30) {
                flush(&sdir, &mut w);
            }
        }
        w.end_compaction(pass);
        prop_assert!(w.take_obsolete().is_empty() || !w.has_pending());
        for r in tail {
            // After the pass ended nothing older than it is put again (the table's keep_from
            // stays at the pass start until the next pass); references to messages put before
            // the pass would be re-put here too.
            let referenced = match r {
                Record::MessagePut { id, .. } => {
                    reput.insert(*id);
                    None
                }
                Record::Enqueued { delivery, .. } => Some(delivery.message),
                Record::RetainedSet { message, .. } => Some(*message),
                _ => None,
            };
            if let Some(id) = referenced {
                if reput.insert(id) {
                    let message = live.messages[&id].clone();
                    w.append(&Record::MessagePut { id, message });
                }
            }
            w.append(r);
        }
        flush(&sdir, &mut w);
        let before = w.disk_bytes();
        for name in w.take_obsolete() {
            std::fs::remove_file(sdir.join(name)).unwrap();
        }
        prop_assert!(w.disk_bytes() <= before);
        let (st, rep) = recover_one(dir.path(), 0, 0);
        prop_assert_eq!(rep.stop, None);
        prop_assert_eq!(st.dangling, 0);
        prop_assert!(same(&st, &replay(&records)));
    }

    /// A restart with a different shard count moves every session to its new owner and keeps
    /// every retained message; a second restart finds the same data.
    #[test]
    fn restart_changes_shard_count(seed in any::<u64>(), before in 1u32..4, after in 1u32..4) {
        let dir = tempfile::tempdir().unwrap();
        let mut parts = Vec::new();
        for shard in 0..before {
            let records = generate(seed.wrapping_add(u64::from(shard)), 120);
            write_log(dir.path(), shard, 0, &records, 2000, seed);
            let mut st = State::new();
            for (lsn, r) in records.iter().enumerate() {
                st.apply(shard, lsn as Lsn, r.clone());
            }
            parts.push((shard, st));
        }
        let expect = canon(&State::merge(parts));
        let owner = |c: &str| c.len() % after as usize;
        let topic_owner = |t: &str| t.bytes().map(usize::from).sum::<usize>() % after as usize;
        let r = restart(dir.path(), after, owner, topic_owner, LogConfig::new(0, 0)).unwrap();
        prop_assert_eq!(r.generation, 1);
        prop_assert_eq!(r.shards.len(), after as usize);
        for (i, part) in r.shards.iter().enumerate() {
            prop_assert!(part.state.sessions.keys().all(|c| owner(c) == i));
        }
        let dirs = list_shard_dirs(dir.path()).unwrap();
        prop_assert!(dirs.iter().all(|(s, _)| *s < after));
        let again = recover(dir.path()).unwrap();
        prop_assert_eq!(again.generation, 1);
        prop_assert_eq!(&canon(&again.state), &expect);
        // The writers continue where the snapshots ended.
        for (i, part) in r.shards.into_iter().enumerate() {
            let mut w = LogWriter::new(LogConfig::new(i as u32, 1), part.position);
            w.append(&Record::RetainedClear { topic: s("t/none"), at_unix_ns: u64::MAX });
            flush(&shard_dir(dir.path(), i as u32), &mut w);
        }
        let third = recover(dir.path()).unwrap();
        prop_assert!(third.shards.iter().all(|s| s.stop.is_none()));
        prop_assert_eq!(canon(&third.state), expect);
    }
}

#[test]
fn corruption_in_the_middle_is_reported_as_corrupt() {
    let records = generate(7, 50);
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 0, 0, &records, 1 << 20, 7);
    let (_, path) = &list_segments(&shard_dir(dir.path(), 0)).unwrap()[0];
    let mut bytes = std::fs::read(path).unwrap();
    // A payload byte of the first record (header 48 bytes, frame header 8).
    bytes[48 + 8 + 1] ^= 0x40;
    std::fs::write(path, &bytes).unwrap();
    let (st, rep) = recover_one(dir.path(), 0, 0);
    let stop = rep.stop.unwrap();
    assert_eq!(stop.kind, StopKind::Corrupt);
    assert_eq!(stop.lsn, 0);
    assert_eq!(stop.offset, 48);
    assert!(stop.skipped_bytes > 0);
    assert!(st.sessions.is_empty());
}

#[test]
fn torn_last_record_is_a_torn_tail() {
    let records = generate(8, 50);
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 0, 0, &records, 1 << 20, 8);
    let (_, path) = &list_segments(&shard_dir(dir.path(), 0)).unwrap()[0];
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len - 3).unwrap();
    let (st, rep) = recover_one(dir.path(), 0, 0);
    let stop = rep.stop.unwrap();
    assert_eq!(stop.kind, StopKind::TornTail);
    assert_eq!(stop.lsn, 49);
    assert!(same(&st, &replay(&records[..49])));
}

#[test]
fn interrupted_startup_recovers_the_committed_generation() {
    let records = generate(9, 100);
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 0, 0, &records, 1 << 20, 9);
    let before = canon(&recover(dir.path()).unwrap().state);
    // A start-up wrote generation 1's snapshot but crashed before committing it.
    let st = recover(dir.path()).unwrap().state;
    write_snapshot(dir.path(), LogConfig::new(0, 1), &st).unwrap();
    let again = recover(dir.path()).unwrap();
    assert_eq!(again.generation, 0);
    assert_eq!(canon(&again.state), before);
    assert_eq!(again.shards[0].stale.len(), 1);
    // The next start-up commits generation 1 and removes both older logs.
    let r = restart(dir.path(), 1, |_| 0, |_| 0, LogConfig::new(0, 0)).unwrap();
    assert_eq!(r.generation, 1);
    assert_eq!(r.cleanup.removed.len(), 2);
    assert_eq!(canon(&recover(dir.path()).unwrap().state), before);
}

#[test]
fn unsupported_version_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sdir = shard_dir(dir.path(), 0);
    std::fs::create_dir_all(&sdir).unwrap();
    let mut b = BytesMut::new();
    SegmentHeader {
        version: 99,
        shard: 0,
        generation: 0,
        seq: 1,
        base_lsn: 0,
    }
    .write(&mut b);
    std::fs::write(sdir.join(segment_file_name(1)), &b).unwrap();
    assert!(matches!(
        recover(dir.path()),
        Err(StoreError::UnsupportedVersion { found: 99, .. })
    ));
}

fn every_prefix(seed: u64) {
    let records = generate(seed, 40);
    let mut cfg = LogConfig::new(0, 0);
    cfg.segment_bytes_max = 600;
    let mut w = LogWriter::new(
        cfg,
        LogPosition {
            segments: vec![(1, 0)],
            next_lsn: 0,
        },
    );
    // One batch per record: the write stream, and after which byte each record is whole.
    let mut writes = Vec::new();
    let mut ends = Vec::new();
    let mut total = 0usize;
    for r in &records {
        w.append(r);
        let b = w.take_batch().unwrap();
        w.batch_written(b.last_lsn);
        for sw in b.writes {
            total += sw.bytes.len();
            writes.push(sw);
        }
        ends.push(total);
    }
    let dir = tempfile::tempdir().unwrap();
    let sdir = shard_dir(dir.path(), 0);
    std::fs::create_dir_all(&sdir).unwrap();
    // The stream as whole files: each write appends to its file, in order.
    let mut files: Vec<(String, Vec<u8>, usize)> = Vec::new(); // name, bytes, stream start
    let mut at = 0usize;
    for sw in &writes {
        if sw.create {
            files.push((sw.file_name.clone(), Vec::new(), at));
        }
        let f = files.iter_mut().find(|f| f.0 == sw.file_name).unwrap();
        assert_eq!(f.1.len() as u64, sw.offset);
        f.1.extend_from_slice(&sw.bytes);
        at += sw.bytes.len();
    }
    for cut in 0..=total {
        // Files wholly before the cut are complete, the one holding it is cut (possibly
        // to nothing: created, not written), later ones do not exist.
        for (name, bytes, start) in &files {
            let path = sdir.join(name);
            if *start > cut {
                let _ = std::fs::remove_file(&path);
            } else {
                let keep = (cut - start).min(bytes.len());
                // Cuts only grow: append what is missing (no truncate-and-rewrite, which ext4
                // flushes on close).
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                let cur = f.metadata().unwrap().len() as usize;
                assert!(cur <= keep);
                f.write_all_at(&bytes[cur..keep], cur as u64).unwrap();
            }
        }
        let k = ends.iter().take_while(|e| **e <= cut).count();
        let (st, rep) = recover_one(dir.path(), 0, 0);
        if let Some(stop) = &rep.stop {
            assert_eq!(
                stop.kind,
                StopKind::TornTail,
                "cut {} of {}: {:?}",
                cut,
                total,
                stop
            );
        }
        assert_eq!(rep.records, k as u64, "cut {}", cut);
        assert_eq!(st.anomalies, 0);
        assert_eq!(st.dangling, 0);
        assert!(same(&st, &replay(&records[..k])), "cut {}", cut);
    }
}

#[test]
fn restart_sets_corrupt_segments_aside_and_drops_torn_headers() {
    let records = generate(11, 200);
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 0, 0, &records, 1500, 11);
    let sdir = shard_dir(dir.path(), 0);
    let files = list_segments(&sdir).unwrap();
    assert!(files.len() >= 3);
    // Damage a record in the middle of the second segment.
    let (_, second) = &files[1];
    let mut bytes = std::fs::read(second).unwrap();
    bytes[48 + 9] ^= 0xff;
    std::fs::write(second, &bytes).unwrap();
    let before = recover(dir.path()).unwrap();
    assert!(before.has_corruption());
    let expect = canon(&before.state);
    let r = restart(dir.path(), 1, |_| 0, |_| 0, LogConfig::new(0, 0)).unwrap();
    // The segments from the stop on are kept, renamed; the first one is removed.
    assert_eq!(r.cleanup.kept_corrupt.len(), files.len() - 1);
    assert!(r
        .cleanup
        .kept_corrupt
        .iter()
        .all(|p| p.to_string_lossy().ends_with(".log.corrupt")));
    let after = recover(dir.path()).unwrap();
    assert!(!after.has_corruption());
    assert_eq!(canon(&after.state), expect);

    // A newest segment whose header was cut: a torn tail, removed by the next start-up.
    let last = list_segments(&sdir).unwrap().last().unwrap().0;
    std::fs::write(sdir.join(segment_file_name(last + 1)), [0x53, 0x48]).unwrap();
    let torn = recover(dir.path()).unwrap();
    let stop = torn.shards[0].stop.clone().unwrap();
    assert_eq!((stop.kind, stop.bad_header), (StopKind::TornTail, true));
    assert_eq!(canon(&torn.state), expect);
    let r = restart(dir.path(), 1, |_| 0, |_| 0, LogConfig::new(0, 0)).unwrap();
    assert!(r
        .cleanup
        .removed
        .contains(&sdir.join(segment_file_name(last + 1))));
    let clean = recover(dir.path()).unwrap();
    assert!(clean.shards[0].stop.is_none());
    assert_eq!(canon(&clean.state), expect);
}
