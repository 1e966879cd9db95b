//! Header hygiene (security.md §3.8–3.12, R1, R5): override, URL-override, identity and
//! forwarding headers from the client never reach the upstream; `Connection` cannot remove
//! the gateway's headers; malformed header sets are refused before anything is forwarded;
//! upstream responses lose hop-by-hop and forged gateway headers.

use crate::support::*;

struct Env {
    up: Upstream,
    gw: TestGateway,
}

async fn env() -> Env {
    let up = Upstream::start().await;
    let gw = start_gateway(SECURITY_CONFIG, &up).await;
    Env { up, gw }
}

impl Env {
    /// `request(...)`, asserting a 200 from the upstream and returning what it received.
    async fn forwarded(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (RawResponse, Recorded) {
        let before = self.up.count();
        let r = request(self.gw.addr, method, path, token, extra).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.raw);
        assert_eq!(r.body, "upstream ok");
        assert_eq!(self.up.count(), before + 1);
        let seen = self.up.last().unwrap();
        assert_eq!((seen.method.as_str(), seen.target.as_str()), (method, path));
        (r, seen)
    }

    /// Raw bytes that must be refused with `status`/`reason` and never reach the upstream.
    async fn refused_raw(&self, bytes: &[u8], status: u16, reason: &str) -> RawResponse {
        let before = self.up.count();
        let r = send_raw(self.gw.addr, bytes).await;
        assert_eq!(r.status, status, "{}", r.raw);
        assert_eq!(r.json()["error"], "bad_request", "{}", r.body);
        assert_eq!(r.reason(), reason, "{}", r.body);
        assert_eq!(r.header("x-authz-source"), Some("gateway"));
        assert_eq!(
            self.up.count(),
            before,
            "a refused request reached the upstream"
        );
        r
    }
}

