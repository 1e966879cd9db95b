//! Sequence, chain, group-commit to the spool, complete the waiters.
//!
//! Every event passes through one `Core` under a lock, so `seq` and `prev` follow spool order.
//! A commit takes everything queued (up to `MAX_BATCH`), seals each event straight into the
//! batch buffer (header, JSON, hash: no per-event allocation), appends the batch with one
//! write and then completes every request waiting on it: that is the group commit that lets
//! `durability = "spooled"` cost one write per batch of concurrent requests, not per request.
//! It also settles the crash-loss tickets (`loss.rs`) of what it wrote.
//!
//! Who commits: the writer thread, or a request thread about to park. Handing a batch to
//! another thread and back costs two thread wake-ups per commit; at a moderate request rate
//! that is a commit per request, and on the benchmark VM those wake-ups cost more CPU than the
//! request itself (benches/README.md, fifth session). So the thread of a current-thread request
//! runtime that runs out of work with awaited events queued (`commit_pending`, its
//! `on_thread_park` hook) commits them itself, one group commit per burst, and its waiters run
//! before it parks. The write goes to the page cache: the request waits for exactly this write
//! either way. Whatever would wait for the disk stays on the writer thread: an fsync
//! (`fsync = "always"`, role changes), opening a new segment, trimming old ones. So do
//! checkpoints, the loss record of a previous crash, events nobody waits for, and every commit
//! when the lock is taken, in a multi-thread runtime, or where no runtime hook runs.
//!
//! The writer thread parks for at most `TICK` while events flow and is woken early only by a
//! push that finds it parked on an empty queue (outside a hooked runtime), or by a request
//! thread that hands it a commit.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::mpsc::{Receiver, SendError, Sender, TryRecvError, TrySendError, channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::event::{AuditEvent, Chain, Checkpoint, EventBody, Loss};
use super::spool::{SpoolError, SpoolWriter, begin_record, finish_record};
use super::{AuditUnavailable, Counters};
use crate::config::{FsyncPolicy, OnFull};

/// Events sealed per group commit at most.
const MAX_BATCH: usize = 4096;
/// Awaited jobs queued for a park-time commit beyond this wake the writer thread instead
/// (a runtime that does not run dry for a long time still has its events committed).
const MAX_DEFERRED: usize = 512;
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
    /// Jobs pushed and not yet taken off the queue.
    len: AtomicUsize,
    capacity: usize,
    /// The writer thread, once started (events pushed before are drained at its start).
    writer: OnceLock<Thread>,
    /// The writer found the queue empty and parks until a push wakes it.
    idle: AtomicBool,
    /// Awaited jobs were queued for the pushing thread's park (`commit_pending`).
    pending: AtomicBool,
    /// Hands a commit's completions to a task on the request runtime (see `Completions`).
    completer: OnceLock<mpsc::UnboundedSender<Completions>>,
    /// Set when request threads may commit (`commit_inline`): not with `fsync = "always"`.
    core: OnceLock<Arc<Mutex<Core>>>,
    /// Commits done by request threads (tests and benchmarks look).
    pub inline_commits: AtomicU64,
    /// Inline commits that would have opened a segment and went to the writer thread.
    pub inline_handovers: AtomicU64,
}

/// Some queue has `pending` set (checked first, so a park costs one load when nothing waits).
static ANY_PENDING: AtomicBool = AtomicBool::new(false);
/// Every live queue, for `commit_pending`.
static QUEUES: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

thread_local! {
    /// The runtime whose park hook (`commit_pending`) last ran on this thread, and whether it
    /// commits there (a current-thread runtime).
    static PARK_HOOK: std::cell::Cell<Option<(tokio::runtime::Id, bool)>> =
        const { std::cell::Cell::new(None) };
}

/// Whether this thread runs a runtime that commits at its park: the one whose hook ran here
/// last is the one it is in now (not a later runtime without the hook, nor none).
fn commits_at_park() -> bool {
    let Some((id, true)) = PARK_HOOK.get() else {
        return false;
    };
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == id)
}

