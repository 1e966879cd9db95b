//! Sinks: one worker per sink reads the spool from its cursor, sends batches, retries with
//! exponential backoff and full jitter, and advances the cursor only after the receiver
//! acknowledged (what "acknowledged" means is per protocol; see each sink). A sink whose send
//! only writes (`file`) is acknowledged after its `sync`, which the worker calls at most every
//! `Sink::sync_interval` while events flow, when it goes idle, and before it ends.
//!
//! Shutdown (`Phase`): once the writer has put its last events into the spool, the workers
//! are told to drain: no more waiting for a batch to fill, deliver up to the (now final) spool
//! head, then end. `AuditLog::shutdown` bounds the drain and then tells them to stop, which
//! abandons a send in flight; with a disk spool what was not acknowledged stays for the next
//! start.
//!
//! The set of sinks is closed (`Sink` enum, like `Authenticator`): a match is clearer than
//! `dyn` and maps one-to-one onto `[[audit.sinks]] type`.

mod file;
mod http;
mod syslog;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::event::{AuditEvent, EventBody, SinkFailure};
use super::spool::{Record, Spool, SpoolReader};
use super::writer::Job;
use super::{AuditSetupError, Counters};
use crate::config::{SinkKind, SinkSettings, TlsClientSettings};

pub(crate) use file::sync_interval as file_sync_interval;
pub use http::classify_hec;

/// Bytes read from the spool per batch at most (on top of `batch_size`).
const BATCH_BYTES: usize = 4 << 20;
/// A file sink with a backlog takes up to this many batches per read.
const FILE_GROUP: usize = 16;
/// While a batch fills (up to `batch_wait`), how often the worker looks for new events.
const FILL_POLL: Duration = Duration::from_millis(10);

/// What the workers are to do; sent by `AuditLog::shutdown` (a `watch`, so a worker sees the
/// latest phase whatever it was doing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving: a partial batch waits up to `batch_wait` for more events.
    Run,
    /// The writer has stopped and the spool head is final: deliver everything up to it
    /// without waiting for batches to fill (a wait in progress ends now), then end.
    Drain,
    /// The drain deadline passed: end now, abandoning a send in flight.
    Stop,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot connect to `{address}`: {reason}")]
    Connect { address: String, reason: String },
    #[error("request timed out")]
    Timeout,
    #[error("receiver answered {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// Splunk HEC error body (also on HTTP 200).
    #[error("HEC answered {status} code {code}: {text}")]
    Hec {
        status: u16,
        code: i64,
        text: String,
    },
    /// The receiver refused the data itself; resending cannot help (dead-letter).
    #[error("receiver rejected the events: {0}")]
    Rejected(String),
    /// 413: the batch must be split.
    #[error("batch too large for the receiver")]
    TooLarge,
}

