//! Forwarding to upstreams: keep-alive pools, round robin, timeouts, streamed bodies.
//!
//! `forward` takes a `&Grant`: only `policy` can make one, so no code path can send a request
//! upstream without a decision that allowed it (or monitor mode).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamSettings;
use crate::policy::Grant;

/// Why forwarding failed (502 / 504).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream `{upstream}` unreachable: {source}")]
    Unavailable {
        upstream: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream `{0}` did not answer in time")]
    Timeout(String),
    #[error("invalid upstream target: {0}")]
    InvalidTarget(String),
    #[error("upstream `{0}` answered 101; tunnels are not relayed")]
    UnexpectedUpgrade(String),
}

struct Pool {
    name: String,
    targets: Vec<Authority>,
    next: AtomicUsize,
    request_timeout: Duration,
    client: Client<HttpConnector, Incoming>,
}

/// All configured upstreams, indexed like `Snapshot::upstreams`.
pub struct Upstreams {
    pools: Vec<Pool>,
}

impl Upstreams {
    pub fn build(settings: &[UpstreamSettings]) -> Result<Upstreams, ForwardError> {
        let mut pools = Vec::with_capacity(settings.len());
        for s in settings {
            let targets = s
                .targets
                .iter()
                .map(|t| {
                    t.parse::<Authority>()
                        .map_err(|_| ForwardError::InvalidTarget(t.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(s.connect_timeout));
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new())
                .pool_max_idle_per_host(256)
                .build(connector);
            pools.push(Pool {
                name: s.name.clone(),
                targets,
                next: AtomicUsize::new(0),
                request_timeout: s.request_timeout,
                client,
            });
        }
        Ok(Upstreams { pools })
    }

    pub fn name(&self, upstream: usize) -> Option<&str> {
        self.pools.get(upstream).map(|p| p.name.as_str())
    }

    /// Send `parts`/`body` (already sanitized, path canonical) to `upstream`. The request URI is
    /// rebuilt in origin-form from the canonical path; the client's target bytes are never sent.
    pub async fn forward(
        &self,
        _grant: &Grant,
        upstream: usize,
        mut request: Request<Incoming>,
        path_and_query: PathAndQuery,
    ) -> Result<Response<Incoming>, ForwardError> {
        let pool = self
            .pools
            .get(upstream)
            .ok_or_else(|| ForwardError::InvalidTarget(format!("#{upstream}")))?;
        let n = pool.next.fetch_add(1, Ordering::Relaxed);
        let target = pool
            .targets
            .get(n % pool.targets.len().max(1))
            .ok_or_else(|| ForwardError::InvalidTarget(pool.name.clone()))?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(target.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ForwardError::InvalidTarget(e.to_string()))?;
        *request.uri_mut() = uri;
        // An h2 downstream request must not reach an HTTP/1 upstream as HTTP/2.
        *request.version_mut() = Version::HTTP_11;
        let sent = tokio::time::timeout(pool.request_timeout, pool.client.request(request)).await;
        let response = match sent {
            Err(_) => return Err(ForwardError::Timeout(pool.name.clone())),
            Ok(Err(source)) => {
                return Err(ForwardError::Unavailable {
                    upstream: pool.name.clone(),
                    source,
                });
            }
            Ok(Ok(response)) => response,
        };
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(ForwardError::UnexpectedUpgrade(pool.name.clone()));
        }
        Ok(response)
    }
}
