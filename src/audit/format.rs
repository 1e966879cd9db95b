//! Renderings of the canonical event (research/siem.md §2): `json` (the sealed bytes, as
//! hashed), `ecs`, `ocsf` (API Activity 6003 + security_control; role changes as User Access
//! Management 3005, access reviews as Entity Management 3004 Read), `cef`, `leef`, and the
//! RFC 5424 syslog frame that carries any of them.
//!
//! A `role.change` carries the written record `before` and `after` the change (JSON objects):
//! `ecs` keeps them in its custom namespace (`portcullis.before`/`.after`), `ocsf` in
//! `unmapped` (User Access Management has no such attribute), `cef`/`leef` as compact JSON
//! strings (`cs5`/`cs6`, `before`/`after`).
//!
//! Every rendering keeps `id` and `seq`, so SIEM-side deduplication and gap checks work on
//! any sink; only `json` keeps the exact bytes `audit verify` needs.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};

use crate::config::AuditFormat;

/// Product identity in every rendering.
pub const VENDOR: &str = "Portcullis";
pub const PRODUCT: &str = "Portcullis";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// OCSF schema version the mapping follows.
pub const OCSF_VERSION: &str = "1.8.0";
pub const ECS_VERSION: &str = "8.17.0";

/// The stored event is not the JSON object the writer sealed (spool corruption).
#[derive(Debug, thiserror::Error)]
#[error("audit record is not a JSON object: {0}")]
pub struct FormatError(String);

/// Parse a sealed canonical event.
pub fn parse(canonical: &[u8]) -> Result<Map<String, Value>, FormatError> {
    match serde_json::from_slice::<Value>(canonical) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(FormatError("not an object".into())),
        Err(err) => Err(FormatError(err.to_string())),
    }
}

/// Render `canonical` (sealed JSON bytes) in `format`.
pub fn render(format: AuditFormat, canonical: &[u8]) -> Result<Vec<u8>, FormatError> {
    if format == AuditFormat::Json {
        return Ok(canonical.to_vec());
    }
    let event = parse(canonical)?;
    Ok(render_parsed(format, canonical, &event))
}

/// Render an already parsed event (`canonical` is used as is for `json`).
pub fn render_parsed(format: AuditFormat, canonical: &[u8], event: &Map<String, Value>) -> Vec<u8> {
    match format {
        AuditFormat::Json => canonical.to_vec(),
        AuditFormat::Ecs => serde_json::to_vec(&ecs(event)).unwrap_or_default(),
        AuditFormat::Ocsf => serde_json::to_vec(&ocsf(event)).unwrap_or_default(),
        AuditFormat::Cef => cef(event).into_bytes(),
        AuditFormat::Leef => leef(event).into_bytes(),
    }
}

fn s<'a>(e: &'a Map<String, Value>, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn n(e: &Map<String, Value>, k: &str) -> u64 {
    e.get(k).and_then(Value::as_u64).unwrap_or_default()
}

