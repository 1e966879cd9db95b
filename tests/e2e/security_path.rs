//! Path and request-target attacks (security.md §3.1–3.7, R2–R4), sent as raw bytes so no client
//! library normalises them away. Every test asserts the status, the JSON `reason`, and what the
//! recording upstream received: nothing for refusals, the canonical path for normalised ones.

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

/// `METHOD target HTTP/1.1` with Host, `Connection: close`, an optional bearer token.
fn raw_request(method: &str, target: &str, token: Option<&str>) -> Vec<u8> {
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

impl Env {
    async fn send(&self, method: &str, target: &str, token: Option<&str>) -> RawResponse {
        send_raw(self.gw.addr, &raw_request(method, target, token)).await
    }

    /// The request is allowed and the upstream receives exactly `forwarded` (canonical path).
    async fn forwards(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        forwarded: &str,
    ) -> Recorded {
        let before = self.up.count();
        let r = self.send(method, target, token).await;
        assert_eq!(r.status, 200, "{method} {target}: {}", r.raw);
        assert_eq!(r.body, "upstream ok", "{method} {target}");
        assert_eq!(
            self.up.count(),
            before + 1,
            "{method} {target}: forwarded once"
        );
        let seen = self.up.last().unwrap();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            (method, forwarded),
            "{method} {target}: the upstream must see the canonical request"
        );
        seen
    }

    /// The gateway refuses with `status`/`error`/`reason`, and the upstream sees nothing.
    async fn refuses(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        status: u16,
        error: &str,
        reason: Option<&str>,
    ) -> RawResponse {
        let before = self.up.count();
        let r = self.send(method, target, token).await;
        assert_eq!(r.status, status, "{method} {target}: {}", r.raw);
        assert_eq!(r.json()["error"], error, "{method} {target}: {}", r.body);
        assert_eq!(
            r.json()["reason"].as_str(),
            reason,
            "{method} {target}: {}",
            r.body
        );
        assert_eq!(
            r.header("x-authz-source"),
            Some("gateway"),
            "{method} {target}"
        );
        assert_eq!(
            self.up.count(),
            before,
            "{method} {target}: a refused request reached the upstream"
        );
        r
    }

    async fn ambiguous(&self, target: &str, token: Option<&str>) {
        self.refuses(
            "GET",
            target,
            token,
            400,
            "bad_request",
            Some("ambiguous_path"),
        )
        .await;
    }
}

#[tokio::test]
async fn dot_segments_raw_and_encoded_are_resolved_then_matched_and_forwarded() {
    let e = env().await;
    let vic = token("vic", "acme");
    for target in [
        "/health/../api/campaigns/1",
        "/health/%2e%2e/api/campaigns/1",
        "/health/%2E%2e/api/campaigns/1",
        "/health/.%2e/api/campaigns/1",
        "/health/%2e./api/campaigns/1",
        "/api/./campaigns/%2e/1",
        "/api/x/y/../../campaigns/1",
    ] {
        let seen = e
            .forwards("GET", target, Some(&vic), "/api/campaigns/1")
            .await;
        assert_eq!(seen.header("x-authz-subject"), Some("vic"), "{target}");
    }
}

#[tokio::test]
async fn dot_segments_from_a_public_route_into_admin_are_authorized_as_admin() {
    let e = env().await;
    for target in [
        "/health/../admin/users",
        "/health/%2e%2e/admin/users",
        "/health/%2E%2E/admin/users",
        "/health/.%2e/admin/users",
    ] {
        e.refuses(
            "GET",
            target,
            None,
            401,
            "unauthenticated",
            Some("missing_token"),
        )
        .await;
        let r = e
            .refuses(
                "GET",
                target,
                Some(&token("vic", "acme")),
                403,
                "forbidden",
                Some("missing_permission"),
            )
            .await;
        assert_eq!(r.json()["required_permission"], "admin.access", "{target}");
        e.forwards("GET", target, Some(&token("root", "acme")), "/admin/users")
            .await;
    }
}

#[tokio::test]
async fn dot_segments_out_of_admin_land_on_the_canonical_public_path() {
    let e = env().await;
    let seen = e
        .forwards("GET", "/admin/users/../../health", None, "/health")
        .await;
    assert_eq!(seen.header("x-authz-subject"), None);
    // An encoded `?` is a path character: dot removal applies across it, never into the query.
    e.forwards("GET", "/admin%3f/../health", None, "/health")
        .await;
    e.forwards(
        "GET",
        "/health?/../admin/users",
        None,
        "/health?/../admin/users",
    )
    .await;
}

