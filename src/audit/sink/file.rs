//! `file` (JSON lines or any format, size-based rotation) and `stdout`.
//!
//! Acknowledged means written and `fdatasync`ed: the cursor never runs ahead of what a
//! machine crash would keep. `send` only writes (one `write` per `SLICE_EVENTS` events at most,
//! giving way to waiting request threads between writes; with a backlog the worker hands over
//! up to `FILE_GROUP` batches at once); the worker calls `sync` and only then acknowledges, at
//! most once per `sync_interval` while events flow, or sooner once `SYNC_EARLY_BYTES` are
//! written. An `fdatasync` takes several milliseconds, and one per batch (plus a cursor file
//! per batch) was most of the sink's time. What is written but not yet synced is acknowledged
//! by the next sync: after the interval or the early-sync threshold, when the worker goes idle,
//! or when it drains or stops.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SinkError;
use crate::audit::spool::Record;
use crate::audit::{SYNC_EARLY_BYTES, format};
use crate::config::{AuditFormat, FsyncPolicy};

/// How often a file sink syncs and acknowledges while events flow, from the spool's `fsync`
/// policy and `[audit] fsync_interval` (no setting of its own: the trade is the same one).
///
/// - `always`: after every delivery, as before (strict users asked for a sync per batch).
/// - `interval`: every `fsync_interval`. The sink never acknowledges unsynced events, so a
///   machine crash costs at most that window of duplicates, never a lost event.
/// - `never`: every `fsync_interval` too. `never` keeps the spool's writer off the disk; the
///   output file is where events end up, and once the cursor passes them their spool segments
///   are deleted. One `fdatasync` per interval on the sink thread costs no request anything.
///   (The in-memory spool runs as `never`: there the output file is the only copy.)
pub(crate) fn sync_interval(fsync: FsyncPolicy, fsync_interval: Duration) -> Duration {
    match fsync {
        FsyncPolicy::Always => Duration::ZERO,
        FsyncPolicy::Interval | FsyncPolicy::Never => fsync_interval,
    }
}

/// Events rendered and written in one go: about 40 KB of JSON, well under a scheduler slice
/// of work even in the costlier formats (`crate::audit::give_way`).
const SLICE_EVENTS: usize = 64;

fn render_lines(format: AuditFormat, batch: &[Record], out: &mut Vec<u8>) {
    for r in batch {
        if format == AuditFormat::Json {
            // The sealed bytes as they are: no copy through a rendering.
            out.extend_from_slice(&r.payload);
            out.push(b'\n');
            continue;
        }
        match format::render(format, &r.payload) {
            Ok(line) => out.extend_from_slice(&line),
            // Unreadable record: keep the raw bytes rather than lose the line.
            Err(_) => out.extend_from_slice(&r.payload),
        }
        out.push(b'\n');
    }
}

pub(crate) struct FileSink {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: Option<u64>,
    max_files: usize,
    format: AuditFormat,
    /// Events per `write`: `SLICE_EVENTS` at most.
    batch_size: usize,
    buf: Vec<u8>,
    /// At most how often the worker syncs and acknowledges while events flow (`sync_interval`).
    sync_interval: Duration,
    /// Bytes written since the last `sync`.
    unsynced: u64,
    /// A rotation renamed files and created `path` since the last `sync`: the directory needs
    /// an fsync too, or a machine crash could lose the new file's entry (and its events).
    dir_dirty: bool,
    #[cfg(test)]
    pub(crate) probe: std::sync::Arc<SyncProbe>,
}

/// Test hooks: counts syncs, fails them on demand.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct SyncProbe {
    pub syncs: std::sync::atomic::AtomicU64,
    pub fail: std::sync::atomic::AtomicBool,
}

impl FileSink {
    pub fn open(
        path: &Path,
        max_size: Option<u64>,
        max_files: usize,
        format: AuditFormat,
        batch_size: usize,
        sync_interval: Duration,
    ) -> io::Result<FileSink> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files,
            format,
            batch_size: batch_size.clamp(1, SLICE_EVENTS),
            buf: Vec::with_capacity(256 * 1024),
            sync_interval,
            unsynced: 0,
            dir_dirty: false,
            #[cfg(test)]
            probe: Default::default(),
        })
    }

    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// Enough was written since the last sync to sync before the interval is up.
    pub fn sync_early(&self) -> bool {
        self.unsynced >= SYNC_EARLY_BYTES
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `path` → `path.1` → ... → `path.N` (the oldest falls off), then a fresh `path`.
    /// The old file is synced first, so everything written to it stays durable; the renames
    /// and the new file's entry become durable with the next `sync` (`dir_dirty`).
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        self.dir_dirty = true;
        for n in (1..self.max_files).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Write `batch` (one `write` per `batch_size` events). Not durable until `sync`.
    pub fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        for (n, chunk) in batch.chunks(self.batch_size).enumerate() {
            if n > 0 {
                crate::audit::give_way();
            }
            self.buf.clear();
            render_lines(self.format, chunk, &mut self.buf);
            let len = self.buf.len() as u64;
            if let Some(max) = self.max_size
                && self.size > 0
                && self.size + len > max
            {
                self.rotate()?;
            }
            self.file.write_all(&self.buf)?;
            self.size += len;
            self.unsynced += len;
        }
        Ok(())
    }

    /// Make everything written so far durable: `fdatasync`, and after a rotation an fsync of
    /// the directory.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        #[cfg(test)]
        if self.probe.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure").into());
        }
        self.file.sync_data()?;
        self.unsynced = 0;
        if self.dir_dirty {
            let dir = self
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        #[cfg(test)]
        self.probe
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

pub(crate) struct StdoutSink {
    format: AuditFormat,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new(format: AuditFormat) -> StdoutSink {
        StdoutSink {
            format,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.buf.clear();
        render_lines(self.format, batch, &mut self.buf);
        let mut out = io::stdout().lock();
        out.write_all(&self.buf)?;
        out.flush()?;
        Ok(())
    }
}