fn strings(e: &Map<String, Value>, k: &str) -> Vec<String> {
    e.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A member as compact JSON text (`null` when absent), for the flat formats.
fn compact(e: &Map<String, Value>, k: &str) -> String {
    e.get(k).map_or_else(|| "null".to_owned(), Value::to_string)
}

/// Epoch milliseconds of the event's `time`.
pub fn epoch_millis(e: &Map<String, Value>) -> u64 {
    humantime::parse_rfc3339(s(e, "time"))
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Severity on a 0-10 scale (CEF), from the event's type and decision.
pub fn severity10(e: &Map<String, Value>) -> u8 {
    match (s(e, "type"), s(e, "decision")) {
        ("authz.decision", "allow") => 1,
        ("authz.decision", _) => 5,
        ("role.change", _) => 6,
        ("config.reload" | "access.review", _) => 3,
        ("audit.sink_failure" | "audit.loss", _) => 8,
        _ => 1,
    }
}

/// RFC 5424 severity (0 emergency .. 7 debug).
pub fn syslog_severity(e: &Map<String, Value>) -> u8 {
    match (s(e, "type"), s(e, "decision")) {
        ("authz.decision", "allow") => 6,
        ("authz.decision", _) => 4,
        ("role.change" | "config.reload" | "access.review", _) => 5,
        ("audit.sink_failure" | "audit.loss", _) => 3,
        _ => 6,
    }
}

/// Short signature: `authz.allow`, `authz.deny`, `authz.error`, or the type.
fn signature(e: &Map<String, Value>) -> String {
    match s(e, "type") {
        "authz.decision" => format!("authz.{}", s(e, "decision")),
        other => other.to_owned(),
    }
}

fn title(e: &Map<String, Value>) -> &'static str {
    match (s(e, "type"), s(e, "decision")) {
        ("authz.decision", "allow") => "Authorization allowed",
        ("authz.decision", "deny") => "Authorization denied",
        ("authz.decision", _) => "Authorization error",
        ("role.change", _) => "Role change",
        ("access.review", _) => "Access review",
        ("config.reload", _) => "Configuration reload",
        ("audit.sink_failure", _) => "Audit sink failure",
        ("audit.checkpoint", _) => "Audit checkpoint",
        ("audit.loss", _) => "Audit events lost",
        _ => "Audit event",
    }
}

/// Elastic Common Schema; the canonical event is kept whole under `portcullis`.
pub fn ecs(e: &Map<String, Value>) -> Value {
    let kind = s(e, "type");
    let decision = s(e, "decision");
    let (category, types, action, outcome) = match kind {
        "authz.decision" => (
            json!(["api"]),
            match decision {
                "allow" => json!(["access", "allowed"]),
                "deny" => json!(["access", "denied"]),
                _ => json!(["access"]),
            },
            "authz-decision".to_owned(),
            match decision {
                "allow" => "success",
                "deny" => "failure",
                _ => "unknown",
            },
        ),
        "role.change" => (
            json!(["iam"]),
            json!(["user", "change"]),
            format!("role-{}", s(e, "change")),
            "success",
        ),
        "access.review" => (
            json!(["iam"]),
            json!(["info"]),
            "access-review".to_owned(),
            "success",
        ),
        "config.reload" => (
            json!(["configuration"]),
            json!(["change"]),
            "config-reload".to_owned(),
            if s(e, "outcome") == "applied" {
                "success"
            } else {
                "failure"
            },
        ),
        other => (
            json!(["configuration"]),
            json!(["info"]),
            other.replace('.', "-"),
            "unknown",
        ),
    };
    let mut out = json!({
        "@timestamp": s(e, "time"),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": s(e, "id"),
            "kind": "event",
            "category": category,
            "type": types,
            "action": action,
            "outcome": outcome,
            "sequence": n(e, "seq"),
            "dataset": "portcullis.audit",
            "module": "portcullis",
        },
        "observer": {"hostname": s(e, "gateway"), "vendor": VENDOR, "product": PRODUCT, "version": VERSION, "type": "api-gateway"},
        "portcullis": Value::Object(e.clone()),
    });
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    if let Some(reason) = e.get("reason").and_then(Value::as_str)
        && let Some(ev) = obj.get_mut("event").and_then(Value::as_object_mut)
    {
        ev.insert("reason".into(), reason.into());
    }
    if kind == "authz.decision" {
        if let Some(t) = e.get("tenant").and_then(Value::as_str) {
            obj.insert("organization".into(), json!({"id": t}));
        }
        let mut user = Map::new();
        if let Some(sub) = e.get("subject").and_then(Value::as_str) {
            user.insert("id".into(), sub.into());
        }
        user.insert("roles".into(), json!(strings(e, "roles")));
        obj.insert("user".into(), Value::Object(user));
        obj.insert("source".into(), json!({"ip": s(e, "client_ip")}));
        obj.insert(
            "http".into(),
            json!({"request": {"id": s(e, "request_id"), "method": s(e, "method")}, "response": {"status_code": n(e, "status")}}),
        );
        obj.insert("url".into(), json!({"path": s(e, "path")}));
        if let Some(ua) = e.get("user_agent").and_then(Value::as_str) {
            obj.insert("user_agent".into(), json!({"original": ua}));
        }
        let required = strings(e, "required");
        if !required.is_empty() {
            obj.insert("rule".into(), json!({"name": required.join(",")}));
        }
    } else if kind == "role.change" {
        obj.insert("organization".into(), json!({"id": s(e, "tenant")}));
        obj.insert(
            "user".into(),
            json!({"id": s(e, "actor"), "target": {"id": s(e, "subject")}, "changes": {"roles": strings(e, "roles")}}),
        );
        // ECS has no field for a grant record's before/after: they stay in the custom
        // namespace, `portcullis.before` / `portcullis.after` (the whole event, above).
    } else if kind == "access.review" {
        obj.insert("organization".into(), json!({"id": s(e, "tenant")}));
        obj.insert("user".into(), json!({"id": s(e, "actor")}));
        obj.insert(
            "file".into(),
            json!({"hash": {"sha256": s(e, "sha256")}, "extension": s(e, "format")}),
        );
    }
    out
}