#[tokio::test]
async fn encoded_unreserved_letters_do_not_evade_a_protected_route() {
    let e = env().await;
    e.refuses(
        "GET",
        "/%61dmin/users",
        None,
        401,
        "unauthenticated",
        Some("missing_token"),
    )
    .await;
    e.refuses(
        "GET",
        "/%61%64%6D%69%6E/%75sers",
        Some(&token("vic", "acme")),
        403,
        "forbidden",
        Some("missing_permission"),
    )
    .await;
    e.forwards(
        "GET",
        "/%61dmin/users",
        Some(&token("root", "acme")),
        "/admin/users",
    )
    .await;
}

#[tokio::test]
async fn dot_dot_above_the_root_is_rejected() {
    let e = env().await;
    let alice = token("alice", "acme");
    for target in [
        "/../admin/users",
        "/%2e%2e/admin/users",
        "/.%2E/admin/users",
        "/health/../../admin/users",
        "/api/campaigns/../../../admin/users",
    ] {
        e.ambiguous(target, Some(&alice)).await;
    }
}

#[tokio::test]
async fn encoded_separators_double_encoding_ctl_and_non_ascii_are_rejected_even_for_the_owner() {
    let e = env().await;
    // The owner holds `*`: the only thing that can stop these is the canonicalizer.
    let alice = token("alice", "acme");
    for target in [
        "/api/campaigns/1%2F..%2F..%2Fadmin%2Fusers",
        "/api/campaigns/1%2f..%2f..%2fadmin%2fusers",
        "/health/..%2Fadmin/users",
        "/api/campaigns/..%5C..%5Cadmin%5Cusers",
        "/api/campaigns/%252e%252e%252fadmin",
        "/health/%252e%252e/admin/users",
        "/api/campaigns/%25",
        "/api/campaigns/1%00",
        "/api/campaigns/1%0a",
        "/api/campaigns/1%0D%0Ax-evil:1",
        "/api/campaigns/%7f",
        "/api/campaigns/..%c0%af..%c0%afadmin%c0%afusers",
        "/api/campaigns/%c0%ae%c0%ae",
        "/health/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin/users",
        "/api/campaigns/%EF%BC%8E",
        "/api/campaigns/%e9",
        "/api/campaigns/%zz",
        "/api/campaigns/1%4",
    ] {
        e.ambiguous(target, Some(&alice)).await;
    }
}

#[tokio::test]
async fn encoded_slash_inside_a_path_parameter_is_rejected() {
    let e = env().await;
    // matchit's `{id}` would match the whole segment and authorize it as `campaigns.view`.
    let vic = token("vic", "acme");
    e.ambiguous("/api/campaigns/..%2f..%2fadmin%2fusers", Some(&vic))
        .await;
    e.ambiguous("/api/campaigns/..%2F..%2Fadmin", Some(&vic))
        .await;
    e.ambiguous("/api/campaigns/..%5c..%5cadmin", Some(&vic))
        .await;
}

#[tokio::test]
async fn raw_semicolon_and_backslash_are_rejected() {
    let e = env().await;
    let alice = token("alice", "acme");
    for target in [
        "/v1/..;/internal",
        "/health/..;/admin/users",
        "/api/campaigns/1;jsessionid=x",
        "/admin/users;x",
        "/health/..\\admin\\users",
        "/api/campaigns/1\\..\\..\\admin",
    ] {
        e.ambiguous(target, Some(&alice)).await;
    }
}

#[tokio::test]
async fn raw_non_ascii_bytes_are_rejected() {
    let e = env().await;
    let before = e.up.count();
    let mut req =
        b"GET /api/campaigns/\xef\xbc\x8e\xef\xbc\x8e HTTP/1.1\r\nHost: g\r\nConnection: close\r\n"
            .to_vec();
    req.extend_from_slice(
        format!("Authorization: Bearer {}\r\n\r\n", token("alice", "acme")).as_bytes(),
    );
    let r = send_raw(e.gw.addr, &req).await;
    assert_eq!(r.status, 400, "{}", r.raw);
    assert_eq!(r.reason(), "ambiguous_path");
    assert_eq!(e.up.count(), before);
}

