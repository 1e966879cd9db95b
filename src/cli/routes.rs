//! `portcullis routes`: the compiled route table, lint findings, and coverage against an
//! OpenAPI 3 document (YAML or JSON), or a starting route map generated from one (`--emit`).
//!
//! Lints are advisory (the config is valid): overlapping routes (matchit's static-beats-param
//! rule decides, which is easy to miss), route permissions no built-in role grants, built-in
//! roles granting nothing any route needs, and public routes under sensitive prefixes.
//! Coverage answers "what would the gateway deny by default?": an operation without a route is
//! refused (`no_route`) once Portcullis is in front of the API.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::config::Snapshot;
use crate::policy::Requirement;

/// Path segments that should never sit under a public route without a second look.
const SENSITIVE: &[&str] = &[
    "admin",
    "internal",
    "debug",
    "billing",
    "security",
    "audit",
    "settings",
    "secrets",
    "api-keys",
    "api_keys",
    "management",
    "metrics",
];

/// Methods an OpenAPI path item may declare.
const OPENAPI_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One advisory finding.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// `overlap`, `unheld_permission`, `idle_role`, `public_sensitive`.
    pub kind: &'static str,
    pub message: String,
}

/// One OpenAPI operation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Operation {
    pub method: String,
    /// As the gateway sees it: server base path + spec path.
    pub path: String,
    pub operation_id: Option<String>,
    pub tag: Option<String>,
}

/// Coverage of a spec by the route map.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Coverage {
    pub operations: usize,
    pub covered: usize,
    /// Operations no route matches: the gateway would deny them (`no_route`).
    pub uncovered: Vec<Operation>,
    /// `(method, path)` pairs declared by the route map.
    pub route_methods: usize,
    /// Route `(method, path)` pairs that match no operation of the spec.
    pub routes_without_operation: Vec<(String, String)>,
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

fn is_catch_all(seg: &str) -> bool {
    seg.starts_with("{*")
}

/// Whether some concrete path matches both patterns.
fn overlap(a: &str, b: &str) -> bool {
    let (a, b) = (segments(a), segments(b));
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(x), _) if is_catch_all(x) => return true,
            (_, Some(y)) if is_catch_all(y) => return true,
            (Some(x), Some(y)) if is_param(x) || is_param(y) || x == y => {}
            _ => return false,
        }
    }
    true
}

/// Same shape, parameter names ignored (route `{id}` ≡ spec `{petId}`).
fn same_shape(route: &str, op: &str) -> bool {
    let (r, o) = (segments(route), segments(op));
    if r.last().is_some_and(|s| is_catch_all(s)) {
        let prefix = r.len() - 1;
        return o.len() > prefix && r.iter().zip(&o).take(prefix).all(|(x, y)| seg_eq(x, y));
    }
    r.len() == o.len() && r.iter().zip(&o).all(|(x, y)| seg_eq(x, y))
}

fn seg_eq(x: &str, y: &str) -> bool {
    (is_param(x) && is_param(y)) || x == y
}

