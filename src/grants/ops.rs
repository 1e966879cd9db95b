//! Role management operations, shared by `portcullis roles` and the admin API
//! (`/v1/tenants/...`), so both validate, audit and write the same way.
//!
//! Every change follows one order: validate the input with the config's rules, read the
//! current record, compute the new one, record the `role.change` event with both (`before`,
//! `after`; the caller's `ChangeAudit` decides what "recorded" means: delivered to every sink
//! for the CLI, appended to the spool for a running gateway), then commit only if the record
//! is still what was read (`grants::admin`: re-read under `WATCH` on the connection that runs
//! the `MULTI`/`EXEC` with the invalidation `PUBLISH`). A change is therefore never committed
//! unaudited, and a concurrent writer makes the change fail (`RolesError::Changed`) rather
//! than be overwritten. A change that would leave the record as it is writes nothing and
//! records nothing (`Outcome::applied` is false).

use std::future::Future;

use serde::Serialize;

use crate::audit::event::RoleChange;
use crate::config::Snapshot;
use crate::grants::admin::{Admin, AdminError, Commit, CustomRoleJson, Entitlements};
use crate::policy::{Pattern, SubjectData, TenantData};

/// Why a role operation did nothing. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    /// The request itself is wrong (name, unknown role or tier, bad pattern, empty change).
    #[error("{0}")]
    Invalid(String),
    /// The record changed between the read the event was computed from and the commit.
    #[error("the {0} changed while this change was being made; nothing was written, try again")]
    Changed(&'static str),
    /// The `role.change` event could not be recorded, so the change was not made.
    #[error("the role.change event could not be recorded ({0}); nothing was changed")]
    Audit(String),
    /// Redis failed, holds data the store would refuse, or kept changing (`AdminError`).
    #[error(transparent)]
    Store(#[from] AdminError),
}

/// Records a `role.change` event before its write commits; `Err` aborts the change.
pub trait ChangeAudit {
    fn record(&self, change: RoleChange) -> impl Future<Output = Result<(), RolesError>> + Send;
}

/// What a change did: the record before and after it. `applied` is false when the change
/// would not have changed anything (then nothing was written or audited, `after == before`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome<T> {
    pub applied: bool,
    /// The audit event's `change` (empty when nothing was applied).
    pub change: String,
    pub before: T,
    pub after: T,
}

impl<T: Clone> Outcome<T> {
    fn unchanged(state: T) -> Outcome<T> {
        Outcome {
            applied: false,
            change: String::new(),
            before: state.clone(),
            after: state,
        }
    }
}

/// Tenant, subject, role, scope and feature names: 1 to 256 of ASCII letters, digits,
/// `-`, `_`, `.`, `@` (so a name can never reach into another key of the schema).
pub fn check_name(what: &str, value: &str) -> Result<(), RolesError> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(RolesError::Invalid(format!(
            "invalid {what} `{value}`: use 1 to 256 ASCII letters, digits, `-`, `_`, `.`, `@`"
        )))
    }
}

fn check_names(what: &str, values: &[String]) -> Result<(), RolesError> {
    values.iter().try_for_each(|v| check_name(what, v))
}

fn check_patterns(snap: &Snapshot, patterns: &[String]) -> Result<(), RolesError> {
    let sep = snap.policy.separator();
    for p in patterns {
        Pattern::parse(p, sep)
            .map_err(|e| RolesError::Invalid(format!("{e}; help: {}", e.help())))?;
    }
    Ok(())
}

/// Every role is a built-in role, an alias, or one of the tenant's custom roles.
fn check_roles(snap: &Snapshot, tenant: &TenantData, roles: &[String]) -> Result<(), RolesError> {
    for r in roles {
        if !snap.policy.has_role(r) && !tenant.custom_roles.iter().any(|c| c.name == *r) {
            return Err(RolesError::Invalid(format!(
                "unknown role `{r}`; {}",
                snap.policy.role_help(r)
            )));
        }
    }
    Ok(())
}

fn add(list: &mut Vec<String>, items: &[String]) {
    for i in items {
        if !list.contains(i) {
            list.push(i.clone());
        }
    }
}

fn remove(list: &mut Vec<String>, items: &[String]) {
    list.retain(|x| !items.contains(x));
}

