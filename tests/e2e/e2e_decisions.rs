//! End to end over real TCP: every reason code, every requirement kind, wildcard rules,
//! inheritance, aliases, overrides, entitlements, own/scope, MFA step-up, monitor mode,
//! HEAD→GET, and that a denied request never reaches the upstream.

use crate::support::*;

/// `{UPSTREAM}` is replaced with the recording upstream's address.
pub const CONFIG: &str = include_str!("../fixtures/e2e.toml");

struct Env {
    up: Upstream,
    gw: TestGateway,
}

async fn env() -> Env {
    let up = Upstream::start().await;
    let gw = start_gateway(CONFIG, &up).await;
    Env { up, gw }
}

impl Env {
    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> RawResponse {
        request(self.gw.addr, method, path, token, &[]).await
    }

    /// Assert an allow: 200 from the upstream, and the upstream saw this exact request.
    async fn allowed(&self, method: &str, path: &str, token: &str) -> Recorded {
        let before = self.up.count();
        let r = self.call(method, path, Some(token)).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.raw);
        assert_eq!(r.body, "upstream ok");
        assert_eq!(
            r.header("x-authz-source"),
            None,
            "upstream answers are not the gateway's"
        );
        assert_eq!(self.up.count(), before + 1);
        let seen = self.up.last().unwrap();
        assert_eq!((seen.method.as_str(), seen.target.as_str()), (method, path));
        seen
    }

    /// Assert a refusal with status, reason and required permission; nothing reached the upstream.
    async fn refused(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        status: u16,
        reason: &str,
        permission: Option<&str>,
    ) -> RawResponse {
        let before = self.up.count();
        let r = self.call(method, path, token).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.raw);
        assert_eq!(r.reason(), reason, "{method} {path}: {}", r.body);
        assert_eq!(
            r.json()["required_permission"].as_str(),
            permission,
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(r.header("x-authz-source"), Some("gateway"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let rid = r
            .header("x-request-id")
            .expect("request id on gateway responses");
        assert_eq!(r.json()["request_id"].as_str(), Some(rid));
        assert_eq!(
            self.up.count(),
            before,
            "a denied request reached the upstream"
        );
        r
    }
}

#[tokio::test]
async fn allow_forwards_with_identity_headers() {
    let e = env().await;
    let seen = e
        .allowed("GET", "/api/campaigns/42", &token("vic", "acme"))
        .await;
    assert_eq!(seen.header("x-authz-subject"), Some("vic"));
    assert_eq!(seen.header("x-authz-tenant"), Some("acme"));
    assert_eq!(seen.header("x-authz-roles"), Some("viewer"));
    assert_eq!(seen.header("x-authz-scope"), None);
    assert!(seen.header("x-request-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gateway.test"));
}

#[tokio::test]
async fn missing_permission_names_the_permission() {
    let e = env().await;
    let t = token("vic", "acme");
    e.refused(
        "DELETE",
        "/api/campaigns/42",
        Some(&t),
        403,
        "missing_permission",
        Some("campaigns.delete"),
    )
    .await;
    let r = e.call("DELETE", "/api/campaigns/42", Some(&t)).await;
    assert_eq!(r.json()["error"], "forbidden");
}

#[tokio::test]
async fn no_route_is_404_including_other_methods_and_near_misses() {
    let e = env().await;
    let t = token("alice", "acme");
    for (m, p) in [
        ("GET", "/nope"),
        ("PATCH", "/api/campaigns/42"),
        ("GET", "/api/campaigns/42/"),
        ("GET", "/API/campaigns/42"),
        ("GET", "/api/campaigns"),
    ] {
        let r = e.refused(m, p, Some(&t), 404, "no_route", None).await;
        assert_eq!(r.json()["error"], "not_found");
    }
}

#[tokio::test]
async fn unauthenticated_reasons() {
    let e = env().await;
    let r = e
        .refused("GET", "/api/campaigns/1", None, 401, "missing_token", None)
        .await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["error"], "unauthenticated");
    let r = e
        .refused(
            "GET",
            "/api/campaigns/1",
            Some("not.a.jwt"),
            401,
            "invalid_token",
            None,
        )
        .await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let expired =
        token_with(serde_json::json!({"sub": "vic", "tenant": "acme", "exp": now() - 3600}));
    e.refused(
        "GET",
        "/api/campaigns/1",
        Some(&expired),
        401,
        "token_expired",
        None,
    )
    .await;
    let no_tenant = token_with(serde_json::json!({"sub": "vic", "exp": now() + 3600}));
    e.refused(
        "GET",
        "/api/campaigns/1",
        Some(&no_tenant),
        401,
        "missing_tenant",
        None,
    )
    .await;
}

