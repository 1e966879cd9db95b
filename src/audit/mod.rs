//! Audit pipeline (DESIGN.md §6): request path → writer (seq, hash chain, group commit) →
//! spool on disk → one worker per sink (batch, render, send, retry, advance cursor).
//!
//! The request path never awaits a sink. With `durability = "spooled"` it awaits only the
//! group-commit append of its own event (`AuditLog::record`); with `"buffered"` it awaits
//! nothing. When the spool cannot take an event, `on_full = "block"` answers
//! `AuditUnavailable` (the pipeline turns it into a 503) and `"drop"` serves, counts and
//! writes an `audit.loss` record as soon as there is room again.
//!
//! Sinks run on their own thread and runtime, so a slow SIEM cannot take worker time from
//! requests either.
//!
//! Shutdown (`AuditLog::shutdown`, also run on drop): the writer puts what is queued into the
//! spool and stops, then the sinks deliver up to the spool head within a deadline, without
//! waiting out `batch_wait`. What a sink could not deliver in time is logged; with a disk spool
//! it stays there for the next start, with an in-memory one it is lost.
//!
//! Events answered before they are written (`buffered`, sink failures) hold a crash-loss
//! ticket (`loss.rs`): after a crash that lost the queue, the restart writes an `audit.loss`
//! record with `cause = "crash"` and an upper bound of the lost events, which `audit verify`
//! reports.

pub mod event;
pub mod format;
mod loss;
pub mod sink;
pub mod spool;
pub mod text;
pub mod verify;
mod writer;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

pub use event::{
    AccessReview, AuditEvent, Checkpoint, ConfigReload, Decision, EventBody, Loss, RoleChange,
    SinkFailure, Text,
};
pub use sink::SinkStats;

use crate::config::{AllowEvents, AuditSettings, Durability, FsyncPolicy, OnFull, SecretSource};
use spool::{Spool, SpoolError, SpoolOptions};
pub use writer::commit_pending;
use writer::{Job, Queue, Writer, WriterParts};

