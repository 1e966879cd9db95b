//! Sharing compiled grants between principals (issue 7: memory per cached principal).
//!
//! Most principals of a tenant hold one of a few role sets, and a compiled `Resolved` holds
//! nothing about *who* the principal is: it is a pure function of the policy, the tenant's
//! record and the principal's assignment (`SubjectData`). So the Redis store compiles each
//! distinct `(policy epoch, tenant record, assignment)` once and hands the same
//! `Arc<Resolved>` (and the same `Arc<TenantGrants>`) to every principal that has it.
//!
//! Fail-closed rules:
//! - A shared value is only ever returned for input *equal* to what it was compiled from: the
//!   tenant record is compared in full, the assignment in full (`PrincipalGrants::source`), the
//!   epoch exactly. A hash collision is a miss (compile again), never another principal's
//!   grants.
//! - Nothing here decides what is fresh: every caller has just fetched the data from Redis (an
//!   L1 miss); this only saves compiling it and storing another copy. Invalidation stays with
//!   the L1 cache (`cache.rs`), untouched.
//! - Only data that compiled without a problem is shared, so problems are still logged and
//!   counted for each principal that has them.
//! - The table holds weak references: a compiled value lives exactly as long as some cache
//!   entry or request holds it. Dead entries are swept as the table grows.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::Resolved;
use crate::policy::{SubjectData, TenantData, TenantGrants};

/// One tenant's record as last compiled, and the principals compiled against it.
struct TenantSlot {
    epoch: u64,
    data: TenantData,
    grants: Weak<TenantGrants>,
    /// Hash of the assignment → the shared value (checked against its `source` on use).
    principals: HashMap<u64, Weak<Resolved>>,
    /// Sweep dead entries when `principals` reaches this size.
    sweep_at: usize,
}

/// The interning table of one Redis store (shared by its handles, every epoch).
#[derive(Default)]
pub(crate) struct Interner {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    hasher: RandomState,
    tenants: HashMap<Box<str>, TenantSlot>,
    sweep_at: usize,
}

/// What a lookup found for a freshly fetched `(tenant record, assignment)`.
pub(crate) enum Found {
    /// A principal with exactly this assignment in exactly this tenant record: share it.
    Principal(Arc<Resolved>),
    /// The tenant record is compiled already (share it); the assignment is not.
    Tenant(Arc<TenantGrants>),
    Nothing,
}

const MIN_SWEEP: usize = 64;

/// Next sweep once the table has grown by a quarter over what survived this one.
fn next_sweep(live: usize) -> usize {
    (live + live / 4).max(MIN_SWEEP)
}

impl Interner {
    pub(crate) fn lookup(
        &self,
        epoch: u64,
        tenant: &str,
        tenant_data: &TenantData,
        subject: &SubjectData,
    ) -> Found {
        let tables = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = tables.tenants.get(tenant) else {
            return Found::Nothing;
        };
        if slot.epoch != epoch || slot.data != *tenant_data {
            return Found::Nothing;
        }
        let Some(grants) = slot.grants.upgrade() else {
            return Found::Nothing;
        };
        let hash = tables.hasher.hash_one(subject);
        if let Some(resolved) = slot.principals.get(&hash).and_then(Weak::upgrade)
            && Arc::ptr_eq(&resolved.tenant, &grants)
            && resolved.principal.source() == subject
        {
            return Found::Principal(resolved);
        }
        Found::Tenant(grants)
    }

    /// Remember a value compiled without problems from `tenant_data` and its `source`.
    pub(crate) fn remember(
        &self,
        epoch: u64,
        tenant: &str,
        tenant_data: &TenantData,
        resolved: &Arc<Resolved>,
    ) {
        let mut tables = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let tables = &mut *tables;
        let hash = tables.hasher.hash_one(resolved.principal.source());
        let current = tables.tenants.get(tenant).is_some_and(|slot| {
            slot.epoch == epoch
                && slot.data == *tenant_data
                && slot
                    .grants
                    .upgrade()
                    .is_some_and(|g| Arc::ptr_eq(&g, &resolved.tenant))
        });
        if !current {
            // New tenant, changed record, other epoch, or the old compile is gone (or a
            // concurrent compile of the same record won the slot: then this one replaces
            // it; both are correct, only one is shared from now on).
            if tables.tenants.len() >= tables.sweep_at {
                tables.tenants.retain(|_, s| s.grants.strong_count() > 0);
                tables.sweep_at = next_sweep(tables.tenants.len());
            }
            tables.tenants.insert(
                tenant.into(),
                TenantSlot {
                    epoch,
                    data: tenant_data.clone(),
                    grants: Arc::downgrade(&resolved.tenant),
                    principals: HashMap::new(),
                    sweep_at: MIN_SWEEP,
                },
            );
        }
        let Some(slot) = tables.tenants.get_mut(tenant) else {
            return;
        };
        if slot.principals.len() >= slot.sweep_at {
            slot.principals.retain(|_, p| p.strong_count() > 0);
            slot.sweep_at = next_sweep(slot.principals.len());
        }
        slot.principals.insert(hash, Arc::downgrade(resolved));
    }

    /// Tenants and assignments in the table (live or not yet swept), for tests.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let tables = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let principals = tables.tenants.values().map(|s| s.principals.len()).sum();
        (tables.tenants.len(), principals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, PolicyDef, RoleDef};

