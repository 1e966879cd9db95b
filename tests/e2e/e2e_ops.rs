//! Operator tooling: `explain` traces, `portcullis test`, `routes`, `/.well-known/portcullis/me`,
//! `roles` against a real Redis and `review` snapshots.

use crate::support;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;
use portcullis::cli::ExplainQuery;
use portcullis::cli::explain::{explain_request, render_text};
use portcullis::proxy::Gateway;

const E2E: &str = include_str!("../fixtures/e2e.toml");

fn gateway(config: &str) -> Gateway {
    let snap = portcullis::config::load_str_with_secret(
        &config.replace("{UPSTREAM}", "127.0.0.1:9"),
        Path::new("tests/inline.toml"),
        Some(SECRET),
    )
    .unwrap();
    Gateway::build(snap).unwrap()
}

fn query(tenant: &str, subject: &str, method: &str, path: &str, mfa: bool) -> ExplainQuery {
    ExplainQuery {
        tenant: Some(tenant.into()),
        subject: Some(subject.into()),
        method: method.into(),
        path: path.into(),
        claims: if mfa {
            serde_json::json!({"amr": ["mfa"]})
        } else {
            serde_json::Value::Null
        },
    }
}

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// === explain ===

#[tokio::test]
async fn explain_trace_outcome_equals_the_gateway_decision_everywhere() {
    let gw = gateway(E2E);
    let subjects = [
        ("acme", "alice"),
        ("acme", "vic"),
        ("acme", "ed"),
        ("acme", "mia"),
        ("acme", "olga"),
        ("acme", "dee"),
        ("acme", "gus"),
        ("acme", "rev"),
        ("big", "emma"),
        ("startup", "emma"),
        ("acme", "aud"),
        ("acme", "nobody"),
    ];
    let requests = [
        ("GET", "/api/campaigns/42"),
        ("DELETE", "/api/campaigns/42"),
        ("POST", "/api/content/7/approve"),
        ("POST", "/api/email/campaigns/1/send"),
        ("GET", "/api/quality/scores"),
        ("GET", "/api/billing/invoices"),
        ("PUT", "/api/users/ed/profile"),
        ("PUT", "/api/users/vic/profile"),
        ("GET", "/api/notes"),
        ("GET", "/api/brands/brand-1/reports"),
        ("GET", "/api/brands/brand-2/reports"),
        ("GET", "/api/any"),
        ("GET", "/api/all"),
        ("GET", "/api/audit/logs/export"),
    ];
    let mut traced = 0;
    for (tenant, subject) in subjects {
        for mfa in [false, true] {
            for (method, path) in requests {
                let e = explain_request(&gw, &query(tenant, subject, method, path, mfa)).await;
                let Some(trace) = &e.trace else { continue };
                traced += 1;
                let what = format!("{subject}@{tenant} {method} {path} mfa={mfa}");
                assert_eq!(trace.outcome.decision, e.answer.decision, "{what}");
                assert_eq!(
                    trace.outcome.reason.map(str::to_owned),
                    e.answer.reason,
                    "{what}"
                );
                assert_eq!(
                    trace.outcome.permission, e.answer.required_permission,
                    "{what}"
                );
                // The per-permission results explain the outcome: a deny names a failing check.
                if let Some(reason) = &e.answer.reason {
                    assert!(
                        trace.checks.iter().any(|c| c.result == reason.as_str()),
                        "{what}: no check gives {reason}: {:?}",
                        trace.checks
                    );
                } else if trace.requirement != "public" {
                    assert!(trace.checks.iter().any(|c| c.result == "pass"), "{what}");
                }
            }
        }
    }
    assert!(traced > 300, "only {traced} traces");
}

