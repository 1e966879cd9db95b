//! `portcullis audit verify` on a file written by the gateway: intact passes; a deleted, an
//! altered and a reordered event are each reported and exit 1.

use std::process::Command;

use crate::support::receivers::wait_for;
use crate::support::{Upstream, request, start_gateway, token};

const CONFIG: &str = include_str!("../fixtures/e2e.toml");

fn verify(path: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_deleted_altered_and_reordered_events() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, "an-audit-hmac-key").unwrap();
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\ngateway = \"gw-verify\"\nhmac_key_file = \"{}\"\n[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\n",
        key.display(),
        file.display()
    );
    let gw = start_gateway(&config, &up).await;
    let t = token("vic", "acme");
    for i in 0..6 {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        request(
            gw.addr,
            method,
            &format!("/api/campaigns/{i}"),
            Some(&t),
            &[],
        )
        .await;
    }
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    wait_for("six events", 10, || read().lines().count() == 6).await;
    let text = read();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("\"hash\":\"hmac-sha256:"),
        "HMAC-sealed: {}",
        lines[0]
    );
    let key_arg = ["--hmac-key-file", key.to_str().unwrap()];

    let (code, out) = verify(&file, &key_arg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 events, 0 duplicates, 0 problems"), "{out}");
    let (code, out) = verify(&file, &[]);
    assert_eq!(
        code, 1,
        "without the key HMAC events cannot be checked: {out}"
    );
    assert!(out.contains("pass the key"), "{out}");
    let (code, out) = verify(&file, &["--hmac-key-file", file.to_str().unwrap()]);
    assert_eq!(code, 1, "a wrong key fails every event: {out}");

    let write = |name: &str, lines: &[&str]| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    // Deleted: seq 3 removed.
    let deleted: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| *l)
        .collect();
    let (code, out) = verify(&write("deleted.jsonl", &deleted), &key_arg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("event seq 3 is missing"), "{out}");
    // Altered: the deny of seq 2 rewritten as an allow.
    let altered_line = lines[1].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    assert_ne!(altered_line, lines[1]);
    let mut altered = lines.clone();
    altered[1] = &altered_line;
    let (code, out) = verify(&write("altered.jsonl", &altered), &key_arg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 2: event seq 2 was altered"), "{out}");
    // Reordered: seq 4 moved before seq 2.
    let mut reordered = lines.clone();
    let moved = reordered.remove(3);
    reordered.insert(1, moved);
    let (code, out) = verify(&write("reordered.jsonl", &reordered), &key_arg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("out of order"), "{out}");
    assert!(!out.contains("missing"), "a reordering is not a gap: {out}");
    // Duplicates (at-least-once delivery) are fine.
    let mut dup = lines.clone();
    dup.insert(3, lines[2]);
    let (code, out) = verify(&write("dup.jsonl", &dup), &key_arg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 duplicates"), "{out}");
}

/// A client that hangs up while its allowed request is at the upstream: the upstream got the
/// request, so the decision must be in the audit trail all the same (status 499, as nginx logs
/// a client that closed the request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_hangs_up_at_the_upstream_is_still_audited() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    // An upstream that takes the request and answers only when told to.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let arrived_tx = arrived_tx.clone();
            let released = released.clone();
            tokio::spawn(async move {
                if crate::support::read_head(&mut stream).await.is_none() {
                    return;
                }
                let _ = arrived_tx.send(());
                released.notified().await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let up = Upstream::start().await;
    let config = format!(
        "{}\n[audit]\ngateway = \"gw-hangup\"\n[[audit.sinks]]\ntype = \"file\"\npath = \"{}\"\nbatch_wait = \"10ms\"\n",
        CONFIG.replace("{UPSTREAM}", &upstream_addr.to_string()),
        file.display()
    );
    let gw = start_gateway(&config, &up).await;
    let t = token("vic", "acme");
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(
            format!(
                "GET /api/campaigns/77 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), arrived.recv())
        .await
        .expect("the request reached the upstream");
    drop(client);
    // The upstream has not answered (and never will, here): the event comes from the client
    // going away alone.
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    wait_for("the hung-up request's event", 10, || {
        read().contains("\"path\":\"/api/campaigns/77\"")
    })
    .await;
    let text = read();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["path"] == "/api/campaigns/77")
        .collect();
    assert_eq!(events.len(), 1, "one event: {events:?}");
    let event = &events[0];
    assert_eq!(event["decision"], "allow", "{event}");
    assert_eq!(event["subject"], "vic", "{event}");
    assert_eq!(event["status"], 499, "{event}");
    assert_eq!(event["reason"], "client_closed", "{event}");
    release.notify_waiters();
}
