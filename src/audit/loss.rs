//! Crash-loss accounting for events whose request was answered before they reached the spool
//! (`durability = "buffered"`, and the sinks' own `audit.sink_failure` events).
//!
//! Such an event lives only in the in-memory queue until the writer appends it; a crash (kill
//! -9, OOM, panic=abort) loses the queue. Nothing in the spool can show the loss by itself:
//! `seq` is assigned by the writer, so the events it never saw leave no gap. Instead every
//! such event takes a *ticket* before it is queued, and the number of tickets that may have
//! been issued is persisted ahead of use:
//!
//! - `spool/reserved` holds two counters (cumulative over the spool's life): `reserved`, an
//!   upper bound of the tickets ever issued, and `written`, the tickets whose event reached
//!   the spool (or was already reported by an `audit.loss` record with cause `spool_full`).
//! - The request path takes a ticket with one atomic increment. Only when it passes the
//!   persisted `reserved` does it extend the reservation by `BLOCK` tickets, writing the file
//!   (one 42-byte `pwrite`, no fsync) *before* queueing: so `issued <= reserved` on disk holds
//!   at every instant an event can be lost.
//! - The writer adds the tickets of each committed batch to `written` and rewrites the file
//!   after the append. When the queue has been drained for `SETTLE`, it shrinks `reserved`
//!   back to `issued` (safely against concurrent issuers, see `settle`), so an idle gateway
//!   that is killed reports no loss at all.
//! - At startup `reserved - written` is the number of events that may have been lost; the
//!   writer's first batch carries an `audit.loss` record with that `count`, `cause = "crash"`
//!   and `bound = "at_most"`, and only after it is in the spool is `written` moved up to
//!   `reserved`. It is an upper bound: it can exceed the true loss by the unused part of the
//!   last reservation (< `BLOCK`) plus the last batch if the crash fell between its append
//!   and the file update; it never undercounts a process crash. (A machine crash can lose
//!   the file update itself along with the page cache; `buffered` promises nothing there.)
//!
//! Awaited events (`spooled` durability, role changes) take no ticket: their request is only
//! answered once they are in the spool, so a crash fails the request instead of losing an
//! answered one. Without a spool directory nothing survives a restart and nothing is counted.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};

use super::spool::SpoolError;

/// Tickets reserved per extension: one file write per `BLOCK` events on the request path.
pub const BLOCK: u64 = 1024;
/// File name in the spool directory.
pub const FILE: &str = "reserved";
/// Record size: two 20-digit counters, a space and a newline.
const RECORD: usize = 42;

struct State {
    file: Option<(File, PathBuf)>,
    /// What the file says.
    reserved: u64,
    written: u64,
    /// Logged once; a failing disk should not flood the log from the request path.
    failed: bool,
}

/// The ticket counters; shared by the request path (`issue`) and the writer.
pub(crate) struct Tickets {
    /// Tickets issued and not handed back (absolute, cumulative).
    issued: AtomicU64,
    /// Mirrors `State::reserved`; `u64::MAX` without a file.
    reserved: AtomicU64,
    state: Mutex<State>,
}

/// What `Tickets::open` found from the previous run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrashLoss {
    /// Upper bound of the events lost.
    pub count: u64,
}

fn parse(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (r, w) = text.trim_end().split_once(' ')?;
    Some((r.parse().ok()?, w.parse().ok()?))
}

