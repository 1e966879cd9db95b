//! The Redis grant store (DESIGN.md §5): one pipelined round trip per miss, an L1 cache with
//! single-flight loads, invalidation by pub/sub and server-assisted client tracking, and fail
//! closed on every error.
//!
//! One RESP3 `ConnectionManager` carries the commands, the `{prefix}:invalidate` subscription
//! and the `CLIENT TRACKING` invalidations; it reconnects by itself with backoff and
//! resubscribes. Push messages are handled synchronously in the client's push callback (no
//! queue or task of ours between Redis and the eviction). Losing the connection flushes the cache (entries must be refreshed, but may answer reads
//! within `max_stale` while Redis is down); resubscribing flushes again.
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

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cache::{Clocks, L1, Use};
use super::{Access, GrantsError, Resolved, RoleStore};
use crate::config::{GrantsSettings, RedisSettings, StaleFor};
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

/// Cache key of a principal. Hashes like `GrantKeyRef`, so lookups borrow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GrantKey {
    tenant: Box<str>,
    subject: Box<str>,
}

#[derive(Hash)]
struct GrantKeyRef<'a> {
    tenant: &'a str,
    subject: &'a str,
}

impl quick_cache::Equivalent<GrantKey> for GrantKeyRef<'_> {
    fn equivalent(&self, key: &GrantKey) -> bool {
        *key.tenant == *self.tenant && *key.subject == *self.subject
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
    grants: L1<GrantKey, Arc<Resolved>>,
    api_keys: L1<KeyDigest, ApiKeyValue>,
    connected: AtomicBool,
    subscribed: AtomicBool,
    tracking: AtomicBool,
    data_errors: AtomicU64,
    round_trips: AtomicU64,
    invalidations: AtomicU64,
    /// Wakes the supervisor when the subscription comes back (tracking must be re-enabled).
    resubscribed: tokio::sync::Notify,
}