/// A principal's record (`{prefix}:{tenant}:user:{subject}`) as `before`/`after` show it.
pub fn subject_state(data: &SubjectData) -> serde_json::Value {
    serde_json::json!({
        "roles": data.roles,
        "grant": data.grant,
        "deny": data.deny,
        "scopes": data.scopes,
    })
}

/// A tenant custom role as stored (raw JSON text; `null` when absent). Text that is not JSON
/// (a record the store would refuse) is kept as a string, so the event shows what was there.
pub fn stored_role_state(stored: Option<&str>) -> serde_json::Value {
    match stored {
        None => serde_json::Value::Null,
        Some(text) => serde_json::from_str(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_owned())),
    }
}

/// A tenant custom role as these operations write it (`null`: deleted).
pub fn role_state(role: Option<&CustomRoleJson>) -> serde_json::Value {
    match role {
        None => serde_json::Value::Null,
        Some(r) => serde_json::json!({
            "permissions": r.permissions,
            "own": r.own,
            "inherits": r.inherits,
        }),
    }
}

/// A tenant's entitlements (`{prefix}:{tenant}:tenant`) as `before`/`after` show them.
pub fn entitlements_state(e: &Entitlements) -> serde_json::Value {
    serde_json::json!({"tier": e.tier, "features": e.features})
}

/// An edit of one principal's record. Removals apply before additions; an item may not be
/// both added and removed by one edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectEdit {
    /// Roles to add (each must exist: built-in, alias, or a custom role of the tenant).
    pub assign: Vec<String>,
    /// Roles to remove (need not exist any more).
    pub revoke: Vec<String>,
    /// Grant patterns to add / remove.
    pub grant: Vec<String>,
    pub ungrant: Vec<String>,
    /// Deny patterns to add / remove (a deny beats every grant).
    pub deny: Vec<String>,
    pub undeny: Vec<String>,
    /// Replace the sub-tenant scopes (`Some(vec![])`: unrestricted).
    pub scopes: Option<Vec<String>>,
}

impl SubjectEdit {
    pub fn is_empty(&self) -> bool {
        *self == SubjectEdit::default()
    }

    fn validate(&self, snap: &Snapshot) -> Result<(), RolesError> {
        if self.is_empty() {
            return Err(RolesError::Invalid(
                "nothing to change: give at least one of assign, revoke, grant, ungrant, deny, undeny, scopes".into(),
            ));
        }
        check_names("role", &self.assign)?;
        check_names("role", &self.revoke)?;
        check_patterns(snap, &self.grant)?;
        check_patterns(snap, &self.ungrant)?;
        check_patterns(snap, &self.deny)?;
        check_patterns(snap, &self.undeny)?;
        if let Some(scopes) = &self.scopes {
            check_names("scope", scopes)?;
        }
        for (what, added, removed) in [
            ("role", &self.assign, &self.revoke),
            ("grant pattern", &self.grant, &self.ungrant),
            ("deny pattern", &self.deny, &self.undeny),
        ] {
            if let Some(both) = added.iter().find(|a| removed.contains(a)) {
                return Err(RolesError::Invalid(format!(
                    "{what} `{both}` is both added and removed by this change"
                )));
            }
        }
        Ok(())
    }

    fn apply(&self, data: &mut SubjectData) {
        remove(&mut data.roles, &self.revoke);
        add(&mut data.roles, &self.assign);
        remove(&mut data.grant, &self.ungrant);
        add(&mut data.grant, &self.grant);
        remove(&mut data.deny, &self.undeny);
        add(&mut data.deny, &self.deny);
        if let Some(scopes) = &self.scopes {
            data.scopes.clone_from(scopes);
        }
    }
}

/// `roles +editor; deny +billing.*` style summary of what changed.
pub fn describe(before: &SubjectData, after: &SubjectData) -> String {
    let mut parts = Vec::new();
    for (field, b, a) in [
        ("roles", &before.roles, &after.roles),
        ("grant", &before.grant, &after.grant),
        ("deny", &before.deny, &after.deny),
        ("scopes", &before.scopes, &after.scopes),
    ] {
        for x in a.iter().filter(|x| !b.contains(x)) {
            parts.push(format!("{field} +{x}"));
        }
        for x in b.iter().filter(|x| !a.contains(x)) {
            parts.push(format!("{field} -{x}"));
        }
    }
    parts.join("; ")
}