impl Tickets {
    /// Open `dir/reserved` (creating it), or keep everything in memory without a directory.
    pub fn open(dir: Option<&Path>) -> Result<(Tickets, Option<CrashLoss>), SpoolError> {
        let Some(dir) = dir else {
            return Ok((
                Tickets {
                    issued: AtomicU64::new(0),
                    reserved: AtomicU64::new(u64::MAX),
                    state: Mutex::new(State {
                        file: None,
                        reserved: u64::MAX,
                        written: 0,
                        failed: false,
                    }),
                },
                None,
            ));
        };
        let path = dir.join(FILE);
        let io = |source| SpoolError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut buf = [0u8; RECORD];
        let n = file.read_at(&mut buf, 0).map_err(io)?;
        let (reserved, written) = match n {
            0 => (0, 0),
            _ => parse(&buf[..n]).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "Unreadable audit loss-accounting file; a loss in the previous run cannot be counted.");
                (0, 0)
            }),
        };
        let loss = (reserved > written).then(|| CrashLoss {
            count: reserved - written,
        });
        let tickets = Tickets {
            // Tickets in (written, reserved] are spent: the loss record accounts for them.
            issued: AtomicU64::new(reserved.max(written)),
            reserved: AtomicU64::new(reserved.max(written)),
            state: Mutex::new(State {
                file: Some((file, path)),
                reserved: reserved.max(written),
                written,
                failed: false,
            }),
        };
        tickets.persist(&mut tickets.lock());
        Ok((tickets, loss))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, state: &mut State) {
        let Some((file, path)) = &state.file else {
            return;
        };
        let mut record = [b' '; RECORD];
        let text = format!("{:020} {:020}\n", state.reserved, state.written);
        record.copy_from_slice(text.as_bytes());
        if let Err(err) = file.write_at(&record, 0) {
            if !state.failed {
                tracing::error!(path = %path.display(), error = %err, "Cannot persist audit loss accounting; a crash may go uncounted.");
            }
            state.failed = true;
        }
    }

    /// Request path: take a ticket for an event that is answered before it is written.
    /// One atomic increment, except once per `BLOCK` tickets (a small file write).
    pub fn issue(&self) {
        let n = self.issued.fetch_add(1, SeqCst) + 1;
        if n > self.reserved.load(SeqCst) {
            self.extend(n);
        }
    }

    #[cold]
    fn extend(&self, n: u64) {
        let mut state = self.lock();
        if n <= self.reserved.load(SeqCst) {
            return;
        }
        state.reserved = n.saturating_add(BLOCK - 1);
        self.persist(&mut state);
        self.reserved.store(state.reserved, SeqCst);
    }

    /// The ticketed event never reached the queue (it is counted as dropped instead).
    pub fn hand_back(&self) {
        self.issued.fetch_sub(1, SeqCst);
    }

    /// Writer: `n` ticketed events are in the spool, or were reported by a `spool_full`
    /// loss record; `crash` tickets are covered by a committed crash `audit.loss` record.
    pub fn settled(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut state = self.lock();
        state.written = state.written.saturating_add(n);
        self.persist(&mut state);
    }

    /// Whether every ticket issued so far is settled (nothing waits in the queue).
    pub fn drained(&self) -> bool {
        self.issued.load(SeqCst) <= self.lock().written
    }

    /// Writer, when the queue has been drained for a while: shrink the reservation to what
    /// is issued, so a crash while idle reports nothing. Issuers that race with this either
    /// incremented `issued` before it is read here (then nothing shrinks) or read the
    /// lowered `reserved` after it was stored (then they wait on the lock in `extend`).
    pub fn settle(&self) {
        let mut state = self.lock();
        if state.file.is_none() || state.reserved == state.written {
            return;
        }
        self.reserved.store(state.written, SeqCst);
        if self.issued.load(SeqCst) <= state.written {
            state.reserved = state.written;
            self.persist(&mut state);
        } else {
            self.reserved.store(state.reserved, SeqCst);
        }
    }

    /// (reserved, written) as persisted.
    #[cfg(test)]
    pub fn persisted(&self) -> (u64, u64) {
        let state = self.lock();
        (state.reserved, state.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_with_queued_tickets_is_counted_and_an_idle_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (t, loss) = Tickets::open(Some(dir.path())).unwrap();
        assert_eq!(loss, None);
        for _ in 0..10 {
            t.issue();
        }
        t.settled(4);
        assert!(!t.drained());
        // "Crash": reopen without settling the other 6.
        drop(t);
        let (t, loss) = Tickets::open(Some(dir.path())).unwrap();
        let count = loss.unwrap().count;
        assert!((6..6 + BLOCK).contains(&count), "upper bound: {count}");
        // The loss record is committed.
        t.settled(count);
        assert!(t.drained());
        t.issue();
        t.settled(1);
        t.settle();
        drop(t);
        let (_, loss) = Tickets::open(Some(dir.path())).unwrap();
        assert_eq!(loss, None, "idle and settled: nothing lost");
    }

    #[test]
    fn settle_does_not_shrink_below_an_outstanding_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = Tickets::open(Some(dir.path())).unwrap();
        t.issue();
        t.issue();
        t.settled(1);
        t.settle();
        let (reserved, written) = t.persisted();
        assert!(reserved >= 2 && written == 1);
        t.hand_back();
        t.settle();
        assert_eq!(t.persisted(), (1, 1));
        // The next ticket extends the reservation before it is used.
        t.issue();
        assert!(t.persisted().0 >= 2);
    }

    #[test]
    fn without_a_directory_nothing_is_counted() {
        let (t, loss) = Tickets::open(None).unwrap();
        assert_eq!(loss, None);
        t.issue();
        t.settle();
    }
}
