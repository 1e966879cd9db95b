//! The data plane: listener, pipeline, header hygiene, forwarding, and the single
//! refusal → response mapping (`respond`).

pub mod cors;
pub mod forward;
mod h1;
mod h2;
pub mod headers;
mod idle;
pub mod limits;
pub mod me;
pub mod pipeline;
pub mod respond;
pub mod server;
pub mod tls;
pub mod upgrade;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::audit::{AuditLog, AuditSetupError};
use crate::config::{RedisSettings, RedisTarget, Snapshot, StoreSettings};
use crate::grants::redis::RedisSetupError;
use crate::grants::{FileStore, RedisStore, Store};
use crate::metrics::Metrics;

pub use pipeline::{ConnInfo, Evaluation, Gateway};

/// The gateway could not be assembled from a validated config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] AuditSetupError),
    #[error(transparent)]
    Upstream(#[from] forward::ForwardError),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error(transparent)]
    Tls(#[from] Box<tls::TlsError>),
}

impl Gateway {
    /// Assemble the runtime (store, upstream pools, audit writer) from a snapshot. With Redis
    /// this must run inside a Tokio runtime; it returns at once (the store connects in the
    /// background and answers 503 until Redis is reachable).
    pub fn build(snapshot: Snapshot) -> Result<Gateway, StartError> {
        Self::build_with(snapshot, Arc::new(Metrics::default()))
    }

    /// `build`, counting into `metrics` (the process's one registry).
    pub fn build_with(snapshot: Snapshot, metrics: Arc<Metrics>) -> Result<Gateway, StartError> {
        let store = match &snapshot.grants.store {
            StoreSettings::File(data) => Store::File(FileStore::build(&snapshot.policy, data).0),
            StoreSettings::Redis(redis) => {
                Store::Redis(RedisStore::start(redis, &snapshot.grants)?)
            }
        };
        let upstreams = Arc::new(forward::Upstreams::build(
            &snapshot.upstreams,
            snapshot.limits.max_body,
        )?);
        let tls = match &snapshot.server.tls {
            Some(settings) => Some(Arc::new(
                tls::Terminator::build(settings).map_err(Box::new)?,
            )),
            None => None,
        };
        let audit = Arc::new(AuditLog::start(&snapshot.audit)?);
        if let Some(jwks) = snapshot.authenticator.jwks_source() {
            jwks.start(metrics.clone());
        }
        metrics.generation.store(1, Ordering::Relaxed);
        metrics.loaded_at.store(unix_now(), Ordering::Relaxed);
        Ok(Gateway {
            authenticator: snapshot.authenticator.clone(),
            route_metrics: metrics.routes_for(&snapshot),
            metrics,
            generation: 1,
            snapshot,
            store,
            upstreams,
            audit,
            tls,
        })
    }

    /// The next generation after a reload: routes, policy, authenticator and the file store
    /// come from `snapshot`; the Redis connection and the upstream pools are kept when their
    /// settings did not change (the Redis cache is re-keyed to the new policy). Listeners, TLS
    /// and audit are the process's and stay (changing them needs a restart).
    pub fn successor(&self, snapshot: Snapshot) -> Result<Gateway, StartError> {
        let generation = self.generation + 1;
        let store = match (
            &snapshot.grants.store,
            &self.snapshot.grants.store,
            &self.store,
        ) {
            (StoreSettings::File(data), _, _) => {
                Store::File(FileStore::build(&snapshot.policy, data).0)
            }
            (StoreSettings::Redis(new), StoreSettings::Redis(old), Store::Redis(store))
                if same_redis(new, old)
                    && snapshot.grants.cache_ttl == self.snapshot.grants.cache_ttl
                    && snapshot.grants.max_stale == self.snapshot.grants.max_stale
                    && snapshot.grants.stale_for == self.snapshot.grants.stale_for =>
            {
                Store::Redis(store.with_policy_epoch(generation))
            }
            (StoreSettings::Redis(new), _, _) => Store::Redis(
                RedisStore::start(new, &snapshot.grants)?.with_policy_epoch(generation),
            ),
        };
        let same_pools = format!("{:?}", snapshot.upstreams)
            == format!("{:?}", self.snapshot.upstreams)
            && snapshot.limits.max_body == self.snapshot.limits.max_body;
        let upstreams = if same_pools {
            self.upstreams.clone()
        } else {
            Arc::new(forward::Upstreams::build(
                &snapshot.upstreams,
                snapshot.limits.max_body,
            )?)
        };
        snapshot.authenticator.adopt_keys(&self.authenticator);
        if let Some(jwks) = snapshot.authenticator.jwks_source() {
            jwks.start(self.metrics.clone());
        }
        Ok(Gateway {
            authenticator: snapshot.authenticator.clone(),
            route_metrics: self.metrics.routes_for(&snapshot),
            metrics: self.metrics.clone(),
            generation,
            snapshot,
            store,
            upstreams,
            audit: self.audit.clone(),
            tls: self.tls.clone(),
        })
    }

    /// A gateway for offline decisions (`explain`, policy tests): the same decision path, but
    /// audit goes nowhere, so it never opens the spool a running gateway owns nor contacts a SIEM.
    pub fn build_offline(mut snapshot: Snapshot) -> Result<Gateway, StartError> {
        snapshot.audit.sinks.clear();
        snapshot.audit.spool = None;
        snapshot.audit.hmac_key = None;
        Self::build(snapshot)
    }

    pub fn into_shared(self) -> Arc<Gateway> {
        Arc::new(self)
    }
}

/// Same Redis connection settings (the password included, compared, never printed).
fn same_redis(a: &RedisSettings, b: &RedisSettings) -> bool {
    let target = match (&a.target, &b.target) {
        (RedisTarget::Url(x), RedisTarget::Url(y)) => x == y,
        (RedisTarget::Sentinel(x), RedisTarget::Sentinel(y)) => x == y,
        _ => false,
    };
    target
        && a.prefix == b.prefix
        && a.username == b.username
        && a.password == b.password
        && a.connect_timeout == b.connect_timeout
        && a.command_timeout == b.command_timeout
        && a.cache_capacity == b.cache_capacity
        && a.client_tracking == b.client_tracking
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
