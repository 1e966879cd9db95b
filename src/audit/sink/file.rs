//! `file` (JSON lines or any format, size-based rotation) and `stdout`.
//!
//! Delivered means written and `fdatasync`ed: the cursor never runs ahead of what a machine
//! crash would keep. With a backlog the worker hands the file sink up to `FILE_GROUP`
//! batches at once: each batch of `batch_size` events is one `write`, and the group shares
//! one `fdatasync` and one cursor update (a sync per 500 events was most of the wall time).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::SinkError;
use crate::audit::format;
use crate::audit::spool::Record;
use crate::config::AuditFormat;

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
    /// Events per `write`.
    batch_size: usize,
    buf: Vec<u8>,
}

impl FileSink {
    pub fn open(
        path: &Path,
        max_size: Option<u64>,
        max_files: usize,
        format: AuditFormat,
        batch_size: usize,
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
            batch_size: batch_size.max(1),
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `path` → `path.1` → ... → `path.N` (the oldest falls off), then a fresh `path`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
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

    /// Write `batch` (one `write` per `batch_size` events), then one `fdatasync`.
    pub fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        for chunk in batch.chunks(self.batch_size) {
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
        }
        self.file.sync_data()?;
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