impl SinkError {
    /// The retry classifier (Vector's `RetryLogic`). Configuration errors (bad token, wrong
    /// URL) are retried at the backoff cap rather than dropped: fixing the config then
    /// delivers the backlog. Only data the receiver refuses is dead-lettered.
    pub fn is_retriable(&self) -> bool {
        match self {
            SinkError::Io(_) | SinkError::Connect { .. } | SinkError::Timeout => true,
            SinkError::Status { status, .. } => *status != 400 && *status != 422,
            SinkError::Hec { code, .. } => !matches!(code, 5 | 6 | 12 | 13 | 15),
            SinkError::Rejected(_) | SinkError::TooLarge => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What a successful send reports: indexes (into the batch) of events the receiver refused
/// individually (ES items with 4xx); the rest are delivered.
pub type Rejected = Vec<usize>;

/// Per-sink counters.
#[derive(Debug)]
pub struct SinkStats {
    pub name: String,
    /// Last seq acknowledged by the receiver (the cursor).
    pub cursor: AtomicU64,
    pub delivered: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// A copy of `SinkStats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub name: String,
    pub cursor: u64,
    pub delivered: u64,
    pub batches: u64,
    pub retries: u64,
    pub failures: u64,
    pub dead_lettered: u64,
}

impl SinkStats {
    pub fn new(name: &str, cursor: u64) -> SinkStats {
        SinkStats {
            name: name.to_owned(),
            cursor: AtomicU64::new(cursor),
            delivered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> SinkSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkSnapshot {
            name: self.name.clone(),
            cursor: get(&self.cursor),
            delivered: get(&self.delivered),
            batches: get(&self.batches),
            retries: get(&self.retries),
            failures: get(&self.failures),
            dead_lettered: get(&self.dead_lettered),
        }
    }
}

/// Lets a sink put its own `audit.sink_failure` events into the pipeline (never waits).
/// They take no crash-loss ticket: tickets count answered requests whose events a crash may
/// lose (`loss.rs`), and a sink failure lost in a crash is no such promise (the failing sink
/// reports again after the restart). With a ticket, a kill within the settle window of one
/// would put an `audit.loss` record into a spooled run that lost nothing.
pub(crate) struct Emitter {
    pub queue: Arc<super::writer::Queue>,
    pub gateway: Arc<str>,
    pub counters: Arc<Counters>,
}

impl Emitter {
    fn emit(&self, body: EventBody) {
        let event = Box::new(AuditEvent::new(self.gateway.clone(), body));
        let sent = self.queue.push(
            Job::Event {
                event,
                done: None,
                sync: false,
                ticket: false,
            },
            false,
        );
        if sent.is_err() {
            // Not silently: counted, and covered by the next `audit.loss` record.
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.counters.loss_pending.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The closed set of sinks.
pub(crate) enum Sink {
    File(file::FileSink),
    Stdout(file::StdoutSink),
    Syslog(Box<syslog::SyslogSink>),
    Http(Box<http::HttpSink>),
}

impl Sink {
    /// `file_sync_interval`: how often a file sink syncs and acknowledges while events flow
    /// (from the spool's fsync policy: `file_sync_interval()`).
    pub fn build(
        settings: &SinkSettings,
        _spool_dir: Option<&Path>,
        file_sync_interval: Duration,
    ) -> Result<Sink, AuditSetupError> {
        let err = |reason: String| AuditSetupError::Sink {
            sink: settings.name.clone(),
            reason,
        };
        Ok(match &settings.kind {
            SinkKind::Stdout => Sink::Stdout(file::StdoutSink::new(settings.format)),
            SinkKind::File {
                path,
                max_size,
                max_files,
            } => Sink::File(
                file::FileSink::open(
                    path,
                    *max_size,
                    *max_files,
                    settings.format,
                    settings.batch_size,
                    file_sync_interval,
                )
                .map_err(|e| err(format!("cannot open `{}`: {e}", path.display())))?,
            ),
            SinkKind::Syslog { .. } => {
                Sink::Syslog(Box::new(syslog::SyslogSink::new(settings).map_err(err)?))
            }
            SinkKind::SplunkHec { .. } | SinkKind::Http { .. } | SinkKind::Elasticsearch { .. } => {
                Sink::Http(Box::new(http::HttpSink::new(settings)?))
            }
        })
    }

    async fn send(&mut self, batch: &[Record]) -> Result<Rejected, SinkError> {
        match self {
            Sink::File(s) => s.send(batch).map(|()| Vec::new()),
            Sink::Stdout(s) => s.send(batch).map(|()| Vec::new()),
            Sink::Syslog(s) => s.send(batch).await.map(|()| Vec::new()),
            Sink::Http(s) => s.send(batch).await,
        }
    }

    /// `None`: a successful send is acknowledged at once (the receiver has the events).
    /// `Some(d)`: a send only writes; the events are acknowledged after `sync`, which the
    /// worker calls at most every `d` while events flow (`Duration::ZERO`: after every send).
    fn sync_interval(&self) -> Option<Duration> {
        match self {
            Sink::File(s) => Some(s.sync_interval()),
            Sink::Stdout(_) | Sink::Syslog(_) | Sink::Http(_) => None,
        }
    }

    /// Enough was written since the last sync to sync before the interval is up.
    fn sync_early(&self) -> bool {
        match self {
            Sink::File(s) => s.sync_early(),
            Sink::Stdout(_) | Sink::Syslog(_) | Sink::Http(_) => false,
        }
    }

    /// Make what the sends wrote durable (only for sinks with a `sync_interval`).
    fn sync(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::File(s) => s.sync(),
            Sink::Stdout(_) | Sink::Syslog(_) | Sink::Http(_) => Ok(()),
        }
    }

    /// Events to read per delivery: a file sink takes several batches at once.
    fn read_size(&self, batch_size: usize) -> usize {
        match self {
            Sink::File(_) => batch_size.saturating_mul(FILE_GROUP),
            _ => batch_size,
        }
    }
}

/// Everything one sink's worker needs.
pub(crate) struct Worker {
    pub sink: Sink,
    pub settings: SinkSettings,
    pub spool: Arc<Spool>,
    pub head: watch::Receiver<u64>,
    pub phase: watch::Receiver<Phase>,
    pub stats: Arc<SinkStats>,
    pub emitter: Emitter,
    pub counters: Arc<Counters>,
    pub dead_letter: Option<PathBuf>,
    pub unacked: Unacked,
}

/// For a sink with a `sync_interval`: what is delivered but not yet synced and acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    /// The highest delivered seq not yet acknowledged.
    seq: Option<u64>,
    /// The last successful sync; `None` before the first (the first is due at once).
    synced_at: Option<Instant>,
    /// Failed syncs in a row (backoff).
    failures: u32,
}

/// Run every worker on one current-thread runtime until each has drained or been stopped
/// (`Phase`).
pub(crate) fn run_workers(workers: Vec<Worker>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "Cannot start the audit sink runtime; events stay in the spool.");
            return;
        }
    };
    runtime.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for worker in workers {
            set.spawn(worker.run());
        }
        while set.join_next().await.is_some() {}
    });
}