/// Events waiting for the writer; beyond this the queue counts as full.
const QUEUE_CAPACITY: usize = 65_536;
/// Without `[audit.spool]`: an in-memory spool of this size.
const MEMORY_SPOOL: u64 = 64 << 20;
/// The spool counts as full when less than this is free (about ten events).
const FULL_MARGIN: u64 = 8 * 1024;
/// How long dropping an `AuditLog` lets the sinks deliver what is in the spool (`shutdown`
/// with this bound). The gateway's shutdown calls `shutdown` itself with `[limits]
/// shutdown_timeout`.
pub const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After the drain deadline, how long the sink thread gets to notice the stop (a file sink's
/// write cannot be interrupted) before it is left behind.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The audit pipeline cannot take an event: the spool is full or failing (`on_full =
/// "block"`), or the writer has stopped. The request must not be served unaudited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit spool cannot record the event")]
pub struct AuditUnavailable;

/// Could not start the audit pipeline.
#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot read the {what}: {reason}")]
    Secret { what: String, reason: String },
    #[error("audit sink `{sink}`: {reason}")]
    Sink { sink: String, reason: String },
    #[error("cannot start the audit {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Counters shared by the request path, the writer and the sinks.
pub(crate) struct Counters {
    /// Ticket counters of the crash-loss accounting (`loss.rs`).
    pub tickets: loss::Tickets,
    /// Events appended to the spool.
    pub written: AtomicU64,
    /// Events that never reached the spool (full queue or spool).
    pub dropped: AtomicU64,
    /// Of those, the ones whose request was refused (503).
    pub refused: AtomicU64,
    /// Dropped events not yet covered by an `audit.loss` record.
    pub loss_pending: AtomicU64,
    /// The spool has no room: `admit` refuses before the request is forwarded.
    pub full: AtomicBool,
}

impl Counters {
    pub fn new(tickets: loss::Tickets) -> Counters {
        Counters {
            tickets,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            loss_pending: AtomicU64::new(0),
            full: AtomicBool::new(false),
        }
    }
}

/// Offer this core to a thread waiting for it, between pieces of background audit work.
///
/// The sink thread shares cores with the request threads, and Linux's EEVDF scheduler lets a
/// running thread use up its slice (milliseconds) before a woken one gets the core, whatever
/// their nice values: a request that arrived while the sink wrote a 300 KB batch or unlinked a
/// 64 MiB segment waited that long. So background work goes in pieces far shorter than a
/// slice, with this call between them (benches/README.md, ninth session). It yields at most
/// once every `GIVE_WAY_EVERY` (wall clock); with nothing else runnable, `sched_yield`
/// returns at once.
pub(crate) fn give_way() {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    if LAST
        .get()
        .is_some_and(|last| now.duration_since(last) < GIVE_WAY_EVERY)
    {
        return;
    }
    std::thread::yield_now();
    LAST.set(Some(now));
}

/// How long background work runs at most before `give_way` yields.
const GIVE_WAY_EVERY: Duration = Duration::from_micros(100);

/// Bytes written after which the spool's background sync and the file sink sync before their
/// interval is up: one `fdatasync` of a whole interval's writeback held the core a request
/// thread shared for over a millisecond (`give_way`). More, smaller syncs only add durability.
pub(crate) const SYNC_EARLY_BYTES: u64 = 1 << 20;

pub(crate) fn refresh_full(spool: &Spool, counters: &Counters) {
    let full = spool.used().saturating_add(FULL_MARGIN) > spool.max_size();
    counters.full.store(full, Ordering::Relaxed);
}

/// A point-in-time view of the pipeline, for tests, metrics and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditStats {
    pub written: u64,
    pub dropped: u64,
    pub refused: u64,
    /// Last seq in the spool.
    pub head: u64,
    pub spool_bytes: u64,
    pub corrupt_skipped: u64,
    pub sinks: Vec<sink::SinkSnapshot>,
}

/// A sink that had not delivered everything in the spool when `AuditLog::shutdown` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub sink: String,
    /// Events between its cursor and the spool head.
    pub events: u64,
}

/// What `AuditLog::shutdown` left behind; empty when every sink delivered everything (or the
/// pipeline was already shut down).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    pub undelivered: Vec<Undelivered>,
}

/// The pipeline's threads, taken by the first `shutdown`.
struct Threads {
    writer: Option<JoinHandle<()>>,
    /// The sink thread and a channel that disconnects when it ends (a join with a deadline).
    sinks: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
}

/// Handle used by the request path.
pub struct AuditLog {
    queue: Arc<Queue>,
    durability: Durability,
    on_full: OnFull,
    allow_events: AllowEvents,
    allow_counter: AtomicU64,
    gateway: Arc<str>,
    counters: Arc<Counters>,
    spool: Arc<Spool>,
    sinks: Vec<Arc<SinkStats>>,
    /// Segments on disk: what the sinks leave at shutdown is delivered by the next start.
    durable: bool,
    phase: watch::Sender<sink::Phase>,
    threads: Mutex<Threads>,
}

