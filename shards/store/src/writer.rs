//! The log writer: records in, exactly what to write to which file out. No I/O here.

use crate::format::{encode_record, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use crate::layout::segment_file_name;
use crate::record::{Lsn, Record, SegmentSeq};
use bytes::{Bytes, BytesMut};

/// Default size at which a segment is closed and the next one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default: no compaction while the log is smaller than this.
pub const COMPACT_MIN_BYTES_DEFAULT: u64 = 256 << 20;
/// Default: compact when the log is this many times the size the last compaction left.
pub const COMPACT_RATIO_DEFAULT: u64 = 4;

/// How a shard's log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Shard id (written in every segment header).
    pub shard: u32,
    /// Start-up generation (written in every segment header; see the crate docs).
    pub generation: u64,
    /// A segment is closed once the next record would take it past this size (a record larger
    /// than it gets a segment of its own).
    pub segment_bytes_max: u64,
    /// [`LogWriter::compaction_due`] stays false below this many bytes of log.
    pub compact_min_bytes: u64,
    /// [`LogWriter::compaction_due`] turns true when the log reaches this many times the bytes
    /// the last compaction (or start-up snapshot) left.
    pub compact_ratio: u64,
}

impl LogConfig {
    /// The defaults for `shard` in `generation`.
    pub fn new(shard: u32, generation: u64) -> LogConfig {
        LogConfig {
            shard,
            generation,
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            compact_min_bytes: COMPACT_MIN_BYTES_DEFAULT,
            compact_ratio: COMPACT_RATIO_DEFAULT,
        }
    }
}

/// Where a log continues: returned by [`crate::write_snapshot`], taken by [`LogWriter::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPosition {
    /// Segments the directory holds for this generation, oldest first, with their sizes; the
    /// last one is where appends continue (it may not exist yet if its size is 0).
    pub segments: Vec<(SegmentSeq, u64)>,
    /// LSN of the next record.
    pub next_lsn: Lsn,
}

/// One write of a batch: `bytes` at `offset` of segment `segment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentWrite {
    /// Segment number.
    pub segment: SegmentSeq,
    /// Its file name within the shard directory ([`segment_file_name`]).
    pub file_name: String,
    /// The file does not exist yet: create it (`O_CREAT|O_EXCL`), and after its first
    /// fdatasync also fsync the directory so the new name is durable. `offset` is 0 and
    /// `bytes` starts with the segment header.
    pub create: bool,
    /// Byte offset in the file (the file's current length: writes only append).
    pub offset: u64,
    /// What to write.
    pub bytes: Bytes,
}

/// What one group commit writes: the writes in order (one, or two when a segment rolled),
/// covering records up to `last_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The writes, in order.
    pub writes: Vec<SegmentWrite>,
    /// LSN of the first record in the batch.
    pub first_lsn: Lsn,
    /// LSN of the last record in the batch.
    pub last_lsn: Lsn,
}

impl Batch {
    /// Total bytes to write.
    pub fn len(&self) -> usize {
        self.writes.iter().map(|w| w.bytes.len()).sum()
    }

    /// True when the batch writes nothing (never returned by [`LogWriter::take_batch`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.last_lsn - self.first_lsn + 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    from: SegmentSeq,
    ended: bool,
    /// Last LSN appended when the pass ended (`None`: the log was empty).
    end_lsn: Option<Lsn>,
}

/// A compaction pass in progress (see [`LogWriter::begin_compaction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPass {
    /// Segments before this one become obsolete once the pass is durable.
    pub from_segment: SegmentSeq,
}

