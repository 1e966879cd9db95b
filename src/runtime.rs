//! The live gateway and hot reload (STYLE §2.6).
//!
//! `Runtime` publishes the current `Gateway` generation through an `ArcSwap`. Every request
//! loads it exactly once (in `proxy::server`), so an in-flight request finishes on the
//! generation it started with while new requests, on the same keep-alive connection too, see
//! the new one. Listeners are never re-bound.
//!
//! A reload (SIGHUP, the file watch, `POST /v1/reload`) reads the main file and validates it
//! with `config::load_str_with_secret`, the code `portcullis check` runs, then builds the next
//! generation (`Gateway::successor`) and swaps. Any failure keeps the old generation and is
//! reported four ways: one log line, `portcullis_config_reloads_total{result="failure"}`,
//! `last_error` on the admin API, and a `config.reload` audit event (also written on success).
//! Reloads are serialized; an unchanged file (same SHA-256) is a no-op.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config;
use crate::proxy::Gateway;

/// Where reloads read the config from.
#[derive(Clone)]
pub struct ReloadSource {
    pub path: PathBuf,
    /// The HS256 secret to use instead of `secret_env` (demo, tests); `None` reads the env.
    pub secret: Option<Vec<u8>>,
}

/// The last failed reload, for `GET /v1/config` and `/v1/reload`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    /// Unix seconds.
    pub at: u64,
    pub trigger: String,
    /// Every error, rendered as `check` prints it.
    pub errors: Vec<String>,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub applied: bool,
    /// The file did not change since the active generation.
    pub unchanged: bool,
    pub generation: u64,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReloadFailure>,
}

/// The live gateway: the current generation plus what outlives generations.
pub struct Runtime {
    current: ArcSwap<Gateway>,
    source: Option<ReloadSource>,
    last_error: Mutex<Option<ReloadFailure>>,
    /// One reload at a time (the watch, SIGHUP and the admin API may race).
    reloading: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// A runtime that can reload from `source` (`None`: reloads are refused).
    pub fn new(gateway: Arc<Gateway>, source: Option<ReloadSource>) -> Arc<Runtime> {
        Arc::new(Runtime {
            current: ArcSwap::new(gateway),
            source,
            last_error: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The current generation. Load it once per request and keep it for the whole request.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<ReloadFailure> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Read, validate and apply the config file; on any failure keep the current generation.
    pub async fn reload(&self, trigger: &str) -> ReloadOutcome {
        let _one = self.reloading.lock().await;
        let old = self.current();
        let Some(source) = self.source.clone() else {
            return self
                .failed(
                    &old,
                    trigger,
                    "",
                    vec![
                        "this gateway was not started from a config file; reload is unavailable"
                            .into(),
                    ],
                )
                .await;
        };
        let path = source.path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&source.path);
            let snapshot = match &text {
                Ok(text) => {
                    config::load_str_with_secret(text, &source.path, source.secret.as_deref())
                }
                // `load` renders the read error exactly as `check` would.
                Err(_) => config::load(&source.path),
            };
            (text.unwrap_or_default(), snapshot)
        })
        .await;
        let (text, snapshot) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                return self
                    .failed(
                        &old,
                        trigger,
                        "",
                        vec![format!("reload task failed: {err}")],
                    )
                    .await;
            }
        };
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(errors) => {
                let rendered = errors.errors.iter().map(|e| e.rendered.clone()).collect();
                return self.failed(&old, trigger, &text, rendered).await;
            }
        };
        if snapshot.sha256 == old.snapshot.sha256 {
            return ReloadOutcome {
                applied: false,
                unchanged: true,
                generation: old.generation,
                sha256: old.snapshot.sha256.clone(),
                error: None,
            };
        }
        let next = match old.successor(snapshot) {
            Ok(next) => Arc::new(next),
            Err(err) => {
                return self
                    .failed(&old, trigger, &text, vec![err.to_string()])
                    .await;
            }
        };
        let (generation, sha256) = (next.generation, next.snapshot.sha256.clone());
        self.current.store(next);
        let metrics = &old.metrics;
        metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
        metrics.generation.store(generation, Ordering::Relaxed);
        metrics
            .loaded_at
            .store(crate::proxy::unix_now(), Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        tracing::info!(generation, sha256 = %sha256, trigger, path = %path.display(), "Configuration reloaded.");
        let _ = old
            .audit
            .record_config_reload(&path.display().to_string(), &text, true, 0)
            .await;
        ReloadOutcome {
            applied: true,
            unchanged: false,
            generation,
            sha256,
            error: None,
        }
    }

    async fn failed(
        &self,
        old: &Gateway,
        trigger: &str,
        text: &str,
        errors: Vec<String>,
    ) -> ReloadOutcome {
        old.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
        let first = errors.first().cloned().unwrap_or_default();
        tracing::error!(trigger, errors = errors.len(), first_error = %first, "Configuration reload failed; keeping the active configuration.");
        let failure = ReloadFailure {
            at: crate::proxy::unix_now(),
            trigger: trigger.to_owned(),
            errors,
        };
        let count = failure.errors.len();
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(failure.clone());
        let source = self
            .source
            .as_ref()
            .map(|s| s.path.display().to_string())
            .unwrap_or_default();
        let _ = old
            .audit
            .record_config_reload(&source, text, false, count)
            .await;
        ReloadOutcome {
            applied: false,
            unchanged: false,
            generation: old.generation,
            sha256: old.snapshot.sha256.clone(),
            error: Some(failure),
        }
    }

    /// Poll the active config's files (main file and includes) every `poll`; once they changed
    /// and then stayed unchanged for `debounce`, reload. Polling mtimes keeps this portable and
    /// deterministic (editors that write via rename are seen too); it costs a few `stat`s.
    pub fn spawn_watch(
        self: &Arc<Self>,
        poll: Duration,
        debounce: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let runtime = Arc::downgrade(self);
        // Taken now, so a change right after start is not mistaken for the baseline.
        let mut seen = Some(fingerprint(&self.current().snapshot.files));
        tokio::spawn(async move {
            let mut changed_at: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(poll).await;
                let Some(rt) = runtime.upgrade() else { return };
                let files = rt.current().snapshot.files.clone();
                let now = tokio::task::spawn_blocking(move || fingerprint(&files))
                    .await
                    .unwrap_or_default();
                match &seen {
                    None => seen = Some(now),
                    Some(prev) if *prev != now => {
                        seen = Some(now);
                        changed_at = Some(tokio::time::Instant::now());
                    }
                    Some(_) => {
                        if changed_at.is_some_and(|at| at.elapsed() >= debounce) {
                            changed_at = None;
                            rt.reload("watch").await;
                        }
                    }
                }
            }
        })
    }
}

type Fingerprint = Vec<Option<(SystemTime, u64)>>;

/// Modification time and size of each file (`None`: missing or unreadable).
fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}
