//! The spool against an in-memory model (vector `disk_v2/tests/model` style), plus
//! corruption cases.

use std::collections::HashMap;
use std::io::Write;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Read { sink: usize, max: usize },
    AckRead { sink: usize },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(1usize..300, 1..20).prop_map(Op::Append),
        3 => (0usize..2, 1usize..40).prop_map(|(sink, max)| Op::Read { sink, max }),
        2 => (0usize..2).prop_map(|sink| Op::AckRead { sink }),
        1 => Just(Op::Reopen),
    ]
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

struct Model {
    records: Vec<Record>,
    /// per sink: acked seq (persisted), handed seq (in memory)
    acked: [u64; 2],
    handed: [u64; 2],
}

fn options(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: Some(dir.to_path_buf()),
        max_size: 1 << 20,
        segment_size: 2048,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["a".to_owned(), "b".to_owned()];
        let mut rec = Spool::open(&options(dir.path()), &sinks).unwrap();
        let mut readers = vec![rec.spool.reader("a"), rec.spool.reader("b")];
        let mut model = Model { records: Vec::new(), acked: [0; 2], handed: [0; 2] };
        let mut next = 1u64;
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let first = next;
                    let mut buf = Vec::new();
                    for len in lens {
                        let p = payload(next, len);
                        encode_record(&mut buf, next, &p);
                        model.records.push(Record {
                            seq: next,
                            payload: p.into(),
                        });
                        next += 1;
                    }
                    rec.writer.append(first, next - 1, buf.clone()).unwrap();
                }
                Op::Read { sink, max } => {
                    let got = readers[sink].read(max, usize::MAX).unwrap();
                    let want: Vec<Record> = model.records.iter().filter(|r| r.seq > model.handed[sink]).take(max).cloned().collect();
                    prop_assert_eq!(&got, &want);
                    if let Some(last) = got.last() {
                        model.handed[sink] = last.seq;
                    }
                }
                Op::AckRead { sink } => {
                    let name = &sinks[sink];
                    rec.spool.ack(name, model.handed[sink]).unwrap();
                    model.acked[sink] = model.handed[sink];
                }
                Op::Reopen => {
                    drop(readers);
                    drop(rec);
                    rec = Spool::open(&options(dir.path()), &sinks).unwrap();
                    // The head survives: the newest segment is never deleted.
                    let head = rec.last.as_ref().map_or(0, |r| r.seq);
                    prop_assert_eq!(head, next - 1);
                    readers = vec![rec.spool.reader("a"), rec.spool.reader("b")];
                    model.handed = model.acked;
                }
            }
            // Nothing a sink has not acknowledged is ever gone.
            let min = model.acked.iter().copied().min().unwrap_or(0);
            let used: u64 = rec.spool.used();
            prop_assert!(used <= 1 << 20);
            let mut probe = rec.spool.reader("a");
            probe.rewind(min);
            let all = probe.read(usize::MAX, usize::MAX).unwrap();
            let want: Vec<u64> = model.records.iter().filter(|r| r.seq > min).map(|r| r.seq).collect();
            prop_assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
        }
    }
}

/// A disk spool in `dir` with these limits.
fn disk_options(dir: &Path, max_size: u64, segment_size: u64) -> SpoolOptions {
    SpoolOptions {
        dir: Some(dir.to_path_buf()),
        max_size,
        segment_size,
    }
}

/// Append one record with this payload.
fn append_record(writer: &mut SpoolWriter, seq: u64, payload: &[u8]) {
    let mut buf = Vec::new();
    encode_record(&mut buf, seq, payload);
    writer.append(seq, seq, buf.clone()).unwrap();
}

/// The first seq of every segment, oldest first.
fn segment_firsts(spool: &Spool) -> Vec<u64> {
    spool.lock().segments.keys().copied().collect()
}

/// The seqs of everything the reader hands out now.
fn read_seqs(reader: &mut SpoolReader) -> Vec<u64> {
    let records = reader.read(usize::MAX, usize::MAX).unwrap();
    records.iter().map(|r| r.seq).collect()
}