    fn policy() -> Policy {
        let role = |name: &str, perms: &[&str]| RoleDef {
            name: name.into(),
            permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
            ..RoleDef::default()
        };
        Policy::compile(&PolicyDef {
            roles: vec![
                role("viewer", &["campaigns.view"]),
                role("editor", &["campaigns.view", "campaigns.edit"]),
            ],
            route_permissions: vec!["campaigns.view".into(), "campaigns.edit".into()],
            ..PolicyDef::default()
        })
        .unwrap()
    }

    fn assignment(roles: &[&str]) -> SubjectData {
        SubjectData {
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..SubjectData::default()
        }
    }

    fn tenant_data(tier: Option<&str>) -> TenantData {
        TenantData {
            tier: tier.map(str::to_owned),
            ..TenantData::default()
        }
    }

    /// What the store does on a miss: share if possible, else compile and remember.
    fn resolve(
        i: &Interner,
        policy: &Policy,
        epoch: u64,
        tenant: &str,
        t: &TenantData,
        s: &SubjectData,
    ) -> Arc<Resolved> {
        let grants = match i.lookup(epoch, tenant, t, s) {
            Found::Principal(r) => return r,
            Found::Tenant(g) => g,
            Found::Nothing => Arc::new(policy.tenant(t).0),
        };
        let (principal, problems) = policy.principal(&grants, s);
        let r = Arc::new(Resolved::new(grants, principal));
        if problems.is_empty() {
            i.remember(epoch, tenant, t, &r);
        }
        r
    }

    #[test]
    fn principals_with_the_same_roles_share_one_compiled_value() {
        let (p, i) = (policy(), Interner::default());
        let t = tenant_data(None);
        let a = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        let b = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        assert!(Arc::ptr_eq(&a, &b));
        // Another role set: its own value, the same compiled tenant.
        let c = resolve(&i, &p, 1, "acme", &t, &assignment(&["editor"]));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&a.tenant, &c.tenant));
        assert_eq!(c.principal.role_names(), ["editor".to_owned()]);
        assert_eq!(b.principal.role_names(), ["viewer".to_owned()]);
    }

    #[test]
    fn a_changed_role_set_or_tenant_record_or_epoch_is_not_shared() {
        let (p, i) = (policy(), Interner::default());
        let t = tenant_data(None);
        let a = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        // Overrides are part of the assignment.
        let mut denied = assignment(&["viewer"]);
        denied.deny = vec!["campaigns.view".into()];
        let d = resolve(&i, &p, 1, "acme", &t, &denied);
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(d.principal.source(), &denied);
        // The same roles in another order are another assignment (compiled alike, not shared).
        let two = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer", "editor"]));
        let swapped = resolve(&i, &p, 1, "acme", &t, &assignment(&["editor", "viewer"]));
        assert!(!Arc::ptr_eq(&two, &swapped));
        // The upstream's roles header is built with the value, in the assignment's order.
        assert_eq!(two.roles_header().unwrap(), "viewer,editor");
        assert_eq!(swapped.roles_header().unwrap(), "editor,viewer");
        // A changed tenant record: compiled again, for the tenant and the principal.
        let t2 = tenant_data(Some("gold"));
        let a2 = resolve(&i, &p, 1, "acme", &t2, &assignment(&["viewer"]));
        assert!(!Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a.tenant, &a2.tenant));
        // Another tenant with the same record, another epoch: not shared either.
        let other = resolve(&i, &p, 1, "other", &t2, &assignment(&["viewer"]));
        assert!(!Arc::ptr_eq(&a2, &other));
        let next = resolve(&i, &p, 2, "acme", &t2, &assignment(&["viewer"]));
        assert!(!Arc::ptr_eq(&a2, &next));
        // ... and the new epoch is then what is shared.
        let again = resolve(&i, &p, 2, "acme", &t2, &assignment(&["viewer"]));
        assert!(Arc::ptr_eq(&next, &again));
    }

    #[test]
    fn a_hash_collision_is_a_miss_never_another_assignment() {
        let (p, i) = (policy(), Interner::default());
        let t = tenant_data(None);
        let viewer = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        // Forge a collision: file the viewer value under the editor assignment's hash.
        {
            let mut tables = i.inner.lock().unwrap();
            let hash = tables.hasher.hash_one(assignment(&["editor"]));
            let slot = tables.tenants.get_mut("acme").unwrap();
            slot.principals.insert(hash, Arc::downgrade(&viewer));
        }
        let editor = resolve(&i, &p, 1, "acme", &t, &assignment(&["editor"]));
        assert!(!Arc::ptr_eq(&viewer, &editor));
        assert_eq!(editor.principal.role_names(), ["editor".to_owned()]);
    }

    #[test]
    fn nothing_is_kept_alive_and_dead_entries_are_swept() {
        let (p, i) = (policy(), Interner::default());
        let t = tenant_data(None);
        let kept = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        for n in 0..1000 {
            // Each a distinct assignment, dropped at once (as an evicted cache entry would be).
            let mut s = assignment(&["editor"]);
            s.scopes = vec![format!("brand-{n}")];
            drop(resolve(&i, &p, 1, "acme", &t, &s));
        }
        let (tenants, principals) = i.sizes();
        assert_eq!(tenants, 1);
        assert!(principals < 200, "dead entries swept: {principals} left");
        let again = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        assert!(Arc::ptr_eq(&kept, &again));
        drop((kept, again));
        // Weak only: once no one holds it, it is compiled again.
        let fresh = resolve(&i, &p, 1, "acme", &t, &assignment(&["viewer"]));
        assert_eq!(Arc::strong_count(&fresh), 1);
    }
}
