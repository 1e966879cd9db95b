//! Forwarding to upstreams: keep-alive pools, round robin over healthy targets, passive health,
//! timeouts, connection limits, streamed bodies, optional HTTP/2 and TLS upstream.
//!
//! `forward` takes a `&Grant`: only `policy` can make one, so no code path can send a request
//! upstream without a decision that allowed it (or monitor mode).
//!
//! Passive health (Envoy's consecutive-failure outlier detection): `max_failures` connect
//! failures or timeouts in a row eject a target for `eject_for`; it then gets traffic again.
//! When every target is ejected the round-robin pick is used anyway (Envoy's panic mode): a
//! guess beats refusing everything.
//!
//! Retries: only a connect failure is retried (the request never left the gateway), only for
//! GET, HEAD, OPTIONS, PUT and DELETE without a body, each other healthy target at most once,
//! all within the one `request_timeout`. Anything that may have reached an upstream is never
//! replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::h1::{self, H1Body, H1Error, IdlePool};
use super::h2::{self, H2Error};
use super::headers::Added;
use super::limits::{LimitedBody, is_too_large};
use super::respond::BodyError;
use super::tls::{self, TlsError};
use crate::config::{UpstreamProtocol, UpstreamSettings};
use crate::policy::Grant;

/// Why forwarding failed (mapped to 413 / 502 / 503 / 504 in the pipeline).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream `{upstream}` unreachable: {source}")]
    Unavailable {
        upstream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("upstream `{upstream}` failed: {source}")]
    Failed {
        upstream: String,
        #[source]
        source: h1::H1Error,
    },
    #[error("upstream `{0}` did not answer in time")]
    Timeout(String),
    #[error("upstream `{0}` is at `max_connections` and none freed up in time")]
    Busy(String),
    #[error("request body larger than `max_body`; upstream request to `{0}` aborted")]
    BodyTooLarge(String),
    #[error("invalid upstream target: {0}")]
    InvalidTarget(String),
    #[error("upstream `{0}` answered 101; tunnels are not relayed")]
    UnexpectedUpgrade(String),
    #[error("upstream `{0}` speaks HTTP/2; WebSocket upgrades need an HTTP/1.1 upstream")]
    UpgradeUnsupported(String),
    #[error("upstream `{upstream}` TLS setup failed: {source}")]
    TlsSetup {
        upstream: String,
        #[source]
        source: Box<TlsError>,
    },
}

pub(super) type Connector = HttpsConnector<HttpConnector>;

/// What goes upstream: the client's request (headers sanitized), the gateway's own headers,
/// and the canonical target.
pub struct Outbound {
    pub request: Request<Incoming>,
    pub added: Added,
    pub path_and_query: PathAndQuery,
}

/// One target and its passive-health state.
struct Target {
    authority: Authority,
    /// Consecutive connect failures or timeouts.
    failures: AtomicU32,
    /// Milliseconds since `Upstreams::epoch` until which the target is skipped; 0 = healthy.
    ejected_until: AtomicU64,
    /// Keep-alive connections of the lean HTTP/1 client (`h1`).
    idle: Arc<IdlePool>,
    /// The multiplexed connection of an HTTP/2 upstream (`h2`).
    h2: h2::Slot,
}

/// How a pool's requests travel, besides the lean client.
#[allow(
    clippy::large_enum_variant,
    reason = "one per upstream, built once at startup"
)]
enum Transport {
    /// hyper-util's pooled HTTP/1.1 client (bodies, upgrades, TLS).
    Http1(Client<Connector, LimitedBody>),
    /// One HTTP/2 connection per target (`h2`), opened with this connector.
    Http2(Connector),
}

struct Pool {
    name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    request_timeout: Duration,
    max_failures: u32,
    eject_for: Duration,
    scheme: Scheme,
    version: Version,
    /// `max_connections`: one permit per in-flight request, held until its response body ends.
    limit: Option<Arc<Semaphore>>,
    transport: Transport,
    /// Plain HTTP/1.1: requests without a body take the lean client (`h1`).
    lean: bool,
    connect_timeout: Duration,
}