fn fill(dir: &Path, n: u64) -> Vec<u8> {
    let mut rec = Spool::open(&options(dir), &["s".to_owned()]).unwrap();
    let mut buf = Vec::new();
    for seq in 1..=n {
        encode_record(&mut buf, seq, &payload(seq, 50));
    }
    rec.writer.append(1, n, buf.clone()).unwrap();
    rec.writer.sync().unwrap();
    buf
}

/// One append per record (50-byte payloads), so segments rotate between records.
fn append_one_by_one(writer: &mut SpoolWriter, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let mut buf = Vec::new();
        encode_record(&mut buf, seq, &payload(seq, 50));
        writer.append(seq, seq, buf.clone()).unwrap();
    }
}

fn only_segment(dir: &Path) -> PathBuf {
    let segs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].clone()
}

#[test]
fn torn_tail_is_truncated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let seg = only_segment(dir.path());
    // A crash mid-append: half a record at the end.
    let mut half = Vec::new();
    encode_record(&mut half, 6, &payload(6, 50));
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&half[..30]).unwrap();
    drop(f);
    let rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    assert_eq!(rec.last.as_ref().unwrap().seq, 5);
    assert_eq!(fs::metadata(&seg).unwrap().len(), 5 * (HEADER as u64 + 50));
    let mut r = rec.spool.reader("s");
    r.rewind(0);
    assert_eq!(r.read(100, usize::MAX).unwrap().len(), 5);
}

/// A released segment an earlier build kept for reuse holds only delivered records: the open
/// removes it, and the spool recovers and continues from its real segments.
#[test]
fn a_spare_left_by_an_earlier_build_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let spare = dir.path().join(LEFTOVER_SPARE);
    let mut old = Vec::new();
    encode_record(&mut old, 1, &payload(1, 50));
    fs::write(&spare, &old).unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    assert!(!spare.exists(), "the leftover spare is removed");
    assert_eq!(rec.last.as_ref().unwrap().seq, 5);
    append_record(&mut rec.writer, 6, &payload(6, 50));
    let mut r = rec.spool.reader("s");
    r.rewind(0);
    assert_eq!(read_seqs(&mut r), (1..=6).collect::<Vec<_>>());
}

#[test]
fn bad_crc_in_the_tail_is_cut_and_the_writer_continues() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    let seg = only_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // flip a payload byte of record 3
    fs::write(&seg, &bytes).unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    assert_eq!(rec.last.as_ref().unwrap().seq, 2, "record 3 failed its CRC");
    let mut buf = Vec::new();
    encode_record(&mut buf, 3, b"again");
    rec.writer.append(3, 3, buf.clone()).unwrap();
    let mut r = rec.spool.reader("s");
    r.rewind(0);
    let seqs: Vec<u64> = r
        .read(100, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[test]
fn corrupt_record_in_an_older_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    // Two segments: 1..=30 (about 2 KiB) then 31..=40.
    append_one_by_one(&mut rec.writer, 1..=40);
    let firsts = segment_firsts(&rec.spool);
    assert!(firsts.len() >= 2, "{firsts:?}");
    let older = Spool::segment_path(dir.path(), firsts[0]);
    let mut bytes = fs::read(&older).unwrap();
    bytes[HEADER + 66 + 3] ^= 0x01; // inside record 2's payload
    fs::write(&older, &bytes).unwrap();
    // Reopened: this process's in-memory tail would hand out what was written.
    drop(rec);
    let rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    let mut r = rec.spool.reader("s");
    r.rewind(0);
    let seqs = read_seqs(&mut r);
    assert_eq!(seqs.first(), Some(&1));
    assert!(!seqs.contains(&2), "the corrupt record is not handed out");
    assert!(
        seqs.contains(&firsts[1]),
        "reading resumes at the next segment"
    );
    assert_eq!(rec.spool.corrupt_skipped(), 1);
}

