//! Request smuggling, pipelining and tunnelling (security.md §3.13–3.15, R1, R6, R7, R8):
//! whatever the client's framing, the upstream receives only requests the gateway authorized,
//! re-framed by the gateway, and never a tunnel.

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

/// Every request the upstream recorded is one of `allowed` (method, target).
fn only(up: &Upstream, allowed: &[(&str, &str)]) {
    for seen in up.requests() {
        assert!(
            allowed.contains(&(seen.method.as_str(), seen.target.as_str())),
            "the upstream received an unauthorized request: {} {} (body {:?})",
            seen.method,
            seen.target,
            seen.body
        );
    }
}

/// A smuggled request can only come from the client's own bytes; make sure it is no header
/// the client sent verbatim (`Content-Length: 6` would desync the upstream).
fn assert_reframed(seen: &Recorded, client_content_length: &str) {
    assert_ne!(
        seen.header("content-length"),
        Some(client_content_length),
        "the client's Content-Length was copied upstream"
    );
    let te = seen.header("transfer-encoding").unwrap_or_default();
    assert!(te.is_empty() || te == "chunked", "client TE copied: {te:?}");
    if let Some(cl) = seen.header("content-length") {
        assert_eq!(
            cl.parse::<usize>().ok(),
            Some(seen.body.len()),
            "CL does not frame the body"
        );
    }
}

#[tokio::test]
async fn cl_te_cannot_smuggle_a_second_request_to_the_upstream() {
    let e = env().await;
    let ed = token("ed", "acme");
    // CL first, then TE: a CL-trusting hop would read 6 bytes (`0\r\n\r\nG`); a TE-trusting one
    // ends the body at the zero chunk and sees `GET /admin/users` as the next request.
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ed}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /admin/users HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    );
    let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
    // hyper processes CL+TE by Transfer-Encoding, drops Content-Length and closes the
    // connection after the response (RFC 9112 §6.1 allows this instead of a 400): the
    // trailing bytes are never parsed as a request, and the upstream gets a re-framed body.
    assert_eq!(responses.len(), 1, "the connection closes: {responses:?}");
    assert_eq!(responses[0].status, 200, "{responses:?}");
    only(&e.up, &[("POST", "/api/content")]);
    assert_eq!(e.up.count(), 1, "{:?}", e.up.requests());
    let seen = e.up.last().unwrap();
    assert!(seen.body.is_empty(), "body {:?}", seen.body);
    assert_reframed(&seen, "6");
    assert_eq!(seen.header("x-authz-subject"), Some("ed"));
}

#[tokio::test]
async fn te_cl_body_holding_a_request_is_forwarded_as_body_only() {
    let e = env().await;
    let ed = token("ed", "acme");
    let smuggled = "GET /admin/users HTTP/1.1\r\nHost: g\r\nX: ";
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ed}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\
         {:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
    assert!(
        matches!(responses.first().map(|r| r.status), Some(200 | 400)),
        "{responses:?}"
    );
    only(&e.up, &[("POST", "/api/content")]);
    assert!(e.up.count() <= 1);
    if let Some(seen) = e.up.last() {
        assert_eq!(
            seen.body.as_ref(),
            smuggled.as_bytes(),
            "the chunked body, decoded once"
        );
        assert_reframed(&seen, "4");
    }
}