/// Every value of `name` the upstream received.
fn all(seen: &Recorded, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[tokio::test]
async fn method_override_headers_are_stripped_and_the_request_line_is_authorized() {
    let e = env().await;
    let vic = token("vic", "acme");
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("x-original-method", "DELETE"),
    ];
    let (_, seen) = e
        .forwarded("GET", "/api/campaigns/1", Some(&vic), &overrides)
        .await;
    for (name, _) in overrides {
        assert_eq!(seen.header(name), None, "`{name}` reached the upstream");
    }
    // The override cannot lend a DELETE the GET permission either.
    let before = e.up.count();
    let r = request(
        e.gw.addr,
        "DELETE",
        "/api/campaigns/1",
        Some(&vic),
        &[("X-HTTP-Method-Override", "GET")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.reason(), "missing_permission");
    assert_eq!(r.json()["required_permission"], "campaigns.delete");
    assert_eq!(e.up.count(), before);
}

#[tokio::test]
async fn url_override_headers_are_stripped_and_the_request_line_is_authorized() {
    let e = env().await;
    let overrides = [
        ("X-Original-URL", "/admin/users"),
        ("X-Rewrite-URL", "/admin/users"),
        ("X-Original-URI", "/admin/users"),
        ("X-Forwarded-Uri", "/admin/users"),
        ("X-Forwarded-Path", "/admin/users"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Envoy-Original-Path", "/admin/users"),
        (
            "x-middleware-subrequest",
            "middleware:middleware:middleware:middleware:middleware",
        ),
    ];
    // A public request carrying them is served as the public path, without them.
    let (_, seen) = e.forwarded("GET", "/health", None, &overrides).await;
    for (name, _) in overrides {
        assert_eq!(seen.header(name), None, "`{name}` reached the upstream");
    }
    let (_, seen) = e
        .forwarded(
            "GET",
            "/api/campaigns/1",
            Some(&token("vic", "acme")),
            &overrides,
        )
        .await;
    for (name, _) in overrides {
        assert_eq!(seen.header(name), None, "`{name}` reached the upstream");
    }
    // And a protected path does not become public by naming a public URL.
    let r = request(
        e.gw.addr,
        "GET",
        "/admin/users",
        None,
        &[("X-Original-URL", "/health"), ("X-Rewrite-URL", "/health")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.raw);
    assert_eq!(r.reason(), "missing_token");
    assert_eq!(e.up.count(), 2);
}

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_by_the_gateways_in_any_case() {
    let e = env().await;
    let spoofed = [
        ("X-Authz-Subject", "alice"),
        ("x-authz-subject", "root"),
        ("X-AUTHZ-TENANT", "globex"),
        ("x-Authz-Roles", "owner,admin"),
        ("X-Authz-Scope", "all"),
        ("X-Authz-Source", "gateway"),
        ("X-User-Id", "alice"),
        ("X-Tenant-Id", "globex"),
        ("Remote-User", "alice"),
        ("X-Remote-User", "alice"),
        ("X-Auth-Request-User", "alice"),
        ("X-Consumer-Username", "alice"),
        ("X-Authenticated-Userid", "alice"),
        ("X-Roles", "owner"),
        ("X-Permissions", "*"),
    ];
    let (_, seen) = e
        .forwarded(
            "GET",
            "/api/campaigns/1",
            Some(&token("vic", "acme")),
            &spoofed,
        )
        .await;
    assert_eq!(all(&seen, "x-authz-subject"), ["vic"]);
    assert_eq!(all(&seen, "x-authz-tenant"), ["acme"]);
    assert_eq!(all(&seen, "x-authz-roles"), ["viewer"]);
    assert!(all(&seen, "x-authz-scope").is_empty());
    for name in [
        "x-authz-source",
        "x-user-id",
        "x-tenant-id",
        "remote-user",
        "x-remote-user",
        "x-auth-request-user",
        "x-consumer-username",
        "x-authenticated-userid",
        "x-roles",
        "x-permissions",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "client `{name}` reached the upstream"
        );
    }
}

#[tokio::test]
async fn spoofed_identity_headers_are_absent_on_public_routes_without_a_token() {
    let e = env().await;
    let (_, seen) = e
        .forwarded(
            "GET",
            "/health",
            None,
            &[
                ("X-Authz-Subject", "alice"),
                ("X-Authz-Tenant", "acme"),
                ("X-Authz-Roles", "owner"),
                ("X-Authz-Scope", "all"),
            ],
        )
        .await;
    for name in [
        "x-authz-subject",
        "x-authz-tenant",
        "x-authz-roles",
        "x-authz-scope",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "client `{name}` reached the upstream"
        );
    }
}

#[tokio::test]
async fn spoofed_forwarding_headers_are_overwritten_or_removed() {
    let e = env().await;
    let (_, seen) = e
        .forwarded(
            "GET",
            "/api/campaigns/1",
            Some(&token("vic", "acme")),
            &[
                ("X-Forwarded-For", "10.0.0.1"),
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "admin.internal"),
                ("X-Forwarded-Port", "443"),
                ("X-Forwarded-Server", "internal"),
                ("Forwarded", "for=10.0.0.1;proto=https;host=admin.internal"),
                ("X-Real-IP", "10.0.0.1"),
                ("True-Client-IP", "10.0.0.1"),
                ("X-Client-IP", "10.0.0.1"),
            ],
        )
        .await;
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&seen, "x-forwarded-host"), ["gateway.test"]);
    for name in [
        "x-forwarded-port",
        "x-forwarded-server",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "client `{name}` reached the upstream"
        );
    }
}

