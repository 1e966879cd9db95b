//! Audit pipeline throughput and per-event costs.
//!
//! - `pipeline/spool+file`: events/s from `AuditLog::record` (buffered) through the writer
//!   (seq, SHA-256 chain, group commit to a disk spool) to the file sink (JSON lines,
//!   fdatasync per batch) until the sink's cursor reaches the head. Goal: ≥ 100k events/s
//!   on one core (`taskset -c 0 cargo bench --bench audit`).
//! - `pipeline/spooled-64`: 64 concurrent requests each awaiting their own append (group
//!   commit), on one current-thread runtime.
//! - `encode/*`: per-event costs: the baseline `serde_json` of the decision alone, sealing
//!   (serialize + hash; `seal-hmac` with an `[audit] hmac_key`), each rendering, and the
//!   request path's `record` (enqueue).
//! - `request/record-buffered`: the request path's cost in `buffered` mode, ns per event:
//!   `AuditLog::record` plus one poll of its (already resolved) future, as a request task
//!   would await it; the event body is built outside the timed region (it is the proxy's
//!   work either way) and the writer drains concurrently on its own thread. Run it without
//!   `taskset` to give the writer the other core.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench audit`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use portcullis::audit::event::{AuditEvent, Chain, GENESIS};
use portcullis::audit::{AuditLog, Decision, EventBody, Text, format};
use portcullis::config::{
    AllowEvents, AuditFormat, AuditSettings, Durability, FsyncPolicy, OnFull, SinkKind,
    SinkSettings, SpoolSettings,
};

fn decision(i: u64) -> Decision {
    Decision {
        decision: if i.is_multiple_of(2) { "allow" } else { "deny" },
        reason: (!i.is_multiple_of(2)).then_some("missing_permission"),
        required: Arc::from(["campaigns.view".to_owned()]),
        tenant: Some("acme".into()),
        subject: Some(format!("user-{}", i % 1000).into()),
        roles: Arc::from(["viewer".to_owned()]),
        method: "GET".into(),
        path: format!("/api/campaigns/{i}").into(),
        route: Some("/api/campaigns/{id}".into()),
        upstream: Some("api".into()),
        status: if i.is_multiple_of(2) { 200 } else { 403 },
        client_ip: "203.0.113.9".into(),
        user_agent: Some("curl/8.5.0".into()),
        request_id: "0193b7a2-5c1e-7d3f-9a41-6e2b8c0d4f17".into(),
        latency_us: 85,
        mode: "enforce",
    }
}

fn settings(dir: &std::path::Path, durability: Durability) -> AuditSettings {
    let mut sink = SinkSettings::new(
        "file",
        AuditFormat::Json,
        SinkKind::File {
            path: dir.join("audit.jsonl"),
            max_size: None,
            max_files: 1,
        },
    );
    // Each iteration ends by waiting for its last event in the file; a partial tail batch
    // would otherwise wait out the default 200 ms, which is latency, not throughput.
    sink.batch_wait = Duration::from_millis(2);
    AuditSettings {
        allow_events: AllowEvents::All,
        sinks: vec![sink],
        gateway_name: "gw-bench".into(),
        durability,
        fsync_interval: Duration::from_secs(1),
        spool: Some(SpoolSettings {
            dir: dir.join("spool"),
            max_size: 8 << 30,
            on_full: OnFull::Block,
            segment_size: 64 << 20,
            fsync: FsyncPolicy::Interval,
        }),
        hmac_key: None,
        checkpoint_interval: Duration::from_secs(300),
    }
}

fn wait_delivered(log: &AuditLog, head: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = log.stats();
        if s.head >= head && s.sinks.iter().all(|k| k.cursor >= head) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bench events not delivered: {s:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    let batch: u64 = 20_000;
    group.throughput(Throughput::Elements(batch));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(dir.path(), Durability::Buffered)).unwrap();
    let mut head = 0;
    group.bench_function("spool+file", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for i in 0..batch {
                    let fut = log.record(EventBody::Decision(decision(i)));
                    if rt.block_on(fut).is_err() {
                        panic!("queue full: raise the queue or lower the batch");
                    }
                }
                head += batch;
                wait_delivered(&log, head);
            }
            start.elapsed()
        });
    });
    drop(log);

    let dir = tempfile::tempdir().unwrap();
    let log =
        std::sync::Arc::new(AuditLog::start(&settings(dir.path(), Durability::Spooled)).unwrap());
    group.bench_function("spooled-64", |b| {
        b.iter_custom(|iters| spooled_64(&rt, &log, batch, iters));
    });
    drop(log);

    // The gateway's own runtime: its thread commits the events it waits for when it runs dry
    // (`audit::commit_pending`), instead of handing them to the writer thread and back.
    let hooked = tokio::runtime::Builder::new_current_thread()
        .on_thread_park(portcullis::audit::commit_pending)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log =
        std::sync::Arc::new(AuditLog::start(&settings(dir.path(), Durability::Spooled)).unwrap());
    group.bench_function("spooled-64/commit-at-park", |b| {
        b.iter_custom(|iters| spooled_64(&hooked, &log, batch, iters));
    });
    group.finish();
}