/// All configured upstreams, indexed like `Snapshot::upstreams`.
pub struct Upstreams {
    pools: Vec<Pool>,
    epoch: Instant,
    max_body: u64,
}

fn connector(s: &UpstreamSettings) -> Result<Connector, TlsError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(s.connect_timeout));
    http.enforce_http(false);
    let provider = tls::provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &s.tls {
        Some(None) => builder
            .with_provider_and_native_roots(provider)
            .map_err(TlsError::NativeRoots)?,
        Some(Some(ca)) => builder.with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(tls::read_roots(ca)?)
                .with_no_client_auth(),
        ),
        // Plain upstream: the TLS side is never used (every URI is `http`).
        None => builder.with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    let builder = builder.https_or_http();
    Ok(match s.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    })
}

impl Upstreams {
    pub fn build(settings: &[UpstreamSettings], max_body: u64) -> Result<Upstreams, ForwardError> {
        let mut pools = Vec::with_capacity(settings.len());
        for s in settings {
            let scheme = if s.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            };
            let targets = s
                .targets
                .iter()
                .map(|t| {
                    let authority = t
                        .parse::<Authority>()
                        .map_err(|_| ForwardError::InvalidTarget(t.clone()))?;
                    // Where an HTTP/2 connection to the target is opened.
                    let dial = Uri::builder()
                        .scheme(scheme.clone())
                        .authority(authority.clone())
                        .path_and_query("/")
                        .build()
                        .map_err(|_| ForwardError::InvalidTarget(t.clone()))?;
                    Ok(Target {
                        authority,
                        failures: AtomicU32::new(0),
                        ejected_until: AtomicU64::new(0),
                        idle: IdlePool::new(
                            s.max_connections.unwrap_or(256).min(256),
                            s.idle_timeout,
                        ),
                        h2: h2::Slot::new(dial),
                    })
                })
                .collect::<Result<Vec<_>, ForwardError>>()?;
            let connector = connector(s).map_err(|source| ForwardError::TlsSetup {
                upstream: s.name.clone(),
                source: Box::new(source),
            })?;
            let transport = match s.protocol {
                UpstreamProtocol::Http1 => Transport::Http1(
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(s.idle_timeout)
                        .pool_timer(TokioTimer::new())
                        .pool_max_idle_per_host(s.max_connections.unwrap_or(256).min(256))
                        .timer(TokioTimer::new())
                        .build(connector),
                ),
                UpstreamProtocol::Http2 => Transport::Http2(connector),
            };
            pools.push(Pool {
                name: s.name.clone(),
                targets,
                next: AtomicUsize::new(0),
                request_timeout: s.request_timeout,
                max_failures: s.max_failures,
                eject_for: s.eject_for,
                scheme,
                version: match s.protocol {
                    UpstreamProtocol::Http1 => Version::HTTP_11,
                    UpstreamProtocol::Http2 => Version::HTTP_2,
                },
                limit: s.max_connections.map(|n| Arc::new(Semaphore::new(n))),
                transport,
                lean: s.tls.is_none() && s.protocol == UpstreamProtocol::Http1,
                connect_timeout: s.connect_timeout,
            });
        }
        Ok(Upstreams {
            pools,
            epoch: Instant::now(),
            max_body,
        })
    }

    pub fn name(&self, upstream: usize) -> Option<&str> {
        self.pools.get(upstream).map(|p| p.name.as_str())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Send `request` (already sanitized, path canonical) to `upstream`. The request URI is
    /// rebuilt in origin-form from the canonical path; the client's target bytes are never sent.
    /// `request_timeout` counts from `sent`, the caller's clock reading when it started.
    pub async fn forward(
        &self,
        _grant: &Grant,
        upstream: usize,
        outbound: Outbound,
        upgrade: bool,
        sent: Instant,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let Outbound {
            request,
            added,
            path_and_query,
        } = outbound;
        let pool = self
            .pools
            .get(upstream)
            .ok_or_else(|| ForwardError::InvalidTarget(format!("#{upstream}")))?;
        let deadline = tokio::time::Instant::from_std(sent) + pool.request_timeout;
        let permit = match &pool.limit {
            None => None,
            Some(sem) => match tokio::time::timeout_at(deadline, sem.clone().acquire_owned()).await
            {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_)) | Err(_) => return Err(ForwardError::Busy(pool.name.clone())),
            },
        };
        if upgrade && pool.version != Version::HTTP_11 {
            return Err(ForwardError::UpgradeUnsupported(pool.name.clone()));
        }
        let (mut parts, body) = request.into_parts();
        if pool.lean && !upgrade && body.is_end_stream() {
            return self
                .forward_lean(pool, deadline, parts, &added, &path_and_query, permit)
                .await;
        }
        added.insert_into(&mut parts.headers);
        // An h2 downstream request must not reach an HTTP/1 upstream as HTTP/2 (and back).
        parts.version = pool.version;
        let bodyless = body.is_end_stream();
        let connect_retry = pool.targets.len() > 1 && bodyless && retry_safe(&parts.method);
        // What an HTTP/2 upstream refused unprocessed may go again, whatever its method.
        let h2 = matches!(pool.transport, Transport::Http2(_));
        let saved = (connect_retry || (h2 && bodyless))
            .then(|| (parts.method.clone(), parts.headers.clone()));
        let mut refusals = 0u8;
        let mut body = LimitedBody::new(body, self.max_body);
        // hyper's HTTP/2 client reports a body that tripped the limit as a reset stream.
        let tripped = (h2 && !bodyless).then(|| Arc::new(AtomicBool::new(false)));
        if let Some(tripped) = &tripped {
            body = body.watched(tripped.clone());
        }
        let mut next = Some(Request::from_parts(parts, body));
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let (index, target) = self.next_target(pool, &tried)?;
            let request = match next.take() {
                Some(r) => r,
                None => rebuild(saved.as_ref(), pool.version)
                    .ok_or_else(|| ForwardError::InvalidTarget(pool.name.clone()))?,
            };
            let attempt = pool.send_once(target, request, &path_and_query);
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(response)) => {
                    target.failures.store(0, Ordering::Relaxed);
                    // A 101 only for the websocket handshake that asked for it (`upgrade`).
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS && !upgrade {
                        return Err(ForwardError::UnexpectedUpgrade(pool.name.clone()));
                    }
                    return Ok(response.map(|inner| UpstreamBody {
                        inner: Inner::Hyper(inner),
                        _permit: permit,
                    }));
                }
                Err(_) => {
                    pool.failed(self, target);
                    return Err(ForwardError::Timeout(pool.name.clone()));
                }
                Ok(Err(Failure {
                    retry: Retry::Unprocessed,
                    error,
                })) if saved.is_some() && refusals < MAX_REFUSALS => {
                    refusals += 1;
                    tracing::debug!(upstream = %pool.name, target = %target.authority, %error, "Upstream refused the request unprocessed; sending it again.");
                }
                Ok(Err(Failure {
                    retry: Retry::Connect,
                    error: err,
                })) => {
                    pool.failed(self, target);
                    tracing::debug!(upstream = %pool.name, target = %target.authority, error = %err, "Upstream connect failed.");
                    tried.push(index);
                    let another = pool.pick(|| self.now_ms(), &tried).is_some();
                    if !connect_retry || !another {
                        return Err(ForwardError::Unavailable {
                            upstream: pool.name.clone(),
                            source: err,
                        });
                    }
                }
                Ok(Err(Failure { error, .. }))
                    if is_too_large(&*error)
                        || tripped.as_ref().is_some_and(|t| t.load(Ordering::Relaxed)) =>
                {
                    return Err(ForwardError::BodyTooLarge(pool.name.clone()));
                }
                Ok(Err(Failure { error: source, .. })) => {
                    return Err(ForwardError::Unavailable {
                        upstream: pool.name.clone(),
                        source,
                    });
                }
            }
        }
    }
}

