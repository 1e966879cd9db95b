//! The audit log end to end without a gateway: role changes, config reloads, checkpoints,
//! and `seq`/chain recovery across a restart.

use std::time::{Duration, Instant};

use super::*;
use crate::config::{AuditFormat, SinkKind, SinkSettings, SpoolSettings};

fn settings(dir: &std::path::Path, checkpoint: Duration) -> AuditSettings {
    AuditSettings {
        allow_events: AllowEvents::All,
        sinks: vec![SinkSettings::new(
            "file",
            AuditFormat::Json,
            SinkKind::File {
                path: dir.join("audit.jsonl"),
                max_size: None,
                max_files: 1,
            },
        )],
        gateway_name: "gw-unit".into(),
        durability: Durability::Spooled,
        fsync_interval: Duration::from_secs(1),
        spool: Some(SpoolSettings {
            dir: dir.join("spool"),
            max_size: 1 << 20,
            on_full: OnFull::Block,
            segment_size: 1 << 16,
            fsync: FsyncPolicy::Interval,
        }),
        hmac_key: None,
        checkpoint_interval: checkpoint,
    }
}

fn lines(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
        if text.lines().count() >= n {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {} lines: {text}",
            text.lines().count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn role_change_and_reload_are_spooled_before_they_resolve_and_seq_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(dir.path(), Duration::from_secs(300))).unwrap();
    let change = RoleChange {
        actor: "admin@acme".into(),
        tenant: "acme".into(),
        subject: "u123".into(),
        change: "assign".into(),
        roles: vec!["editor".into()],
        permissions: Vec::new(),
        before: serde_json::json!({"roles": [], "grant": [], "deny": [], "scopes": []}),
        after: serde_json::json!({"roles": ["editor"], "grant": [], "deny": [], "scopes": []}),
    };
    log.record_role_change(change).await.unwrap();
    // Resolved means appended (and fsynced): the head already covers it.
    assert_eq!(log.stats().head, 1);
    log.record_config_reload("gateway.toml", "[server]\n", true, 0)
        .await
        .unwrap();
    assert_eq!(log.stats().head, 2);
    let events = lines(dir.path(), 2);
    assert_eq!(events[0]["type"], "role.change");
    assert_eq!(events[0]["actor"], "admin@acme");
    assert_eq!(events[0]["before"]["roles"], serde_json::json!([]));
    assert_eq!(events[0]["after"]["roles"], serde_json::json!(["editor"]));
    assert_eq!(events[1]["type"], "config.reload");
    assert_eq!(events[1]["prev"], events[0]["hash"]);
    // The drop lets the file sink deliver and persist its cursor before it returns, so the
    // restart neither sends a line again nor races this run's cursor file.
    drop(log);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("spool/cursors/file"))
            .unwrap()
            .trim(),
        "2"
    );

    let log = AuditLog::start(&settings(dir.path(), Duration::from_secs(300))).unwrap();
    log.record(EventBody::Loss(Loss {
        count: 0,
        cause: "test",
        bound: None,
    }))
    .await
    .unwrap();
    let events = lines(dir.path(), 3);
    assert_eq!(events[2]["seq"], 3, "seq continues from the spool");
    assert_eq!(
        events[2]["prev"], events[1]["hash"],
        "the chain continues too"
    );
    let report = verify::verify(
        &std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap(),
        None,
    );
    assert_eq!(
        report.findings.len(),
        1,
        "only the (test) loss record: {:?}",
        report.findings
    );
}

#[tokio::test]
async fn checkpoints_state_the_chain_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(dir.path(), Duration::from_millis(30))).unwrap();
    log.record(EventBody::Decision(Decision {
        decision: "deny",
        ..Decision::default()
    }))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let checkpoint = loop {
        let events = lines(dir.path(), 1);
        let after = events
            .iter()
            .position(|e| e["type"] == "authz.decision")
            .and_then(|i| events.get(i + 1..))
            .and_then(|rest| {
                rest.iter()
                    .find(|e| e["type"] == "audit.checkpoint")
                    .cloned()
            });
        if let Some(c) = after {
            break (c, events);
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint after the decision"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (checkpoint, events) = checkpoint;
    let head_seq = checkpoint["head_seq"].as_u64().unwrap();
    let head = events.iter().find(|e| e["seq"] == head_seq).unwrap();
    assert_eq!(checkpoint["head_hash"], head["hash"]);
    assert_eq!(checkpoint["prev"], head["hash"]);
}

/// Un-awaited (`buffered`) events do not wake the writer themselves unless it parked on an
/// empty queue; with no timer due for minutes, a lost wake would leave them unwritten.
#[tokio::test]
async fn buffered_events_are_written_promptly_whether_the_writer_is_busy_or_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Duration::from_secs(300));
    s.durability = Durability::Buffered;
    if let Some(spool) = s.spool.as_mut() {
        spool.fsync = FsyncPolicy::Never;
    }
    let log = AuditLog::start(&s).unwrap();
    let written_within = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.stats().written < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} written",
                log.stats().written
            );
            std::thread::yield_now();
        }
    };
    let reload = || log.record_config_reload("unit", "x", true, 0);
    // Idle writer, one event.
    reload().await.unwrap();
    written_within(1);
    // A burst while it drains on its tick.
    for _ in 0..2000 {
        reload().await.unwrap();
    }
    written_within(2001);
    // One at a time: each finds the writer idle again (or about to be).
    for n in 2002..2012 {
        reload().await.unwrap();
        written_within(n);
    }
    // Long enough for the writer to settle its crash-loss reservation and park with no
    // timer due (the sleep sets the scene; it synchronizes nothing).
    std::thread::sleep(Duration::from_millis(100));
    reload().await.unwrap();
    written_within(2012);
    assert_eq!(log.stats().dropped, 0);
}

