//! The request path's pieces, one at a time (issue 7):
//!
//! - `canonicalize`: `route::canonicalize` of a plain and of an encoded path.
//! - `route_match`: matchit lookup at 1,000 routes (the same table as `decide.rs`; route match
//!   + `decide` together at 1,000 routes × 100 roles is `decide.rs`'s `portcullis/1000`).
//! - `jwt/*`: `Authenticator::authenticate` for HS256, ES256 and RS256 tokens: `fresh/*` never
//!   repeats a token (every call verifies the signature; with the cache on, a miss plus an
//!   insert), `repeat/*` presents the same token again (what a client on a keep-alive
//!   connection does; served by the verified-token cache). `.../cache` with the default
//!   `cache_size`, `.../nocache` with `cache_size = 0` (the behaviour before the cache).
//! - `request_id/*`: a fresh request id as `pipeline::handle` made it before (`uuid_now_v7`:
//!   `getrandom` per call, a process-wide lock) and now (`fastrand_v7`: thread-local PRNG).
//! - `audit/*`: the request path's share of an audit event: building the `Decision` (the
//!   clones `pipeline::audit` does) and sealing it (serialize + SHA-256, on the writer thread).
//! - `pipeline/decision/{cache,nocache}`: the in-process pipeline without sockets:
//!   `canonicalize` → `Gateway::identify` (JWT, HS256, the same token every time) →
//!   `Gateway::evaluate` (route, file-store grants, `decide`).
//!   Not included: header preflight/sanitizing, hyper, forwarding and the audit enqueue,
//!   because `pipeline::handle` takes a `Request<hyper::body::Incoming>`, which only a hyper
//!   connection can produce; benching it in-process would mean making the pipeline generic
//!   over the body type (a restructuring, out of scope here). Those parts are covered by
//!   `benches/load.sh` end to end.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench hotpath`
//! (only the JWT and pipeline benches: `... -- 'jwt/|pipeline/'`)
//! (quicker: `-- --warm-up-time 1 --measurement-time 3`).

use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::audit::event::Chain;
use portcullis::audit::{AuditEvent, Decision, EventBody};
use portcullis::identity::{Authenticator, DEFAULT_CACHE_SIZE, JwtSettings, TenantSource};
use portcullis::proxy::Gateway;
use portcullis::route::{RouteTableBuilder, canonicalize};
use serde_json::json;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Poll a future that never waits (file store, no I/O) to completion without a runtime.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("bench future was not ready: it does I/O"),
    }
}

fn bench_canonicalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonicalize");
    g.bench_function("plain", |b| {
        b.iter(|| black_box(canonicalize(black_box("/api/v1/campaigns/42/items")).is_ok()))
    });
    g.bench_function("encoded", |b| {
        b.iter(|| black_box(canonicalize(black_box("/api/v1/campaigns/%34%32/items%2Dx")).is_ok()))
    });
    g.finish();
}

fn bench_route_match(c: &mut Criterion) {
    let mut builder = RouteTableBuilder::new();
    for i in 0..1000 {
        builder
            .insert(&Method::GET, &format!("/svc{}/res{i}/{{id}}", i % 20), i)
            .unwrap();
    }
    let table = builder.build();
    let paths: Vec<String> = (0..64)
        .map(|k| {
            let i = k * 997 % 1000;
            format!("/svc{}/res{i}/{k}", i % 20)
        })
        .collect();
    let mut n = 0usize;
    c.bench_function("route_match/1000", |b| {
        b.iter(|| {
            n = (n + 1) % paths.len();
            black_box(table.lookup(&Method::GET, &paths[n]).map(|m| m.id))
        })
    });
}

fn jwt_settings(alg: &str, cache_size: usize) -> JwtSettings {
    JwtSettings {
        algorithms: vec![alg.to_owned()],
        secret_env: (alg == "HS256").then(|| "UNUSED".to_owned()),
        jwks_file: (alg != "HS256").then(|| fixture("jwks.json")),
        jwks_url: None,
        issuer: None,
        audience: None,
        subject_claim: "sub".into(),
        tenant: TenantSource::Claim("tenant".into()),
        leeway: Duration::from_secs(30),
        cache_size,
    }
}

fn encoding_key(alg: Algorithm) -> (EncodingKey, Option<&'static str>) {
    let pem = |f| std::fs::read(fixture(f)).unwrap();
    match alg {
        Algorithm::HS256 => (EncodingKey::from_secret(SECRET), None),
        Algorithm::RS256 => (
            EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
            Some("rsa-1"),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&pem("ec.pem")).unwrap(),
            Some("ec-1"),
        ),
        _ => unreachable!(),
    }
}

/// `n` distinct tokens (different `jti`), each a realistic ~250-byte token.
fn tokens(alg: Algorithm, n: usize) -> Vec<HeaderValue> {
    let (key, kid) = encoding_key(alg);
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let exp = now() + 3600;
    (0..n)
        .map(|i| {
            let claims = json!({
                "sub": "user-42", "tenant": "acme", "exp": exp, "iat": exp - 3600,
                "iss": "https://idp.example", "jti": format!("{i:016x}"), "amr": ["pwd"],
            });
            let t = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
        })
        .collect()
}

