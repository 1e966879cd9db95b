//! `portcullis roles …`: manage grants in Redis (DESIGN.md §5), each change validated with the
//! config's rules, written atomically with its invalidation, and audited as `role.change`.
//!
//! Order matters: read the current data, validate and compute the new data, record the
//! `role.change` event with both (`before`, `after`; waiting for the audit append), then commit
//! only if the data is still what was read — the commit re-reads the record under `WATCH` on
//! the connection that runs its `MULTI`/`EXEC` (`grants::admin`), so the audited `before` is
//! exactly the state the write replaced. A change is therefore never committed unaudited; a
//! concurrent writer makes the command fail and ask to retry rather than overwrite.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::audit::AuditLog;
use crate::audit::event::RoleChange;
use crate::config::{Snapshot, StoreSettings};
use crate::grants::admin::{Admin, Commit, CustomRoleJson, Entitlements};
use crate::policy::{Pattern, SubjectData, TenantData};

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Print a principal's assignment.
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
    },
    /// Add roles to a principal.
    Assign {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        #[arg(required = true)]
        roles: Vec<String>,
    },
    /// Remove roles from a principal.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        #[arg(required = true)]
        roles: Vec<String>,
    },
    /// Add (or `--remove`) per-user grant patterns.
    Grant {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        remove: bool,
        #[arg(required = true)]
        patterns: Vec<String>,
    },
    /// Add (or `--remove`) per-user deny patterns (deny beats every grant).
    Deny {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        remove: bool,
        #[arg(required = true)]
        patterns: Vec<String>,
    },
    /// Set a principal's sub-tenant scopes (none: unrestricted).
    Scopes {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        scopes: Vec<String>,
    },
    /// Create (or replace) a tenant custom role.
    RoleCreate {
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long)]
        own: Vec<String>,
        #[arg(long)]
        inherits: Vec<String>,
    },
    /// Copy a built-in or custom role into a new tenant custom role.
    RoleClone {
        #[arg(long)]
        tenant: String,
        from: String,
        name: String,
    },
    /// Delete a tenant custom role (a built-in role of that name applies again).
    RoleReset {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Set a tenant's tier and/or features.
    Tenant {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        tier: Option<String>,
        /// Comma-separated; `--features ""` clears them.
        #[arg(long, value_delimiter = ',')]
        features: Option<Vec<String>>,
    },
}

/// Who is changing grants: `--actor`, else `$USER`.
pub fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn admin(snap: &Snapshot) -> anyhow::Result<Admin> {
    let StoreSettings::Redis(settings) = &snap.grants.store else {
        bail!(
            "`roles` manages the Redis store; this config uses the file store (edit its [[assignments]])"
        );
    };
    Admin::connect(settings)
        .await
        .context("cannot connect to Redis")
}

fn check_name(what: &str, value: &str) -> anyhow::Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if !ok {
        bail!("invalid {what} `{value}`: use ASCII letters, digits, `-`, `_`, `.`, `@`");
    }
    Ok(())
}

fn check_patterns(snap: &Snapshot, patterns: &[String]) -> anyhow::Result<()> {
    let sep = snap.policy.separator();
    for p in patterns {
        Pattern::parse(p, sep).map_err(|e| anyhow::anyhow!("{e}; help: {}", e.help()))?;
    }
    Ok(())
}