#[tokio::test]
async fn explain_trace_names_the_inheritance_chain_override_and_entitlements() {
    let gw = gateway(E2E);
    // mia: manager -> member (alias of editor) -> viewer grants `*.view`.
    let e = explain_request(&gw, &query("acme", "mia", "GET", "/api/campaigns/1", false)).await;
    let t = e.trace.as_ref().unwrap();
    let check = &t.checks[0];
    assert_eq!(check.permission, "campaigns.view");
    assert_eq!(check.held, "full");
    let src = &check.sources[0];
    assert_eq!(
        src.via,
        ["manager", "member", "editor", "viewer"],
        "{:?}",
        check.sources
    );
    assert_eq!(src.pattern, "*.view");
    let rendered = render_text(&e);
    assert!(
        rendered.contains("manager → member → editor → viewer: `*.view` (full)"),
        "{rendered}"
    );
    assert!(rendered.contains("decision   ALLOW (200)"), "{rendered}");

    // dee: the deny override that beat the `deleter` role.
    let e = explain_request(
        &gw,
        &query("acme", "dee", "DELETE", "/api/campaigns/1", false),
    )
    .await;
    let check = &e.trace.as_ref().unwrap().checks[0];
    assert_eq!(check.denied_by, ["campaigns.delete"]);
    assert_eq!(check.sources[0].via, ["deleter"]);
    assert_eq!(check.result, "denied_by_override");
    assert!(render_text(&e).contains("override campaigns.delete matches"));

    // gus: a per-user grant.
    let e = explain_request(
        &gw,
        &query("acme", "gus", "POST", "/api/content/7/approve", false),
    )
    .await;
    let check = &e.trace.as_ref().unwrap().checks[0];
    assert_eq!(check.sources.last().unwrap().via, ["grant"]);
    assert_eq!(e.answer.decision, "allow");

    // emma at startup: tier gate, with the pattern that requires it.
    let e = explain_request(
        &gw,
        &query(
            "startup",
            "emma",
            "POST",
            "/api/email/campaigns/1/send",
            false,
        ),
    )
    .await;
    let check = &e.trace.as_ref().unwrap().checks[0];
    let tier = check.tier.as_ref().unwrap();
    assert!(!tier.ok);
    assert_eq!(e.answer.reason.as_deref(), Some("tier_required"));
    assert!(
        render_text(&e).contains("needs tier"),
        "{}",
        render_text(&e)
    );

    // mia, brand scoping: in scope and out of scope.
    let e = explain_request(
        &gw,
        &query("acme", "mia", "GET", "/api/brands/brand-2/reports", false),
    )
    .await;
    let check = &e.trace.as_ref().unwrap().checks[0];
    let scope = check.scope.as_ref().unwrap();
    assert_eq!((scope.value.as_deref(), scope.ok), (Some("brand-2"), false));
    assert_eq!(check.result, "scope_denied");
}

#[test]
fn explain_prints_a_human_trace_with_format_text_and_json_when_piped() {
    let env = [("PORTCULLIS_DEMO_SECRET", "s3cret")];
    let args = [
        "explain",
        "--config",
        "config/demo.toml",
        "--tenant",
        "acme",
        "--subject",
        "carol",
        "--method",
        "POST",
        "--path",
        "/api/email/campaigns/1/send",
    ];
    let mut with_text = args.to_vec();
    with_text.extend(["--format", "text"]);
    let out = portcullis(&with_text, &env);
    let shown = text(&out.stdout);
    assert!(shown.contains("member (alias of editor)"), "{shown}");
    assert!(
        shown.contains("growth required (email.* -> growth)"),
        "{shown}"
    );
    assert!(shown.contains("scopes     brand-1"), "{shown}");
    assert!(shown.contains("decision   ALLOW (200)"), "{shown}");
    // Piped without --format: JSON, flat answer fields first, trace alongside.
    let out = portcullis(&args, &env);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["trace"]["checks"][0]["sources"][0]["via"][1], "editor");
}

// === portcullis test ===

#[test]
fn test_command_reports_each_mismatch_as_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[defaults]
tenant = "acme"

[[cases]]
subject = "bob"
method = "GET"
path = "/api/campaigns/1"
expect = "allow"

[[cases]]
name = "viewer cannot delete (wrongly expected allow)"
subject = "bob"
method = "DELETE"
path = "/api/campaigns/1"
expect = "allow"
status = 200

