//! `portcullis demo`: the embedded demo config, a built-in echo upstream, printed tokens and
//! curl lines that show an allow, a 403 naming the permission, a tier gate, an own-only scope.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config;
use crate::proxy::{Gateway, server};

/// The demo config, compiled into the binary so the quickstart needs no files.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// A fresh random secret per demo run (tokens from an earlier run stop working).
fn random_secret() -> String {
    let mut out = String::new();
    for _ in 0..4 {
        let _ = write!(out, "{:016x}", RandomState::new().build_hasher().finish());
    }
    out
}

pub async fn run(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let secret = std::env::var("PORTCULLIS_DEMO_SECRET").unwrap_or_else(|_| random_secret());
    let mut snapshot = config::load_str_with_secret(
        DEMO_CONFIG,
        Path::new("config/demo.toml"),
        Some(secret.as_bytes()),
    )
    .map_err(|errors| {
        for e in &errors.errors {
            eprintln!("{}", e.rendered);
        }
        anyhow::anyhow!("the embedded demo config is invalid")
    })?;
    let upstream = start_echo_upstream().await?;
    for u in &mut snapshot.upstreams {
        u.targets = vec![upstream.to_string()];
    }
    if let Some(listen) = listen {
        snapshot.server.listen = listen;
    }
    let listen = snapshot.server.listen;
    let token = |sub: &str, tenant: &str, amr: &[&str]| {
        let amr: Vec<String> = amr.iter().map(|s| s.to_string()).collect();
        super::mint_token(&snapshot, sub, tenant, &amr, Duration::from_secs(24 * 3600))
    };
    let tokens = [
        ("ALICE", token("alice", "acme", &[])?),
        ("ALICE_MFA", token("alice", "acme", &["pwd", "mfa"])?),
        ("BOB", token("bob", "acme", &[])?),
        ("CAROL", token("carol", "acme", &[])?),
        ("DAN", token("dan", "acme", &[])?),
        ("ERIN", token("erin", "startup", &[])?),
    ];
    let gateway = Arc::new(Gateway::build(snapshot)?);
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}; pick another address with `portcullis demo --listen 127.0.0.1:18080`")
    })?;
    print_banner(listen, upstream, &tokens);
    server::serve(listener, gateway, super::shutdown_signal()).await;
    Ok(())
}

fn print_banner(listen: SocketAddr, upstream: SocketAddr, tokens: &[(&str, String)]) {
    let base = format!("http://{listen}");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Portcullis demo: gateway on {base}, demo upstream on {upstream}"
    );
    let _ = writeln!(
        s,
        "Tenant acme (tier growth, feature reports): alice=owner bob=viewer carol=member(editor, brand-1) dan=agent"
    );
    let _ = writeln!(s, "Tenant startup (tier starter): erin=editor\n");
    let _ = writeln!(s, "# tokens (valid 24h):");
    for (name, token) in tokens {
        let _ = writeln!(s, "export {name}={token}");
    }
    let curl = |who: &str, method: &str, path: &str| {
        format!("curl -si -X {method} -H \"Authorization: Bearer ${who}\" {base}{path}")
    };
    let lines = [
        (
            "allow: a viewer reads a campaign (200)",
            curl("BOB", "GET", "/api/campaigns/42"),
        ),
        (
            "403 naming the permission: a viewer deletes (campaigns.delete)",
            curl("BOB", "DELETE", "/api/campaigns/42"),
        ),
        (
            "tier gate: email needs tier growth, startup is on starter (403 tier_required)",
            curl("ERIN", "POST", "/api/email/campaigns/7/send"),
        ),
        (
            "own-only scope: an agent lists calls, forwarded with x-authz-scope: own",
            curl("DAN", "GET", "/api/calls"),
        ),
        (
            "owner check: carol edits bob's profile (403 not_owner)",
            curl("CAROL", "PUT", "/api/users/bob/profile"),
        ),
        (
            "brand scope: carol is limited to brand-1 (403 scope_denied)",
            curl("CAROL", "GET", "/api/brands/brand-2/reports"),
        ),
        (
            "MFA step-up: billing needs amr=mfa (401 mfa_required)",
            curl("ALICE", "GET", "/api/billing/invoices"),
        ),
        (
            "... and with MFA (200)",
            curl("ALICE_MFA", "GET", "/api/billing/invoices"),
        ),
        (
            "no token (401 missing_token)",
            format!("curl -si {base}/api/campaigns"),
        ),
    ];
    let _ = writeln!(s, "\n# try:");
    for (what, line) in lines {
        let _ = writeln!(s, "# {what}\n{line}");
    }
    let _ = writeln!(
        s,
        "\n# audit events follow on stdout, one JSON line per decision; Ctrl-C stops."
    );
    println!("{s}");
}

/// A loopback upstream that answers every request with what it received.
async fn start_echo_upstream() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    service_fn(
                        |req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(&req)) },
                    );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-"))
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "upstream": "demo",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