/// A release shrinks a segment in steps before unlinking it; a crash midway leaves a shortened
/// segment behind every cursor. After a restart the readers start past it, and the next
/// acknowledgement removes it.
#[test]
fn a_release_cut_short_by_a_crash_is_finished_by_the_next_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    append_one_by_one(&mut rec.writer, 1..=100);
    let firsts = segment_firsts(&rec.spool);
    assert!(firsts.len() >= 3, "{firsts:?}");
    // The sink acknowledged everything before the second segment; the crash came while the
    // first one was being shrunk: it ends in the middle of a record.
    let cursor = firsts[1] - 1;
    drop(rec);
    fs::write(dir.path().join("cursors").join("s"), cursor.to_string()).unwrap();
    let older = Spool::segment_path(dir.path(), firsts[0]);
    let len = fs::metadata(&older).unwrap().len();
    File::options()
        .write(true)
        .open(&older)
        .unwrap()
        .set_len(len / 2 + 7)
        .unwrap();

    let rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    assert_eq!(rec.last.as_ref().map(|r| r.seq), Some(100));
    let mut r = rec.spool.reader("s");
    let seqs = read_seqs(&mut r);
    assert_eq!(seqs, (cursor + 1..=100).collect::<Vec<_>>());
    assert_eq!(rec.spool.corrupt_skipped(), 0);
    rec.spool.ack("s", firsts[1]).unwrap();
    assert!(!older.exists(), "the shortened segment is removed");
    assert_eq!(rec.spool.segment_count(), firsts.len() - 1);
}

/// A released segment shrinks one step at a time: the file is that much shorter at each pause
/// between steps, never cut to nothing at once.
#[test]
fn a_released_segment_shrinks_one_step_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment");
    let len = 3 * RELEASE_STEP + 5;
    File::create(&path).unwrap().set_len(len).unwrap();
    let mut seen = Vec::new();
    shrink_in_steps(&path, |left| {
        seen.push((left, fs::metadata(&path).unwrap().len()));
    })
    .unwrap();
    // Every cut on a step (page) boundary: the first drops only the 5 bytes past the last one.
    let want: Vec<(u64, u64)> = [3 * RELEASE_STEP, 2 * RELEASE_STEP, RELEASE_STEP, 0]
        .into_iter()
        .map(|left| (left, left))
        .collect();
    assert_eq!(seen, want);
}

/// Releasing a segment larger than one shrink step removes it all the same.
#[test]
fn a_segment_larger_than_a_release_step_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = disk_options(dir.path(), 16 * RELEASE_STEP, 2 * RELEASE_STEP);
    let mut rec = Spool::open(&opts, &["s".to_owned()]).unwrap();
    let big = vec![7u8; (RELEASE_STEP / 2) as usize];
    for seq in 1..=8u64 {
        append_record(&mut rec.writer, seq, &big);
    }
    let firsts = segment_firsts(&rec.spool);
    assert!(firsts.len() >= 2, "{firsts:?}");
    let oldest = Spool::segment_path(dir.path(), firsts[0]);
    assert!(fs::metadata(&oldest).unwrap().len() > RELEASE_STEP);
    rec.spool.ack("s", 8).unwrap();
    assert!(!oldest.exists());
    assert_eq!(rec.spool.segment_count(), 1);
    assert!(rec.spool.used() <= 2 * RELEASE_STEP + HEADER as u64);
}

/// A sink that keeps up reads the newest appends from memory, not back from the file: bytes
/// changed on disk after the write do not reach it.
#[test]
fn a_reader_that_keeps_up_reads_the_appends_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    let mut buf = Vec::new();
    for seq in 1..=3 {
        encode_record(&mut buf, seq, &payload(seq, 50));
    }
    rec.writer.append(1, 3, buf.clone()).unwrap();
    let seg = only_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    let mut r = rec.spool.reader("s");
    r.rewind(0);
    let payloads: Vec<Vec<u8>> = r
        .read(100, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.payload.to_vec())
        .collect();
    let want: Vec<Vec<u8>> = (1..=3).map(|seq| payload(seq, 50)).collect();
    assert_eq!(payloads, want);
    assert_eq!(rec.spool.corrupt_skipped(), 0);
}

