//! WebSocket upgrades end to end over raw TCP (the handshake is hand-rolled, so nothing is
//! normalised away): allowed after the decision on `websocket = true` routes, refused
//! elsewhere and without permission, closed on revocation and at the max lifetime.

use crate::support;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::{Upstream, eventually, start_gateway, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream speaking just enough WebSocket: a handshake with `Upgrade: websocket` gets
/// 101 and every byte after it is echoed; anything else gets `200 ok` (or 101 regardless,
/// with `always_101`, to play an upstream that would open a tunnel where it must not).
#[derive(Clone)]
struct WsUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl WsUpstream {
    async fn start(always_101: bool) -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(buf) = crate::support::read_head(&mut stream).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    log.lock().unwrap().push(head.clone());
                    if always_101 || head.contains("\r\nupgrade: websocket\r\n") {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                                  Connection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n",
                            )
                            .await;
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    } else {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        WsUpstream { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

{STORE}

[roles.viewer]
permissions = ["chat.view"]

[[routes]]
methods = ["GET"]
path = "/ws"
permission = "chat.view"
upstream = "api"
websocket = true

[[routes]]
methods = ["GET"]
path = "/ws-short"
permission = "chat.view"
upstream = "api"
websocket = true
websocket_max_lifetime = "300ms"

[[routes]]
methods = ["GET"]
path = "/plain"
permission = "chat.view"
upstream = "api"
"#;

const FILE_STORE: &str = r#"
[grants]
store = "file"

[[assignments]]
tenant = "acme"
subject = "vic"
roles = ["viewer"]
"#;

/// Start the gateway in front of `ws` (the harness's `Upstream` is only a placeholder).
async fn gateway(ws: &WsUpstream, store: &str) -> support::TestGateway {
    let placeholder = Upstream::start().await;
    let config = CONFIG
        .replace("{UPSTREAM}", &ws.addr.to_string())
        .replace("{STORE}", store);
    start_gateway(&config, &placeholder).await
}

/// Send a WebSocket handshake; return the status and the connection (positioned after the
/// response head).
async fn handshake(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "closed before the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, stream, head.to_ascii_lowercase())
}

/// A masked WebSocket text frame (client → server), as a real client sends it.
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

async fn echo(stream: &mut TcpStream, text: &str) {
    let frame = text_frame(text);
    stream.write_all(&frame).await.unwrap();
    let mut back = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, frame);
}

/// Wait for the gateway to close the tunnel (EOF or reset), within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected {n} bytes on a tunnel that should close"),
        Err(_) => panic!("tunnel still open after {limit:?}"),
    }
}

#[tokio::test]
async fn a_websocket_route_upgrades_after_the_decision_and_echoes() {
    let ws = WsUpstream::start(false).await;
    let gw = gateway(&ws, FILE_STORE).await;
    let (status, mut stream, head) = handshake(gw.addr, "/ws", Some(&token("vic", "acme"))).await;
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("sec-websocket-accept: test"), "{head}");
    echo(&mut stream, "hello").await;
    echo(&mut stream, "again").await;
    // The upstream saw the handshake with the gateway's identity headers and no credentials
    // beyond the JWT.
    let seen = &ws.heads()[0];
    assert!(seen.contains("\r\nupgrade: websocket\r\n"), "{seen}");
    assert!(seen.contains("\r\nx-authz-subject: vic\r\n"), "{seen}");
    assert!(
        seen.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{seen}"
    );
    let metrics = &gw.gateway.metrics;
    assert_eq!(
        metrics
            .tunnels_open
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(stream);
    eventually("tunnel counted closed", || {
        metrics
            .tunnels_open
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
}

#[tokio::test]
async fn upgrades_are_refused_without_permission_and_on_other_routes() {
    let ws = WsUpstream::start(false).await;
    let gw = gateway(&ws, FILE_STORE).await;

    // No token, and a principal without the permission: refused before the upstream.
    let (status, _, _) = handshake(gw.addr, "/ws", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = handshake(gw.addr, "/ws", Some(&token("nobody", "acme"))).await;
    assert_eq!(status, 403);
    assert!(
        ws.heads().is_empty(),
        "a refused handshake reached the upstream"
    );

    // A route without `websocket = true`: forwarded as a plain request, `Upgrade` stripped.
    let (status, _, _) = handshake(gw.addr, "/plain", Some(&token("vic", "acme"))).await;
    assert_eq!(status, 200);
    let seen = &ws.heads()[0];
    assert!(!seen.contains("\r\nupgrade:"), "{seen}");
    assert!(!seen.contains("connection: upgrade"), "{seen}");
}

#[tokio::test]
async fn a_101_is_never_relayed_on_a_non_websocket_route() {
    let ws = WsUpstream::start(true).await;
    let gw = gateway(&ws, FILE_STORE).await;
    let (status, _, _) = handshake(gw.addr, "/plain", Some(&token("vic", "acme"))).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn the_tunnel_closes_at_its_max_lifetime() {
    let ws = WsUpstream::start(false).await;
    let gw = gateway(&ws, FILE_STORE).await;
    let (status, mut stream, _) =
        handshake(gw.addr, "/ws-short", Some(&token("vic", "acme"))).await;
    assert_eq!(status, 101);
    let opened = Instant::now();
    echo(&mut stream, "hi").await;
    closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        opened.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
    eventually("lifetime counted", || {
        gw.gateway
            .metrics
            .tunnels_open
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
}

#[tokio::test]
async fn the_tunnel_closes_when_the_grant_is_revoked() {
    let redis = RedisServer::start().await;
    redis
        .hset("t:acme:user:vic", "roles", r#"["viewer"]"#)
        .await;
    redis
        .hset("t:acme:user:val", "roles", r#"["viewer"]"#)
        .await;
    let store = format!(
        "[grants]\nstore = \"redis\"\n[grants.redis]\nurl = \"{}\"\nprefix = \"t\"\n",
        redis.url()
    );
    let ws = WsUpstream::start(false).await;
    let gw = gateway(&ws, &store).await;
    let redis_store = gw.gateway.store.redis().unwrap().clone();
    eventually("store subscribed", || redis_store.health().ready()).await;

    let (status, mut vic, _) = handshake(gw.addr, "/ws", Some(&token("vic", "acme"))).await;
    assert_eq!(status, 101);
    let (status, mut val, _) = handshake(gw.addr, "/ws", Some(&token("val", "acme"))).await;
    assert_eq!(status, 101);
    echo(&mut vic, "before").await;

    // Revoke vic only: vic's tunnel closes, val's stays open.
    redis.hset("t:acme:user:vic", "roles", "[]").await;
    redis.publish("t:invalidate", "acme:vic").await;
    closed_within(&mut vic, Duration::from_secs(5)).await;
    echo(&mut val, "still here").await;
    // And vic cannot open a new one.
    let (status, _, _) = handshake(gw.addr, "/ws", Some(&token("vic", "acme"))).await;
    assert_eq!(status, 403);
}