[[cases]]
name = "wrong reason"
subject = "bob"
method = "DELETE"
path = "/api/campaigns/1"
expect = "deny"
reason = "not_owner"
"#,
    )
    .unwrap();
    let env = [("PORTCULLIS_DEMO_SECRET", "s3cret")];
    let out = portcullis(
        &[
            "test",
            "--config",
            "config/demo.toml",
            cases.to_str().unwrap(),
        ],
        &env,
    );
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("3 cases: 1 passed, 2 failed"), "{report}");
    assert!(
        report.contains("FAIL  case 2: viewer cannot delete (wrongly expected allow)"),
        "{report}"
    );
    assert!(
        report.contains("      - decision: allow\n      + decision: deny"),
        "{report}"
    );
    assert!(
        report.contains("      - status: 200\n      + status: 403"),
        "{report}"
    );
    assert!(
        report.contains("      - reason: not_owner\n      + reason: missing_permission"),
        "{report}"
    );
    assert!(
        report.contains(
            "gateway: deny 403 missing_permission (campaigns.delete) on route /api/campaigns/{id}"
        ),
        "{report}"
    );
    assert!(report.contains("why:     portcullis explain --config config/demo.toml --tenant acme --subject bob --method DELETE"), "{report}");

    // An unknown key in a case is an error, not a silently ignored expectation.
    std::fs::write(
        &cases,
        "[[cases]]\nsubject = \"bob\"\npath = \"/\"\nexpect = \"deny\"\nreasn = \"x\"\n",
    )
    .unwrap();
    let out = portcullis(
        &[
            "test",
            "--config",
            "config/demo.toml",
            cases.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("reasn"), "{}", text(&out.stderr));
}

// === routes ===

const PETSTORE_CONFIG: &str = "tests/fixtures/openapi/petstore.toml";
const PETSTORE_SPEC: &str = "tests/fixtures/openapi/petstore.yaml";

#[test]
fn routes_reports_lint_and_exact_openapi_coverage() {
    let out = portcullis(
        &[
            "routes",
            "--config",
            PETSTORE_CONFIG,
            "--openapi",
            PETSTORE_SPEC,
        ],
        &[("PORTCULLIS_JWT_SECRET", "x")],
    );
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        report.contains("GET,PATCH      /api/stores/{id}"),
        "{report}"
    );
    assert!(report.contains("lint: 4 finding(s)"), "{report}");
    assert!(
        report.contains("overlap           GET `/api/pets/{id}` and `/api/pets/mine`"),
        "{report}"
    );
    assert!(
        report.contains("no role grants `billing.refund`"),
        "{report}"
    );
    assert!(report.contains("role `auditor` grants nothing"), "{report}");
    assert!(
        report.contains("public route `/api/admin/status`"),
        "{report}"
    );
    assert!(
        report.contains(
            "coverage: 22 operations, 15 covered, 7 without a route (denied as no_route)"
        ),
        "{report}"
    );
    assert!(
        report.contains("routes: 18 method+path pairs, 3 without an operation in the spec"),
        "{report}"
    );
    for line in [
        "no route    GET /api/pets/{petId}/vaccinations  (listVaccinations)",
        "no route    DELETE /api/users/{username}  (deleteUser)",
        "no operation POST /api/orders/{id}/refund",
        "no operation GET /api/pets/mine",
    ] {
        assert!(report.contains(line), "missing `{line}`:\n{report}");
    }
}