/// Full-jitter exponential backoff: uniform in [0, min(max, initial * 2^attempt)].
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = initial
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(nanos / 2..=nanos.max(1)))
}

impl Worker {
    async fn run(mut self) {
        let mut reader = self.spool.reader(&self.settings.name);
        self.serve(&mut reader).await;
        // Drained, stopped or orphaned: make what was delivered durable and acknowledge it,
        // so that the next start does not send it again.
        if let Err(err) = self.settle(true) {
            tracing::error!(sink = %self.settings.name, error = %err, "Audit sink sync failed at shutdown; the unacknowledged events are resent after the next start.");
        }
    }

    async fn serve(&mut self, reader: &mut SpoolReader) {
        let name = self.settings.name.clone();
        loop {
            let phase = *self.phase.borrow_and_update();
            if phase == Phase::Stop {
                return;
            }
            let want = self.sink.read_size(self.settings.batch_size);
            let mut batch =
                match reader.read(want, BATCH_BYTES * (want / self.settings.batch_size.max(1))) {
                    Ok(batch) => batch,
                    Err(err) => {
                        tracing::error!(sink = %name, error = %err, "Cannot read the audit spool.");
                        if self.pause(Duration::from_secs(1)).await {
                            return;
                        }
                        continue;
                    }
                };
            if batch.is_empty() {
                if phase == Phase::Drain {
                    // Caught up with the final head: everything is delivered.
                    return;
                }
                // Idle with events delivered but not acknowledged: sync them when due rather
                // than with the next event, which may be long in coming.
                let due = self.sync_due();
                tokio::select! {
                    changed = self.head.changed() => if changed.is_err() {
                        // The writer has stopped: the drain (or the stop) comes next.
                        if self.phase.changed().await.is_err() {
                            return;
                        }
                    },
                    changed = self.phase.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                        if let Err(err) = self.settle(true)
                            && self.sync_failed(err, reader).await
                        {
                            return;
                        }
                    }
                }
                continue;
            }
            if batch.len() < self.settings.batch_size && phase == Phase::Run {
                // A sync coming due ends the wait: the batch goes out and the sync follows.
                let mut deadline = Instant::now() + self.settings.batch_wait;
                if let Some(due) = self.sync_due() {
                    deadline = deadline.min(due);
                }
                let mut read_up_to = batch.last().map_or(0, |r| r.seq);
                while batch.len() < self.settings.batch_size {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    // Poll the head instead of waking on every commit: at moderate rates the
                    // writer commits per request, and a wake (plus a spool read) per event
                    // cost more CPU than the event itself.
                    tokio::select! {
                        () = tokio::time::sleep_until((now + FILL_POLL).min(deadline)) => {}
                        changed = self.phase.changed() => {
                            if changed.is_err() || *self.phase.borrow() == Phase::Stop {
                                return;
                            }
                            // Draining: send what there is now; the loop reads the rest
                            // without waiting.
                            break;
                        }
                    }
                    if *self.head.borrow() <= read_up_to {
                        continue;
                    }
                    match reader.read(self.settings.batch_size - batch.len(), BATCH_BYTES) {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                    read_up_to = batch.last().map_or(read_up_to, |r| r.seq);
                }
            }
            if self.deliver(&batch).await {
                return;
            }
            // Before the next read and the sync: pieces, not one long run (`give_way`).
            super::give_way();
            let last = batch.last().map_or(0, |r| r.seq);
            if self.sink.sync_interval().is_none() {
                self.ack(last);
                continue;
            }
            // INVARIANT: acknowledged only by `settle`, after a successful sync.
            self.unacked.seq = Some(last);
            if let Err(err) = self.settle(false)
                && self.sync_failed(err, reader).await
            {
                return;
            }
        }
    }