/// Commit the awaited events queued by this thread's requests, or wake the writer for them.
/// Installed as the request runtime's `on_thread_park` hook: a thread of a current-thread
/// runtime with nothing left to run commits the whole burst its requests wait for, and the
/// runtime runs them instead of parking (it looks at its queue again after the hook). A
/// multi-thread worker wakes the writer instead: a task it woke here would go to the shared
/// queue, and no other worker need be told before this one parks. Without the hook (tests,
/// the CLI) pushes wake the writer.
pub fn commit_pending() {
    // Most parks have nothing pending: one load, once this thread's runtime is known.
    if PARK_HOOK.get().is_some() && !ANY_PENDING.load(Ordering::Relaxed) {
        return;
    }
    let inline = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match PARK_HOOK.get() {
            Some((id, inline)) if id == runtime.id() => inline,
            _ => {
                let inline =
                    runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread;
                PARK_HOOK.set(Some((runtime.id(), inline)));
                inline
            }
        },
        Err(_) => false,
    };
    if !ANY_PENDING.load(Ordering::Relaxed) || !ANY_PENDING.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut queues = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    queues.retain(|q| match q.upgrade() {
        Some(q) => {
            if q.pending.swap(false, Ordering::SeqCst) && !(inline && q.commit_inline()) {
                q.wake();
            }
            true
        }
        None => false,
    });
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
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
            core: OnceLock::new(),
            inline_commits: AtomicU64::new(0),
            inline_handovers: AtomicU64::new(0),
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

    /// Let request threads commit (see the module docs).
    pub fn commit_inline_with(&self, core: Arc<Mutex<Core>>) {
        let _ = self.core.set(core);
    }

    /// Enqueue without blocking. `urgent` (somebody waits for this job) pushed from a thread
    /// that commits when it parks (`commit_pending`) only marks the queue: that thread commits
    /// it with the rest of its burst as soon as it runs dry. Otherwise a writer parked on an
    /// empty queue is woken now; a busy one drains within `TICK`, or for an urgent job when
    /// the pushing thread parks, if it runs the hook.
    pub fn push(&self, job: Job, urgent: bool) -> Result<(), TrySendError<Job>> {
        self.try_send(job)?;
        let deferred = urgent
            && self.core.get().is_some()
            && self.len.load(Ordering::Relaxed) <= MAX_DEFERRED
            && commits_at_park();
        if !deferred {
            // Pairs with the fence in `Writer::wait`: either the writer sees this job when it
            // looks again, or this push sees `idle` and wakes it.
            fence(Ordering::SeqCst);
            if self.idle.swap(false, Ordering::SeqCst) {
                self.wake();
                return Ok(());
            }
            if !urgent {
                return Ok(());
            }
        }
        self.pending.store(true, Ordering::SeqCst);
        ANY_PENDING.store(true, Ordering::SeqCst);
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

    /// The writer thread is parked on an empty queue.
    #[cfg(test)]
    pub fn writer_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    fn has_jobs(&self) -> bool {
        self.len.load(Ordering::SeqCst) > 0
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

    /// Commit what is queued on this thread (a request thread about to park). `false` when
    /// the writer thread must: it holds the lock, or jobs are left to it. What needs a disk
    /// wait is handed over (the jobs stay in the core, the writer is woken).
    fn commit_inline(&self) -> bool {
        let Some(core) = self.core.get() else {
            return false;
        };
        let Ok(mut core) = core.try_lock() else {
            return false;
        };
        if core.closed || core.shutdown || core.crash_loss.is_some() || !core.jobs.is_empty() {
            return false;
        }
        if core.take_jobs(self, true) {
            // A job for the writer thread (an fsync, shutdown) was taken: it commits them all.
            drop(core);
            self.wake();
            return true;
        }
        if let Some(loss) = core.pending_loss() {
            core.jobs.insert(0, loss);
        }
        if core.jobs.is_empty() {
            return true;
        }
        let tickets = core.jobs.iter().any(|p| p.ticket);
        let outcome = core.commit(self, true);
        let more = self.has_jobs();
        drop(core);
        if outcome != Committed::Written || tickets || more {
            // Handed over (a new segment), to be retried, a loss reservation to settle, or
            // more than one batch queued: the writer thread takes it from here.
            self.wake();
        }
        let counter = match outcome {
            Committed::HandedOver => &self.inline_handovers,
            _ => &self.inline_commits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        true
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

    /// Complete a commit's waiters from the writer thread. Each waiter woken from there is a
    /// remote wake-up of the runtime (an eventfd write per request on a current-thread
    /// runtime), so the whole batch goes to the completer task in one hand-off and it wakes
    /// them from inside the runtime. Without a completer (or once its runtime is gone) they
    /// are completed here; a batch lost with a runtime drops its senders, which fails closed.
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

/// The outcome of `Core::commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    Written,
    /// Not written (spool full, a write error); the waiters have their outcome.
    NotWritten,
    /// An inline commit that would open a new segment: nothing written, the jobs are left
    /// for the writer thread.
    HandedOver,
}

/// What a commit needs, and the jobs taken off the queue and not yet committed. The writer
/// thread holds it for each of its rounds; a request thread about to park takes it when free
/// (`Queue::commit_inline`).
pub(crate) struct Core {
    /// `None` once the writer thread has ended: pushes are refused from then on.
    rx: Option<Receiver<Job>>,
    spool: SpoolWriter,
    chain: Chain,
    next_seq: u64,
    on_full: OnFull,
    gateway: Arc<str>,
    counters: Arc<Counters>,
    /// Published after every commit: the last seq sinks may read.
    head: watch::Sender<u64>,
    /// Upper bound of the events a crash of the previous run lost (`loss.rs`).
    crash_loss: Option<u64>,
    /// Taken off the queue and not committed: the writer thread commits these first.
    jobs: Vec<Pending>,
    /// A shutdown was taken off the queue (after `jobs`).
    shutdown: bool,
    /// The writer thread has ended.
    closed: bool,
    /// Events committed since the last checkpoint.
    since_checkpoint: u64,
    /// When the loss reservation may shrink next (`Tickets::settle`).
    settle_at: Option<Instant>,
    /// The next batch's buffer: empty after a batch went to the spool, which keeps it.
    records: Vec<u8>,
    /// The longest record of the last batch: sizes the next batch's buffer.
    record_len: usize,
    saved_prev: String,
}

/// How the writer thread is set up; `AuditLog::start` builds it.
pub(crate) struct WriterParts {
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
    pub head: watch::Sender<u64>,
    pub crash_loss: Option<u64>,
    pub stall_after: Option<u64>,
}

pub(crate) struct Writer {
    core: Arc<Mutex<Core>>,
    queue: Arc<Queue>,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    checkpoint_interval: Duration,
    /// `stall_after()`.
    stall_after: Option<u64>,
}

impl Writer {
    /// The writer thread's state. Request threads may commit too unless every commit must
    /// wait for the disk (`fsync = "always"`) or a stall is being injected.
    pub fn new(parts: WriterParts) -> Writer {
        let core = Arc::new(Mutex::new(Core {
            rx: Some(parts.rx),
            spool: parts.spool,
            chain: parts.chain,
            next_seq: parts.next_seq,
            on_full: parts.on_full,
            gateway: parts.gateway,
            counters: parts.counters,
            head: parts.head,
            crash_loss: parts.crash_loss,
            jobs: Vec::new(),
            shutdown: false,
            closed: false,
            since_checkpoint: 0,
            settle_at: None,
            records: Vec::new(),
            record_len: 1024,
            saved_prev: String::new(),
        }));
        if parts.fsync != FsyncPolicy::Always && parts.stall_after.is_none() {
            parts.queue.commit_inline_with(core.clone());
        }
        Writer {
            core,
            queue: parts.queue,
            fsync: parts.fsync,
            fsync_interval: parts.fsync_interval,
            checkpoint_interval: parts.checkpoint_interval,
            stall_after: parts.stall_after,
        }
    }

    pub fn run(self) {
        // However the thread ends, later pushes are refused and waiters left behind get 503.
        let _close = CloseOnExit(&self.core);
        let mut last_sync = Instant::now();
        // "interval": a thread of its own fsyncs, so no commit waits for the disk (a disk
        // spool only; otherwise, or if the thread cannot start, here between commits).
        let background_sync = self.fsync == FsyncPolicy::Interval
            && lock(&self.core)
                .spool
                .sync_in_background(self.fsync_interval);
        let mut last_checkpoint = Instant::now();
        let mut dropped_at_checkpoint = lock(&self.core).counters.dropped.load(Ordering::Relaxed);
        let mut stop = false;
        // The last round committed events: more are likely, drain on the tick.
        let mut busy = false;
        while !stop {
            if let Some(n) = self.stall_after
                && lock(&self.core).counters.written.load(Ordering::Relaxed) >= n
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
            {
                let core = lock(&self.core);
                if let Some(at) = core.settle_at {
                    wait = wait.min(at.saturating_duration_since(now));
                }
                // Record the previous run's loss now, not with the next event; and take what
                // a request thread handed over at once.
                if core.crash_loss.is_some() || !core.jobs.is_empty() || core.shutdown {
                    wait = Duration::ZERO;
                }
            }
            self.wait(wait, busy);
            let mut core = lock(&self.core);
            stop = core.take_jobs(&self.queue, false);
            // Loss first: it explains the requests that were dropped before this batch.
            if let Some(loss) = core.pending_loss() {
                core.jobs.insert(0, loss);
            }
            // A crash of the previous run comes before everything else of this one.
            if let Some(count) = core.crash_loss.take() {
                let record = core.internal(loss(count, "crash", Some("at_most")), count);
                core.jobs.insert(0, record);
            }
            if last_checkpoint.elapsed() >= self.checkpoint_interval {
                last_checkpoint = Instant::now();
                let dropped = core.counters.dropped.load(Ordering::Relaxed);
                let checkpoint = EventBody::Checkpoint(Checkpoint {
                    head_seq: core.next_seq.saturating_sub(1),
                    head_hash: core.chain.prev().to_owned(),
                    events_since_last: core.since_checkpoint,
                    dropped_since_last: dropped - dropped_at_checkpoint,
                });
                dropped_at_checkpoint = dropped;
                core.since_checkpoint = 0;
                let record = core.internal(checkpoint, 0);
                core.jobs.push(record);
            }
            busy = !core.jobs.is_empty();
            if busy {
                core.commit(&self.queue, false);
            }
            if let Some(at) = core.settle_at
                && (Instant::now() >= at || stop)
            {
                core.settle_at = if core.counters.tickets.drained() {
                    core.counters.tickets.settle();
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
                if let Err(err) = core.spool.sync() {
                    tracing::error!(error = %err, "Audit spool fsync failed.");
                }
                last_sync = Instant::now();
            }
        }
    }

    /// Park until a job is queued or `timers` (the next checkpoint, fsync or settle) run out.
    /// Busy: park one `TICK` at most, pushes do not wake. Idle: announce it, look once more,
    /// then park until a push or a timer.
    fn wait(&self, timers: Duration, busy: bool) {
        if self.queue.has_jobs() {
            return;
        }
        if busy {
            std::thread::park_timeout(timers.min(TICK));
            return;
        }
        self.queue.idle.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.queue.has_jobs() {
            std::thread::park_timeout(timers);
        }
        self.queue.idle.store(false, Ordering::SeqCst);
    }
}

/// Ends the pipeline with the writer thread, also when it panics: the queue's receiver is
/// dropped (pushes are refused, queued jobs dropped), and so are jobs left in the core; their
/// waiters get `AuditUnavailable` (503).
struct CloseOnExit<'a>(&'a Mutex<Core>);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        let mut core = lock(self.0);
        core.closed = true;
        core.rx = None;
        core.jobs.clear();
    }
}

impl Core {
    /// Take queued jobs into `jobs`, up to `MAX_BATCH`. `true` when the taken jobs must be
    /// committed by the writer thread: a shutdown (the writer stops after them), or, for an
    /// inline commit, a job that fsyncs.
    fn take_jobs(&mut self, queue: &Queue, inline: bool) -> bool {
        if self.shutdown {
            return true;
        }
        let Some(rx) = &self.rx else {
            return !inline;
        };
        while self.jobs.len() < MAX_BATCH {
            let Ok(job) = queue.take(rx) else {
                break;
            };
            match job.pending() {
                Some(p) => {
                    let fsyncs = p.sync;
                    self.jobs.push(p);
                    if fsyncs && inline {
                        return true;
                    }
                }
                None => {
                    self.shutdown = true;
                    return true;
                }
            }
        }
        false
    }

    /// A loss record for the events dropped since the last one (`commit` puts the count back
    /// if the record cannot be written).
    fn pending_loss(&mut self) -> Option<Pending> {
        let count = self.counters.loss_pending.swap(0, Ordering::Relaxed);
        (count > 0).then(|| self.internal(loss(count, "spool_full", None), 0))
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

    /// Seal and append `jobs`, complete their waiters. `inline`: on a request thread, which
    /// completes them itself, and never opens a segment (that waits for the disk).
    fn commit(&mut self, queue: &Queue, inline: bool) -> Committed {
        let mut records = std::mem::take(&mut self.records);
        let mut saved_prev = std::mem::take(&mut self.saved_prev);
        let outcome = self.commit_into(queue, inline, &mut records, &mut saved_prev);
        self.records = records;
        self.saved_prev = saved_prev;
        if outcome != Committed::HandedOver && self.settle_at.is_none() {
            self.settle_at = Some(Instant::now() + SETTLE);
        }
        outcome
    }

    fn commit_into(
        &mut self,
        queue: &Queue,
        inline: bool,
        records: &mut Vec<u8>,
        saved_prev: &mut String,
    ) -> Committed {
        records.clear();
        // The spool keeps the buffer as its in-memory tail (memory counted by capacity): sized
        // for this batch, grown only by a record longer than the last batch's longest (a large
        // role change does not make every later batch reserve that much per event: 1 MiB at most).
        records.reserve(self.jobs.len().saturating_mul(self.record_len).min(1 << 20));
        saved_prev.clear();
        saved_prev.push_str(self.chain.prev());
        let first = self.next_seq;
        let mut seq = first;
        let mut sync = false;
        let mut tickets = 0u64;
        let mut covers = 0u64;
        let mut longest = 0;
        for p in self.jobs.iter_mut() {
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
            longest = longest.max(records.len() - at);
            covers += p.covers;
            seq += 1;
        }
        if inline && seq > first && self.spool.needs_rotation(records.len() as u64) {
            self.chain.restore(saved_prev);
            return Committed::HandedOver;
        }
        let last = seq - 1;
        let result = if seq == first {
            Ok(())
        } else {
            self.record_len = longest;
            self.spool.append(first, last, std::mem::take(records))
        };
        let result = result.and_then(|()| if sync { self.spool.sync() } else { Ok(()) });
        let complete_all = |queue: &Queue, batch: Completions| {
            if inline {
                complete(batch);
            } else {
                queue.complete(batch);
            }
        };
        match result {
            Ok(()) => {
                self.next_seq = seq;
                self.since_checkpoint += seq - first;
                self.counters
                    .written
                    .fetch_add(seq - first, Ordering::Relaxed);
                // After the append: a crash in between overcounts, never undercounts.
                self.counters.tickets.settled(tickets + covers);
                self.head.send_replace(last);
                // Only a commit that opened a segment leaves one to remove: never inline.
                if !inline
                    && !self.spool.spool().has_readers()
                    && let Err(err) = self.spool.spool().release()
                {
                    tracing::error!(error = %err, "Cannot trim the audit spool.");
                }
                let done = self
                    .jobs
                    .drain(..)
                    .filter_map(|p| p.done.map(|d| (d, Ok(()))));
                complete_all(queue, done.collect());
                super::refresh_full(self.spool.spool(), &self.counters);
                Committed::Written
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
                for p in self.jobs.iter() {
                    if let EventBody::Loss(record) = &p.event.body {
                        // Not written: what it accounts for stays to be recorded.
                        if record.cause == "crash" {
                            self.crash_loss = Some(record.count);
                        } else {
                            self.counters
                                .loss_pending
                                .fetch_add(record.count, Ordering::Relaxed);
                        }
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
                let done = self.jobs.drain(..).filter_map(|p| {
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
                complete_all(queue, done.collect());
                Committed::NotWritten
            }
        }
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
