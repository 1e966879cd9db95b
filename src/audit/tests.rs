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
    // Let the file sink persist its cursor first: `drop` joins only the writer, and a sink
    // caught between its write and its cursor update would (rightly, at-least-once) send
    // the line again after the restart, or race the new run's cursor file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().sinks[0].cursor < 2 {
        assert!(Instant::now() < deadline, "cursor never reached the head");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(log);

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
