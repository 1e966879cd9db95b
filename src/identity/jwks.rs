//! JWKS from a URL (`[identity.jwt] jwks_url`): downloaded in the background, never on the
//! request path.
//!
//! One task per authenticator downloads the key set at start, then every `refresh`, and when
//! a token names an unknown `kid` (key rotation at the identity provider). Downloads are
//! rate-limited to one per `min_interval` whatever asks, and wake-ups coalesce (`Notify`
//! holds one permit), so forged `kid`s cannot turn the gateway into a traffic amplifier. The
//! request that saw the unknown `kid` fails with `invalid_token`; the next one after the
//! download succeeds. A failed or invalid download keeps the previous keys (fail closed
//! before the first success: no keys, every token refused).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::{AlgSet, JwksUrl, KeySet, parse_jwks};
use crate::metrics::Metrics;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// One download may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The refresher shared by an authenticator and its task.
pub struct JwksSource {
    settings: JwksUrl,
    pinned: AlgSet,
    keys: Arc<ArcSwap<KeySet>>,
    wake: Notify,
    started: AtomicBool,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl JwksSource {
    pub(super) fn new(settings: JwksUrl, pinned: AlgSet, keys: Arc<ArcSwap<KeySet>>) -> JwksSource {
        JwksSource {
            settings,
            pinned,
            keys,
            wake: Notify::new(),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &http::Uri {
        &self.settings.url
    }

    /// Ask for a download soon (rate-limited); never blocks.
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Start the background task (once; later calls do nothing). Needs a Tokio runtime.
    pub fn start(self: &Arc<Self>, metrics: Arc<Metrics>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("JWKS refresher needs a Tokio runtime; no keys will be loaded.");
            return;
        };
        let handle = runtime.spawn(run(Arc::downgrade(self), metrics));
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle.abort_handle());
    }

    pub(super) fn stop(&self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    /// The JWKS document, checked; not parsed into keys.
    async fn download(&self) -> Result<Bytes, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(crate::proxy::tls::provider())
            .map_err(|e| format!("no TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let request = http::Request::get(self.settings.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| "timed out reading the body".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        Ok(body)
    }

    fn parse(&self, body: &[u8]) -> Result<KeySet, String> {
        parse_jwks(body, &self.settings.url.to_string(), self.pinned)
            .map(KeySet::new)
            .map_err(|e| e.to_string())
    }
}

async fn run(source: Weak<JwksSource>, metrics: Arc<Metrics>) {
    let mut last: Option<tokio::time::Instant> = None;
    // The document behind the keys this task stored. A byte-identical download keeps the
    // stored set (and its generation), so verified tokens stay cached across refreshes that
    // change nothing; any other document is a new set, which misses every cached entry made
    // with the previous one (a removed or replaced key is never served from the cache).
    let mut applied: Option<Bytes> = None;
    loop {
        let Some(src) = source.upgrade() else { return };
        // Rate limit: at most one download per `min_interval`, however often we are woken.
        if let Some(at) = last {
            let wait = src.settings.min_interval.saturating_sub(at.elapsed());
            if !wait.is_zero() {
                drop(src);
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        last = Some(tokio::time::Instant::now());
        let fetched = src.download().await.and_then(|body| {
            if applied.as_ref() == Some(&body) {
                return Ok(None);
            }
            src.parse(&body).map(|set| Some((body, set)))
        });
        match fetched {
            Ok(None) => {
                metrics.jwks_refreshes_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %src.settings.url, "JWKS refreshed; unchanged.");
            }
            Ok(Some((body, set))) => {
                let count = set.keys.len();
                src.keys.store(Arc::new(set));
                applied = Some(body);
                metrics.jwks_refreshes_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %src.settings.url, keys = count, "JWKS refreshed.");
            }
            Err(err) => {
                metrics
                    .jwks_refreshes_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %src.settings.url, error = %err, "JWKS refresh failed; keeping the previous keys.");
            }
        }
        let refresh = src.settings.refresh;
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            () = src.wake.notified() => {}
        }
    }
}
