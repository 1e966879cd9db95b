//! The embedded file store: `[tenants.*]` and `[[assignments]]` from the config, compiled once
//! per config load. Lookups allocate nothing.

use std::sync::Arc;

use crate::config::FileStoreData;
use crate::policy::{Policy, PolicyError, SubjectData, TenantData};

use super::{Access, GrantsError, Resolved, RoleStore};

/// Keyed by tenant and subject names, looked up twice per request: ahash, randomly keyed like
/// std's SipHash, at a fraction of its cost.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

#[derive(Debug, Default)]
struct TenantEntry {
    subjects: HashMap<String, Arc<Resolved>>,
    /// A subject with no assignment has no roles.
    nobody: Arc<Resolved>,
}

/// Grants from the config file. Unknown tenants and subjects resolve to "no grants".
#[derive(Debug, Default)]
pub struct FileStore {
    tenants: HashMap<String, TenantEntry>,
    unknown: Arc<Resolved>,
}

/// A problem in the file store's data, with the assignment it came from.
#[derive(Debug, Clone)]
pub struct FileStoreProblem {
    pub tenant: String,
    /// `None` for the tenant record itself.
    pub subject: Option<String>,
    pub error: PolicyError,
}

impl FileStore {
    /// Compile the store against `policy`. `config` already validated the data, so problems here
    /// are reported for completeness; the store still never grants more than the valid data says.
    pub fn build(policy: &Policy, data: &FileStoreData) -> (FileStore, Vec<FileStoreProblem>) {
        let mut problems = Vec::new();
        let empty_tenant = TenantData::default();
        let unknown_tenant = Arc::new(policy.tenant(&empty_tenant).0);
        let (unknown_principal, _) = policy.principal(&unknown_tenant, &SubjectData::default());
        let mut store = FileStore {
            tenants: HashMap::default(),
            unknown: Arc::new(Resolved::new(unknown_tenant, unknown_principal)),
        };
        let mut tenant_names: Vec<&str> = data.tenants.iter().map(|(t, _)| t.as_str()).collect();
        tenant_names.extend(data.assignments.iter().map(|((t, _), _)| t.as_str()));
        for name in tenant_names {
            if store.tenants.contains_key(name) {
                continue;
            }
            let record = data
                .tenants
                .iter()
                .find(|(t, _)| t == name)
                .map_or(&empty_tenant, |(_, r)| r);
            let (tenant, errors) = policy.tenant(record);
            problems.extend(errors.into_iter().map(|error| FileStoreProblem {
                tenant: name.to_owned(),
                subject: None,
                error,
            }));
            let tenant = Arc::new(tenant);
            let (principal, _) = policy.principal(&tenant, &SubjectData::default());
            let nobody = Arc::new(Resolved::new(tenant.clone(), principal));
            let mut entry = TenantEntry {
                subjects: HashMap::default(),
                nobody,
            };
            for ((t, subject), assignment) in &data.assignments {
                if t != name {
                    continue;
                }
                let (principal, errors) = policy.principal(&tenant, assignment);
                problems.extend(errors.into_iter().map(|error| FileStoreProblem {
                    tenant: name.to_owned(),
                    subject: Some(subject.clone()),
                    error,
                }));
                entry.subjects.insert(
                    subject.clone(),
                    Arc::new(Resolved::new(tenant.clone(), principal)),
                );
            }
            store.tenants.insert(name.to_owned(), entry);
        }
        (store, problems)
    }

    /// Synchronous lookup (the file store never waits).
    pub fn get(&self, tenant: &str, subject: &str) -> Arc<Resolved> {
        match self.tenants.get(tenant) {
            Some(entry) => entry.subjects.get(subject).unwrap_or(&entry.nobody).clone(),
            None => self.unknown.clone(),
        }
    }
}

impl RoleStore for FileStore {
    /// Compiled at config load: `policy` and `access` change nothing here.
    async fn resolve(
        &self,
        _policy: &Policy,
        tenant: &str,
        subject: &str,
        _access: Access,
    ) -> Result<Arc<Resolved>, GrantsError> {
        Ok(self.get(tenant, subject))
    }
}
