use super::*;
use crate::audit::event::{AuditEvent, Chain, Decision, EventBody, GENESIS};

fn sealed(decision: &'static str, path: &str) -> Vec<u8> {
    let mut chain = Chain::new(GENESIS.into(), None);
    let mut event = AuditEvent::new(
        "gw-01".into(),
        EventBody::Decision(Decision {
            decision,
            reason: Some("missing_permission"),
            required: vec!["campaigns.view".into()],
            tenant: Some("acme".into()),
            subject: Some("u123".into()),
            roles: vec!["viewer".into()],
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
