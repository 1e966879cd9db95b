//! SIEM receivers for the audit tests: an HTTP receiver that speaks Splunk HEC, NDJSON or
//! Elasticsearch `_bulk` as documented (research/siem.md §1), can fail on demand and can be
//! stopped and started again on the same port; and a real `rsyslogd` started on loopback
//! with a generated config.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which protocol the receiver speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// Splunk HEC with this token.
    Hec(String),
    Ndjson,
    Bulk,
}

/// A failure to inject into the next matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (HEC: with the matching code body, 503 → code 9).
    Status(u16),
    /// HEC: HTTP 200 whose body carries an error code (must count as a failure).
    HecOkWithCode(i64),
    /// HEC: 400 "Invalid data format" (code 6): not retriable.
    HecInvalidData,
    /// `_bulk`: the first item answers 429 `es_rejected_execution_exception`.
    BulkItem429,
}

#[derive(Default)]
struct State {
    /// Documents in arrival order (HEC `event`, NDJSON line, `_bulk` source).
    docs: Vec<Value>,
    /// `_bulk` ids stored so far (a second `create` answers 409).
    bulk_ids: HashSet<String>,
    faults: VecDeque<Fault>,
    requests: usize,
}

/// An HTTP SIEM receiver.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    protocol: Protocol,
    state: Arc<Mutex<State>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl HttpReceiver {
    pub async fn start(protocol: Protocol) -> HttpReceiver {
        let receiver = HttpReceiver::stopped(protocol, free_port());
        receiver.resume().await;
        receiver
    }

    /// A receiver that is down until `resume` (its port is known in advance).
    pub fn stopped(protocol: Protocol, port: u16) -> HttpReceiver {
        HttpReceiver {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            protocol,
            state: Arc::default(),
            tasks: Arc::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Start listening (again) on the same port.
    pub async fn resume(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {}: {e}", self.addr),
            }
        };
        let state = self.state.clone();
        let protocol = self.protocol.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let protocol = protocol.clone();
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        let protocol = protocol.clone();
                        async move { Ok::<_, Infallible>(handle(req, &protocol, &state).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Outage: stop listening and cut every open connection.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn fail_next(&self, count: usize, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..count {
            s.faults.push_back(fault.clone());
        }
    }

    pub fn docs(&self) -> Vec<Value> {
        self.state.lock().unwrap().docs.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn hec_error(status: u16, code: i64, text: &str) -> Response<Full<Bytes>> {
    reply(status, json!({"text": text, "code": code}))
}

async fn handle(
    req: Request<Incoming>,
    protocol: &Protocol,
    state: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let fault = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        s.faults.pop_front()
    };
    match protocol {
        Protocol::Hec(token) => {
            if parts.uri.path() != "/services/collector/event"
                && parts.uri.path() != "/services/collector"
            {
                return reply(
                    404,
                    json!({"text": "The requested URL was not found on this server.", "code": 404}),
                );
            }
            match parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
            {
                None => return hec_error(401, 2, "Token is required"),
                Some(v) if v != format!("Splunk {token}") => {
                    return hec_error(403, 4, "Invalid token");
                }
                Some(_) => {}
            }
            match fault {
                Some(Fault::Status(503)) => return hec_error(503, 9, "Server is busy"),
                Some(Fault::Status(s)) => return hec_error(s, 8, "Internal server error"),
                Some(Fault::HecOkWithCode(code)) => return hec_error(200, code, "Server is busy"),
                Some(Fault::HecInvalidData) => {
                    return reply(
                        400,
                        json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
                    );
                }
                _ => {}
            }
            // Concatenated envelopes, whitespace allowed between them.
            let mut events = Vec::new();
            for envelope in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
                let Ok(envelope) = envelope else {
                    return reply(
                        400,
                        json!({"text": "Invalid data format", "code": 6, "invalid-event-number": events.len()}),
                    );
                };
                let Some(event) = envelope.get("event") else {
                    return hec_error(400, 12, "Event field is required");
                };
                if envelope.get("time").is_some_and(|t| !t.is_number()) {
                    return reply(
                        400,
                        json!({"text": "Invalid data format", "code": 6, "invalid-event-number": events.len()}),
                    );
                }
                events.push(event.clone());
            }
            if events.is_empty() {
                return hec_error(400, 5, "No data");
            }
            state.lock().unwrap().docs.extend(events);
            hec_error(200, 0, "Success")
        }
        Protocol::Ndjson => {
            if let Some(Fault::Status(s)) = fault {
                return reply(s, json!({"error": "injected"}));
            }
            let mut docs = Vec::new();
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<Value>(line) {
                    Ok(v) => docs.push(v),
                    Err(_) => return reply(400, json!({"error": "bad line"})),
                }
            }
            state.lock().unwrap().docs.extend(docs);
            reply(200, json!({}))
        }
        Protocol::Bulk => {
            if let Some(Fault::Status(s)) = fault {
                return reply(s, json!({"error": {"type": "injected"}, "status": s}));
            }
            let ct = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/x-ndjson") && !ct.starts_with("application/json") {
                return reply(
                    406,
                    json!({"error": "Content-Type header is not supported", "status": 406}),
                );
            }
            if !body.ends_with(b"\n") {
                return reply(
                    400,
                    json!({"error": {"type": "illegal_argument_exception", "reason": "The bulk request must be terminated by a newline [\\n]"}, "status": 400}),
                );
            }
            let lines: Vec<&[u8]> = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            let mut items = Vec::new();
            let mut errors = false;
            let mut s = state.lock().unwrap();
            let mut reject_first = fault == Some(Fault::BulkItem429);
            for pair in lines.chunks(2) {
                let action: Value = serde_json::from_slice(pair[0]).unwrap_or(Value::Null);
                let Some(create) = action.get("create") else {
                    return reply(
                        400,
                        json!({"error": "only create is expected", "status": 400}),
                    );
                };
                let id = create["_id"].as_str().unwrap_or_default().to_owned();
                let index = create["_index"].clone();
                if reject_first {
                    reject_first = false;
                    errors = true;
                    items.push(json!({"create": {"_index": index, "_id": id, "status": 429, "error": {"type": "es_rejected_execution_exception"}}}));
                    continue;
                }
                if s.bulk_ids.contains(&id) {
                    errors = true;
                    items.push(json!({"create": {"_index": index, "_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception"}}}));
                    continue;
                }
                let Some(doc) = pair
                    .get(1)
                    .and_then(|d| serde_json::from_slice::<Value>(d).ok())
                else {
                    errors = true;
                    items.push(json!({"create": {"_index": index, "_id": id, "status": 400, "error": {"type": "mapper_parsing_exception"}}}));
                    continue;
                };
                s.bulk_ids.insert(id.clone());
                s.docs.push(doc);
                items.push(json!({"create": {"_index": index, "_id": id, "status": 201, "result": "created"}}));
            }
            reply(200, json!({"took": 1, "errors": errors, "items": items}))
        }
    }
}

