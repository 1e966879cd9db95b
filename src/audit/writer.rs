//! The writer thread: sequence, chain, group-commit to the spool, complete the waiters.
//!
//! Every event passes through here, in one thread, so `seq` and `prev` follow spool order.
//! Each loop takes everything queued (up to `MAX_BATCH`), seals each event straight into the
//! batch buffer (header, JSON, hash: no per-event allocation), appends the batch with one
//! write and then completes every request waiting on it: that is the group commit that lets
//! `durability = "spooled"` cost one write per batch of concurrent requests, not per request.
//! It also settles the crash-loss tickets (`loss.rs`) of what it wrote.
//!
//! Waking a thread costs more than sealing an event (two context switches; on a loaded core
//! that was most of the audit CPU per request, and a writer woken per event preempts the
//! request thread before the next request can add to the batch). So the writer parks for at
//! most `TICK` while events flow and is woken early only (a) by a push that finds it parked
//! on an empty queue, or (b) for events somebody waits for (`durability = "spooled"`, role
//! changes) when a request thread runs out of work (`wake_pending`, the runtime's
//! `on_thread_park` hook): one wake per burst of requests, so they share one group commit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::mpsc::{Receiver, SendError, Sender, TryRecvError, TrySendError, channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::event::{AuditEvent, Chain, Checkpoint, EventBody, Loss};
use super::spool::{SpoolError, SpoolWriter, begin_record, finish_record};
use super::{AuditUnavailable, Counters};
use crate::config::{FsyncPolicy, OnFull};

/// Events sealed per group commit at most.
const MAX_BATCH: usize = 4096;
/// How long the queue stays drained before the loss reservation shrinks (`Tickets::settle`).
const SETTLE: Duration = Duration::from_millis(20);
/// While events flow that nobody waits for, the writer drains the queue this often.
const TICK: Duration = Duration::from_millis(1);

/// The writer's queue, shared by the request path, the sinks (their own failure events) and
/// the `AuditLog`'s shutdown.
pub(crate) struct Queue {
    /// Unbounded underneath, bounded by `len`/`capacity`: a `sync_channel` would allocate and
    /// touch all `capacity` slots up front (2 MiB of resident memory for an idle gateway).
    tx: Sender<Job>,
    /// Jobs pushed and not yet taken by the writer.
    len: AtomicUsize,
    capacity: usize,
    /// The writer thread, once started (events pushed before are drained at its start).
    writer: OnceLock<Thread>,
    /// The writer found the queue empty and parks until a push wakes it.
    idle: AtomicBool,
    /// Awaited jobs were queued since the writer was last woken.
    pending: AtomicBool,
    /// Hands a commit's completions to a task on the request runtime (see `Completions`).
    completer: OnceLock<mpsc::UnboundedSender<Completions>>,
}

/// Some queue has `pending` set (checked first, so a park costs one load when nothing waits).
static ANY_PENDING: AtomicBool = AtomicBool::new(false);
/// Every live queue, for `wake_pending`.
static QUEUES: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

/// Wake the writers that have awaited events queued. Installed as the request runtime's
/// `on_thread_park` hook: a request thread with nothing left to run hands the writer the
/// whole burst it queued. Without the hook (tests, the CLI) the writer's `TICK` bounds the wait.
pub fn wake_pending() {
    if !ANY_PENDING.load(Ordering::Relaxed) || !ANY_PENDING.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut queues = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    queues.retain(|q| match q.upgrade() {
        Some(q) => {
            if q.pending.swap(false, Ordering::SeqCst) {
                q.wake();
            }
            true
        }
        None => false,
    });
}

