//! The write-ahead spool: every sealed event is appended here before a sink sees it, and
//! each sink reads it at its own pace through its own cursor.
//!
//! Layout on disk (`[audit.spool] dir`):
//! - `<first seq, 20 digits>.seg`: segment files of records
//!   `[u32 len LE][u32 crc32c LE][u64 seq LE][len bytes payload]`; the CRC covers seq + payload.
//! - `cursors/<sink>`: the last seq the sink's receiver acknowledged, as decimal text.
//! - `reserved`: the crash-loss ticket counters (`loss.rs`), not part of the spool proper.
//!
//! Acknowledged segments are removed (shrunk in steps, then unlinked), never reused: see
//! `LEFTOVER_SPARE`.
//!
//! Without a directory the same structure lives in memory (nothing survives a restart).
//!
// INVARIANT: one writer (the audit writer thread) appends; readers never write segments.
// INVARIANT: seq is strictly increasing across records and segments (the writer assigns it
//            under the same thread that appends), so a cursor is just a seq.
// INVARIANT: a segment is never larger than `segment_size`, except one holding a single batch
//            that alone exceeds it (a batch is never split: one write per group commit).
// INVARIANT: readers only read below the published head (segment, end offset), which the
//            writer advances after a batch is fully written; they never see a torn record.
// INVARIANT: a torn or corrupt tail of the newest segment is truncated at open (a crash
//            mid-write); a corrupt record elsewhere is skipped to the next segment and counted.
// INVARIANT: a cursor file is replaced atomically (write tmp, rename) and only after the
//            receiver acknowledged every record up to it; so restart resumes without loss.
// INVARIANT: a segment is deleted only when every sink's cursor is past its last record,
//            and the newest segment is never deleted, so the chain head survives restarts.
// INVARIANT: total live bytes never exceed `max_size`: the writer checks before appending.
// INVARIANT: the in-memory tail of a disk spool holds only bytes the file holds at the same
//            (segment, offset), pushed after their write succeeded; a reader that misses it
//            reads the file, so the tail is a cache, never the only copy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::SYNC_EARLY_BYTES;

/// Record header: len, crc, seq.
pub const HEADER: usize = 16;
/// Largest payload accepted (a corrupt length must not make a reader allocate gigabytes).
pub const MAX_RECORD: usize = 1 << 20;

/// A record read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// A slice of the chunk it was read with (`SpoolReader::read`): not copied per record.
    pub payload: bytes::Bytes,
}

/// Append `payload` as one record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let seq_bytes = seq.to_le_bytes();
    let mut crc = crc32c::crc32c(&seq_bytes);
    crc = crc32c::crc32c_append(crc, payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq_bytes);
    buf.extend_from_slice(payload);
}

/// Start a record in `buf` whose payload the caller appends next (no intermediate buffer);
/// returns where it starts, for `finish_record`.
pub fn begin_record(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    at
}

/// Fill in the header of the record started at `at` (`begin_record`): the payload is
/// everything after the header.
pub fn finish_record(buf: &mut [u8], at: usize, seq: u64) {
    let Some(record) = buf.get_mut(at..).filter(|r| r.len() >= HEADER) else {
        return;
    };
    let len = u32::try_from(record.len() - HEADER).unwrap_or(u32::MAX);
    record[0..4].copy_from_slice(&len.to_le_bytes());
    record[8..16].copy_from_slice(&seq.to_le_bytes());
    // Seq and payload are contiguous: one CRC pass over both.
    let crc = crc32c::crc32c(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// What decoding found at one offset.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Record {
        seq: u64,
        payload_at: usize,
        len: usize,
    },
    /// Not enough bytes for the header or the payload.
    Short,
    Corrupt,
}

/// `verify`: check the CRC (bytes read from a file); the in-memory tail's bytes never left
/// the process.
fn decode_at(buf: &[u8], at: usize, verify: bool) -> Decoded {
    let Some(head) = buf.get(at..at + HEADER) else {
        return Decoded::Short;
    };
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let len = word(0) as usize;
    let crc = word(4);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&head[8..16]);
    if len > MAX_RECORD {
        return Decoded::Corrupt;
    }
    // Seq and payload, contiguous: what the CRC covers.
    let Some(covered) = buf.get(at + 8..at + HEADER + len) else {
        return Decoded::Short;
    };
    if verify && crc32c::crc32c(covered) != crc {
        return Decoded::Corrupt;
    }
    Decoded::Record {
        seq: u64::from_le_bytes(seq_bytes),
        payload_at: at + HEADER,
        len,
    }
}