fn file_sink(dir: &std::path::Path, batch_wait: Duration) -> SinkSettings {
    let mut sink = SinkSettings::new(
        "file",
        AuditFormat::Json,
        SinkKind::File {
            path: dir.join("audit.jsonl"),
            max_size: None,
            max_files: 1,
        },
    );
    sink.batch_wait = batch_wait;
    sink
}

/// An HTTP sink whose receiver is down: nothing listens on its port.
fn down_sink() -> SinkSettings {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = SinkSettings::new(
        "down",
        AuditFormat::Json,
        SinkKind::Http {
            url: format!("http://127.0.0.1:{port}/audit"),
            headers: Vec::new(),
            headers_env: Vec::new(),
            tls: Default::default(),
        },
    );
    sink.retry_initial = Duration::from_millis(10);
    sink.retry_max = Duration::from_millis(50);
    sink
}

fn decision() -> EventBody {
    EventBody::Decision(Decision {
        decision: "deny",
        ..Decision::default()
    })
}

/// In-memory spool: `shutdown` returns only once the sink has every recorded event, and a
/// sink waiting out a long `batch_wait` stops waiting.
#[tokio::test]
async fn shutdown_delivers_an_in_memory_spool_without_waiting_out_batch_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Duration::from_secs(300));
    s.spool = None;
    s.sinks = vec![file_sink(dir.path(), Duration::from_secs(10))];
    let log = AuditLog::start(&s).unwrap();
    let n = 7;
    for _ in 0..n {
        log.record(decision()).await.unwrap();
    }
    let started = Instant::now();
    let report = log.shutdown(Duration::from_secs(8));
    let took = started.elapsed();
    assert_eq!(report, ShutdownReport::default(), "nothing left behind");
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(text.lines().count(), n, "{text}");
    assert!(
        took < Duration::from_secs(5),
        "the 10 s batch_wait was cut short: {took:?}"
    );
    // Shut down: nothing more is accepted, and a second shutdown (or the drop) has no work.
    assert_eq!(log.record(decision()).await, Err(AuditUnavailable));
    assert_eq!(
        log.shutdown(Duration::from_secs(8)),
        ShutdownReport::default()
    );
}

/// A sink whose receiver is down: `shutdown` gives up after its bound, reports what is left,
/// and with a disk spool the events stay there (the cursor did not move) for the next start.
#[tokio::test]
async fn shutdown_with_a_sink_down_returns_within_the_bound_and_keeps_the_events_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Duration::from_secs(300));
    s.sinks = vec![down_sink()];
    let log = AuditLog::start(&s).unwrap();
    let n = 4;
    for _ in 0..n {
        log.record(decision()).await.unwrap();
    }
    let started = Instant::now();
    let report = log.shutdown(Duration::from_millis(300));
    let took = started.elapsed();
    // The decisions, and possibly the sink's own failure event.
    let head = log.stats().head;
    assert!(head >= n);
    assert!(
        took < Duration::from_millis(300) + STOP_GRACE + Duration::from_secs(1),
        "bounded by the deadline: {took:?}"
    );
    assert_eq!(report.undelivered.len(), 1, "{report:?}");
    assert_eq!(report.undelivered[0].sink, "down");
    assert_eq!(report.undelivered[0].events, head, "{report:?}");
    drop(log);

    // The next start finds them still to deliver.
    let log = AuditLog::start(&s).unwrap();
    let stats = log.stats();
    assert_eq!(stats.head, head);
    assert_eq!(stats.sinks[0].cursor, 0, "nothing was acknowledged");
    let report = log.shutdown(Duration::ZERO);
    assert_eq!(report.undelivered[0].events, head);
}

