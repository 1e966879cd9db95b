//! Admin API, hot reload and metrics end to end: the gateway and its admin listener on real
//! sockets, the config in a temp file that the tests rewrite.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::{RawResponse, SECRET, Upstream, parse_response, request, send_raw, token};
use portcullis::config::AdminToken;
use portcullis::proxy::{Gateway, server};
use portcullis::runtime::{ReloadSource, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

[grants]
store = "file"

[roles.viewer]
permissions = ["items.view"]

[[routes]]
methods = ["GET"]
path = "/a"
public = true
upstream = "api"

[[routes]]
methods = ["GET"]
path = "/items"
permission = "items.view"
upstream = "api"

[[routes]]
methods = ["GET"]
path = "/shadow"
permission = "items.view"
mode = "monitor"
upstream = "api"

[[assignments]]
tenant = "acme"
subject = "vic"
roles = ["viewer"]
"#;

const ROUTE_B: &str = r#"
[[routes]]
methods = ["GET"]
path = "/b"
public = true
upstream = "api"
"#;

struct Live {
    addr: SocketAddr,
    admin: SocketAddr,
    runtime: Arc<Runtime>,
    path: PathBuf,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Live {
    async fn start(extra: &str) -> Live {
        Self::start_with(extra, |_| {}).await
    }

    async fn start_with(
        extra: &str,
        tweak: impl FnOnce(&mut portcullis::config::Snapshot),
    ) -> Live {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let text = format!("{BASE}{extra}").replace("{UPSTREAM}", &upstream.addr.to_string());
        std::fs::write(&path, &text).unwrap();
        let mut snapshot =
            portcullis::config::load_str_with_secret(&text, &path, Some(SECRET)).unwrap();
        tweak(&mut snapshot);
        let gateway = Arc::new(Gateway::build(snapshot).unwrap());
        let runtime = Runtime::new(
            gateway,
            Some(ReloadSource {
                path: path.clone(),
                secret: Some(SECRET.to_vec()),
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(server::serve_runtime(
            listener,
            runtime.clone(),
            std::future::pending(),
        ));
        tokio::spawn(portcullis::admin::serve(
            admin_listener,
            runtime.clone(),
            std::future::pending(),
        ));
        Live {
            addr,
            admin,
            runtime,
            path,
            upstream,
            _dir: dir,
        }
    }

    fn rewrite(&self, extra: &str) {
        let text = format!("{BASE}{extra}").replace("{UPSTREAM}", &self.upstream.addr.to_string());
        std::fs::write(&self.path, text).unwrap();
    }

    async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> RawResponse {
        admin_request(self.admin, method, path, token).await
    }

    async fn metrics(&self) -> Metrics {
        let response = self.admin("GET", "/metrics", None).await;
        assert_eq!(response.status, 200);
        assert!(
            response
                .header("content-type")
                .is_some_and(|v| v.starts_with("text/plain; version=0.0.4"))
        );
        Metrics::parse(&response.body)
    }
}

async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> RawResponse {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    send_raw(admin, req.as_bytes()).await
}

/// Read one response off a keep-alive connection (Content-Length bodies only).
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return parse_response(&buf[..end + 4 + len]);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a full response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn get_on(stream: &mut TcpStream, path: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    read_response(stream).await
}

/// A strict-enough Prometheus text parser: every line is a comment (`# HELP`/`# TYPE`) or
/// `name{label="value",...} number`; anything else fails the test.
struct Metrics {
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        let mut typed = HashMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let kind = parts.next().unwrap();
                let name = parts.next().expect("metric name in comment");
                assert!(valid_name(name), "bad metric name in `{line}`");
                match kind {
                    "HELP" => {}
                    "TYPE" => {
                        let t = parts.next().unwrap();
                        assert!(
                            ["counter", "gauge", "histogram"].contains(&t),
                            "bad type in `{line}`"
                        );
                        assert!(typed.insert(name.to_owned(), t.to_owned()).is_none());
                    }
                    other => panic!("unknown comment `{other}` in `{line}`"),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in `{line}`"));
            let (name, labels) = match series.split_once('{') {
                None => (series, HashMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    (name, parse_labels(body, line))
                }
            };
            assert!(valid_name(name), "bad metric name in `{line}`");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                typed.contains_key(family),
                "sample before its TYPE: `{line}`"
            );
            samples.push((name.to_owned(), labels, value));
        }
        Metrics { samples }
    }

    /// The value of the one sample with `name` and these labels (0 when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears twice");
        found.first().copied().unwrap_or(0.0)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

fn parse_labels(body: &str, line: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in `{line}`"));
        assert!(valid_name(key), "bad label name in `{line}`");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in `{line}`"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in `{line}`"),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reload_swaps_routes_without_dropping_a_keep_alive_connection() {
    let live = Live::start("").await;
    let mut conn = TcpStream::connect(live.addr).await.unwrap();
    assert_eq!(get_on(&mut conn, "/a").await.status, 200);
    assert_eq!(get_on(&mut conn, "/b").await.status, 404);

    let config = live.admin("GET", "/v1/config", None).await.json();
    assert_eq!(config["generation"], 1);
    let old_hash = config["sha256"].as_str().unwrap().to_owned();

    live.rewrite(ROUTE_B);
    let reload = live.admin("POST", "/v1/reload", None).await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(reload.json()["applied"], true);
    assert_eq!(reload.json()["generation"], 2);

    // The same connection, never closed: the new route answers, the old one still does.
    assert_eq!(get_on(&mut conn, "/b").await.status, 200);
    assert_eq!(get_on(&mut conn, "/a").await.status, 200);

    let config = live.admin("GET", "/v1/config", None).await.json();
    assert_eq!(config["generation"], 2);
    assert_ne!(config["sha256"].as_str().unwrap(), old_hash);
    assert!(config["last_error"].is_null());
    let metrics = live.metrics().await;
    assert_eq!(metrics.get("portcullis_config_generation", &[]), 2.0);
    assert_eq!(
        metrics.get("portcullis_config_reloads_total", &[("result", "success")]),
        1.0
    );

    // Reloading an unchanged file is a no-op.
    let again = live.admin("POST", "/v1/reload", None).await.json();
    assert_eq!(again["unchanged"], true);
    assert_eq!(again["generation"], 2);
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_config_and_is_reported() {
    let live = Live::start("").await;
    let audit_before = live.runtime.current().audit.stats().head;
    live.rewrite("[[routes]]\nmethods = [\"GET\"]\npath = \"/c\"\npermission = \"nope..x\"\nupstream = \"missing\"\n");
    let reload = live.admin("POST", "/v1/reload", None).await;
    assert_eq!(reload.status, 422, "{}", reload.body);
    let body = reload.json();
    assert_eq!(body["applied"], false);
    assert_eq!(body["generation"], 1);
    assert!(!body["error"]["errors"].as_array().unwrap().is_empty());

    // Still the old config.
    assert_eq!(request(live.addr, "GET", "/a", None, &[]).await.status, 200);
    assert_eq!(request(live.addr, "GET", "/c", None, &[]).await.status, 404);

    let config = live.admin("GET", "/v1/config", None).await.json();
    assert_eq!(config["generation"], 1);
    let errors = config["last_error"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("missing")),
        "{errors:?}"
    );
    assert_eq!(config["last_error"]["trigger"], "admin");
    let metrics = live.metrics().await;
    assert_eq!(
        metrics.get("portcullis_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(metrics.get("portcullis_config_generation", &[]), 1.0);
    // One `config.reload` audit event (rejected) went into the spool.
    assert!(live.runtime.current().audit.stats().head > audit_before);

    // Fixing the file clears `last_error`.
    live.rewrite(ROUTE_B);
    assert_eq!(live.admin("POST", "/v1/reload", None).await.status, 200);
    let config = live.admin("GET", "/v1/config", None).await.json();
    assert!(config["last_error"].is_null());
}

#[tokio::test]
async fn the_file_watch_reloads_after_the_debounce() {
    let live = Live::start("").await;
    let _watch = live
        .runtime
        .spawn_watch(Duration::from_millis(20), Duration::from_millis(150));
    assert_eq!(request(live.addr, "GET", "/b", None, &[]).await.status, 404);
    live.rewrite(ROUTE_B);
    let started = Instant::now();
    wait_until("the watch applied the new file", || async {
        live.runtime.current().generation == 2
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "reloaded before the debounce"
    );
    assert_eq!(request(live.addr, "GET", "/b", None, &[]).await.status, 200);
}

#[tokio::test]
async fn metrics_parse_and_count_exactly_what_the_test_did() {
    let live = Live::start("").await;
    let vic = token("vic", "acme");
    let nobody = token("nobody", "acme");
    for _ in 0..3 {
        assert_eq!(request(live.addr, "GET", "/a", None, &[]).await.status, 200);
    }
    assert_eq!(
        request(live.addr, "GET", "/items", Some(&vic), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        request(live.addr, "GET", "/items", None, &[]).await.status,
        401
    );
    assert_eq!(
        request(live.addr, "GET", "/items", Some(&nobody), &[])
            .await
            .status,
        403
    );
    assert_eq!(
        request(live.addr, "GET", "/items", Some(&nobody), &[])
            .await
            .status,
        403
    );
    assert_eq!(
        request(live.addr, "GET", "/nowhere", None, &[])
            .await
            .status,
        404
    );
    // Monitor mode: denied, forwarded anyway, counted as a shadow denial.
    assert_eq!(
        request(live.addr, "GET", "/shadow", Some(&nobody), &[])
            .await
            .status,
        200
    );

    let m = live.metrics().await;
    let req = |route: &str, decision: &str, reason: &str| {
        m.get(
            "portcullis_requests_total",
            &[("route", route), ("decision", decision), ("reason", reason)],
        )
    };
    assert_eq!(req("GET /a", "allow", ""), 3.0);
    assert_eq!(req("GET /items", "allow", ""), 1.0);
    assert_eq!(req("GET /items", "deny", "missing_token"), 1.0);
    assert_eq!(req("GET /items", "deny", "missing_permission"), 2.0);
    assert_eq!(req("", "deny", "no_route"), 1.0);
    assert_eq!(req("GET /shadow", "deny", "missing_permission"), 1.0);
    assert_eq!(
        m.get(
            "portcullis_authz_shadow_denials_total",
            &[("route", "GET /shadow"), ("reason", "missing_permission")]
        ),
        1.0
    );
    let total: f64 = m
        .samples
        .iter()
        .filter(|(n, _, _)| n == "portcullis_requests_total")
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(total, 9.0, "no request counted twice or missed");
    // Every decided request is in the decision histogram; only forwarded ones upstream.
    let count = |name: &str, route: &str| m.get(name, &[("route", route)]);
    assert_eq!(
        count("portcullis_decision_duration_seconds_count", "GET /items"),
        4.0
    );
    assert_eq!(
        count("portcullis_upstream_duration_seconds_count", "GET /items"),
        1.0
    );
    assert_eq!(
        count("portcullis_upstream_duration_seconds_count", "GET /a"),
        3.0
    );
    assert_eq!(
        m.get(
            "portcullis_decision_duration_seconds_bucket",
            &[("route", "GET /a"), ("le", "+Inf")]
        ),
        3.0
    );
    assert!(m.get("portcullis_audit_events_written_total", &[]) >= 5.0);
    assert_eq!(
        m.get("portcullis_config_reloads_total", &[("result", "failure")]),
        0.0
    );
}

#[tokio::test]
async fn the_admin_token_is_required_when_configured() {
    const TOKEN: &str = "admin-token-0123456789abcdef";
    let live = Live::start_with("", |snapshot| {
        snapshot.server.admin_token = Some(AdminToken(TOKEN.into()));
    })
    .await;
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/v1/config"),
        ("POST", "/v1/reload"),
        ("POST", "/v1/explain"),
    ] {
        let r = live.admin(method, path, None).await;
        assert_eq!(r.status, 401, "{method} {path} without a token");
        let r = live
            .admin(method, path, Some("admin-token-0123456789abcdeX"))
            .await;
        assert_eq!(r.status, 401, "{method} {path} with a wrong token");
    }
    assert_eq!(live.admin("GET", "/metrics", Some(TOKEN)).await.status, 200);
    assert_eq!(
        live.admin("GET", "/v1/config", Some(TOKEN)).await.status,
        200
    );
    // Probes stay open for the kubelet.
    assert_eq!(live.admin("GET", "/healthz", None).await.status, 200);
    assert_eq!(live.admin("GET", "/readyz", None).await.status, 200);
}

#[tokio::test]
async fn explain_on_the_admin_api_matches_the_cli_answer() {
    let live = Live::start("").await;
    let gateway = live.runtime.current();
    for line in [
        r#"{"tenant":"acme","subject":"vic","method":"GET","path":"/items"}"#,
        r#"{"tenant":"acme","subject":"nobody","method":"GET","path":"/items"}"#,
        r#"{"method":"GET","path":"/items"}"#,
        r#"{"method":"GET","path":"/nowhere"}"#,
    ] {
        let req = format!(
            "POST /v1/explain HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{line}",
            line.len()
        );
        let r = send_raw(live.admin, req.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let query: portcullis::cli::ExplainQuery = serde_json::from_str(line).unwrap();
        let expected = portcullis::cli::explain_one(&gateway, &query).await;
        let got: portcullis::cli::ExplainAnswer = serde_json::from_str(&r.body).unwrap();
        assert_eq!(got, expected, "{line}");
        let body = r.json();
        let text = portcullis::cli::explain::render_text(
            &portcullis::cli::explain::explain_request(&gateway, &query).await,
        );
        assert_eq!(body["text"], text, "{line}");
        if expected.route.is_some() {
            assert!(!body["trace"].is_null(), "{line}: trace missing");
        }
    }
    let bad = "POST /v1/explain HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{\"x\":";
    assert_eq!(send_raw(live.admin, bad.as_bytes()).await.status, 400);
}

const REDIS_STORE: &str = r#"
[grants]
store = "redis"
[grants.redis]
url = "{REDIS}"
prefix = "t"
command_timeout = "200ms"
connect_timeout = "200ms"
"#;

#[tokio::test]
async fn readyz_flips_when_redis_goes_down_and_back() {
    let mut redis = RedisServer::start().await;
    let base = BASE.replace("[grants]\nstore = \"file\"\n", "");
    let base = base.split("[[assignments]]").next().unwrap().to_owned();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("gateway.toml");
    let text = format!("{base}{REDIS_STORE}")
        .replace("{UPSTREAM}", &upstream.addr.to_string())
        .replace("{REDIS}", &redis.url());
    let snapshot = portcullis::config::load_str_with_secret(&text, path, Some(SECRET))
        .unwrap_or_else(|e| panic!("{e}"));
    let runtime = Runtime::new(Arc::new(Gateway::build(snapshot).unwrap()), None);
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    tokio::spawn(portcullis::admin::serve(
        admin_listener,
        runtime.clone(),
        std::future::pending(),
    ));
    let ready = || async { admin_request(admin, "GET", "/readyz", None).await };
    wait_until("ready with Redis up", || async {
        ready().await.status == 200
    })
    .await;
    assert_eq!(ready().await.json()["checks"]["grant_store"], true);

    redis.kill();
    wait_until("not ready with Redis down", || async {
        ready().await.status == 503
    })
    .await;
    let body = ready().await.json();
    assert_eq!(body["checks"]["grant_store"], false);
    assert_eq!(body["checks"]["config"], true);
    let m = Metrics::parse(&admin_request(admin, "GET", "/metrics", None).await.body);
    assert_eq!(m.get("portcullis_redis_up", &[]), 0.0);
    // Liveness does not depend on Redis.
    assert_eq!(
        admin_request(admin, "GET", "/healthz", None).await.status,
        200
    );

    redis.restart().await;
    wait_until("ready again", || async { ready().await.status == 200 }).await;
}

/// SIGHUP reloads the real binary (`portcullis run`): an included routes file is rewritten with
/// its size and modification time kept, so the file watch cannot see the change and only the
/// signal can apply it. A keep-alive connection opened before the reload keeps working across it.
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_running_binary_without_dropping_a_keep_alive_connection() {
    use std::process::{Command, Stdio};

    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let routes = dir.path().join("routes.toml");
    let route = |path: &str| {
        format!(
            "[[routes]]\nmethods = [\"GET\"]\npath = \"{path}\"\npublic = true\nupstream = \"api\"\n"
        )
    };
    std::fs::write(&routes, route("/alpha")).unwrap();
    let main = dir.path().join("gateway.toml");
    std::fs::write(
        &main,
        format!(
            "include = [\"routes.toml\"]\n\n[server]\nlisten = \"{addr}\"\n\n\
             [upstreams.api]\ntargets = [\"{}\"]\n\n[identity.jwt]\nalgorithms = [\"HS256\"]\n\
             secret_env = \"PORTCULLIS_TEST_SECRET\"\n\n[grants]\nstore = \"file\"\n",
            upstream.addr
        ),
    )
    .unwrap();
    let log_path = dir.path().join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&main)
        .env(
            "PORTCULLIS_TEST_SECRET",
            std::str::from_utf8(SECRET).unwrap(),
        )
        .env("RUST_LOG", "warn")
        // One worker thread: the current-thread runtime serves signals and reloads too.
        .env("PORTCULLIS_WORKER_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Kill the child however the test ends.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        if let Ok(conn) = TcpStream::connect(addr).await {
            break conn;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gateway exited ({status}):\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not start:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = child.id().to_string();
    let _child = Reap(child);

    assert_eq!(get_on(&mut conn, "/alpha").await.status, 200);
    assert_eq!(get_on(&mut conn, "/bravo").await.status, 404);

    // Same size, same mtime: invisible to the watch (it compares both).
    let modified = std::fs::metadata(&routes).unwrap().modified().unwrap();
    std::fs::write(&routes, route("/bravo")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&routes)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    // Longer than the watch's poll + debounce (250 ms + 1 s): still the old routes.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(get_on(&mut conn, "/bravo").await.status, 404, "{}", log());

    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    // Polled on the connection opened before the reload: it is never dropped.
    while get_on(&mut conn, "/bravo").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_on(&mut conn, "/alpha").await.status, 404);
    // And a new connection sees the new routes too.
    assert_eq!(
        request(addr, "GET", "/bravo", None, &[]).await.status,
        200,
        "{}",
        log()
    );
}