/// The User Access Management (3005) activity of a `role.change` `change`, and the privileges
/// it assigned or revoked when the change names them.
///
/// A principal's change is worded `roles +editor; deny +billing.*` (one part per item): adding a
/// role or grant, or lifting a deny, assigns privileges; removing a role or grant, or adding a
/// deny, revokes them. A change that does both, touches only scopes, or is about a tenant
/// (`role_create`, `tenant`, ...) is `Other` (99). The bare words `assign`, `grant`, `revoke`,
/// `deny` of older events keep their meaning.
fn ocsf_privilege_change(change: &str) -> (u64, &'static str, Option<Vec<String>>) {
    const ASSIGN: (u64, &str) = (1, "Assign Privileges");
    const REVOKE: (u64, &str) = (2, "Revoke Privileges");
    const OTHER: (u64, &str) = (99, "Other");
    match change {
        "assign" | "grant" => return (ASSIGN.0, ASSIGN.1, None),
        "revoke" | "deny" => return (REVOKE.0, REVOKE.1, None),
        _ => {}
    }
    let (mut assigns, mut revokes, mut other) = (false, false, false);
    let mut privileges = Vec::new();
    for part in change.split("; ") {
        let Some((field, item)) = part.split_once(' ') else {
            return (OTHER.0, OTHER.1, None);
        };
        let (added, item) = match (item.strip_prefix('+'), item.strip_prefix('-')) {
            (Some(item), _) => (true, item),
            (None, Some(item)) => (false, item),
            (None, None) => return (OTHER.0, OTHER.1, None),
        };
        match field {
            "roles" => privileges.push(format!("role:{item}")),
            "grant" => privileges.push(item.to_owned()),
            "deny" => privileges.push(format!("!{item}")),
            "scopes" => {
                other = true;
                continue;
            }
            _ => return (OTHER.0, OTHER.1, None),
        }
        // Adding a deny takes privileges away; removing one gives them back.
        if added != (field == "deny") {
            assigns = true;
        } else {
            revokes = true;
        }
    }
    let (id, name) = match (assigns, revokes, other) {
        (true, false, false) => ASSIGN,
        (false, true, false) => REVOKE,
        _ => OTHER,
    };
    (id, name, Some(privileges))
}

