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

pub mod edge;
pub mod nginx;
pub mod receivers;
pub mod redis;

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

/// Shut the gateway's audit pipeline down as a graceful stop does (writer, then the sinks
/// deliver up to the spool head for at most `within`), on a blocking thread, while the test's
/// receivers are still up; what the sinks could not deliver.
pub async fn shut_down_audit(
    gw: &TestGateway,
    within: Duration,
) -> portcullis::audit::ShutdownReport {
    let audit = gw.gateway.audit.clone();
    tokio::task::spawn_blocking(move || audit.shutdown(within))
        .await
        .unwrap()
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

// === security suite helpers (tests/e2e/security_*.rs) ===

/// The config the security suites share: one public route, viewer/editor/admin/owner roles,
/// two tenants. `{UPSTREAM}` is replaced by `start_gateway`.
pub const SECURITY_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity]
kinds = ["jwt"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

[grants]
store = "file"

[roles.viewer]
permissions = ["*.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["content.create"]
[roles.admin]
inherits = ["viewer"]
permissions = ["admin.access", "campaigns.delete"]
[roles.owner]
permissions = ["*"]
all_scopes = true

[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "api"

[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"

[[routes]]
methods = ["DELETE"]
path = "/api/campaigns/{id}"
permission = "campaigns.delete"
upstream = "api"

[[routes]]
methods = ["POST"]
path = "/api/content"
permission = "content.create"
upstream = "api"

[[routes]]
methods = ["GET"]
path = "/admin/users"
permission = "admin.access"
upstream = "api"

[[routes]]
methods = ["DELETE"]
path = "/admin/users/{id}"
permission = "admin.access"
upstream = "api"

[[assignments]]
tenant = "acme"
subject = "vic"
roles = ["viewer"]

[[assignments]]
tenant = "acme"
subject = "ed"
roles = ["editor"]

[[assignments]]
tenant = "acme"
subject = "root"
roles = ["admin"]

[[assignments]]
tenant = "acme"
subject = "alice"
roles = ["owner"]

[[assignments]]
tenant = "globex"
subject = "mallory"
roles = ["viewer"]
"#;

/// Every response read off one connection, in order (bodies framed by `Content-Length` or
/// chunked; a response without either takes the rest).
pub fn parse_responses(buf: &[u8]) -> Vec<RawResponse> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let mut rest = text.as_str();
    let mut out = Vec::new();
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let lower = head.to_ascii_lowercase();
        let content_length = lower
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let chunked = lower
            .lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(k, v)| k.trim() == "transfer-encoding" && v.contains("chunked"));
        let body_len = match content_length {
            Some(n) => n.min(after.len()),
            None if chunked => after.find("0\r\n\r\n").map_or(after.len(), |i| i + 5),
            None => after.len(),
        };
        let (body, next) = after.split_at(body_len);
        out.push(parse_response(format!("{head}\r\n\r\n{body}").as_bytes()));
        rest = next;
    }
    out
}

/// Send raw bytes and read every response until the server closes the connection.
pub async fn send_raw_all(addr: SocketAddr, bytes: &[u8]) -> Vec<RawResponse> {
    parse_responses(send_raw(addr, bytes).await.raw.as_bytes())
}

/// A hand-scripted upstream: answers every request with the same raw bytes, then closes;
/// records each request (head and body bytes as sent on the wire) as text. For upstream behaviour hyper's server would not produce
/// (forged hop-by-hop headers, a 101).
#[derive(Clone)]
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    pub async fn start(response: &'static [u8]) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !request_complete(&buf) {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = stream.write_all(response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        ScriptedUpstream { addr, heads }
    }

    /// Every request as received on the wire (head and framed body).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// `config` with `{UPSTREAM}` pointing here.
    pub fn config(&self, config: &str) -> String {
        config.replace("{UPSTREAM}", &self.addr.to_string())
    }
}

/// A whole HTTP/1.1 request is in `buf`: the head, then a `Content-Length` body or a chunked
/// body up to its last chunk and trailer section (small test bodies only).
fn request_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf).to_ascii_lowercase();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let field = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return (body.starts_with("0\r\n") || body.contains("\r\n0\r\n"))
            && body.ends_with("\r\n\r\n")
            || body == "0\r\n\r\n";
    }
    let len = field("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}

/// Read a request head (up to its blank line) off `stream`; `None` if it closes first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf)
}