/// 64 tasks record `batch` spooled events between them, each waiting for its own.
fn spooled_64(
    rt: &tokio::runtime::Runtime,
    log: &std::sync::Arc<AuditLog>,
    batch: u64,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..64u64 {
                let log = log.clone();
                set.spawn(async move {
                    for i in 0..batch / 64 {
                        log.record(EventBody::Decision(decision(t * 1000 + i)))
                            .await
                            .unwrap();
                    }
                });
            }
            while set.join_next().await.is_some() {}
        });
    }
    start.elapsed()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("baseline-serde_json", |b| {
        let d = decision(7);
        b.iter(|| black_box(serde_json::to_vec(black_box(&d)).unwrap()))
    });
    // `seal-hmac`: the chain as an auditor would run it, every event signed with
    // `[audit] hmac_key`.
    for (name, key) in [("seal", None), ("seal-hmac", Some(b"bench-audit-hmac-key"))] {
        let mut chain = Chain::new(GENESIS.into(), key.map(|k| k.to_vec()));
        group.bench_function(name, |b| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                let event = AuditEvent::new("gw".into(), EventBody::Decision(decision(7)));
                out.clear();
                chain.seal(&event, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    let mut sealed = Vec::new();
    let event = AuditEvent::new("gw".into(), EventBody::Decision(decision(7)));
    Chain::new(GENESIS.into(), None)
        .seal(&event, &mut sealed)
        .unwrap();
    for (name, f) in [
        ("json", AuditFormat::Json),
        ("ecs", AuditFormat::Ecs),
        ("ocsf", AuditFormat::Ocsf),
        ("cef", AuditFormat::Cef),
        ("leef", AuditFormat::Leef),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(format::render(f, black_box(&sealed)).unwrap()))
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(dir.path(), Durability::Buffered)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut n = 0u64;
    group.bench_function("record-enqueue", |b| {
        b.iter(|| {
            n += 1;
            // The request path's cost in buffered mode: build + enqueue (the writer drains).
            let r = rt.block_on(log.record(EventBody::Decision(decision(n))));
            if r.is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    });
    group.finish();
}

/// Poll `fut` once, as a request task awaiting an already resolved future would.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    pin!(fut).poll(&mut cx)
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(dir.path(), Durability::Buffered)).unwrap();
    const CHUNK: u64 = 8192;
    let mut n = 0u64;
    group.bench_function("record-buffered", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let k = left.min(CHUNK);
                left -= k;
                let bodies: Vec<EventBody> = (0..k)
                    .map(|i| EventBody::Decision(decision(n + i)))
                    .collect();
                n += k;
                let start = Instant::now();
                for body in bodies {
                    match poll_once(log.record(body)) {
                        Poll::Ready(Ok(())) => {}
                        other => panic!("record did not resolve at once: {other:?}"),
                    }
                }
                timed += start.elapsed();
                // Untimed: let the writer catch up so the queue never fills.
                let deadline = Instant::now() + Duration::from_secs(60);
                while log.stats().written < n {
                    assert!(Instant::now() < deadline, "writer stalled");
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            timed
        });
    });
    group.finish();
}