    /// Advance the cursor to `seq`: persist it, release the segments every cursor is past.
    fn ack(&self, seq: u64) {
        let name = &self.settings.name;
        if let Err(err) = self.spool.ack(name, seq) {
            tracing::error!(sink = %name, error = %err, "Cannot persist the sink cursor; events may be resent after a restart.");
        }
        self.stats.cursor.store(seq, Ordering::Relaxed);
        super::refresh_full(&self.spool, &self.counters);
    }

    /// When the delivered but unacknowledged events are to be synced; `None` when there are
    /// none (or the sink acknowledges on send).
    fn sync_due(&self) -> Option<Instant> {
        self.unacked.seq?;
        let interval = self.sink.sync_interval()?;
        Some(
            self.unacked
                .synced_at
                .map_or_else(Instant::now, |at| at + interval),
        )
    }

    /// If due (or `force`, or enough is written: `Sink::sync_early`), sync the sink and then
    /// acknowledge the highest delivered seq.
    /// On an error nothing is acknowledged; see `sync_failed`.
    fn settle(&mut self, force: bool) -> Result<(), SinkError> {
        let (Some(seq), Some(due)) = (self.unacked.seq, self.sync_due()) else {
            return Ok(());
        };
        if !force && Instant::now() < due && !self.sink.sync_early() {
            return Ok(());
        }
        self.sink.sync()?;
        self.unacked = Unacked {
            seq: None,
            synced_at: Some(Instant::now()),
            failures: 0,
        };
        self.ack(seq);
        Ok(())
    }

    /// Audit a retriable failure, with how many events wait behind it.
    fn report_retriable(&self, err: &SinkError) {
        self.report(EventBody::SinkFailure(SinkFailure {
            sink: self.settings.name.clone(),
            error: err.to_string(),
            retriable: true,
            pending: self
                .spool
                .head()
                .saturating_sub(self.spool.cursor(&self.settings.name)),
        }));
    }