/// Turns records into group-commit batches for one shard's log and keeps track of positions,
/// segment rolls and compaction. Pure: the runtime does the writes and fsyncs.
///
/// # Driving it
/// - inputs: [`LogWriter::append`] for every record, in the order the changes happened
///   (returns the record's LSN: the durable gate for output that depends on it);
/// - outputs: [`LogWriter::take_batch`] when the writer task is idle and something is
///   pending (returns `None` while a batch is in flight). Write each [`SegmentWrite`] in order
///   (pwrite at its offset; create the file first when `create`), fdatasync every file written,
///   fsync the directory after a `create`, then call [`LogWriter::batch_written`] and
///   [`LogWriter::batch_durable`] (`"sync"`). With `"async"`, call `batch_written` after the
///   writes and `batch_durable(lsn)` after the periodic fdatasync of every file written since.
///   On a write or fsync error keep the same [`Batch`] and retry it later, whole: its offsets
///   do not change, so a half-done attempt is overwritten.
/// - compaction: see [`LogWriter::compaction_due`], [`LogWriter::begin_compaction`],
///   [`LogWriter::end_compaction`], [`LogWriter::take_obsolete`].
#[derive(Debug)]
pub struct LogWriter {
    config: LogConfig,
    /// Live segments, oldest first, with their sizes including pending bytes. Never empty;
    /// the last is the current one.
    segments: Vec<(SegmentSeq, u64)>,
    /// Writes of earlier segments in the pending batch (after a roll).
    closed: Vec<SegmentWrite>,
    /// Pending bytes for the current segment, starting at `pending_offset`.
    pending: BytesMut,
    pending_offset: u64,
    first_pending_lsn: Option<Lsn>,
    next_lsn: Lsn,
    roll_requested: bool,
    in_flight: Option<Lsn>,
    written: Option<Lsn>,
    durable: Option<Lsn>,
    pass: Option<Pass>,
    live_bytes: u64,
}