impl Queue {
    pub fn new(capacity: usize) -> (Arc<Queue>, Receiver<Job>) {
        let (tx, rx) = channel();
        let queue = Arc::new(Queue {
            tx,
            len: AtomicUsize::new(0),
            capacity,
            writer: OnceLock::new(),
            idle: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            completer: OnceLock::new(),
        });
        QUEUES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&queue));
        (queue, rx)
    }

    pub fn set_writer(&self, thread: Thread) {
        let _ = self.writer.set(thread);
    }

    /// Enqueue without blocking. A writer parked on an empty queue is woken now. Otherwise it
    /// is busy and drains within `TICK`; `urgent` (somebody waits for this job) also marks the
    /// queue for `wake_pending`, which wakes it as soon as the pushing thread runs dry.
    pub fn push(&self, job: Job, urgent: bool) -> Result<(), TrySendError<Job>> {
        self.try_send(job)?;
        // Pairs with the fence in `Writer::wait`: either the writer sees this job when it
        // looks again, or this push sees `idle` and wakes it.
        fence(Ordering::SeqCst);
        if self.idle.swap(false, Ordering::SeqCst) {
            self.wake();
        } else if urgent {
            self.pending.store(true, Ordering::SeqCst);
            ANY_PENDING.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Wake the writer now (shutdown).
    pub fn push_now(&self, job: Job) -> Result<(), TrySendError<Job>> {
        self.try_send(job)?;
        self.wake();
        Ok(())
    }

    /// Take a job off the queue (`rx` is this queue's receiver), making room for another.
    fn take(&self, rx: &Receiver<Job>) -> Result<Job, TryRecvError> {
        let job = rx.try_recv()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Ok(job)
    }

    fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(job));
        }
        self.tx.send(job).map_err(|SendError(job)| {
            self.len.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(job)
        })
    }

    fn wake(&self) {
        if let Some(thread) = self.writer.get() {
            thread.unpark();
        }
    }

    /// Called by a request that will wait for its event: the first one inside a runtime
    /// starts that runtime's completer task. Outside a runtime the writer completes directly.
    pub fn ensure_completer(&self) {
        if self.completer.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.completer.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Completions>();
            runtime.spawn(async move {
                while let Some(batch) = rx.recv().await {
                    complete(batch);
                }
            });
            tx
        });
    }

    /// Complete a commit's waiters. Each waiter woken from the writer thread is a remote
    /// wake-up of the runtime (an eventfd write per request on a current-thread runtime), so
    /// the whole batch goes to the completer task in one hand-off and it wakes them from
    /// inside the runtime. Without a completer (or once its runtime is gone) they are
    /// completed here; a batch lost with a runtime drops its senders, which fails closed.
    fn complete(&self, batch: Completions) {
        if batch.is_empty() {
            return;
        }
        let batch = match self.completer.get() {
            Some(tx) => match tx.send(batch) {
                Ok(()) => return,
                Err(mpsc::error::SendError(batch)) => batch,
            },
            None => batch,
        };
        complete(batch);
    }
}

/// One commit's waiters with their outcome.
type Completions = Vec<(Done, Result<(), AuditUnavailable>)>;

fn complete(batch: Completions) {
    for (done, outcome) in batch {
        let _ = done.send(outcome);
    }
}

/// The sender completed once an event is in the spool.
pub(crate) type Done = oneshot::Sender<Result<(), AuditUnavailable>>;

/// An event waiting in the writer.
struct Pending {
    event: Box<AuditEvent>,
    done: Option<Done>,
    /// fsync before completing.
    sync: bool,
    /// Holds a crash-loss ticket.
    ticket: bool,
    /// A crash `audit.loss` record: tickets it accounts for once written.
    covers: u64,
}

/// A request to the writer.
pub(crate) enum Job {
    Event {
        event: Box<AuditEvent>,
        /// Completed once the event is in the spool (spooled durability, role changes).
        done: Option<Done>,
        /// fsync before completing (role changes).
        sync: bool,
        /// The event holds a crash-loss ticket (it was answered before being written).
        ticket: bool,
    },
    /// Stop after what is queued (the `AuditLog` was dropped).
    Shutdown,
}

impl Job {
    fn pending(self) -> Option<Pending> {
        match self {
            Job::Event {
                event,
                done,
                sync,
                ticket,
            } => Some(Pending {
                event,
                done,
                sync,
                ticket,
                covers: 0,
            }),
            Job::Shutdown => None,
        }
    }
}