/// Read a credential; its value is never logged or put in an error.
pub fn read_secret(source: &SecretSource, what: &str) -> Result<Vec<u8>, AuditSetupError> {
    let value = match source {
        SecretSource::Env(name) => std::env::var(name).map_err(|_| AuditSetupError::Secret {
            what: what.to_owned(),
            reason: format!("environment variable `{name}` is not set"),
        })?,
        SecretSource::File(path) => {
            std::fs::read_to_string(path).map_err(|err| AuditSetupError::Secret {
                what: what.to_owned(),
                reason: format!("`{}`: {err}", path.display()),
            })?
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(AuditSetupError::Secret {
            what: what.to_owned(),
            reason: "it is empty".into(),
        });
    }
    Ok(value.as_bytes().to_vec())
}

impl AuditLog {
    /// Open the spool (recovering `seq` and the chain head), start the writer and the sinks.
    pub fn start(settings: &AuditSettings) -> Result<AuditLog, AuditSetupError> {
        let names: Vec<String> = settings.sinks.iter().map(|s| s.name.clone()).collect();
        let (options, on_full, fsync) = match &settings.spool {
            Some(s) => (
                SpoolOptions {
                    dir: Some(s.dir.clone()),
                    max_size: s.max_size,
                    segment_size: s.segment_size,
                },
                s.on_full,
                s.fsync,
            ),
            None => (
                SpoolOptions {
                    dir: None,
                    max_size: MEMORY_SPOOL,
                    segment_size: 4 << 20,
                },
                OnFull::Block,
                FsyncPolicy::Never,
            ),
        };
        let key = settings
            .hmac_key
            .as_ref()
            .map(|k| read_secret(k, "audit HMAC key"))
            .transpose()?;
        let recovered = Spool::open(&options, &names)?;
        let (tickets, crash_loss) = loss::Tickets::open(options.dir.as_deref())?;
        let spool = recovered.spool.clone();
        let (prev, next_seq) = match &recovered.last {
            Some(record) => {
                let text = String::from_utf8_lossy(&record.payload);
                let prev = event::unseal(&text)
                    .map_or_else(|| event::GENESIS.to_owned(), |(_, h)| h.to_owned());
                (prev, record.seq + 1)
            }
            None => (event::GENESIS.to_owned(), 1),
        };
        let gateway: Arc<str> = settings.gateway_name.as_str().into();
        let counters = Arc::new(Counters::new(tickets));
        refresh_full(&spool, &counters);
        let (queue, rx) = Queue::new(QUEUE_CAPACITY);
        let (head_tx, head_rx) = watch::channel(next_seq - 1);
        let (phase_tx, phase_rx) = watch::channel(sink::Phase::Run);

        let mut workers = Vec::new();
        let mut stats = Vec::new();
        for s in &settings.sinks {
            let sink = sink::Sink::build(
                s,
                options.dir.as_deref(),
                sink::file_sync_interval(fsync, settings.fsync_interval),
            )?;
            let st = Arc::new(SinkStats::new(&s.name, spool.cursor(&s.name)));
            stats.push(st.clone());
            workers.push(sink::Worker {
                sink,
                settings: s.clone(),
                spool: spool.clone(),
                head: head_rx.clone(),
                phase: phase_rx.clone(),
                stats: st,
                emitter: sink::Emitter {
                    queue: queue.clone(),
                    gateway: gateway.clone(),
                    counters: counters.clone(),
                },
                counters: counters.clone(),
                dead_letter: options.dir.as_ref().map(|d| d.join("dead-letter")),
                unacked: sink::Unacked::default(),
            });
        }

        let writer = Writer::new(WriterParts {
            rx,
            queue: queue.clone(),
            spool: recovered.writer,
            chain: event::Chain::new(prev, key),
            next_seq,
            on_full,
            fsync,
            fsync_interval: settings.fsync_interval,
            checkpoint_interval: settings.checkpoint_interval,
            gateway: gateway.clone(),
            counters: counters.clone(),
            head: head_tx,
            crash_loss: crash_loss.map(|l| l.count),
            stall_after: writer::stall_after(),
        });
        let writer = std::thread::Builder::new()
            .name("portcullis-audit-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| AuditSetupError::Thread {
                what: "writer",
                source,
            })?;
        queue.set_writer(writer.thread().clone());
        let sinks = if workers.is_empty() {
            None
        } else {
            let (ended, ended_rx) = mpsc::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("portcullis-audit-sinks".into())
                .spawn(move || {
                    // Dropped when the workers are done (or on a panic): `shutdown` sees the
                    // channel disconnect.
                    let _ended = ended;
                    sink::run_workers(workers);
                })
                .map_err(|source| AuditSetupError::Thread {
                    what: "sink",
                    source,
                })?;
            Some((thread, ended_rx))
        };
        Ok(AuditLog {
            queue,
            durability: settings.durability,
            on_full,
            allow_events: settings.allow_events,
            allow_counter: AtomicU64::new(0),
            gateway,
            counters,
            spool,
            sinks: stats,
            durable: options.dir.is_some(),
            phase: phase_tx,
            threads: Mutex::new(Threads {
                writer: Some(writer),
                sinks,
            }),
        })
    }

    pub fn gateway(&self) -> Arc<str> {
        self.gateway.clone()
    }

    /// Whether an allow should be audited (denies always are); decided before the event is built.
    pub fn wants_allow(&self) -> bool {
        match self.allow_events {
            AllowEvents::All => true,
            AllowEvents::None => false,
            AllowEvents::Sample(rate) => {
                let n = self.allow_counter.fetch_add(1, Ordering::Relaxed);
                let every = (1.0 / rate).round().max(1.0) as u64;
                n.is_multiple_of(every)
            }
        }
    }

    /// Before forwarding: refuse when the spool is known to be full and `on_full = "block"`,
    /// so the upstream never sees a request whose event could not be written.
    pub fn admit(&self) -> Result<(), AuditUnavailable> {
        if self.on_full == OnFull::Block && self.counters.full.load(Ordering::Relaxed) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AuditUnavailable);
        }
        Ok(())
    }

    /// Record an event. Resolves once it is in the spool (`spooled`), or at once (`buffered`).
    /// Never waits for a sink.
    pub fn record(
        &self,
        body: EventBody,
    ) -> impl Future<Output = Result<(), AuditUnavailable>> + Send + 'static {
        let wait = self.durability == Durability::Spooled;
        self.submit(body, wait, false)
    }

    /// Record a role change: always waits for the append and an fsync, and fails whatever
    /// `on_full` says, so a grant change never commits unaudited.
    pub fn record_role_change(
        &self,
        change: RoleChange,
    ) -> impl Future<Output = Result<(), AuditUnavailable>> + Send + 'static {
        self.submit(EventBody::RoleChange(change), true, true)
    }

    /// Record that an access review was taken: like a role change, waits for the append and
    /// an fsync and fails whatever `on_full` says, so no review is handed out unaudited.
    pub fn record_access_review(
        &self,
        review: AccessReview,
    ) -> impl Future<Output = Result<(), AuditUnavailable>> + Send + 'static {
        self.submit(EventBody::AccessReview(review), true, true)
    }

    /// Record a configuration load or reload.
    pub fn record_config_reload(
        &self,
        source: &str,
        text: &str,
        applied: bool,
        errors: usize,
    ) -> impl Future<Output = Result<(), AuditUnavailable>> + Send + 'static {
        use sha2::Digest;
        self.record(EventBody::ConfigReload(ConfigReload {
            source: source.to_owned(),
            sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
            outcome: if applied { "applied" } else { "rejected" },
            errors,
        }))
    }

    fn submit(
        &self,
        body: EventBody,
        wait: bool,
        sync: bool,
    ) -> impl Future<Output = Result<(), AuditUnavailable>> + Send + 'static {
        let critical = sync;
        let event = Box::new(AuditEvent::new(self.gateway.clone(), body));
        let (done, rx) = if wait {
            self.queue.ensure_completer();
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // Answered before it is written: take a ticket so a crash that loses it is counted.
        let ticket = !wait;
        if ticket {
            self.counters.tickets.issue();
        }
        let immediate = match self.queue.push(
            Job::Event {
                event,
                done,
                sync,
                ticket,
            },
            wait,
        ) {
            Ok(()) => None,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if ticket {
                    self.counters.tickets.hand_back();
                }
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if self.on_full == OnFull::Drop && !critical {
                    self.counters.loss_pending.fetch_add(1, Ordering::Relaxed);
                    Some(Ok(()))
                } else {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    Some(Err(AuditUnavailable))
                }
            }
        };
        async move {
            if let Some(outcome) = immediate {
                return outcome;
            }
            match rx {
                Some(rx) => rx.await.unwrap_or(Err(AuditUnavailable)),
                None => Ok(()),
            }
        }
    }

    /// Events that never reached the spool.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            head: self.spool.head(),
            spool_bytes: self.spool.used(),
            corrupt_skipped: self.spool.corrupt_skipped(),
            sinks: self.sinks.iter().map(|s| s.snapshot()).collect(),
        }
    }
}

