//! The Redis grant store (DESIGN.md §5): one pipelined round trip per miss, an L1 cache with
//! single-flight loads, invalidation by pub/sub and server-assisted client tracking, and fail
//! closed on every error.
//!
//! One RESP3 `ConnectionManager` carries the commands, the `{prefix}:invalidate` subscription
//! and the `CLIENT TRACKING` invalidations; it reconnects by itself with backoff and
//! resubscribes. Push messages are handled synchronously in the client's push callback (no
//! queue or task of ours between Redis and the eviction). Losing the connection flushes the
//! cache (entries must be refreshed, but may answer reads within `max_stale` while Redis is
//! down); resubscribing flushes again.
//!
//! With Redis Sentinel (`sentinels` + `master_name`), the supervisor asks the sentinels for the
//! current master (the redis crate's `SentinelClient`, which also checks `ROLE` on the node it
//! names) and builds the same RESP3 `ConnectionManager` to it, published through an
//! `ArcSwapOption` that requests read. When that connection is lost, its `ROLE` is no longer
//! master (checked after every (re)subscription and every second), or a command fails with
//! `READONLY`, the manager is abandoned (the cache flushed, caching off) and the master is
//! resolved again with backoff: a failover is followed without a restart. Pushes carry the
//! generation of the manager that received them, so a late disconnect or resubscription from
//! an abandoned manager cannot mark the store healthy. While no master is known, requests are
//! refused exactly as when a single Redis is down (stale reads within `max_stale`, else 503).
//!
//! Data is parsed strictly: a malformed value (bad JSON, unknown field, wrong type) makes that
//! principal hold no grants; policy-level problems (unknown role, bad pattern) follow
//! `Policy::principal`'s narrowing rules. Both are logged and counted (`data_errors`). Keys are
//! built only from the verified tenant and subject, whose charset `identity` restricts.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo, Role,
    ServerErrorKind, TlsMode, Value,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cache::{Clocks, L1, Use};
use super::intern::{Found, Interner};
use super::{Access, GrantsError, Resolved, RoleStore};
use crate::config::{GrantsSettings, RedisSettings, RedisTarget, SentinelSettings, StaleFor};
use crate::policy::{Policy, RoleDef, SubjectData, TenantData};

/// The store could not be set up (bad URL, no runtime).
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("the Redis store needs a Tokio runtime")]
    NoRuntime,
}

/// Connection state for readiness probes and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The last command or push showed a live connection.
    pub connected: bool,
    /// Subscribed to `{prefix}:invalidate`; only then are entries cached.
    pub subscribed: bool,
    /// `CLIENT TRACKING` is on for the current connection.
    pub tracking: bool,
}

impl Health {
    /// Invalidations cannot reach us: nothing is cached, every request asks Redis.
    pub fn degraded(&self) -> bool {
        !self.subscribed
    }

    pub fn ready(&self) -> bool {
        self.connected && self.subscribed
    }
}

/// An API key's record (`{prefix}:apikey:{sha256 hex}`). The key itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub tenant: String,
    pub subject: String,
    /// Unix seconds; `None` never expires.
    pub expires: Option<u64>,
}

/// Cache key of a principal: tenant and subject in one allocation (`tenant` is
/// `text[..split]`). Hashes like `GrantKeyRef` (tenant, then subject), so lookups borrow.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrantKey {
    text: Box<str>,
    split: u32,
}

impl GrantKey {
    /// `None` if the tenant is longer than `u32::MAX` bytes (never: identities are short).
    fn new(tenant: &str, subject: &str) -> Option<GrantKey> {
        let split = u32::try_from(tenant.len()).ok()?;
        let mut text = String::with_capacity(tenant.len() + subject.len());
        text.push_str(tenant);
        text.push_str(subject);
        Some(GrantKey {
            text: text.into_boxed_str(),
            split,
        })
    }

    fn tenant(&self) -> &str {
        self.text.get(..self.split as usize).unwrap_or_default()
    }

    fn subject(&self) -> &str {
        self.text.get(self.split as usize..).unwrap_or_default()
    }
}

impl Hash for GrantKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        GrantKeyRef {
            tenant: self.tenant(),
            subject: self.subject(),
        }
        .hash(state);
    }
}

#[derive(Hash)]
struct GrantKeyRef<'a> {
    tenant: &'a str,
    subject: &'a str,
}

impl quick_cache::Equivalent<GrantKey> for GrantKeyRef<'_> {
    fn equivalent(&self, key: &GrantKey) -> bool {
        key.tenant() == self.tenant && key.subject() == self.subject
    }
}

/// SHA-256 of a presented API key; equality is constant-time.
#[derive(Debug, Clone, Copy, Eq)]
struct KeyDigest([u8; 32]);

