//! Test harness: a recording upstream, the gateway on an ephemeral port, a raw HTTP/1.1
//! client (raw bytes, so attacks are not normalised away by a client library), and tokens.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use portcullis::proxy::{Gateway, server};

pub mod receivers;

/// The HS256 secret every test config uses (`secret_env` is bypassed by the harness).
pub const SECRET: &[u8] = b"portcullis-test-secret-0123456789";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An upstream that records every request and answers 200 `upstream ok`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().unwrap().push(Recorded {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|pq| pq.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            });
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"upstream ok")));
                            response
                                .headers_mut()
                                .insert("x-upstream", http::HeaderValue::from_static("1"));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
}

/// Start the gateway on `127.0.0.1:0` from config text; `{UPSTREAM}` is replaced with the
/// upstream's address.
pub async fn start_gateway(config: &str, upstream: &Upstream) -> TestGateway {
    let text = config.replace("{UPSTREAM}", &upstream.addr.to_string());
    let snapshot = portcullis::config::load_str_with_secret(
        &text,
        Path::new("tests/inline.toml"),
        Some(SECRET),
    )
    .unwrap_or_else(|errors| {
        let rendered: Vec<String> = errors.errors.iter().map(|e| e.rendered.clone()).collect();
        panic!("test config invalid:\n{}", rendered.join("\n"))
    });
    let gateway = Arc::new(Gateway::build(snapshot).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(
        listener,
        gateway.clone(),
        std::future::pending(),
    ));
    TestGateway { addr, gateway }
}

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Everything received, for tests that count responses on one connection.
    pub raw: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// `reason` of a gateway JSON body.
    pub fn reason(&self) -> String {
        self.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Send raw bytes, read until the server closes (requests should say `Connection: close`)
/// or the deadline passes, and parse the first response.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let raw = String::from_utf8_lossy(buf).into_owned();
    let Some((head, rest)) = raw.split_once("\r\n\r\n") else {
        return RawResponse {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            raw,
        };
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = match headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        Some(len) => rest.get(..len).unwrap_or(rest).to_owned(),
        None if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) =>
        {
            dechunk(rest)
        }
        None => rest.to_owned(),
    };
    RawResponse {
        status,
        headers,
        body,
        raw,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(tail.get(..n).unwrap_or(tail));
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

/// `METHOD path` with an optional bearer token and extra header lines, `Connection: close`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> RawResponse {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    send_raw(addr, req.as_bytes()).await
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// HS256 token for `sub` in `tenant`, valid for an hour, with optional `amr`.
pub fn token(sub: &str, tenant: &str) -> String {
    token_with(serde_json::json!({"sub": sub, "tenant": tenant, "exp": now() + 3600}))
}

pub fn mfa_token(sub: &str, tenant: &str) -> String {
    token_with(serde_json::json!({
        "sub": sub, "tenant": tenant, "exp": now() + 3600, "amr": ["pwd", "mfa"]
    }))
}

/// HS256 token with arbitrary claims.
pub fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// Poll `check` until it holds or the deadline passes (no sleeps as synchronisation).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
