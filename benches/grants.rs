//! The Redis grant store: a warm-cache resolve (no Redis call), a cold miss (one pipelined
//! round trip of three HGETALL plus compiling), and a plain PING round trip on the same
//! redis-server as the baseline (what `redis-cli --latency` reports). Then PUBLISH → first
//! resolve that sees the change, printed as p50/p99.
//!
//! Starts its own `redis-server` on a free port (never the shared 6379).
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench grants`.
//! That warm hits make zero Redis calls is asserted by `tests/e2e/e2e_grants_redis.rs`.

use std::hint::black_box;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::grants::{Access, RedisStore};
use portcullis::proxy::Gateway;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[upstreams.api]
targets = ["127.0.0.1:9"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "UNUSED"
[grants]
store = "redis"
cache_ttl = "60s"
[grants.redis]
url = "{REDIS}"
prefix = "b"
client_tracking = false
[roles.viewer]
permissions = ["campaigns.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]
[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (bash .ci/run installs it)");
    (Server(child), port)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_server, port) = start_redis();
    let url = format!("redis://127.0.0.1:{port}/0");
    let (gateway, mut raw) = rt.block_on(async {
        let raw = {
            let client = redis::Client::open(url.as_str()).expect("url");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(con) = client.get_multiplexed_async_connection().await {
                    break con;
                }
                assert!(Instant::now() < deadline, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let snapshot = portcullis::config::load_str_with_secret(
            &CONFIG.replace("{REDIS}", &url),
            Path::new("bench.toml"),
            Some(b"bench-secret"),
        )
        .expect("bench config");
        let gateway = Gateway::build(snapshot).expect("gateway");
        let store = gateway.store.redis().expect("redis store");
        assert!(store.wait_ready(Duration::from_secs(5)).await);
        (gateway, raw)
    });
    let store: RedisStore = gateway.store.redis().expect("redis store").clone();
    let policy = &gateway.snapshot.policy;
    rt.block_on(async {
        let _: () = redis::cmd("HSET")
            .arg("b:acme:user:bob")
            .arg("roles")
            .arg(r#"["editor"]"#)
            .query_async(&mut raw)
            .await
            .expect("seed");
        store
            .resolve_grants(policy, "acme", "bob", Access::Read)
            .await
            .expect("warm");
    });

    let mut group = c.benchmark_group("grants");
    group.bench_function("warm_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(
                        store
                            .resolve_grants(policy, black_box("acme"), "bob", Access::Read)
                            .await
                            .expect("hit"),
                    );
                }
                start.elapsed()
            })
        })
    });
    let next = AtomicU64::new(0);
    group.bench_function("cold_miss", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    // A subject never seen before: one pipelined round trip.
                    let subject = format!("u{}", next.fetch_add(1, Ordering::Relaxed));
                    black_box(
                        store
                            .resolve_grants(policy, "acme", &subject, Access::Read)
                            .await
                            .expect("miss"),
                    );
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("redis_ping_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _: String = redis::cmd("PING")
                        .query_async(&mut raw)
                        .await
                        .expect("ping");
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    // PUBLISH → first resolve that sees the change.
    let mut samples = rt.block_on(async {
        let mut samples = Vec::new();
        for i in 0..200 {
            let roles = if i % 2 == 0 { "[]" } else { r#"["editor"]"# };
            let _: () = redis::cmd("HSET")
                .arg("b:acme:user:bob")
                .arg("roles")
                .arg(roles)
                .query_async(&mut raw)
                .await
                .expect("hset");
            let _: i64 = redis::cmd("PUBLISH")
                .arg("b:invalidate")
                .arg("acme:bob")
                .query_async(&mut raw)
                .await
                .expect("publish");
            let published = Instant::now();
            let want_roles = usize::from(i % 2 == 1);
            loop {
                let r = store
                    .resolve_grants(policy, "acme", "bob", Access::Read)
                    .await
                    .expect("resolve");
                if r.principal.role_names().len() == want_roles {
                    break;
                }
                assert!(
                    published.elapsed() < Duration::from_secs(2),
                    "never visible"
                );
            }
            samples.push(published.elapsed());
        }
        samples
    });
    // The plain Redis latency of the same server, as operators measure it.
    match Command::new("timeout")
        .args([
            "-s",
            "INT",
            "3",
            "redis-cli",
            "-p",
            &port.to_string(),
            "--latency",
            "--raw",
        ])
        .output()
    {
        Ok(out) => println!(
            "redis-cli --latency (same server, ms: min max avg samples): {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        Err(e) => println!("redis-cli --latency not run: {e}"),
    }
    samples.sort();
    let at = |q: usize| samples[samples.len() * q / 100];
    println!(
        "grants/publish_to_visible: p50 {:?}  p99 {:?}  max {:?}  ({} rounds)",
        at(50),
        at(99),
        samples[samples.len() - 1],
        samples.len()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
