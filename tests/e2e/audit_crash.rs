//! kill -9 of a gateway process with undelivered events in its spool; after a restart they
//! are delivered, `seq` continues and the chain links across the restart (spooled: nothing
//! lost, no `audit.loss`). With `durability = "buffered"` and events still queued at the kill,
//! the restart writes an `audit.loss` record counting them (an upper bound) and `audit
//! verify` reports it. A graceful stop (SIGTERM) without a disk spool delivers every accepted
//! event before the process exits, and a SIEM that is down does not hold the exit beyond
//! `[limits] shutdown_timeout`.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::receivers::{HttpReceiver, Protocol, free_port, wait_for};
use crate::support::{SECRET, Upstream, request, token};

const CONFIG: &str = include_str!("../fixtures/e2e.toml");
const HEC_TOKEN: &str = "crash-test-token";

/// Start the binary; `Err(log)` when it exits before listening (e.g. the port was taken by
/// another test between `free_port` and the bind).
fn try_spawn(
    config: &std::path::Path,
    listen: SocketAddr,
    env: &[(&str, &str)],
) -> Result<Child, String> {
    let log_path = config.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Stdout (a `stdout` sink's output) goes to a file next to the log.
    let out = std::fs::File::create(config.with_extension("out")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(config)
        .env(
            "PORTCULLIS_TEST_SECRET",
            std::str::from_utf8(SECRET).unwrap(),
        )
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(out)
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "gateway exited ({status}) before listening on {listen}:\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not start listening on {listen}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Write the config for `listen` and start; retry on a fresh port if the bind lost a race.
fn spawn(dir: &std::path::Path, base: &str, listen: &mut SocketAddr) -> Child {
    spawn_with(dir, base, listen, &[])
}

fn spawn_with(
    dir: &std::path::Path,
    base: &str,
    listen: &mut SocketAddr,
    env: &[(&str, &str)],
) -> Child {
    let mut last = String::new();
    for _ in 0..3 {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, base.replace("{LISTEN}", &listen.to_string())).unwrap();
        match try_spawn(&path, *listen, env) {
            Ok(child) => return child,
            Err(log) => last = log,
        }
        *listen = ([127, 0, 0, 1], free_port()).into();
    }
    panic!("{last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_full_spool_then_restart_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hec.token"), HEC_TOKEN).unwrap();
    let up = Upstream::start().await;
    // The SIEM is down during the first run: its port is reserved but nothing listens.
    let hec = HttpReceiver::stopped(Protocol::Hec(HEC_TOKEN.into()), free_port());
    let mut listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = gateway_config(
        up.addr,
        &format!(
            "\n[audit]\ngateway = \"gw-crash\"\n[audit.spool]\ndir = \"spool\"\nfsync = \"never\"\n[[audit.sinks]]\ntype = \"splunk_hec\"\nname = \"hec\"\nurl = \"{}\"\ntoken_file = \"hec.token\"\nbatch_wait = \"10ms\"\nretry_initial = \"10ms\"\nretry_max = \"50ms\"\n",
            hec.url()
        ),
    );
    // The first run on one worker thread (a current-thread runtime), the second on the
    // default multi-thread one: the spool survives either.
    let mut first = spawn_with(
        dir.path(),
        &config,
        &mut listen,
        &[("PORTCULLIS_WORKER_THREADS", "1")],
    );
    let t = token("vic", "acme");
    let n = 25;
    let mut request_ids = Vec::new();
    for i in 0..n {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        // Spooled durability: this response leaves only once its event is in the spool.
        let r = request(
            listen,
            method,
            &format!("/api/campaigns/{i}"),
            Some(&t),
            &[],
        )
        .await;
        assert!(r.status == 200 || r.status == 403, "{}", r.raw);
        request_ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    first.kill().unwrap(); // SIGKILL: no shutdown code runs
    first.wait().unwrap();
    assert_eq!(
        hec.docs().len(),
        0,
        "nothing was delivered before the crash"
    );

    hec.resume().await;
    let mut second = spawn(dir.path(), &config, &mut listen);
    wait_for("every decision of the killed run delivered", 20, || {
        let docs = hec.docs();
        request_ids
            .iter()
            .all(|rid| docs.iter().any(|d| d["request_id"] == rid.as_str()))
    })
    .await;
    // One more request in the new run: seq continues and the chain links across the restart.
    let r = request(listen, "GET", "/api/campaigns/after", Some(&t), &[]).await;
    let after_rid = r.header("x-request-id").unwrap().to_owned();
    wait_for("the new run's event delivered", 20, || {
        hec.docs()
            .iter()
            .any(|d| d["request_id"] == after_rid.as_str())
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let docs = one_chain(hec.docs());
    let after = docs
        .iter()
        .find(|d| d["request_id"] == after_rid.as_str())
        .unwrap();
    assert!(after["seq"].as_u64().unwrap() > n as u64);
    assert!(
        !docs.iter().any(|d| d["type"] == "audit.loss"),
        "spooled durability: nothing answered was lost, so no loss record"
    );
}

/// The events in seq order, each once (at-least-once delivery may repeat one: same id, same
/// seq), after checking that seq has no gap and every event links to the one before.
fn one_chain(mut events: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    events.sort_by_key(|d| d["seq"].as_u64().unwrap());
    events.dedup_by(|a, b| a["id"] == b["id"]);
    let seqs: Vec<u64> = events.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no gap in seq across kill -9 and restart");
    for pair in events.windows(2) {
        assert_eq!(
            pair[1]["prev"], pair[0]["hash"],
            "chain links seq {} -> {}",
            pair[0]["seq"], pair[1]["seq"]
        );
    }
    events
}

/// The names of the spool's segment files.
fn segment_names(spool: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(spool)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".seg"))
                .collect()
        })
        .unwrap_or_default()
}