impl AuditLog {
    /// Stop the pipeline without losing what it accepted: the writer appends everything
    /// queued to the spool and stops; then every sink delivers up to the spool head (a
    /// `batch_wait` in progress ends at once) for at most `within`, after which the sinks are
    /// stopped. Blocks the calling thread (from async code, call it on a blocking thread).
    ///
    /// What a sink could not deliver in time (its SIEM is down) is logged and reported; with a
    /// disk spool it stays there and is delivered after the next start. Events recorded after
    /// this are refused (`AuditUnavailable`). Later calls, and the drop, do nothing more.
    pub fn shutdown(&self, within: Duration) -> ShutdownReport {
        let (writer, sinks) = {
            let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
            (threads.writer.take(), threads.sinks.take())
        };
        let Some(writer) = writer else {
            return ShutdownReport::default();
        };
        // A full queue is being drained by the writer: retry for a while rather than leave it
        // running (the join below would wait for it).
        let mut job = Job::Shutdown;
        for _ in 0..1000 {
            match self.queue.push_now(job) {
                Err(TrySendError::Full(back)) => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(()) | Err(TrySendError::Disconnected(_)) => break,
            }
        }
        // The writer stops within one poll, after appending (and fsyncing) what was queued
        // before the shutdown job: from here on the spool head is final.
        let _ = writer.join();
        let Some((thread, ended)) = sinks else {
            return ShutdownReport::default();
        };
        let deadline = Instant::now() + within;
        let _ = self.phase.send(sink::Phase::Drain);
        let done = |wait: Duration| {
            matches!(
                ended.recv_timeout(wait),
                Ok(()) | Err(RecvTimeoutError::Disconnected)
            )
        };
        let mut ended_in_time = done(deadline.saturating_duration_since(Instant::now()));
        if !ended_in_time {
            let _ = self.phase.send(sink::Phase::Stop);
            ended_in_time = done(STOP_GRACE);
        }
        if ended_in_time {
            let _ = thread.join();
        } else {
            tracing::warn!("The audit sink thread did not stop in time; leaving it behind.");
        }
        let head = self.spool.head();
        let undelivered: Vec<Undelivered> = self
            .sinks
            .iter()
            .map(|s| Undelivered {
                sink: s.name.clone(),
                events: head.saturating_sub(self.spool.cursor(&s.name)),
            })
            .filter(|u| u.events > 0)
            .collect();
        for u in &undelivered {
            if self.durable {
                tracing::error!(sink = %u.sink, undelivered = u.events, timeout = ?within, "Audit events not delivered before shutdown; they stay in the spool and are delivered after the next start.");
            } else {
                tracing::error!(sink = %u.sink, undelivered = u.events, timeout = ?within, "Audit events not delivered before shutdown; the spool is in memory, so they are lost.");
            }
        }
        ShutdownReport { undelivered }
    }
}

impl Drop for AuditLog {
    /// `shutdown(DROP_DRAIN_TIMEOUT)` unless it already ran: blocks for up to that long (plus
    /// `STOP_GRACE`) while a sink cannot deliver.
    fn drop(&mut self) {
        self.shutdown(DROP_DRAIN_TIMEOUT);
    }
}

#[cfg(test)]
mod tests;
