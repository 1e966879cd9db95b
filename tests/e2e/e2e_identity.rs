//! Identity sources end to end: JWKS from a URL with `kid` rotation, and trusted-header
//! identity honoured only from configured peers.

use crate::support;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Upstream, request, start_gateway};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

/// The fixture JWKS restricted to the given kids.
fn jwks_with(kids: &[&str]) -> String {
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let keys: Vec<serde_json::Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// An identity provider's JWKS endpoint: serves the current document, counts downloads.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let doc = b.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(doc))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer { addr, body, hits }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn signed(pem: &str, alg: jsonwebtoken::Algorithm, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.into());
    let pem = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let claims = serde_json::json!({"sub": "vic", "tenant": "acme", "exp": support::now() + 3600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

const JWKS_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity.jwt]
algorithms = ["RS256", "ES256"]
jwks_url = "http://{JWKS}/.well-known/jwks.json"
jwks_refresh_interval = "1h"
jwks_min_refresh_interval = "200ms"

[grants]
store = "file"

[roles.viewer]
permissions = ["items.view"]

[[routes]]
methods = ["GET"]
path = "/items"
permission = "items.view"
upstream = "api"

[[assignments]]
tenant = "acme"
subject = "vic"
roles = ["viewer"]
"#;

async fn poll_status(addr: SocketAddr, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = request(addr, "GET", "/items", Some(token), &[])
            .await
            .status;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {status}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn jwks_url_rotation_is_picked_up_in_the_background() {
    let idp = JwksServer::start(jwks_with(&["rsa-1"])).await;
    let upstream = Upstream::start().await;
    let config = JWKS_CONFIG.replace("{JWKS}", &idp.addr.to_string());
    let gw = start_gateway(&config, &upstream).await;
    let rsa = signed("rsa.pem", jsonwebtoken::Algorithm::RS256, "rsa-1");
    let ec = signed("ec.pem", jsonwebtoken::Algorithm::ES256, "ec-1");

    // The first download happens in the background at start. A request that arrives before it
    // has finished sees an unknown kid and may ask for one more (rate-limited) download.
    poll_status(gw.addr, &rsa, 200).await;
    let at_start = idp.hits();
    assert!((1..=2).contains(&at_start), "{at_start} downloads at start");

    // The provider rotates: ec-1 in, rsa-1 out. A token with the new kid fails at once (no
    // request waits on the network) but triggers one download; soon after, it works.
    idp.serve(jwks_with(&["ec-1"]));
    let first = request(gw.addr, "GET", "/items", Some(&ec), &[]).await;
    assert_eq!(first.status, 401);
    assert_eq!(first.reason(), "invalid_token");
    poll_status(gw.addr, &ec, 200).await;
    // The retired key is gone with the refresh.
    assert_eq!(
        request(gw.addr, "GET", "/items", Some(&rsa), &[])
            .await
            .status,
        401
    );

    // A burst of made-up kids costs at most one download per `jwks_min_refresh_interval`.
    let before = idp.hits();
    let started = Instant::now();
    for i in 0..30 {
        let forged = signed(
            "ec.pem",
            jsonwebtoken::Algorithm::ES256,
            &format!("forged-{i}"),
        );
        assert_eq!(
            request(gw.addr, "GET", "/items", Some(&forged), &[])
                .await
                .status,
            401
        );
    }
    let elapsed = started.elapsed().as_millis() as usize;
    let allowed = 1 + elapsed / 200 + 1;
    let extra = idp.hits() - before;
    assert!(extra <= allowed, "{extra} downloads in {elapsed} ms");
    let m = &gw.gateway.metrics;
    assert!(m.jwks_refreshes_ok.load(Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn cached_token_is_refused_once_its_kid_is_retired() {
    let idp = JwksServer::start(jwks_with(&["rsa-1", "ec-1"])).await;
    let upstream = Upstream::start().await;
    let config = JWKS_CONFIG.replace("{JWKS}", &idp.addr.to_string());
    let gw = start_gateway(&config, &upstream).await;
    let rsa = signed("rsa.pem", jsonwebtoken::Algorithm::RS256, "rsa-1");
    let ec = signed("ec.pem", jsonwebtoken::Algorithm::ES256, "ec-1");

    // Accepted, and then served from the verified-token cache.
    poll_status(gw.addr, &rsa, 200).await;
    let authenticator = gw.gateway.authenticator.clone();
    assert!(authenticator.cached_tokens() >= 1);
    for _ in 0..3 {
        let r = request(gw.addr, "GET", "/items", Some(&rsa), &[]).await;
        assert_eq!(r.status, 200);
    }

    // The provider retires rsa-1. A token naming an unknown kid wakes the refresher (the
    // regular refresh is an hour away); wait until the download has been applied.
    idp.serve(jwks_with(&["ec-1"]));
    let m = gw.gateway.metrics.clone();
    let before = m.jwks_refreshes_ok.load(Ordering::SeqCst);
    let unknown = signed("ec.pem", jsonwebtoken::Algorithm::ES256, "ec-2");
    let r = request(gw.addr, "GET", "/items", Some(&unknown), &[]).await;
    assert_eq!(r.status, 401);
    support::eventually("the JWKS refresh after the rotation", || {
        m.jwks_refreshes_ok.load(Ordering::SeqCst) > before
    })
    .await;

    // The same token, cached a moment ago, is refused now; the kept key still works.
    let r = request(gw.addr, "GET", "/items", Some(&rsa), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), "invalid_token");
    let r = request(gw.addr, "GET", "/items", Some(&ec), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count(), 5);
}

#[tokio::test]
async fn jwks_url_fails_closed_while_the_provider_is_unreachable() {
    // Nothing listens on the port: no keys, every token refused, the gateway still answers.
    let port = support::receivers::free_port();
    let upstream = Upstream::start().await;
    let config = JWKS_CONFIG.replace("{JWKS}", &format!("127.0.0.1:{port}"));
    let gw = start_gateway(&config, &upstream).await;
    let rsa = signed("rsa.pem", jsonwebtoken::Algorithm::RS256, "rsa-1");
    let m = gw.gateway.metrics.clone();
    support::eventually("a failed download", || {
        m.jwks_refreshes_failed.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(
        request(gw.addr, "GET", "/items", Some(&rsa), &[])
            .await
            .status,
        401
    );
    assert_eq!(upstream.count(), 0);
}

const HEADER_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity]
kinds = ["jwt", "header"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"
[identity.header]
subject = "x-auth-user"
tenant = "x-auth-tenant"
trusted_peers = ["{PEERS}"]

[grants]
store = "file"

[roles.viewer]
permissions = ["items.view"]

[[routes]]
methods = ["GET"]
path = "/items"
permission = "items.view"
upstream = "api"

[[assignments]]
tenant = "acme"
subject = "vic"
roles = ["viewer"]
"#;

const AS_VIC: &[(&str, &str)] = &[("X-Auth-User", "vic"), ("X-Auth-Tenant", "acme")];

#[tokio::test]
async fn trusted_headers_are_honoured_from_a_trusted_peer() {
    let upstream = Upstream::start().await;
    let gw = start_gateway(&HEADER_CONFIG.replace("{PEERS}", "127.0.0.1/32"), &upstream).await;
    let r = request(gw.addr, "GET", "/items", None, AS_VIC).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = upstream.last().unwrap();
    assert_eq!(seen.header("x-authz-subject"), Some("vic"));
    assert_eq!(seen.header("x-authz-tenant"), Some("acme"));
    assert_eq!(
        seen.header("x-auth-user"),
        None,
        "identity header passed through"
    );
    assert_eq!(seen.header("x-auth-tenant"), None);
    // Asserted identities are still authorized like any other.
    let r = request(
        gw.addr,
        "GET",
        "/items",
        None,
        &[("X-Auth-User", "nobody"), ("X-Auth-Tenant", "acme")],
    )
    .await;
    assert_eq!(r.status, 403);
    // Malformed assertions are refused, never half-used.
    let r = request(gw.addr, "GET", "/items", None, &[("X-Auth-User", "vic")]).await;
    assert_eq!((r.status, r.reason().as_str()), (401, "missing_tenant"));
    let r = request(
        gw.addr,
        "GET",
        "/items",
        None,
        &[
            ("X-Auth-User", "vic"),
            ("X-Auth-User", "root"),
            ("X-Auth-Tenant", "acme"),
        ],
    )
    .await;
    assert_eq!((r.status, r.reason().as_str()), (401, "invalid_token"));
}

#[tokio::test]
async fn trusted_headers_are_ignored_and_stripped_from_other_peers() {
    let upstream = Upstream::start().await;
    // Our loopback client is not in 10.0.0.0/8.
    let gw = start_gateway(&HEADER_CONFIG.replace("{PEERS}", "10.0.0.0/8"), &upstream).await;
    let r = request(gw.addr, "GET", "/items", None, AS_VIC).await;
    assert_eq!((r.status, r.reason().as_str()), (401, "missing_token"));
    assert_eq!(upstream.count(), 0);
    // A token for someone else plus forged headers claiming vic: the token decides.
    let r = request(
        gw.addr,
        "GET",
        "/items",
        Some(&support::token("nobody", "acme")),
        AS_VIC,
    )
    .await;
    assert_eq!(r.status, 403);
    // A valid token: allowed as the token's subject; the forged headers never reach upstream.
    let forged = &[("X-Auth-User", "root"), ("X-Auth-Tenant", "globex")];
    let r = request(
        gw.addr,
        "GET",
        "/items",
        Some(&support::token("vic", "acme")),
        forged,
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = upstream.last().unwrap();
    assert_eq!(seen.header("x-authz-subject"), Some("vic"));
    assert_eq!(seen.header("x-auth-user"), None);
    assert_eq!(seen.header("x-auth-tenant"), None);
}
