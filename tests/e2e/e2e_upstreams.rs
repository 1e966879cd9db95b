//! Upstream pools end to end: failover and passive health, retries only where safe,
//! per-upstream connection limits, HTTP/2 and TLS upstreams.

use crate::support;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::edge::{EdgeGateway, EdgeUpstream, Pki, Speak, config};
use crate::support::{request, token};
use http::Version;

async fn start(targets: &[String], upstream_extra: &str) -> EdgeGateway {
    let text = config(targets, upstream_extra, "");
    EdgeGateway::start(&text, std::path::Path::new("tests")).await
}

/// An address nothing listens on (bound, then released): connecting is refused at once.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A listener whose accept queue is full and never drained: new SYNs are dropped, so a
/// connect hangs until the client's connect timeout. Keep the returned values alive.
async fn hanging_addr() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    // Fill the queue: connects complete until it is full, then one stalls.
    loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
        assert!(held.len() < 64, "the backlog never filled");
    }
    (addr, listener, held)
}

#[tokio::test]
async fn requests_keep_succeeding_when_one_target_dies() {
    let a = EdgeUpstream::start(Speak::H1).await;
    let b = EdgeUpstream::start(Speak::H1).await;
    let gw = start(
        &[a.addr.to_string(), b.addr.to_string()],
        "max_failures = 1\neject_for = \"60s\"",
    )
    .await;
    for _ in 0..6 {
        assert_eq!(
            request(gw.addr, "GET", "/health", None, &[]).await.status,
            200
        );
    }
    assert_eq!((a.count(), b.count()), (3, 3), "round robin");
    b.kill();
    for _ in 0..10 {
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    assert_eq!(a.count(), 13);
    assert_eq!(b.count(), 3);
}

#[tokio::test]
async fn a_hanging_target_is_ejected_after_one_timeout() {
    let live = EdgeUpstream::start(Speak::H1).await;
    let (hung, _listener, _held) = hanging_addr().await;
    let gw = start(
        &[hung.to_string(), live.addr.to_string()],
        "connect_timeout = \"300ms\"\nmax_failures = 1\neject_for = \"60s\"",
    )
    .await;
    let mut slow = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        if started.elapsed() >= Duration::from_millis(250) {
            slow += 1;
        }
    }
    // Only the first request that hit the hanging target waited for its connect timeout
    // (then was retried on the live one); after that the target was skipped.
    assert_eq!(slow, 1);
    assert_eq!(live.count(), 10);
}