/// Spooled waiters are completed through a task on the first runtime that waits; once that
/// runtime is gone, the writer completes waiters of any other runtime itself, with or without
/// the park hook. The last runtime has no hook, on the thread where a hooked one ran before:
/// its events are not left for a park-time commit that never comes.
#[test]
fn spooled_waiters_complete_in_every_runtime_even_after_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::start(&settings(dir.path(), Duration::from_secs(300))).unwrap());
    let burst = |log: Arc<AuditLog>| async move {
        let waits: Vec<_> = (0..64)
            .map(|_| tokio::spawn(log.record(decision())))
            .collect();
        let mut outcomes = Vec::new();
        for wait in waits {
            outcomes.push(wait.await.unwrap());
        }
        outcomes
    };
    // The gateway's runtime also wakes the writer when a thread parks (`commit_pending`).
    for runtime in 0..5 {
        // From an idle writer, which only a push or a park-time commit would wake.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.queue.writer_idle() {
            assert!(Instant::now() < deadline, "the writer never went idle");
            std::thread::yield_now();
        }
        let mut builder = match runtime {
            3 => tokio::runtime::Builder::new_multi_thread(),
            _ => tokio::runtime::Builder::new_current_thread(),
        };
        if runtime == 2 || runtime == 3 {
            builder.on_thread_park(commit_pending);
        }
        let rt = builder.enable_all().build().unwrap();
        let outcomes = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), burst(log.clone())).await
            })
            .unwrap_or_else(|_| panic!("runtime {runtime}: spooled waiters never completed"));
        assert!(
            outcomes.iter().all(Result::is_ok),
            "runtime {runtime}: {outcomes:?}"
        );
        drop(rt);
    }
    assert_eq!(log.stats().head, 320);
}

/// Bursts of spooled events from a request runtime with the park hook: the runtime's thread
/// commits them itself; appends that would open a new segment (an fsync) are left to the
/// writer thread, and its checkpoints interleave. Every event lands once, in one chain that
/// verifies, with `seq` in order. With `fsync = "always"`, or on a multi-thread runtime, no
/// request thread commits.
#[test]
fn request_threads_commit_their_bursts_and_leave_new_segments_to_the_writer() {
    for (fsync, multi_thread) in [
        (FsyncPolicy::Interval, false),
        (FsyncPolicy::Always, false),
        (FsyncPolicy::Interval, true),
    ] {
        let case = format!("{fsync:?}, multi-thread: {multi_thread}");
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), Duration::from_millis(20));
        if let Some(spool) = &mut s.spool {
            spool.max_size = 16 << 20;
            spool.fsync = fsync;
        }
        let log = Arc::new(AuditLog::start(&s).unwrap());
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let rt = builder
            .on_thread_park(commit_pending)
            .enable_all()
            .build()
            .unwrap();
        let (rounds, burst) = (20, 50);
        let outcomes = rt
            .block_on(async {
                let bursts = async {
                    let mut outcomes = Vec::new();
                    for _ in 0..rounds {
                        let waits: Vec<_> = (0..burst)
                            .map(|_| tokio::spawn(log.record(decision())))
                            .collect();
                        for wait in waits {
                            outcomes.push(wait.await.unwrap());
                        }
                    }
                    outcomes
                };
                tokio::time::timeout(Duration::from_secs(20), bursts).await
            })
            .unwrap_or_else(|_| panic!("{case}: spooled waiters never completed"));
        let refused = outcomes.iter().filter(|o| o.is_err()).count();
        assert_eq!(
            refused,
            0,
            "{case}: {refused} of {} refused",
            outcomes.len()
        );
        let inline = log.queue.inline_commits.load(Ordering::Relaxed);
        let handovers = log.queue.inline_handovers.load(Ordering::Relaxed);
        if fsync == FsyncPolicy::Always || multi_thread {
            assert_eq!(inline, 0, "{case}: the writer thread commits");
        } else {
            assert!(inline > 0, "{case}: no request thread committed");
            // ~10 segments filled by ~20 bursts of 50 events: some burst crossed a boundary.
            assert!(
                handovers > 0,
                "{case}: no inline commit left a new segment to the writer"
            );
        }
        assert_eq!(
            log.shutdown(Duration::from_secs(10)),
            ShutdownReport::default()
        );
        // After the shutdown: a checkpoint may have been written since the last request.
        let head = log.stats().head;
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let report = super::verify::verify(&text, None);
        assert!(report.ok(), "{case}: {:?}", report.findings);
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let in_order = seqs.iter().copied().eq(1..=head);
        assert!(in_order, "{case}: {} events, head {head}", seqs.len());
        let decisions = events
            .iter()
            .filter(|e| e["type"] == "authz.decision")
            .count();
        assert_eq!(decisions, rounds * burst, "{case}");
        // 64 KiB segments: several were opened during the bursts.
        assert!(text.len() >= 5 << 16, "{} bytes only", text.len());
    }
}