/// The Redis store: a cheap handle; clones share the connection and the cache.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    conn: ConnectionManager,
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
        if redis.url.starts_with("rediss://") {
            // Already installed (by main or an earlier store) is fine.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let info = redis
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisSetupError::Url(format!("{:?}", e.kind())))?;
        let mut settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        if let Some(user) = &redis.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &redis.password {
            settings = settings.set_password(password);
        }
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| RedisSetupError::Url(format!("{:?}", e.kind())))?;

        let shared = Arc::new(Shared {
            prefix: redis.prefix.clone(),
            clocks: Clocks::default(),
            grants: L1::new(redis.cache_capacity),
            api_keys: L1::new(redis.cache_capacity),
            connected: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            tracking: AtomicBool::new(false),
            data_errors: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            resubscribed: tokio::sync::Notify::new(),
        });
        let handler = Arc::downgrade(&shared);
        let push = move |info: PushInfo| -> Result<(), ()> {
            if let Some(shared) = handler.upgrade() {
                shared.on_push(info);
            }
            Ok(())
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.connect_timeout))
            .set_response_timeout(Some(redis.command_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3)
            .set_push_sender(push)
            .set_automatic_resubscription();
        let conn = {
            let _enter = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| RedisSetupError::Url(format!("{:?}", e.kind())))?
        };
        let supervisor = runtime.spawn(supervise(
            Arc::downgrade(&shared),
            conn.clone(),
            redis.client_tracking,
            redis.command_timeout.max(redis.connect_timeout),
        ));
        Ok(RedisStore {
            shared,
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
        self.shared.invalidations.load(Ordering::Relaxed)
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
            && shared.clocks.usable(&entry, Some(tenant), self.cache_ttl) == Some(Use::Fresh)
        {
            return Ok(entry.value);
        }
        let owned = GrantKey {
            tenant: tenant.into(),
            subject: subject.into(),
        };
        let load = shared.grants.load(&shared.clocks, owned, || {
            self.fetch_grants(policy, tenant, subject)
        });
        match tokio::time::timeout(self.command_timeout, load).await {
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
                if self.stale_allowed(access)
                    && e.fetched.elapsed() < self.max_stale
                    && shared
                        .clocks
                        .usable(&e, Some(tenant), self.cache_ttl)
                        .is_some() =>
            {
                tracing::debug!(tenant, subject, error = %err, "Serving stale grants while Redis is unavailable.");
                Ok(e.value)
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
        let resolved = match parsed {
            Ok((tenant_data, subject_data)) => {
                let (grants, mut problems) = policy.tenant(&tenant_data);
                let grants = Arc::new(grants);
                let (principal, more) = policy.principal(&grants, &subject_data);
                problems.extend(more);
                for problem in &problems {
                    self.data_error(tenant, subject, &problem.message);
                }
                Resolved {
                    tenant: grants,
                    principal,
                }
            }
            Err(message) => {
                self.data_error(tenant, subject, &message);
                // No partial grants: the principal holds nothing until the data is fixed.
                Resolved::default()
            }
        };
        Ok(Arc::new(resolved))
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

    /// One round trip; connection-class failures mark the store disconnected.
    async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, GrantsError> {
        self.shared.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(values) => {
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
    fn on_push(&self, info: PushInfo) {
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
                }
            },
            PushKind::Disconnection => {
                self.connected.store(false, Ordering::Release);
                self.subscribed.store(false, Ordering::Release);
                self.tracking.store(false, Ordering::Release);
                self.clocks.set_caching(false);
                self.flush();
                tracing::warn!("Lost the Redis connection; cache flushed, reconnecting.");
            }
            PushKind::Subscribe => {
                self.connected.store(true, Ordering::Release);
                self.resubscribed.notify_one();
            }
            _ => {}
        }
    }

    fn flush(&self) {
        self.clocks.flush();
        self.grants.forget_flights(|_| true);
        self.api_keys.forget_flights(|_| true);
    }

    /// `{tenant}` or `{tenant}:{subject}` (tenants contain no `:`; subjects may).
    fn invalidate_payload(&self, payload: &str) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        match payload.split_once(':') {
            None => self.invalidate_tenant(payload),
            Some((tenant, subject)) => self.invalidate_subject(tenant, subject),
        }
    }

    fn invalidate_tenant(&self, tenant: &str) {
        self.clocks.invalidate_tenant(tenant);
        self.grants.forget_flights(|k| &*k.tenant == tenant);
        self.api_keys.forget_flights(|_| true);
    }

    fn invalidate_subject(&self, tenant: &str, subject: &str) {
        self.clocks.invalidate_one();
        self.grants.remove(&GrantKeyRef { tenant, subject });
        self.grants
            .forget_flights(|k| &*k.tenant == tenant && &*k.subject == subject);
        self.api_keys.retain(|_, v| {
            v.as_ref()
                .is_none_or(|r| r.tenant != tenant || r.subject != subject)
        });
        self.api_keys.forget_flights(|_| true);
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
        self.invalidations.fetch_add(1, Ordering::Relaxed);
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

/// Subscribe (until it works), enable tracking after every (re)subscription, flush, and keep
/// probing while disconnected so the manager reconnects even when no request comes.
async fn supervise(
    shared: Weak<Shared>,
    mut conn: ConnectionManager,
    client_tracking: bool,
    attempt_timeout: Duration,
) {
    let (channel, tracking_prefix) = match shared.upgrade() {
        Some(s) => (format!("{}:invalidate", s.prefix), format!("{}:", s.prefix)),
        None => return,
    };
    let mut subscribed_once = false;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(s) = shared.upgrade() else { return };
        if !subscribed_once {
            match tokio::time::timeout(attempt_timeout, conn.subscribe(&channel)).await {
                Ok(Ok(())) => subscribed_once = true,
                Ok(Err(err)) => {
                    tracing::warn!(error = ?err.kind(), "Cannot subscribe to Redis invalidations yet.")
                }
                Err(_) => tracing::warn!("Redis subscription timed out; retrying."),
            }
        }
        if subscribed_once && !s.subscribed.load(Ordering::Acquire) {
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
                match tokio::time::timeout(attempt_timeout, cmd.query_async::<Value>(&mut conn))
                    .await
                {
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
            if tokio::time::timeout(attempt_timeout, ping.query_async::<Value>(&mut conn))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                s.tracking.store(tracking, Ordering::Release);
                s.flush();
                s.clocks.set_caching(true);
                s.connected.store(true, Ordering::Release);
                s.subscribed.store(true, Ordering::Release);
                tracing::info!(tracking, "Subscribed to Redis invalidations.");
                backoff = Duration::from_millis(50);
            }
        }
        let healthy = s.subscribed.load(Ordering::Acquire);
        let wake = Arc::clone(&s);
        drop(s);
        if healthy {
            // Until the connection drops (the push handler clears `subscribed`) or comes back.
            tokio::select! {
                () = wake.resubscribed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        } else {
            // Probe: a command on a dead connection makes the manager reconnect (and resubscribe).
            let ping = redis::cmd("PING").clone();
            let _ =
                tokio::time::timeout(attempt_timeout, ping.query_async::<Value>(&mut conn)).await;
            tokio::select! {
                () = wake.resubscribed.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
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
    fn digests_compare_equal_only_when_equal() {
        let a = KeyDigest(Sha256::digest(b"k1").into());
        let b = KeyDigest(Sha256::digest(b"k1").into());
        let c = KeyDigest(Sha256::digest(b"k2").into());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