impl PartialEq for KeyDigest {
    fn eq(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

type ApiKeyValue = Option<Arc<ApiKeyRecord>>;

/// Everything the push handler touches; it holds no connection, so no reference cycle.
struct Shared {
    prefix: String,
    clocks: Clocks,
    grants: L1<GrantKey, Compiled>,
    /// Compiled grants shared by principals with equal data (`intern.rs`).
    interner: Interner,
    api_keys: L1<KeyDigest, ApiKeyValue>,
    connected: AtomicBool,
    subscribed: AtomicBool,
    tracking: AtomicBool,
    data_errors: AtomicU64,
    round_trips: AtomicU64,
    invalidations: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    /// Invalidations as they are applied, for long-lived holders of a decision (WebSocket
    /// tunnels); lagging receivers must treat a lag as "everything revoked".
    revocations: tokio::sync::broadcast::Sender<Revocation>,
    /// Masters connected through the sentinels (1 after startup, +1 per failover followed).
    masters: AtomicU64,
    /// The connection manager whose disconnect/subscribe pushes count; older ones' are ignored.
    generation: AtomicU64,
    /// Wakes the supervisor: the subscription came back (tracking must be re-enabled), the
    /// connection dropped, or a command hinted that the node is no longer the master.
    wake: tokio::sync::Notify,
}

/// What an invalidation took away: one principal, a whole tenant, or everything (flush).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Subject { tenant: Arc<str>, subject: Arc<str> },
    Tenant(Arc<str>),
    All,
}

impl Revocation {
    /// Does this revocation cover `(tenant, subject)`?
    pub fn covers(&self, tenant: &str, subject: &str) -> bool {
        match self {
            Revocation::Subject {
                tenant: t,
                subject: s,
            } => **t == *tenant && **s == *subject,
            Revocation::Tenant(t) => **t == *tenant,
            Revocation::All => true,
        }
    }
}

/// A cached principal and the policy generation it was compiled against: grants hold bit
/// indexes into one `Policy`, so an entry compiled before a reload must never meet the new one.
#[derive(Clone)]
struct Compiled {
    epoch: u64,
    resolved: Arc<Resolved>,
}

/// The Redis store: a cheap handle; clones share the connection and the cache.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The policy generation this handle resolves for (`with_policy_epoch`).
    epoch: u64,
    /// The connection to use; `None` while Sentinel mode has no master.
    conn: Arc<ArcSwapOption<ConnectionManager>>,
    cache_ttl: Duration,
    max_stale: Duration,
    stale_for: StaleFor,
    command_timeout: Duration,
    _supervisor: Arc<SupervisorGuard>,
}