#[tokio::test]
async fn only_idempotent_requests_are_retried_and_a_post_is_never_replayed() {
    let live = EdgeUpstream::start(Speak::H1).await;
    let dead = dead_addr().await;
    // max_failures high: the dead target stays in rotation, so every other pick hits it.
    let gw = start(
        &[dead.to_string(), live.addr.to_string()],
        "max_failures = 1000",
    )
    .await;
    let t = token("ed", "acme");
    let auth = format!("Bearer {t}");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = support::send_raw(
            gw.addr,
            format!("POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {auth}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").as_bytes(),
        )
        .await;
        statuses.push(r.status);
        if r.status == 502 {
            assert_eq!(r.json()["error"], "upstream_unavailable");
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 502, 502]);
    let posts = live.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 2, "a POST that failed was replayed");
    // A POST without a body is not retried either.
    let r = support::send_raw(
        gw.addr,
        format!("POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let r2 = support::send_raw(
        gw.addr,
        format!("POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let mut pair = [r.status, r2.status];
    pair.sort_unstable();
    assert_eq!(pair, [200, 502]);

    // GET, PUT and DELETE without a body hitting the dead target move on to the live one.
    for method in ["GET", "PUT", "DELETE", "GET", "PUT", "DELETE"] {
        let r = request(gw.addr, method, "/api/items", Some(&t), &[]).await;
        assert_eq!(r.status, 200, "{method}: {}", r.raw);
    }
}

#[tokio::test]
async fn max_connections_per_upstream_waits_then_answers_503() {
    let up = EdgeUpstream::start(Speak::H1).await;
    let gw = start(
        &[up.addr.to_string()],
        "max_connections = 1\nrequest_timeout = \"300ms\"",
    )
    .await;
    let addr = gw.addr;
    // The one slot is held by a response whose body has not finished (the permit lives as
    // long as the response body, beyond `request_timeout`, which bounds the head only).
    let held = tokio::spawn(async move { request(addr, "GET", "/stream", None, &[]).await });
    support::eventually("the slow request reached the upstream", || {
        up.heads.load(Ordering::SeqCst) == 1
    })
    .await;
    let r = request(gw.addr, "GET", "/health", None, &[]).await;
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(r.json()["error"], "upstream_busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        up.heads.load(Ordering::SeqCst),
        1,
        "the busy request must not be sent"
    );
    up.release(1);
    let held = held.await.unwrap();
    assert_eq!(held.status, 200, "{}", held.raw);
    assert_eq!(held.body, "upstream ok");
    // The slot is free again.
    assert_eq!(
        request(gw.addr, "GET", "/health", None, &[]).await.status,
        200
    );
}

#[tokio::test]
async fn http2_upstream_by_prior_knowledge() {
    let up = EdgeUpstream::start(Speak::H2).await;
    let gw = start(&[up.addr.to_string()], "protocol = \"http2\"").await;
    for _ in 0..3 {
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2);
        // The client's Host travels as :authority, and only there: a server may refuse a
        // request that has both (RFC 9113 §8.3.1; nginx answers 400).
        assert_eq!(s.authority.as_deref(), Some("gateway.test"));
        assert_eq!(s.headers.get("host"), None, "{:?}", s.headers);
        assert_eq!(
            s.headers
                .get("x-forwarded-host")
                .and_then(|v| v.to_str().ok()),
            Some("gateway.test")
        );
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "the requests share one multiplexed connection"
    );
}

#[tokio::test]
async fn http2_upstream_is_reconnected_after_it_closed_the_connection() {
    let up = EdgeUpstream::start(Speak::H2).await;
    let gw = start(&[up.addr.to_string()], "protocol = \"http2\"").await;
    let r = request(gw.addr, "GET", "/health", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // The upstream restarts: its connections are dropped, the address comes back.
    up.kill();
    let restarted = EdgeUpstream::start_at(up.addr, Speak::H2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        if r.status == 200 {
            break;
        }
        // At most the request racing the close may fail, and then only as unavailable.
        assert_eq!(r.status, 502, "{}", r.raw);
        assert!(Instant::now() < deadline, "never reconnected");
    }
    assert_eq!(restarted.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        restarted.seen()[0].authority.as_deref(),
        Some("gateway.test")
    );
}

#[tokio::test]
async fn http2_upstream_down_is_a_502_and_fails_over_to_the_next_target() {
    let up = EdgeUpstream::start(Speak::H2).await;
    let dead = dead_addr().await;
    let gw = start(
        &[dead.to_string(), up.addr.to_string()],
        "protocol = \"http2\"\nmax_failures = 1\neject_for = \"60s\"",
    )
    .await;
    // Round robin starts at either target; a refused connect moves a GET to the other.
    for _ in 0..4 {
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    assert_eq!(up.count(), 4);
    // A POST is never retried, but the dead target is ejected by now: it goes to the live
    // one, its body streamed in DATA frames.
    let post = format!(
        "POST /api/items HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Length: 5\r\n\r\nhello",
        token("ed", "acme")
    );
    let r = support::send_raw(gw.addr, post.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let seen = up.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.method.as_str(), &last.body[..]),
        ("POST", &b"hello"[..])
    );
    assert_eq!(last.version, Version::HTTP_2);

    let gw_alone = start(&[dead.to_string()], "protocol = \"http2\"").await;
    let r = request(gw_alone.addr, "GET", "/health", None, &[]).await;
    assert_eq!(r.status, 502, "{}", r.raw);
}

#[tokio::test]
async fn tls_upstream_with_a_private_ca_over_http1_and_h2() {
    let pki = Pki::new();
    for (protocol, alpn, version) in [
        ("http1", &b"http/1.1"[..], Version::HTTP_11),
        ("http2", &b"h2"[..], Version::HTTP_2),
    ] {
        let config = std::sync::Arc::new(pki.upstream_server_config(&[alpn]));
        let up = EdgeUpstream::start(Speak::Tls(config)).await;
        let text = support::edge::config(
            &[format!("localhost:{}", up.addr.port())],
            &format!(
                "tls = true\nca = \"{}\"\nprotocol = \"{protocol}\"",
                pki.ca_path().display()
            ),
            "",
        );
        let gw = EdgeGateway::start(&text, pki.dir.path()).await;
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!(r.status, 200, "{protocol}: {}", r.raw);
        let seen = &up.seen()[0];
        assert_eq!(seen.version, version);
        // The client's Host either way: as the field over HTTP/1.1, as :authority over h2.
        let host = seen.headers.get("host").and_then(|v| v.to_str().ok());
        match version {
            Version::HTTP_2 => {
                assert_eq!(seen.authority.as_deref(), Some("gateway.test"));
                assert_eq!(host, None);
            }
            _ => assert_eq!(host, Some("gateway.test")),
        }
    }
    // An upstream whose certificate the CA did not sign is refused (502), not trusted.
    let stranger = std::sync::Arc::new(Pki::new().upstream_server_config(&[b"http/1.1"]));
    let up = EdgeUpstream::start(Speak::Tls(stranger)).await;
    let text = support::edge::config(
        &[format!("localhost:{}", up.addr.port())],
        &format!("tls = true\nca = \"{}\"", pki.ca_path().display()),
        "",
    );
    let gw = EdgeGateway::start(&text, pki.dir.path()).await;
    let r = request(gw.addr, "GET", "/health", None, &[]).await;
    assert_eq!(r.status, 502, "{}", r.raw);
    assert_eq!(up.count(), 0);
}

/// An HTTP/1.1 upstream that answers each request head it reads with the next canned
/// response, on any connection, and counts the connections it accepted.
struct CannedUpstream {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn canned_upstream(answers: Vec<&'static str>) -> CannedUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answers = std::sync::Arc::new(std::sync::Mutex::new(
        answers
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = socket.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let Some(answer) = answers.lock().unwrap().pop_front() else {
                            return;
                        };
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    CannedUpstream { addr, connections }
}

#[tokio::test]
async fn chunked_and_head_responses_are_relayed_over_one_reused_upstream_connection() {
    let up = canned_upstream(vec![
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain",
    ])
    .await;
    let gw = start(&[up.addr.to_string()], "").await;
    let r = request(gw.addr, "GET", "/health", None, &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello world"),
        "{}",
        r.raw
    );
    let r = request(gw.addr, "HEAD", "/health", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.header("content-length"), Some("11"));
    assert_eq!(r.body, "");
    let r = request(gw.addr, "GET", "/health", None, &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "again"), "{}", r.raw);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "keep-alive to the upstream: one connection for the three requests"
    );
}

#[tokio::test]
async fn an_upstream_response_with_ambiguous_framing_is_a_502_and_its_connection_is_dropped() {
    for bad in [
        // Response smuggling: both framings; a conforming reader could pick either.
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ] {
        let up = canned_upstream(vec![bad, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let gw = start(&[up.addr.to_string()], "").await;
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!(r.status, 502, "{bad:?}: {}", r.raw);
        assert_eq!(r.json()["error"], "upstream_unavailable");
        assert_eq!(r.header("x-authz-source"), Some("gateway"));
        let r = request(gw.addr, "GET", "/health", None, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{}", r.raw);
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            2,
            "{bad:?}: the connection that carried it must not be reused"
        );
    }
}

/// Against a real nginx (h2c): it refuses a request with both `:authority` and `host`, and it
/// sends GOAWAY after `keepalive_requests` streams on a connection, so concurrent requests
/// race connections that are going away. Eight clients, ten streams per connection: a
/// request refused by one GOAWAY finds room on the next connection.
#[tokio::test]
async fn http2_upstream_interoperates_with_nginx_across_goaways() {
    let nginx = support::nginx::Nginx::start(
        "  keepalive_requests 10;\n  server {\n    listen 127.0.0.1:{port} http2;\n    \
         location / { return 200 \"host=$host $server_protocol $request_method\\n\"; }\n  }",
    )
    .await;
    let gw = start(
        &[format!("127.0.0.1:{}", nginx.port)],
        "protocol = \"http2\"",
    )
    .await;
    let post = format!(
        "POST /api/items HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
        token("ed", "acme")
    );
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (addr, post) = (gw.addr, post.clone());
        clients.spawn(async move {
            let mut answers = Vec::new();
            for i in 0..25 {
                answers.push(if i % 5 == 0 {
                    support::send_raw(addr, post.as_bytes()).await
                } else {
                    request(addr, "GET", "/health", None, &[]).await
                });
            }
            answers
        });
    }
    let (mut gets, mut posts) = (0, 0);
    while let Some(answers) = clients.join_next().await {
        for r in answers.unwrap() {
            assert_eq!(r.status, 200, "{}\nnginx:\n{}", r.raw, nginx.error_log());
            match r.body.as_str() {
                "host=gateway.test HTTP/2.0 GET\n" => gets += 1,
                "host=gateway.test HTTP/2.0 POST\n" => posts += 1,
                other => panic!("nginx answered {other:?}"),
            }
        }
    }
    assert_eq!((gets, posts), (160, 40));
}