impl LogWriter {
    /// A writer continuing at `at` (from [`crate::write_snapshot`]), or starting an empty log
    /// with `LogPosition { segments: vec![(first_seq, 0)], next_lsn: 0 }`.
    pub fn new(config: LogConfig, at: LogPosition) -> LogWriter {
        assert!(
            !at.segments.is_empty(),
            "a log position names its current segment"
        );
        assert!(
            config.segment_bytes_max > SEGMENT_HEADER_LEN as u64,
            "segment_bytes_max must exceed the header"
        );
        assert!(
            config.compact_ratio >= 2,
            "compact_ratio below 2 compacts forever"
        );
        let (_, cur_len) = *at.segments.last().expect("non-empty");
        assert!(
            cur_len == 0 || cur_len >= SEGMENT_HEADER_LEN as u64,
            "a segment holds at least its header"
        );
        let live_bytes = at.segments.iter().map(|(_, b)| b).sum();
        let durable = at.next_lsn.checked_sub(1);
        LogWriter {
            config,
            segments: at.segments,
            closed: Vec::new(),
            pending: BytesMut::new(),
            pending_offset: cur_len,
            first_pending_lsn: None,
            next_lsn: at.next_lsn,
            roll_requested: false,
            in_flight: None,
            written: durable,
            durable,
            pass: None,
            live_bytes,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Appends `record` to the pending batch; returns its LSN.
    pub fn append(&mut self, record: &Record) -> Lsn {
        let lsn = self.next_lsn;
        let (cur_seq, cur_len) = *self.segments.last().expect("never empty");
        if cur_len == 0 {
            self.start_segment(cur_seq, lsn);
        } else if self.roll_requested {
            self.roll_to(cur_seq + 1, lsn);
        }
        self.roll_requested = false;
        let at = self.pending.len();
        let n = encode_record(record, lsn, &mut self.pending) as u64;
        let cur_len = self.segments.last().expect("never empty").1;
        let holds_records = cur_len > SEGMENT_HEADER_LEN as u64;
        if holds_records && cur_len + n > self.config.segment_bytes_max {
            // Does not fit: close the current segment without it, start the next with it.
            let frame = self.pending.split_off(at);
            let seq = self.segments.last().expect("never empty").0;
            self.roll_to(seq + 1, lsn);
            self.pending.unsplit(frame);
        }
        self.segments.last_mut().expect("never empty").1 += n;
        self.first_pending_lsn.get_or_insert(lsn);
        self.next_lsn += 1;
        lsn
    }

    fn start_segment(&mut self, seq: SegmentSeq, base_lsn: Lsn) {
        debug_assert!(self.pending.is_empty());
        self.pending_offset = 0;
        SegmentHeader {
            version: FORMAT_VERSION,
            shard: self.config.shard,
            generation: self.config.generation,
            seq,
            base_lsn,
        }
        .write(&mut self.pending);
        let last = self.segments.last_mut().expect("never empty");
        assert_eq!(last.0, seq);
        last.1 = SEGMENT_HEADER_LEN as u64;
    }

    /// Closes the current segment (its pending bytes become a write) and starts `seq`.
    fn roll_to(&mut self, seq: SegmentSeq, base_lsn: Lsn) {
        self.close_pending();
        self.segments.push((seq, 0));
        self.start_segment(seq, base_lsn);
    }

    fn close_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let seq = self.segments.last().expect("never empty").0;
        self.closed.push(SegmentWrite {
            segment: seq,
            file_name: segment_file_name(seq),
            create: self.pending_offset == 0,
            offset: self.pending_offset,
            bytes: self.pending.split().freeze(),
        });
        self.pending_offset = self.segments.last().expect("never empty").1;
    }

    /// Closes the current segment at the next append (a no-op if it holds no record yet);
    /// returns the segment the next record goes to.
    pub fn roll(&mut self) -> SegmentSeq {
        let (seq, len) = *self.segments.last().expect("never empty");
        if len <= SEGMENT_HEADER_LEN as u64 {
            return seq;
        }
        self.roll_requested = true;
        seq + 1
    }

    /// The segment the next record goes to, as far as is known now (a roll for size may still
    /// move it one further: a record is never in an older segment than this).
    pub fn current_segment(&self) -> SegmentSeq {
        let (seq, _) = *self.segments.last().expect("never empty");
        if self.roll_requested {
            seq + 1
        } else {
            seq
        }
    }

    /// LSN the next [`LogWriter::append`] returns.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Bytes appended but not yet handed out by [`LogWriter::take_batch`].
    pub fn pending_bytes(&self) -> usize {
        self.pending.len() + self.closed.iter().map(|w| w.bytes.len()).sum::<usize>()
    }

    /// Whether records wait for [`LogWriter::take_batch`].
    pub fn has_pending(&self) -> bool {
        self.first_pending_lsn.is_some()
    }

    /// Whether a batch is out being written.
    pub fn is_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Hands out everything pending as one batch; `None` if nothing is pending or the previous
    /// batch is still in flight (one batch at a time keeps the file's order).
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        let first_lsn = self.first_pending_lsn.take()?;
        self.close_pending();
        let last_lsn = self.next_lsn - 1;
        self.in_flight = Some(last_lsn);
        Some(Batch {
            writes: std::mem::take(&mut self.closed),
            first_lsn,
            last_lsn,
        })
    }

    /// The batch ending at `last_lsn` is written (not necessarily synced): the next batch may go.
    pub fn batch_written(&mut self, last_lsn: Lsn) {
        assert_eq!(
            self.in_flight,
            Some(last_lsn),
            "batch_written for a batch not in flight"
        );
        self.in_flight = None;
        self.written = Some(last_lsn);
    }

    /// Everything up to `lsn` is on disk (after fdatasync). `lsn` must have been written.
    pub fn batch_durable(&mut self, lsn: Lsn) {
        assert!(
            self.written.is_some_and(|w| lsn <= w),
            "durable past what was written"
        );
        self.durable = Some(self.durable.map_or(lsn, |d| d.max(lsn)));
    }

    /// Highest LSN known durable (`None`: nothing yet). Output gated at LSN `g` may go once
    /// `durable_lsn() >= Some(g)`.
    pub fn durable_lsn(&self) -> Option<Lsn> {
        self.durable
    }

    /// Whether record `lsn` is durable.
    pub fn is_durable(&self, lsn: Lsn) -> bool {
        self.durable.is_some_and(|d| d >= lsn)
    }

    /// Live segments (oldest first) and their sizes, pending bytes included.
    pub fn segments(&self) -> &[(SegmentSeq, u64)] {
        &self.segments
    }