/// Spool errors the writer and readers report.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where segments live.
enum Storage {
    Disk(PathBuf),
    Memory(Mutex<HashMap<u64, Vec<u8>>>),
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Seq of the first record (also the file name).
    first: u64,
    /// Bytes written and published.
    len: u64,
}

/// State shared by the writer and the readers.
struct Index {
    /// Keyed by first seq.
    segments: BTreeMap<u64, Segment>,
    /// Last published seq (0 = none yet).
    head: u64,
    cursors: HashMap<String, u64>,
    total: u64,
}

/// The newest appends of a disk spool, as written: a sink that keeps up reads them from here,
/// not back from the file (an open, a read and a CRC check per batch on the sink thread).
#[derive(Default)]
struct Tail {
    /// (segment, offset in it, the bytes written there, the memory they hold), in append order.
    chunks: VecDeque<(u64, u64, bytes::Bytes, usize)>,
    /// Memory the chunks hold: their buffers' capacities, not only their lengths.
    bytes: usize,
}

/// Bytes the tail keeps at most (about 0.2 s of events at 30,000 a second; a sink reads
/// every `FILL_POLL` while events flow).
const TAIL_BYTES: usize = 4 << 20;

impl Tail {
    /// Keep the writer's batch buffer itself (no copy of the records).
    fn push(&mut self, segment: u64, offset: u64, records: Vec<u8>) {
        let held = records.capacity();
        if held > TAIL_BYTES {
            return;
        }
        self.bytes += held;
        self.chunks
            .push_back((segment, offset, bytes::Bytes::from(records), held));
        while self.bytes > TAIL_BYTES {
            match self.chunks.pop_front() {
                Some((_, _, _, held)) => self.bytes -= held,
                None => break,
            }
        }
    }

    /// The bytes of `segment` from `offset` (a record boundary) to the end of the one chunk
    /// holding it, at most up to `to`.
    fn get(&self, segment: u64, offset: u64, to: u64) -> Option<bytes::Bytes> {
        let i = self
            .chunks
            .partition_point(|&(s, o, _, _)| (s, o) <= (segment, offset))
            .checked_sub(1)?;
        let (_, start, data, _) = self.chunks.get(i).filter(|c| c.0 == segment)?;
        let from = usize::try_from(offset.checked_sub(*start)?).ok()?;
        let end = usize::try_from(to.saturating_sub(*start))
            .ok()?
            .min(data.len());
        (from < end).then(|| data.slice(from..end))
    }

    fn forget(&mut self, segment: u64) {
        self.chunks.retain(|(s, _, _, _)| *s != segment);
        self.bytes = self.chunks.iter().map(|(_, _, _, held)| held).sum();
    }
}

/// The spool; cheap to share (`Arc`).
pub struct Spool {
    storage: Storage,
    index: Mutex<Index>,
    /// Disk spools only (a memory spool is all tail).
    tail: Mutex<Tail>,
    max_size: u64,
    segment_size: u64,
    /// Records skipped because their CRC or length was wrong.
    corrupt_skipped: AtomicU64,
}

/// What `open` recovered.
pub struct Recovered {
    pub spool: Arc<Spool>,
    /// The writer's handle on the newest segment.
    pub writer: SpoolWriter,
    /// Last seq and the payload of the last record (its hash ends the chain), if any.
    pub last: Option<Record>,
}

/// Options for `Spool::open`.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// `None`: keep segments in memory.
    pub dir: Option<PathBuf>,
    pub max_size: u64,
    pub segment_size: u64,
}