/// Fault injection for the crash-loss test (debug builds only): with
/// `PORTCULLIS_TEST_AUDIT_WRITER_STALL_AFTER=N` the writer stops writing once `N` events are
/// in the spool, as a stuck disk would, while requests keep being answered (`buffered`).
pub(crate) fn stall_after() -> Option<u64> {
    if cfg!(debug_assertions) {
        std::env::var("PORTCULLIS_TEST_AUDIT_WRITER_STALL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    } else {
        None
    }
}

pub(crate) struct Writer {
    pub rx: Receiver<Job>,
    pub queue: Arc<Queue>,
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
    /// Upper bound of the events a crash of the previous run lost (`loss.rs`).
    pub crash_loss: Option<u64>,
    /// `stall_after()`.
    pub stall_after: Option<u64>,
}

impl Writer {
    pub fn run(mut self) {
        let mut last_sync = Instant::now();
        // "interval": a thread of its own fsyncs, so no commit waits for the disk (a disk
        // spool only; otherwise, or if the thread cannot start, here between commits).
        let background_sync = self.fsync == FsyncPolicy::Interval
            && self.spool.sync_in_background(self.fsync_interval);
        let mut last_checkpoint = Instant::now();
        let mut since_checkpoint = 0u64;
        let mut dropped_at_checkpoint = self.counters.dropped.load(Ordering::Relaxed);
        let mut jobs: Vec<Pending> = Vec::new();
        let mut stop = false;
        let mut records = Vec::with_capacity(1 << 20);
        let mut saved_prev = String::new();
        let mut settle_at: Option<Instant> = None;
        // The last round committed events: more are likely, drain on the tick.
        let mut busy = false;
        while !stop {
            if let Some(n) = self.stall_after
                && self.counters.written.load(Ordering::Relaxed) >= n
            {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let now = Instant::now();
            let mut wait = self
                .checkpoint_interval
                .saturating_sub(now - last_checkpoint);
            if self.fsync == FsyncPolicy::Interval && !background_sync {
                wait = wait.min(self.fsync_interval.saturating_sub(now - last_sync));
            }
            if let Some(at) = settle_at {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if self.crash_loss.is_some() {
                // Record the previous run's loss now, not with the next event.
                wait = Duration::ZERO;
            }
            match self.wait(wait, busy) {
                Ok(job) => match job.pending() {
                    Some(p) => jobs.push(p),
                    None => stop = true,
                },
                Err(TryRecvError::Disconnected) => stop = true,
                Err(TryRecvError::Empty) => {}
            }
            while jobs.len() < MAX_BATCH && !stop {
                match self.try_recv() {
                    Ok(job) => match job.pending() {
                        Some(p) => jobs.push(p),
                        None => stop = true,
                    },
                    Err(_) => break,
                }
            }
            // Loss first: it explains the requests that were dropped before this batch.
            let pending_loss = self.counters.loss_pending.swap(0, Ordering::Relaxed);
            if pending_loss > 0 {
                jobs.insert(0, self.internal(loss(pending_loss, "spool_full", None), 0));
            }
            // A crash of the previous run comes before everything else of this one.
            let crash = self.crash_loss.take();
            if let Some(count) = crash {
                jobs.insert(
                    0,
                    self.internal(loss(count, "crash", Some("at_most")), count),
                );
            }
            if last_checkpoint.elapsed() >= self.checkpoint_interval {
                last_checkpoint = Instant::now();
                let dropped = self.counters.dropped.load(Ordering::Relaxed);
                let checkpoint = EventBody::Checkpoint(Checkpoint {
                    head_seq: self.next_seq.saturating_sub(1),
                    head_hash: self.chain.prev().to_owned(),
                    events_since_last: since_checkpoint,
                    dropped_since_last: dropped - dropped_at_checkpoint,
                });
                dropped_at_checkpoint = dropped;
                since_checkpoint = 0;
                jobs.push(self.internal(checkpoint, 0));
            }
            busy = !jobs.is_empty();
            if !jobs.is_empty() {
                let n = jobs.len() as u64;
                let written = self.commit(&mut jobs, &mut records, &mut saved_prev);
                if written {
                    since_checkpoint += n;
                } else {
                    if pending_loss > 0 {
                        // The loss record itself could not be written: keep it pending.
                        self.counters
                            .loss_pending
                            .fetch_add(pending_loss, Ordering::Relaxed);
                    }
                    self.crash_loss = self.crash_loss.or(crash);
                }
                if settle_at.is_none() {
                    settle_at = Some(Instant::now() + SETTLE);
                }
            }
            if let Some(at) = settle_at
                && (Instant::now() >= at || stop)
            {
                settle_at = if self.counters.tickets.drained() {
                    self.counters.tickets.settle();
                    None
                } else {
                    Some(Instant::now() + SETTLE)
                };
            }
            let sync_due = match self.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval if background_sync => stop,
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

    fn try_recv(&self) -> Result<Job, TryRecvError> {
        self.queue.take(&self.rx)
    }

    /// The next job, if one comes within `timers` (the next checkpoint, fsync or settle).
    /// Busy: park one `TICK` at most, pushes do not wake. Idle: announce it, look once more,
    /// then park until a push or a timer.
    fn wait(&self, timers: Duration, busy: bool) -> Result<Job, TryRecvError> {
        match self.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => return other,
        }
        if busy {
            std::thread::park_timeout(timers.min(TICK));
            return self.try_recv();
        }
        self.queue.idle.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let job = match self.try_recv() {
            Err(TryRecvError::Empty) => {
                std::thread::park_timeout(timers);
                self.try_recv()
            }
            other => other,
        };
        self.queue.idle.store(false, Ordering::SeqCst);
        job
    }

    fn internal(&self, body: EventBody, covers: u64) -> Pending {
        Pending {
            event: Box::new(AuditEvent::new(self.gateway.clone(), body)),
            done: None,
            sync: false,
            ticket: false,
            covers,
        }
    }

    /// Seal and append `jobs`, complete their waiters; returns whether they were written.
    fn commit(
        &mut self,
        jobs: &mut Vec<Pending>,
        records: &mut Vec<u8>,
        saved_prev: &mut String,
    ) -> bool {
        records.clear();
        saved_prev.clear();
        saved_prev.push_str(self.chain.prev());
        let first = self.next_seq;
        let mut seq = first;
        let mut sync = false;
        let mut tickets = 0u64;
        let mut covers = 0u64;
        for p in jobs.iter_mut() {
            sync |= p.sync;
            tickets += u64::from(p.ticket);
            p.event.seq = seq;
            let at = begin_record(records);
            if let Err(err) = self.chain.seal(&p.event, records) {
                // Cannot happen for these types; never write a half event.
                records.truncate(at);
                tracing::error!(error = %err, "Audit event did not serialize.");
                continue;
            }
            finish_record(records, at, seq);
            covers += p.covers;
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
                // After the append: a crash in between overcounts, never undercounts.
                self.counters.tickets.settled(tickets + covers);
                self.head.send_replace(last);
                if !self.spool.spool().has_readers()
                    && let Err(err) = self.spool.spool().release()
                {
                    tracing::error!(error = %err, "Cannot trim the audit spool.");
                }
                let done = jobs.drain(..).filter_map(|p| p.done.map(|d| (d, Ok(()))));
                self.queue.complete(done.collect());
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
                for p in jobs.iter() {
                    if matches!(p.event.body, EventBody::Loss(_)) {
                        continue;
                    }
                    let refuses = p.done.is_some()
                        && (!drop_ok || p.sync || matches!(p.event.body, EventBody::RoleChange(_)));
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
                // once the spool has room, so their crash-loss tickets are settled.
                self.counters
                    .loss_pending
                    .fetch_add(lost, Ordering::Relaxed);
                self.counters.tickets.settled(tickets);
                self.counters.full.store(full, Ordering::Relaxed);
                let done = jobs.drain(..).filter_map(|p| {
                    // Role changes never proceed unaudited, whatever `on_full` says.
                    let outcome = if drop_ok
                        && !p.sync
                        && !matches!(p.event.body, EventBody::RoleChange(_))
                    {
                        Ok(())
                    } else {
                        Err(AuditUnavailable)
                    };
                    p.done.map(|d| (d, outcome))
                });
                self.queue.complete(done.collect());
                false
            }
        };
        if written {
            super::refresh_full(self.spool.spool(), &self.counters);
        }
        written
    }
}

fn loss(count: u64, cause: &'static str, bound: Option<&'static str>) -> EventBody {
    EventBody::Loss(Loss {
        count,
        cause,
        bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::Shutdown
    }

    /// The queue is unbounded underneath; the bound is ours to keep.
    #[test]
    fn the_queue_refuses_beyond_its_capacity_and_makes_room_as_jobs_are_taken() {
        let (queue, rx) = Queue::new(2);
        assert!(queue.push(job(), false).is_ok());
        assert!(queue.push_now(job()).is_ok());
        assert!(matches!(
            queue.push(job(), false),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(queue.len.load(Ordering::SeqCst), 2);
        assert!(queue.take(&rx).is_ok());
        assert!(queue.push(job(), false).is_ok());
        assert!(matches!(
            queue.push(job(), false),
            Err(TrySendError::Full(_))
        ));
        drop(rx);
        queue.len.store(0, Ordering::SeqCst);
        assert!(matches!(
            queue.push(job(), false),
            Err(TrySendError::Disconnected(_))
        ));
        assert_eq!(queue.len.load(Ordering::SeqCst), 0);
    }
}
