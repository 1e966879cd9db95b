//! `portcullis explain --batch` gives, for the same requests, the same decisions as the live
//! gateway: a generated set of requests goes through both and every answer is compared.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

const CONFIG: &str = include_str!("../fixtures/e2e.toml");

const SUBJECTS: &[(&str, &str)] = &[
    ("alice", "acme"),
    ("vic", "acme"),
    ("vic", "big"),
    ("ed", "acme"),
    ("mia", "acme"),
    ("olga", "acme"),
    ("dee", "acme"),
    ("gus", "acme"),
    ("rev", "acme"),
    ("emma", "acme"),
    ("emma", "big"),
    ("emma", "startup"),
    ("aud", "acme"),
    ("nobody", "acme"),
    ("vic", "ghost"),
];

const REQUESTS: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/api/campaigns/42"),
    ("HEAD", "/api/campaigns/42"),
    ("DELETE", "/api/campaigns/42"),
    ("PATCH", "/api/campaigns/42"),
    ("POST", "/api/content"),
    ("POST", "/api/content/7/approve"),
    ("POST", "/api/email/send"),
    ("POST", "/api/email/campaigns/1/send"),
    ("GET", "/api/quality/scores"),
    ("GET", "/api/billing/invoices"),
    ("POST", "/api/security/keys"),
    ("PUT", "/api/users/ed/profile"),
    ("PUT", "/api/users/vic/profile"),
    ("GET", "/api/notes"),
    ("GET", "/api/brands/brand-1/reports"),
    ("GET", "/api/brands/brand-2/reports"),
    ("GET", "/api/any"),
    ("GET", "/api/all"),
    ("GET", "/api/legacy/1"),
    ("GET", "/api/secret/1"),
    ("GET", "/api/audit/logs/export"),
    ("GET", "/nope"),
    ("GET", "/api/x/../campaigns/1"),
    ("GET", "/api/campaigns/%2e%2e%2fadmin"),
    ("GET", "/api/campaigns/1%2Fx"),
];

/// (who, with MFA, method, path); `who` is `None` for an anonymous request.
type Case = (
    Option<(&'static str, &'static str)>,
    bool,
    &'static str,
    &'static str,
);

#[derive(Debug, PartialEq)]
struct Seen {
    decision: String,
    status: u16,
    reason: Option<String>,
    required_permission: Option<String>,
    /// `own` when the allow rests on an own-only grant: the `x-authz-scope` the upstream saw.
    scope: Option<String>,
}

#[tokio::test]
async fn explain_batch_matches_the_live_gateway() {
    let up = Upstream::start().await;
    let gw = start_gateway(CONFIG, &up).await;

    // The cases: every subject × request, with and without MFA, plus anonymous requests.
    let mut cases: Vec<Case> = Vec::new();
    for &(method, path) in REQUESTS {
        cases.push((None, false, method, path));
        for &who in SUBJECTS {
            cases.push((Some(who), false, method, path));
            cases.push((Some(who), true, method, path));
        }
    }

    let mut live = Vec::with_capacity(cases.len());
    for &(who, mfa, method, path) in &cases {
        let token = who.map(|(s, t)| if mfa { mfa_token(s, t) } else { token(s, t) });
        let before = up.count();
        let r = request(gw.addr, method, path, token.as_deref(), &[]).await;
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        live.push(if r.header("x-authz-source") == Some("gateway") {
            assert_eq!(up.count(), before, "a gateway answer was forwarded");
            Seen {
                decision: "deny".into(),
                status: r.status,
                reason: body["reason"].as_str().map(str::to_owned),
                required_permission: body["required_permission"].as_str().map(str::to_owned),
                scope: None,
            }
        } else {
            assert_eq!(
                up.count(),
                before + 1,
                "an upstream answer without a request"
            );
            let seen = up.last().unwrap();
            Seen {
                decision: "allow".into(),
                status: r.status,
                reason: None,
                required_permission: None,
                scope: seen.header("x-authz-scope").map(str::to_owned),
            }
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(
        &config_path,
        CONFIG.replace("{UPSTREAM}", &up.addr.to_string()),
    )
    .unwrap();
    let mut input = String::new();
    for &(who, mfa, method, path) in &cases {
        let mut line = serde_json::json!({"method": method, "path": path});
        if let Some((subject, tenant)) = who {
            line["subject"] = subject.into();
            line["tenant"] = tenant.into();
        }
        if mfa {
            line["claims"] = serde_json::json!({"amr": ["mfa"]});
        }
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "--config"])
        .arg(&config_path)
        .args(["--batch", "-"])
        .env(
            "PORTCULLIS_TEST_SECRET",
            String::from_utf8_lossy(SECRET).as_ref(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        answers.len(),
        cases.len(),
        "one answer per input line, in order"
    );

    let mut allows = 0;
    let mut denies = 0;
    let mut own_only = 0;
    for ((case, live), answer) in cases.iter().zip(&live).zip(&answers) {
        let explained = Seen {
            decision: answer["decision"].as_str().unwrap().to_owned(),
            status: answer["status"].as_u64().unwrap() as u16,
            reason: answer["reason"].as_str().map(str::to_owned),
            required_permission: if answer["decision"] == "deny" {
                answer["required_permission"].as_str().map(str::to_owned)
            } else {
                None
            },
            scope: answer["scope"].as_str().map(str::to_owned),
        };
        // A monitor-mode route forwards what enforce mode would deny (except no_route).
        let monitored = answer["mode"] == "monitor" && explained.decision == "deny";
        if monitored {
            assert_eq!(
                (live.decision.as_str(), live.status),
                ("allow", 200),
                "{case:?}"
            );
            continue;
        }
        // deny_status = 404 answers like no_route; explain keeps the real reason.
        if explained.decision == "deny" && explained.status == 404 && live.status == 404 {
            assert_eq!(live.reason.as_deref(), Some("no_route"), "{case:?}");
            denies += 1;
            continue;
        }
        if case.2 == "HEAD" {
            // A HEAD response has no body to carry the reason: compare what is visible.
            assert_eq!(
                (&explained.decision, explained.status, &explained.scope),
                (&live.decision, live.status, &live.scope),
                "{case:?}"
            );
        } else {
            assert_eq!(&explained, live, "{case:?}");
        }
        if live.decision == "allow" {
            allows += 1;
            own_only += usize::from(live.scope.as_deref() == Some("own"));
        } else {
            denies += 1;
        }
    }
    assert!(
        allows > 50 && denies > 100 && own_only > 2,
        "the set exercises both: {allows} allows ({own_only} own-only), {denies} denies"
    );
}
