//! Syslog sinks against a real rsyslogd started on loopback with a generated config: TCP with
//! RFC 6587 octet counting, TLS per RFC 5425 with a client certificate (the receiver requires
//! one), and UDP; every received message is matched to the event the file sink wrote.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::receivers::{Rsyslog, TestPki, wait_for};
use crate::support::{Upstream, request, shut_down_audit, start_gateway, token};
use serde_json::Value;

const CONFIG: &str = include_str!("../fixtures/e2e.toml");

fn sd_param(sd: &str, name: &str) -> Option<String> {
    let start = sd.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &sd[start..];
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

fn by_input(rsyslog: &Rsyslog, input: &str) -> HashMap<String, Value> {
    rsyslog
        .messages()
        .into_iter()
        .filter(|m| m["input"] == input)
        .filter_map(|m| {
            let id =
                sd_param(m["structured_data"].as_str().unwrap_or(""), "eid").or_else(|| {
                    m["msg"]
                        .as_str()
                        .and_then(|msg| msg.split("externalId=").nth(1))
                        .map(|s| s.split(' ').next().unwrap_or("").to_owned())
                })?;
            Some((id, m))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_every_event_over_tcp_tls_and_udp() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let pki = TestPki::generate(&pki_dir);
    let mut rsyslog = Rsyslog::start(&dir.path().join("rsyslog"), &pki);
    let file = dir.path().join("audit.jsonl");
    let fast =
        "batch_size = 5\nbatch_wait = \"20ms\"\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\n";
    let up = Upstream::start().await;
    let config = format!(
        "{CONFIG}\n[audit]\ngateway = \"gw-syslog\"\n[audit.spool]\ndir = \"{spool}\"\n\
         [[audit.sinks]]\ntype = \"file\"\nname = \"file\"\npath = \"{file}\"\n\
         [[audit.sinks]]\ntype = \"syslog\"\nname = \"tcp\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{tcp}\"\n{fast}\
         [[audit.sinks]]\ntype = \"syslog\"\nname = \"tls\"\ntransport = \"tls\"\naddress = \"127.0.0.1:{tls}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n{fast}\
         [[audit.sinks]]\ntype = \"syslog\"\nname = \"udp\"\ntransport = \"udp\"\naddress = \"127.0.0.1:{udp}\"\nformat = \"cef\"\nfacility = \"local4\"\n{fast}",
        spool = dir.path().join("spool").display(),
        file = file.display(),
        tcp = rsyslog.tcp_port,
        tls = rsyslog.tls_port,
        udp = rsyslog.udp_port,
        ca = pki.path("ca.pem"),
        cert = pki.path("client.pem"),
        key = pki.path("client.key"),
    );
    let gw = start_gateway(&config, &up).await;
    let t = token("vic", "acme");
    let n = 12;
    for i in 0..n {
        let method = if i % 3 == 0 { "DELETE" } else { "GET" };
        request(
            gw.addr,
            method,
            &format!("/api/campaigns/{i}"),
            Some(&t),
            &[("User-Agent", "ua \"quoted\" ]x")],
        )
        .await;
    }
    let events = || -> Vec<Value> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for("file sink", 10, || events().len() >= n).await;
    let expected: Vec<Value> = events();
    let ids: Vec<String> = expected
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    wait_for("rsyslog got every event on tcp and tls", 20, || {
        let (tcp, tls) = (by_input(&rsyslog, "tcp"), by_input(&rsyslog, "tls"));
        ids.iter()
            .all(|id| tcp.contains_key(id) && tls.contains_key(id))
    })
    .await;
    let (tcp, tls) = (by_input(&rsyslog, "tcp"), by_input(&rsyslog, "tls"));
    for event in &expected {
        let id = event["id"].as_str().unwrap();
        for (name, msgs) in [("tcp", &tcp), ("tls", &tls)] {
            let m = &msgs[id];
            // MSG is the canonical event, byte for byte what the file sink has.
            let msg: Value = serde_json::from_str(m["msg"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}: msg is not JSON ({e}): {m}"));
            assert_eq!(&msg, event, "{name}");
            assert_eq!(m["msgid"], event["type"], "{name}");
            assert_eq!(m["hostname"], "gw-syslog");
            assert_eq!(m["app_name"], "portcullis");
            let sd = m["structured_data"].as_str().unwrap();
            assert!(sd.starts_with("[portcullis@32473 "), "{sd}");
            assert_eq!(sd_param(sd, "seq").unwrap(), event["seq"].to_string());
            assert_eq!(
                sd_param(sd, "hash").unwrap(),
                event["hash"].as_str().unwrap()
            );
            if event["type"] == "authz.decision" {
                assert_eq!(
                    sd_param(sd, "decision").unwrap(),
                    event["decision"].as_str().unwrap()
                );
                assert_eq!(
                    sd_param(sd, "path").unwrap(),
                    event["path"].as_str().unwrap()
                );
                // authpriv (10): warning for a deny, informational for an allow.
                let pri = if event["decision"] == "deny" {
                    "84"
                } else {
                    "86"
                };
                assert_eq!(m["pri"], pri, "{name}: {m}");
            }
        }
    }
    // UDP is lossy by nature; on loopback every datagram arrives. CEF inside RFC 5424.
    wait_for("rsyslog got the udp events", 10, || {
        by_input(&rsyslog, "udp").len() >= ids.len()
    })
    .await;
    let udp = by_input(&rsyslog, "udp");
    for event in &expected {
        let m = &udp[event["id"].as_str().unwrap()];
        let msg = m["msg"].as_str().unwrap();
        assert!(msg.starts_with("CEF:0|Portcullis|Portcullis|"), "{msg}");
        assert!(msg.contains(&format!("cn2={}", event["seq"])), "{msg}");
        assert_eq!(
            m["pri"].as_str().unwrap().parse::<u16>().unwrap() / 8,
            20,
            "local4"
        );
    }

    // Outage: the receiver stops while requests flow, then comes back: nothing is lost on
    // the stream transports (at-least-once: duplicates carry the same eid).
    rsyslog.stop();
    let m = 10;
    for i in 0..m {
        let r = request(
            gw.addr,
            "GET",
            &format!("/api/campaigns/o{i}"),
            Some(&t),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "a SIEM outage never touches requests");
    }
    wait_for("file sink has the outage events", 10, || {
        events()
            .iter()
            .filter(|e| e["type"] == "authz.decision")
            .count()
            >= n + m
    })
    .await;
    rsyslog.resume();
    let all_ids: Vec<(String, u64)> = events()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    wait_for("every event after the outage on tcp and tls", 30, || {
        let (tcp, tls) = (by_input(&rsyslog, "tcp"), by_input(&rsyslog, "tls"));
        all_ids
            .iter()
            .all(|(id, _)| tcp.contains_key(id) && tls.contains_key(id))
    })
    .await;
    // In order per sink: first arrivals are in seq order.
    for input in ["tcp", "tls"] {
        let mut seen = std::collections::HashSet::new();
        let seqs: Vec<u64> = rsyslog
            .messages()
            .iter()
            .filter(|msg| msg["input"] == input)
            .filter_map(|msg| {
                sd_param(msg["structured_data"].as_str()?, "seq")?
                    .parse()
                    .ok()
            })
            .filter(|s| seen.insert(*s))
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{input}: out of order");
    }
    // A graceful stop while the receiver is up: what is still spooled (e.g. the outage's
    // `audit.sink_failure` events) is delivered to every sink first.
    let report = shut_down_audit(&gw, Duration::from_secs(20)).await;
    assert_eq!(report.undelivered, Vec::new());
}