/// The canonical event's id and seq inside any rendering a receiver stored.
pub fn id_and_seq(doc: &Value) -> (String, u64) {
    let canonical = if doc.get("portcullis").is_some() {
        &doc["portcullis"] // ECS
    } else if doc.get("unmapped").is_some() {
        &doc["unmapped"] // OCSF
    } else {
        doc
    };
    (
        canonical["id"].as_str().unwrap_or_default().to_owned(),
        canonical["seq"].as_u64().unwrap_or_default(),
    )
}

/// At-least-once check: every expected id arrived, first arrivals are in `seq` order, and a
/// repeated id is a duplicate of the same event.
pub fn assert_complete_in_order(docs: &[Value], expected: &[String], what: &str) {
    assert_complete(docs, expected, what, true);
}

/// Like `assert_complete_in_order`, optionally without the order check (an `_bulk` item
/// retried alone lands after its batch-mates; Elasticsearch orders by `event.sequence`).
pub fn assert_complete(docs: &[Value], expected: &[String], what: &str, ordered: bool) {
    let mut first_seen: Vec<(String, u64)> = Vec::new();
    let mut by_id: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    for doc in docs {
        let (id, seq) = id_and_seq(doc);
        match by_id.get(&id) {
            Some(prev) => assert_eq!(
                prev, doc,
                "{what}: id {id} arrived twice with different content"
            ),
            None => {
                by_id.insert(id.clone(), doc.clone());
                first_seen.push((id, seq));
            }
        }
    }
    for id in expected {
        assert!(by_id.contains_key(id), "{what}: event {id} never arrived");
    }
    if ordered {
        let seqs: Vec<u64> = first_seen.iter().map(|(_, s)| *s).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{what}: events arrived out of order");
    }
}

/// Poll until `check` holds (no sleeps as synchronisation), with a longer deadline than
/// `eventually` for retries with backoff.
pub async fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A throw-away PKI made with the `openssl` CLI: CA, server cert for 127.0.0.1, client cert.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn generate(dir: &Path) -> TestPki {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl CLI is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-sha256",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=portcullis-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
            ),
            (
                "client",
                "portcullis-gateway",
                "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
            ),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-sha256",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        TestPki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A private rsyslogd on loopback: plain TCP (imptcp, octet counting), TLS (imtcp + OpenSSL,
/// client certificate required) and UDP, writing every message as JSON to `out`.
pub struct Rsyslog {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub tcp_port: u16,
    pub tls_port: u16,
    pub udp_port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(dir: &Path, pki: &TestPki) -> Rsyslog {
        assert!(
            Command::new("rsyslogd")
                .arg("-v")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "rsyslogd is not installed (.ci/run installs the `rsyslog` and `rsyslog-openssl` packages)"
        );
        let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Rsyslog {
            dir: dir.to_path_buf(),
            out: dir.join("messages.jsonl"),
            tcp_port: free_port(),
            tls_port: free_port(),
            udp_port,
            child: None,
        };
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let conf = format!(
            r#"global(workDirectory="{dir}/work" maxMessageSize="64k" net.enableDNS="off"
  defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")
module(load="imptcp")
module(load="imudp")
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
template(name="Json" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
ruleset(name="siem") {{
  action(type="omfile" file="{out}" template="Json" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imptcp" address="127.0.0.1" port="{tcp}" ruleset="siem" name="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="siem" name="tls")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="siem" name="udp")
"#,
            dir = dir.display(),
            ca = pki.path("ca.pem"),
            cert = pki.path("server.pem"),
            key = pki.path("server.key"),
            out = r.out.display(),
            tcp = r.tcp_port,
            tls = r.tls_port,
            udp = r.udp_port,
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let check = Command::new("rsyslogd")
            .args(["-N1", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "rsyslog config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        r.resume();
        r
    }

    /// (Re)start the daemon with the same config; the output file is appended to.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("rsyslogd.log")).unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [self.tcp_port, self.tls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd did not listen on {port}: {}",
                    std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stop the daemon (SIGTERM to our child only) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Every received message, parsed.
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