#[tokio::test]
async fn invalid_transfer_encodings_are_rejected_by_hyper() {
    let e = env().await;
    let ed = token("ed", "acme");
    for te in [
        "xchunked",
        "chunked, identity",
        "identity",
        "\"chunked\"",
        "chunked\x0b",
    ] {
        let req = format!(
            "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ed}\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n\
             0\r\n\r\nGET /admin/users HTTP/1.1\r\nHost: g\r\n\r\n"
        );
        let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
        assert_eq!(responses.len(), 1, "{te:?}: {responses:?}");
        assert_eq!(responses[0].status, 400, "{te:?}: {}", responses[0].raw);
    }
    // Transfer-Encoding on HTTP/1.0
    let req = format!(
        "POST /api/content HTTP/1.0\r\nHost: g\r\nAuthorization: Bearer {ed}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.raw);
    assert_eq!(e.up.count(), 0, "{:?}", e.up.requests());
}

#[tokio::test]
async fn differing_or_malformed_content_lengths_are_rejected() {
    let e = env().await;
    let ed = token("ed", "acme");
    for cl in [
        "Content-Length: 3\r\nContent-Length: 5",
        "Content-Length: 3, 5",
        "Content-Length: +5",
        "Content-Length: 0x5",
        "Content-Length: -1",
    ] {
        let req = format!(
            "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ed}\r\n{cl}\r\nConnection: close\r\n\r\nabcde"
        );
        let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
        assert_eq!(responses.len(), 1, "{cl:?}: {responses:?}");
        assert_eq!(responses[0].status, 400, "{cl:?}: {}", responses[0].raw);
    }
    assert_eq!(e.up.count(), 0, "{:?}", e.up.requests());
}

#[tokio::test]
async fn pipelined_requests_are_authorized_one_by_one() {
    let e = env().await;
    let vic = token("vic", "acme");
    let req = format!(
        "GET /api/campaigns/1 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\n\r\n\
         GET /api/campaigns/2 HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    );
    let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert_eq!(responses[0].status, 200);
    assert_eq!(responses[0].body, "upstream ok");
    assert_eq!(
        responses[1].status, 401,
        "identity carried over on the connection"
    );
    assert_eq!(responses[1].reason(), "missing_token");
    assert_eq!(e.up.count(), 1);
    only(&e.up, &[("GET", "/api/campaigns/1")]);
}

#[tokio::test]
async fn pipelined_requests_get_their_own_identity_and_decision() {
    let e = env().await;
    let root = token("root", "acme");
    let vic = token("vic", "acme");
    let req = format!(
        "GET /admin/users HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {root}\r\n\r\n\
         DELETE /admin/users/7 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\n\r\n\
         GET /api/campaigns/3 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\nConnection: close\r\n\r\n"
    );
    let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 200], "{responses:?}");
    assert_eq!(responses[1].json()["required_permission"], "admin.access");
    let seen = e.up.requests();
    let lines: Vec<(&str, &str, Option<&str>)> = seen
        .iter()
        .map(|s| {
            (
                s.method.as_str(),
                s.target.as_str(),
                s.header("x-authz-subject"),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("GET", "/admin/users", Some("root")),
            ("GET", "/api/campaigns/3", Some("vic"))
        ]
    );
}

#[tokio::test]
async fn h2c_upgrade_is_forwarded_as_a_plain_request_without_upgrade_headers() {
    let e = env().await;
    let vic = token("vic", "acme");
    // The next bytes on the connection are parsed as HTTP/1 and authorized on their own.
    let req = format!(
        "GET /api/campaigns/1 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n\
         GET /admin/users HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    );
    let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
    assert!(!responses.is_empty());
    assert_eq!(responses[0].status, 200, "{}", responses[0].raw);
    assert!(responses.iter().all(|r| r.status != 101), "{responses:?}");
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert_eq!(responses[1].status, 401);
    assert_eq!(e.up.count(), 1);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.target, "/api/campaigns/1");
    for name in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(seen.header(name), None, "`{name}` reached the upstream");
    }
}

#[tokio::test]
async fn websocket_upgrade_is_forwarded_as_a_plain_request_without_upgrade_headers() {
    let e = env().await;
    let vic = token("vic", "acme");
    let req = format!(
        "GET /api/campaigns/1 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let responses = send_raw_all(e.gw.addr, req.as_bytes()).await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].status, 200);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("connection"), None);
    // An unauthenticated upgrade is refused like any request.
    let req = "GET /admin/users HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 401, "{}", r.raw);
    assert_eq!(e.up.count(), 1);
}

/// A lenient upstream that switches protocols for anyone who asks (or not).
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";

#[tokio::test]
async fn an_upstream_101_is_never_relayed() {
    let scripted = ScriptedUpstream::start(SWITCHING).await;
    let unused = Upstream::start().await;
    let gw = start_gateway(&scripted.config(SECURITY_CONFIG), &unused).await;
    let vic = token("vic", "acme");
    let req = format!(
        "GET /api/campaigns/1 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n"
    );
    let r = send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 502, "{}", r.raw);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
    assert_eq!(r.header("upgrade"), None);
    let heads = scripted.heads();
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    assert!(!head.contains("\r\nupgrade:"), "Upgrade forwarded: {head}");
    assert!(
        !head.contains("http2-settings"),
        "HTTP2-Settings forwarded: {head}"
    );
}

