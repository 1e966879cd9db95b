use super::*;
use std::sync::Arc;

use crate::audit::event::{
    AccessReview, AuditEvent, Chain, Decision, EventBody, GENESIS, RoleChange,
};

fn sealed(decision: &'static str, path: &str) -> Vec<u8> {
    let mut chain = Chain::new(GENESIS.into(), None);
    let mut event = AuditEvent::new(
        "gw-01".into(),
        EventBody::Decision(Decision {
            decision,
            reason: Some("missing_permission"),
            required: Arc::from(["campaigns.view".to_owned()]),
            tenant: Some("acme".into()),
            subject: Some("u123".into()),
            roles: Arc::from(["viewer".to_owned()]),
            method: "GET".into(),
            path: path.into(),
            route: Some("/api/campaigns/{id}".into()),
            status: 403,
            client_ip: "203.0.113.7".into(),
            request_id: "req-1".into(),
            mode: "enforce",
            ..Decision::default()
        }),
    );
    event.seq = 1042;
    let mut out = Vec::new();
    chain.seal(&event, &mut out).unwrap();
    out
}

#[test]
fn rfc5424_escapes_sd_values_and_counts_bytes() {
    let canonical = sealed("deny", "/a\"b]c\\d/é");
    let event = parse(&canonical).unwrap();
    let header = SyslogHeader {
        facility: 10,
        app_name: "portcullis".into(),
        sd_id: "portcullis@32473".into(),
        procid: "42".into(),
    };
    let msg = rfc5424(&header, &event, &canonical);
    let text = String::from_utf8(msg.clone()).unwrap();
    assert!(text.starts_with("<84>1 "), "authpriv.warning: {text}");
    assert!(text.contains(" gw-01 portcullis 42 authz.decision [portcullis@32473 eid=\""));
    assert!(text.contains(r#"path="/a\"b\]c\\d/é""#), "{text}");
    assert!(text.contains(r#"seq="1042""#));
    assert!(text.ends_with(std::str::from_utf8(&canonical).unwrap()));
    let mut framed = Vec::new();
    octet_frame(&mut framed, &msg);
    let (len, rest) = std::str::from_utf8(&framed)
        .unwrap()
        .split_once(' ')
        .unwrap();
    assert_eq!(
        len.parse::<usize>().unwrap(),
        rest.len(),
        "octets, not chars"
    );
    assert_ne!(rest.len(), rest.chars().count());
}

#[test]
fn cef_and_leef_escape_their_delimiters() {
    let canonical = sealed("deny", "/x=1|y^z\\w");
    let event = parse(&canonical).unwrap();
    let c = cef(&event);
    assert!(c.starts_with("CEF:0|Portcullis|Portcullis|"), "{c}");
    assert!(c.contains("|authz.deny|Authorization denied|5|"), "{c}");
    assert!(c.contains(r"request=/x\=1|y^z\\w"), "{c}");
    assert!(c.contains("cn2Label=seq cn2=1042"));
    assert!(c.contains("cs1Label=tenant cs1=acme"));
    let l = leef(&event);
    assert!(l.starts_with("LEEF:2.0|Portcullis|Portcullis|"), "{l}");
    assert!(l.contains(r"url=/x=1|y\^z\\w"), "{l}");
    assert!(l.contains("^seq=1042^"));
}

#[test]
fn ecs_and_ocsf_map_a_denial() {
    let canonical = sealed("deny", "/api/campaigns/42");
    let event = parse(&canonical).unwrap();
    let e = ecs(&event);
    assert_eq!(e["event"]["category"], json!(["api"]));
    assert_eq!(e["event"]["type"], json!(["access", "denied"]));
    assert_eq!(e["event"]["outcome"], "failure");
    assert_eq!(e["event"]["sequence"], 1042);
    assert_eq!(e["organization"]["id"], "acme");
    assert_eq!(e["portcullis"]["hash"], event["hash"]);
    let o = ocsf(&event);
    assert_eq!(o["class_uid"], 6003);
    assert_eq!(o["activity_id"], 2);
    assert_eq!(o["type_uid"], 600_302);
    assert_eq!(o["action_id"], 2);
    assert_eq!(o["disposition_id"], 26);
    assert_eq!(o["metadata"]["uid"], event["id"]);
    assert_eq!(o["authorizations"][0]["policy"]["name"], "campaigns.view");
    assert_eq!(o["api"]["operation"], "GET /api/campaigns/{id}");
}

fn seal(body: EventBody) -> Map<String, Value> {
    let mut event = AuditEvent::new("gw-01".into(), body);
    event.seq = 7;
    let mut out = Vec::new();
    Chain::new(GENESIS.into(), None)
        .seal(&event, &mut out)
        .unwrap();
    parse(&out).unwrap()
}

fn role_change() -> Map<String, Value> {
    seal(EventBody::RoleChange(RoleChange {
        actor: "alice".into(),
        tenant: "acme".into(),
        subject: "bob".into(),
        change: "deny +billing.*".into(),
        roles: vec!["editor".into()],
        permissions: vec!["!billing.*".into()],
        before: json!({"roles": ["editor"], "grant": [], "deny": [], "scopes": []}),
        after: json!({"roles": ["editor"], "grant": [], "deny": ["billing.*"], "scopes": []}),
    }))
}

#[test]
fn role_change_before_and_after_reach_every_rendering() {
    let e = role_change();
    let before = json!({"roles": ["editor"], "grant": [], "deny": [], "scopes": []});
    let after = json!({"roles": ["editor"], "grant": [], "deny": ["billing.*"], "scopes": []});
    assert_eq!(e["before"], before);
    assert_eq!(e["after"], after);
    let x = ecs(&e);
    assert_eq!(x["portcullis"]["before"], before);
    assert_eq!(x["portcullis"]["after"], after);
    assert_eq!(x["user"]["target"]["id"], "bob");
    let o = ocsf(&e);
    assert_eq!(o["class_uid"], 3005);
    assert_eq!(o["unmapped"]["before"], before);
    assert_eq!(o["unmapped"]["after"], after);
    // Flat formats: compact JSON, escaped for the format (`=` in CEF, none here in LEEF).
    let c = cef(&e);
    assert!(
        c.contains(r#"cs5Label=before cs5={"deny":[],"grant":[],"roles":["editor"],"scopes":[]}"#),
        "{c}"
    );
    assert!(
        c.contains(
            r#"cs6Label=after cs6={"deny":["billing.*"],"grant":[],"roles":["editor"],"scopes":[]}"#
        ),
        "{c}"
    );
    let l = leef(&e);
    assert!(
        l.contains(r#"^before={"deny":[],"grant":[],"roles":["editor"],"scopes":[]}^"#),
        "{l}"
    );
    assert!(
        l.contains(r#"^after={"deny":["billing.*"],"grant":[],"roles":["editor"],"scopes":[]}^"#),
        "{l}"
    );
}

#[test]
fn absent_records_render_as_null() {
    let e = seal(EventBody::RoleChange(RoleChange {
        actor: "alice".into(),
        tenant: "acme".into(),
        subject: String::new(),
        change: "role_create".into(),
        roles: vec!["publisher".into()],
        permissions: vec!["a=b".into()],
        before: Value::Null,
        after: json!({"permissions": ["a=b"], "own": [], "inherits": []}),
    }));
    let c = cef(&e);
    assert!(c.contains("cs5Label=before cs5=null "), "{c}");
    assert!(
        c.contains(r#"cs6={"inherits":[],"own":[],"permissions":["a\=b"]}"#),
        "{c}"
    );
    assert!(leef(&e).contains("^before=null^"));
}

#[test]
fn access_review_maps_in_every_format() {
    let sha = "ab".repeat(32);
    let e = seal(EventBody::AccessReview(AccessReview {
        actor: "auditor".into(),
        tenant: "acme".into(),
        principals: 12,
        format: "csv".into(),
        sha256: sha.clone(),
    }));
    assert_eq!(e["type"], "access.review");
    assert_eq!(e["principals"], 12);
    let x = ecs(&e);
    assert_eq!(x["event"]["category"], json!(["iam"]));
    assert_eq!(x["event"]["action"], "access-review");
    assert_eq!(x["organization"]["id"], "acme");
    assert_eq!(x["user"]["id"], "auditor");
    assert_eq!(x["file"]["hash"]["sha256"], sha.as_str());
    let o = ocsf(&e);
    assert_eq!(o["class_uid"], 3004);
    assert_eq!(o["activity_id"], 2);
    assert_eq!(o["type_uid"], 300_402);
    assert_eq!(o["actor"]["user"]["uid"], "auditor");
    assert_eq!(o["entity"]["data"]["principals"], 12);
    assert_eq!(o["entity"]["data"]["sha256"], sha.as_str());
    let c = cef(&e);
    assert!(c.contains("|access.review|Access review|3|"), "{c}");
    assert!(
        c.contains("act=export suser=auditor cs1Label=tenant cs1=acme"),
        "{c}"
    );
    assert!(
        c.contains("cn1Label=principals cn1=12 fileType=csv fileHash="),
        "{c}"
    );
    let l = leef(&e);
    assert!(
        l.contains(&format!(
            "^usrName=auditor^tenant=acme^principals=12^format=csv^sha256={sha}^"
        )),
        "{l}"
    );
    let header = SyslogHeader {
        facility: 10,
        app_name: "portcullis".into(),
        sd_id: "portcullis@32473".into(),
        procid: "1".into(),
    };
    let msg = String::from_utf8(rfc5424(&header, &e, b"m")).unwrap();
    assert!(msg.starts_with("<85>1 "), "authpriv.notice: {msg}");
    assert!(
        msg.contains(&format!(r#"actor="auditor" sha256="{sha}""#)),
        "{msg}"
    );
}

fn role_change_worded(change: &str, roles: &[&str]) -> Map<String, Value> {
    seal(EventBody::RoleChange(RoleChange {
        actor: "alice".into(),
        tenant: "acme".into(),
        subject: "bob".into(),
        change: change.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        permissions: Vec::new(),
        before: Value::Null,
        after: Value::Null,
    }))
}

#[test]
fn ocsf_maps_principal_changes_to_assign_and_revoke_privileges() {
    let activity = |change: &str, roles: &[&str]| {
        let o = ocsf(&role_change_worded(change, roles));
        (
            o["activity_id"].as_u64().unwrap(),
            o["activity_name"].as_str().unwrap().to_owned(),
            o["type_uid"].as_u64().unwrap(),
            o["privileges"].clone(),
        )
    };
    // As `portcullis roles` and the admin API word them.
    assert_eq!(
        activity("roles +editor", &["viewer", "editor"]),
        (
            1,
            "Assign Privileges".into(),
            300_501,
            json!(["role:editor"])
        )
    );
    // The privileges are what was removed, not the roles left after it.
    assert_eq!(
        activity("roles -editor", &["viewer"]),
        (
            2,
            "Revoke Privileges".into(),
            300_502,
            json!(["role:editor"])
        )
    );
    assert_eq!(
        activity("roles +editor; grant +reports.view", &["editor"]),
        (
            1,
            "Assign Privileges".into(),
            300_501,
            json!(["role:editor", "reports.view"])
        )
    );
    assert_eq!(
        activity("deny +billing.*", &["editor"]),
        (
            2,
            "Revoke Privileges".into(),
            300_502,
            json!(["!billing.*"])
        )
    );
    assert_eq!(
        activity("deny -billing.*", &["editor"]).0,
        1,
        "lifting a deny gives privileges back"
    );
    assert_eq!(activity("grant -reports.view", &[]).0, 2);
    // Both ways at once, scopes only, tenant-level changes: Other.
    assert_eq!(activity("roles +editor; roles -viewer", &["editor"]).0, 99);
    assert_eq!(activity("scopes +brand-1", &[]).0, 99);
    assert_eq!(activity("role_create", &["publisher"]).0, 99);
    assert_eq!(
        activity("tenant", &[]),
        (99, "Other".into(), 300_599, json!([]))
    );
    // The bare words of older events keep their meaning.
    assert_eq!(activity("assign", &["editor"]).0, 1);
    assert_eq!(activity("revoke", &["editor"]).0, 2);
}