    /// A sync failed: what was written since the last acknowledgement may not be on disk
    /// (after a failed fdatasync the kernel may drop the dirty pages), so read again from the
    /// cursor and resend it, after a backoff. Duplicates are allowed, loss is not. True when
    /// stopped meanwhile.
    async fn sync_failed(&mut self, err: SinkError, reader: &mut SpoolReader) -> bool {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        if self.unacked.failures == 0 {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sink = %self.settings.name, error = %err, "Audit sink sync failed; resending from the cursor with backoff.");
            self.report_retriable(&err);
        }
        let wait = backoff(
            self.settings.retry_initial,
            self.settings.retry_max,
            self.unacked.failures,
        );
        self.unacked.seq = None;
        self.unacked.failures = self.unacked.failures.saturating_add(1);
        reader.rewind(self.spool.cursor(&self.settings.name));
        self.pause(wait).await
    }

    /// Sleep unless stopped; returns true when stopped. The start of the drain ends the
    /// sleep early (a retry is due at once, with the shutdown deadline running).
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            changed = self.phase.changed() => {
                changed.is_err() || *self.phase.borrow() == Phase::Stop
            }
        }
    }

    /// Send `batch` until it is delivered or dead-lettered; true when stopped meanwhile.
    async fn deliver(&mut self, batch: &[Record]) -> bool {
        let mut pending: Vec<&[Record]> = vec![batch];
        let mut attempt = 0u32;
        let mut reported = false;
        while let Some(part) = pending.pop() {
            loop {
                // The drain lets a send in flight finish; only the stop abandons it.
                let sent = {
                    let send = self.sink.send(part);
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            sent = &mut send => break sent,
                            changed = self.phase.changed() => {
                                if changed.is_err() || *self.phase.borrow() == Phase::Stop {
                                    return true;
                                }
                            }
                        }
                    }
                };
                match sent {
                    Ok(rejected) => {
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .delivered
                            .fetch_add((part.len() - rejected.len()) as u64, Ordering::Relaxed);
                        if !rejected.is_empty() {
                            let refused: Vec<&Record> =
                                rejected.iter().filter_map(|i| part.get(*i)).collect();
                            self.dead_letter(&refused, "receiver rejected the event");
                        }
                        if reported {
                            tracing::info!(sink = %self.settings.name, "Audit sink recovered.");
                        }
                        attempt = 0;
                        reported = false;
                        break;
                    }
                    Err(SinkError::TooLarge) if part.len() > 1 => {
                        let (a, b) = part.split_at(part.len() / 2);
                        pending.push(b);
                        pending.push(a);
                        break;
                    }
                    Err(err) if err.is_retriable() => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        if !reported {
                            reported = true;
                            self.stats.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(sink = %self.settings.name, error = %err, "Audit sink failing; retrying with backoff.");
                            self.report_retriable(&err);
                        }
                        let wait = err.retry_after().unwrap_or_else(|| {
                            backoff(
                                self.settings.retry_initial,
                                self.settings.retry_max,
                                attempt,
                            )
                        });
                        attempt = attempt.saturating_add(1);
                        if self.pause(wait).await {
                            return true;
                        }
                    }
                    Err(err) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(sink = %self.settings.name, error = %err, "Audit sink rejected a batch; dead-lettered.");
                        self.report(EventBody::SinkFailure(SinkFailure {
                            sink: self.settings.name.clone(),
                            error: err.to_string(),
                            retriable: false,
                            pending: 0,
                        }));
                        let all: Vec<&Record> = part.iter().collect();
                        self.dead_letter(&all, "batch rejected");
                        break;
                    }
                }
            }
        }
        false
    }

    /// Audit a sink failure, unless shutting down: the writer has stopped then, and the
    /// failure is logged (and, with a disk spool, reported again by the next run).
    fn report(&self, body: EventBody) {
        if *self.phase.borrow() == Phase::Run {
            self.emitter.emit(body);
        }
    }

    /// Keep refused events next to the spool (`dead-letter/<sink>.jsonl`) and count them.
    /// Counted once written, so a reader who sees the count also finds the file.
    fn dead_letter(&self, records: &[&Record], why: &str) {
        tracing::error!(sink = %self.settings.name, count = records.len(), reason = why, "Audit events dead-lettered.");
        let count = || {
            self.stats
                .dead_lettered
                .fetch_add(records.len() as u64, Ordering::Relaxed)
        };
        let Some(dir) = &self.dead_letter else {
            count();
            return;
        };
        let path = dir.join(format!("{}.jsonl", self.settings.name));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            for r in records {
                f.write_all(&r.payload)?;
                f.write_all(b"\n")?;
            }
            f.sync_data()
        };
        if let Err(err) = write() {
            tracing::error!(path = %path.display(), error = %err, "Cannot write the dead-letter file.");
        }
        count();
    }
}

/// A rustls client config: roots from `ca_file` or the system, optional client certificate.
pub(crate) fn tls_config(
    tls: &TlsClientSettings,
    alpn_http1: bool,
) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("bad certificate in `{}`: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in `{}`: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read `{}`: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad certificate in `{}`: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read key `{}`: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    if alpn_http1 {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