impl Upstreams {
    /// The target for the next attempt of a request that has tried `tried`, and its index
    /// (for `tried`, should it fail).
    fn next_target<'p>(
        &self,
        pool: &'p Pool,
        tried: &[usize],
    ) -> Result<(usize, &'p Target), ForwardError> {
        let index = pool
            .pick(|| self.now_ms(), tried)
            .ok_or_else(|| ForwardError::InvalidTarget(pool.name.clone()))?;
        pool.targets
            .get(index)
            .map(|target| (index, target))
            .ok_or_else(|| ForwardError::InvalidTarget(pool.name.clone()))
    }

    /// A request without a body to a plain HTTP/1.1 upstream, through the lean client. Same
    /// target choice, passive health, retry rule and deadline as the hyper path.
    async fn forward_lean(
        &self,
        pool: &Pool,
        deadline: tokio::time::Instant,
        mut parts: http::request::Parts,
        added: &Added,
        path_and_query: &PathAndQuery,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let retry = pool.targets.len() > 1 && retry_safe(&parts.method);
        // The idle connections' clock: the caller's reading (the deadline less the timeout),
        // unless a permit was waited for.
        let decided_at = match permit {
            None => deadline.into_std().checked_sub(pool.request_timeout),
            Some(_) => None,
        };
        let host_given = parts.headers.contains_key(http::header::HOST);
        // Filled only by a failed attempt: the usual request allocates nothing for it.
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let (index, target) = self.next_target(pool, &tried)?;
            // HTTP/1.1 needs a Host; an HTTP/1.0 client may have sent none (hyper adds the
            // target's, as here).
            if !host_given && let Ok(host) = http::HeaderValue::from_str(target.authority.as_str())
            {
                parts.headers.insert(http::header::HOST, host);
            }
            let sent = h1::send(
                &target.idle,
                // A retry comes later: read the clock again.
                decided_at
                    .filter(|_| tried.is_empty())
                    .unwrap_or_else(Instant::now),
                h1::Dial {
                    authority: target.authority.as_str(),
                    connect_timeout: pool.connect_timeout,
                },
                &parts.method,
                path_and_query,
                &parts.headers,
                added,
            );
            match tokio::time::timeout_at(deadline, sent).await {
                Ok(Ok(response)) => {
                    target.failures.store(0, Ordering::Relaxed);
                    return Ok(response.map(|inner| UpstreamBody {
                        inner: Inner::Lean(inner),
                        _permit: permit,
                    }));
                }
                Err(_) => {
                    pool.failed(self, target);
                    return Err(ForwardError::Timeout(pool.name.clone()));
                }
                Ok(Err(err @ (H1Error::Connect(_) | H1Error::ConnectTimeout))) => {
                    pool.failed(self, target);
                    tracing::debug!(upstream = %pool.name, target = %target.authority, error = %err, "Upstream connect failed.");
                    tried.push(index);
                    if !retry || pool.pick(|| self.now_ms(), &tried).is_none() {
                        return Err(ForwardError::Failed {
                            upstream: pool.name.clone(),
                            source: err,
                        });
                    }
                }
                Ok(Err(H1Error::UnexpectedUpgrade)) => {
                    return Err(ForwardError::UnexpectedUpgrade(pool.name.clone()));
                }
                Ok(Err(source)) => {
                    return Err(ForwardError::Failed {
                        upstream: pool.name.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// Methods a connect failure may be retried for on another target (without a body).
fn retry_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// A bodyless idempotent request again, for the next target.
fn rebuild(saved: Option<&(Method, HeaderMap)>, version: Version) -> Option<Request<LimitedBody>> {
    let (method, headers) = saved?;
    let mut request = Request::new(LimitedBody::empty());
    *request.method_mut() = method.clone();
    *request.headers_mut() = headers.clone();
    *request.version_mut() = version;
    Some(request)
}

/// A failed attempt, and whether another may follow.
struct Failure {
    retry: Retry,
    error: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The request never left the gateway: another target, for the methods `retry_safe` allows.
    Connect,
    /// An HTTP/2 upstream did not process it (GOAWAY, REFUSED_STREAM): again, on a fresh
    /// connection, whatever the method, if it has no body to replay.
    Unprocessed,
    /// It may have reached the upstream: never again.
    Never,
}

/// How often one request refused unprocessed goes again: a bound for an upstream that refuses
/// every stream.
const MAX_REFUSALS: u8 = 3;

impl Pool {
    /// One attempt at `target`, through hyper's HTTP/1.1 client or the target's HTTP/2
    /// connection.
    async fn send_once(
        &self,
        target: &Target,
        mut request: Request<LimitedBody>,
        path_and_query: &PathAndQuery,
    ) -> Result<Response<Incoming>, Failure> {
        let invalid = |e: http::Error| Failure {
            retry: Retry::Never,
            error: Box::new(e),
        };
        match &self.transport {
            Transport::Http1(client) => {
                *request.uri_mut() = Uri::builder()
                    .scheme(self.scheme.clone())
                    .authority(target.authority.clone())
                    .path_and_query(path_and_query.clone())
                    .build()
                    .map_err(invalid)?;
                client.request(request).await.map_err(|err| Failure {
                    retry: if err.is_connect() {
                        Retry::Connect
                    } else {
                        Retry::Never
                    },
                    error: Box::new(err),
                })
            }
            Transport::Http2(connector) => {
                *request.uri_mut() = h2::request_uri(
                    self.scheme.clone(),
                    request.headers_mut(),
                    &target.authority,
                    path_and_query.clone(),
                )
                .map_err(invalid)?;
                target
                    .h2
                    .send(connector, request)
                    .await
                    .map_err(|err| Failure {
                        retry: match err {
                            H2Error::Connect(_) => Retry::Connect,
                            H2Error::Refused { .. } => Retry::Unprocessed,
                            H2Error::Request(_) => Retry::Never,
                        },
                        error: Box::new(err),
                    })
            }
        }
    }

    /// Round robin over targets not ejected and not yet tried for this request. With every
    /// target ejected, the first pick of a request takes the round-robin one anyway.
    /// `now_ms` is read only when a target is ejected: the clock is not free.
    fn pick(&self, now_ms: impl Fn() -> u64, tried: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        if !tried.is_empty() && tried.len() >= n {
            return None;
        }
        let start = if tried.is_empty() {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        let mut now = None;
        let healthy = (0..n).map(|i| (start + i) % n).find(|&i| {
            !tried.contains(&i)
                && self.targets.get(i).is_some_and(|t| {
                    let until = t.ejected_until.load(Ordering::Relaxed);
                    until == 0 || until <= *now.get_or_insert_with(&now_ms)
                })
        });
        match healthy {
            Some(i) => Some(i),
            None if tried.is_empty() => Some(start % n),
            None => None,
        }
    }

    fn failed(&self, upstreams: &Upstreams, target: &Target) {
        let failures = target.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.max_failures {
            let until = upstreams
                .now_ms()
                .saturating_add(u64::try_from(self.eject_for.as_millis()).unwrap_or(u64::MAX));
            target.ejected_until.store(until, Ordering::Relaxed);
            target.failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, target = %target.authority, eject_for = ?self.eject_for, "Upstream target ejected after consecutive failures.");
        }
    }
}

/// An upstream response body; holds the `max_connections` permit until the body is done.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Inner,
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum Inner {
    Hyper(Incoming),
    Lean(H1Body),
}

impl Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        match &mut self.inner {
            Inner::Hyper(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BodyError::from),
            Inner::Lean(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::Lean(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body) => body.size_hint(),
            Inner::Lean(body) => body.size_hint(),
        }
    }
}