fn ocsf_activity(method: &str) -> (u8, &'static str) {
    match method {
        "GET" | "HEAD" => (2, "Read"),
        "POST" => (1, "Create"),
        "PUT" | "PATCH" => (3, "Update"),
        "DELETE" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// OCSF: decisions as API Activity (6003) with the security_control profile, role changes as
/// User Access Management (3005), access reviews as Entity Management (3004) Read, pipeline
/// events as Application Lifecycle (6002).
pub fn ocsf(e: &Map<String, Value>) -> Value {
    let time = epoch_millis(e);
    let metadata = json!({
        "version": OCSF_VERSION,
        "uid": s(e, "id"),
        "sequence": n(e, "seq"),
        "log_name": "portcullis-audit",
        "profiles": ["security_control"],
        "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": VERSION},
    });
    match s(e, "type") {
        "authz.decision" => {
            let method = s(e, "method");
            let (activity_id, activity) = ocsf_activity(method);
            let decision = s(e, "decision");
            let allowed = decision == "allow";
            let required = strings(e, "required");
            let route = e
                .get("route")
                .and_then(Value::as_str)
                .unwrap_or(s(e, "path"));
            let mut v = json!({
                "category_uid": 6, "category_name": "Application Activity",
                "class_uid": 6003, "class_name": "API Activity",
                "activity_id": activity_id, "activity_name": activity,
                "type_uid": 600_300 + u64::from(activity_id),
                "type_name": format!("API Activity: {activity}"),
                "time": time,
                "severity_id": if allowed { 1 } else { 2 },
                "severity": if allowed { "Informational" } else { "Low" },
                "status_id": if allowed { 1 } else { 2 },
                "status": if allowed { "Success" } else { "Failure" },
                "status_code": n(e, "status").to_string(),
                "action_id": if allowed { 1 } else { 2 },
                "action": if allowed { "Allowed" } else { "Denied" },
                "disposition_id": if allowed { 1 } else { 26 },
                "disposition": if allowed { "Allowed" } else { "Unauthorized" },
                "message": format!("{method} {} {decision}", s(e, "path")),
                "metadata": metadata,
                "actor": {"user": {"uid": e.get("subject").and_then(Value::as_str).unwrap_or("unknown"), "type_id": 1}},
                "api": {"operation": format!("{method} {route}"), "request": {"uid": s(e, "request_id")}, "response": {"code": n(e, "status")}},
                "http_request": {"http_method": method, "url": {"path": s(e, "path")}},
                "http_response": {"code": n(e, "status")},
                "src_endpoint": {"ip": s(e, "client_ip")},
                "authorizations": required.iter().map(|p| json!({"decision": decision, "policy": {"name": p, "desc": "required permission"}})).collect::<Vec<_>>(),
                "unmapped": Value::Object(e.clone()),
            });
            if let Some(obj) = v.as_object_mut() {
                if let Some(reason) = e.get("reason").and_then(Value::as_str) {
                    obj.insert("status_detail".into(), reason.into());
                }
                if let Some(t) = e.get("tenant").and_then(Value::as_str)
                    && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    m.insert("tenant_uid".into(), t.into());
                }
            }
            v
        }
        "role.change" => {
            let (activity_id, activity, changed) = ocsf_privilege_change(s(e, "change"));
            let privileges = changed.unwrap_or_else(|| {
                let mut all: Vec<String> = strings(e, "roles")
                    .iter()
                    .map(|r| format!("role:{r}"))
                    .collect();
                all.extend(strings(e, "permissions"));
                all
            });
            json!({
                "category_uid": 3, "category_name": "Identity & Access Management",
                "class_uid": 3005, "class_name": "User Access Management",
                "activity_id": activity_id, "activity_name": activity,
                "type_uid": 300_500 + activity_id,
                "time": time, "severity_id": 1, "severity": "Informational",
                "metadata": metadata,
                "actor": {"user": {"uid": s(e, "actor")}},
                "user": {"uid": s(e, "subject")},
                "privileges": privileges,
                "unmapped": Value::Object(e.clone()),
            })
        }
        "access.review" => json!({
            "category_uid": 3, "category_name": "Identity & Access Management",
            "class_uid": 3004, "class_name": "Entity Management",
            "activity_id": 2, "activity_name": "Read",
            "type_uid": 300_402,
            "time": time, "severity_id": 1, "severity": "Informational",
            "message": title(e),
            "metadata": metadata,
            "actor": {"user": {"uid": s(e, "actor")}},
            "entity": {
                "uid": s(e, "tenant"),
                "name": s(e, "tenant"),
                "type": "access_review",
                "data": {"principals": n(e, "principals"), "format": s(e, "format"), "sha256": s(e, "sha256")},
            },
            "unmapped": Value::Object(e.clone()),
        }),
        kind => {
            let (activity_id, activity) = if kind == "config.reload" {
                (8, "Update")
            } else {
                (99, "Other")
            };
            json!({
                "category_uid": 6, "category_name": "Application Activity",
                "class_uid": 6002, "class_name": "Application Lifecycle",
                "activity_id": activity_id, "activity_name": activity,
                "type_uid": 600_200 + activity_id,
                "time": time,
                "severity_id": if kind == "audit.sink_failure" || kind == "audit.loss" { 4 } else { 1 },
                "message": title(e),
                "metadata": metadata,
                "app": {"name": PRODUCT, "vendor_name": VENDOR, "version": VERSION},
                "unmapped": Value::Object(e.clone()),
            })
        }
    }
}

/// CEF header fields escape `\` and `|`.
fn cef_header(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|")
}