#[tokio::test]
async fn public_routes_need_no_identity_and_ignore_bad_tokens() {
    let e = env().await;
    let r = e.call("GET", "/health", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(e.up.last().unwrap().header("x-authz-subject"), None);
    let r = e.call("GET", "/health", Some("garbage")).await;
    assert_eq!(r.status, 200);
    assert_eq!(e.up.last().unwrap().header("x-authz-subject"), None);
    let seen = e.allowed("GET", "/health", &token("vic", "acme")).await;
    assert_eq!(seen.header("x-authz-subject"), Some("vic"));
    assert_eq!(seen.header("x-authz-roles"), Some("viewer"));
}

#[tokio::test]
async fn wildcards_match_whole_segments() {
    let e = env().await;
    // `*.view` covers any resource's view; `audit.*.export` one middle segment.
    e.allowed("GET", "/api/quality/scores", &token("vic", "acme"))
        .await;
    e.allowed("GET", "/api/audit/logs/export", &token("aud", "acme"))
        .await;
    e.refused(
        "GET",
        "/api/campaigns/1",
        Some(&token("aud", "acme")),
        403,
        "missing_permission",
        Some("campaigns.view"),
    )
    .await;
    // `*` grants everything to the owner.
    e.allowed("DELETE", "/api/campaigns/1", &token("alice", "acme"))
        .await;
}

#[tokio::test]
async fn inheritance_and_aliases() {
    let e = env().await;
    // member → editor → viewer
    let ed = token("ed", "acme");
    let seen = e.allowed("GET", "/api/campaigns/1", &ed).await;
    assert_eq!(
        seen.header("x-authz-roles"),
        Some("editor"),
        "alias resolved"
    );
    e.allowed("POST", "/api/content", &ed).await;
    e.refused(
        "POST",
        "/api/content/1/approve",
        Some(&ed),
        403,
        "missing_permission",
        Some("content.approve"),
    )
    .await;
    // manager inherits the alias `member`
    let mia = token("mia", "acme");
    e.allowed("POST", "/api/content", &mia).await;
    e.allowed("POST", "/api/content/1/approve", &mia).await;
    // a tenant custom role inheriting a built-in one
    let rev = token("rev", "acme");
    e.allowed("POST", "/api/content/1/approve", &rev).await;
    e.allowed("GET", "/api/campaigns/1", &rev).await;
}

#[tokio::test]
async fn overrides_deny_wins_and_grant_adds() {
    let e = env().await;
    let dee = token("dee", "acme");
    e.refused(
        "DELETE",
        "/api/campaigns/1",
        Some(&dee),
        403,
        "denied_by_override",
        Some("campaigns.delete"),
    )
    .await;
    e.allowed("GET", "/api/campaigns/1", &dee).await;
    e.allowed("POST", "/api/content/9/approve", &token("gus", "acme"))
        .await;
}

#[tokio::test]
async fn entitlements_tier_and_feature() {
    let e = env().await;
    e.allowed("POST", "/api/email/send", &token("emma", "acme"))
        .await;
    let r = e
        .refused(
            "POST",
            "/api/email/campaigns/1/send",
            Some(&token("emma", "acme")),
            403,
            "tier_required",
            Some("email.campaigns.send"),
        )
        .await;
    assert_eq!(
        r.json()["required_tier"],
        "enterprise",
        "highest matching tier"
    );
    e.allowed("POST", "/api/email/campaigns/1/send", &token("emma", "big"))
        .await;
    let r = e
        .refused(
            "POST",
            "/api/email/send",
            Some(&token("emma", "startup")),
            403,
            "tier_required",
            Some("email.send"),
        )
        .await;
    assert_eq!(
        r.json()["required_tier"],
        "growth",
        "a tenant without a record has no tier"
    );
    let r = e
        .refused(
            "GET",
            "/api/quality/scores",
            Some(&token("vic", "big")),
            403,
            "feature_disabled",
            Some("quality.view"),
        )
        .await;
    assert_eq!(r.json()["required_feature"], "quality");
}

#[tokio::test]
async fn own_grants_owner_checks_and_own_scope() {
    let e = env().await;
    let ed = token("ed", "acme");
    let seen = e.allowed("PUT", "/api/users/ed/profile", &ed).await;
    assert_eq!(seen.header("x-authz-scope"), Some("own"));
    e.refused(
        "PUT",
        "/api/users/vic/profile",
        Some(&ed),
        403,
        "not_owner",
        Some("profile.edit"),
    )
    .await;
    e.refused(
        "PUT",
        "/api/users/ED/profile",
        Some(&ed),
        403,
        "not_owner",
        Some("profile.edit"),
    )
    .await;
    let seen = e.allowed("GET", "/api/notes", &ed).await;
    assert_eq!(seen.header("x-authz-scope"), Some("own"));
    // a full grant (owner's `*`) is not own-only
    let seen = e
        .allowed("PUT", "/api/users/vic/profile", &token("alice", "acme"))
        .await;
    assert_eq!(seen.header("x-authz-scope"), None);
}

#[tokio::test]
async fn scopes_restrict_unless_all_scopes() {
    let e = env().await;
    let mia = token("mia", "acme");
    e.allowed("GET", "/api/brands/brand-1/reports", &mia).await;
    e.refused(
        "GET",
        "/api/brands/brand-2/reports",
        Some(&mia),
        403,
        "scope_denied",
        Some("reports.view"),
    )
    .await;
    e.allowed("GET", "/api/brands/brand-2/reports", &token("olga", "acme"))
        .await;
    // empty scopes = unrestricted
    e.allowed("GET", "/api/brands/brand-9/reports", &token("vic", "acme"))
        .await;
}

#[tokio::test]
async fn mfa_step_up_by_pattern_and_by_route() {
    let e = env().await;
    let r = e
        .refused(
            "GET",
            "/api/billing/invoices",
            Some(&token("alice", "acme")),
            401,
            "mfa_required",
            Some("billing.view"),
        )
        .await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_user_authentication\"")
    );
    e.allowed("GET", "/api/billing/invoices", &mfa_token("alice", "acme"))
        .await;
    e.refused(
        "POST",
        "/api/security/keys",
        Some(&token("alice", "acme")),
        401,
        "mfa_required",
        Some("security.rotate"),
    )
    .await;
    e.allowed("POST", "/api/security/keys", &mfa_token("alice", "acme"))
        .await;
    // MFA does not replace the permission
    e.refused(
        "GET",
        "/api/billing/invoices",
        Some(&mfa_token("emma", "acme")),
        403,
        "missing_permission",
        Some("billing.view"),
    )
    .await;
}

