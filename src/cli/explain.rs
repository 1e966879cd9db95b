//! `portcullis explain`: the decision for one request with its full trace, for humans (text)
//! and for scripts and the admin API (`explain_request`, serde JSON).
//!
//! The decision comes from `Gateway::evaluate` (the live pipeline's own function); the trace
//! from `policy::explain::trace`, which reruns `decide`'s own checks. A test holds the two equal.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ExplainAnswer, ExplainQuery, evaluate_query};
use crate::policy::Caller;
use crate::policy::explain::{PermissionCheck, Trace, trace};
use crate::proxy::Gateway;
use crate::route;

/// The matched route as configured.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteInfo {
    pub pattern: String,
    pub methods: Vec<String>,
    pub upstream: Option<String>,
    pub mode: &'static str,
    pub owner_param: Option<String>,
    pub scope_param: Option<String>,
    pub deny_status: Option<u16>,
}

/// `explain`'s full answer: the flat answer scripts already read, plus route and trace.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub answer: ExplainAnswer,
    pub request: ExplainQuery,
    /// Canonical path the route table saw (`None` when the path was refused).
    pub canonical_path: Option<String>,
    pub matched: Option<RouteInfo>,
    /// `None` when no route matched, the input was malformed or the store was unavailable.
    pub trace: Option<Trace>,
}

/// Explain one request: what the gateway answers and why. Library entry point for `explain`
/// and the admin `/v1/explain` (serialize the result with serde).
pub async fn explain_request(gateway: &Gateway, query: &ExplainQuery) -> Explanation {
    let (answer, evaluated) = evaluate_query(gateway, query).await;
    let mut out = Explanation {
        answer,
        request: query.clone(),
        canonical_path: None,
        matched: None,
        trace: None,
    };
    let Some((path, eval)) = evaluated else {
        return out;
    };
    let snap = &gateway.snapshot;
    out.canonical_path = Some(path.clone());
    let Some(entry) = eval.route.and_then(|id| gateway.route_entry(id)) else {
        return out;
    };
    out.matched = Some(RouteInfo {
        pattern: entry.path.clone(),
        methods: entry.methods.iter().map(ToString::to_string).collect(),
        upstream: gateway.upstreams.name(entry.upstream).map(str::to_owned),
        mode: entry.rule.mode.as_str(),
        owner_param: entry.owner_param.clone(),
        scope_param: entry.scope_param.clone(),
        deny_status: entry.deny_status,
    });
    // The same inputs `evaluate` gave `decide`: route parameters from the same lookup.
    let method = query.method.parse::<http::Method>().unwrap_or_default();
    let found = snap.routes.lookup(&method, &path);
    let param = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| found.as_ref().and_then(|f| f.params.get(n)))
            .map(route::decode_segment)
    };
    let owner = param(&entry.owner_param);
    let scope = param(&entry.scope_param);
    let who = match (&eval.principal, &eval.resolved) {
        (Some(p), Some(r)) => Some((p, r)),
        _ => None,
    };
    out.trace = Some(match who {
        Some((principal, resolved)) => {
            let caller = Caller {
                subject: &principal.subject,
                mfa: principal.mfa,
                owner: owner.as_deref(),
                scope: scope.as_deref(),
            };
            trace(
                &snap.policy,
                &entry.rule,
                Some((&caller, &resolved.tenant, &resolved.principal)),
            )
        }
        None => trace(&snap.policy, &entry.rule, None),
    });
    out
}

fn yes(b: bool) -> &'static str {
    if b { "✓" } else { "✗" }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "–".to_owned()
    } else {
        items.join(", ")
    }
}

/// The human trace, one fact per line, the final decision last.
pub fn render_text(e: &Explanation) -> String {
    let mut s = String::new();
    let q = &e.request;
    let who = match (&q.subject, &q.tenant) {
        (Some(sub), Some(t)) => format!("{sub} @ {t}"),
        (Some(sub), None) => format!("{sub} (no tenant)"),
        _ => "anonymous".to_owned(),
    };
    let _ = writeln!(s, "request    {} {}   as {who}", q.method, q.path);
    if let Some(p) = e.canonical_path.as_ref().filter(|p| **p != q.path) {
        let _ = writeln!(s, "canonical  {p}");
    }
    match &e.matched {
        None => {
            let _ = writeln!(s, "route      none matched");
        }
        Some(r) => {
            let mut extra = Vec::new();
            if let Some(o) = &r.owner_param {
                extra.push(format!("owner={{{o}}}"));
            }
            if let Some(sc) = &r.scope_param {
                extra.push(format!("scope={{{sc}}}"));
            }
            if let Some(d) = r.deny_status {
                extra.push(format!("deny_status={d}"));
            }
            let _ = writeln!(
                s,
                "route      {} {}  -> upstream {}  mode {}{}",
                r.methods.join(","),
                r.pattern,
                r.upstream.as_deref().unwrap_or("?"),
                r.mode,
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", extra.join(", "))
                }
            );
        }
    }
    if let Some(t) = &e.trace {
        render_trace(&mut s, t);
    }
    let a = &e.answer;
    let _ = writeln!(s);
    let mut line = format!("decision   {} ({})", a.decision.to_uppercase(), a.status);
    if let Some(r) = &a.reason {
        let _ = write!(line, "  reason {r}");
    }
    if let Some(p) = &a.required_permission {
        let word = if a.decision == "allow" {
            "relies on"
        } else {
            "permission"
        };
        let _ = write!(line, "  {word} {p}");
    }
    if let Some(tier) = e
        .trace
        .as_ref()
        .and_then(|t| t.outcome.required_tier.as_ref())
    {
        let _ = write!(line, "  needs tier {tier}");
    }
    if let Some(f) = e
        .trace
        .as_ref()
        .and_then(|t| t.outcome.required_feature.as_ref())
    {
        let _ = write!(line, "  needs feature {f}");
    }
    if a.scope.as_deref() == Some("own") {
        let _ = write!(line, "  forwarded with x-authz-scope: own");
    }
    if a.mode == "monitor" && a.decision == "deny" {
        let _ = write!(line, "  [monitor: would be denied, forwarded anyway]");
    }
    let _ = writeln!(s, "{line}");
    s
}

