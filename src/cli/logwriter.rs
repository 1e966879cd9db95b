//! The server's log writer. A formatted line (an access line per request, by default) goes
//! into a shared buffer; one thread writes the buffer to stderr every `FLUSH_EVERY`, or sooner
//! once `SOFT_LIMIT` bytes wait. So a request never makes a write system call, and a stalled
//! stderr reader (a full journald pipe) cannot stall the data plane: past `HARD_LIMIT` lines
//! are dropped and counted, and the count is written as soon as stderr drains. This is nginx's
//! `access_log ... buffer=64k flush=...`; the audit log, not this, is the durable record.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const SOFT_LIMIT: usize = 64 * 1024;
const HARD_LIMIT: usize = 4 << 20;

/// Buffered lines and what was dropped; generic over the output so tests can read it.
pub(crate) struct LineBuffer {
    pending: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    flusher: OnceLock<Thread>,
}

impl LineBuffer {
    pub(crate) const fn new() -> LineBuffer {
        LineBuffer {
            pending: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            flusher: OnceLock::new(),
        }
    }

    /// Queue one formatted line (tracing writes each event with one call).
    pub(crate) fn append(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() + line.len() > HARD_LIMIT {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.extend_from_slice(line);
        let wake = pending.len() >= SOFT_LIMIT;
        drop(pending);
        if wake && let Some(flusher) = self.flusher.get() {
            flusher.unpark();
        }
    }

    /// Write what is pending to `out`; `spare` is swapped in so neither side reallocates.
    pub(crate) fn flush_to(&self, out: &mut dyn Write, spare: &mut Vec<u8>) -> io::Result<()> {
        spare.clear();
        std::mem::swap(
            &mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()),
            spare,
        );
        if !spare.is_empty() {
            out.write_all(spare)?;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            writeln!(
                out,
                "portcullis: {dropped} log lines dropped: stderr was not being read fast enough"
            )?;
        }
        out.flush()
    }
}

static STDERR_LINES: LineBuffer = LineBuffer::new();

/// `MakeWriter` for the server's tracing subscriber.
#[derive(Clone, Copy)]
pub struct BufferedStderr;

/// Appends each write to the shared buffer.
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        STDERR_LINES.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

impl BufferedStderr {
    /// Start the flusher thread; false if it cannot be started (then log unbuffered).
    pub fn start() -> bool {
        if STDERR_LINES.flusher.get().is_some() {
            return true;
        }
        let spawned = std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(|| {
                let mut spare = Vec::new();
                loop {
                    std::thread::park_timeout(FLUSH_EVERY);
                    let _ = STDERR_LINES.flush_to(&mut io::stderr().lock(), &mut spare);
                }
            });
        match spawned {
            Ok(handle) => {
                let _ = STDERR_LINES.flusher.set(handle.thread().clone());
                true
            }
            Err(_) => false,
        }
    }

    /// Write out what is pending now (at exit).
    pub fn flush() {
        let _ = STDERR_LINES.flush_to(&mut io::stderr().lock(), &mut Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_and_in_order_and_overflow_is_counted() {
        let lines = LineBuffer::new();
        lines.append(b"one\n");
        lines.append(b"two\n");
        let mut out = Vec::new();
        let mut spare = Vec::new();
        lines.flush_to(&mut out, &mut spare).unwrap();
        assert_eq!(out, b"one\ntwo\n");

        let big = vec![b'x'; HARD_LIMIT / 2];
        lines.append(&big);
        lines.append(&big);
        lines.append(b"three\n"); // over the limit: dropped, counted
        lines.append(b"four\n");
        out.clear();
        lines.flush_to(&mut out, &mut spare).unwrap();
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        assert_eq!(
            text.len(),
            2 * big.len()
                + "portcullis: 2 log lines dropped: stderr was not being read fast enough\n".len()
        );
        assert!(
            text.ends_with(
                "portcullis: 2 log lines dropped: stderr was not being read fast enough\n"
            )
        );

        // Room again: lines are taken.
        lines.append(b"five\n");
        out.clear();
        lines.flush_to(&mut out, &mut spare).unwrap();
        assert_eq!(out, b"five\n");
    }
}