#[tokio::test]
async fn any_of_and_all_of() {
    let e = env().await;
    e.allowed("GET", "/api/any", &token("gus", "acme")).await;
    // an option held through a tenant custom role
    e.allowed("GET", "/api/any", &token("rev", "acme")).await;
    e.refused(
        "GET",
        "/api/any",
        Some(&token("vic", "acme")),
        403,
        "missing_permission",
        Some("campaigns.delete"),
    )
    .await;
    e.allowed("GET", "/api/all", &token("alice", "acme")).await;
    e.refused(
        "GET",
        "/api/all",
        Some(&token("mia", "acme")),
        403,
        "missing_permission",
        Some("campaigns.delete"),
    )
    .await;
    e.refused(
        "GET",
        "/api/all",
        Some(&token("emma", "acme")),
        403,
        "missing_permission",
        Some("campaigns.view"),
    )
    .await;
}

#[tokio::test]
async fn monitor_route_forwards_denials_with_identity() {
    let e = env().await;
    let seen = e
        .allowed("GET", "/api/legacy/1", &token("emma", "acme"))
        .await;
    assert_eq!(seen.header("x-authz-subject"), Some("emma"));
    assert_eq!(seen.header("x-authz-roles"), Some("emailer"));
    // identity failures are forwarded too, without identity headers
    let r = e.call("GET", "/api/legacy/1", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(e.up.last().unwrap().header("x-authz-subject"), None);
}

#[tokio::test]
async fn deny_status_404_hides_the_resource() {
    let e = env().await;
    let r = e
        .refused(
            "GET",
            "/api/secret/1",
            Some(&token("emma", "acme")),
            404,
            "no_route",
            None,
        )
        .await;
    assert_eq!(r.json()["error"], "not_found");
    e.allowed("GET", "/api/secret/1", &token("vic", "acme"))
        .await;
    // 401 stays 401: the client must learn to authenticate
    e.refused("GET", "/api/secret/1", None, 401, "missing_token", None)
        .await;
}

#[tokio::test]
async fn head_uses_the_get_route() {
    let e = env().await;
    let before = e.up.count();
    let r = e
        .call("HEAD", "/api/campaigns/1", Some(&token("vic", "acme")))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(e.up.count(), before + 1);
    assert_eq!(e.up.last().unwrap().method, "HEAD");
    let r = e
        .call("HEAD", "/api/campaigns/1", Some(&token("emma", "acme")))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(e.up.count(), before + 1);
    let r = e
        .call("HEAD", "/api/content", Some(&token("alice", "acme")))
        .await;
    assert_eq!(r.status, 404, "HEAD falls back to GET only, not POST");
}

#[tokio::test]
async fn unknown_subjects_and_tenants_have_no_grants() {
    let e = env().await;
    e.refused(
        "GET",
        "/api/campaigns/1",
        Some(&token("nobody", "acme")),
        403,
        "missing_permission",
        Some("campaigns.view"),
    )
    .await;
    e.refused(
        "GET",
        "/api/campaigns/1",
        Some(&token("vic", "ghost")),
        403,
        "missing_permission",
        Some("campaigns.view"),
    )
    .await;
}

#[tokio::test]
async fn query_is_forwarded_raw_and_path_canonical() {
    let e = env().await;
    let before = e.up.count();
    let r = e
        .call(
            "GET",
            "/api/x/../campaigns/%34%32?a=1&b=%2F..",
            Some(&token("vic", "acme")),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(e.up.count(), before + 1);
    assert_eq!(e.up.last().unwrap().target, "/api/campaigns/42?a=1&b=%2F..");
    // A target that is already canonical goes as it came, query and all.
    let r = e
        .call(
            "GET",
            "/api/campaigns/42?a=1&b=%2F..&c",
            Some(&token("vic", "acme")),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        e.up.last().unwrap().target,
        "/api/campaigns/42?a=1&b=%2F..&c"
    );
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let e = env().await;
    let t = token("ed", "acme");
    let body = "x".repeat(200_000);
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nConnection: close\r\nAuthorization: Bearer {t}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(e.up.last().unwrap().body.len(), 200_000);
}

#[tokio::test]
async fn global_monitor_mode_forwards_everything_but_no_route() {
    let up = Upstream::start().await;
    let config = CONFIG.replace(
        "[grants]\nstore = \"file\"",
        "[grants]\nstore = \"file\"\n[policy]\nmode = \"monitor\"",
    );
    let gw = start_gateway(&config, &up).await;
    let r = request(
        gw.addr,
        "DELETE",
        "/api/campaigns/1",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().header("x-authz-subject"), Some("vic"));
    let r = request(gw.addr, "DELETE", "/api/campaigns/1", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);
    let r = request(gw.addr, "GET", "/nope", None, &[]).await;
    assert_eq!(r.status, 404);
    let r = request(gw.addr, "GET", "/a/%2f/b", None, &[]).await;
    assert_eq!(
        r.status, 400,
        "malformed requests are refused even in monitor mode"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn unmatched_status_can_be_403() {
    let up = Upstream::start().await;
    let config = CONFIG.replace(
        "[grants]\nstore = \"file\"",
        "[grants]\nstore = \"file\"\n[policy]\nunmatched_status = 403",
    );
    let gw = start_gateway(&config, &up).await;
    let r = request(gw.addr, "GET", "/nope", None, &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), "no_route");
    assert_eq!(r.json()["error"], "forbidden");
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    let up = Upstream::start().await;
    // Reserve a port, then free it, so nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = CONFIG.replace("{UPSTREAM}", &dead.to_string());
    let gw = start_gateway(&config, &up).await;
    let r = request(
        gw.addr,
        "GET",
        "/api/campaigns/1",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
}

#[tokio::test]
async fn audit_file_gets_one_event_per_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\nallow_events = \"all\"\ngateway = \"gw-test\"\n[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nformat = \"json\"\n",
        path.display()
    );
    let gw = start_gateway(&config, &up).await;
    request(
        gw.addr,
        "GET",
        "/api/campaigns/42",
        Some(&token("vic", "acme")),
        &[("User-Agent", "curl/8.5.0")],
    )
    .await;
    request(
        gw.addr,
        "DELETE",
        "/api/campaigns/42",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    request(gw.addr, "GET", "/a/%2f/b", None, &[]).await;
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    eventually("three audit events", || read().lines().count() == 3).await;
    let events: Vec<serde_json::Value> = read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allow = &events[0];
    assert_eq!(allow["type"], "authz.decision");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["tenant"], "acme");
    assert_eq!(allow["subject"], "vic");
    assert_eq!(allow["roles"], serde_json::json!(["viewer"]));
    assert_eq!(allow["route"], "/api/campaigns/{id}");
    assert_eq!(allow["upstream"], "api");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["user_agent"], "curl/8.5.0");
    assert_eq!(allow["gateway"], "gw-test");
    assert_eq!(allow["required"], serde_json::json!(["campaigns.view"]));
    let deny = &events[1];
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reason"], "missing_permission");
    assert_eq!(deny["required"], serde_json::json!(["campaigns.delete"]));
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["method"], "DELETE");
    assert_eq!(deny["path"], "/api/campaigns/42");
    assert_eq!(events[2]["decision"], "error");
    assert_eq!(events[2]["reason"], "ambiguous_path");
    assert_eq!(events[2]["status"], 400);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(
        !read().contains("Bearer"),
        "credentials never appear in events"
    );
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_json() {
    let up = Upstream::start().await;
    // Accepts connections and reads, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let config = CONFIG
        .replace("{UPSTREAM}", &silent_addr.to_string())
        .replace(
            "[upstreams.api]\n",
            "[upstreams.api]\nrequest_timeout = \"300ms\"\n",
        );
    let gw = start_gateway(&config, &up).await;
    let r = request(
        gw.addr,
        "GET",
        "/api/campaigns/1",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.raw);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
}