#[tokio::test]
async fn merged_slashes_are_matched_and_forwarded_merged() {
    let e = env().await;
    let vic = token("vic", "acme");
    e.forwards("GET", "//api/campaigns/1", Some(&vic), "/api/campaigns/1")
        .await;
    e.forwards("GET", "/api//campaigns///1", Some(&vic), "/api/campaigns/1")
        .await;
    // `//admin/users` is the admin route (never a `//authority`), so it needs admin.
    e.refuses(
        "GET",
        "//admin/users",
        None,
        401,
        "unauthenticated",
        Some("missing_token"),
    )
    .await;
    e.refuses(
        "GET",
        "//admin//users",
        Some(&vic),
        403,
        "forbidden",
        Some("missing_permission"),
    )
    .await;
    e.forwards(
        "GET",
        "//admin/users",
        Some(&token("root", "acme")),
        "/admin/users",
    )
    .await;
}

#[tokio::test]
async fn fragment_is_dropped_and_the_truncated_path_is_authorized() {
    let e = env().await;
    // hyper stops the path at `#`: authorized as /admin/users, never as /health.
    e.refuses(
        "GET",
        "/admin/users#/../../health",
        None,
        401,
        "unauthenticated",
        Some("missing_token"),
    )
    .await;
    e.refuses(
        "GET",
        "/admin/users#/../../health",
        Some(&token("vic", "acme")),
        403,
        "forbidden",
        Some("missing_permission"),
    )
    .await;
    let seen = e
        .forwards(
            "GET",
            "/api/campaigns/1#section",
            Some(&token("vic", "acme")),
            "/api/campaigns/1",
        )
        .await;
    assert!(!seen.target.contains('#'));
    let seen = e
        .forwards("GET", "/health#/../admin/users", None, "/health")
        .await;
    assert!(!seen.target.contains('#'));
    assert_eq!(seen.header("x-authz-subject"), None);
}

#[tokio::test]
async fn absolute_form_is_authorized_and_forwarded_by_path_only() {
    let e = env().await;
    let seen = e
        .forwards(
            "GET",
            "http://evil.example/api/campaigns/1",
            Some(&token("vic", "acme")),
            "/api/campaigns/1",
        )
        .await;
    e.forwards(
        "GET",
        "http://evil.example/api/campaigns/1?x=1&y",
        Some(&token("vic", "acme")),
        "/api/campaigns/1?x=1&y",
    )
    .await;
    for (name, value) in &seen.headers {
        assert!(
            !value.to_str().unwrap_or_default().contains("evil.example"),
            "the authority of an absolute-form target leaked upstream in `{name}`"
        );
    }
    e.refuses(
        "GET",
        "http://evil.example/admin/users",
        None,
        401,
        "unauthenticated",
        Some("missing_token"),
    )
    .await;
    e.refuses(
        "GET",
        "http://gateway.test/health/../admin/users",
        Some(&token("vic", "acme")),
        403,
        "forbidden",
        Some("missing_permission"),
    )
    .await;
    e.ambiguous(
        "http://evil.example/api/campaigns/..%2fadmin",
        Some(&token("alice", "acme")),
    )
    .await;
}

#[tokio::test]
async fn absolute_form_with_userinfo_is_rejected() {
    let e = env().await;
    let alice = token("alice", "acme");
    e.refuses(
        "GET",
        "http://a@gateway.test/api/campaigns/1",
        Some(&alice),
        400,
        "bad_request",
        Some("invalid_target"),
    )
    .await;
    e.refuses(
        "GET",
        "http://user:pass@evil.example/health",
        None,
        400,
        "bad_request",
        Some("invalid_target"),
    )
    .await;
}

#[tokio::test]
async fn asterisk_form_is_rejected_and_never_forwarded() {
    let e = env().await;
    let alice = token("alice", "acme");
    e.ambiguous("*", Some(&alice)).await;
    e.refuses(
        "OPTIONS",
        "*",
        Some(&alice),
        400,
        "bad_request",
        Some("ambiguous_path"),
    )
    .await;
    e.refuses(
        "OPTIONS",
        "*",
        None,
        400,
        "bad_request",
        Some("ambiguous_path"),
    )
    .await;
}