/// A reader further behind than the tail keeps reads the file, CRCs checked, and every record
/// still comes in order, whole.
#[test]
fn a_reader_behind_the_tail_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        dir: Some(dir.path().to_path_buf()),
        max_size: 64 << 20,
        segment_size: 1 << 20,
    };
    let mut rec = Spool::open(&opts, &["s".to_owned()]).unwrap();
    let (batches, per_batch, len) = (60u64, 100u64, 1000usize);
    for b in 0..batches {
        let mut buf = Vec::new();
        let first = b * per_batch + 1;
        for seq in first..first + per_batch {
            encode_record(&mut buf, seq, &payload(seq, len));
        }
        rec.writer
            .append(first, first + per_batch - 1, buf.clone())
            .unwrap();
    }
    {
        let tail = rec.spool.tail();
        assert!(tail.bytes <= TAIL_BYTES, "{}", tail.bytes);
        assert_ne!(
            tail.chunks.front().map(|c| (c.0, c.1)),
            Some((1, 0)),
            "the oldest appends left the tail"
        );
    }
    // Corrupt record 2 in the first segment: only a file read can notice.
    let first_segment = Spool::segment_path(dir.path(), 1);
    let mut bytes = fs::read(&first_segment).unwrap();
    bytes[HEADER + len + HEADER + 3] ^= 0x01;
    fs::write(&first_segment, &bytes).unwrap();
    let mut r = rec.spool.reader("s");
    r.rewind(0);
    let mut got = Vec::new();
    loop {
        let batch = r.read(1000, usize::MAX).unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    assert_eq!(rec.spool.corrupt_skipped(), 1);
    assert_eq!(got.first().map(|r| r.seq), Some(1));
    assert!(got.iter().all(|r| r.payload == payload(r.seq, len)));
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    // The rest of the first segment is skipped with the corrupt record; everything after it,
    // from the file and then from the tail, arrives.
    let second_segment = *rec.spool.lock().segments.keys().nth(1).unwrap();
    let from_second: Vec<u64> = got
        .iter()
        .map(|r| r.seq)
        .filter(|&s| s >= second_segment)
        .collect();
    let want: Vec<u64> = (second_segment..=batches * per_batch).collect();
    assert_eq!(from_second, want);
}

/// The tail keeps the writer's buffers themselves: what bounds its memory is their capacity,
/// however few bytes they carry.
#[test]
fn the_tail_counts_the_memory_its_buffers_hold_not_their_lengths() {
    let mut tail = Tail::default();
    for offset in 0..3u64 {
        let mut buf = Vec::with_capacity(TAIL_BYTES / 2);
        buf.push(b'x');
        tail.push(1, offset, buf);
    }
    assert_eq!(tail.chunks.len(), 2, "the oldest third of the memory went");
    assert!(tail.bytes <= TAIL_BYTES, "{} held", tail.bytes);
    assert_eq!(tail.get(1, 0, 100), None);
    assert_eq!(tail.get(1, 2, 100).as_deref(), Some(&b"x"[..]));
}

#[test]
fn the_tail_finds_the_chunk_holding_an_offset_and_stops_at_its_end() {
    let mut tail = Tail::default();
    tail.push(1, 0, b"aaaa".to_vec());
    tail.push(1, 4, b"bbbbbb".to_vec());
    tail.push(11, 0, b"cc".to_vec());
    let get = |t: &Tail, s, o, to| t.get(s, o, to).map(|b| b.to_vec());
    assert_eq!(get(&tail, 1, 0, 100), Some(b"aaaa".to_vec()));
    assert_eq!(get(&tail, 1, 4, 100), Some(b"bbbbbb".to_vec()));
    assert_eq!(
        get(&tail, 1, 6, 8),
        Some(b"bb".to_vec()),
        "mid-chunk, up to `to`"
    );
    assert_eq!(get(&tail, 1, 10, 100), None, "past the segment's appends");
    assert_eq!(get(&tail, 11, 0, 100), Some(b"cc".to_vec()));
    assert_eq!(get(&tail, 5, 0, 100), None, "a segment it never held");
    tail.forget(1);
    assert_eq!(get(&tail, 1, 0, 100), None);
    assert_eq!(tail.bytes, 2);
}