impl Spool {
    /// Open (or create) the spool, truncate a torn tail, recover the head and load the cursors
    /// of `sinks`. A sink without a cursor starts at the head (it gets new events only).
    pub fn open(options: &SpoolOptions, sinks: &[String]) -> Result<Recovered, SpoolError> {
        let storage = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir.join("cursors")).map_err(io_err(dir))?;
                Storage::Disk(dir.clone())
            }
            None => Storage::Memory(Mutex::new(HashMap::new())),
        };
        let mut segments = BTreeMap::new();
        if let Storage::Disk(dir) = &storage {
            for entry in fs::read_dir(dir).map_err(io_err(dir))? {
                let entry = entry.map_err(io_err(dir))?;
                let name = entry.file_name();
                if name == LEFTOVER_SPARE {
                    // Builds of 2026-12-07 kept an acknowledged segment here for reuse: its
                    // records are all delivered, and overwriting it read dropped pages back
                    // from disk on the request thread. Remove it.
                    let path = entry.path();
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    continue;
                }
                let Some(first) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let len = entry.metadata().map_err(io_err(dir))?.len();
                segments.insert(first, Segment { first, len });
            }
        }
        let spool = Spool {
            storage,
            index: Mutex::new(Index {
                segments,
                head: 0,
                cursors: HashMap::new(),
                total: 0,
            }),
            tail: Mutex::new(Tail::default()),
            max_size: options.max_size,
            segment_size: options.segment_size.max(HEADER as u64 + 1),
            corrupt_skipped: AtomicU64::new(0),
        };
        let last = spool.recover_tail()?;
        let head = last.as_ref().map_or(0, |r| r.seq);
        {
            let mut index = spool.lock();
            index.head = head;
            index.total = index.segments.values().map(|s| s.len).sum();
        }
        for sink in sinks {
            let cursor = spool.read_cursor(sink)?.unwrap_or(head);
            spool.lock().cursors.insert(sink.clone(), cursor);
            spool.write_cursor(sink, cursor)?;
        }
        let spool = Arc::new(spool);
        let active = spool.lock().segments.values().next_back().copied();
        let writer = SpoolWriter {
            spool: spool.clone(),
            active,
            file: None,
            dirty: false,
            background: None,
        };
        Ok(Recovered {
            spool,
            writer,
            last,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panicking holder cannot leave the index half-updated in a way that matters more
        // than losing audit entirely; keep going with its data.
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn segment_path(dir: &Path, first: u64) -> PathBuf {
        dir.join(format!("{first:020}.seg"))
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read a whole segment.
    fn read_segment(&self, first: u64, from: u64, to: u64) -> Result<Vec<u8>, SpoolError> {
        match &self.storage {
            Storage::Disk(dir) => {
                let path = Self::segment_path(dir, first);
                let mut file = File::open(&path).map_err(io_err(&path))?;
                file.seek(SeekFrom::Start(from)).map_err(io_err(&path))?;
                let mut buf = Vec::with_capacity(usize::try_from(to - from).unwrap_or(0));
                file.take(to - from)
                    .read_to_end(&mut buf)
                    .map_err(io_err(&path))?;
                Ok(buf)
            }
            Storage::Memory(map) => {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                let data = map.get(&first).map(Vec::as_slice).unwrap_or_default();
                let from = usize::try_from(from).unwrap_or(usize::MAX).min(data.len());
                let to = usize::try_from(to).unwrap_or(usize::MAX).min(data.len());
                Ok(data.get(from..to).unwrap_or_default().to_vec())
            }
        }
    }

    /// Newest segments first: truncate a torn tail, return the last good record.
    fn recover_tail(&self) -> Result<Option<Record>, SpoolError> {
        let Storage::Disk(dir) = &self.storage else {
            return Ok(None);
        };
        let firsts: Vec<u64> = self.lock().segments.keys().rev().copied().collect();
        for (n, first) in firsts.iter().enumerate() {
            let len = self.lock().segments.get(first).map_or(0, |s| s.len);
            let buf = self.read_segment(*first, 0, len)?;
            let mut at = 0;
            let mut last = None;
            while let Decoded::Record {
                seq,
                payload_at,
                len,
            } = decode_at(&buf, at, true)
            {
                last = Some((seq, payload_at, len));
                at = payload_at + len;
            }
            if n == 0 && at < buf.len() {
                // The newest segment ends in a torn or corrupt record: a crash mid-append.
                let path = Self::segment_path(dir, *first);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.set_len(at as u64).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                tracing::warn!(segment = %path.display(), kept = at, dropped = buf.len() - at, "Truncated a torn spool tail.");
                if let Some(s) = self.lock().segments.get_mut(first) {
                    s.len = at as u64;
                }
            }
            if let Some((seq, payload_at, len)) = last {
                let payload = bytes::Bytes::copy_from_slice(
                    buf.get(payload_at..payload_at + len).unwrap_or_default(),
                );
                return Ok(Some(Record { seq, payload }));
            }
        }
        Ok(None)
    }

    fn read_cursor(&self, sink: &str) -> Result<Option<u64>, SpoolError> {
        let Storage::Disk(dir) = &self.storage else {
            return Ok(None);
        };
        let path = dir.join("cursors").join(sink);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().parse().unwrap_or_else(|_| {
                // The cursor is renamed into place without an fsync: after a crash the file
                // can be empty. Starting at the head would skip what the sink never got, so
                // resend everything the spool still holds (duplicates, never a loss).
                let index = self.lock();
                let resend_after = index
                    .segments
                    .keys()
                    .next()
                    .map_or(index.head, |first| first.saturating_sub(1));
                tracing::warn!(
                    sink,
                    path = %path.display(),
                    resend_after,
                    "Audit sink cursor unreadable; resending every spooled event after it."
                );
                resend_after
            }))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    fn write_cursor(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        let Storage::Disk(dir) = &self.storage else {
            return Ok(());
        };
        let path = dir.join("cursors").join(sink);
        let tmp = dir.join("cursors").join(format!(".{sink}.tmp"));
        fs::write(&tmp, format!("{seq}\n")).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(())
    }

    /// The last published seq.
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// Bytes held by live segments.
    pub fn used(&self) -> u64 {
        self.lock().total
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// The acknowledged seq of `sink`.
    pub fn cursor(&self, sink: &str) -> u64 {
        self.lock().cursors.get(sink).copied().unwrap_or(0)
    }

    pub fn corrupt_skipped(&self) -> u64 {
        self.corrupt_skipped.load(Ordering::Relaxed)
    }

    /// Number of segments (tests, metrics).
    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }

    /// Record that `sink`'s receiver acknowledged everything up to `seq`; persist the cursor
    /// and delete segments no sink needs any more.
    pub fn ack(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        self.write_cursor(sink, seq)?;
        self.lock().cursors.insert(sink.to_owned(), seq);
        self.release()
    }

    /// Delete segments every cursor is past. With no sinks at all nothing will ever read the
    /// spool, so everything but the newest segment (the chain head) goes.
    pub fn release(&self) -> Result<(), SpoolError> {
        let removable: Vec<u64> = {
            let index = self.lock();
            let min = index.cursors.values().copied().min().unwrap_or(index.head);
            let firsts: Vec<u64> = index.segments.keys().copied().collect();
            // A segment is done when the next one starts at or below min + 1.
            firsts
                .windows(2)
                .filter(|w| w[1] <= min.saturating_add(1))
                .map(|w| w[0])
                .collect()
        };
        for first in removable {
            match &self.storage {
                Storage::Disk(dir) => {
                    let path = Self::segment_path(dir, first);
                    if let Err(err) = shrink_in_steps(&path, |_| super::give_way())
                        && err.kind() != io::ErrorKind::NotFound
                    {
                        return Err(io_err(&path)(err));
                    }
                    if let Err(err) = fs::remove_file(&path)
                        && err.kind() != io::ErrorKind::NotFound
                    {
                        return Err(io_err(&path)(err));
                    }
                }
                Storage::Memory(map) => {
                    map.lock().unwrap_or_else(|p| p.into_inner()).remove(&first);
                }
            }
            self.tail().forget(first);
            let mut index = self.lock();
            if let Some(seg) = index.segments.remove(&first) {
                index.total = index.total.saturating_sub(seg.len);
            }
        }
        Ok(())
    }

    /// Whether any sink reads this spool.
    pub fn has_readers(&self) -> bool {
        !self.lock().cursors.is_empty()
    }

    /// A reader for `sink`, starting after its cursor.
    pub fn reader(self: &Arc<Self>, sink: &str) -> SpoolReader {
        SpoolReader {
            spool: self.clone(),
            after: self.cursor(sink),
            pos: None,
        }
    }
}

/// Bytes a released segment shrinks by per step (`shrink_in_steps`).
const RELEASE_STEP: u64 = 1 << 20;

/// Truncate a released segment to nothing a step at a time, calling `between` with the length
/// left after each step (the release gives way there: `super::give_way`): an unlink of a whole 64 MiB segment dropped its page cache and freed
/// its blocks in one system call, about 20 ms of kernel time on the core a request thread
/// waited for. The unlink that follows has nothing left to free. A crash midway leaves a
/// shortened segment every cursor is already past: the next release removes it.
///
/// Each cut lands on a multiple of `RELEASE_STEP` (so on a page boundary): a cut inside a page
/// zeroes that page's tail, and if the kernel had dropped the page it is read from disk first.
fn shrink_in_steps(path: &Path, mut between: impl FnMut(u64)) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > 0 {
        len = (len - 1) / RELEASE_STEP * RELEASE_STEP;
        file.set_len(len)?;
        between(len);
    }
    Ok(())
}

/// The writer's side: appends whole batches.
pub struct SpoolWriter {
    spool: Arc<Spool>,
    active: Option<Segment>,
    file: Option<File>,
    dirty: bool,
    /// `fsync = "interval"` on its own thread (`sync_in_background`).
    background: Option<BackgroundSync>,
}

/// An fsync of the active segment every interval, from its own thread: an fsync takes several
/// milliseconds (7–16 ms measured on the benchmark VM), and on the writer thread every request
/// waiting for a group commit meanwhile would wait for the disk too.
///
/// It also syncs early, each time `SYNC_EARLY_BYTES` were appended since the last sync: the
/// kernel queues a sync's writeback in one system call on the syncing thread, and a whole
/// interval's worth (13 MB at 21,000 events/s) held the core a request thread shared for over
/// a millisecond (`super::give_way`). More, smaller syncs only make the spool more durable.
struct BackgroundSync {
    shared: Arc<SyncTarget>,
    /// `()` asks for a sync now. Dropped with the `SpoolWriter`: the thread sees the channel
    /// closed and ends.
    nudge: mpsc::Sender<()>,
}

/// The released segment earlier builds kept for reuse (`Spool::open` removes it).
const LEFTOVER_SPARE: &str = "spare";

/// What the sync thread syncs: a handle on the active segment, and whether it was written to
/// since the last sync.
struct SyncTarget {
    file: Mutex<Option<(File, PathBuf)>>,
    dirty: AtomicBool,
    /// Bytes appended since the sync thread last took the dirty flag.
    unsynced: AtomicU64,
}

impl SyncTarget {
    fn sync_if_dirty(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        self.unsynced.store(0, Ordering::Relaxed);
        // A handle of its own, so that the writer never waits for this fsync on the lock.
        let target = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(file, path)| (file.try_clone(), path.clone()));
        let result = match target {
            Some((Ok(file), path)) => file.sync_data().map_err(|err| (path, err)),
            Some((Err(err), path)) => Err((path, err)),
            None => Ok(()),
        };
        if let Err((path, err)) = result {
            self.dirty.store(true, Ordering::Release);
            tracing::error!(path = %path.display(), error = %err, "Audit spool fsync failed.");
        }
    }
}