/// The identity (tenant `acme`) and forwarding headers the gateway sets, each exactly once.
fn assert_gateway_set(seen: &Recorded, subject: &str, roles: &str) {
    assert_eq!(all(seen, "x-authz-subject"), [subject]);
    assert_eq!(all(seen, "x-authz-tenant"), ["acme"]);
    assert_eq!(all(seen, "x-authz-roles"), [roles]);
    assert_eq!(all(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(seen, "x-forwarded-host"), ["gateway.test"]);
}

/// A request with a body goes through the other upstream client (hyper's, not the lean
/// one): the gateway's headers replace the client's there too, once each.
#[tokio::test]
async fn gateway_headers_replace_spoofed_ones_on_requests_with_a_body() {
    let e = env().await;
    let before = e.up.count();
    let raw = format!(
        "POST /api/content HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nX-Authz-Subject: alice\r\nX-Authz-Roles: owner\r\n\
         X-Forwarded-For: 10.0.0.1\r\nX-Request-Id: chosen-by-client\r\n\
         Content-Length: 5\r\n\r\nhello",
        token("ed", "acme")
    );
    let r = send_raw(e.gw.addr, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(e.up.count(), before + 1);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.body.as_ref(), b"hello");
    assert_gateway_set(&seen, "ed", "editor");
    // The client's id was kept (it is plain), and sent once.
    assert_eq!(all(&seen, "x-request-id"), ["chosen-by-client"]);
}

#[tokio::test]
async fn connection_tokens_cannot_remove_gateway_set_headers() {
    let e = env().await;
    let (_, seen) = e
        .forwarded(
            "GET",
            "/api/campaigns/1",
            Some(&token("vic", "acme")),
            &[
                (
                    "Connection",
                    "x-authz-subject, x-authz-tenant, X-Authz-Roles, x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-request-id, host",
                ),
                ("X-Authz-Subject", "alice"),
                ("X-Forwarded-For", "10.9.9.9"),
            ],
        )
        .await;
    assert_gateway_set(&seen, "vic", "viewer");
    assert_eq!(all(&seen, "x-request-id").len(), 1);
    assert!(!all(&seen, "x-request-id")[0].is_empty());
    assert_eq!(
        seen.header("connection"),
        None,
        "hop-by-hop `Connection` forwarded"
    );
}

#[tokio::test]
async fn client_headers_named_in_connection_are_removed() {
    let e = env().await;
    let (_, seen) = e
        .forwarded(
            "GET",
            "/api/campaigns/1",
            Some(&token("vic", "acme")),
            &[
                ("Connection", "X-Secret-Hop"),
                ("Connection", "x-other-hop , keep-alive"),
                ("X-Secret-Hop", "1"),
                ("X-Other-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic YTpi"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "x-late"),
                ("X-Kept", "yes"),
            ],
        )
        .await;
    for name in [
        "x-secret-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "connection",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "hop-by-hop `{name}` reached the upstream"
        );
    }
    assert_eq!(
        seen.header("x-kept"),
        Some("yes"),
        "an end-to-end header was lost"
    );
}