fn requirement_text(snap: &Snapshot, req: &Requirement) -> String {
    let name = |id: &crate::policy::PermId| snap.policy.permission_name(*id).to_owned();
    match req {
        Requirement::Public => "public".to_owned(),
        Requirement::Permission(id) => name(id),
        Requirement::AnyOf(ids) => format!(
            "any_of [{}]",
            ids.iter().map(name).collect::<Vec<_>>().join(", ")
        ),
        Requirement::AllOf(ids) => format!(
            "all_of [{}]",
            ids.iter().map(name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The compiled table, one line per route.
pub fn table(snap: &Snapshot) -> String {
    let mut out = String::new();
    for e in &snap.route_entries {
        let methods: Vec<String> = e.methods.iter().map(ToString::to_string).collect();
        let mut extra = Vec::new();
        if let Some(o) = &e.owner_param {
            extra.push(format!("owner={{{o}}}"));
        }
        if let Some(s) = &e.scope_param {
            extra.push(format!("scope={{{s}}}"));
        }
        if e.rule.mfa {
            extra.push("mfa".to_owned());
        }
        if e.rule.mode != snap.mode {
            extra.push(format!("mode={}", e.rule.mode.as_str()));
        }
        if let Some(d) = e.deny_status {
            extra.push(format!("deny_status={d}"));
        }
        let upstream = snap
            .upstreams
            .get(e.upstream)
            .map_or("?", |u| u.name.as_str());
        let _ = writeln!(
            out,
            "{:<14} {:<40} {:<32} -> {upstream}{}",
            methods.join(","),
            e.path,
            requirement_text(snap, &e.rule.requirement),
            if extra.is_empty() {
                String::new()
            } else {
                format!("  {}", extra.join(" "))
            }
        );
    }
    out
}

/// Advisory findings about the route map and roles.
pub fn lint(snap: &Snapshot) -> Vec<Finding> {
    let mut findings = Vec::new();
    let entries = &snap.route_entries;
    for (i, a) in entries.iter().enumerate() {
        for b in entries.iter().skip(i + 1) {
            let shared: Vec<String> = a
                .methods
                .iter()
                .filter(|m| b.methods.contains(m))
                .map(ToString::to_string)
                .collect();
            if shared.is_empty() || a.path == b.path || !overlap(&a.path, &b.path) {
                continue;
            }
            findings.push(Finding {
                kind: "overlap",
                message: format!(
                    "{} `{}` and `{}` match some of the same paths; the more specific segment wins \
                     (static beats `{{param}}` beats `{{*rest}}`), so check both require what you expect",
                    shared.join(","),
                    a.path,
                    b.path
                ),
            });
        }
    }
    let def = snap.policy.definition();
    let grants: Vec<(&str, Vec<&str>)> = def
        .roles
        .iter()
        .map(|r| {
            let (full, own) = snap.policy.role_grants(&r.name).unwrap_or_default();
            (r.name.as_str(), full.into_iter().chain(own).collect())
        })
        .collect();
    for id in 0..snap.policy.permission_count() {
        let Some(name) = u32::try_from(id)
            .ok()
            .and_then(|id| snap.policy.try_permission_name(crate::policy::PermId(id)))
        else {
            continue;
        };
        if !grants.iter().any(|(_, held)| held.contains(&name)) {
            findings.push(Finding {
                kind: "unheld_permission",
                message: format!(
                    "no role grants `{name}`: only per-user `grant` overrides or tenant custom roles can reach the routes requiring it"
                ),
            });
        }
    }
    for (role, held) in &grants {
        if held.is_empty() {
            findings.push(Finding {
                kind: "idle_role",
                message: format!("role `{role}` grants nothing any route requires"),
            });
        }
    }
    for e in entries {
        if e.rule.requirement != Requirement::Public {
            continue;
        }
        if let Some(word) = segments(&e.path)
            .iter()
            .find(|s| SENSITIVE.contains(&s.to_ascii_lowercase().as_str()))
        {
            findings.push(Finding {
                kind: "public_sensitive",
                message: format!(
                    "public route `{}` sits under the sensitive segment `{word}`; make sure it is meant to need no identity",
                    e.path
                ),
            });
        }
    }
    findings
}

/// Read an OpenAPI 3 document (JSON, or YAML through `serde_norway`).
pub fn load_spec(path: &Path) -> anyhow::Result<Vec<Operation>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let doc: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).with_context(|| format!("`{}` is not JSON", path.display()))?
    } else {
        serde_norway::from_str(&text)
            .with_context(|| format!("`{}` is not YAML", path.display()))?
    };
    operations(&doc)
}

/// The operations of a parsed document, with the first server URL's path as prefix.
pub fn operations(doc: &serde_json::Value) -> anyhow::Result<Vec<Operation>> {
    let version = doc.get("openapi").and_then(|v| v.as_str()).unwrap_or("");
    if !version.starts_with('3') {
        bail!("not an OpenAPI 3 document (`openapi: {version}`)");
    }
    let base = doc
        .pointer("/servers/0/url")
        .and_then(|v| v.as_str())
        .map(server_path)
        .unwrap_or_default();
    let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
        bail!("the document has no `paths`");
    };
    let mut ops = Vec::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for method in OPENAPI_METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            ops.push(Operation {
                method: method.to_ascii_uppercase(),
                path: format!("{base}{path}"),
                operation_id: op
                    .get("operationId")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                tag: op
                    .pointer("/tags/0")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            });
        }
    }
    Ok(ops)
}