/// Instruction counting (`AUDIT_IR=<piece>:<n>`, run under callgrind): a fixed number of
/// events through one piece and nothing else, so `(Ir(n2) - Ir(n1)) / (n2 - n1)` is the
/// piece's instructions per event without the startup. Criterion's `--profile-time` runs an
/// unknown number of iterations, which gives a total but not a per-event figure.
///
/// - `seal:<n>`: `Chain::seal` of one prebuilt decision event (the writer's encoding).
/// - `record:<n>`: `AuditLog::record` (buffered) of prebuilt bodies, each future polled once
///   (the request path), then wait until the file sink has delivered them; counts every
///   thread (request, writer, sink), see `--separate-threads=yes` for the split.
/// - `build:<n>`: only the bodies `record` starts from, to subtract.
/// - `fields-string:<n>` / `fields-text:<n>`: the request path's copy of a request's fields
///   into its event (and their drop), as `String`s the way `audit()` did before and as `Text`
///   the way it does now (the gateway's `audit()` itself needs a whole `Gateway`).
fn count(spec: &str) {
    let (piece, n) = spec.split_once(':').expect("AUDIT_IR=<piece>:<n>");
    let n: u64 = n.parse().expect("a number of events");
    match piece {
        "seal" => {
            let mut chain = Chain::new(GENESIS.into(), None);
            let mut event = AuditEvent::new("gw".into(), EventBody::Decision(decision(7)));
            let mut out = Vec::with_capacity(1024);
            for i in 0..n {
                event.seq = i;
                out.clear();
                chain.seal(black_box(&event), &mut out).unwrap();
                black_box(out.len());
            }
        }
        "record" => {
            let dir = tempfile::tempdir().unwrap();
            let log = AuditLog::start(&settings(dir.path(), Durability::Buffered)).unwrap();
            let bodies: Vec<EventBody> = (0..n).map(|i| EventBody::Decision(decision(i))).collect();
            for body in bodies {
                match poll_once(log.record(body)) {
                    Poll::Ready(Ok(())) => {}
                    other => panic!("record did not resolve at once: {other:?}"),
                }
            }
            wait_delivered(&log, n);
        }
        "build" => {
            // What `record` spends building its bodies (the bench's, not the gateway's).
            let bodies: Vec<EventBody> = (0..n).map(|i| EventBody::Decision(decision(i))).collect();
            black_box(bodies);
        }
        // The request path's copy of its fields into the event (`audit()` in
        // proxy/pipeline.rs), from what the request context holds, and the drop the writer
        // does: as `String`s (before) and as `Text` (now).
        "fields-string" | "fields-text" => {
            let ctx = RequestFields::sample();
            for _ in 0..n {
                if piece == "fields-string" {
                    black_box(ctx.strings());
                } else {
                    black_box(ctx.decision());
                }
            }
        }
        other => panic!("unknown piece `{other}`"),
    }
}

/// What `audit()` copies from: the principal, roles, route entry, upstream name, request.
struct RequestFields {
    tenant: String,
    subject: String,
    /// Shared with the cached principal, as `PrincipalGrants` holds them.
    roles: Arc<[String]>,
    method: http::Method,
    path: String,
    route: String,
    upstream: String,
    /// Shared with the route entry.
    required: Arc<[String]>,
    ip: std::net::IpAddr,
    user_agent: Option<String>,
    request_id: http::HeaderValue,
}

impl RequestFields {
    fn sample() -> RequestFields {
        RequestFields {
            tenant: "acme".into(),
            subject: "user-42".into(),
            roles: Arc::from(["viewer".to_owned()]),
            method: http::Method::GET,
            path: "/api/campaigns/42".into(),
            route: "/api/campaigns/{id}".into(),
            upstream: "api".into(),
            required: Arc::from(["campaigns.view".to_owned()]),
            ip: "203.0.113.9".parse().unwrap(),
            user_agent: Some("curl/8.5.0".into()),
            request_id: http::HeaderValue::from_static("0193b7a2-5c1e-7d3f-9a41-6e2b8c0d4f17"),
        }
    }

    /// The fields as `audit()` built them before `Text` (`String` each, `to_string` for the
    /// method and the address).
    #[allow(
        clippy::type_complexity,
        reason = "a bench's stand-in for the old struct"
    )]
    fn strings(&self) -> (Vec<String>, [Option<String>; 5], Vec<String>, [String; 4]) {
        let b = black_box(self);
        (
            b.required.iter().map(|s| (*s).to_owned()).collect(),
            [
                Some(b.tenant.clone()),
                Some(b.subject.clone()),
                Some(b.route.clone()),
                Some(b.upstream.clone()),
                b.user_agent.clone(),
            ],
            b.roles.to_vec(),
            [
                b.method.to_string(),
                b.path.clone(),
                b.ip.to_string(),
                b.request_id.to_str().unwrap_or_default().to_owned(),
            ],
        )
    }

    /// The fields as `audit()` builds them now.
    fn decision(&self) -> Decision {
        let b = black_box(self);
        Decision {
            decision: "allow",
            reason: None,
            required: b.required.clone(),
            tenant: Some(Text::new(&b.tenant)),
            subject: Some(Text::new(&b.subject)),
            roles: b.roles.clone(),
            method: Text::new(b.method.as_str()),
            path: Text::new(&b.path),
            route: Some(Text::new(&b.route)),
            upstream: Some(Text::new(&b.upstream)),
            status: 200,
            client_ip: portcullis::audit::event::ip_text(b.ip),
            user_agent: b.user_agent.as_deref().map(Text::new),
            request_id: Text::new(b.request_id.to_str().unwrap_or_default()),
            latency_us: 85,
            mode: "enforce",
        }
    }
}

criterion_group!(benches, pipeline, encode, request);

fn main() {
    if let Ok(spec) = std::env::var("AUDIT_IR") {
        count(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