fn bench_jwt(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt");
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("ES256", Algorithm::ES256),
        ("RS256", Algorithm::RS256),
    ] {
        let now = now();
        // `fresh`: a new authenticator (so an empty token cache) per call, built outside the
        // timed section, and a token from a set of 4,096 distinct ones.
        let fresh = tokens(alg, 4096);
        let one = tokens(alg, 1).remove(0);
        for (variant, size) in [("cache", DEFAULT_CACHE_SIZE), ("nocache", 0)] {
            let settings = jwt_settings(name, size);
            let mut i = 0usize;
            g.bench_function(format!("fresh/{name}/{variant}"), |b| {
                b.iter_batched(
                    || {
                        i = (i + 1) % fresh.len();
                        (
                            Authenticator::build_with_secret(&settings, Some(SECRET)).unwrap(),
                            fresh[i].clone(),
                        )
                    },
                    // Returned, so the authenticator is dropped outside the timed section.
                    |(a, t)| {
                        let ok = a.authenticate(Some(t.as_bytes()), None, now).is_ok();
                        (a, t, black_box(ok))
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
            let auth = Authenticator::build_with_secret(&settings, Some(SECRET)).unwrap();
            assert!(auth.authenticate(Some(one.as_bytes()), None, now).is_ok());
            assert_eq!(auth.cached_tokens(), usize::from(size > 0));
            g.bench_function(format!("repeat/{name}/{variant}"), |b| {
                b.iter(|| {
                    black_box(
                        auth.authenticate(Some(black_box(one.as_bytes())), None, now)
                            .is_ok(),
                    )
                })
            });
        }
    }
    g.finish();
}

fn decision() -> Decision {
    Decision {
        decision: "allow",
        reason: None,
        required: Arc::from(["campaigns.view".to_owned()]),
        tenant: Some("acme".into()),
        subject: Some("user-42".into()),
        roles: Arc::from(["viewer".to_owned(), "editor".to_owned()]),
        method: "GET".into(),
        path: "/api/campaigns/42".into(),
        route: Some("/api/campaigns/{id}".into()),
        upstream: Some("api".into()),
        status: 200,
        client_ip: "127.0.0.1".into(),
        user_agent: Some("wrk/4.2".into()),
        request_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        latency_us: 412,
        mode: "enforce",
    }
}

fn bench_audit(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit");
    let gateway: Arc<str> = "gw-1".into();
    g.bench_function("event_build", |b| {
        b.iter(|| {
            black_box(AuditEvent::new(
                gateway.clone(),
                EventBody::Decision(decision()),
            ))
        })
    });
    let mut chain = Chain::new("0".repeat(64), None);
    let mut out = Vec::with_capacity(1024);
    g.bench_function("event_build+seal", |b| {
        b.iter(|| {
            out.clear();
            let event = AuditEvent::new(gateway.clone(), EventBody::Decision(decision()));
            chain.seal(&event, &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_request_id(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_id");
    g.bench_function("uuid_now_v7", |b| {
        b.iter(|| {
            black_box(
                HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                    .unwrap_or(HeaderValue::from_static("invalid")),
            )
        })
    });
    g.bench_function("fastrand_v7", |b| {
        b.iter(|| {
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            black_box(portcullis::proxy::pipeline::new_request_id(millis))
        })
    });
    g.finish();
}

const PIPELINE_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[upstreams.api]
targets = ["127.0.0.1:9"]
[identity]
kinds = ["jwt"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "UNUSED"
[grants]
store = "file"
[roles.viewer]
permissions = ["*.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]
[tenants.acme]
[[assignments]]
tenant = "acme"
subject = "user-42"
roles = ["editor"]
[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"
[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "api"
[audit]
allow_events = "none"
"#;

fn bench_pipeline(c: &mut Criterion) {
    let token = tokens(Algorithm::HS256, 1).remove(0);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, token);
    let method = Method::GET;
    let now = now();
    for (variant, config) in [
        ("cache", PIPELINE_CONFIG.to_owned()),
        (
            "nocache",
            PIPELINE_CONFIG.replace(
                "secret_env = \"UNUSED\"",
                "secret_env = \"UNUSED\"\ncache_size = 0",
            ),
        ),
    ] {
        let snapshot = portcullis::config::load_str_with_secret(
            &config,
            Path::new("bench.toml"),
            Some(SECRET),
        )
        .unwrap();
        let gw = Gateway::build_offline(snapshot).unwrap();
        let run = |raw: &str| {
            let path = canonicalize(raw).unwrap();
            let identity = ready(gw.identify(&headers, &method, now)).unwrap();
            let eval = ready(gw.evaluate(&method, &path, identity)).unwrap();
            eval.verdict.grant().is_some()
        };
        assert!(run("/api/campaigns/42"), "bench request must be allowed");
        assert_eq!(
            gw.authenticator.cached_tokens(),
            usize::from(variant == "cache")
        );
        c.bench_function(&format!("pipeline/decision/{variant}"), |b| {
            b.iter(|| black_box(run(black_box("/api/campaigns/42"))))
        });
    }
}

criterion_group!(
    benches,
    bench_canonicalize,
    bench_route_match,
    bench_jwt,
    bench_audit,
    bench_request_id,
    bench_pipeline
);
criterion_main!(benches);
