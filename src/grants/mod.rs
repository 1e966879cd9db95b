//! Where a principal's grants come from: the store trait, the embedded file store, and (later)
//! Redis with an in-process cache.
//!
//! A store answers `(tenant, subject) → Resolved`: the tenant's compiled record and the
//! principal's compiled grants, both compiled against the current `Policy`, so `decide` only
//! does bit tests. Stores never decide anything.

pub mod file;

use std::sync::Arc;

use crate::policy::{PrincipalGrants, TenantGrants};

pub use file::FileStore;

/// A principal's grants in one tenant, ready for `policy::decide`.
#[derive(Debug, Default)]
pub struct Resolved {
    pub tenant: Arc<TenantGrants>,
    pub principal: PrincipalGrants,
}

/// The store could not answer; the gateway fails closed (503).
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("grant store unavailable: {0}")]
    Unavailable(String),
}

/// A source of grants. A closed set of implementations, dispatched by `Store`.
pub trait RoleStore: Send + Sync {
    fn resolve(
        &self,
        tenant: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Arc<Resolved>, GrantsError>> + Send;
}

/// The configured store.
pub enum Store {
    File(FileStore),
}

impl Store {
    pub async fn resolve(&self, tenant: &str, subject: &str) -> Result<Arc<Resolved>, GrantsError> {
        match self {
            Store::File(store) => store.resolve(tenant, subject).await,
        }
    }
}
