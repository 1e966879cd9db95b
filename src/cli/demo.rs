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

use crate::config::{
    self, ApiKeySettings, FileStoreData, RedisSettings, RedisTarget, StoreSettings,
};
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

/// What the banner says about the Redis store, when `--redis` is used.
struct RedisDemo {
    url: String,
    prefix: String,
    api_key: String,
}

pub async fn run(
    listen: Option<SocketAddr>,
    redis: Option<String>,
    prefix: String,
) -> anyhow::Result<()> {
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
    let mut redis_demo = None;
    if let Some(url) = redis {
        let StoreSettings::File(data) = &snapshot.grants.store else {
            anyhow::bail!("the embedded demo config has no file store to seed Redis from");
        };
        let api_key = seed_redis(&url, &prefix, data).await?;
        snapshot.grants.store = StoreSettings::Redis(RedisSettings {
            target: RedisTarget::Url(url.clone()),
            prefix: prefix.clone(),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(250),
            cache_capacity: 10_000,
            client_tracking: true,
        });
        snapshot.identity.api_key = Some(ApiKeySettings {
            header: http::HeaderName::from_static("x-api-key"),
        });
        redis_demo = Some(RedisDemo {
            url,
            prefix,
            api_key,
        });
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
    print_banner(listen, upstream, &tokens, redis_demo.as_ref());
    server::serve(listener, gateway, super::shutdown_signal()).await;
    Ok(())
}

/// Write the demo tenants and assignments into Redis under `prefix` (replacing earlier demo
/// keys), add an API key for bob, and publish a tenant invalidation for each tenant. Returns
/// the API key.
async fn seed_redis(url: &str, prefix: &str, data: &FileStoreData) -> anyhow::Result<String> {
    let client = redis::Client::open(url).context("invalid --redis URL")?;
    let mut con = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("Redis did not answer within 3s")?
    .context("cannot connect to --redis")?;
    let list = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let mut pipe = redis::pipe();
    for (tenant, record) in &data.tenants {
        let tenant_key = format!("{prefix}:{tenant}:tenant");
        let roles_key = format!("{prefix}:{tenant}:roles");
        pipe.del(&tenant_key).ignore().del(&roles_key).ignore();
        if let Some(tier) = &record.tier {
            pipe.hset(&tenant_key, "tier", tier).ignore();
        }
        pipe.hset(&tenant_key, "features", list(&record.features))
            .ignore();
        for role in &record.custom_roles {
            let json = serde_json::json!({
                "permissions": role.permissions,
                "own": role.own,
                "inherits": role.inherits,
            });
            pipe.hset(&roles_key, &role.name, json.to_string()).ignore();
        }
    }
    for ((tenant, subject), a) in &data.assignments {
        let key = format!("{prefix}:{tenant}:user:{subject}");
        pipe.del(&key).ignore();
        pipe.hset(&key, "roles", list(&a.roles)).ignore();
        pipe.hset(&key, "grant", list(&a.grant)).ignore();
        pipe.hset(&key, "deny", list(&a.deny)).ignore();
        pipe.hset(&key, "scopes", list(&a.scopes)).ignore();
    }
    let api_key = format!("demo-{}", &random_secret()[..32]);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(api_key.as_bytes()));
    let key = format!("{prefix}:apikey:{digest}");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 24 * 3600;
    pipe.hset(&key, "tenant", "acme").ignore();
    pipe.hset(&key, "subject", "bob").ignore();
    pipe.hset(&key, "expires", expires).ignore();
    for (tenant, _) in &data.tenants {
        pipe.publish(format!("{prefix}:invalidate"), tenant)
            .ignore();
    }
    pipe.exec_async(&mut con)
        .await
        .context("cannot seed the demo data into Redis")?;
    Ok(api_key)
}

fn print_banner(
    listen: SocketAddr,
    upstream: SocketAddr,
    tokens: &[(&str, String)],
    redis: Option<&RedisDemo>,
) {
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
    if let Some(r) = redis {
        let cli = format!("redis-cli -u {}", r.url);
        let p = &r.prefix;
        let _ = writeln!(
            s,
            "\n# Redis store: grants are read from {} under `{p}:` (see README, Redis key schema)",
            r.url
        );
        let _ = writeln!(s, "# an API key for bob (tenant acme), valid 24h:");
        let _ = writeln!(
            s,
            "curl -si -H \"x-api-key: {}\" {base}/api/campaigns/42",
            r.api_key
        );
        let _ = writeln!(
            s,
            "# bob may not delete (403); make him `admin`, publish, and the next request passes:"
        );
        let _ = writeln!(s, "{}", curl("BOB", "DELETE", "/api/campaigns/42"));
        let _ = writeln!(s, "{cli} HSET {p}:acme:user:bob roles '[\"admin\"]'");
        let _ = writeln!(s, "{cli} PUBLISH {p}:invalidate acme:bob");
        let _ = writeln!(s, "{}", curl("BOB", "DELETE", "/api/campaigns/42"));
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
