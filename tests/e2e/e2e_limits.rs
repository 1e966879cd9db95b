//! Limits, timeouts, shutdown and CORS over real sockets (`[limits]`, `[cors]`).

use crate::support;
use std::time::{Duration, Instant};

use crate::support::edge::{EdgeGateway, EdgeUpstream, Speak, config};
use crate::support::{parse_response, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(limits: &str) -> (EdgeGateway, EdgeUpstream) {
    gateway_to(Speak::H1, "", limits).await
}

async fn gateway_to(speak: Speak, upstream: &str, limits: &str) -> (EdgeGateway, EdgeUpstream) {
    let up = EdgeUpstream::start(speak).await;
    let text = config(
        &[up.addr.to_string()],
        upstream,
        &format!("[limits]\n{limits}"),
    );
    let gw = EdgeGateway::start(&text, std::path::Path::new("tests")).await;
    (gw, up)
}

/// Read one response head + `Content-Length` body from a keep-alive connection.
async fn read_response(stream: &mut TcpStream) -> support::RawResponse {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return parse_response(&buf);
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return parse_response(&buf),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response within 5s: {:?}", String::from_utf8_lossy(&buf)),
        }
    }
}

/// The peer closed: a read returns EOF or an error before `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: gw.test\r\n\r\n";

