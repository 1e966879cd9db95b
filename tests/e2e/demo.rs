//! `portcullis demo` as a newcomer runs it: the real binary on a free port, its printed tokens
//! and curl lines replayed against it (an allow, a 403 naming the permission, a tier gate, an
//! own-only scope, ...), and with `--redis` the printed `redis-cli` lines that grant a role
//! and publish the invalidation, after which bob's delete is allowed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::*;

/// The demo binary, SIGKILLed and reaped however the test ends.
struct Demo {
    child: Child,
    out: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Start `portcullis demo --listen <free port> [extra]` and wait for its banner.
    async fn start(extra: &[&str]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["demo", "--listen", &addr.to_string()])
            .args(extra)
            .env_remove("PORTCULLIS_DEMO_SECRET")
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut demo = Demo {
            child,
            out,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !demo.stdout().contains("# audit events follow") {
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("demo exited ({status}):\n{}", demo.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no banner:\n{}\n{}",
                demo.stdout(),
                demo.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        demo
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        let err = self.out.with_file_name("stderr");
        std::fs::read_to_string(Path::new(&err)).unwrap_or_default()
    }

    /// The banner's `export NAME=TOKEN` lines.
    fn tokens(&self) -> HashMap<String, String> {
        self.stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The banner's curl lines, in order.
    fn curl_lines(&self) -> Vec<String> {
        let banner = self.stdout();
        let banner = banner
            .split("# audit events follow")
            .next()
            .unwrap_or_default()
            .to_owned();
        banner
            .lines()
            .filter(|l| l.starts_with("curl "))
            .map(str::to_owned)
            .collect()
    }

    /// Replay one printed curl line (`-X`, `-H "Name: value"` with `$TOKEN` expanded, URL)
    /// over a raw socket. Returns the method, the path and the response.
    async fn replay(&self, line: &str) -> (String, String, RawResponse) {
        let tokens = self.tokens();
        let mut method = "GET".to_owned();
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut url = None;
        let mut words = shell_words(line).into_iter().skip(1);
        while let Some(w) = words.next() {
            match w.as_str() {
                "-si" | "-s" | "-i" => {}
                "-X" => method = words.next().unwrap(),
                "-H" => {
                    let h = words.next().unwrap();
                    let (name, value) = h.split_once(':').unwrap();
                    let value = expand(value.trim(), &tokens);
                    headers.push((name.trim().to_owned(), value));
                }
                other if other.starts_with("http://") => url = Some(other.to_owned()),
                other => panic!("unexpected curl argument {other:?} in {line}"),
            }
        }
        let url = url.unwrap_or_else(|| panic!("no URL in {line}"));
        let rest = url
            .strip_prefix(&format!("http://{}", self.addr))
            .unwrap_or_else(|| panic!("{url} is not the demo's listener {}", self.addr));
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = request(self.addr, &method, rest, None, &h).await;
        (method, rest.to_owned(), r)
    }
}

/// Split a printed command line into words: double and single quotes group, no escapes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ' ') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `$NAME` → the exported token.
fn expand(value: &str, tokens: &HashMap<String, String>) -> String {
    let mut out = value.to_owned();
    // Longest names first: `$ALICE_MFA` before `$ALICE`.
    let mut names: Vec<&String> = tokens.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${name}"), &tokens[name]);
    }
    assert!(!out.contains('$'), "unexpanded variable in {value}");
    out
}

/// The echo upstream's answer: the request as it arrived, with the `x-*` headers.
fn echoed(r: &RawResponse) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.header("x-authz-source"),
        None,
        "a gateway answer: {}",
        r.raw
    );
    let body = r.json();
    assert_eq!(body["upstream"], "demo", "{}", r.body);
    body
}

/// A gateway refusal: status, reason, and (for 403/MFA) the permission named.
fn refusal(r: &RawResponse, status: u16, reason: &str, permission: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.raw);
    assert_eq!(r.header("x-authz-source"), Some("gateway"), "{}", r.raw);
    assert_eq!(r.reason(), reason, "{}", r.body);
    assert_eq!(
        r.json()["required_permission"].as_str(),
        permission,
        "{}",
        r.body
    );
}