/// A cursor file emptied or garbled by a crash resends what the spool holds; a sink without a
/// cursor file (new) starts at the head.
#[test]
fn an_unreadable_cursor_resends_the_spool_and_a_missing_one_starts_at_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    // 2 KiB segments, ~60-byte records: several segments.
    append_one_by_one(&mut rec.writer, 1..=200);
    rec.spool.ack("s", 120).unwrap();
    let oldest = {
        let index = rec.spool.lock();
        *index.segments.keys().next().unwrap()
    };
    assert!(
        oldest > 1 && oldest <= 121,
        "segments before the cursor released: {oldest}"
    );
    drop(rec);
    for garbage in ["", "12x\n", "\0\0\0"] {
        fs::write(dir.path().join("cursors").join("s"), garbage).unwrap();
        let rec = Spool::open(&options(dir.path()), &["s".to_owned(), "new".to_owned()]).unwrap();
        assert_eq!(rec.spool.cursor("s"), oldest - 1, "{garbage:?}");
        assert_eq!(rec.spool.cursor("new"), 200);
        let mut reader = rec.spool.reader("s");
        let resent = reader.read(1000, usize::MAX).unwrap();
        assert_eq!(resent.first().map(|r| r.seq), Some(oldest), "{garbage:?}");
        assert_eq!(resent.last().map(|r| r.seq), Some(200));
        fs::remove_file(dir.path().join("cursors").join("new")).unwrap();
    }
}

