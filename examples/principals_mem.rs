//! What one cached principal costs in memory (issue 7): fills the Redis store's L1 cache with
//! N principals exactly as the gateway does (`RedisStore::resolve_grants`, one Redis round
//! trip per miss) and the verified-JWT cache with M tokens (`Authenticator::authenticate`),
//! and prints the process RSS (`/proc/self/statm`) before and after each.
//!
//! Starts its own `redis-server` on a free port (never the shared 6379) and seeds it with
//! `redis-cli --pipe`: one tenant `acme` (tier, features, one custom role) and N users with
//! 36-character subjects (UUID-like) holding one of four role sets.
//!
//!   cargo run --release --example principals_mem -- [N=100000] [M=10000]
//!
//! M is also `[identity.jwt] cache_size` (default 10,000): the JWT cache never holds more
//! than that, whatever the number of principals. Not part of CI.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::grants::Access;
use portcullis::proxy::Gateway;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[upstreams.api]
targets = ["127.0.0.1:9"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "UNUSED"
cache_size = {JWT_CACHE}
[grants]
store = "redis"
cache_ttl = "10m"
[grants.redis]
url = "{REDIS}"
prefix = "m"
client_tracking = false
# Generous: the figure is memory, and a loaded machine must not fail a lookup.
command_timeout = "5s"
cache_capacity = {CAPACITY}
[roles.viewer]
permissions = ["campaigns.view", "reports.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]
[roles.admin]
inherits = ["editor"]
permissions = ["campaigns.delete", "email.send"]
[entitlements]
tiers = ["starter", "growth"]
[entitlements.require_tier]
"email.*" = "growth"
[entitlements.require_feature]
"reports.*" = "reports"
[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"
[[routes]]
methods = ["PUT"]
path = "/api/campaigns/{id}"
permission = "campaigns.edit"
upstream = "api"
[[routes]]
methods = ["DELETE"]
path = "/api/campaigns/{id}"
permission = "campaigns.delete"
upstream = "api"
[[routes]]
methods = ["GET"]
path = "/api/reports"
permission = "reports.view"
upstream = "api"
[[routes]]
methods = ["POST"]
path = "/api/email/send"
permission = "email.send"
upstream = "api"
"#;

const ROLE_SETS: [&str; 4] = [
    r#"["viewer"]"#,
    r#"["editor"]"#,
    r#"["viewer","auditor"]"#,
    r#"["admin"]"#,
];

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident");
    pages * 4
}

fn subject(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7919)
}

fn resp(out: &mut Vec<u8>, args: &[&str]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{}\r\n", a.len(), a);
    }
}

fn seed(port: u16, n: usize) {
    let mut out = Vec::new();
    resp(
        &mut out,
        &[
            "HSET",
            "m:acme:tenant",
            "tier",
            "growth",
            "features",
            r#"["reports"]"#,
        ],
    );
    resp(
        &mut out,
        &[
            "HSET",
            "m:acme:roles",
            "auditor",
            r#"{"permissions":["reports.*"],"inherits":["viewer"]}"#,
        ],
    );
    for i in 0..n {
        let key = format!("m:acme:user:{}", subject(i));
        resp(&mut out, &["HSET", &key, "roles", ROLE_SETS[i % 4]]);
    }
    let mut cli = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli must be installed");
    cli.stdin
        .take()
        .expect("stdin")
        .write_all(&out)
        .expect("seed");
    assert!(cli.wait().expect("redis-cli").success(), "seeding failed");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100_000, |a| a.parse().expect("N"));
    let m: usize = args.next().map_or(10_000, |a| a.parse().expect("M"));
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let _server = Server(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("redis://127.0.0.1:{port}/0");
    let config = CONFIG
        .replace("{REDIS}", &url)
        .replace("{CAPACITY}", &n.max(1).to_string())
        .replace("{JWT_CACHE}", &m.to_string());
    rt.block_on(async {
        let client = redis::Client::open(url.as_str()).expect("url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    seed(port, n);
    let snapshot = portcullis::config::load_str_with_secret(
        &config,
        Path::new("principals_mem.toml"),
        Some(b"principals-mem-secret-0123456789abcdef"),
    )
    .expect("config");
    let gateway = rt.block_on(async {
        let gateway = Gateway::build(snapshot).expect("gateway");
        let store = gateway.store.redis().expect("redis store");
        assert!(store.wait_ready(Duration::from_secs(5)).await, "not ready");
        gateway
    });
    let store = gateway.store.redis().expect("redis store").clone();
    let policy = &gateway.snapshot.policy;
    let subjects: Vec<String> = (0..n).map(subject).collect();

    // One resolve first (the connection's buffers, the first compile), outside the figure.
    rt.block_on(store.resolve_grants(policy, "acme", &subjects[0], Access::Read))
        .expect("warm-up");
    let before = rss_kib();
    let started = Instant::now();
    let roles: usize = rt.block_on(async {
        let mut held = 0;
        for s in &subjects {
            let r = store
                .resolve_grants(policy, "acme", s, Access::Read)
                .await
                .expect("resolve");
            held += r.principal.role_names().len();
        }
        held
    });
    let elapsed = started.elapsed();
    let after = rss_kib();
    let cached = store.cached_principals();
    assert!(roles > 0, "the principals hold roles");
    // A second pass must be all hits (nothing evicted, nothing refetched).
    let round_trips = store.round_trips();
    rt.block_on(async {
        for s in &subjects {
            store
                .resolve_grants(policy, "acme", s, Access::Read)
                .await
                .expect("hit");
        }
    });
    println!(
        "grants L1: {cached} principals cached ({} Redis round trips on the second pass); \
         RSS {} -> {} MiB: {} bytes per principal (fill took {:.1} s)",
        store.round_trips() - round_trips,
        before / 1024,
        after / 1024,
        (after.saturating_sub(before) * 1024) / cached.max(1) as u64,
        elapsed.as_secs_f64(),
    );

    // The verified-token cache: M distinct tokens, each authenticated once.
    let auth = &gateway.authenticator;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let tokens: Vec<String> = subjects
        .iter()
        .cycle()
        .take(m)
        .enumerate()
        .map(|(i, s)| {
            auth.mint_hs256(&serde_json::json!({
                "sub": s, "tenant": "acme", "exp": exp, "iat": exp - 3600, "jti": i,
            }))
            .expect("mint")
        })
        .collect();
    let headers: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| format!("Bearer {t}").into_bytes())
        .collect();
    let now = exp - 3000;
    let before = rss_kib();
    for h in &headers {
        auth.authenticate(Some(h), None, now).expect("token");
    }
    let after = rss_kib();
    // Freed only now: memory freed before the measurement would be reused by the cache.
    drop(tokens);
    let cached = auth.cached_tokens();
    println!(
        "JWT cache: {cached} tokens cached ({} bytes each); RSS {} -> {} MiB: {} bytes per token",
        headers.first().map_or(0, |h| h.len() - 7),
        before / 1024,
        after / 1024,
        (after.saturating_sub(before) * 1024) / cached.max(1) as u64,
    );
}