fn check_roles(snap: &Snapshot, tenant: &TenantData, roles: &[String]) -> anyhow::Result<()> {
    for r in roles {
        if !snap.policy.has_role(r) && !tenant.custom_roles.iter().any(|c| c.name == *r) {
            bail!("unknown role `{r}`; {}", snap.policy.role_help(r));
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

/// A tenant custom role as this command writes it (`null`: deleted).
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

/// The audit event for a change of one principal: `roles`/`permissions` summarise the state
/// after it (roles, then grant and `!deny` patterns), `before`/`after` are the whole record.
fn event(
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

/// Record a role change and wait until every configured sink has it (the CLI exits next).
async fn audit(snap: &Snapshot, change: RoleChange) -> anyhow::Result<()> {
    let log = cli_audit_log(snap)?;
    log.record_role_change(change).await.map_err(|_| {
        anyhow::anyhow!("the role.change event could not be recorded; nothing was changed")
    })?;
    delivered(&log, "the role.change event", "nothing was changed").await
}

/// The audit pipeline of a CLI command: the config's sinks, never the running gateway's spool
/// (the CLI keeps its own, in memory, and delivers before it exits).
pub(crate) fn cli_audit_log(snap: &Snapshot) -> anyhow::Result<AuditLog> {
    let mut settings = snap.audit.clone();
    settings.spool = None;
    AuditLog::start(&settings).context("cannot start the audit pipeline")
}

/// Wait until every configured sink has every event `log` wrote (10 s at most); `what` and
/// `consequence` word the error.
pub(crate) async fn delivered(log: &AuditLog, what: &str, consequence: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = log.stats();
        if stats.sinks.iter().all(|s| s.delivered >= stats.written) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} was not delivered to every audit sink; {consequence}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn show(data: &SubjectData) -> String {
    format!(
        "roles {:?} grant {:?} deny {:?} scopes {:?}",
        data.roles, data.grant, data.deny, data.scopes
    )
}

/// An edit of one principal's assignment.
type Edit = Box<dyn Fn(&mut SubjectData)>;

/// Run one `roles` command; the exit code.
pub async fn run(snap: &Snapshot, actor: &str, cmd: RolesCommand) -> anyhow::Result<i32> {
    let admin = admin(snap).await?;
    let (tenant, subject, op): (String, String, Edit) = match cmd {
        RolesCommand::Show { tenant, subject } => {
            println!("{}", show(&admin.subject(&tenant, &subject).await?));
            return Ok(0);
        }
        RolesCommand::Assign {
            tenant,
            subject,
            roles,
        } => {
            let t = admin.tenant(&tenant).await?;
            check_roles(snap, &t, &roles)?;
            (
                tenant,
                subject,
                Box::new(move |d: &mut SubjectData| add(&mut d.roles, &roles)),
            )
        }
        RolesCommand::Revoke {
            tenant,
            subject,
            roles,
        } => (
            tenant,
            subject,
            Box::new(move |d: &mut SubjectData| remove(&mut d.roles, &roles)),
        ),
        RolesCommand::Grant {
            tenant,
            subject,
            remove: rm,
            patterns,
        } => {
            check_patterns(snap, &patterns)?;
            (
                tenant,
                subject,
                Box::new(move |d: &mut SubjectData| {
                    if rm {
                        remove(&mut d.grant, &patterns)
                    } else {
                        add(&mut d.grant, &patterns)
                    }
                }),
            )
        }
        RolesCommand::Deny {
            tenant,
            subject,
            remove: rm,
            patterns,
        } => {
            check_patterns(snap, &patterns)?;
            (
                tenant,
                subject,
                Box::new(move |d: &mut SubjectData| {
                    if rm {
                        remove(&mut d.deny, &patterns)
                    } else {
                        add(&mut d.deny, &patterns)
                    }
                }),
            )
        }
        RolesCommand::Scopes {
            tenant,
            subject,
            scopes,
        } => {
            for s in &scopes {
                check_name("scope", s)?;
            }
            (
                tenant,
                subject,
                Box::new(move |d: &mut SubjectData| d.scopes.clone_from(&scopes)),
            )
        }
        RolesCommand::RoleCreate {
            tenant,
            name,
            permissions,
            own,
            inherits,
        } => {
            let role = CustomRoleJson {
                permissions,
                own,
                inherits,
            };
            return set_role(
                snap,
                &admin,
                actor,
                &tenant,
                &name,
                Some(role),
                "role_create",
            )
            .await;
        }
        RolesCommand::RoleClone { tenant, from, name } => {
            let t = admin.tenant(&tenant).await?;
            let def = snap
                .policy
                .resolve_role(&from)
                .and_then(|r| snap.policy.definition().roles.iter().find(|d| d.name == r))
                .or_else(|| t.custom_roles.iter().find(|d| d.name == from))
                .with_context(|| {
                    format!("unknown role `{from}`; {}", snap.policy.role_help(&from))
                })?;
            let role = CustomRoleJson {
                permissions: def.permissions.clone(),
                own: def.own.clone(),
                inherits: def.inherits.clone(),
            };
            return set_role(
                snap,
                &admin,
                actor,
                &tenant,
                &name,
                Some(role),
                "role_clone",
            )
            .await;
        }
        RolesCommand::RoleReset { tenant, name } => {
            return set_role(snap, &admin, actor, &tenant, &name, None, "role_reset").await;
        }
        RolesCommand::Tenant {
            tenant,
            tier,
            features,
        } => {
            check_name("tenant", &tenant)?;
            if let Some(t) = &tier
                && !snap.policy.tiers().contains(t)
            {
                bail!(
                    "unknown tier `{t}`; valid tiers: {}",
                    snap.policy.tiers().join(", ")
                );
            }
            let features: Option<Vec<String>> =
                features.map(|f| f.into_iter().filter(|x| !x.is_empty()).collect());
            return set_tenant(
                snap,
                &admin,
                actor,
                &tenant,
                tier.as_deref(),
                features.as_deref(),
            )
            .await;
        }
    };
    check_name("tenant", &tenant)?;
    check_name("subject", &subject)?;
    let before = admin.subject(&tenant, &subject).await?;
    let mut after = before.clone();
    op(&mut after);
    if after == before {
        println!("no change: {}", show(&before));
        return Ok(0);
    }
    let what = describe(&before, &after);
    audit(snap, event(actor, &tenant, &subject, what, &before, &after)).await?;
    let expected = before.clone();
    let committed = admin
        .update_subject(&tenant, &subject, |current| {
            if *current == expected {
                Ok(after.clone())
            } else {
                Err(())
            }
        })
        .await?;
    match committed {
        Ok((before, after)) => {
            println!("{tenant}:{subject}");
            println!("  before {}", show(&before));
            println!("  after  {}", show(&after));
            Ok(0)
        }
        Err(()) => bail!(
            "the assignment changed while this command ran; nothing was written, run it again"
        ),
    }
}

/// `assign editor; deny +billing.*` style summary of what changed.
fn describe(before: &SubjectData, after: &SubjectData) -> String {
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

async fn set_role(
    snap: &Snapshot,
    admin: &Admin,
    actor: &str,
    tenant: &str,
    name: &str,
    role: Option<CustomRoleJson>,
    change: &str,
) -> anyhow::Result<i32> {
    check_name("tenant", tenant)?;
    check_name("role", name)?;
    if let Some(role) = &role {
        if snap.policy.has_role(name) {
            bail!(
                "`{name}` is a built-in role or alias; a custom role of that name would be ignored (the built-in wins)"
            );
        }
        check_patterns(snap, &role.permissions)?;
        check_patterns(snap, &role.own)?;
        let t = admin.tenant(tenant).await?;
        check_roles(snap, &t, &role.inherits)?;
    }
    let stored = admin.custom_role(tenant, name).await?;
    let before = stored_role_state(stored.as_deref());
    let after = role_state(role.as_ref());
    if before == after {
        println!("no change: {tenant} role {name} {before}");
        return Ok(0);
    }
    let mut permissions = Vec::new();
    if let Some(r) = &role {
        permissions.extend(r.permissions.iter().cloned());
        permissions.extend(r.own.iter().map(|p| format!("own:{p}")));
        permissions.extend(r.inherits.iter().map(|p| format!("inherits:{p}")));
    }
    audit(
        snap,
        RoleChange {
            actor: actor.to_owned(),
            tenant: tenant.to_owned(),
            subject: String::new(),
            change: change.to_owned(),
            roles: vec![name.to_owned()],
            permissions,
            before: before.clone(),
            after: after.clone(),
        },
    )
    .await?;
    match admin
        .replace_custom_role(tenant, name, stored.as_deref(), role.as_ref())
        .await?
    {
        Commit::Done => {
            println!("{tenant} role {name}");
            println!("  before {before}");
            println!("  after  {after}");
            Ok(0)
        }
        Commit::Changed => {
            bail!("the role changed while this command ran; nothing was written, run it again")
        }
    }
}

/// Set a tenant's tier and/or features (what is not given is kept).
async fn set_tenant(
    snap: &Snapshot,
    admin: &Admin,
    actor: &str,
    tenant: &str,
    tier: Option<&str>,
    features: Option<&[String]>,
) -> anyhow::Result<i32> {
    let before = admin.entitlements(tenant).await?;
    let after = before.with(tier, features);
    if after == before {
        println!("no change: tenant {tenant} {}", entitlements_state(&before));
        return Ok(0);
    }
    let mut permissions = Vec::new();
    if let Some(t) = tier {
        permissions.push(format!("tier={t}"));
    }
    if let Some(f) = features {
        permissions.push(format!("features={}", f.join(",")));
    }
    audit(
        snap,
        RoleChange {
            actor: actor.to_owned(),
            tenant: tenant.to_owned(),
            subject: String::new(),
            change: "tenant".to_owned(),
            roles: Vec::new(),
            permissions,
            before: entitlements_state(&before),
            after: entitlements_state(&after),
        },
    )
    .await?;
    match admin
        .replace_entitlements(tenant, &before, tier, features)
        .await?
    {
        Commit::Done => {
            println!("tenant {tenant}");
            println!("  before {}", entitlements_state(&before));
            println!("  after  {}", entitlements_state(&after));
            Ok(0)
        }
        Commit::Changed => bail!(
            "the tenant's entitlements changed while this command ran; nothing was written, run it again"
        ),
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

    #[test]
    fn a_principal_change_records_the_whole_record_before_and_after() {
        let before = data(&["editor"], &[]);
        let mut after = before.clone();
        add(&mut after.deny, &["billing.*".to_owned()]);
        let e = event(
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
        // As this command writes it: the same, so nothing to do.
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