#[tokio::test]
async fn demo_prints_tokens_and_curl_lines_that_behave_as_announced() {
    let demo = Demo::start(&[]).await;
    let lines = demo.curl_lines();
    assert!(lines.len() >= 4, "curl lines:\n{}", demo.stdout());
    let mut seen = Vec::new();
    for line in &lines {
        let (method, path, r) = demo.replay(line).await;
        match (method.as_str(), path.as_str()) {
            // An allow, with the identity headers the upstream sees.
            ("GET", "/api/campaigns/42") => {
                let h = &echoed(&r)["headers"];
                assert_eq!(h["x-authz-subject"], "bob");
                assert_eq!(h["x-authz-tenant"], "acme");
                assert_eq!(h["x-authz-roles"], "viewer");
                assert!(h.get("x-authz-scope").is_none(), "{}", r.body);
                seen.push("allow");
            }
            // A 403 naming the permission.
            ("DELETE", "/api/campaigns/42") => {
                refusal(&r, 403, "missing_permission", Some("campaigns.delete"));
                seen.push("403 permission");
            }
            // The tier gate.
            ("POST", "/api/email/campaigns/7/send") => {
                refusal(&r, 403, "tier_required", Some("email.campaigns.send"));
                assert_eq!(r.json()["required_tier"], "growth", "{}", r.body);
                seen.push("tier gate");
            }
            // An own-only grant on a list route: forwarded with the scope header.
            ("GET", "/api/calls") => {
                let h = &echoed(&r)["headers"];
                assert_eq!(h["x-authz-subject"], "dan");
                assert_eq!(h["x-authz-scope"], "own", "{}", r.body);
                seen.push("own-only scope");
            }
            ("PUT", "/api/users/bob/profile") => {
                refusal(&r, 403, "not_owner", Some("profile.edit"));
            }
            ("GET", "/api/brands/brand-2/reports") => {
                refusal(&r, 403, "scope_denied", Some("reports.view"));
            }
            ("GET", "/api/billing/invoices") => {
                if line.contains("$ALICE_MFA") {
                    echoed(&r);
                } else {
                    refusal(&r, 401, "mfa_required", Some("billing.view"));
                    assert_eq!(
                        r.header("www-authenticate"),
                        Some("Bearer error=\"insufficient_user_authentication\"")
                    );
                }
            }
            ("GET", "/api/campaigns") => refusal(&r, 401, "missing_token", None),
            other => panic!("a curl line this test does not know: {other:?} ({line})"),
        }
    }
    for required in ["allow", "403 permission", "tier gate", "own-only scope"] {
        assert!(
            seen.contains(&required),
            "the demo shows no {required}: {seen:?}"
        );
    }
    // Each decision is printed as an audit event on stdout (written off the request path).
    let tier_event = || {
        demo.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| e["type"] == "authz.decision" && e["reason"] == "tier_required")
    };
    eventually("an audit event for the tier gate on stdout", tier_event).await;
}

#[tokio::test]
async fn demo_on_redis_grants_a_role_with_the_printed_redis_cli_lines() {
    let redis = RedisServer::start().await;
    let demo = Demo::start(&["--redis", &redis.url(), "--prefix", "demo-test"]).await;
    let out = demo.stdout();
    let banner = out
        .split("# audit events follow")
        .next()
        .unwrap_or_default();
    let redis_part = banner
        .split("# Redis store:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Redis section in the banner:\n{banner}"));
    let curls: Vec<&str> = redis_part
        .lines()
        .filter(|l| l.starts_with("curl "))
        .collect();
    let clis: Vec<&str> = redis_part
        .lines()
        .filter(|l| l.starts_with("redis-cli "))
        .collect();
    assert_eq!(curls.len(), 3, "{redis_part}");
    assert_eq!(clis.len(), 2, "{redis_part}");

    // The API key line: bob, read from Redis.
    let (_, _, r) = demo.replay(curls[0]).await;
    assert_eq!(echoed(&r)["headers"]["x-authz-subject"], "bob");
    assert!(
        echoed(&r)["headers"].get("x-api-key").is_none(),
        "the API key reached the upstream"
    );
    // Before: bob may not delete.
    let (_, _, r) = demo.replay(curls[1]).await;
    refusal(&r, 403, "missing_permission", Some("campaigns.delete"));

    // The printed redis-cli lines, run by a shell as a reader would paste them.
    for cli in &clis {
        let status = Command::new("sh")
            .args(["-c", cli])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `{cli}` ({e}): redis-cli is needed"));
        assert!(status.success(), "{cli}");
    }
    // The invalidation reaches the gateway asynchronously (pub/sub push): poll, then the
    // printed delete is allowed with the new role.
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let (_, _, r) = demo.replay(curls[2]).await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let h = &echoed(&r)["headers"];
    assert_eq!(h["x-authz-roles"], "admin", "{}", r.body);
    assert_eq!(h["x-authz-subject"], "bob");
}
