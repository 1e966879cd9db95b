//! `portcullis test --config F CASES.toml`: decision tables for the operator's CI.
//!
//! Each case is one synthetic request decided by `explain_one` (the live pipeline's
//! `Gateway::evaluate`), compared field by field with what the case expects. Mismatches print
//! as a diff with the route and reason the gateway gave; the exit code is 1 on any mismatch.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::{ExplainAnswer, ExplainQuery, explain_one};
use crate::proxy::Gateway;

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// Values a case may leave out (typically `tenant`).
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub tenant: Option<String>,
    pub claims: Option<toml::Table>,
}

/// One row of a decision table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report; defaults to `METHOD path as subject@tenant`.
    pub name: Option<String>,
    pub tenant: Option<String>,
    /// Absent: an anonymous request.
    pub subject: Option<String>,
    /// Token claims; `amr = ["mfa"]` stands for a step-up token.
    pub claims: Option<toml::Table>,
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    pub expect: Expect,
    pub reason: Option<String>,
    pub status: Option<u16>,
    pub required_permission: Option<String>,
}

fn get() -> String {
    "GET".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        }
    }
}

/// Read and parse a cases file.
pub fn load(path: &Path) -> anyhow::Result<CasesFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cases file `{}`", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid cases file `{}`", path.display()))
}

impl Case {
    fn query(&self, defaults: &Defaults) -> anyhow::Result<ExplainQuery> {
        let claims = self.claims.as_ref().or(defaults.claims.as_ref());
        Ok(ExplainQuery {
            tenant: self.tenant.clone().or_else(|| defaults.tenant.clone()),
            subject: self.subject.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            claims: match claims {
                Some(table) => serde_json::to_value(table)?,
                None => serde_json::Value::Null,
            },
        })
    }

    fn title(&self, q: &ExplainQuery) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let who = match (&q.subject, &q.tenant) {
            (Some(s), Some(t)) => format!("{s}@{t}"),
            (Some(s), None) => s.clone(),
            _ => "anonymous".to_owned(),
        };
        let mfa = if q.claims.get("amr").is_some() {
            " +mfa"
        } else {
            ""
        };
        format!("{} {} as {who}{mfa}", self.method, self.path)
    }

    /// `(field, expected, actual)` for every expectation the answer does not meet.
    fn mismatches(&self, a: &ExplainAnswer) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        if a.decision != self.expect.as_str() {
            out.push((
                "decision",
                self.expect.as_str().to_owned(),
                a.decision.clone(),
            ));
        }
        if let Some(reason) = &self.reason
            && a.reason.as_deref() != Some(reason.as_str())
        {
            out.push((
                "reason",
                reason.clone(),
                a.reason.clone().unwrap_or_else(|| "(none)".into()),
            ));
        }
        if let Some(status) = self.status
            && a.status != status
        {
            out.push(("status", status.to_string(), a.status.to_string()));
        }
        if let Some(p) = &self.required_permission
            && a.required_permission.as_deref() != Some(p.as_str())
        {
            out.push((
                "required_permission",
                p.clone(),
                a.required_permission
                    .clone()
                    .unwrap_or_else(|| "(none)".into()),
            ));
        }
        out
    }
}

/// The outcome of a run: the report text and the number of failures.
pub struct Report {
    pub text: String,
    pub total: usize,
    pub failed: usize,
}

/// Run every case against the gateway.
pub async fn run(gateway: &Gateway, config: &Path, file: &CasesFile) -> anyhow::Result<Report> {
    let mut text = String::new();
    let mut failed = 0;
    for (n, case) in file.cases.iter().enumerate() {
        let q = case.query(&file.defaults)?;
        let answer = explain_one(gateway, &q).await;
        let diff = case.mismatches(&answer);
        if diff.is_empty() {
            continue;
        }
        failed += 1;
        let _ = writeln!(text, "FAIL  case {}: {}", n + 1, case.title(&q));
        for (field, expected, actual) in &diff {
            let _ = writeln!(text, "      - {field}: {expected}");
            let _ = writeln!(text, "      + {field}: {actual}");
        }
        let mut got = format!("{} {}", answer.decision, answer.status);
        if let Some(r) = &answer.reason {
            let _ = write!(got, " {r}");
        }
        if let Some(p) = &answer.required_permission {
            let _ = write!(got, " ({p})");
        }
        let _ = writeln!(
            text,
            "      gateway: {got} on route {}",
            answer.route.as_deref().unwrap_or("(none)")
        );
        let mut why = format!("portcullis explain --config {}", config.display());
        if let Some(t) = &q.tenant {
            let _ = write!(why, " --tenant {t}");
        }
        if let Some(s) = &q.subject {
            let _ = write!(why, " --subject {s}");
        }
        let _ = write!(why, " --method {} --path '{}'", q.method, q.path);
        if !q.claims.is_null() {
            let _ = write!(why, " --claims '{}'", q.claims);
        }
        let _ = writeln!(text, "      why:     {why} --format text");
    }
    let total = file.cases.len();
    let _ = writeln!(
        text,
        "{total} cases: {} passed, {failed} failed",
        total - failed
    );
    Ok(Report {
        text,
        total,
        failed,
    })
}
