//! The five reference deployments of `config/examples/`: each config passes `portcullis check`,
//! its decision table passes `portcullis test`, and the same table holds through the live
//! gateway over HTTP (token in, status and reason out, upstream reached only on allow).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use portcullis::cli::cases::{self, Case, Expect};

const EXAMPLES: &[&str] = &[
    "voice-platform",
    "crm",
    "marketing-suite",
    "cx-platform",
    "call-analytics",
];

/// The examples read their HS256 secret from this variable.
const SECRET_ENV: &str = "PORTCULLIS_JWT_SECRET";

fn config_path(name: &str) -> String {
    format!("config/examples/{name}.toml")
}

fn cases_path(name: &str) -> String {
    format!("config/examples/{name}.cases.toml")
}

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env(SECRET_ENV, "seeds-test-secret-0123456789")
        .output()
        .unwrap()
}

#[test]
fn every_example_passes_check_and_its_own_cases() {
    for name in EXAMPLES {
        let config = config_path(name);
        let out = portcullis(&["check", "--config", &config]);
        assert!(
            out.status.success(),
            "check {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = portcullis(&["test", "--config", &config, &cases_path(name)]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "test {name}:\n{report}");
        assert!(report.contains(" 0 failed"), "{name}: {report}");
    }
}

/// Run one case against the live gateway and describe any difference.
async fn live(
    gw: &TestGateway,
    upstream: &Upstream,
    tenant: Option<&str>,
    case: &Case,
) -> Option<String> {
    let amr: Vec<String> = case
        .claims
        .as_ref()
        .and_then(|c| c.get("amr"))
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let token = match (&case.subject, case.tenant.as_deref().or(tenant)) {
        (Some(sub), Some(tenant)) => Some(
            portcullis::cli::mint_token(
                &gw.gateway.snapshot,
                sub,
                tenant,
                &amr,
                Duration::from_secs(600),
            )
            .unwrap(),
        ),
        _ => None,
    };
    let before = upstream.count();
    let res = request(gw.addr, &case.method, &case.path, token.as_deref(), &[]).await;
    let reached = upstream.count() > before;
    let name = case.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    match case.expect {
        Expect::Allow => {
            if res.status != 200 || !reached || res.header("x-upstream").is_none() {
                problems.push(format!("expected allow, got {} {}", res.status, res.body));
            }
        }
        Expect::Deny => {
            if reached {
                problems.push("a denied request reached the upstream".to_owned());
            }
            if res.header("x-authz-source") != Some("gateway") {
                problems.push("denial without x-authz-source: gateway".to_owned());
            }
            if let Some(reason) = &case.reason
                && res.reason() != *reason
            {
                problems.push(format!("reason {} instead of {reason}", res.reason()));
            }
            if let Some(p) = &case.required_permission
                && res.json()["required_permission"] != p.as_str()
            {
                problems.push(format!(
                    "required_permission {}",
                    res.json()["required_permission"]
                ));
            }
        }
    }
    if let Some(status) = case.status
        && res.status != status
    {
        problems.push(format!("status {} instead of {status}", res.status));
    }
    (!problems.is_empty()).then(|| format!("{name}: {}", problems.join("; ")))
}

#[tokio::test]
async fn every_example_matrix_holds_through_the_live_gateway() {
    let upstream = Upstream::start().await;
    let mut checked = 0;
    let mut failures = Vec::new();
    for name in EXAMPLES {
        let text = std::fs::read_to_string(config_path(name)).unwrap();
        // The examples point at 127.0.0.1:3000; the harness substitutes its recording upstream.
        let text = text.replace("\"127.0.0.1:3000\"", "\"{UPSTREAM}\"");
        assert!(
            text.contains("{UPSTREAM}"),
            "{name}: upstream target not found"
        );
        let gw = start_gateway(&text, &upstream).await;
        let file = cases::load(Path::new(&cases_path(name))).unwrap();
        assert!(
            file.cases.len() >= 40,
            "{name}: only {} cases",
            file.cases.len()
        );
        for case in &file.cases {
            if let Some(problem) = live(&gw, &upstream, file.defaults.tenant.as_deref(), case).await
            {
                failures.push(format!("{name}: {problem}"));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} live mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 400, "only {checked} cases");
}
