//! `portcullis review`: access-review snapshots of a tenant and the difference between two.
//!
//! A snapshot lists every principal with an assignment: roles as assigned, effective
//! permissions (what `Policy::held_permissions` says the principal holds on the route
//! universe, `own` marked), overrides and scopes. The file store is read from the config; Redis
//! by SCANning the tenant's user keys (admin tooling, never the request path).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::audit::AccessReview;
use crate::cli::ReviewFormat;
use crate::cli::roles::{cli_audit_log, delivered};
use crate::config::{Snapshot, StoreSettings};
use crate::grants::admin::Admin;
use crate::policy::{SubjectData, TenantData};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewSnapshot {
    pub tenant: String,
    pub taken_at: String,
    pub principals: Vec<PrincipalRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRow {
    pub subject: String,
    pub roles: Vec<String>,
    /// Effective permissions; own-only ones are suffixed ` (own)`.
    pub permissions: Vec<String>,
    pub grant: Vec<String>,
    pub deny: Vec<String>,
    pub scopes: Vec<String>,
}

/// Build the snapshot of one tenant.
pub async fn export(snap: &Snapshot, tenant: &str) -> anyhow::Result<ReviewSnapshot> {
    let (tenant_data, subjects): (TenantData, Vec<(String, SubjectData)>) = match &snap.grants.store
    {
        StoreSettings::File(data) => (
            data.tenants
                .iter()
                .find(|(t, _)| t == tenant)
                .map(|(_, d)| d.clone())
                .unwrap_or_default(),
            data.assignments
                .iter()
                .filter(|((t, _), _)| t == tenant)
                .map(|((_, s), d)| (s.clone(), d.clone()))
                .collect(),
        ),
        StoreSettings::Redis(settings) => {
            let admin = Admin::connect(settings)
                .await
                .context("cannot connect to Redis")?;
            let t = admin.tenant(tenant).await?;
            let mut rows = Vec::new();
            for s in admin.subjects(tenant).await? {
                let d = admin.subject(tenant, &s).await?;
                rows.push((s, d));
            }
            (t, rows)
        }
    };
    let (grants, _) = snap.policy.tenant(&tenant_data);
    let mut principals: Vec<PrincipalRow> = subjects
        .into_iter()
        .map(|(subject, data)| {
            let (p, _) = snap.policy.principal(&grants, &data);
            let permissions = snap
                .policy
                .held_permissions(&p)
                .map(|(name, own)| {
                    if own {
                        format!("{name} (own)")
                    } else {
                        name.to_owned()
                    }
                })
                .collect();
            PrincipalRow {
                subject,
                roles: data.roles,
                permissions,
                grant: data.grant,
                deny: data.deny,
                scopes: data.scopes,
            }
        })
        .collect();
    principals.sort_by(|a, b| a.subject.cmp(&b.subject));
    Ok(ReviewSnapshot {
        tenant: tenant.to_owned(),
        taken_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        principals,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// CSV, one principal per line, list cells joined with `;`.
pub fn to_csv(r: &ReviewSnapshot) -> String {
    let mut out = String::from("tenant,subject,roles,permissions,grant,deny,scopes\n");
    for p in &r.principals {
        let cells = [
            r.tenant.clone(),
            p.subject.clone(),
            p.roles.join(";"),
            p.permissions.join(";"),
            p.grant.join(";"),
            p.deny.join(";"),
            p.scopes.join(";"),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        let _ = writeln!(out, "{}", line.join(","));
    }
    out
}

/// The exported document, exactly as `review export` prints it (JSON ends with a newline).
pub fn document(r: &ReviewSnapshot, format: ReviewFormat) -> anyhow::Result<String> {
    Ok(match format {
        ReviewFormat::Json => {
            let mut text = serde_json::to_string_pretty(r)?;
            text.push('\n');
            text
        }
        ReviewFormat::Csv => to_csv(r),
    })
}

/// The `access.review` event of an export: who, which tenant, how many principals, and the
/// SHA-256 of the document's bytes (`sha256sum` of the saved export matches it).
pub fn review_event(
    actor: &str,
    r: &ReviewSnapshot,
    format: ReviewFormat,
    document: &str,
) -> AccessReview {
    use sha2::Digest;
    AccessReview {
        actor: actor.to_owned(),
        tenant: r.tenant.clone(),
        principals: u64::try_from(r.principals.len()).unwrap_or(u64::MAX),
        format: match format {
            ReviewFormat::Json => "json",
            ReviewFormat::Csv => "csv",
        }
        .to_owned(),
        sha256: hex::encode(sha2::Sha256::digest(document.as_bytes())),
    }
}

/// Record that the review was taken and wait until every configured sink has it.
pub async fn audit(
    snap: &Snapshot,
    actor: &str,
    r: &ReviewSnapshot,
    format: ReviewFormat,
    document: &str,
) -> anyhow::Result<()> {
    let log = cli_audit_log(snap)?;
    log.record_access_review(review_event(actor, r, format, document))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the access.review event could not be recorded; nothing was exported")
        })?;
    delivered(&log, "the access.review event", "nothing was exported").await
}

/// Who gained or lost which permission (and role) between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReviewDiff {
    /// subject → (gained, lost) permissions; only subjects with a change.
    pub permissions: BTreeMap<String, (Vec<String>, Vec<String>)>,
    pub roles: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

pub fn diff(a: &ReviewSnapshot, b: &ReviewSnapshot) -> ReviewDiff {
    let index = |s: &ReviewSnapshot| -> BTreeMap<String, PrincipalRow> {
        s.principals
            .iter()
            .map(|p| (p.subject.clone(), p.clone()))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let subjects: BTreeSet<&String> = ia.keys().chain(ib.keys()).collect();
    let mut out = ReviewDiff::default();
    for s in subjects {
        let get = |i: &BTreeMap<String, PrincipalRow>, f: fn(&PrincipalRow) -> &Vec<String>| {
            i.get(s)
                .map(|p| f(p).iter().cloned().collect::<BTreeSet<String>>())
                .unwrap_or_default()
        };
        for (fields, target) in [
            (
                (get(&ia, |p| &p.permissions), get(&ib, |p| &p.permissions)),
                &mut out.permissions,
            ),
            (
                (get(&ia, |p| &p.roles), get(&ib, |p| &p.roles)),
                &mut out.roles,
            ),
        ] {
            let (before, after) = fields;
            let gained: Vec<String> = after.difference(&before).cloned().collect();
            let lost: Vec<String> = before.difference(&after).cloned().collect();
            if !gained.is_empty() || !lost.is_empty() {
                target.insert(s.clone(), (gained, lost));
            }
        }
    }
    out
}

pub fn render_diff(d: &ReviewDiff) -> String {
    let mut out = String::new();
    let subjects: BTreeSet<&String> = d.permissions.keys().chain(d.roles.keys()).collect();
    for s in &subjects {
        let _ = writeln!(out, "{s}");
        if let Some((g, l)) = d.roles.get(*s) {
            for r in g {
                let _ = writeln!(out, "  + role {r}");
            }
            for r in l {
                let _ = writeln!(out, "  - role {r}");
            }
        }
        if let Some((g, l)) = d.permissions.get(*s) {
            for p in g {
                let _ = writeln!(out, "  + {p}");
            }
            for p in l {
                let _ = writeln!(out, "  - {p}");
            }
        }
    }
    let _ = writeln!(out, "{} principal(s) changed", subjects.len());
    out
}

/// Read a JSON snapshot written by `review export --format json`.
pub fn load(path: &std::path::Path) -> anyhow::Result<ReviewSnapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "`{}` is not a JSON review snapshot (diff reads `--format json` exports)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn snapshot() -> ReviewSnapshot {
        ReviewSnapshot {
            tenant: "acme".into(),
            taken_at: "2026-01-01T00:00:00Z".into(),
            principals: ["ann", "bob"]
                .iter()
                .map(|s| PrincipalRow {
                    subject: (*s).to_owned(),
                    roles: vec!["viewer".into()],
                    permissions: vec!["campaigns.view".into()],
                    grant: Vec::new(),
                    deny: Vec::new(),
                    scopes: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_event_hashes_exactly_the_printed_document() {
        let r = snapshot();
        for (format, name) in [(ReviewFormat::Json, "json"), (ReviewFormat::Csv, "csv")] {
            let doc = document(&r, format).unwrap();
            assert!(doc.ends_with('\n'));
            let e = review_event("auditor", &r, format, &doc);
            assert_eq!(e.format, name);
            assert_eq!(e.principals, 2);
            assert_eq!(e.tenant, "acme");
            assert_eq!(e.actor, "auditor");
            assert_eq!(e.sha256, hex::encode(sha2::Sha256::digest(doc.as_bytes())));
        }
        let json = document(&r, ReviewFormat::Json).unwrap();
        assert_eq!(
            serde_json::from_str::<ReviewSnapshot>(&json).unwrap(),
            r,
            "the JSON document reads back for `review diff`"
        );
    }
}
