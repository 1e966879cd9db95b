//! Audit delivery to HTTP SIEM receivers (HEC, NDJSON, `_bulk`): batching, retries through
//! injected faults, outages, the two `on_full` policies, and delivery at graceful shutdown.

use crate::support;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::edge::EdgeGateway;
use crate::support::receivers::{
    Fault, HttpReceiver, Protocol, assert_complete, assert_complete_in_order, id_and_seq, wait_for,
};
use crate::support::{Upstream, request, start_gateway, token};

const CONFIG: &str = include_str!("../fixtures/e2e.toml");
const HEC_TOKEN: &str = "5f0c1c9e-0000-4000-8000-000000000001";

/// Fast retries so fault tests finish quickly.
const FAST: &str =
    "batch_size = 7\nbatch_wait = \"20ms\"\nretry_initial = \"10ms\"\nretry_max = \"40ms\"\n";

fn hec_sink(url: &str, token_file: &std::path::Path, extra: &str) -> String {
    format!(
        "[[audit.sinks]]\ntype = \"splunk_hec\"\nname = \"hec\"\nurl = \"{url}\"\ntoken_file = \"{}\"\n{FAST}{extra}",
        token_file.display()
    )
}

/// Send `n` requests alternating allow (viewer GET) and deny (viewer DELETE); returns the
/// request ids the gateway answered with.
async fn traffic(gw: std::net::SocketAddr, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    let t = token("vic", "acme");
    for i in 0..n {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        let r = request(gw, method, &format!("/api/campaigns/{i}"), Some(&t), &[]).await;
        statuses.push(r.status);
    }
    statuses
}