/// The audit event for a change of one principal: `roles`/`permissions` summarise the state
/// after it (roles, then grant and `!deny` patterns), `before`/`after` are the whole record.
fn subject_event(
    actor: &str,
    tenant: &str,
    subject: &str,
    change: String,
    before: &SubjectData,
    after: &SubjectData,
) -> RoleChange {
    let mut permissions = after.grant.clone();
    permissions.extend(after.deny.iter().map(|d| format!("!{d}")));
    RoleChange {
        actor: actor.to_owned(),
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        change,
        roles: after.roles.clone(),
        permissions,
        before: subject_state(before),
        after: subject_state(after),
    }
}

/// How a tenant custom role is defined by `set_custom_role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSource {
    /// Create or replace with this definition (`role_create`).
    Define(CustomRoleJson),
    /// Copy a built-in role (or alias) or another custom role of the tenant (`role_clone`).
    Clone(String),
}

/// The role management operations on one grant store, audited by `A`.
pub struct RoleOps<'a, A> {
    pub snap: &'a Snapshot,
    pub admin: &'a Admin,
    pub audit: &'a A,
    /// Who makes the changes, recorded as the event's `actor`.
    pub actor: &'a str,
}

impl<A: ChangeAudit + Sync> RoleOps<'_, A> {
    /// A principal's record (empty when absent).
    pub async fn subject(&self, tenant: &str, subject: &str) -> Result<SubjectData, RolesError> {
        check_name("tenant", tenant)?;
        check_name("subject", subject)?;
        Ok(self.admin.subject(tenant, subject).await?)
    }

    /// Edit a principal's roles, grant/deny overrides and scopes.
    pub async fn edit_subject(
        &self,
        tenant: &str,
        subject: &str,
        edit: &SubjectEdit,
    ) -> Result<Outcome<SubjectData>, RolesError> {
        check_name("tenant", tenant)?;
        check_name("subject", subject)?;
        edit.validate(self.snap)?;
        if !edit.assign.is_empty() {
            let t = self.admin.tenant(tenant).await?;
            check_roles(self.snap, &t, &edit.assign)?;
        }
        let before = self.admin.subject(tenant, subject).await?;
        let mut after = before.clone();
        edit.apply(&mut after);
        if after == before {
            return Ok(Outcome::unchanged(before));
        }
        let change = describe(&before, &after);
        self.audit
            .record(subject_event(
                self.actor,
                tenant,
                subject,
                change.clone(),
                &before,
                &after,
            ))
            .await?;
        let expected = before.clone();
        let committed = self
            .admin
            .update_subject(tenant, subject, |current| {
                if *current == expected {
                    Ok(after.clone())
                } else {
                    Err(())
                }
            })
            .await?;
        match committed {
            Ok((before, after)) => Ok(Outcome {
                applied: true,
                change,
                before,
                after,
            }),
            Err(()) => Err(RolesError::Changed("assignment")),
        }
    }

    /// A tenant's record: entitlements and custom roles (parsed as strictly as the store).
    pub async fn tenant(&self, tenant: &str) -> Result<TenantData, RolesError> {
        check_name("tenant", tenant)?;
        Ok(self.admin.tenant(tenant).await?)
    }

    /// A tenant custom role as stored (`null` when the tenant has none of that name).
    pub async fn custom_role(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<serde_json::Value, RolesError> {
        check_name("tenant", tenant)?;
        check_name("role", name)?;
        let stored = self.admin.custom_role(tenant, name).await?;
        Ok(stored_role_state(stored.as_deref()))
    }

    /// Create, replace (`Some`) or delete (`None`: reset, a built-in role of that name applies
    /// again) a tenant custom role. `before`/`after` are `role_state`s (`null`: none).
    pub async fn set_custom_role(
        &self,
        tenant: &str,
        name: &str,
        source: Option<RoleSource>,
    ) -> Result<Outcome<serde_json::Value>, RolesError> {
        check_name("tenant", tenant)?;
        check_name("role", name)?;
        let (role, change) = match source {
            None => (None, "role_reset"),
            Some(source) => {
                if self.snap.policy.has_role(name) {
                    return Err(RolesError::Invalid(format!(
                        "`{name}` is a built-in role or alias; a custom role of that name would be ignored (the built-in wins)"
                    )));
                }
                let t = self.admin.tenant(tenant).await?;
                match source {
                    RoleSource::Define(role) => {
                        check_patterns(self.snap, &role.permissions)?;
                        check_patterns(self.snap, &role.own)?;
                        check_names("role", &role.inherits)?;
                        check_roles(self.snap, &t, &role.inherits)?;
                        (Some(role), "role_create")
                    }
                    RoleSource::Clone(from) => {
                        check_name("role", &from)?;
                        let policy = &self.snap.policy;
                        let def = policy
                            .resolve_role(&from)
                            .and_then(|r| policy.definition().roles.iter().find(|d| d.name == r))
                            .or_else(|| t.custom_roles.iter().find(|d| d.name == from))
                            .ok_or_else(|| {
                                RolesError::Invalid(format!(
                                    "unknown role `{from}`; {}",
                                    policy.role_help(&from)
                                ))
                            })?;
                        let role = CustomRoleJson {
                            permissions: def.permissions.clone(),
                            own: def.own.clone(),
                            inherits: def.inherits.clone(),
                        };
                        (Some(role), "role_clone")
                    }
                }
            }
        };
        let stored = self.admin.custom_role(tenant, name).await?;
        let before = stored_role_state(stored.as_deref());
        let after = role_state(role.as_ref());
        if before == after {
            return Ok(Outcome::unchanged(before));
        }
        let mut permissions = Vec::new();
        if let Some(r) = &role {
            permissions.extend(r.permissions.iter().cloned());
            permissions.extend(r.own.iter().map(|p| format!("own:{p}")));
            permissions.extend(r.inherits.iter().map(|p| format!("inherits:{p}")));
        }
        self.audit
            .record(RoleChange {
                actor: self.actor.to_owned(),
                tenant: tenant.to_owned(),
                subject: String::new(),
                change: change.to_owned(),
                roles: vec![name.to_owned()],
                permissions,
                before: before.clone(),
                after: after.clone(),
            })
            .await?;
        match self
            .admin
            .replace_custom_role(tenant, name, stored.as_deref(), role.as_ref())
            .await?
        {
            Commit::Done => Ok(Outcome {
                applied: true,
                change: change.to_owned(),
                before,
                after,
            }),
            Commit::Changed => Err(RolesError::Changed("role")),
        }
    }

    /// A tenant's entitlements.
    pub async fn entitlements(&self, tenant: &str) -> Result<Entitlements, RolesError> {
        check_name("tenant", tenant)?;
        Ok(self.admin.entitlements(tenant).await?)
    }

    /// Set a tenant's tier and/or features (what is not given is kept; empty feature names
    /// are dropped, so `Some(vec![])` clears them).
    pub async fn set_entitlements(
        &self,
        tenant: &str,
        tier: Option<&str>,
        features: Option<&[String]>,
    ) -> Result<Outcome<Entitlements>, RolesError> {
        check_name("tenant", tenant)?;
        if tier.is_none() && features.is_none() {
            return Err(RolesError::Invalid(
                "nothing to change: give a tier and/or features".into(),
            ));
        }
        if let Some(t) = tier
            && !self.snap.policy.tiers().iter().any(|x| x == t)
        {
            return Err(RolesError::Invalid(format!(
                "unknown tier `{t}`; valid tiers: {}",
                self.snap.policy.tiers().join(", ")
            )));
        }
        let features: Option<Vec<String>> =
            features.map(|f| f.iter().filter(|x| !x.is_empty()).cloned().collect());
        if let Some(f) = &features {
            check_names("feature", f)?;
        }
        let features = features.as_deref();
        let before = self.admin.entitlements(tenant).await?;
        let after = before.with(tier, features);
        if after == before {
            return Ok(Outcome::unchanged(before));
        }
        let mut permissions = Vec::new();
        if let Some(t) = tier {
            permissions.push(format!("tier={t}"));
        }
        if let Some(f) = features {
            permissions.push(format!("features={}", f.join(",")));
        }
        self.audit
            .record(RoleChange {
                actor: self.actor.to_owned(),
                tenant: tenant.to_owned(),
                subject: String::new(),
                change: "tenant".to_owned(),
                roles: Vec::new(),
                permissions,
                before: entitlements_state(&before),
                after: entitlements_state(&after),
            })
            .await?;
        match self
            .admin
            .replace_entitlements(tenant, &before, tier, features)
            .await?
        {
            Commit::Done => Ok(Outcome {
                applied: true,
                change: "tenant".to_owned(),
                before,
                after,
            }),
            Commit::Changed => Err(RolesError::Changed("tenant's entitlements")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(roles: &[&str], deny: &[&str]) -> SubjectData {
        SubjectData {
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            ..SubjectData::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_principal_change_records_the_whole_record_before_and_after() {
        let before = data(&["editor"], &[]);
        let mut after = before.clone();
        SubjectEdit {
            deny: strings(&["billing.*"]),
            ..SubjectEdit::default()
        }
        .apply(&mut after);
        let e = subject_event(
            "alice",
            "acme",
            "bob",
            describe(&before, &after),
            &before,
            &after,
        );
        assert_eq!(e.change, "deny +billing.*");
        assert_eq!(
            e.before,
            json!({"roles": ["editor"], "grant": [], "deny": [], "scopes": []})
        );
        assert_eq!(
            e.after,
            json!({"roles": ["editor"], "grant": [], "deny": ["billing.*"], "scopes": []})
        );
        assert_eq!(e.permissions, vec!["!billing.*".to_owned()]);
    }

    #[test]
    fn an_edit_removes_then_adds_and_keeps_order() {
        let mut d = data(&["viewer", "editor"], &["x.y"]);
        SubjectEdit {
            assign: strings(&["manager", "viewer"]),
            revoke: strings(&["editor"]),
            undeny: strings(&["x.y"]),
            scopes: Some(strings(&["brand-1"])),
            ..SubjectEdit::default()
        }
        .apply(&mut d);
        assert_eq!(d.roles, strings(&["viewer", "manager"]));
        assert!(d.deny.is_empty());
        assert_eq!(d.scopes, strings(&["brand-1"]));
        assert_eq!(
            describe(&data(&["viewer", "editor"], &["x.y"]), &d),
            "roles +manager; roles -editor; deny -x.y; scopes +brand-1"
        );
    }

    #[test]
    fn names_that_could_reach_into_other_keys_are_refused() {
        for bad in ["", "a:b", "a b", "a*", "ü", "a/b", &"x".repeat(257)] {
            assert!(check_name("tenant", bad).is_err(), "{bad:?}");
        }
        for good in ["acme", "u-1_2.3@example.com", &"x".repeat(256)] {
            assert!(check_name("tenant", good).is_ok(), "{good:?}");
        }
        let e = check_name("subject", "a:b").unwrap_err().to_string();
        assert!(e.starts_with("invalid subject `a:b`"), "{e}");
    }

    #[test]
    fn role_states_compare_stored_text_with_what_is_written() {
        let role = CustomRoleJson {
            permissions: vec!["campaigns.edit".into()],
            ..CustomRoleJson::default()
        };
        assert_eq!(stored_role_state(None), serde_json::Value::Null);
        assert_eq!(role_state(None), serde_json::Value::Null);
        // Stored by another writer without the empty lists: a different record.
        let sparse = stored_role_state(Some(r#"{"permissions":["campaigns.edit"]}"#));
        assert_eq!(sparse, json!({"permissions": ["campaigns.edit"]}));
        assert_ne!(sparse, role_state(Some(&role)));
        // As these operations write it: the same, so nothing to do.
        let text = serde_json::to_string(&role).unwrap();
        assert_eq!(stored_role_state(Some(&text)), role_state(Some(&role)));
        // Not JSON at all: shown as the text that was there.
        assert_eq!(stored_role_state(Some("{oops")), json!("{oops"));
    }

    #[test]
    fn entitlements_keep_what_is_not_given() {
        let before = Entitlements {
            tier: Some("growth".into()),
            features: vec!["reports".into()],
        };
        let after = before.with(Some("starter"), None);
        assert_eq!(
            entitlements_state(&after),
            json!({"tier": "starter", "features": ["reports"]})
        );
        let cleared = before.with(None, Some(&[]));
        assert_eq!(
            entitlements_state(&cleared),
            json!({"tier": "growth", "features": []})
        );
        assert_eq!(
            entitlements_state(&Entitlements::default()),
            json!({"tier": null, "features": []})
        );
        assert_eq!(before.with(None, None), before);
    }
}