/// Stops the supervisor task when the last store handle goes.
struct SupervisorGuard(tokio::task::JoinHandle<()>);

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Set up the connection (lazily: this returns at once, even if Redis is down) and start
    /// the supervisor that subscribes, enables tracking and keeps reconnecting.
    pub fn start(
        redis: &RedisSettings,
        grants: &GrantsSettings,
    ) -> Result<RedisStore, RedisSetupError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisSetupError::NoRuntime)?;
        let tls = match &redis.target {
            RedisTarget::Url(url) => url.starts_with("rediss://"),
            RedisTarget::Sentinel(s) => s.tls,
        };
        if tls {
            // Already installed (by main or an earlier store) is fine.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let shared = Arc::new(Shared {
            prefix: redis.prefix.clone(),
            clocks: Clocks::default(),
            grants: L1::new(redis.cache_capacity),
            interner: Interner::default(),
            api_keys: L1::new(redis.cache_capacity),
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            tracking: AtomicBool::new(false),
            data_errors: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            revocations: tokio::sync::broadcast::channel(1024).0,
            masters: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        });
        let managers = Managers {
            shared: Arc::downgrade(&shared),
            connect_timeout: redis.connect_timeout,
            command_timeout: redis.command_timeout,
        };
        let url_error = |e: redis::RedisError| RedisSetupError::Url(format!("{:?}", e.kind()));
        let (conn, source) = match &redis.target {
            RedisTarget::Url(url) => {
                let info = url.as_str().into_connection_info().map_err(url_error)?;
                let settings = with_auth(info.redis_settings().clone(), redis);
                let client =
                    redis::Client::open(info.set_redis_settings(settings)).map_err(url_error)?;
                let _enter = runtime.enter();
                (Some(managers.manager(client, 0).map_err(url_error)?), None)
            }
            RedisTarget::Sentinel(s) => (None, Some(sentinel_client(s, redis)?)),
        };
        let conn = Arc::new(ArcSwapOption::new(conn.map(Arc::new)));
        let supervisor = runtime.spawn(supervise(
            Arc::downgrade(&shared),
            Arc::clone(&conn),
            source,
            managers,
            redis.client_tracking,
            redis.command_timeout.max(redis.connect_timeout),
        ));
        Ok(RedisStore {
            shared,
            epoch: 0,
            conn,
            cache_ttl: grants.cache_ttl,
            max_stale: grants.max_stale,
            stale_for: grants.stale_for,
            command_timeout: redis.command_timeout,
            _supervisor: Arc::new(SupervisorGuard(supervisor)),
        })
    }

    /// Wait (at most `limit`) until connected and subscribed; for one-shot commands such as
    /// `explain`, which would otherwise race the first connection. `false`: not ready in time.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.health().ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    pub fn health(&self) -> Health {
        Health {
            connected: self.shared.connected.load(Ordering::Acquire),
            subscribed: self.shared.subscribed.load(Ordering::Acquire),
            tracking: self.shared.tracking.load(Ordering::Acquire),
        }
    }

    /// Malformed or inconsistent Redis values seen so far (each denied its principal).
    pub fn data_errors(&self) -> u64 {
        self.shared.data_errors.load(Ordering::Relaxed)
    }

    /// Round trips to Redis made for lookups (grants and API keys).
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Invalidation messages applied (pub/sub and tracking).
    pub fn invalidations(&self) -> u64 {
        self.shared.invalidations.load(Ordering::Acquire)
    }

    /// Sentinel mode: masters connected so far (1 after startup, +1 per failover followed);
    /// always 0 with `url`.
    pub fn masters_connected(&self) -> u64 {
        self.shared.masters.load(Ordering::Relaxed)
    }

    /// Lookups answered from the cache without Redis.
    pub fn cache_hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }

    /// Lookups that went to Redis (or joined a load in flight).
    pub fn cache_misses(&self) -> u64 {
        self.shared.misses.load(Ordering::Relaxed)
    }

    /// Lookups Redis failed to answer (timeout, connection, READONLY).
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Invalidations from now on (see `Revocation`).
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Revocation> {
        self.shared.revocations.subscribe()
    }

    /// A handle sharing this store's connection, for a reloaded policy: entries compiled for
    /// another epoch are never served by it (and the cache is emptied, they are useless now).
    pub fn with_policy_epoch(&self, epoch: u64) -> RedisStore {
        self.shared.grants.clear();
        RedisStore {
            epoch,
            ..self.clone()
        }
    }

    /// Principals currently cached.
    pub fn cached_principals(&self) -> usize {
        self.shared.grants.len()
    }

    /// May a stale entry answer this request while Redis cannot?
    fn stale_allowed(&self, access: Access) -> bool {
        access == Access::Read || self.stale_for == StaleFor::All
    }

    /// Resolve a principal: fresh cache hit → no Redis call; otherwise one pipelined round trip
    /// shared by every concurrent miss; on failure a stale entry within `max_stale` for allowed
    /// methods, else `GrantsError`. No call waits longer than `command_timeout`.
    pub async fn resolve_grants(
        &self,
        policy: &Policy,
        tenant: &str,
        subject: &str,
        access: Access,
    ) -> Result<Arc<Resolved>, GrantsError> {
        let shared = &self.shared;
        let key = GrantKeyRef { tenant, subject };
        if let Some(entry) = shared.grants.get(&key)
            && entry.value.epoch == self.epoch
            && shared.clocks.usable(&entry, Some(tenant), self.cache_ttl) == Some(Use::Fresh)
        {
            shared.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(entry.value.resolved);
        }
        shared.misses.fetch_add(1, Ordering::Relaxed);
        let Some(owned) = GrantKey::new(tenant, subject) else {
            return Err(GrantsError::Unavailable("tenant name too long".into()));
        };
        let load = shared.grants.load(&shared.clocks, owned, || async {
            self.fetch_grants(policy, tenant, subject)
                .await
                .map(|resolved| Compiled {
                    epoch: self.epoch,
                    resolved,
                })
        });
        let loaded = match tokio::time::timeout(self.command_timeout, load).await {
            // Joined a load of the previous policy (a reload raced it): fetch our own.
            Ok(Ok(c)) if c.epoch != self.epoch => {
                tokio::time::timeout(
                    self.command_timeout,
                    self.fetch_grants(policy, tenant, subject),
                )
                .await
            }
            Ok(result) => Ok(result.map(|c| c.resolved)),
            Err(elapsed) => Err(elapsed),
        };
        if !matches!(loaded, Ok(Ok(_))) {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        match loaded {
            Ok(Ok(resolved)) => Ok(resolved),
            Ok(Err(err)) => self.stale_grants(tenant, subject, access, err),
            Err(_) => self.stale_grants(
                tenant,
                subject,
                access,
                GrantsError::Unavailable("Redis did not answer within command_timeout".into()),
            ),
        }
    }

    /// The error path: looked up again, so an invalidation that arrived meanwhile is honoured.
    fn stale_grants(
        &self,
        tenant: &str,
        subject: &str,
        access: Access,
        err: GrantsError,
    ) -> Result<Arc<Resolved>, GrantsError> {
        let shared = &self.shared;
        let entry = shared.grants.get(&GrantKeyRef { tenant, subject });
        match entry {
            Some(e)
                if e.value.epoch == self.epoch
                    && self.stale_allowed(access)
                    && e.fetched.elapsed() < self.max_stale
                    && shared
                        .clocks
                        .usable(&e, Some(tenant), self.cache_ttl)
                        .is_some() =>
            {
                tracing::debug!(tenant, subject, error = %err, "Serving stale grants while Redis is unavailable.");
                Ok(e.value.resolved)
            }
            _ => {
                tracing::warn!(tenant, subject, error = %err, "Grants unavailable; refusing.");
                Err(err)
            }
        }
    }

    /// HGETALL user, tenant and tenant roles in one pipeline, then compile.
    async fn fetch_grants(
        &self,
        policy: &Policy,
        tenant: &str,
        subject: &str,
    ) -> Result<Arc<Resolved>, GrantsError> {
        let prefix = &self.shared.prefix;
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("HGETALL")
            .arg(format!("{prefix}:{tenant}:user:{subject}"))
            .cmd("HGETALL")
            .arg(format!("{prefix}:{tenant}:tenant"))
            .cmd("HGETALL")
            .arg(format!("{prefix}:{tenant}:roles"));
        let values: Vec<Value> = self.query(&pipe).await?;
        let mut values = values.into_iter();
        let (user, tenant_hash, roles) = (values.next(), values.next(), values.next());
        let parsed = parse_tenant(tenant_hash.as_ref(), roles.as_ref()).and_then(|tenant_data| {
            parse_subject(user.as_ref()).map(|subject_data| (tenant_data, subject_data))
        });
        match parsed {
            Ok((tenant_data, subject_data)) => {
                Ok(self.compile(policy, tenant, subject, &tenant_data, subject_data))
            }
            Err(message) => {
                self.data_error(tenant, subject, &message);
                // No partial grants: the principal holds nothing until the data is fixed.
                Ok(Arc::new(Resolved::default()))
            }
        }
    }

    /// Compile freshly fetched data, or share what an equal `(epoch, tenant record,
    /// assignment)` compiled to (`intern.rs`). Data with problems is compiled (and its problems
    /// reported) every time and never shared.
    fn compile(
        &self,
        policy: &Policy,
        tenant: &str,
        subject: &str,
        tenant_data: &TenantData,
        subject_data: SubjectData,
    ) -> Arc<Resolved> {
        let interner = &self.shared.interner;
        let (grants, mut problems) =
            match interner.lookup(self.epoch, tenant, tenant_data, &subject_data) {
                Found::Principal(shared) => return shared,
                Found::Tenant(grants) => (grants, Vec::new()),
                Found::Nothing => {
                    let (grants, problems) = policy.tenant(tenant_data);
                    (Arc::new(grants), problems)
                }
            };
        let (principal, more) = policy.principal(&grants, &subject_data);
        problems.extend(more);
        for problem in &problems {
            self.data_error(tenant, subject, &problem.message);
        }
        let resolved = Arc::new(Resolved::new(grants, principal));
        if problems.is_empty() {
            interner.remember(self.epoch, tenant, tenant_data, &resolved);
        }
        resolved
    }

    fn data_error(&self, tenant: &str, subject: &str, message: &str) {
        self.shared.data_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            tenant,
            subject,
            problem = message,
            "Invalid grant data in Redis."
        );
    }

    /// One round trip; connection-class failures mark the store disconnected, and they and
    /// `READONLY` wake the supervisor (with Sentinel: check the node is still the master).
    async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, GrantsError> {
        self.shared.round_trips.fetch_add(1, Ordering::Relaxed);
        let Some(conn) = self.conn.load_full() else {
            return Err(GrantsError::Unavailable(
                "no Redis master known yet (asking the sentinels)".into(),
            ));
        };
        let mut conn = ConnectionManager::clone(&conn);
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(values) => {
                if values.iter().any(is_readonly) {
                    self.shared.wake.notify_one();
                    return Err(GrantsError::Unavailable(
                        "Redis answered READONLY (no longer the master)".into(),
                    ));
                }
                self.shared.connected.store(true, Ordering::Release);
                Ok(values)
            }
            Err(err) => {
                if err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                {
                    self.shared.connected.store(false, Ordering::Release);
                    self.shared.wake.notify_one();
                } else if err.kind() == ServerErrorKind::ReadOnly.into() {
                    self.shared.wake.notify_one();
                }
                Err(GrantsError::Unavailable(format!("{:?}", err.kind())))
            }
        }
    }

    /// Look up a presented API key (`{prefix}:apikey:{sha256 hex}`); `Ok(None)`: unknown key.
    /// Cached like grants (negative answers too, so guessing keys does not load Redis); the
    /// key is hashed first and never logged.
    pub async fn api_key(
        &self,
        presented: &[u8],
        access: Access,
    ) -> Result<Option<Arc<ApiKeyRecord>>, GrantsError> {
        let shared = &self.shared;
        let digest = KeyDigest(Sha256::digest(presented).into());
        let cached = shared.api_keys.get(&digest);
        let usable = |e: &super::cache::Entry<ApiKeyValue>| {
            let tenant = e.value.as_ref().map(|r| r.tenant.as_str());
            shared.clocks.usable(e, tenant, self.cache_ttl)
        };
        if let Some(entry) = &cached
            && usable(entry) == Some(Use::Fresh)
        {
            return Ok(entry.value.clone());
        }
        let load = shared
            .api_keys
            .load(&shared.clocks, digest, || self.fetch_api_key(digest));
        let err = match tokio::time::timeout(self.command_timeout, load).await {
            Ok(Ok(record)) => return Ok(record),
            Ok(Err(err)) => err,
            Err(_) => {
                GrantsError::Unavailable("Redis did not answer within command_timeout".into())
            }
        };
        match shared.api_keys.get(&digest) {
            Some(e)
                if self.stale_allowed(access)
                    && e.fetched.elapsed() < self.max_stale
                    && usable(&e).is_some() =>
            {
                Ok(e.value)
            }
            _ => {
                tracing::warn!(error = %err, "API key lookup unavailable; refusing.");
                Err(err)
            }
        }
    }

    async fn fetch_api_key(&self, digest: KeyDigest) -> Result<ApiKeyValue, GrantsError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("HGETALL").arg(format!(
            "{}:apikey:{}",
            self.shared.prefix,
            hex::encode(digest.0)
        ));
        let values = self.query(&pipe).await?;
        match parse_api_key(values.first()) {
            Ok(record) => Ok(record.map(Arc::new)),
            Err(message) => {
                self.shared.data_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    problem = message,
                    "Invalid API key record in Redis; the key is refused."
                );
                Ok(None)
            }
        }
    }
}