#[tokio::test]
async fn connect_is_405_and_never_tunnelled() {
    let e = env().await;
    let alice = token("alice", "acme");
    let req = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {alice}\r\nConnection: close\r\n\r\n",
        e.up.addr, e.up.addr
    );
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 405, "{}", r.raw);
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
    assert_eq!(e.up.count(), 0, "CONNECT reached the upstream");
    // authority-form to an arbitrary host, and CONNECT with an origin-form path
    let r = send_raw(
        e.gw.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.raw);
    e.refuses(
        "CONNECT",
        "/api/campaigns/1",
        Some(&alice),
        405,
        "method_not_allowed",
        None,
    )
    .await;
}

#[tokio::test]
async fn trace_is_405_and_never_forwarded() {
    let e = env().await;
    let alice = token("alice", "acme");
    e.refuses(
        "TRACE",
        "/api/campaigns/1",
        Some(&alice),
        405,
        "method_not_allowed",
        None,
    )
    .await;
    e.refuses("TRACE", "/health", None, 405, "method_not_allowed", None)
        .await;
}

#[tokio::test]
async fn lower_case_method_is_an_unknown_method_and_never_forwarded() {
    let e = env().await;
    let alice = token("alice", "acme");
    for (m, p) in [
        ("delete", "/api/campaigns/1"),
        ("Delete", "/api/campaigns/1"),
        ("get", "/api/campaigns/1"),
        ("get", "/health"),
        ("FOO", "/api/campaigns/1"),
    ] {
        e.refuses(m, p, Some(&alice), 404, "not_found", Some("no_route"))
            .await;
    }
}

#[tokio::test]
async fn case_trailing_slash_and_whitespace_variants_are_other_unmatched_routes() {
    let e = env().await;
    let vic = token("vic", "acme");
    let root = token("root", "acme");
    for target in [
        "/Admin/users",
        "/ADMIN/USERS",
        "/admin/Users",
        "/admin/users/",
        "/admin/users%20",
        "/admin%20/users",
        "/admin/users%09",
        "/%20admin/users",
        "/admin/users/.",
        "/admin/users/%2e",
        "/Health",
        "/health/",
        "/health%20",
        "/api/campaigns/1/",
        "/API/campaigns/1",
        "/api/campaigns/%2e%2e",
    ] {
        // Not even the admin reaches the upstream through a variant: 404, not some other route.
        for t in [None, Some(vic.as_str()), Some(root.as_str())] {
            let r = e.send("GET", target, t).await;
            assert!(matches!(r.status, 400 | 404), "{target}: {}", r.raw);
            if r.status == 404 {
                assert_eq!(r.reason(), "no_route", "{target}");
            } else {
                assert_eq!(r.reason(), "ambiguous_path", "{target}");
            }
        }
    }
    assert_eq!(e.up.count(), 0, "a variant of a route reached the upstream");
    // The exact canonical paths still work (the variants were not refused by accident).
    e.forwards("GET", "/admin/users", Some(&root), "/admin/users")
        .await;
    e.forwards("GET", "/health", None, "/health").await;
}

#[tokio::test]
async fn encoded_whitespace_in_a_parameter_stays_in_the_same_route_and_is_forwarded_as_matched() {
    let e = env().await;
    // `1%20` is a different id for the same route: authorized as campaigns.view and forwarded
    // exactly as matched, never trimmed to another route.
    e.forwards(
        "GET",
        "/api/campaigns/1%20",
        Some(&token("vic", "acme")),
        "/api/campaigns/1%20",
    )
    .await;
    e.forwards(
        "GET",
        "/api/campaigns/a%3fb",
        Some(&token("vic", "acme")),
        "/api/campaigns/a%3Fb",
    )
    .await;
}

#[tokio::test]
async fn target_over_8_kib_is_414_and_at_the_limit_is_allowed() {
    let e = env().await;
    let vic = token("vic", "acme");
    let prefix = "/api/campaigns/";
    let at_limit = format!("{prefix}{}", "a".repeat(8 * 1024 - prefix.len()));
    assert_eq!(at_limit.len(), 8 * 1024);
    e.forwards("GET", &at_limit, Some(&vic), &at_limit).await;
    let over = format!("{at_limit}a");
    e.refuses("GET", &over, Some(&vic), 414, "uri_too_long", None)
        .await;
    let with_query = format!("/api/campaigns/1?q={}", "a".repeat(9 * 1024));
    e.refuses("GET", &with_query, Some(&vic), 414, "uri_too_long", None)
        .await;
}
