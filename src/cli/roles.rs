//! `portcullis roles …`: manage grants in Redis (DESIGN.md §5), each change validated with the
//! config's rules, written atomically with its invalidation, and audited as `role.change`.
//!
//! The operations are `grants::ops`, the same code the admin API's `/v1/tenants/...` runs
//! (validate, read, audit `before`/`after`, checked write with the invalidation). Here the
//! `role.change` event goes to the config's sinks through the command's own audit pipeline
//! and is delivered to every sink before the write commits; a concurrent writer makes the
//! command fail and ask to run it again rather than overwrite.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::audit::AuditLog;
use crate::audit::event::RoleChange;
use crate::config::{Snapshot, StoreSettings};
use crate::grants::admin::{Admin, CustomRoleJson};
use crate::grants::ops::{
    ChangeAudit, Outcome, RoleOps, RoleSource, RolesError, SubjectEdit, entitlements_state,
};
use crate::policy::SubjectData;

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

/// The CLI's `role.change` audit: the config's sinks through the command's own pipeline,
/// delivered to every sink before the change is written (the CLI exits next).
struct CliAudit<'a> {
    snap: &'a Snapshot,
}

impl ChangeAudit for CliAudit<'_> {
    async fn record(&self, change: RoleChange) -> Result<(), RolesError> {
        let log = cli_audit_log(self.snap).map_err(|e| RolesError::Audit(format!("{e:#}")))?;
        log.record_role_change(change)
            .await
            .map_err(|e| RolesError::Audit(e.to_string()))?;
        delivered(&log, "the role.change event", "nothing was changed")
            .await
            .map_err(|e| RolesError::Audit(format!("{e:#}")))
    }
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

/// Print an outcome: `no change: …`, or a heading and the record before and after.
fn print_outcome<T>(heading: &str, outcome: &Outcome<T>, render: impl Fn(&T) -> String) {
    if outcome.applied {
        println!("{heading}");
        println!("  before {}", render(&outcome.before));
        println!("  after  {}", render(&outcome.after));
    } else {
        println!("no change: {heading} {}", render(&outcome.before));
    }
}

/// Run one `roles` command; the exit code.
pub async fn run(snap: &Snapshot, actor: &str, cmd: RolesCommand) -> anyhow::Result<i32> {
    let admin = admin(snap).await?;
    let audit = CliAudit { snap };
    let ops = RoleOps {
        snap,
        admin: &admin,
        audit: &audit,
        actor,
    };
    let (tenant, subject, edit) = match cmd {
        RolesCommand::Show { tenant, subject } => {
            println!("{}", show(&ops.subject(&tenant, &subject).await?));
            return Ok(0);
        }
        RolesCommand::Assign {
            tenant,
            subject,
            roles,
        } => (
            tenant,
            subject,
            SubjectEdit {
                assign: roles,
                ..SubjectEdit::default()
            },
        ),
        RolesCommand::Revoke {
            tenant,
            subject,
            roles,
        } => (
            tenant,
            subject,
            SubjectEdit {
                revoke: roles,
                ..SubjectEdit::default()
            },
        ),
        RolesCommand::Grant {
            tenant,
            subject,
            remove,
            patterns,
        } => (
            tenant,
            subject,
            if remove {
                SubjectEdit {
                    ungrant: patterns,
                    ..SubjectEdit::default()
                }
            } else {
                SubjectEdit {
                    grant: patterns,
                    ..SubjectEdit::default()
                }
            },
        ),
        RolesCommand::Deny {
            tenant,
            subject,
            remove,
            patterns,
        } => (
            tenant,
            subject,
            if remove {
                SubjectEdit {
                    undeny: patterns,
                    ..SubjectEdit::default()
                }
            } else {
                SubjectEdit {
                    deny: patterns,
                    ..SubjectEdit::default()
                }
            },
        ),
        RolesCommand::Scopes {
            tenant,
            subject,
            scopes,
        } => (
            tenant,
            subject,
            SubjectEdit {
                scopes: Some(scopes),
                ..SubjectEdit::default()
            },
        ),
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
            let outcome = ops
                .set_custom_role(&tenant, &name, Some(RoleSource::Define(role)))
                .await?;
            print_outcome(&format!("{tenant} role {name}"), &outcome, |v| {
                v.to_string()
            });
            return Ok(0);
        }
        RolesCommand::RoleClone { tenant, from, name } => {
            let outcome = ops
                .set_custom_role(&tenant, &name, Some(RoleSource::Clone(from)))
                .await?;
            print_outcome(&format!("{tenant} role {name}"), &outcome, |v| {
                v.to_string()
            });
            return Ok(0);
        }
        RolesCommand::RoleReset { tenant, name } => {
            let outcome = ops.set_custom_role(&tenant, &name, None).await?;
            print_outcome(&format!("{tenant} role {name}"), &outcome, |v| {
                v.to_string()
            });
            return Ok(0);
        }
        RolesCommand::Tenant {
            tenant,
            tier,
            features,
        } => {
            let outcome = ops
                .set_entitlements(&tenant, tier.as_deref(), features.as_deref())
                .await?;
            print_outcome(&format!("tenant {tenant}"), &outcome, |e| {
                entitlements_state(e).to_string()
            });
            return Ok(0);
        }
    };
    let outcome = ops.edit_subject(&tenant, &subject, &edit).await?;
    if outcome.applied {
        print_outcome(&format!("{tenant}:{subject}"), &outcome, show);
    } else {
        println!("no change: {}", show(&outcome.before));
    }
    Ok(0)
}