#[tokio::test]
async fn denied_requests_with_bodies_are_not_forwarded() {
    let e = env().await;
    let vic = token("vic", "acme");
    let body = "x".repeat(64 * 1024);
    // 403 with a Content-Length body
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {vic}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.reason(), "missing_permission");
    // 401 with a chunked body
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 401, "{}", r.raw);
    assert_eq!(r.reason(), "missing_token");
    assert_eq!(e.up.count(), 0, "{:?}", e.up.requests());
}

#[tokio::test]
async fn expect_continue_is_not_answered_before_a_denial() {
    let e = env().await;
    // Only the head: a gateway that said `100 Continue` would invite the body of a denied request.
    let mut stream = tokio::net::TcpStream::connect(e.gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"POST /api/content HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "the gateway waited for a body it must not need"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn allowed_body_is_reframed_not_copied() {
    let e = env().await;
    let ed = token("ed", "acme");
    // chunked in, with a chunk extension and a trailer: the upstream gets the decoded bytes
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ed}\r\nTransfer-Encoding: chunked\r\nTrailer: x-late\r\nConnection: close\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-late: 1\r\n\r\n"
    );
    let r = send_raw(e.gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.body.as_ref(), b"hello world");
    assert_eq!(seen.header("trailer"), None);
    assert_eq!(seen.header("x-late"), None, "trailer became a header");
    assert_reframed(&seen, "");
}

const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn client_trailers_never_reach_the_upstream_wire() {
    let scripted = ScriptedUpstream::start(OK_RESPONSE).await;
    let unused = Upstream::start().await;
    let gw = start_gateway(&scripted.config(SECURITY_CONFIG), &unused).await;
    let ed = token("ed", "acme");
    // Trailers are a second header section the upstream may merge into the headers.
    let req = format!(
        "POST /api/content HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ed}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: x-authz-subject, x-late\r\nTE: trailers\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nx-authz-subject: root\r\nx-late: 1\r\n\r\n"
    );
    let r = send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, "ok");
    let wire = scripted.heads();
    assert_eq!(wire.len(), 1);
    let wire = wire[0].to_ascii_lowercase();
    assert!(wire.contains("hello"), "{wire}");
    assert!(wire.contains("x-authz-subject: ed\r\n"), "{wire}");
    assert!(!wire.contains("root"), "client trailer forwarded: {wire}");
    assert!(!wire.contains("x-late"), "client trailer forwarded: {wire}");
    assert!(!wire.contains("\r\ntrailer:"), "{wire}");
    assert!(!wire.contains("\r\nte:"), "{wire}");
}

mod h2 {
    //! HTTP/2 prior knowledge on the public listener (hyper-util `auto`): the same checks apply,
    //! and the upstream still gets a canonical, sanitized HTTP/1.1 request.

    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    async fn h2_get(
        gw: &TestGateway,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method("GET")
            .uri(format!("http://gateway.test{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    #[tokio::test]
    async fn h2_requests_are_canonicalized_and_authorized_like_http1() {
        let e = env().await;
        let (status, body) = h2_get(&e.gw, "/health/../admin/users", &[]).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some("missing_token"))
        );
        let bearer = format!("Bearer {}", token("vic", "acme"));
        let (status, body) = h2_get(
            &e.gw,
            "/health/%2e%2e/admin/users",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (403, Some("missing_permission"))
        );
        let (status, body) = h2_get(
            &e.gw,
            "/api/campaigns/..%2f..%2fadmin%2fusers",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (400, Some("ambiguous_path"))
        );
        let (status, body) = h2_get(
            &e.gw,
            "/api/campaigns/1",
            &[("authorization", &bearer), ("x_authz_subject", "root")],
        )
        .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (400, Some("invalid_header_name"))
        );
        let root = format!("Bearer {}", token("root", "acme"));
        let (status, body) = h2_get(
            &e.gw,
            "/admin/users",
            &[("authorization", &bearer), ("authorization", &root)],
        )
        .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (400, Some("duplicate_header"))
        );
        assert_eq!(e.up.count(), 0, "{:?}", e.up.requests());

        let (status, _) = h2_get(
            &e.gw,
            "/api/x/../campaigns/1",
            &[
                ("authorization", &bearer),
                ("x-authz-subject", "root"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-http-method-override", "DELETE"),
            ],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(e.up.count(), 1);
        let seen = e.up.last().unwrap();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("GET", "/api/campaigns/1")
        );
        assert_eq!(seen.header("x-authz-subject"), Some("vic"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(seen.header("x-forwarded-host"), Some("gateway.test"));
        assert_eq!(seen.header("x-http-method-override"), None);
    }
}
