//! Audit events: one per decision, written off the request path.
//!
//! The request path builds an `AuditEvent` and hands it to `AuditLog::emit`, which never
//! blocks: a bounded queue feeds a writer thread that numbers events (`seq`), encodes them as
//! JSON lines and writes each batch to every sink with one write and one flush. A full queue
//! drops the event and counts it (`dropped()`); the SIEM pipeline issue replaces this with a
//! durable spool.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{AllowEvents, AuditSettings, SinkSettings};

/// Events waiting for the writer; beyond this the request path drops and counts.
const QUEUE_CAPACITY: usize = 65_536;
/// Events encoded per write.
const BATCH: usize = 1024;

/// The canonical decision event (DESIGN.md §6). `seq` is assigned by the writer.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub id: String,
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `allow`, `deny` or `error` (the gateway could not decide: 400, 503, 502, ...).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub required: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub roles: Vec<String>,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub status: u16,
    pub client_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub request_id: String,
    pub latency_us: u64,
    pub mode: &'static str,
    pub gateway: Arc<str>,
}

impl AuditEvent {
    /// A fresh `authz.decision` event with id and time set; the pipeline fills the rest.
    pub fn decision(gateway: Arc<str>) -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            seq: 0,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            kind: "authz.decision",
            decision: "deny",
            reason: None,
            required: Vec::new(),
            tenant: None,
            subject: None,
            roles: Vec::new(),
            method: String::new(),
            path: String::new(),
            route: None,
            upstream: None,
            status: 0,
            client_ip: String::new(),
            user_agent: None,
            request_id: String::new(),
            latency_us: 0,
            mode: "enforce",
            gateway,
        }
    }
}

/// Could not open a sink at startup.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit file `{path}`: {source}")]
pub struct AuditSetupError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Handle used by the request path.
pub struct AuditLog {
    tx: Option<SyncSender<AuditEvent>>,
    allow_events: AllowEvents,
    allow_counter: AtomicU64,
    dropped: AtomicU64,
    gateway: Arc<str>,
}

impl AuditLog {
    /// Open the sinks and start the writer thread. With no sinks, events are discarded.
    pub fn start(settings: &AuditSettings) -> Result<AuditLog, AuditSetupError> {
        let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
        for sink in &settings.sinks {
            match sink {
                SinkSettings::Stdout { .. } => sinks.push(Box::new(std::io::stdout())),
                SinkSettings::File { path, .. } => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| AuditSetupError {
                            path: path.display().to_string(),
                            source,
                        })?;
                    sinks.push(Box::new(file));
                }
            }
        }
        let tx = if sinks.is_empty() {
            None
        } else {
            let (tx, rx) = sync_channel(QUEUE_CAPACITY);
            std::thread::Builder::new()
                .name("portcullis-audit".into())
                .spawn(move || write_loop(rx, sinks))
                .map_err(|source| AuditSetupError {
                    path: "<writer thread>".into(),
                    source,
                })?;
            Some(tx)
        };
        Ok(AuditLog {
            tx,
            allow_events: settings.allow_events,
            allow_counter: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            gateway: settings.gateway_name.as_str().into(),
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

    /// Queue an event; never blocks. A full queue drops and counts it.
    pub fn emit(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events dropped because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(rx: Receiver<AuditEvent>, mut sinks: Vec<Box<dyn Write + Send>>) {
    let mut seq: u64 = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        buf.clear();
        let mut next = Some(first);
        let mut n = 0;
        while let Some(mut event) = next.take() {
            seq += 1;
            event.seq = seq;
            if serde_json::to_writer(&mut buf, &event).is_ok() {
                buf.push(b'\n');
            }
            n += 1;
            if n < BATCH {
                next = rx.try_recv().ok();
            }
        }
        for sink in &mut sinks {
            if let Err(err) = sink.write_all(&buf).and_then(|()| sink.flush()) {
                tracing::error!(error = %err, "Audit sink write failed.");
            }
        }
    }
}