/// `https://host/api/` → `/api`; a relative URL is a path already.
fn server_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = if url.contains("://") {
        rest.find('/').map_or("", |i| rest.get(i..).unwrap_or(""))
    } else {
        rest
    };
    path.trim_end_matches('/').to_owned()
}

/// Which operations have a route and which routes have an operation.
pub fn coverage(snap: &Snapshot, ops: &[Operation]) -> Coverage {
    let mut uncovered = Vec::new();
    for op in ops {
        let Ok(method) = op.method.parse::<http::Method>() else {
            continue;
        };
        // Ask the real table: a spec `{petId}` segment is matched by a route parameter, and by
        // nothing static, so the lookup answers which route would take the operation.
        if snap.routes.lookup(&method, &op.path).is_none() {
            uncovered.push(op.clone());
        }
    }
    let mut route_methods = 0;
    let mut without = Vec::new();
    for e in &snap.route_entries {
        for m in &e.methods {
            route_methods += 1;
            let matched = ops
                .iter()
                .any(|op| op.method == m.as_str() && same_shape(&e.path, &op.path));
            if !matched {
                without.push((m.to_string(), e.path.clone()));
            }
        }
    }
    Coverage {
        operations: ops.len(),
        covered: ops.len() - uncovered.len(),
        uncovered,
        route_methods,
        routes_without_operation: without,
    }
}

pub fn render_coverage(c: &Coverage) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "coverage: {} operations, {} covered, {} without a route (denied as no_route)",
        c.operations,
        c.covered,
        c.uncovered.len()
    );
    for op in &c.uncovered {
        let _ = writeln!(
            out,
            "  no route    {} {}{}",
            op.method,
            op.path,
            op.operation_id
                .as_ref()
                .map(|id| format!("  ({id})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "routes: {} method+path pairs, {} without an operation in the spec",
        c.route_methods,
        c.routes_without_operation.len()
    );
    for (m, p) in &c.routes_without_operation {
        let _ = writeln!(out, "  no operation {m} {p}");
    }
    out
}

/// A starting route map for the spec: one `[[routes]]` per path, methods grouped by the
/// permission they get (`resource.view|create|edit|delete`, resource = the last static
/// segment). A starting point to edit, never a policy to ship unread.
pub fn emit(ops: &[Operation], sep: char, upstream: &str) -> String {
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    for op in ops {
        let resource = segments(&op.path)
            .iter()
            .rev()
            .find(|s| !is_param(s) && !s.is_empty())
            .map(|s| {
                s.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '_'
                        }
                    })
                    .collect::<String>()
            })
            .unwrap_or_else(|| "root".to_owned());
        let action = match op.method.as_str() {
            "GET" | "HEAD" | "OPTIONS" => "view",
            "POST" => "create",
            "PUT" | "PATCH" => "edit",
            "DELETE" => "delete",
            _ => "manage",
        };
        let permission = format!("{resource}{sep}{action}");
        match groups
            .iter_mut()
            .find(|(p, perm, _)| *p == op.path && *perm == permission)
        {
            Some((_, _, methods)) => methods.push(op.method.clone()),
            None => groups.push((op.path.clone(), permission, vec![op.method.clone()])),
        }
    }
    let mut out = String::from(
        "# Generated by `portcullis routes --emit` from an OpenAPI document: review every\n\
         # permission name before use; anything you delete here is denied (no_route).\n\n",
    );
    for (path, permission, methods) in groups {
        let methods: Vec<String> = methods.iter().map(|m| format!("\"{m}\"")).collect();
        let _ = writeln!(
            out,
            "[[routes]]\nmethods = [{}]\npath = \"{path}\"\npermission = \"{permission}\"\nupstream = \"{upstream}\"\n",
            methods.join(", ")
        );
    }
    out
}