/// `Connection: host` would have the sanitizer take the client's Host away; the upstream
/// still gets it (set again from the client's), as nginx and Envoy always send one.
#[tokio::test]
async fn a_connection_token_naming_host_does_not_take_host_from_the_upstream() {
    let e = env().await;
    let (_, seen) = e
        .forwarded(
            "GET",
            "/api/campaigns/1",
            Some(&token("vic", "acme")),
            &[("Connection", "host")],
        )
        .await;
    assert_eq!(
        seen.header("host"),
        Some("gateway.test"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("connection"), None);
}

#[tokio::test]
async fn header_names_with_underscores_are_rejected() {
    let e = env().await;
    let t = token("vic", "acme");
    for name in ["X_Authz_Subject", "x_forwarded_for", "X-Custom_Header"] {
        let req = format!(
            "GET /api/campaigns/1 HTTP/1.1\r\nHost: g\r\nConnection: close\r\nAuthorization: Bearer {t}\r\n{name}: alice\r\n\r\n"
        );
        e.refused_raw(req.as_bytes(), 400, "invalid_header_name")
            .await;
    }
    // even on a public route
    e.refused_raw(
        b"GET /health HTTP/1.1\r\nHost: g\r\nConnection: close\r\nX_Authz_Subject: alice\r\n\r\n",
        400,
        "invalid_header_name",
    )
    .await;
}

#[tokio::test]
async fn duplicate_authorization_is_rejected() {
    let e = env().await;
    let vic = token("vic", "acme");
    let root = token("root", "acme");
    for (first, second) in [(&vic, &root), (&root, &vic), (&vic, &vic)] {
        let req = format!(
            "GET /admin/users HTTP/1.1\r\nHost: g\r\nConnection: close\r\nAuthorization: Bearer {first}\r\nAuthorization: Bearer {second}\r\n\r\n"
        );
        e.refused_raw(req.as_bytes(), 400, "duplicate_header").await;
    }
    // Case variants of the name are the same header.
    let req = format!(
        "GET /health HTTP/1.1\r\nHost: g\r\nConnection: close\r\nauthorization: Bearer {vic}\r\nAUTHORIZATION: Bearer {root}\r\n\r\n"
    );
    e.refused_raw(req.as_bytes(), 400, "duplicate_header").await;
}

#[tokio::test]
async fn duplicate_host_is_rejected() {
    let e = env().await;
    e.refused_raw(
        b"GET /health HTTP/1.1\r\nHost: gateway.test\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        400,
        "duplicate_header",
    )
    .await;
    e.refused_raw(
        b"GET /health HTTP/1.1\r\nHost: gateway.test\r\nhost: gateway.test\r\nConnection: close\r\n\r\n",
        400,
        "duplicate_header",
    )
    .await;
}

#[tokio::test]
async fn missing_host_on_http_1_1_is_rejected() {
    let e = env().await;
    e.refused_raw(
        b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        400,
        "missing_host",
    )
    .await;
    // absolute-form does not excuse a missing Host on HTTP/1.1 (RFC 9112 §3.2)
    e.refused_raw(
        b"GET http://gateway.test/health HTTP/1.1\r\nConnection: close\r\n\r\n",
        400,
        "missing_host",
    )
    .await;
}

#[tokio::test]
async fn http_1_0_without_host_is_allowed() {
    let e = env().await;
    let r = send_raw(e.gw.addr, b"GET /health HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, "upstream ok");
    assert_eq!(e.up.count(), 1);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.target, "/health");
    assert_eq!(
        seen.header("x-forwarded-host"),
        None,
        "no client host to report"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn valid_request_id_is_kept_end_to_end() {
    let e = env().await;
    let (r, seen) = e
        .forwarded("GET", "/health", None, &[("X-Request-Id", "abc-123_x.y:z")])
        .await;
    assert_eq!(all(&seen, "x-request-id"), ["abc-123_x.y:z"]);
    assert_eq!(r.header("x-request-id"), Some("abc-123_x.y:z"));
}

#[tokio::test]
async fn invalid_request_id_is_replaced() {
    let e = env().await;
    let long = "a".repeat(300);
    for bad in ["has space", "a;b=c", long.as_str(), "\"quoted\"", "a,b"] {
        let (r, seen) = e
            .forwarded("GET", "/health", None, &[("X-Request-Id", bad)])
            .await;
        let ids = all(&seen, "x-request-id");
        assert_eq!(ids.len(), 1, "{bad:?}: {ids:?}");
        assert_ne!(ids[0], bad);
        assert!(
            !ids[0].is_empty()
                && ids[0].len() <= 128
                && ids[0]
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-'),
            "{bad:?}: replaced by {:?}",
            ids[0]
        );
        assert_eq!(
            r.header("x-request-id"),
            Some(ids[0].as_str()),
            "response and upstream agree"
        );
    }
    // Refusals carry a fresh id too, never the client's bad one.
    let r = request(
        e.gw.addr,
        "GET",
        "/admin/users",
        None,
        &[("X-Request-Id", "has space")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_ne!(r.header("x-request-id"), Some("has space"));
    assert_eq!(r.json()["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test]
async fn duplicate_request_ids_become_one() {
    let e = env().await;
    let (_, seen) = e
        .forwarded(
            "GET",
            "/health",
            None,
            &[("X-Request-Id", "first-id"), ("X-Request-Id", "second-id")],
        )
        .await;
    assert_eq!(
        all(&seen, "x-request-id").len(),
        1,
        "{:?}",
        all(&seen, "x-request-id")
    );
}

const HOP_BY_HOP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Length: 2\r\n\
Connection: keep-alive, X-Hop-Secret\r\n\
X-Hop-Secret: internal\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Authenticate: Basic realm=internal\r\n\
Proxy-Connection: keep-alive\r\n\
Upgrade: h2c\r\n\
Trailer: x-late\r\n\
X-Authz-Source: gateway\r\n\
X-Upstream-Ok: 1\r\n\
\r\n\
ok";

#[tokio::test]
async fn upstream_hop_by_hop_and_forged_gateway_headers_are_stripped_from_responses() {
    let scripted = ScriptedUpstream::start(HOP_BY_HOP_RESPONSE).await;
    let unused = Upstream::start().await;
    let gw = start_gateway(&scripted.config(SECURITY_CONFIG), &unused).await;
    let r = request(
        gw.addr,
        "GET",
        "/api/campaigns/1",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, "ok");
    assert_eq!(
        r.header("x-upstream-ok"),
        Some("1"),
        "end-to-end response header lost"
    );
    for name in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
        "trailer",
        "x-authz-source",
    ] {
        assert_eq!(
            r.header(name),
            None,
            "upstream `{name}` reached the client: {}",
            r.raw
        );
    }
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(scripted.heads().len(), 1);
    assert_eq!(unused.count(), 0);
}

#[tokio::test]
async fn crlf_in_claims_cannot_inject_headers() {
    let e = env().await;
    for claims in [
        serde_json::json!({"sub": "a\r\nx-evil: 1", "tenant": "acme", "exp": now() + 3600}),
        serde_json::json!({"sub": "vic", "tenant": "acme\r\nx-evil: 1", "exp": now() + 3600}),
        serde_json::json!({"sub": "vic\nx-evil: 1", "tenant": "acme", "exp": now() + 3600}),
        serde_json::json!({"sub": "vic x", "tenant": "acme", "exp": now() + 3600}),
    ] {
        let t = token_with(claims.clone());
        let r = request(e.gw.addr, "GET", "/api/campaigns/1", Some(&t), &[]).await;
        assert_eq!(r.status, 401, "{claims}: {}", r.raw);
        assert_eq!(r.reason(), "invalid_token", "{claims}");
        assert_eq!(r.header("x-evil"), None);
        assert_eq!(e.up.count(), 0, "{claims}: forwarded");
    }
    // On a public route the bad token is ignored: forwarded without any identity.
    let t = token_with(
        serde_json::json!({"sub": "a\r\nx-evil: 1", "tenant": "acme", "exp": now() + 3600}),
    );
    let (_, seen) = e.forwarded("GET", "/health", Some(&t), &[]).await;
    assert_eq!(seen.header("x-evil"), None);
    assert_eq!(seen.header("x-authz-subject"), None);
}

#[tokio::test]
async fn malformed_header_lines_are_rejected_before_the_gateway() {
    let e = env().await;
    let t = token("root", "acme");
    for bad in [
        "X-Authz-Subject : root",
        "X-A: 1\r\n folded",
        "X-A: a\0b",
        "X-A: a\rb",
        ": empty-name",
    ] {
        let req = format!(
            "GET /admin/users HTTP/1.1\r\nHost: g\r\nConnection: close\r\nAuthorization: Bearer {t}\r\n{bad}\r\n\r\n"
        );
        let r = send_raw(e.gw.addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.raw);
    }
    assert_eq!(e.up.count(), 0, "{:?}", e.up.requests());
}

#[tokio::test]
async fn too_many_headers_are_refused_and_not_forwarded() {
    let e = env().await;
    let mut req = format!(
        "GET /api/campaigns/1 HTTP/1.1\r\nHost: g\r\nConnection: close\r\nAuthorization: Bearer {}\r\n",
        token("vic", "acme")
    );
    for i in 0..120 {
        req.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.raw);
    assert_eq!(e.up.count(), 0);
}
