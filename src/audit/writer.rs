//! The writer thread: sequence, chain, group-commit to the spool, complete the waiters.
//!
//! Every event passes through here, in one thread, so `seq` and `prev` follow spool order.
//! Each loop takes everything queued (up to `MAX_BATCH`), seals it, appends it with one write
//! and then completes every request waiting on it: that is the group commit that lets
//! `durability = "spooled"` cost one write per batch of concurrent requests, not per request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::event::{AuditEvent, Chain, Checkpoint, EventBody, Loss};
use super::spool::{SpoolError, SpoolWriter, encode_record};
use super::{AuditUnavailable, Counters};
use crate::config::{FsyncPolicy, OnFull};

/// Events sealed per group commit at most.
const MAX_BATCH: usize = 4096;

/// The sender completed once an event is in the spool.
pub(crate) type Done = oneshot::Sender<Result<(), AuditUnavailable>>;
/// An event waiting in the writer: (event, waiter, fsync before completing).
type Pending = (Box<AuditEvent>, Option<Done>, bool);

/// A request to the writer.
pub(crate) enum Job {
    Event {
        event: Box<AuditEvent>,
        /// Completed once the event is in the spool (spooled durability, role changes).
        done: Option<Done>,
        /// fsync before completing (role changes).
        sync: bool,
    },
    /// Stop after what is queued (the `AuditLog` was dropped).
    Shutdown,
}

pub(crate) struct Writer {
    pub rx: Receiver<Job>,
    pub spool: SpoolWriter,
    pub chain: Chain,
    pub next_seq: u64,
    pub on_full: OnFull,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub checkpoint_interval: Duration,
    pub gateway: Arc<str>,
    pub counters: Arc<Counters>,
    /// Published after every commit: the last seq sinks may read.
    pub head: watch::Sender<u64>,
}