/// Small spool segments and a file sink that keeps up, so segments rotate and acknowledged
/// ones are removed while requests flow. A kill -9 right after a rotation, then a restart:
/// every answered decision is in the sink's file, seq continues without a gap or a repeat,
/// the chain links across the restart and `audit verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_spool_segments_rotate_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let spool = dir.path().join("spool");
    let file = dir.path().join("audit.jsonl");
    let mut listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = gateway_config(
        up.addr,
        &format!(
            "\n[audit]\ngateway = \"gw-rotate\"\nfsync_interval = \"10ms\"\n[audit.spool]\ndir = \"{}\"\nsegment_size = \"4KiB\"\n[[audit.sinks]]\ntype = \"file\"\nname = \"file\"\npath = \"{}\"\nbatch_wait = \"5ms\"\n",
            spool.display(),
            file.display()
        ),
    );
    let mut first = spawn(dir.path(), &config, &mut listen);
    let t = token("vic", "acme");
    let mut request_ids = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut rotated = false;
    for i in 0..2000 {
        let r = request(listen, "GET", &format!("/api/campaigns/{i}"), Some(&t), &[]).await;
        assert!(r.status == 200 || r.status == 403, "{}", r.raw);
        request_ids.push(r.header("x-request-id").unwrap().to_owned());
        let names = segment_names(&spool);
        let opened = names.iter().any(|n| seen.insert(n.clone()));
        // Three segments opened and an acknowledged one removed: then crash right after
        // the next rotation, with the new segment's first record just written.
        if opened && seen.len() > 3 && seen.iter().any(|n| !names.contains(n)) {
            rotated = true;
            break;
        }
    }
    assert!(
        rotated,
        "segments did not rotate and get removed in {} requests (seen: {seen:?})",
        request_ids.len()
    );
    assert!(
        !spool.join("spare").exists(),
        "acknowledged segments are removed, not kept"
    );
    first.kill().unwrap(); // SIGKILL: no shutdown code runs
    first.wait().unwrap();

    let mut second = spawn(dir.path(), &config, &mut listen);
    let r = request(listen, "GET", "/api/campaigns/after", Some(&t), &[]).await;
    request_ids.push(r.header("x-request-id").unwrap().to_owned());
    wait_for("every decision in the file", 20, || {
        missing(&request_ids, &file_events(&file)).is_empty()
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let events = one_chain(file_events(&file));
    assert!(
        !events.iter().any(|e| e["type"] == "audit.loss"),
        "spooled durability: nothing answered was lost"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The e2e fixture config for a gateway in front of `upstream` (its listen address a
/// `{LISTEN}` placeholder for `spawn`), plus `extra` TOML.
fn gateway_config(upstream: SocketAddr, extra: &str) -> String {
    CONFIG
        .replace("listen = \"127.0.0.1:0\"", "listen = \"{LISTEN}\"")
        .replace("{UPSTREAM}", &upstream.to_string())
        + extra
}

fn file_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_buffered_mode_with_queued_events_counts_the_loss_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let file = dir.path().join("audit.jsonl");
    let mut listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = gateway_config(
        up.addr,
        &format!(
            "\n[audit]\ngateway = \"gw-loss\"\ndurability = \"buffered\"\n[audit.spool]\ndir = \"spool\"\nfsync = \"never\"\n[[audit.sinks]]\ntype = \"file\"\nname = \"file\"\npath = \"{}\"\n",
            file.display()
        ),
    );
    // The writer stops after 5 events, as on a stuck disk; buffered requests keep being
    // answered, so their events wait in the queue when the process is killed.
    let stalled = 5;
    let mut first = spawn_with(
        dir.path(),
        &config,
        &mut listen,
        &[("PORTCULLIS_TEST_AUDIT_WRITER_STALL_AFTER", "5")],
    );
    let t = token("vic", "acme");
    let n = 30;
    for i in 0..n {
        let r = request(listen, "GET", &format!("/api/campaigns/{i}"), Some(&t), &[]).await;
        assert!(r.status == 200 || r.status == 403, "{}", r.raw);
        if i + 1 == stalled {
            // The first events are in the spool (and delivered): the writer now stalls, and
            // every later event is answered and left in the queue.
            wait_for("the first events delivered", 20, || {
                file_events(&file).len() >= stalled
            })
            .await;
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = spawn(dir.path(), &config, &mut listen);
    wait_for("the crash loss record delivered", 20, || {
        file_events(&file).iter().any(|e| e["type"] == "audit.loss")
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();

    // At-least-once: a line written just before the kill may come again; same id, same seq.
    let mut events = file_events(&file);
    events.sort_by_key(|e| e["seq"].as_u64().unwrap());
    events.dedup_by(|a, b| a["id"] == b["id"]);
    let decisions = events
        .iter()
        .filter(|e| e["type"] == "authz.decision")
        .count();
    assert_eq!(
        decisions, stalled,
        "decisions written before the kill: {events:?}"
    );
    let lost = (n - decisions) as u64;
    let loss = events.iter().find(|e| e["type"] == "audit.loss").unwrap();
    assert_eq!(loss["cause"], "crash");
    assert_eq!(loss["bound"], "at_most");
    let count = loss["count"].as_u64().unwrap();
    assert!(
        count >= lost && count <= lost + 1024,
        "an upper bound of the {lost} lost events, within one reservation block: {count}"
    );
    // The loss record is part of the chain: seq has no gap.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("at most {count} events were lost"))
            && stdout.contains("cause crash"),
        "{stdout}"
    );
    assert!(stdout.contains("1 problems"), "only the loss: {stdout}");
}

/// The server's log lines go through a buffer that a background thread writes to stderr (no
/// write system call on the request path): the access line still appears, whole, soon after
/// the request, and what is buffered at a graceful stop is written before the process exits.
#[tokio::test]
async fn access_lines_reach_stderr_from_the_buffered_log_writer() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let mut listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = gateway_config(up.addr, "");
    let mut child = spawn_with(dir.path(), &config, &mut listen, &[("RUST_LOG", "info")]);
    let log_path = dir.path().join("gateway.log");
    let access_lines = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request served."))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let r = request(
        listen,
        "GET",
        "/api/campaigns/7",
        Some(&token("vic", "acme")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-request-id").unwrap().to_owned();
    wait_for("the access line", 10, || {
        access_lines().iter().any(|l| l.contains(&request_id))
    })
    .await;
    let line = access_lines()
        .into_iter()
        .find(|l| l.contains(&request_id))
        .unwrap();
    assert!(line.contains("status=200"), "{line}");
    assert!(
        line.contains("decision=\"allow\"") || line.contains("decision=allow"),
        "{line}"
    );

    // A burst, then SIGTERM at once: every line is written before the process exits.
    for i in 0..20 {
        let r = request(
            listen,
            "GET",
            &format!("/api/campaigns/{i}"),
            Some(&token("vic", "acme")),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(access_lines().len(), 21, "{:?}", access_lines());
}

/// Send SIGTERM and wait (polling, with a deadline) for the process to exit; the exit status
/// and how long the stop took.
fn terminate(child: &mut Child, within: Duration) -> (std::process::ExitStatus, Duration) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let sent = Instant::now();
    let deadline = sent + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway did not stop within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Decisions requested with `request_ids` that are missing from `events`.
fn missing<'a>(request_ids: &'a [String], events: &[serde_json::Value]) -> Vec<&'a String> {
    request_ids
        .iter()
        .filter(|rid| {
            !events
                .iter()
                .any(|e| e["type"] == "authz.decision" && e["request_id"] == rid.as_str())
        })
        .collect()
}

/// `n` requests alternating allow and deny; the request ids the gateway answered with.
async fn decisions(listen: SocketAddr, n: usize) -> Vec<String> {
    let t = token("vic", "acme");
    let mut request_ids = Vec::new();
    for i in 0..n {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        let r = request(
            listen,
            method,
            &format!("/api/campaigns/{i}"),
            Some(&t),
            &[],
        )
        .await;
        assert!(r.status == 200 || r.status == 403, "{}", r.raw);
        request_ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    request_ids
}

/// The reviewer's case: no `[audit.spool] dir` (an in-memory spool), SIGTERM right after the
/// last request. Every event was accepted (spooled durability: each response left after its
/// event was in the spool), so every one reaches the file and stdout sinks before the process
/// exits, and the sinks' 10 s `batch_wait` is cut short rather than slept out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_without_a_disk_spool_delivers_every_event_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let file = dir.path().join("audit.jsonl");
    let mut listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = gateway_config(
        up.addr,
        &format!(
            "\n[audit]\ngateway = \"gw-term\"\n[[audit.sinks]]\ntype = \"file\"\nname = \"file\"\npath = \"{}\"\nbatch_wait = \"10s\"\n[[audit.sinks]]\ntype = \"stdout\"\nname = \"stdout\"\nbatch_wait = \"10s\"\n",
            file.display()
        ),
    );
    let mut child = spawn(dir.path(), &config, &mut listen);
    let n = 9;
    let request_ids = decisions(listen, n).await;
    let (status, took) = terminate(&mut child, Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let stdout_events: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("gateway.out"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let file_events = file_events(&file);
    assert_eq!(
        missing(&request_ids, &file_events),
        Vec::<&String>::new(),
        "every decision in the file sink: {file_events:?}"
    );
    assert_eq!(
        missing(&request_ids, &stdout_events),
        Vec::<&String>::new(),
        "every decision on stdout: {stdout_events:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the sinks' 10 s batch_wait was cut short at shutdown: the stop took {took:?}"
    );
}

/// A SIEM that is down at shutdown: the sink keeps retrying for at most `[limits]
/// shutdown_timeout` (1 s here), then the process exits anyway and logs what it could not
/// deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_siem_down_exits_within_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hec.token"), HEC_TOKEN).unwrap();
    let up = Upstream::start().await;
    // Nothing listens on the HEC port.
    let hec = HttpReceiver::stopped(Protocol::Hec(HEC_TOKEN.into()), free_port());
    let mut listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = gateway_config(
        up.addr,
        &format!(
            "\n[limits]\nshutdown_timeout = \"1s\"\n[audit]\ngateway = \"gw-down\"\n[[audit.sinks]]\ntype = \"splunk_hec\"\nname = \"hec\"\nurl = \"{}\"\ntoken_file = \"hec.token\"\nbatch_wait = \"10s\"\nretry_initial = \"10ms\"\nretry_max = \"100ms\"\n",
            hec.url()
        ),
    );
    let mut child = spawn(dir.path(), &config, &mut listen);
    let n = 5;
    decisions(listen, n).await;
    let (status, took) = terminate(&mut child, Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    assert!(
        took < Duration::from_secs(4),
        "a SIEM that is down holds the stop for shutdown_timeout (1 s) at most: it took {took:?}"
    );
    assert_eq!(hec.docs().len(), 0);
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("not delivered before shutdown"))
        .unwrap_or_else(|| panic!("the undelivered events are logged:\n{log}"));
    assert!(line.contains("hec"), "{line}");
    let undelivered: u64 = line
        .split("undelivered=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("a count of undelivered events: {line}"));
    assert!(
        undelivered >= n as u64,
        "at least the {n} decisions are counted: {line}"
    );
}