#[tokio::test]
async fn slowloris_is_closed_by_the_header_read_timeout() {
    let (gw, up) = gateway("header_read_timeout = \"300ms\"\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let mut closed_at = None;
    // One byte every 50 ms would take 2 s for the whole head.
    for byte in GET_HEALTH {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        let mut chunk = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(started.elapsed());
                break;
            }
            // hyper may answer 408 before closing.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    let closed_at = closed_at.expect("the connection outlived the header timeout");
    assert!(
        closed_at < Duration::from_millis(1500),
        "closed after {closed_at:?}"
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn declared_oversize_body_is_413_without_contacting_the_upstream() {
    let (gw, up) = gateway("max_body = \"1KiB\"\n").await;
    let t = token("ed", "acme");
    let req = format!(
        "POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {t}\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n"
    );
    let r = support::send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.raw);
    assert_eq!(r.reason(), "");
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
    assert_eq!(up.heads.load(std::sync::atomic::Ordering::SeqCst), 0);

    // At the limit it goes through.
    let body = "x".repeat(1024);
    let req = format!(
        "POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {t}\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{body}"
    );
    let r = support::send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(up.seen()[0].body.len(), 1024);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_cut_off_and_answered_413() {
    chunked_body_over_the_limit(Speak::H1, "").await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_cut_off_and_answered_413_with_an_http2_upstream() {
    chunked_body_over_the_limit(Speak::H2, "protocol = \"http2\"").await;
}

async fn chunked_body_over_the_limit(speak: Speak, upstream: &str) {
    let (gw, up) = gateway_to(speak, upstream, "max_body = \"1KiB\"\n").await;
    let t = token("ed", "acme");
    // Under the limit in two chunks: forwarded whole.
    let req = format!(
        "POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n200\r\n{}\r\n200\r\n{}\r\n0\r\n\r\n",
        "a".repeat(512),
        "b".repeat(512)
    );
    let r = support::send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(up.count(), 1);

    // Over it: the first chunk fits, the second crosses the limit mid-stream. The chunk's
    // trailing CRLF and the last chunk are never sent: the gateway must not wait for them.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n{}\r\n800\r\n{}",
        "a".repeat(512),
        "b".repeat(2048)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 413, "{}", r.raw);
    assert_eq!(r.json()["error"], "payload_too_large");
    // The upstream saw the head of the second request but never a complete body.
    assert_eq!(
        up.count(),
        1,
        "the oversize request must not complete upstream"
    );
    assert!(up.seen().iter().all(|s| s.body.len() <= 1024));
}

#[tokio::test]
async fn long_uri_is_414_at_the_configured_length() {
    let (gw, _up) = gateway("max_uri_length = \"64\"\n").await;
    let path = format!("/health?q={}", "a".repeat(60));
    let r = support::request(gw.addr, "GET", &path, None, &[]).await;
    assert_eq!(r.status, 414);
    let r = support::request(gw.addr, "GET", "/health?q=short", None, &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn too_many_header_fields_are_refused() {
    let (gw, up) = gateway("max_headers = 10\n").await;
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for i in 0..20 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let r = support::send_raw(gw.addr, req.as_bytes()).await;
    assert_ne!(r.status, 200, "{}", r.raw);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn connection_is_closed_after_max_requests_per_connection() {
    let (gw, up) = gateway("max_requests_per_connection = 2\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(GET_HEALTH).await.unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), None);
    stream.write_all(GET_HEALTH).await.unwrap();
    let second = read_response(&mut stream).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn accept_waits_beyond_max_connections() {
    let (gw, _up) = gateway("max_connections = 2\n").await;
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    a.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut a).await.status, 200);
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    b.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut b).await.status, 200);

    // The third connection sits in the kernel backlog: no answer while both are held.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(GET_HEALTH).await.unwrap();
    let mut chunk = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut chunk)).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond max_connections"
    );
    drop(a);
    assert_eq!(read_response(&mut c).await.status, 200);
}

/// Start a graceful shutdown and wait until new connections are refused (the listener is
/// dropped first).
async fn shut_down_and_await_the_listener(gw: &mut EdgeGateway) {
    gw.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(gw.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener kept accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn graceful_shutdown_completes_an_in_flight_request_and_refuses_new_connections() {
    let (mut gw, up) = gateway("shutdown_timeout = \"10s\"\n").await;
    let addr = gw.addr;
    let in_flight =
        tokio::spawn(async move { support::request(addr, "GET", "/slow", None, &[]).await });
    support::eventually("the slow request reached the upstream", || {
        up.heads.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    shut_down_and_await_the_listener(&mut gw).await;
    assert!(
        !gw.served.is_finished(),
        "drain must wait for the in-flight request"
    );
    up.release(1);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, "upstream ok");
    tokio::time::timeout(Duration::from_secs(5), &mut gw.served)
        .await
        .expect("serve returns once drained")
        .unwrap();
}

/// A keep-alive connection busy with a request when the shutdown starts is told so on that
/// request's response (`connection: close`) and closed after it, not left open until it goes
/// idle.
#[tokio::test]
async fn graceful_shutdown_closes_a_busy_keep_alive_connection_after_its_request() {
    let (mut gw, up) = gateway("shutdown_timeout = \"10s\"\n").await;
    let addr = gw.addr;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut client).await.status, 200);
    let before = up.heads.load(std::sync::atomic::Ordering::SeqCst);
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    support::eventually("the slow request reached the upstream", || {
        up.heads.load(std::sync::atomic::Ordering::SeqCst) == before + 1
    })
    .await;
    shut_down_and_await_the_listener(&mut gw).await;
    up.release(1);
    let r = read_response(&mut client).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.raw);
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut rest))
        .await
        .expect("closed after the response");
    assert_eq!(n.unwrap_or(0), 0, "nothing after the last response");
    tokio::time::timeout(Duration::from_secs(5), &mut gw.served)
        .await
        .expect("serve returns once drained")
        .unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_after_the_drain_deadline() {
    let (mut gw, up) = gateway("shutdown_timeout = \"200ms\"\n").await;
    let addr = gw.addr;
    let _stuck =
        tokio::spawn(async move { support::request(addr, "GET", "/slow", None, &[]).await });
    support::eventually("the slow request reached the upstream", || {
        up.heads.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    gw.shutdown();
    tokio::time::timeout(Duration::from_secs(3), &mut gw.served)
        .await
        .expect("serve returns after shutdown_timeout")
        .unwrap();
}

// === CORS ===

async fn cors_gateway(cors: &str) -> (EdgeGateway, EdgeUpstream) {
    let up = EdgeUpstream::start(Speak::H1).await;
    let text = config(&[up.addr.to_string()], "", &format!("[cors]\n{cors}"));
    let gw = EdgeGateway::start(&text, std::path::Path::new("tests")).await;
    (gw, up)
}

const CORS: &str = "allow_origins = [\"https://app.example.com\"]\nallow_credentials = true\nmax_age = \"10m\"\nexpose_headers = [\"x-request-id\"]\n";

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway() {
    let (gw, up) = cors_gateway(CORS).await;
    let r = support::request(
        gw.addr,
        "OPTIONS",
        "/api/items",
        None,
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "PUT"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
    assert_eq!(r.header("vary"), Some("origin"));
    assert_eq!(up.heads.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cors_unlisted_origin_is_never_reflected() {
    let (gw, up) = cors_gateway(CORS).await;
    let r = support::request(
        gw.addr,
        "OPTIONS",
        "/api/items",
        None,
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // An actual request from that origin is served (CORS is the browser's check) without
    // CORS headers; from the listed origin it gets them.
    let r = support::request(
        gw.addr,
        "GET",
        "/health",
        None,
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = support::request(
        gw.addr,
        "GET",
        "/health",
        None,
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    // Gateway refusals carry them too, so the browser can read the 401.
    let r = support::request(
        gw.addr,
        "GET",
        "/api/items",
        None,
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn cors_disallowed_method_preflight_gets_no_cors_headers() {
    let (gw, _up) = cors_gateway("allow_origins = \"*\"\nallow_methods = [\"GET\"]\n").await;
    let r = support::request(
        gw.addr,
        "OPTIONS",
        "/api/items",
        None,
        &[
            ("Origin", "https://x.example"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = support::request(
        gw.addr,
        "GET",
        "/health",
        None,
        &[("Origin", "https://x.example")],
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn without_cors_a_preflight_is_an_ordinary_request() {
    let (gw, up) = gateway("").await;
    // OPTIONS /health has a public route: forwarded like any request.
    let r = support::request(
        gw.addr,
        "OPTIONS",
        "/health",
        None,
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    // OPTIONS /api/items has no route for OPTIONS.
    let r = support::request(
        gw.addr,
        "OPTIONS",
        "/api/items",
        None,
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 404);
}