impl Writer {
    pub fn run(mut self) {
        let mut last_sync = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut since_checkpoint = 0u64;
        let mut dropped_at_checkpoint = self.counters.dropped.load(Ordering::Relaxed);
        let mut jobs: Vec<Pending> = Vec::new();
        let mut stop = false;
        let mut buf = Vec::with_capacity(256 * 1024);
        let mut records = Vec::with_capacity(256 * 1024);
        while !stop {
            let now = Instant::now();
            let mut wait = self
                .checkpoint_interval
                .saturating_sub(now - last_checkpoint);
            if self.fsync == FsyncPolicy::Interval {
                wait = wait.min(self.fsync_interval.saturating_sub(now - last_sync));
            }
            match self.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(Job::Event { event, done, sync }) => jobs.push((event, done, sync)),
                Ok(Job::Shutdown) | Err(RecvTimeoutError::Disconnected) => stop = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Job::Event { event, done, sync }) => jobs.push((event, done, sync)),
                    Ok(Job::Shutdown) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Loss first: it explains the requests that were dropped before this batch.
            let pending_loss = self.counters.loss_pending.swap(0, Ordering::Relaxed);
            if pending_loss > 0 {
                let loss = AuditEvent::new(
                    self.gateway.clone(),
                    EventBody::Loss(Loss {
                        count: pending_loss,
                        cause: "spool_full",
                    }),
                );
                jobs.insert(0, (Box::new(loss), None, false));
            }
            if last_checkpoint.elapsed() >= self.checkpoint_interval {
                last_checkpoint = Instant::now();
                let dropped = self.counters.dropped.load(Ordering::Relaxed);
                let checkpoint = AuditEvent::new(
                    self.gateway.clone(),
                    EventBody::Checkpoint(Checkpoint {
                        head_seq: self.next_seq.saturating_sub(1),
                        head_hash: self.chain.prev().to_owned(),
                        events_since_last: since_checkpoint,
                        dropped_since_last: dropped - dropped_at_checkpoint,
                    }),
                );
                dropped_at_checkpoint = dropped;
                since_checkpoint = 0;
                jobs.push((Box::new(checkpoint), None, false));
            }
            if !jobs.is_empty() {
                let n = jobs.len() as u64;
                let written = self.commit(&mut jobs, &mut buf, &mut records);
                if written {
                    since_checkpoint += n;
                } else if pending_loss > 0 {
                    // The loss record itself could not be written: keep it pending.
                    self.counters
                        .loss_pending
                        .fetch_add(pending_loss, Ordering::Relaxed);
                }
            }
            let sync_due = match self.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval => last_sync.elapsed() >= self.fsync_interval || stop,
                FsyncPolicy::Never => stop,
            };
            if sync_due {
                if let Err(err) = self.spool.sync() {
                    tracing::error!(error = %err, "Audit spool fsync failed.");
                }
                last_sync = Instant::now();
            }
        }
    }

    /// Seal and append `jobs`, complete their waiters; returns whether they were written.
    fn commit(
        &mut self,
        jobs: &mut Vec<Pending>,
        buf: &mut Vec<u8>,
        records: &mut Vec<u8>,
    ) -> bool {
        records.clear();
        let saved_prev = self.chain.prev().to_owned();
        let first = self.next_seq;
        let mut seq = first;
        let mut sync = false;
        for (event, _, s) in jobs.iter_mut() {
            sync |= *s;
            event.seq = seq;
            buf.clear();
            if let Err(err) = self.chain.seal(event, buf) {
                // Cannot happen for these types; never write a half event.
                tracing::error!(error = %err, "Audit event did not serialize.");
                continue;
            }
            encode_record(records, seq, buf);
            seq += 1;
        }
        let last = seq - 1;
        let result = if seq == first {
            Ok(())
        } else {
            self.spool.append(first, last, records)
        };
        let result = result.and_then(|()| if sync { self.spool.sync() } else { Ok(()) });
        let written = match result {
            Ok(()) => {
                self.next_seq = seq;
                self.counters
                    .written
                    .fetch_add(seq - first, Ordering::Relaxed);
                self.head.send_replace(last);
                if !self.spool.spool().has_readers()
                    && let Err(err) = self.spool.spool().release()
                {
                    tracing::error!(error = %err, "Cannot trim the audit spool.");
                }
                for (_, done, _) in jobs.drain(..) {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
                true
            }
            Err(err) => {
                // Nothing was published: the chain and seq continue from where they were.
                self.chain.restore(saved_prev);
                let full = matches!(err, SpoolError::Full { .. });
                if !full {
                    tracing::error!(error = %err, "Audit spool append failed.");
                }
                let drop_ok = self.on_full == OnFull::Drop;
                // Loss records are bookkeeping about other events: never counted themselves.
                let mut lost = 0u64;
                let mut refused = 0u64;
                for (event, done, sync) in jobs.iter() {
                    if matches!(event.body, EventBody::Loss(_)) {
                        continue;
                    }
                    let refuses = done.is_some()
                        && (!drop_ok || *sync || matches!(event.body, EventBody::RoleChange(_)));
                    if refuses {
                        refused += 1;
                    } else {
                        lost += 1;
                    }
                }
                self.counters
                    .dropped
                    .fetch_add(lost + refused, Ordering::Relaxed);
                self.counters.refused.fetch_add(refused, Ordering::Relaxed);
                // Served (or never waited for) without being written: a loss record follows
                // once the spool has room.
                self.counters
                    .loss_pending
                    .fetch_add(lost, Ordering::Relaxed);
                self.counters.full.store(full, Ordering::Relaxed);
                for (event, done, sync) in jobs.drain(..) {
                    if let Some(done) = done {
                        // Role changes never proceed unaudited, whatever `on_full` says.
                        let outcome = if drop_ok
                            && !sync
                            && !matches!(event.body, EventBody::RoleChange(_))
                        {
                            Ok(())
                        } else {
                            Err(AuditUnavailable)
                        };
                        let _ = done.send(outcome);
                    }
                }
                false
            }
        };
        if written {
            super::refresh_full(self.spool.spool(), &self.counters);
        }
        written
    }
}
