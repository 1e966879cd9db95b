//! Where a principal's grants come from: the store trait, the embedded file store, and Redis
//! with an in-process L1 cache and pub/sub (plus client-tracking) invalidation.
//!
//! A store answers `(tenant, subject) → Resolved`: the tenant's compiled record and the
//! principal's compiled grants, both compiled against the current `Policy`, so `decide` only
//! does bit tests. Stores never decide anything, and an error is never an allow: the pipeline
//! turns `GrantsError` into 503.

pub mod admin;
mod cache;
pub mod file;
mod intern;
pub mod ops;
pub mod redis;

use std::sync::Arc;

use http::HeaderValue;

use crate::policy::{Policy, PrincipalGrants, TenantGrants};

pub use file::FileStore;
pub use redis::{ApiKeyRecord, Health, RedisStore, Revocation};

/// A principal's grants in one tenant, ready for `policy::decide`.
#[derive(Debug)]
pub struct Resolved {
    pub tenant: Arc<TenantGrants>,
    pub principal: PrincipalGrants,
    /// The role names joined by `,`, as the upstream's roles header carries them. Built once
    /// per cached principal: joining and copying them per request was two allocations.
    /// `None` when a name cannot be a header value (the request is then refused).
    roles_header: Option<HeaderValue>,
}

impl Resolved {
    pub fn new(tenant: Arc<TenantGrants>, principal: PrincipalGrants) -> Resolved {
        let roles_header = HeaderValue::from_str(&principal.role_names().join(",")).ok();
        Resolved {
            tenant,
            principal,
            roles_header,
        }
    }

    pub fn roles_header(&self) -> Option<&HeaderValue> {
        self.roles_header.as_ref()
    }
}

impl Default for Resolved {
    fn default() -> Resolved {
        Resolved::new(Arc::default(), PrincipalGrants::default())
    }
}

/// The store could not answer; the gateway fails closed (503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantsError {
    #[error("grant store unavailable: {0}")]
    Unavailable(String),
}

/// What the request would do, which decides whether a stale cache entry may answer it while
/// the store is unreachable (`[grants] stale_for`, DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET, HEAD, OPTIONS.
    Read,
    /// Everything else: by default never served from stale grants, so an outage cannot extend
    /// a revoked user's write access.
    Write,
}

impl Access {
    pub fn of(method: &http::Method) -> Access {
        match *method {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => Access::Read,
            _ => Access::Write,
        }
    }
}

/// A source of grants. A closed set of implementations, dispatched by `Store`.
pub trait RoleStore: Send + Sync {
    fn resolve(
        &self,
        policy: &Policy,
        tenant: &str,
        subject: &str,
        access: Access,
    ) -> impl Future<Output = Result<Arc<Resolved>, GrantsError>> + Send;
}

/// The configured store.
pub enum Store {
    File(FileStore),
    Redis(RedisStore),
}

impl Store {
    pub async fn resolve(
        &self,
        policy: &Policy,
        tenant: &str,
        subject: &str,
        access: Access,
    ) -> Result<Arc<Resolved>, GrantsError> {
        match self {
            Store::File(store) => store.resolve(policy, tenant, subject, access).await,
            Store::Redis(store) => store.resolve(policy, tenant, subject, access).await,
        }
    }

    /// Readiness for `/readyz`: the file store always is; Redis when connected and subscribed
    /// to invalidations (until then nothing is cached and every request asks Redis).
    pub fn is_ready(&self) -> bool {
        match self {
            Store::File(_) => true,
            Store::Redis(store) => store.health().ready(),
        }
    }

    /// The Redis store, for API keys, health and counters.
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            Store::File(_) => None,
            Store::Redis(store) => Some(store),
        }
    }
}
