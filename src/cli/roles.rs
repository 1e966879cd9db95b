//! `portcullis roles …`: manage grants in Redis (DESIGN.md §5), each change validated with the
//! config's rules, written atomically with its invalidation, and audited as `role.change`.
//!
//! Order matters: read the current data, validate and compute the new data, record the
//! `role.change` event (waiting for the audit append), then commit only if the data is still
//! what was read. A change is therefore never committed unaudited; a concurrent writer makes
//! the command fail and ask to retry rather than overwrite.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::audit::AuditLog;
use crate::audit::event::RoleChange;
use crate::config::{Snapshot, StoreSettings};
use crate::grants::admin::{Admin, CustomRoleJson};
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

/// The audit event for a change.
// INTEGRATION: `audit::event::RoleChange` carries `roles` and `permissions` but no
// before/after; until it does, `roles`/`permissions` hold the state *after* the change (roles,
// then grant and `!deny` patterns) and `change` names the operation and its arguments. The
// full before/after is printed by the command. Extend here when the event gains the fields.
fn event(
    actor: &str,
    tenant: &str,
    subject: &str,
    change: String,
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
    }
}

/// Record a role change and wait until every configured sink has it (the CLI exits next).
async fn audit(snap: &Snapshot, change: RoleChange) -> anyhow::Result<()> {
    let mut settings = snap.audit.clone();
    // Never the running gateway's spool: the CLI keeps its own (in memory) and delivers now.
    settings.spool = None;
    let log = AuditLog::start(&settings).context("cannot start the audit pipeline")?;
    log.record_role_change(change).await.map_err(|_| {
        anyhow::anyhow!("the role.change event could not be recorded; nothing was changed")
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = log.stats();
        if stats.sinks.iter().all(|s| s.delivered >= stats.written) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the role.change event was not delivered to every audit sink; nothing was changed"
            );
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
            let mut change = RoleChange {
                actor: actor.to_owned(),
                tenant: tenant.clone(),
                subject: String::new(),
                change: "tenant".to_owned(),
                roles: Vec::new(),
                permissions: Vec::new(),
            };
            if let Some(t) = &tier {
                change.permissions.push(format!("tier={t}"));
            }
            if let Some(f) = &features {
                change.permissions.push(format!("features={}", f.join(",")));
            }
            audit(snap, change).await?;
            let before = admin
                .set_tenant(&tenant, tier.as_deref(), features.as_deref())
                .await?;
            println!(
                "tenant {tenant}: before tier {:?} features {:?}",
                before.tier, before.features
            );
            return Ok(0);
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
    audit(snap, event(actor, &tenant, &subject, what, &after)).await?;
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
        },
    )
    .await?;
    let before = admin.set_custom_role(tenant, name, role.as_ref()).await?;
    println!("{tenant} role {name}: before {before:?} after {role:?}");
    Ok(0)
}