    /// Bytes of the log (live segments, pending included): the "disk used" figure.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|(_, b)| b).sum()
    }

    /// Whether a compaction pass should start: none runs, the log is at least
    /// `compact_min_bytes`, and at least `compact_ratio` times what the last one left.
    pub fn compaction_due(&self) -> bool {
        let disk = self.disk_bytes();
        self.pass.is_none()
            && disk >= self.config.compact_min_bytes
            && disk
                >= self
                    .config
                    .compact_ratio
                    .saturating_mul(self.live_bytes.max(1))
    }

    /// Starts a compaction pass: rolls to a new segment `K` (returned). The runtime then
    /// re-writes every live item it owns — a [`Record::SessionImage`] per stored session, a
    /// [`Record::RetainedSet`] per retained topic its log holds — a few per loop turn, putting
    /// again every message they reference whose put is older than `K` (the
    /// [`crate::MessageTable`] says which). Every record written meanwhile (changes keep
    /// flowing) also goes to segments `>= K`. Then [`LogWriter::end_compaction`].
    pub fn begin_compaction(&mut self) -> CompactionPass {
        assert!(self.pass.is_none(), "a compaction pass is already running");
        let from = self.roll();
        self.pass = Some(Pass {
            from,
            ended: false,
            end_lsn: None,
        });
        CompactionPass { from_segment: from }
    }

    /// Whether a pass is running or waiting to become durable.
    pub fn compaction_running(&self) -> Option<CompactionPass> {
        self.pass.map(|p| CompactionPass {
            from_segment: p.from,
        })
    }

    /// The pass has re-written every live item. Once everything appended so far is durable,
    /// [`LogWriter::take_obsolete`] hands out the segments before the pass.
    pub fn end_compaction(&mut self, pass: CompactionPass) {
        let p = self.pass.as_mut().expect("no compaction pass running");
        assert_eq!(p.from, pass.from_segment, "end_compaction of another pass");
        p.ended = true;
        p.end_lsn = self.next_lsn.checked_sub(1);
    }

    /// File names of segments that a finished, durable compaction pass made obsolete; the
    /// runtime deletes them (no fsync of the directory needed: a segment that comes back
    /// after a crash is replayed and superseded). Empty until then.
    pub fn take_obsolete(&mut self) -> Vec<String> {
        let Some(Pass {
            from,
            ended: true,
            end_lsn,
        }) = self.pass
        else {
            return Vec::new();
        };
        if end_lsn.is_some_and(|end| !self.is_durable(end)) {
            return Vec::new();
        }
        self.pass = None;
        let keep = self.segments.iter().position(|(s, _)| *s >= from);
        let keep = keep.unwrap_or(self.segments.len() - 1);
        let gone: Vec<String> = self
            .segments
            .drain(..keep)
            .map(|(s, _)| segment_file_name(s))
            .collect();
        self.live_bytes = self.disk_bytes();
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_codec::ByteStr;

    fn rec(i: u64) -> Record {
        Record::Detached {
            client_id: ByteStr::from_static("client"),
            at_unix_ms: i,
        }
    }

    fn writer(segment_bytes_max: u64) -> LogWriter {
        let mut cfg = LogConfig::new(3, 7);
        cfg.segment_bytes_max = segment_bytes_max;
        LogWriter::new(
            cfg,
            LogPosition {
                segments: vec![(1, 0)],
                next_lsn: 0,
            },
        )
    }

    #[test]
    fn first_batch_creates_the_segment_with_its_header() {
        let mut w = writer(1 << 20);
        assert_eq!(w.take_batch(), None);
        assert_eq!(w.append(&rec(1)), 0);
        assert_eq!(w.append(&rec(2)), 1);
        let b = w.take_batch().unwrap();
        assert_eq!((b.first_lsn, b.last_lsn, b.records()), (0, 1, 2));
        assert_eq!(b.writes.len(), 1);
        let sw = &b.writes[0];
        assert!(sw.create);
        assert_eq!(
            (sw.segment, sw.offset, sw.file_name.as_str()),
            (1, 0, "00000001.log")
        );
        let h = SegmentHeader::read(&sw.bytes).unwrap();
        assert_eq!((h.shard, h.generation, h.seq, h.base_lsn), (3, 7, 1, 0));
        assert_eq!(w.disk_bytes(), sw.bytes.len() as u64);
    }

    #[test]
    fn one_batch_in_flight_at_a_time() {
        let mut w = writer(1 << 20);
        w.append(&rec(1));
        let b = w.take_batch().unwrap();
        w.append(&rec(2));
        assert_eq!(w.take_batch(), None, "previous batch still in flight");
        assert!(!w.is_durable(0));
        w.batch_written(b.last_lsn);
        assert!(!w.is_durable(0), "written is not durable");
        w.batch_durable(b.last_lsn);
        assert!(w.is_durable(0));
        let b2 = w.take_batch().unwrap();
        assert_eq!(b2.first_lsn, 1);
        assert!(!b2.writes[0].create);
        assert_eq!(
            b2.writes[0].offset,
            b.len() as u64,
            "appends where the last batch ended"
        );
    }

    #[test]
    fn rolls_at_the_size_limit_within_a_batch() {
        let mut w = writer(SEGMENT_HEADER_LEN as u64 + 60);
        for i in 0..10 {
            w.append(&rec(i));
        }
        let b = w.take_batch().unwrap();
        assert!(b.writes.len() > 2);
        for (i, sw) in b.writes.iter().enumerate() {
            assert!(sw.create);
            assert_eq!(sw.segment, i as u64 + 1);
            assert!(sw.bytes.len() as u64 <= SEGMENT_HEADER_LEN as u64 + 60);
            let h = SegmentHeader::read(&sw.bytes).unwrap();
            assert_eq!(h.seq, sw.segment);
        }
        // LSNs chain from segment to segment.
        let bases: Vec<u64> = b
            .writes
            .iter()
            .map(|sw| SegmentHeader::read(&sw.bytes).unwrap().base_lsn)
            .collect();
        assert!(bases.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(w.segments().len(), b.writes.len());
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_one_of_its_own() {
        let mut w = writer(SEGMENT_HEADER_LEN as u64 + 10);
        w.append(&rec(1));
        w.append(&rec(2));
        let b = w.take_batch().unwrap();
        assert_eq!(b.writes.len(), 2);
    }

    #[test]
    fn compaction_hands_out_old_segments_only_once_durable() {
        let mut w = writer(1 << 20);
        w.append(&rec(1));
        let b = w.take_batch().unwrap();
        w.batch_written(b.last_lsn);
        w.batch_durable(b.last_lsn);
        let pass = w.begin_compaction();
        assert_eq!(pass.from_segment, 2);
        assert_eq!(w.current_segment(), 2);
        w.append(&rec(2)); // a re-image, in segment 2
        w.end_compaction(pass);
        assert!(w.take_obsolete().is_empty(), "pass not durable yet");
        let b = w.take_batch().unwrap();
        assert_eq!(b.writes[0].segment, 2);
        assert!(b.writes[0].create);
        w.batch_written(b.last_lsn);
        assert!(w.take_obsolete().is_empty(), "written is not durable");
        w.batch_durable(b.last_lsn);
        assert_eq!(w.take_obsolete(), vec!["00000001.log".to_string()]);
        assert_eq!(w.segments().len(), 1);
        assert!(w.take_obsolete().is_empty());
        assert!(w.compaction_running().is_none());
    }

    #[test]
    fn compaction_due_follows_size_and_ratio() {
        let mut cfg = LogConfig::new(0, 0);
        cfg.compact_min_bytes = 1000;
        cfg.compact_ratio = 2;
        let mut w = LogWriter::new(
            cfg,
            LogPosition {
                segments: vec![(1, 600)],
                next_lsn: 5,
            },
        );
        assert!(!w.compaction_due(), "below compact_min_bytes");
        while w.disk_bytes() < 1100 {
            w.append(&rec(1));
        }
        assert!(
            !w.compaction_due(),
            "below twice what the snapshot left (600)"
        );
        while w.disk_bytes() < 1200 {
            w.append(&rec(1));
        }
        assert!(w.compaction_due());
    }
}