impl RoleStore for RedisStore {
    async fn resolve(
        &self,
        policy: &Policy,
        tenant: &str,
        subject: &str,
        access: Access,
    ) -> Result<Arc<Resolved>, GrantsError> {
        self.resolve_grants(policy, tenant, subject, access).await
    }
}

// === push handling ===

impl Shared {
    /// Runs in the redis client's push task: cheap, synchronous, never blocks on Redis.
    /// Invalidations are applied whatever manager they come from (an extra eviction is always
    /// safe); connection state only from the current one (`generation`).
    fn on_push(&self, generation: u64, info: PushInfo) {
        let current = generation == self.generation.load(Ordering::Acquire);
        match info.kind {
            PushKind::Message => {
                let payload = info.data.get(1).and_then(as_text);
                match payload {
                    Some(payload) => self.invalidate_payload(payload),
                    None => tracing::warn!("Ignoring a non-text invalidation message."),
                }
            }
            PushKind::Invalidate => match info.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys.iter().filter_map(as_text) {
                        self.invalidate_key(key);
                    }
                }
                // A null list: the server flushed its keyspace.
                _ => {
                    self.invalidations.fetch_add(1, Ordering::Relaxed);
                    self.clocks.purge();
                    self.grants.clear();
                    self.api_keys.clear();
                    let _ = self.revocations.send(Revocation::All);
                }
            },
            PushKind::Disconnection if current => {
                self.connected.store(false, Ordering::Release);
                self.subscribed.store(false, Ordering::Release);
                self.tracking.store(false, Ordering::Release);
                self.clocks.set_caching(false);
                self.flush();
                tracing::warn!("Lost the Redis connection; cache flushed, reconnecting.");
                self.wake.notify_one();
            }
            PushKind::Subscribe if current => {
                self.connected.store(true, Ordering::Release);
                self.wake.notify_one();
            }
            _ => {}
        }
    }

    /// The current connection can no longer be trusted: ignore its pushes, stop caching,
    /// flush (invalidations may be missed from here on).
    fn abandon(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.connected.store(false, Ordering::Release);
        self.subscribed.store(false, Ordering::Release);
        self.tracking.store(false, Ordering::Release);
        self.clocks.set_caching(false);
        self.flush();
    }

    fn flush(&self) {
        self.clocks.flush();
        self.grants.forget_flights(|_| true);
        self.api_keys.forget_flights(|_| true);
    }

    /// `{tenant}` or `{tenant}:{subject}` (tenants contain no `:`; subjects may).
    fn invalidate_payload(&self, payload: &str) {
        match payload.split_once(':') {
            None => self.invalidate_tenant(payload),
            Some((tenant, subject)) => self.invalidate_subject(tenant, subject),
        }
        // Counted once applied, so an observer of the counter sees the eviction done.
        self.invalidations.fetch_add(1, Ordering::Release);
    }

    fn invalidate_tenant(&self, tenant: &str) {
        self.clocks.invalidate_tenant(tenant);
        self.grants.forget_flights(|k| k.tenant() == tenant);
        self.api_keys.forget_flights(|_| true);
        if self.revocations.receiver_count() > 0 {
            let _ = self.revocations.send(Revocation::Tenant(tenant.into()));
        }
    }

    fn invalidate_subject(&self, tenant: &str, subject: &str) {
        self.clocks.invalidate_one();
        self.grants.remove(&GrantKeyRef { tenant, subject });
        self.grants
            .forget_flights(|k| k.tenant() == tenant && k.subject() == subject);
        self.api_keys.retain(|_, v| {
            v.as_ref()
                .is_none_or(|r| r.tenant != tenant || r.subject != subject)
        });
        self.api_keys.forget_flights(|_| true);
        if self.revocations.receiver_count() > 0 {
            let _ = self.revocations.send(Revocation::Subject {
                tenant: tenant.into(),
                subject: subject.into(),
            });
        }
    }

    /// A tracked key changed: `{prefix}:{tenant}:user:{subject}`, `{prefix}:{tenant}:tenant`,
    /// `{prefix}:{tenant}:roles` or `{prefix}:apikey:{hex}`.
    fn invalidate_key(&self, key: &str) {
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
        else {
            return;
        };
        self.apply_key_invalidation(rest);
        // Counted once applied (see `invalidate_payload`).
        self.invalidations.fetch_add(1, Ordering::Release);
    }

    fn apply_key_invalidation(&self, rest: &str) {
        if let Some(hex_digest) = rest.strip_prefix("apikey:") {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(hex_digest, &mut digest).is_ok() {
                self.clocks.invalidate_one();
                self.api_keys.remove(&KeyDigest(digest));
                self.api_keys.forget_flights(|_| true);
            }
            return;
        }
        let Some((tenant, what)) = rest.split_once(':') else {
            return;
        };
        match what.strip_prefix("user:") {
            Some(subject) => self.invalidate_subject(tenant, subject),
            None => self.invalidate_tenant(tenant),
        }
    }
}