fn render_trace(s: &mut String, t: &Trace) {
    let req = match t.requirement {
        "public" => "public (no identity needed)".to_owned(),
        "permission" => list(&t.required),
        kind => format!("{kind} [{}]", t.required.join(", ")),
    };
    let _ = writeln!(
        s,
        "requires   {req}{}",
        if t.route_mfa { "  + MFA (route)" } else { "" }
    );
    match &t.caller {
        None => {
            let _ = writeln!(s, "identity   none");
        }
        Some(c) => {
            let _ = writeln!(
                s,
                "identity   subject {}  mfa {}",
                c.subject,
                if c.mfa { "yes" } else { "no" }
            );
        }
    }
    if let Some(tn) = &t.tenant {
        let tier = match (&tn.tier, tn.tier_known) {
            (None, _) => "none".to_owned(),
            (Some(x), true) => x.clone(),
            (Some(x), false) => format!("{x} (unknown tier: counts as none)"),
        };
        let custom = if tn.custom_roles.is_empty() {
            String::new()
        } else {
            format!("  custom roles {}", tn.custom_roles.join(", "))
        };
        let _ = writeln!(
            s,
            "tenant     tier {tier}  features {}{custom}",
            list(&tn.features)
        );
    }
    if let Some(p) = &t.principal {
        let assigned: Vec<String> = p
            .assigned
            .iter()
            .map(|a| match (&a.role, a.kind) {
                (Some(r), "builtin") if *r != a.name => format!("{} (alias of {r})", a.name),
                (Some(_), "custom") => format!("{} (tenant role)", a.name),
                (None, _) => format!("{} (unknown: grants nothing)", a.name),
                _ => a.name.clone(),
            })
            .collect();
        let _ = writeln!(s, "roles      {}", list(&assigned));
        let _ = writeln!(
            s,
            "overrides  grant {}  deny {}",
            list(&p.grant),
            list(&p.deny)
        );
        let scopes = if p.scopes.is_empty() {
            "unrestricted".to_owned()
        } else {
            p.scopes.join(", ")
        };
        let _ = writeln!(s, "scopes     {scopes}");
    }
    for c in &t.checks {
        render_check(s, c);
    }
}

fn render_check(s: &mut String, c: &PermissionCheck) {
    let _ = writeln!(s, "\n{}  → {}", c.permission, c.result);
    for f in &c.features {
        let _ = writeln!(
            s,
            "  feature    {} (required by {}): tenant {} {}",
            f.feature,
            list(&f.patterns),
            if f.tenant_has { "has it" } else { "lacks it" },
            yes(f.tenant_has)
        );
    }
    if let Some(tier) = &c.tier {
        let _ = writeln!(
            s,
            "  tier       {} required ({}): tenant {} {}",
            tier.required,
            list(&tier.patterns),
            tier.tenant_tier.as_deref().unwrap_or("none"),
            yes(tier.ok)
        );
    }
    if c.features.is_empty() && c.tier.is_none() {
        let _ = writeln!(s, "  entitle.   none required");
    }
    if c.denied_by.is_empty() {
        let _ = writeln!(s, "  deny       no override matches");
    } else {
        let _ = writeln!(s, "  deny       override {} matches ✗", list(&c.denied_by));
    }
    if c.sources.is_empty() {
        let _ = writeln!(s, "  granted by nothing");
    }
    for (i, src) in c.sources.iter().enumerate() {
        let label = if i == 0 { "granted by" } else { "          " };
        let via = if src.via == ["grant"] {
            "per-user grant".to_owned()
        } else {
            src.via.join(" → ")
        };
        let _ = writeln!(s, "  {label} {via}: `{}` ({})", src.pattern, src.kind);
    }
    let _ = writeln!(s, "  held       {}", c.held);
    if let Some(o) = &c.owner {
        let _ = writeln!(
            s,
            "  owner      {} vs subject {} {}",
            o.owner.as_deref().unwrap_or("–"),
            o.subject,
            yes(o.ok)
        );
    }
    if let Some(sc) = &c.scope {
        let _ = writeln!(
            s,
            "  scope      {} in [{}]{} {}",
            sc.value.as_deref().unwrap_or("–"),
            sc.scopes.join(", "),
            if sc.all_scopes {
                " (all_scopes role)"
            } else {
                ""
            },
            yes(sc.ok)
        );
    }
    if let Some(m) = &c.mfa {
        let why = match (m.route, m.patterns.is_empty()) {
            (true, _) => "route".to_owned(),
            (false, _) => list(&m.patterns),
        };
        let _ = writeln!(s, "  mfa        required by {why}: {}", yes(m.ok));
    }
}