#[test]
fn full_spool_refuses_and_acks_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        dir: Some(dir.path().to_path_buf()),
        max_size: 1000,
        segment_size: 300,
    };
    let mut rec = Spool::open(&opts, &["s".to_owned()]).unwrap();
    let mut seq = 1;
    let err = loop {
        let mut buf = Vec::new();
        encode_record(&mut buf, seq, &payload(seq, 84));
        match rec.writer.append(seq, seq, buf.clone()) {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(rec.spool.used() <= 1000);
    let before = rec.spool.segment_count();
    rec.spool.ack("s", seq - 1).unwrap();
    assert_eq!(
        rec.spool.segment_count(),
        1,
        "all but the newest segment deleted (was {before})"
    );
    let mut buf = Vec::new();
    encode_record(&mut buf, seq, b"fits again");
    rec.writer.append(seq, seq, buf.clone()).unwrap();
}

#[test]
fn memory_spool_works_without_a_directory() {
    let opts = SpoolOptions {
        dir: None,
        max_size: 1 << 20,
        segment_size: 512,
    };
    let mut rec = Spool::open(&opts, &["s".to_owned()]).unwrap();
    let mut seqs = HashMap::new();
    for seq in 1..=50u64 {
        let mut buf = Vec::new();
        encode_record(&mut buf, seq, &payload(seq, 40));
        rec.writer.append(seq, seq, buf.clone()).unwrap();
        seqs.insert(seq, ());
    }
    let mut r = rec.spool.reader("s");
    let got = r.read(1000, usize::MAX).unwrap();
    assert_eq!(got.len(), 50);
    rec.spool.ack("s", 50).unwrap();
    assert_eq!(rec.spool.segment_count(), 1);
}

#[test]
fn without_sinks_the_spool_keeps_only_its_head_segment() {
    let opts = SpoolOptions {
        dir: None,
        max_size: 4096,
        segment_size: 512,
    };
    let mut rec = Spool::open(&opts, &[]).unwrap();
    for seq in 1..=500u64 {
        let mut buf = Vec::new();
        encode_record(&mut buf, seq, &payload(seq, 40));
        rec.writer.append(seq, seq, buf.clone()).unwrap();
        rec.spool.release().unwrap();
    }
    assert_eq!(rec.spool.segment_count(), 1);
    assert!(rec.spool.used() <= 512 + 56);
}

/// `fsync = "interval"` on its own thread: it follows the active segment across rotations and
/// syncs what was written (its dirty flag clears without the writer syncing); a memory spool
/// has nothing to sync and does not start it.
#[test]
fn background_sync_follows_the_active_segment_and_syncs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Spool::open(&options(dir.path()), &["s".to_owned()]).unwrap();
    assert!(rec.writer.sync_in_background(Duration::from_millis(5)));
    for seq in 1..=100u64 {
        let mut buf = Vec::new();
        encode_record(&mut buf, seq, &payload(seq, 50));
        rec.writer.append(seq, seq, buf.clone()).unwrap();
        let active = rec.writer.active.map(|s| s.first);
        let synced = rec.writer.background.as_ref().and_then(|bg| {
            let file = bg.shared.file.lock().unwrap();
            file.as_ref().map(|(_, path)| path.clone())
        });
        assert_eq!(
            synced,
            active.map(|first| Spool::segment_path(dir.path(), first))
        );
    }
    assert!(rec.spool.segment_count() > 2, "the test needs rotations");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rec
        .writer
        .background
        .as_ref()
        .is_some_and(|bg| bg.shared.dirty.load(Ordering::Acquire))
    {
        assert!(std::time::Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(2));
    }

    let memory = SpoolOptions {
        dir: None,
        max_size: 1 << 20,
        segment_size: 512,
    };
    let mut rec = Spool::open(&memory, &["s".to_owned()]).unwrap();
    assert!(!rec.writer.sync_in_background(Duration::from_millis(5)));
}

/// With an interval far away, appending `SYNC_EARLY_BYTES` makes the background sync run
/// anyway; less than that waits for the interval.
#[test]
fn the_background_sync_runs_early_after_enough_appended_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = disk_options(dir.path(), 64 * SYNC_EARLY_BYTES, 16 * SYNC_EARLY_BYTES);
    let mut rec = Spool::open(&opts, &["s".to_owned()]).unwrap();
    assert!(rec.writer.sync_in_background(Duration::from_secs(3600)));
    let dirty = |w: &SpoolWriter| {
        w.background
            .as_ref()
            .is_some_and(|bg| bg.shared.dirty.load(Ordering::Acquire))
    };
    let chunk = vec![1u8; (SYNC_EARLY_BYTES / 4) as usize];
    append_record(&mut rec.writer, 1, &chunk);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        dirty(&rec.writer),
        "a quarter of the threshold does not sync"
    );
    for seq in 2..=4 {
        append_record(&mut rec.writer, seq, &chunk);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dirty(&rec.writer) {
        assert!(std::time::Instant::now() < deadline, "no early sync");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A record sealed in place (one CRC pass over seq and payload) is byte for byte the record
/// `encode_record` writes (seq, then payload, appended to the CRC), and reads back.
#[test]
fn a_record_finished_in_place_equals_an_encoded_one() {
    for len in [0usize, 1, 7, 8, 9, 63, 600, 4097] {
        let body = payload(len as u64, len);
        let mut encoded = vec![0xAA];
        encode_record(&mut encoded, 42, &body);
        let mut in_place = vec![0xAA];
        let at = begin_record(&mut in_place);
        in_place.extend_from_slice(&body);
        finish_record(&mut in_place, at, 42);
        assert_eq!(in_place, encoded, "payload of {len} bytes");
        assert_eq!(
            decode_at(&in_place, 1, true),
            Decoded::Record {
                seq: 42,
                payload_at: 1 + HEADER,
                len
            }
        );
    }
}