/// CEF extension values escape `\`, `=` and line breaks.
pub fn cef_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// ArcSight CEF:0.
pub fn cef(e: &Map<String, Value>) -> String {
    let mut out = format!(
        "CEF:0|{}|{}|{}|{}|{}|{}|",
        cef_header(VENDOR),
        cef_header(PRODUCT),
        cef_header(VERSION),
        cef_header(&signature(e)),
        cef_header(title(e)),
        severity10(e)
    );
    let mut ext: Vec<(String, String)> = vec![
        ("rt".into(), epoch_millis(e).to_string()),
        ("dvchost".into(), s(e, "gateway").into()),
        ("externalId".into(), s(e, "id").into()),
        ("cat".into(), s(e, "type").into()),
        ("cn2Label".into(), "seq".into()),
        ("cn2".into(), n(e, "seq").to_string()),
    ];
    match s(e, "type") {
        "authz.decision" => {
            let decision = s(e, "decision");
            ext.push(("act".into(), decision.into()));
            ext.push((
                "outcome".into(),
                if decision == "allow" {
                    "success"
                } else {
                    "failure"
                }
                .into(),
            ));
            if let Some(r) = e.get("reason").and_then(Value::as_str) {
                ext.push(("reason".into(), r.into()));
            }
            if let Some(sub) = e.get("subject").and_then(Value::as_str) {
                ext.push(("suser".into(), sub.into()));
            }
            ext.push(("src".into(), s(e, "client_ip").into()));
            ext.push(("requestMethod".into(), s(e, "method").into()));
            ext.push(("request".into(), s(e, "path").into()));
            if let Some(ua) = e.get("user_agent").and_then(Value::as_str) {
                ext.push(("requestClientApplication".into(), ua.into()));
            }
            if let Some(t) = e.get("tenant").and_then(Value::as_str) {
                ext.push(("cs1Label".into(), "tenant".into()));
                ext.push(("cs1".into(), t.into()));
            }
            let required = strings(e, "required");
            if !required.is_empty() {
                ext.push(("cs2Label".into(), "requiredPermission".into()));
                ext.push(("cs2".into(), required.join(",")));
            }
            if let Some(r) = e.get("route").and_then(Value::as_str) {
                ext.push(("cs3Label".into(), "route".into()));
                ext.push(("cs3".into(), r.into()));
            }
            ext.push(("cn1Label".into(), "httpStatus".into()));
            ext.push(("cn1".into(), n(e, "status").to_string()));
        }
        "role.change" => {
            ext.push(("act".into(), s(e, "change").into()));
            ext.push(("suser".into(), s(e, "actor").into()));
            ext.push(("duser".into(), s(e, "subject").into()));
            ext.push(("cs1Label".into(), "tenant".into()));
            ext.push(("cs1".into(), s(e, "tenant").into()));
            ext.push(("cs3Label".into(), "role".into()));
            ext.push(("cs3".into(), strings(e, "roles").join(",")));
            ext.push(("cs5Label".into(), "before".into()));
            ext.push(("cs5".into(), compact(e, "before")));
            ext.push(("cs6Label".into(), "after".into()));
            ext.push(("cs6".into(), compact(e, "after")));
            ext.push(("outcome".into(), "success".into()));
        }
        "access.review" => {
            ext.push(("act".into(), "export".into()));
            ext.push(("suser".into(), s(e, "actor").into()));
            ext.push(("cs1Label".into(), "tenant".into()));
            ext.push(("cs1".into(), s(e, "tenant").into()));
            ext.push(("cn1Label".into(), "principals".into()));
            ext.push(("cn1".into(), n(e, "principals").to_string()));
            ext.push(("fileType".into(), s(e, "format").into()));
            ext.push(("fileHash".into(), s(e, "sha256").into()));
            ext.push(("outcome".into(), "success".into()));
        }
        _ => {}
    }
    ext.push(("cs4Label".into(), "hash".into()));
    ext.push(("cs4".into(), s(e, "hash").into()));
    for (i, (k, v)) in ext.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{k}={}", cef_value(v));
    }
    out
}