fn petstore_snapshot(routes_toml: Option<&str>) -> portcullis::config::Snapshot {
    let mut text = std::fs::read_to_string(PETSTORE_CONFIG).unwrap();
    if let Some(routes) = routes_toml {
        let cut = text.find("[[routes]]").unwrap();
        text.truncate(cut);
        text.push_str(routes);
    }
    portcullis::config::load_str_with_secret(&text, Path::new(PETSTORE_CONFIG), Some(SECRET))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn json_specs_count_the_same_and_emit_covers_every_operation() {
    use portcullis::cli::routes;
    let yaml = routes::load_spec(Path::new(PETSTORE_SPEC)).unwrap();
    // The same document as JSON gives the same operations.
    let doc: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(PETSTORE_SPEC).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("petstore.json");
    std::fs::write(&json_path, serde_json::to_string(&doc).unwrap()).unwrap();
    let json = routes::load_spec(&json_path).unwrap();
    assert_eq!(yaml, json);
    assert_eq!(yaml.len(), 22);

    let snap = petstore_snapshot(None);
    let c = routes::coverage(&snap, &json);
    assert_eq!((c.operations, c.covered, c.uncovered.len()), (22, 15, 7));
    assert_eq!((c.route_methods, c.routes_without_operation.len()), (18, 3));

    // --emit: a route map that loads and covers all 22 operations, with none left over.
    let emitted = routes::emit(&yaml, '.', "api");
    assert!(
        emitted.contains("path = \"/api/pets/{petId}\"\npermission = \"pets.view\""),
        "{emitted}"
    );
    assert!(
        emitted.contains(
            "methods = [\"PUT\"]\npath = \"/api/users/{username}\"\npermission = \"users.edit\""
        ),
        "{emitted}"
    );
    let snap = petstore_snapshot(Some(&emitted));
    let c = routes::coverage(&snap, &yaml);
    assert_eq!(
        (
            c.covered,
            c.uncovered.len(),
            c.routes_without_operation.len()
        ),
        (22, 0, 0)
    );

    assert!(routes::operations(&serde_json::json!({"swagger": "2.0", "paths": {}})).is_err());
}

// === roles (real Redis) ===

const REDIS_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_JWT_SECRET"

[grants]
store = "redis"

[grants.redis]
url = "{REDIS}"
prefix = "ops"

[roles.viewer]
permissions = ["campaigns.view"]

[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]

[entitlements]
tiers = ["starter", "growth"]

[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"

[[routes]]
methods = ["PUT"]
path = "/api/campaigns/{id}"
permission = "campaigns.edit"
upstream = "api"

[[audit.sinks]]
type = "file"
path = "{AUDIT}"
format = "json"
"#;

// Multi-threaded: `roles` below blocks this thread (subprocess, then waiting for the invalidation)
// while the gateway and its Redis push handler keep running on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_changes_reach_a_running_gateway_on_the_next_request_and_are_audited() {
    let redis = support::redis::RedisServer::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit_cli = dir.path().join("cli-audit.jsonl");
    let config_text = REDIS_CONFIG.replace("{REDIS}", &redis.url());
    // The gateway audits its decisions elsewhere, so the CLI's file holds only role changes.
    let gw = start_gateway(
        &config_text.replace("{AUDIT}", dir.path().join("gw.jsonl").to_str().unwrap()),
        &upstream,
    )
    .await;
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(
        &config_path,
        config_text
            .replace("{UPSTREAM}", "127.0.0.1:9")
            .replace("{AUDIT}", audit_cli.to_str().unwrap()),
    )
    .unwrap();
    let store = gw.gateway.store.redis().unwrap();
    eventually("store ready", || store.health().ready()).await;
    let config = config_path.to_str().unwrap();
    let env = [("PORTCULLIS_JWT_SECRET", "x")];
    let run_roles = |args: &[&str]| {
        let mut all = vec!["roles", "--config", config, "--actor", "alice"];
        all.extend_from_slice(args);
        portcullis(&all, &env)
    };
    // "The very next request" is the next one after the gateway received the invalidation the
    // CLI published (delivery is asynchronous): wait for it to be applied, then ask.
    let roles = |args: &[&str]| {
        let before = store.invalidations();
        let out = run_roles(args);
        if out.status.success() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while store.invalidations() <= before {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no invalidation for {args:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        out
    };
    let bob = token("bob", "acme");
    let put = || request(gw.addr, "PUT", "/api/campaigns/1", Some(&bob), &[]);

    assert_eq!(put().await.status, 403);
    // Cached now: only the invalidation can make the next request see a change.
    assert_eq!(put().await.status, 403);

    let out = roles(&["assign", "--tenant", "acme", "--subject", "bob", "editor"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("after  roles [\"editor\"]"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        put().await.status,
        200,
        "the very next request sees the new role"
    );

    let out = roles(&[
        "deny",
        "--tenant",
        "acme",
        "--subject",
        "bob",
        "campaigns.*",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let res = put().await;
    assert_eq!(
        (res.status, res.reason()),
        (403, "denied_by_override".to_owned())
    );

    let out = roles(&[
        "deny",
        "--remove",
        "--tenant",
        "acme",
        "--subject",
        "bob",
        "campaigns.*",
    ]);
    assert!(out.status.success());
    assert_eq!(put().await.status, 200);

    let out = roles(&["revoke", "--tenant", "acme", "--subject", "bob", "editor"]);
    assert!(out.status.success());
    assert_eq!(put().await.status, 403);

    // Tenant custom role: created, assigned, seen; reset, and gone on the next request.
    let out = roles(&[
        "role-create",
        "--tenant",
        "acme",
        "publisher",
        "--permission",
        "campaigns.edit",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = roles(&[
        "assign",
        "--tenant",
        "acme",
        "--subject",
        "bob",
        "publisher",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(put().await.status, 200);
    let out = roles(&["role-reset", "--tenant", "acme", "publisher"]);
    assert!(out.status.success());
    assert_eq!(put().await.status, 403);
    // Nothing to reset: no write, no invalidation, no event.
    let out = run_roles(&["role-reset", "--tenant", "acme", "publisher"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("no change"),
        "{}",
        text(&out.stdout)
    );

    // Tenant entitlements: the fields not given are kept.
    let out = roles(&[
        "tenant",
        "--tenant",
        "acme",
        "--tier",
        "growth",
        "--features",
        "reports,export",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = roles(&["tenant", "--tenant", "acme", "--tier", "starter"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "tenant acme\n  before {\"features\":[\"reports\",\"export\"],\"tier\":\"growth\"}\n  \
         after  {\"features\":[\"reports\",\"export\"],\"tier\":\"starter\"}\n"
    );
    let out = run_roles(&["tenant", "--tenant", "acme", "--tier", "starter"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("no change"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        redis.cmd(&["HGET", "ops:acme:tenant", "tier"]).await,
        ::redis::Value::BulkString(b"starter".to_vec())
    );

    // Validated like config: unknown roles and bad patterns are refused, nothing is written.
    let out = roles(&["assign", "--tenant", "acme", "--subject", "bob", "edtor"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("did you mean `editor`?"),
        "{}",
        text(&out.stderr)
    );
    let out = roles(&[
        "grant",
        "--tenant",
        "acme",
        "--subject",
        "bob",
        "camp*.edit",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("whole segment"),
        "{}",
        text(&out.stderr)
    );
    let stored = redis.cmd(&["HGET", "ops:acme:user:bob", "roles"]).await;
    assert_eq!(
        stored,
        ::redis::Value::BulkString(br#"["publisher"]"#.to_vec())
    );

    // Every applied change is a role.change event, with who, what, and the written record
    // before and after it.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&audit_cli)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let changes: Vec<(String, String, serde_json::Value, serde_json::Value)> = events
        .iter()
        .filter(|e| e["type"] == "role.change")
        .map(|e| {
            assert_eq!(e["actor"], "alice");
            assert_eq!(e["tenant"], "acme");
            (
                e["subject"].as_str().unwrap().to_owned(),
                e["change"].as_str().unwrap().to_owned(),
                e["before"].clone(),
                e["after"].clone(),
            )
        })
        .collect();
    let user = |roles: &[&str], deny: &[&str]| serde_json::json!({"roles": roles, "grant": [], "deny": deny, "scopes": []});
    let publisher =
        serde_json::json!({"permissions": ["campaigns.edit"], "own": [], "inherits": []});
    let expected = [
        (
            "bob",
            "roles +editor",
            user(&[], &[]),
            user(&["editor"], &[]),
        ),
        (
            "bob",
            "deny +campaigns.*",
            user(&["editor"], &[]),
            user(&["editor"], &["campaigns.*"]),
        ),
        (
            "bob",
            "deny -campaigns.*",
            user(&["editor"], &["campaigns.*"]),
            user(&["editor"], &[]),
        ),
        (
            "bob",
            "roles -editor",
            user(&["editor"], &[]),
            user(&[], &[]),
        ),
        (
            "",
            "role_create",
            serde_json::Value::Null,
            publisher.clone(),
        ),
        (
            "bob",
            "roles +publisher",
            user(&[], &[]),
            user(&["publisher"], &[]),
        ),
        ("", "role_reset", publisher, serde_json::Value::Null),
        (
            "",
            "tenant",
            serde_json::json!({"tier": null, "features": []}),
            serde_json::json!({"tier": "growth", "features": ["reports", "export"]}),
        ),
        (
            "",
            "tenant",
            serde_json::json!({"tier": "growth", "features": ["reports", "export"]}),
            serde_json::json!({"tier": "starter", "features": ["reports", "export"]}),
        ),
    ];
    let expected: Vec<(String, String, serde_json::Value, serde_json::Value)> = expected
        .into_iter()
        .map(|(s, c, b, a)| (s.to_owned(), c.to_owned(), b, a))
        .collect();
    assert_eq!(changes, expected);

    // A review of the Redis tenant is audited too, with the hash of exactly what was printed.
    let out = portcullis(
        &[
            "review", "export", "--config", config, "--tenant", "acme", "--actor", "carol",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let review = access_reviews(&audit_cli);
    assert_eq!(review.len(), 1, "{review:?}");
    assert_eq!(review[0]["actor"], "carol");
    assert_eq!(review[0]["tenant"], "acme");
    assert_eq!(review[0]["principals"], 1);
    assert_eq!(review[0]["format"], "json");
    assert_eq!(review[0]["sha256"], sha256_hex(&out.stdout));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["principals"][0]["subject"], "bob");
}

/// The `access.review` events in a JSON-lines audit file.
fn access_reviews(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "access.review")
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The commit re-checks the record the event was computed from, under `WATCH` on the
/// connection that writes: a record changed since it was read (and audited) is not
/// overwritten, so an event's `before` is always the state its write replaced.
#[tokio::test]
async fn checked_writes_refuse_a_record_changed_since_it_was_audited() {
    use portcullis::grants::admin::{Admin, Commit, CustomRoleJson};
    let redis = support::redis::RedisServer::start().await;
    let snap = portcullis::config::load_str_with_secret(
        &REDIS_CONFIG
            .replace("{REDIS}", &redis.url())
            .replace("{UPSTREAM}", "127.0.0.1:9")
            .replace("{AUDIT}", "/dev/null"),
        Path::new("tests/inline.toml"),
        Some(SECRET),
    )
    .unwrap();
    let portcullis::config::StoreSettings::Redis(settings) = &snap.grants.store else {
        panic!("redis store expected");
    };
    let admin = Admin::connect(settings).await.unwrap();
    let role = CustomRoleJson {
        permissions: vec!["campaigns.edit".into()],
        ..CustomRoleJson::default()
    };

    // Custom role: read (absent), changed by someone else, then the checked write.
    let seen = admin.custom_role("acme", "publisher").await.unwrap();
    assert_eq!(seen, None);
    redis
        .cmd(&[
            "HSET",
            "ops:acme:roles",
            "publisher",
            r#"{"permissions":["x.y"]}"#,
        ])
        .await;
    let commit = admin
        .replace_custom_role("acme", "publisher", seen.as_deref(), Some(&role))
        .await
        .unwrap();
    assert_eq!(commit, Commit::Changed);
    assert_eq!(
        redis.cmd(&["HGET", "ops:acme:roles", "publisher"]).await,
        ::redis::Value::BulkString(br#"{"permissions":["x.y"]}"#.to_vec())
    );
    // With the current state it goes through.
    let seen = admin.custom_role("acme", "publisher").await.unwrap();
    let commit = admin
        .replace_custom_role("acme", "publisher", seen.as_deref(), Some(&role))
        .await
        .unwrap();
    assert_eq!(commit, Commit::Done);
    assert_eq!(
        redis.cmd(&["HGET", "ops:acme:roles", "publisher"]).await,
        ::redis::Value::BulkString(
            br#"{"permissions":["campaigns.edit"],"own":[],"inherits":[]}"#.to_vec()
        )
    );

    // Tenant entitlements: the same.
    let seen = admin.entitlements("acme").await.unwrap();
    redis
        .cmd(&["HSET", "ops:acme:tenant", "tier", "growth"])
        .await;
    let commit = admin
        .replace_entitlements("acme", &seen, Some("starter"), None)
        .await
        .unwrap();
    assert_eq!(commit, Commit::Changed);
    assert_eq!(
        redis.cmd(&["HGET", "ops:acme:tenant", "tier"]).await,
        ::redis::Value::BulkString(b"growth".to_vec())
    );
    let seen = admin.entitlements("acme").await.unwrap();
    assert_eq!(seen.tier.as_deref(), Some("growth"));
    let commit = admin
        .replace_entitlements("acme", &seen, Some("starter"), None)
        .await
        .unwrap();
    assert_eq!(commit, Commit::Done);
    assert_eq!(
        redis.cmd(&["HGET", "ops:acme:tenant", "tier"]).await,
        ::redis::Value::BulkString(b"starter".to_vec())
    );
}

// === review ===

#[test]
fn review_diff_lists_exactly_the_changed_permissions() {
    let env = [("PORTCULLIS_JWT_SECRET", "x")];
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string("config/examples/marketing-suite.toml").unwrap();
    // Promote ed (editor) to manager and drop eve's approve override.
    let changed = original
        .replace(
            "subject = \"ed\"\nroles = [\"editor\"]",
            "subject = \"ed\"\nroles = [\"manager\"]",
        )
        .replace("grant = [\"content.approve\"]\n", "");
    assert_ne!(original, changed);
    let mut snapshots = Vec::new();
    for (name, body) in [("before", &original), ("after", &changed)] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, body).unwrap();
        let out = portcullis(
            &[
                "review",
                "export",
                "--config",
                config.to_str().unwrap(),
                "--tenant",
                "acme",
            ],
            &env,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &out.stdout).unwrap();
        snapshots.push(path);
    }
    let before: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&snapshots[0]).unwrap()).unwrap();
    let ed = before["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["subject"] == "ed")
        .unwrap();
    assert_eq!(
        ed["permissions"],
        serde_json::json!([
            "content.read",
            "content.create",
            "seo.reports.view",
            "video.upload"
        ])
    );
    let out = portcullis(
        &[
            "review",
            "diff",
            snapshots[0].to_str().unwrap(),
            snapshots[1].to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ed\n  + role manager\n  - role editor\n  + content.approve\n  + email.campaigns.send\n\
         eve\n  - content.approve\n2 principal(s) changed\n"
    );

    // CSV export for spreadsheets.
    let config = dir.path().join("before.toml");
    let out = portcullis(
        &[
            "review",
            "export",
            "--config",
            config.to_str().unwrap(),
            "--tenant",
            "acme",
            "--format",
            "csv",
        ],
        &env,
    );
    let csv = text(&out.stdout);
    assert!(
        csv.starts_with("tenant,subject,roles,permissions,grant,deny,scopes\n"),
        "{csv}"
    );
    assert!(csv.contains("acme,eve,editor,content.read;content.create;content.approve;seo.reports.view;video.upload,content.approve,,brand-a\n"), "{csv}");
}

/// `review export` records `access.review` (who, tenant, principal count, format, SHA-256 of
/// the exact bytes printed) before it prints, in both formats; the chain still verifies.
#[test]
fn review_export_is_audited_with_the_hash_of_the_printed_document() {
    let env = [("PORTCULLIS_JWT_SECRET", "x")];
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let original = std::fs::read_to_string("config/examples/marketing-suite.toml").unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "{original}\n[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nformat = \"json\"\n",
            audit.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let export = |format: &str| {
        let out = portcullis(
            &[
                "review",
                "export",
                "--config",
                config,
                "--tenant",
                "acme",
                "--format",
                format,
                "--actor",
                "auditor@acme",
            ],
            &env,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        out.stdout
    };
    let json_doc = export("json");
    let csv_doc = export("csv");
    let principals = serde_json::from_slice::<serde_json::Value>(&json_doc).unwrap()["principals"]
        .as_array()
        .unwrap()
        .len();
    assert!(principals > 1);
    assert_eq!(text(&csv_doc).lines().count(), principals + 1);

    let reviews = access_reviews(&audit);
    let got: Vec<serde_json::Value> = reviews
        .iter()
        .map(|e| {
            serde_json::json!({
                "actor": e["actor"], "tenant": e["tenant"], "principals": e["principals"],
                "format": e["format"], "sha256": e["sha256"],
            })
        })
        .collect();
    assert_eq!(
        got,
        vec![
            serde_json::json!({"actor": "auditor@acme", "tenant": "acme", "principals": principals,
                "format": "json", "sha256": sha256_hex(&json_doc)}),
            serde_json::json!({"actor": "auditor@acme", "tenant": "acme", "principals": principals,
                "format": "csv", "sha256": sha256_hex(&csv_doc)}),
        ]
    );
    // Sealed like every event. Each CLI run keeps its own in-memory spool, so its event starts
    // a chain (seq 1, prev genesis): verified one run at a time.
    for (i, line) in std::fs::read_to_string(&audit).unwrap().lines().enumerate() {
        let one = dir.path().join(format!("event-{i}.jsonl"));
        std::fs::write(&one, format!("{line}\n")).unwrap();
        let out = portcullis(&["audit", "verify", one.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", text(&out.stdout));
    }

    // An audit pipeline that cannot start: nothing is exported.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "{original}\n[audit]\nhmac_key_env = \"PORTCULLIS_TEST_UNSET_HMAC_KEY\"\n\n\
             [[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nformat = \"json\"\n",
            audit.display()
        ),
    )
    .unwrap();
    let out = portcullis(
        &[
            "review",
            "export",
            "--config",
            broken.to_str().unwrap(),
            "--tenant",
            "acme",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("cannot start the audit pipeline"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(access_reviews(&audit).len(), 2);
}

// === shadow rollout ===

#[tokio::test]
async fn monitor_mode_would_be_denials_are_distinguishable_in_audit() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = E2E.to_owned()
        + &format!(
            "\n[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nformat = \"json\"\n",
            audit.display()
        );
    assert!(!E2E.contains("[policy]"), "e2e.toml sets no global mode");
    let config = config + "\n[policy]\nmode = \"monitor\"\n";
    let gw = start_gateway(&config, &upstream).await;
    let res = request(
        gw.addr,
        "DELETE",
        "/api/campaigns/1",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    assert_eq!(res.status, 200, "monitor forwards the would-be denial");
    assert_eq!(upstream.count(), 1);
    let mut event = serde_json::Value::Null;
    eventually("decision event written", || {
        event = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["type"] == "authz.decision")
            .unwrap_or_default();
        !event.is_null()
    })
    .await;
    assert_eq!(event["decision"], "deny");
    assert_eq!(event["reason"], "missing_permission");
    assert_eq!(event["mode"], "monitor");
    assert_eq!(event["status"], 200);
}

// === /.well-known/portcullis/me ===

#[tokio::test]
async fn me_lists_the_callers_roles_and_effective_permissions_and_is_audited() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = E2E.to_owned()
        + &format!(
            "\n[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nformat = \"json\"\n",
            audit.display()
        );
    let gw = start_gateway(&config, &upstream).await;
    let me = "/.well-known/portcullis/me";

    let res = request(gw.addr, "GET", me, Some(&token("ed", "acme")), &[]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("x-authz-source"), Some("gateway"));
    assert_eq!(res.header("cache-control"), Some("private, no-store"));
    let body = res.json();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["subject"], "ed");
    assert_eq!(body["roles"], serde_json::json!(["editor"]));
    let perms: Vec<&str> = body["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        perms.contains(&"campaigns.view") && perms.contains(&"content.create"),
        "{perms:?}"
    );
    assert!(!perms.contains(&"campaigns.delete"), "{perms:?}");
    assert_eq!(
        body["own_permissions"],
        serde_json::json!(["profile.edit", "notes.list"])
    );

    // dee holds `deleter` but a deny override takes campaigns.delete away: not listed.
    let body = request(gw.addr, "GET", me, Some(&token("dee", "acme")), &[])
        .await
        .json();
    assert_eq!(body["roles"], serde_json::json!(["viewer", "deleter"]));
    assert!(
        !body["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "campaigns.delete")
    );

    let res = request(gw.addr, "GET", me, None, &[]).await;
    assert_eq!(
        (res.status, res.reason()),
        (401, "missing_token".to_owned())
    );
    assert_eq!(upstream.count(), 0, "/me never reaches the upstream");

    let mut events = Vec::new();
    eventually("three /me events", || {
        events = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["path"] == me)
            .collect();
        events.len() == 3
    })
    .await;
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["subject"], "ed");
    assert_eq!(events[2]["decision"], "deny");
    assert_eq!(events[2]["status"], 401);
}
