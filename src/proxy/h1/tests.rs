use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

// === pure parts ===

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in pairs {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// The fields of a head, names as sent (any case), taken in as `build_response` does.
fn scan(pairs: &[(&str, &str)]) -> Scan {
    let mut scan = Scan::default();
    for (name, value) in pairs {
        scan.note(&response_name(name.as_bytes()).unwrap(), value.as_bytes());
    }
    scan
}

fn framing(method: &Method, status: StatusCode, scan: &Scan) -> Result<Framing, H1Error> {
    scan.framing(method, status)
}

#[test]
fn framing_follows_rfc_9112_and_refuses_ambiguity() {
    let get = Method::GET;
    let ok = StatusCode::OK;
    assert_eq!(
        framing(&get, ok, &scan(&[("content-length", "5")])).unwrap(),
        Framing::Length(5)
    );
    assert_eq!(
        framing(&get, ok, &scan(&[("content-length", "5, 5")])).unwrap(),
        Framing::Length(5)
    );
    assert_eq!(
        framing(&get, ok, &scan(&[("transfer-encoding", "Chunked")])).unwrap(),
        Framing::Chunked
    );
    assert_eq!(framing(&get, ok, &scan(&[])).unwrap(), Framing::UntilClose);
    // Names as sent, in any case.
    assert_eq!(
        framing(&get, ok, &scan(&[("CONTENT-Length", "7")])).unwrap(),
        Framing::Length(7)
    );
    // No body whatever the headers say.
    assert_eq!(
        framing(&Method::HEAD, ok, &scan(&[("content-length", "5")])).unwrap(),
        Framing::Empty
    );
    assert_eq!(
        framing(
            &get,
            StatusCode::NO_CONTENT,
            &scan(&[("content-length", "5")])
        )
        .unwrap(),
        Framing::Empty
    );
    assert_eq!(
        framing(&get, StatusCode::NOT_MODIFIED, &scan(&[])).unwrap(),
        Framing::Empty
    );
    // Fail closed.
    for bad in [
        &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
        &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        &[("content-length", "5"), ("Content-Length", "6")],
        &[("content-length", "5"), ("content-length", "6")],
        &[("content-length", "5, 6")],
        &[("content-length", "-1")],
        &[("content-length", "0x10")],
        &[("content-length", "")],
        &[("content-length", "99999999999999999999")],
        &[("transfer-encoding", "gzip")],
        &[("transfer-encoding", "gzip, chunked")],
        &[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ],
        &[("transfer-encoding", "chunked, identity")],
    ] {
        assert!(
            framing(&get, ok, &scan(bad)).is_err(),
            "{bad:?} must be refused"
        );
    }
}

#[test]
fn chunk_sizes_are_strict_hex_with_optional_extensions() {
    assert_eq!(parse_chunk_size(b"1a"), Some(26));
    assert_eq!(parse_chunk_size(b"0"), Some(0));
    assert_eq!(parse_chunk_size(b"A;name=value"), Some(10));
    assert_eq!(parse_chunk_size(b"A ;ext"), Some(10));
    assert_eq!(
        parse_chunk_size(b"fffffffffffffff"),
        Some(0xfff_ffff_ffff_ffff)
    );
    for bad in [
        &b""[..],
        b";ext",
        b"g",
        b"-1",
        b"0x10",
        b"1 2",
        b"ffffffffffffffff",
    ] {
        assert_eq!(
            parse_chunk_size(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn request_heads_carry_method_target_and_headers_but_no_framing() {
    let mut out = Vec::new();
    let mut added = Added::default();
    added.set(
        HeaderName::from_static("x-authz-subject"),
        HeaderValue::from_static("alice"),
    );
    added.set(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("r2"),
    );
    encode_request(
        &mut out,
        &Method::DELETE,
        &PathAndQuery::from_static("/a/b?c=d"),
        &headers(&[
            ("host", "example.com"),
            ("accept", "*/*"),
            ("content-length", "0"),
        ]),
        &added,
    );
    // The gateway's own headers follow the client's.
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "DELETE /a/b?c=d HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\n\
         x-authz-subject: alice\r\nx-request-id: r2\r\n\r\n"
    );
}

// === over a socket ===

/// A raw upstream: answers the n-th request it reads (on any connection) with
/// `answers[n]`, then keeps the connection open unless the answer is followed by `CLOSE`.
struct RawUpstream {
    addr: String,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

const CLOSE: &str = "\u{0}close";

async fn raw_upstream(answers: Vec<&'static str>) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let (answers, reqs) = (answers.clone(), reqs.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        reqs.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let answer = answers.lock().unwrap().pop_front().unwrap_or(CLOSE);
                        let (bytes, close) = match answer.strip_suffix(CLOSE) {
                            Some(bytes) => (bytes, true),
                            None => (answer, false),
                        };
                        if socket.write_all(bytes.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    RawUpstream {
        addr,
        accepted,
        requests,
    }
}

async fn get(
    pool: &Arc<IdlePool>,
    up: &RawUpstream,
    method: Method,
) -> Result<(u16, String), String> {
    let response = send(
        pool,
        Instant::now(),
        Dial {
            authority: &up.addr,
            connect_timeout: Duration::from_secs(2),
        },
        &method,
        &PathAndQuery::from_static("/x"),
        &headers(&[("host", "up")]),
        &Added::default(),
    )
    .await
    .map_err(|e| format!("head: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn pool() -> Arc<IdlePool> {
    IdlePool::new(8, Duration::from_secs(60))
}

#[tokio::test]
async fn length_delimited_responses_reuse_one_connection() {
    let up = raw_upstream(vec![
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno!",
    ])
    .await;
    let pool = pool();
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "hello".into())
    );
    assert_eq!(pool.idle(), 1);
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (404, "no!".into())
    );
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
    let first = up.requests.lock().unwrap()[0].clone();
    assert!(
        first.starts_with("GET /x HTTP/1.1\r\nhost: up\r\n"),
        "{first}"
    );
}

#[tokio::test]
async fn a_reused_connection_reads_into_the_buffer_it_kept() {
    const ANSWER: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
    let up = raw_upstream(vec![ANSWER, ANSWER, ANSWER]).await;
    let pool = pool();
    // Where the response's `content-length` value sits: in the connection's read buffer.
    let value_at = || async {
        let response = send(
            &pool,
            Instant::now(),
            Dial {
                authority: &up.addr,
                connect_timeout: Duration::from_secs(2),
            },
            &Method::GET,
            &PathAndQuery::from_static("/x"),
            &headers(&[("host", "up")]),
            &Added::default(),
        )
        .await
        .unwrap();
        let at = response.headers()["content-length"].as_bytes().as_ptr() as usize;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        at
    };
    let first = value_at().await;
    let kept = pool.lock().back().map(|idle| idle.buf.capacity());
    assert!(
        kept.is_some_and(|room| room > 0),
        "the idle connection keeps its buffer: {kept:?}"
    );
    assert_eq!(
        value_at().await,
        first,
        "the second response reuses the first's memory"
    );
    assert_eq!(value_at().await, first);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_buffer_a_long_body_was_read_into_is_not_kept_while_idle() {
    // The first read takes the head and most of the body (4 KiB), the second the last 500
    // bytes into 1 KiB reserved for them: that buffer has room left, and is not kept.
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 4555\r\n\r\n";
    let long: &'static str =
        Box::leak(format!("{head}{}", "x".repeat(4096 - head.len() + 500)).into_boxed_str());
    let up = raw_upstream(vec![long]).await;
    let pool = pool();
    let (status, body) = get(&pool, &up, Method::GET).await.unwrap();
    assert_eq!((status, body.len()), (200, 4555));
    let kept = pool.lock().back().map(|idle| idle.buf.capacity());
    assert_eq!(
        kept,
        Some(0),
        "the connection is idle, without the grown buffer"
    );
}

#[tokio::test]
async fn a_connection_field_naming_only_keep_alive_stays_out_of_the_map_others_stay_in() {
    let up = raw_upstream(vec![
        "HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nconnection: keep-alive, X-Hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let pool = pool();
    let (target, fields, added) = (
        PathAndQuery::from_static("/x"),
        headers(&[("host", "up")]),
        Added::default(),
    );
    let head = |pool| {
        send(
            pool,
            Instant::now(),
            Dial {
                authority: &up.addr,
                connect_timeout: Duration::from_secs(2),
            },
            &Method::GET,
            &target,
            &fields,
            &added,
        )
    };
    let plain = head(&pool).await.unwrap();
    assert_eq!(plain.headers().get("connection"), None);
    assert_eq!(plain.headers().len(), 1, "{:?}", plain.headers());
    drop(plain);
    // The sanitizer needs the field to know that `x-hop` goes too.
    let named = head(&pool).await.unwrap();
    assert_eq!(named.headers()["connection"], "keep-alive, X-Hop");
    assert_eq!(named.headers()["x-hop"], "1");
}

#[tokio::test]
async fn chunked_bodies_are_decoded_and_trailers_dropped() {
    let up = raw_upstream(vec![
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool();
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "hello, world".into())
    );
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn malformed_chunked_bodies_fail_and_are_not_reused() {
    for answer in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        let up = raw_upstream(vec![answer]).await;
        let pool = pool();
        let got = get(&pool, &up, Method::GET).await;
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with("body:")),
            "{answer:?}: {got:?}"
        );
        assert_eq!(pool.idle(), 0);
    }
}

#[tokio::test]
async fn ambiguous_framing_is_refused_before_any_byte_is_relayed() {
    for answer in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
    ] {
        let up = raw_upstream(vec![answer]).await;
        let pool = pool();
        let got = get(&pool, &up, Method::GET).await;
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with("head:")),
            "{answer:?}: {got:?}"
        );
        assert_eq!(pool.idle(), 0);
    }
}

#[tokio::test]
async fn close_delimited_bodies_run_to_eof_and_are_not_reused() {
    let up = raw_upstream(vec![
        "HTTP/1.1 200 OK\r\n\r\nuntil the end\u{0}close",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool();
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "until the end".into())
    );
    assert_eq!(pool.idle(), 0);
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn extra_bytes_after_the_body_or_connection_close_prevent_reuse() {
    let up = raw_upstream(vec![
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool();
    for _ in 0..3 {
        assert_eq!(
            get(&pool, &up, Method::GET).await.unwrap(),
            (200, "ok".into())
        );
        assert_eq!(pool.idle(), 0);
    }
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_has_no_body() {
    let up = raw_upstream(vec![
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let pool = pool();
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(
        get(&pool, &up, Method::HEAD).await.unwrap(),
        (200, String::new())
    );
    // The HEAD response left the connection in a known state: reused.
    assert_eq!(
        get(&pool, &up, Method::GET).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_retried_only_for_idempotent_methods() {
    // Each answer closes its connection after being written, but says keep-alive.
    let closing = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\u{0}close";
    // A GET on a pooled connection the upstream closed: retried on a new one.
    let up2 = raw_upstream(vec![closing, closing]).await;
    let pool2 = pool();
    assert_eq!(
        get(&pool2, &up2, Method::GET).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(pool2.idle(), 1, "kept: the upstream said keep-alive");
    assert_eq!(
        get(&pool2, &up2, Method::GET).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(up2.accepted.load(Ordering::SeqCst), 2);

    // A POST in the same situation is not sent twice.
    let up3 = raw_upstream(vec![closing, closing]).await;
    let pool3 = pool();
    assert_eq!(
        get(&pool3, &up3, Method::POST).await.unwrap(),
        (200, "ok".into())
    );
    assert_eq!(pool3.idle(), 1);
    let second = get(&pool3, &up3, Method::POST).await;
    let sent = up3.requests.lock().unwrap().len();
    match second {
        // The close was seen at checkout: a fresh connection, sent once.
        Ok(answer) => assert_eq!((answer, sent), ((200, "ok".into()), 2)),
        // The close raced the write: refused, not repeated.
        Err(e) => assert!(e.starts_with("head:") && sent == 1, "{e} after {sent}"),
    }
}

#[tokio::test]
async fn connect_failures_are_reported_as_such() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = send(
        &pool(),
        Instant::now(),
        Dial {
            authority: &addr,
            connect_timeout: Duration::from_secs(2),
        },
        &Method::GET,
        &PathAndQuery::from_static("/"),
        &HeaderMap::new(),
        &Added::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, H1Error::Connect(_)), "{err:?}");
}

#[test]
fn usual_response_names_map_to_their_constants_in_any_case() {
    for (lower, name) in &COMMON_NAMES {
        assert_eq!(HeaderName::from_bytes(lower).unwrap(), *name);
        let upper = lower.to_ascii_uppercase();
        assert_eq!(response_name(&upper).unwrap(), *name);
    }
    assert_eq!(response_name(b"X-Custom").unwrap(), "x-custom");
    assert!(response_name(b"bad name").is_err());
    assert!(response_name(b"").is_err());
}

/// The word-wise comparison agrees with `eq_ignore_ascii_case` for every name of the table
/// against names of every length up to 24 in mixed case, and against near misses.
#[test]
fn token_comparison_agrees_with_ascii_case_folding() {
    let names: Vec<Vec<u8>> = COMMON_NAMES
        .iter()
        .map(|(n, _)| n.to_vec())
        .chain((0..=24).map(|len| (0..len).map(|i| b"ab-cd"[i % 5]).collect()))
        .collect();
    for lower in &names {
        let mixed: Vec<u8> = lower
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i % 2 == 0 {
                    b.to_ascii_uppercase()
                } else {
                    *b
                }
            })
            .collect();
        assert!(token_eq_lower(&mixed, lower), "{mixed:?}");
        for i in 0..lower.len() {
            for other in [b'x', b'_', b'0', b'-', b'a'] {
                let mut near = mixed.clone();
                near[i] = other;
                assert_eq!(
                    token_eq_lower(&near, lower),
                    near.eq_ignore_ascii_case(lower),
                    "{near:?} against {lower:?}"
                );
            }
        }
        assert!(
            !token_eq_lower(&mixed[..mixed.len().saturating_sub(1)], lower) || lower.is_empty()
        );
    }
}

/// An idle connection is reused only within the pool's idle timeout, by the caller's clock
/// reading: past it, it (and any older one) is dropped and a new connection opened.
#[tokio::test]
async fn an_idle_connection_past_the_idle_timeout_is_dropped_not_reused() {
    let up = raw_upstream(vec![
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
    ])
    .await;
    let pool = IdlePool::new(8, Duration::from_secs(30));
    assert_eq!(get(&pool, &up, Method::GET).await.unwrap().0, 200);
    assert_eq!(pool.idle(), 1);
    // Within the timeout by the caller's reading: handed out (and taken off the pool).
    let fresh = pool.checkout(Instant::now() + Duration::from_secs(29));
    assert!(fresh.is_some());
    let (stream, buf) = fresh.unwrap();
    pool.checkin(stream, buf);
    // Past it: nothing to reuse, and the pool is emptied.
    assert!(
        pool.checkout(Instant::now() + Duration::from_secs(31))
            .is_none()
    );
    assert_eq!(pool.idle(), 0);
    assert_eq!(get(&pool, &up, Method::GET).await.unwrap().0, 200);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2, "a new connection");
}