impl SpoolWriter {
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Whether `bytes` more would exceed `max_size`.
    pub fn would_overflow(&self, bytes: u64) -> bool {
        self.spool.used().saturating_add(bytes) > self.spool.max_size
    }

    /// Whether appending `bytes` opens a new segment (an fsync of the old one, a directory
    /// sync): disk waits that an inline commit (`writer::Queue::commit_inline`) leaves to the
    /// writer thread.
    pub fn needs_rotation(&self, bytes: u64) -> bool {
        match self.active {
            None => true,
            Some(seg) => seg.len > 0 && seg.len + bytes > self.spool.segment_size,
        }
    }

    /// Append encoded records (`encode_record`) whose seqs are `first..=last`, with one write,
    /// then publish them to readers: a disk spool's tail keeps `records` as they are.
    pub fn append(&mut self, first: u64, last: u64, records: Vec<u8>) -> Result<(), SpoolError> {
        let len = records.len() as u64;
        let used = self.spool.used();
        if used.saturating_add(len) > self.spool.max_size {
            return Err(SpoolError::Full {
                used,
                max: self.spool.max_size,
            });
        }
        if self.needs_rotation(len) {
            self.sync()?;
            self.file = None;
            let seg = Segment { first, len: 0 };
            if let Storage::Disk(dir) = &self.spool.storage {
                let path = Spool::segment_path(dir, first);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                // Make the new file's directory entry durable with the next fsync of the dir.
                self.file = Some(file);
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            self.spool.lock().segments.insert(first, seg);
            self.active = Some(seg);
            self.publish_file();
        }
        let Some(mut seg) = self.active else {
            return Ok(());
        };
        match &self.spool.storage {
            Storage::Disk(dir) => {
                if self.file.is_none() {
                    let path = Spool::segment_path(dir, seg.first);
                    self.file = Some(
                        OpenOptions::new()
                            .append(true)
                            .open(&path)
                            .map_err(io_err(&path))?,
                    );
                    self.publish_file();
                }
                if let Some(file) = &mut self.file
                    && let Err(err) = file.write_all(&records)
                {
                    // Cut a partial write back so readers and the next open see whole records.
                    let path = Spool::segment_path(dir, seg.first);
                    let _ = file.set_len(seg.len);
                    return Err(io_err(&path)(err));
                }
                self.spool.tail().push(seg.first, seg.len, records);
            }
            Storage::Memory(map) => {
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(seg.first)
                    .or_default()
                    .extend_from_slice(&records);
            }
        }
        seg.len += len;
        self.active = Some(seg);
        self.dirty = true;
        if let Some(bg) = &self.background {
            bg.shared.dirty.store(true, Ordering::Release);
            let before = bg.shared.unsynced.fetch_add(len, Ordering::Relaxed);
            if before < SYNC_EARLY_BYTES && before + len >= SYNC_EARLY_BYTES {
                let _ = bg.nudge.send(());
            }
        }
        let mut index = self.spool.lock();
        if let Some(s) = index.segments.get_mut(&seg.first) {
            s.len = seg.len;
        }
        index.total += len;
        index.head = last;
        Ok(())
    }

    /// Sync the active segment every `interval` on a thread of its own from now on (disk
    /// spools only). `false`: not started, the caller syncs inline.
    pub fn sync_in_background(&mut self, interval: Duration) -> bool {
        let Storage::Disk(dir) = &self.spool.storage else {
            return false;
        };
        let shared = Arc::new(SyncTarget {
            file: Mutex::new(None),
            dirty: AtomicBool::new(self.dirty),
            unsynced: AtomicU64::new(0),
        });
        let (nudge, nudged) = mpsc::channel::<()>();
        let target = shared.clone();
        let started = std::thread::Builder::new()
            .name("portcullis-audit-fsync".into())
            .spawn(move || {
                while !matches!(
                    nudged.recv_timeout(interval),
                    Err(RecvTimeoutError::Disconnected)
                ) {
                    target.sync_if_dirty();
                }
            });
        if started.is_err() {
            return false;
        }
        if let (Some(file), Some(seg)) = (&self.file, self.active)
            && let Ok(file) = file.try_clone()
        {
            *shared.file.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((file, Spool::segment_path(dir, seg.first)));
        }
        self.background = Some(BackgroundSync { shared, nudge });
        true
    }

    /// Point the background sync at the file just opened for the active segment.
    fn publish_file(&self) {
        let (Some(bg), Some(file), Some(seg), Storage::Disk(dir)) = (
            &self.background,
            &self.file,
            self.active,
            &self.spool.storage,
        ) else {
            return;
        };
        let entry = file
            .try_clone()
            .ok()
            .map(|file| (file, Spool::segment_path(dir, seg.first)));
        *bg.shared.file.lock().unwrap_or_else(|p| p.into_inner()) = entry;
    }

    /// fsync the active segment if anything was written since the last sync.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        if let (Some(file), Storage::Disk(dir), Some(seg)) =
            (&self.file, &self.spool.storage, self.active)
        {
            file.sync_data()
                .map_err(io_err(&Spool::segment_path(dir, seg.first)))?;
        }
        self.dirty = false;
        Ok(())
    }
}