/// LEEF values may not contain the delimiter or line breaks.
pub fn leef_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '^' => out.push_str("\\^"),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// IBM QRadar LEEF 2.0 with `^` as delimiter.
pub fn leef(e: &Map<String, Value>) -> String {
    let mut out = format!(
        "LEEF:2.0|{}|{}|{}|{}|^|",
        cef_header(VENDOR),
        cef_header(PRODUCT),
        cef_header(VERSION),
        cef_header(&signature(e))
    );
    let mut attrs: Vec<(&str, String)> = vec![
        ("devTime", s(e, "time").into()),
        ("devTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSX".into()),
        ("cat", s(e, "type").into()),
        ("sev", severity10(e).to_string()),
        ("eventId", s(e, "id").into()),
        ("seq", n(e, "seq").to_string()),
        ("gateway", s(e, "gateway").into()),
    ];
    match s(e, "type") {
        "authz.decision" => {
            if let Some(sub) = e.get("subject").and_then(Value::as_str) {
                attrs.push(("usrName", sub.into()));
            }
            attrs.push(("src", s(e, "client_ip").into()));
            attrs.push(("url", s(e, "path").into()));
            attrs.push(("method", s(e, "method").into()));
            if let Some(t) = e.get("tenant").and_then(Value::as_str) {
                attrs.push(("tenant", t.into()));
            }
            attrs.push(("requiredPermission", strings(e, "required").join(",")));
            attrs.push(("decision", s(e, "decision").into()));
            if let Some(r) = e.get("reason").and_then(Value::as_str) {
                attrs.push(("reason", r.into()));
            }
            attrs.push(("httpStatus", n(e, "status").to_string()));
        }
        "role.change" => {
            attrs.push(("usrName", s(e, "actor").into()));
            attrs.push(("targetUser", s(e, "subject").into()));
            attrs.push(("tenant", s(e, "tenant").into()));
            attrs.push(("change", s(e, "change").into()));
            attrs.push(("roles", strings(e, "roles").join(",")));
            attrs.push(("before", compact(e, "before")));
            attrs.push(("after", compact(e, "after")));
        }
        "access.review" => {
            attrs.push(("usrName", s(e, "actor").into()));
            attrs.push(("tenant", s(e, "tenant").into()));
            attrs.push(("principals", n(e, "principals").to_string()));
            attrs.push(("format", s(e, "format").into()));
            attrs.push(("sha256", s(e, "sha256").into()));
        }
        _ => {}
    }
    attrs.push(("hash", s(e, "hash").into()));
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push('^');
        }
        let _ = write!(out, "{k}={}", leef_value(v));
    }
    out
}

/// RFC 5424 PARAM-VALUE escaping: `"`, `\` and `]`.
pub fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Printable US-ASCII only (RFC 5424 header fields), at most `max` bytes, `-` when empty.
fn header_field(v: &str, max: usize) -> String {
    let cleaned: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

/// What a syslog frame needs besides the event.
#[derive(Debug, Clone)]
pub struct SyslogHeader {
    pub facility: u8,
    pub app_name: String,
    pub sd_id: String,
    pub procid: String,
}

/// One RFC 5424 message: header, one SD element with the key fields, MSG = `msg`.
pub fn rfc5424(h: &SyslogHeader, e: &Map<String, Value>, msg: &[u8]) -> Vec<u8> {
    let pri = u16::from(h.facility) * 8 + u16::from(syslog_severity(e));
    let mut out = format!(
        "<{pri}>1 {} {} {} {} {} [{}",
        header_field(s(e, "time"), 64),
        header_field(s(e, "gateway"), 255),
        header_field(&h.app_name, 48),
        header_field(&h.procid, 128),
        header_field(s(e, "type"), 32),
        h.sd_id
    );
    let mut param = |k: &str, v: &str| {
        let _ = write!(out, " {k}=\"{}\"", sd_escape(v));
    };
    param("eid", s(e, "id"));
    param("seq", &n(e, "seq").to_string());
    for k in [
        "decision", "reason", "tenant", "subject", "method", "path", "route", "actor", "change",
        "sink", "sha256",
    ] {
        if let Some(v) = e.get(k).and_then(Value::as_str) {
            param(k, v);
        }
    }
    let required = strings(e, "required");
    if !required.is_empty() {
        param("perm", &required.join(","));
    }
    if let Some(status) = e.get("status").and_then(Value::as_u64) {
        param("status", &status.to_string());
    }
    param("hash", s(e, "hash"));
    out.push_str("] ");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(msg);
    bytes
}

/// RFC 6587 §3.4.1 octet counting: `MSG-LEN SP SYSLOG-MSG`, the length in bytes.
pub fn octet_frame(out: &mut Vec<u8>, msg: &[u8]) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

#[cfg(test)]
mod tests;