fn decision_ids(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .filter(|d| {
            d["type"] == "authz.decision"
                || d["portcullis"]["type"] == "authz.decision"
                || d["unmapped"]["type"] == "authz.decision"
        })
        .map(|d| id_and_seq(d).0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sinks_deliver_everything_in_order_through_faults() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("hec.token");
    std::fs::write(&token_file, HEC_TOKEN).unwrap();
    let hec = HttpReceiver::start(Protocol::Hec(HEC_TOKEN.into())).await;
    let ndjson = HttpReceiver::start(Protocol::Ndjson).await;
    let bulk = HttpReceiver::start(Protocol::Bulk).await;
    // 503 twice, then a 200 whose body says code 9: all three must be retried.
    hec.fail_next(2, Fault::Status(503));
    hec.fail_next(1, Fault::HecOkWithCode(9));
    ndjson.fail_next(2, Fault::Status(500));
    bulk.fail_next(1, Fault::BulkItem429);
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\ngateway = \"gw-http\"\n[audit.spool]\ndir = \"{spool}\"\n{hec}\n[[audit.sinks]]\ntype = \"http\"\nname = \"vector\"\nurl = \"{nd}/audit\"\nformat = \"ocsf\"\nheaders = {{ \"X-Source\" = \"portcullis\" }}\n{FAST}\n[[audit.sinks]]\ntype = \"elasticsearch\"\nname = \"es\"\nurl = \"{es}\"\nformat = \"ecs\"\n{FAST}\n[[audit.sinks]]\ntype = \"file\"\nname = \"file\"\npath = \"{file}\"\n",
        spool = dir.path().join("spool").display(),
        hec = hec_sink(&hec.url(), &token_file, ""),
        nd = ndjson.url(),
        es = bulk.url(),
        file = dir.path().join("audit.jsonl").display(),
    );
    let gw = start_gateway(&config, &up).await;
    let n = 30;
    let statuses = traffic(gw.addr, n).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), n / 2);
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), n / 2);
    let file = dir.path().join("audit.jsonl");
    let expected = || -> Vec<String> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|d| d["type"] == "authz.decision")
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_for("the file sink has every decision", 10, || {
        expected().len() == n
    })
    .await;
    let ids = expected();
    for (name, r) in [("hec", &hec), ("ndjson", &ndjson), ("bulk", &bulk)] {
        wait_for(&format!("{name} has every decision"), 20, || {
            let got = decision_ids(&r.docs());
            ids.iter().all(|id| got.contains(id))
        })
        .await;
        // HEC and NDJSON retry whole batches: arrival order is seq order. `_bulk` retries a
        // rejected item after its batch-mates were stored.
        assert_complete(&r.docs(), &ids, name, name != "bulk");
    }
    // The renderings are what each sink was configured for.
    let ocsf = &ndjson.docs()[0];
    assert!(
        ocsf["class_uid"] == 6003 || ocsf["class_uid"] == 6002,
        "{ocsf}"
    );
    let ecs_doc = bulk
        .docs()
        .into_iter()
        .find(|d| d["portcullis"]["type"] == "authz.decision")
        .unwrap();
    assert_eq!(ecs_doc["event"]["category"], serde_json::json!(["api"]));
    let stats = gw.gateway.audit.stats();
    let by = |name: &str| stats.sinks.iter().find(|s| s.name == name).unwrap().clone();
    assert!(
        by("hec").retries >= 3,
        "503, 503 and a 200 with code 9 were retried: {stats:?}"
    );
    assert!(by("vector").retries >= 2, "{stats:?}");
    assert!(
        by("es").retries >= 1,
        "the item 429 made the batch retry: {stats:?}"
    );
    assert_eq!(by("es").dead_lettered, 0);
    // A sink failure is itself audited (once per outage, not per retry).
    let failures: Vec<_> = hec
        .docs()
        .into_iter()
        .filter(|d| d["type"] == "audit.sink_failure")
        .collect();
    assert!(
        !failures.is_empty(),
        "audit.sink_failure events are delivered too"
    );
    // Batching: far fewer requests than events.
    assert!(
        hec.requests() < n,
        "HEC got {} requests for {n} events",
        hec.requests()
    );
    // Credentials never appear in any event.
    for r in [&hec, &ndjson, &bulk] {
        let all = serde_json::to_string(&r.docs()).unwrap();
        assert!(
            !all.contains("Bearer") && !all.contains(HEC_TOKEN) && !all.contains("eyJ"),
            "credential leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("hec.token");
    std::fs::write(&token_file, HEC_TOKEN).unwrap();
    let hec = HttpReceiver::start(Protocol::Hec(HEC_TOKEN.into())).await;
    let bulk = HttpReceiver::start(Protocol::Bulk).await;
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\n[audit.spool]\ndir = \"{spool}\"\n{hec}\n[[audit.sinks]]\ntype = \"elasticsearch\"\nname = \"es\"\nurl = \"{es}\"\n{FAST}",
        spool = dir.path().join("spool").display(),
        hec = hec_sink(&hec.url(), &token_file, ""),
        es = bulk.url(),
    );
    let gw = start_gateway(&config, &up).await;
    // Warm up: connections are pooled, so the outage must cut live connections too.
    traffic(gw.addr, 2).await;
    wait_for("warm-up delivered", 10, || {
        decision_ids(&hec.docs()).len() == 2 && decision_ids(&bulk.docs()).len() == 2
    })
    .await;
    hec.stop();
    bulk.stop();
    let n = 40;
    let statuses = traffic(gw.addr, n).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "a SIEM outage never touches requests: {statuses:?}"
    );
    let head = gw.gateway.audit.stats().head;
    let lag = |name: &str| {
        let s = gw.gateway.audit.stats();
        head - s.sinks.iter().find(|x| x.name == name).unwrap().cursor
    };
    assert!(
        lag("hec") >= n as u64 && lag("es") >= n as u64,
        "the spool holds the outage"
    );
    hec.resume().await;
    bulk.resume().await;
    let all_ids = |r: &HttpReceiver| decision_ids(&r.docs());
    wait_for("hec caught up", 20, || {
        all_ids(&hec)
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            == n + 2
    })
    .await;
    wait_for("es caught up", 20, || {
        all_ids(&bulk)
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            == n + 2
    })
    .await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for id in all_ids(&hec) {
            if !v.contains(&id) {
                v.push(id);
            }
        }
        v
    };
    assert_complete_in_order(&hec.docs(), &ids, "hec");
    assert_complete_in_order(&bulk.docs(), &ids, "es");
    wait_for("cursors at the head", 10, || {
        let s = gw.gateway.audit.stats();
        s.sinks.iter().all(|x| x.cursor == s.head)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_invalid_data_is_dead_lettered_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("hec.token");
    std::fs::write(&token_file, HEC_TOKEN).unwrap();
    let hec = HttpReceiver::start(Protocol::Hec(HEC_TOKEN.into())).await;
    hec.fail_next(1, Fault::HecInvalidData);
    let up = Upstream::start().await;
    let spool = dir.path().join("spool");
    let config = format!(
        "{CONFIG}\n[audit]\n[audit.spool]\ndir = \"{}\"\n{}",
        spool.display(),
        hec_sink(&hec.url(), &token_file, "")
    );
    let gw = start_gateway(&config, &up).await;
    traffic(gw.addr, 1).await;
    wait_for("dead-lettered", 10, || {
        gw.gateway.audit.stats().sinks[0].dead_lettered == 1
    })
    .await;
    let dead = std::fs::read_to_string(spool.join("dead-letter/hec.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 1, "the refused event is kept: {dead}");
    traffic(gw.addr, 3).await;
    wait_for("later events delivered", 10, || {
        decision_ids(&hec.docs()).len() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_with_block_answers_503_and_never_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let ndjson = HttpReceiver::stopped(Protocol::Ndjson, support::receivers::free_port());
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\n[audit.spool]\ndir = \"{}\"\nmax_size = \"24KiB\"\nsegment_size = \"4KiB\"\non_full = \"block\"\n[[audit.sinks]]\ntype = \"http\"\nname = \"down\"\nurl = \"{}\"\n{FAST}",
        dir.path().join("spool").display(),
        ndjson.url()
    );
    let gw = start_gateway(&config, &up).await;
    let t = token("vic", "acme");
    let mut refused = None;
    for i in 0..200 {
        let r = request(
            gw.addr,
            "GET",
            &format!("/api/campaigns/{i}"),
            Some(&t),
            &[],
        )
        .await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let refused = refused.expect("the spool filled up and requests were refused");
    assert_eq!(refused.json()["error"], "audit_unavailable");
    assert_eq!(refused.header("x-authz-source"), Some("gateway"));
    assert!(refused.header("retry-after").is_some());
    let served = up.count();
    let r = request(gw.addr, "GET", "/api/campaigns/x", Some(&t), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        up.count(),
        served,
        "a request that cannot be audited never reaches the upstream"
    );
    // The SIEM comes back: the spool drains and requests are served again.
    ndjson.resume().await;
    wait_for("the spool drains", 20, || {
        gw.gateway.audit.stats().spool_bytes < 16 * 1024
    })
    .await;
    let mut ok = false;
    for _ in 0..100 {
        if request(gw.addr, "GET", "/api/campaigns/y", Some(&t), &[])
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "requests are served once the spool has room");
    // A graceful stop with a disk spool: the sink delivers the rest of its backlog first.
    let report = support::shut_down_audit(&gw, Duration::from_secs(20)).await;
    assert_eq!(report.undelivered, Vec::new(), "the backlog was delivered");
    let stats = gw.gateway.audit.stats();
    assert_eq!(stats.sinks[0].cursor, stats.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_with_drop_serves_counts_and_records_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let ndjson = HttpReceiver::stopped(Protocol::Ndjson, support::receivers::free_port());
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\n[audit.spool]\ndir = \"{}\"\nmax_size = \"24KiB\"\nsegment_size = \"4KiB\"\non_full = \"drop\"\n[[audit.sinks]]\ntype = \"http\"\nname = \"down\"\nurl = \"{}\"\n{FAST}",
        dir.path().join("spool").display(),
        ndjson.url()
    );
    let gw = start_gateway(&config, &up).await;
    let statuses = traffic(gw.addr, 80).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "drop keeps serving: {statuses:?}"
    );
    let dropped = gw.gateway.audit.dropped();
    assert!(dropped > 0, "the spool filled up");
    ndjson.resume().await;
    wait_for("an audit.loss record arrives", 20, || {
        ndjson.docs().iter().any(|d| d["type"] == "audit.loss")
    })
    .await;
    // Further traffic keeps flowing; the loss records add up to what was dropped.
    wait_for("loss counted", 20, || {
        let counted: u64 = ndjson
            .docs()
            .iter()
            .filter(|d| d["type"] == "audit.loss")
            .map(|d| d["count"].as_u64().unwrap())
            .sum();
        counted == gw.gateway.audit.dropped()
    })
    .await;
}

/// Graceful shutdown through the library (the future passed to `server::serve`) with an
/// in-memory spool: once the last handle on the gateway is dropped, every decision is in the
/// file sink, although its 10 s `batch_wait` had not elapsed (the drain cuts it short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_an_in_memory_spool_before_the_gateway_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\n[[audit.sinks]]\ntype = \"file\"\nname = \"file\"\npath = \"{}\"\nbatch_wait = \"10s\"\n",
        file.display()
    )
    .replace("{UPSTREAM}", &up.addr.to_string());
    let mut gw = EdgeGateway::start(&config, dir.path()).await;
    let n = 12;
    let statuses = traffic(gw.addr, n).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    let started = Instant::now();
    gw.shutdown();
    (&mut gw.served).await.unwrap();
    let EdgeGateway { gateway, .. } = gw;
    wait_for("the drained server lets go of the gateway", 5, || {
        Arc::strong_count(&gateway) == 1
    })
    .await;
    // The last handle: dropping it stops the audit pipeline (writer, then sinks).
    tokio::task::spawn_blocking(move || drop(gateway))
        .await
        .unwrap();
    let took = started.elapsed();
    let decisions = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|d| d["type"] == "authz.decision")
        .count();
    assert_eq!(decisions, n, "every decision reached the file sink");
    assert!(
        took < Duration::from_secs(5),
        "the 10 s batch_wait was cut short: shutdown took {took:?}"
    );
}