/// A sink's reading position.
pub struct SpoolReader {
    spool: Arc<Spool>,
    /// Everything up to this seq has been handed out (read, not necessarily acknowledged).
    after: u64,
    /// (segment first seq, byte offset) of the next record to read.
    pos: Option<(u64, u64)>,
}

impl SpoolReader {
    /// The last seq handed out.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Start over after `seq` (a sink that must resend what it was handed).
    pub fn rewind(&mut self, seq: u64) {
        self.after = seq;
        self.pos = None;
    }

    /// Up to `max_events` records after the current position, at most about `max_bytes`.
    pub fn read(&mut self, max_events: usize, max_bytes: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_events && bytes < max_bytes {
            let (segments, head) = {
                let index = self.spool.lock();
                if index.head <= self.after {
                    break;
                }
                let segs: Vec<Segment> = index.segments.values().copied().collect();
                (segs, index.head)
            };
            let (first, offset) = match self.pos {
                Some(pos) if segments.iter().any(|s| s.first == pos.0) => pos,
                _ => {
                    // Locate: the newest segment starting at or before after + 1.
                    let target = self.after.saturating_add(1);
                    let seg = segments
                        .iter()
                        .rev()
                        .find(|s| s.first <= target)
                        .or(segments.first());
                    match seg {
                        Some(s) => (s.first, 0),
                        None => break,
                    }
                }
            };
            let Some(seg) = segments.iter().find(|s| s.first == first).copied() else {
                break;
            };
            let next_seg = segments.iter().find(|s| s.first > first).map(|s| s.first);
            if offset >= seg.len {
                match next_seg {
                    Some(n) => {
                        self.pos = Some((n, 0));
                        continue;
                    }
                    None => break,
                }
            }
            let want = (max_bytes - bytes).clamp(64 * 1024, 4 << 20) as u64;
            let to = seg.len.min(offset.saturating_add(want));
            let cached = self.spool.tail().get(first, offset, to);
            let mut verify = cached.is_none();
            let mut buf = match cached {
                Some(bytes) => bytes,
                None => bytes::Bytes::from(self.spool.read_segment(first, offset, to)?),
            };
            let mut at = 0usize;
            let mut progressed = false;
            loop {
                match decode_at(&buf, at, verify) {
                    Decoded::Record {
                        seq,
                        payload_at,
                        len,
                    } => {
                        let end = payload_at + len;
                        if seq > self.after && seq <= head {
                            let payload = if end <= buf.len() {
                                buf.slice(payload_at..end)
                            } else {
                                bytes::Bytes::new()
                            };
                            bytes += payload.len();
                            out.push(Record { seq, payload });
                            self.after = seq;
                        }
                        at = end;
                        progressed = true;
                        if out.len() >= max_events || bytes >= max_bytes {
                            break;
                        }
                    }
                    Decoded::Short if (offset + at as u64) < seg.len && !progressed => {
                        // One record larger than the chunk: read exactly what it needs.
                        let need = buf
                            .get(at..at + 4)
                            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                        let end = (offset + (at + HEADER + need) as u64).min(seg.len);
                        buf = self.spool.read_segment(first, offset, end)?.into();
                        verify = true;
                        if buf.len() < at + HEADER + need {
                            break;
                        }
                    }
                    Decoded::Short => break,
                    Decoded::Corrupt => {
                        self.spool.corrupt_skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            segment = first,
                            offset = offset + at as u64,
                            "Skipped a corrupt spool record; the rest of the segment is unreadable."
                        );
                        at = usize::try_from(seg.len - offset).unwrap_or(usize::MAX);
                        progressed = true;
                        break;
                    }
                }
            }
            self.pos = Some((first, offset + at as u64));
            if !progressed {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
