//! Idle HTTP/1 keep-alive connections (issue 5): between requests the gateway parks the bare
//! socket without hyper's buffers (`proxy::idle`). On the wire nothing may change: keep-alive,
//! pipelining, request bodies, the header-read timeout (also while idle) and graceful
//! shutdown behave as with a connection that hyper holds all along.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::edge::{EdgeGateway, EdgeUpstream, Speak, config};
use crate::support::{RawResponse, parse_response, token};

async fn gateway(limits: &str) -> (EdgeGateway, EdgeUpstream) {
    let up = EdgeUpstream::start(Speak::H1).await;
    let text = config(&[up.addr.to_string()], "", &format!("[limits]\n{limits}"));
    let gw = EdgeGateway::start(&text, std::path::Path::new("tests")).await;
    (gw, up)
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: gw.test\r\n\r\n";

/// Read one response (head + `Content-Length` body) from a keep-alive connection; bytes past
/// it stay in `pending` for the next call.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> RawResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            let total = end + 4 + len;
            if pending.len() >= total {
                let response = parse_response(&pending[..total]);
                pending.drain(..total);
                return response;
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return parse_response(pending),
            Ok(Ok(n)) => pending.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no response within 5s: {:?}",
                String::from_utf8_lossy(pending)
            ),
        }
    }
}

/// How long until the peer closes (EOF or error), if it does within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn keep_alive_survives_idle_gaps_with_and_without_request_bodies() {
    let (gw, up) = gateway("").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut pending = Vec::new();
    let t = token("ed", "acme");
    for round in 0..3 {
        stream.write_all(GET_HEALTH).await.unwrap();
        let r = read_response(&mut stream, &mut pending).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.raw);
        tokio::time::sleep(Duration::from_millis(50)).await;

        let body = format!("payload {round}");
        let post = format!(
            "POST /api/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {t}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(post.as_bytes()).await.unwrap();
        let r = read_response(&mut stream, &mut pending).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.raw);
        assert_eq!(r.header("connection"), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 6);
    let bodies: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "POST")
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    assert_eq!(bodies, ["payload 0", "payload 1", "payload 2"]);
    assert!(pending.is_empty());
}

#[tokio::test]
async fn a_body_that_arrives_after_a_refusal_is_never_parsed_as_a_request() {
    let (gw, up) = gateway("").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut pending = Vec::new();
    let smuggled = "GET /health HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let head = format!(
        "POST /api/items HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut stream, &mut pending).await;
    assert_eq!(r.status, 401, "{}", r.raw);
    // The body comes after the answer, when an idle connection could have been parked.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stream.write_all(smuggled.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stream.write_all(GET_HEALTH).await;
    // Either the body is drained and the next request answered, or the connection closes;
    // the body is never a request of its own.
    let mut rest = pending.clone();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    let answers = String::from_utf8_lossy(&rest).matches("HTTP/1.1 ").count();
    assert!(
        answers <= 1,
        "the body was answered as a request: {}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        up.count() <= answers,
        "upstream saw {} requests",
        up.count()
    );
}

#[tokio::test]
async fn pipelined_requests_split_mid_head_are_answered_in_order() {
    let (gw, up) = gateway("").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut pending = Vec::new();
    let second = b"GET /health?n=2 HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut first = GET_HEALTH.to_vec();
    first.extend_from_slice(&second[..12]);
    stream.write_all(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&second[12..]).await.unwrap();
    for _ in 0..2 {
        let r = read_response(&mut stream, &mut pending).await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    // A third, after an idle gap.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.status, 200);
    let seen: Vec<_> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/health", "/health", "/health"]);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_after_the_header_read_timeout() {
    let (gw, _up) = gateway("header_read_timeout = \"400ms\"\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.status, 200);
    let closed = closed_within(&mut stream, Duration::from_secs(3))
        .await
        .expect("an idle connection outlived the header read timeout");
    assert!(
        closed >= Duration::from_millis(300),
        "closed after {closed:?}"
    );
    assert!(pending.is_empty(), "no 408 on an idle close");
}

#[tokio::test]
async fn a_slow_head_after_an_idle_gap_gets_only_the_rest_of_the_header_timeout() {
    let (gw, up) = gateway("header_read_timeout = \"600ms\"\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.status, 200);
    let idle_since = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // One byte every 50 ms: the head would take 2 s; only ~200 ms are left.
    let mut closed_at = None;
    for byte in GET_HEALTH {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_at = Some(idle_since.elapsed());
            break;
        }
        let mut chunk = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(idle_since.elapsed());
                break;
            }
            // hyper answers 408 before closing.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    let closed_at = closed_at.expect("the slow head outlived the header timeout");
    assert!(
        closed_at < Duration::from_millis(1100),
        "closed {closed_at:?} after going idle"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_closes_after_the_header_read_timeout() {
    let (gw, _up) = gateway("header_read_timeout = \"300ms\"\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(3))
        .await
        .expect("a silent connection outlived the header read timeout");
    assert!(
        closed >= Duration::from_millis(200),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_idle_keep_alive_connections_at_once() {
    let (mut gw, _up) = gateway("shutdown_timeout = \"10s\"\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut pending).await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    gw.shutdown();
    tokio::time::timeout(Duration::from_secs(2), &mut gw.served)
        .await
        .expect("an idle connection does not hold up the drain")
        .unwrap();
    assert!(
        closed_within(&mut stream, Duration::from_secs(2))
            .await
            .is_some()
    );
}