/// Builds the RESP3 connection managers: one at startup with `url`, one per master with
/// Sentinel. Each one's pushes are tagged with its generation.
struct Managers {
    shared: Weak<Shared>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Managers {
    /// Lazy: returns at once; the first command (the subscription) connects. Needs a runtime.
    fn manager(
        &self,
        client: redis::Client,
        generation: u64,
    ) -> redis::RedisResult<ConnectionManager> {
        let handler = self.shared.clone();
        let push = move |info: PushInfo| -> Result<(), ()> {
            if let Some(shared) = handler.upgrade() {
                shared.on_push(generation, info);
            }
            Ok(())
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3)
            .set_push_sender(push)
            .set_automatic_resubscription();
        ConnectionManager::new_lazy_with_config(client, config)
    }
}

/// RESP3, plus `username` / `password_env` (which override ones in a URL).
fn with_auth(settings: RedisConnectionInfo, redis: &RedisSettings) -> RedisConnectionInfo {
    let mut settings = settings.set_protocol(ProtocolVersion::RESP3);
    if let Some(user) = &redis.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &redis.password {
        settings = settings.set_password(password);
    }
    settings
}

/// The redis crate's Sentinel client for the master: sentinels as configured (their own
/// credentials in their URLs), the master reached with RESP3, `db`, `username` /
/// `password_env`, and TLS when the sentinels use it.
fn sentinel_client(
    s: &SentinelSettings,
    redis: &RedisSettings,
) -> Result<SentinelClient, RedisSetupError> {
    let node = with_auth(RedisConnectionInfo::default().set_db(s.db), redis);
    let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
    if s.tls {
        node = node.set_tls_mode(TlsMode::Secure);
    }
    SentinelClient::build(
        s.sentinels.clone(),
        s.master_name.as_str(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| RedisSetupError::Url(format!("sentinels: {:?}", e.kind())))
}

/// A pipeline reply slot holding `READONLY` (the node was demoted to a replica).
fn is_readonly(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "READONLY")
}

/// Is the node behind `conn` a master (`ROLE`)? Errors and timeouts count as no.
async fn is_master(conn: &mut ConnectionManager, limit: Duration) -> bool {
    let role = redis::cmd("ROLE").clone();
    matches!(
        tokio::time::timeout(limit, role.query_async::<Role>(conn)).await,
        Ok(Ok(Role::Primary { .. }))
    )
}

/// Longest pause between two questions to the sentinels while no master is known: short, since
/// the gateway refuses most requests meanwhile; each question is a few loopback-cheap commands.
const SENTINEL_MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Subscribe (until it works), enable tracking after every (re)subscription, flush, and keep
/// probing while disconnected so the manager reconnects even when no request comes.
///
/// With Sentinel (`sentinel` is set) there is no connection until the sentinels name a master;
/// a lost connection, or a node that no longer says it is master, is abandoned and the master
/// resolved again (backoff 50 ms doubling to `SENTINEL_MAX_BACKOFF`).
async fn supervise(
    shared: Weak<Shared>,
    slot: Arc<ArcSwapOption<ConnectionManager>>,
    mut sentinel: Option<SentinelClient>,
    managers: Managers,
    client_tracking: bool,
    attempt_timeout: Duration,
) {
    let (channel, tracking_prefix) = match shared.upgrade() {
        Some(s) => (format!("{}:invalidate", s.prefix), format!("{}:", s.prefix)),
        None => return,
    };
    // Several round trips: a sentinel's ROLE and SENTINEL MASTERS, then ROLE on the master.
    let resolve_timeout = attempt_timeout * 4;
    let mut conn: Option<ConnectionManager> =
        slot.load_full().map(|c| ConnectionManager::clone(&c));
    let mut subscribed_once = false;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(s) = shared.upgrade() else { return };
        if let (None, Some(client)) = (&conn, sentinel.as_mut()) {
            match tokio::time::timeout(resolve_timeout, client.async_get_client()).await {
                Ok(Ok(master)) => {
                    let addr = master.get_connection_info().addr().to_string();
                    let generation = s.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    match managers.manager(master, generation) {
                        Ok(m) => {
                            tracing::info!(master = %addr, "Sentinel named the Redis master; connecting.");
                            slot.store(Some(Arc::new(m.clone())));
                            conn = Some(m);
                            subscribed_once = false;
                        }
                        Err(err) => {
                            tracing::warn!(error = ?err.kind(), "Cannot set up a connection to the Redis master.")
                        }
                    }
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = ?err.kind(), detail = %err, "No reachable Redis master from the sentinels yet.")
                }
                Err(_) => tracing::warn!("The sentinels did not answer in time; retrying."),
            }
        }
        let Some(c) = conn.as_mut() else {
            let wake = Arc::clone(&s);
            drop(s);
            tokio::select! {
                () = wake.wake.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(SENTINEL_MAX_BACKOFF);
            continue;
        };
        if !subscribed_once {
            match tokio::time::timeout(attempt_timeout, c.subscribe(&channel)).await {
                Ok(Ok(())) => subscribed_once = true,
                Ok(Err(err)) => {
                    tracing::warn!(error = ?err.kind(), "Cannot subscribe to Redis invalidations yet.")
                }
                Err(_) => tracing::warn!("Redis subscription timed out; retrying."),
            }
        }
        let mut demoted = false;
        if subscribed_once && !s.subscribed.load(Ordering::Acquire) {
            // With Sentinel, trust a (re)connection only to a master: the manager reconnects
            // to the same address, which a failover may have turned into a replica.
            demoted = sentinel.is_some() && !is_master(c, attempt_timeout).await;
        }
        if subscribed_once && !demoted && !s.subscribed.load(Ordering::Acquire) {
            // The subscription is (back) on this connection: tracking is per connection, so
            // turn it on again, then flush: messages may have been missed meanwhile.
            let tracking = if client_tracking {
                let cmd = redis::cmd("CLIENT")
                    .arg("TRACKING")
                    .arg("ON")
                    .arg("BCAST")
                    .arg("PREFIX")
                    .arg(&tracking_prefix)
                    .clone();
                match tokio::time::timeout(attempt_timeout, cmd.query_async::<Value>(c)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(err)) => {
                        tracing::warn!(error = ?err.kind(), "CLIENT TRACKING refused; relying on pub/sub and cache_ttl.");
                        false
                    }
                    Err(_) => false,
                }
            } else {
                false
            };
            let ping = redis::cmd("PING").clone();
            if tokio::time::timeout(attempt_timeout, ping.query_async::<Value>(c))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                s.tracking.store(tracking, Ordering::Release);
                s.flush();
                s.clocks.set_caching(true);
                s.connected.store(true, Ordering::Release);
                s.subscribed.store(true, Ordering::Release);
                if sentinel.is_some() {
                    s.masters.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(tracking, "Subscribed to Redis invalidations.");
                backoff = Duration::from_millis(50);
            }
        }
        let healthy = !demoted && s.subscribed.load(Ordering::Acquire);
        let wake = Arc::clone(&s);
        drop(s);
        if healthy {
            // Until the connection drops (the push handler clears `subscribed`) or comes back.
            tokio::select! {
                () = wake.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Sentinel: still the master? (A failover reconfigures the old master as a
            // replica; a command may have seen READONLY.)
            if sentinel.is_some()
                && wake.subscribed.load(Ordering::Acquire)
                && !is_master(c, attempt_timeout).await
                && wake.subscribed.load(Ordering::Acquire)
            {
                tracing::warn!("The Redis node is no longer the master; asking the sentinels.");
                abandon(&wake, &slot, &mut conn);
            }
        } else if sentinel.is_some() {
            // Lost (or never had) the master: ask the sentinels again rather than wait for
            // the manager to reconnect to an address that may no longer be the master.
            tracing::warn!("Lost the Redis master; asking the sentinels.");
            abandon(&wake, &slot, &mut conn);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(SENTINEL_MAX_BACKOFF);
        } else {
            // Probe: a command on a dead connection makes the manager reconnect (and resubscribe).
            let ping = redis::cmd("PING").clone();
            let _ = tokio::time::timeout(attempt_timeout, ping.query_async::<Value>(c)).await;
            tokio::select! {
                () = wake.wake.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Sentinel mode: drop the current manager; requests see "no master" until the next one.
fn abandon(
    shared: &Shared,
    slot: &ArcSwapOption<ConnectionManager>,
    conn: &mut Option<ConnectionManager>,
) {
    slot.store(None);
    *conn = None;
    shared.abandon();
}

// === parsing ===

fn as_text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A hash reply as `(field, value)` text pairs; an empty hash is `[]` (the key is absent).
fn hash_fields(v: Option<&Value>) -> Result<Vec<(&str, &str)>, String> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Some(Value::Map(pairs)) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Some(Value::Array(items)) if items.len() % 2 == 0 => items
            .chunks_exact(2)
            .filter_map(|c| match c {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .collect(),
        Some(Value::ServerError(e)) => {
            return Err(format!("not a hash ({})", e.code()));
        }
        _ => return Err("unexpected reply type (not a hash)".into()),
    };
    pairs
        .into_iter()
        .map(|(k, v)| match (as_text(k), as_text(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err("a field or value is not UTF-8 text".into()),
        })
        .collect()
}

fn string_list(field: &str, value: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(value)
        .map_err(|e| format!("`{field}` is not a JSON array of strings: {e}"))
}

fn parse_subject(v: Option<&Value>) -> Result<SubjectData, String> {
    let mut data = SubjectData::default();
    for (field, value) in hash_fields(v).map_err(|e| format!("user record: {e}"))? {
        let list = string_list(field, value);
        match field {
            "roles" => data.roles = list?,
            "grant" => data.grant = list?,
            "deny" => data.deny = list?,
            "scopes" => data.scopes = list?,
            other => return Err(format!("user record has unknown field `{other}`")),
        }
    }
    Ok(data)
}

/// A custom role's JSON, strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomRole {
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    own: Vec<String>,
    #[serde(default)]
    inherits: Vec<String>,
}

fn parse_tenant(tenant: Option<&Value>, roles: Option<&Value>) -> Result<TenantData, String> {
    let mut data = TenantData::default();
    for (field, value) in hash_fields(tenant).map_err(|e| format!("tenant record: {e}"))? {
        match field {
            "tier" => data.tier = Some(value.to_owned()),
            "features" => data.features = string_list(field, value)?,
            other => return Err(format!("tenant record has unknown field `{other}`")),
        }
    }
    let mut roles: Vec<(&str, &str)> =
        hash_fields(roles).map_err(|e| format!("tenant roles: {e}"))?;
    // Hash order is arbitrary; compile in name order so problems are reported stably.
    roles.sort_unstable();
    for (name, value) in roles {
        let role: CustomRole = serde_json::from_str(value)
            .map_err(|e| format!("custom role `{name}` is not valid: {e}"))?;
        data.custom_roles.push(RoleDef {
            name: name.to_owned(),
            permissions: role.permissions,
            own: role.own,
            inherits: role.inherits,
            level: None,
            all_scopes: false,
        });
    }
    Ok(data)
}

fn parse_api_key(v: Option<&Value>) -> Result<Option<ApiKeyRecord>, String> {
    let fields = hash_fields(v)?;
    if fields.is_empty() {
        return Ok(None);
    }
    let mut fields: HashMap<&str, &str> = fields.into_iter().collect();
    let tenant = fields.remove("tenant").ok_or("missing `tenant`")?;
    let subject = fields.remove("subject").ok_or("missing `subject`")?;
    let expires = match fields.remove("expires") {
        None => None,
        Some(e) => Some(
            e.parse::<u64>()
                .map_err(|_| "`expires` is not unix seconds".to_owned())?,
        ),
    };
    if let Some(other) = fields.keys().next() {
        return Err(format!("unknown field `{other}`"));
    }
    // The same charsets as verified tokens: these become Redis keys and upstream headers.
    if !crate::identity::valid_tenant(tenant.as_bytes())
        || !crate::identity::valid_subject(subject.as_bytes())
    {
        return Err("`tenant` or `subject` has characters identities may not use".into());
    }
    Ok(Some(ApiKeyRecord {
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        expires,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn map(pairs: &[(&str, &str)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (bulk(k), bulk(v))).collect())
    }

    #[test]
    fn subject_parsing_is_strict() {
        let ok = parse_subject(Some(&map(&[("roles", r#"["viewer"]"#), ("deny", "[]")]))).unwrap();
        assert_eq!(ok.roles, vec!["viewer".to_owned()]);
        assert!(parse_subject(Some(&map(&[("roles", "viewer")]))).is_err());
        assert!(parse_subject(Some(&map(&[("roles", r#"[1]"#)]))).is_err());
        assert!(parse_subject(Some(&map(&[("denny", "[]")]))).is_err());
        assert!(parse_subject(Some(&Value::Int(3))).is_err());
        assert_eq!(
            parse_subject(Some(&map(&[]))).unwrap(),
            SubjectData::default()
        );
    }

    #[test]
    fn tenant_and_roles_parsing_is_strict() {
        let t = parse_tenant(
            Some(&map(&[("tier", "growth"), ("features", r#"["reports"]"#)])),
            Some(&map(&[(
                "auditor",
                r#"{"permissions":["*.view"],"inherits":["viewer"]}"#,
            )])),
        )
        .unwrap();
        assert_eq!(t.tier.as_deref(), Some("growth"));
        assert_eq!(t.custom_roles[0].inherits, vec!["viewer".to_owned()]);
        assert!(parse_tenant(Some(&map(&[])), Some(&map(&[("x", r#"{"perms":[]}"#)]))).is_err());
        assert!(parse_tenant(Some(&map(&[("features", "reports")])), Some(&map(&[]))).is_err());
    }

    #[test]
    fn api_key_records() {
        assert_eq!(parse_api_key(Some(&map(&[]))).unwrap(), None);
        let r = parse_api_key(Some(&map(&[
            ("tenant", "acme"),
            ("subject", "svc"),
            ("expires", "10"),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(r.expires, Some(10));
        assert!(parse_api_key(Some(&map(&[("tenant", "acme")]))).is_err());
        assert!(parse_api_key(Some(&map(&[("tenant", "a:b"), ("subject", "s")]))).is_err());
        assert!(
            parse_api_key(Some(&map(&[
                ("tenant", "a"),
                ("subject", "s"),
                ("expires", "soon")
            ])))
            .is_err()
        );
    }

    #[test]
    fn grant_keys_hash_like_their_borrowed_form_and_keep_the_split() {
        use std::hash::BuildHasher;
        let state = std::hash::RandomState::new();
        let key = GrantKey::new("acme", "bob").unwrap();
        assert_eq!((key.tenant(), key.subject()), ("acme", "bob"));
        let borrowed = GrantKeyRef {
            tenant: "acme",
            subject: "bob",
        };
        assert_eq!(state.hash_one(&key), state.hash_one(&borrowed));
        assert!(quick_cache::Equivalent::equivalent(&borrowed, &key));
        // The same bytes split elsewhere are another principal.
        let other = GrantKeyRef {
            tenant: "acm",
            subject: "ebob",
        };
        assert!(!quick_cache::Equivalent::equivalent(&other, &key));
        assert_ne!(key, GrantKey::new("acm", "ebob").unwrap());
        assert_ne!(state.hash_one(&key), state.hash_one(&other));
        // Subjects may contain `:` (tenants may not); empty parts are kept apart too.
        let colon = GrantKey::new("acme", "svc:a").unwrap();
        assert_eq!((colon.tenant(), colon.subject()), ("acme", "svc:a"));
        let empty = GrantKey::new("", "x").unwrap();
        assert_eq!((empty.tenant(), empty.subject()), ("", "x"));
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = KeyDigest(Sha256::digest(b"k1").into());
        let b = KeyDigest(Sha256::digest(b"k1").into());
        let c = KeyDigest(Sha256::digest(b"k2").into());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
