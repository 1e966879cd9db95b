//! The Redis grant store end to end, against a real `redis-server` each test starts on a free
//! port: decisions from Redis data, invalidation (pub/sub, client tracking, TTL), outages
//! (stale reads until `max_stale`, writes and uncached principals 503, never allow), recovery
//! after a restart, malformed data, single-flight, warm hits without Redis calls, API keys.

use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::*;
use sha2::{Digest, Sha256};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity]
kinds = ["jwt", "api_key"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

[grants]
store = "redis"
cache_ttl = "{TTL}"
max_stale = "{MAX_STALE}"
[grants.redis]
url = "{REDIS}"
prefix = "t"
command_timeout = "{COMMAND_TIMEOUT}"
client_tracking = {TRACKING}

[roles.viewer]
permissions = ["campaigns.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]

[entitlements]
tiers = ["starter", "growth"]
[entitlements.require_tier]
"email.*" = "growth"

[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"
[[routes]]
methods = ["PUT"]
path = "/api/campaigns/{id}"
permission = "campaigns.edit"
upstream = "api"
[[routes]]
methods = ["POST"]
path = "/api/email/send"
permission = "email.send"
upstream = "api"
[[routes]]
methods = ["GET"]
path = "/api/reports"
permission = "reports.view"
upstream = "api"
"#;

/// Knobs a test may turn; the defaults keep entries cached for the whole test.
struct Opts {
    ttl: &'static str,
    max_stale: &'static str,
    command_timeout: &'static str,
    tracking: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            ttl: "60s",
            max_stale: "5m",
            command_timeout: "250ms",
            tracking: false,
        }
    }
}

struct Env {
    redis: RedisServer,
    up: Upstream,
    gw: TestGateway,
}

async fn env(opts: Opts) -> Env {
    let redis = RedisServer::start().await;
    let up = Upstream::start().await;
    let config = CONFIG
        .replace("{REDIS}", &redis.url())
        .replace("{TTL}", opts.ttl)
        .replace("{MAX_STALE}", opts.max_stale)
        .replace("{COMMAND_TIMEOUT}", opts.command_timeout)
        .replace("{TRACKING}", if opts.tracking { "true" } else { "false" });
    let gw = start_gateway(&config, &up).await;
    let e = Env { redis, up, gw };
    e.wait_ready().await;
    e
}

impl Env {
    fn store(&self) -> &portcullis::grants::RedisStore {
        self.gw.gateway.store.redis().expect("redis store")
    }

    /// Connected and subscribed: from here on, invalidations reach the gateway.
    async fn wait_ready(&self) {
        let store = self.store().clone();
        eventually("store subscribed to invalidations", || {
            store.health().ready()
        })
        .await;
    }

    async fn roles(&self, subject: &str, roles: &str) {
        self.redis
            .hset(&format!("t:acme:user:{subject}"), "roles", roles)
            .await;
    }

    async fn call(&self, method: &str, path: &str, who: &str) -> RawResponse {
        request(self.gw.addr, method, path, Some(&token(who, "acme")), &[]).await
    }

    /// PUBLISH an invalidation and wait until the gateway has applied it: "the very next
    /// request" is the next one after the gateway received the message (delivery is async).
    async fn invalidate(&self, payload: &str) {
        let portcullis::grants::Store::Redis(store) = &self.gw.gateway.store else {
            panic!("the Redis store is configured")
        };
        let before = store.invalidations();
        self.redis.publish("t:invalidate", payload).await;
        eventually("the gateway applied the invalidation", || {
            store.invalidations() > before
        })
        .await;
    }

    /// 200 from the upstream, which saw exactly this request.
    async fn allowed(&self, method: &str, path: &str, who: &str) {
        let before = self.up.count();
        let r = self.call(method, path, who).await;
        assert_eq!(r.status, 200, "{method} {path} as {who}: {}", r.raw);
        assert_eq!(r.body, "upstream ok");
        assert_eq!(self.up.count(), before + 1);
        let seen = self.up.last().unwrap();
        assert_eq!(seen.header("x-authz-subject"), Some(who));
    }

    /// A gateway refusal with this status and reason; the upstream saw nothing.
    async fn refused(&self, method: &str, path: &str, who: &str, status: u16, reason: &str) {
        let before = self.up.count();
        let r = self.call(method, path, who).await;
        assert_refused(&r, status, reason);
        assert_eq!(
            self.up.count(),
            before,
            "a refused request reached the upstream"
        );
    }
}

fn assert_refused(r: &RawResponse, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.raw);
    assert_eq!(r.header("x-authz-source"), Some("gateway"));
    if status == 503 {
        assert_eq!(r.json()["error"], "authorization_unavailable");
        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    } else {
        assert_eq!(r.reason(), reason, "{}", r.body);
    }
}

#[tokio::test]
async fn decisions_come_from_redis_data() {
    let e = env(Opts::default()).await;
    e.roles("bob", r#"["viewer"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    e.refused("PUT", "/api/campaigns/1", "bob", 403, "missing_permission")
        .await;
    // A subject with no record holds nothing; so does an unknown tenant.
    e.refused(
        "GET",
        "/api/campaigns/1",
        "nobody",
        403,
        "missing_permission",
    )
    .await;

    // Tenant custom role inheriting a built-in role, plus a per-user grant and deny.
    e.redis
        .hset(
            "t:acme:roles",
            "campaigner",
            r#"{"permissions":["campaigns.edit"],"inherits":["viewer"]}"#,
        )
        .await;
    e.roles("carol", r#"["campaigner"]"#).await;
    e.redis
        .hset("t:acme:user:carol", "grant", r#"["reports.view"]"#)
        .await;
    e.allowed("PUT", "/api/campaigns/1", "carol").await;
    e.allowed("GET", "/api/reports", "carol").await;
    assert_eq!(
        e.up.last().unwrap().header("x-authz-roles"),
        Some("campaigner")
    );

    // Entitlements from the tenant hash: no tier fails the tier gate; growth passes.
    e.roles("erin", r#"["viewer"]"#).await;
    e.redis
        .hset("t:acme:user:erin", "grant", r#"["email.send"]"#)
        .await;
    e.refused("POST", "/api/email/send", "erin", 403, "tier_required")
        .await;
    e.redis.hset("t:acme:tenant", "tier", "growth").await;
    e.invalidate("acme").await;
    e.allowed("POST", "/api/email/send", "erin").await;
    e.redis
        .hset("t:acme:user:erin", "deny", r#"["email.*"]"#)
        .await;
    e.invalidate("acme:erin").await;
    e.refused("POST", "/api/email/send", "erin", 403, "denied_by_override")
        .await;
    assert_eq!(e.store().data_errors(), 0);
}

#[tokio::test]
async fn revoke_and_publish_is_denied_on_the_very_next_request() {
    // Tracking off: this is the pub/sub path alone.
    let e = env(Opts::default()).await;
    e.roles("bob", r#"["editor"]"#).await;
    e.allowed("PUT", "/api/campaigns/1", "bob").await;
    e.allowed("PUT", "/api/campaigns/1", "bob").await; // from the cache now

    e.roles("bob", "[]").await;
    e.invalidate("acme:bob").await;
    e.refused("PUT", "/api/campaigns/1", "bob", 403, "missing_permission")
        .await;

    // Tenant-wide payload evicts every principal of the tenant.
    e.roles("bob", r#"["editor"]"#).await;
    e.roles("dan", r#"["viewer"]"#).await;
    e.invalidate("acme").await;
    e.allowed("PUT", "/api/campaigns/1", "bob").await;
    e.allowed("GET", "/api/campaigns/1", "dan").await;
    e.roles("bob", "[]").await;
    e.roles("dan", "[]").await;
    e.invalidate("acme").await;
    e.refused("PUT", "/api/campaigns/1", "bob", 403, "missing_permission")
        .await;
    e.refused("GET", "/api/campaigns/1", "dan", 403, "missing_permission")
        .await;
}

#[tokio::test]
async fn without_a_publish_a_change_shows_within_cache_ttl() {
    let e = env(Opts {
        ttl: "300ms",
        ..Opts::default()
    })
    .await;
    e.roles("bob", r#"["viewer"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    e.roles("bob", "[]").await;
    let changed = Instant::now();
    // Still cached right after the silent write (proves the cache answers)...
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    // ...and denied once the entry is older than cache_ttl.
    loop {
        let r = e.call("GET", "/api/campaigns/1", "bob").await;
        if r.status == 403 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.raw);
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "change not visible after cache_ttl"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(changed.elapsed() < Duration::from_millis(300 + 500));
}

#[tokio::test]
async fn client_tracking_sees_a_write_without_publish() {
    let e = env(Opts {
        tracking: true,
        ..Opts::default()
    })
    .await;
    assert!(e.store().health().tracking, "CLIENT TRACKING not enabled");
    e.roles("bob", r#"["viewer"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    e.roles("bob", "[]").await; // no PUBLISH; cache_ttl is 60 s
    let start = Instant::now();
    loop {
        let r = e.call("GET", "/api/campaigns/1", "bob").await;
        if r.status == 403 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "tracking did not invalidate"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The tenant hash is tracked too.
    e.roles("bob", r#"["viewer"]"#).await;
    e.invalidate("acme:bob").await;
    e.redis
        .hset("t:acme:user:bob", "grant", r#"["email.send"]"#)
        .await;
    eventually_async("bob may send once the grant is seen", || async {
        e.call("POST", "/api/email/send", "bob").await.reason() == "tier_required"
    })
    .await;
    e.redis.hset("t:acme:tenant", "tier", "growth").await;
    eventually_async("tier change seen without publish", || async {
        e.call("POST", "/api/email/send", "bob").await.status == 200
    })
    .await;
}

#[tokio::test]
async fn outage_serves_cached_reads_until_max_stale_and_never_allows_otherwise() {
    let mut e = env(Opts {
        ttl: "100ms",
        max_stale: "1500ms",
        ..Opts::default()
    })
    .await;
    e.roles("bob", r#"["editor"]"#).await;
    e.roles("carol", r#"["editor"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    let warmed = Instant::now();

    e.redis.kill();
    let store = e.store().clone();
    eventually("store notices the outage", || !store.health().subscribed).await;

    // Cached principal, safe method: served from the stale entry.
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    // Same principal, a write: never from stale grants (stale_for = "reads").
    let t0 = Instant::now();
    e.refused("PUT", "/api/campaigns/1", "bob", 503, "").await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a request waited longer than command_timeout"
    );
    // Uncached principal: nothing to serve.
    e.refused("GET", "/api/campaigns/1", "carol", 503, "").await;

    // Past max_stale the cached principal fails closed too.
    loop {
        let r = e.call("GET", "/api/campaigns/1", "bob").await;
        if r.status == 503 {
            assert_refused(&r, 503, "");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.raw);
        assert!(
            warmed.elapsed() < Duration::from_millis(1500 + 1000),
            "stale entry served beyond max_stale"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(warmed.elapsed() >= Duration::from_millis(1500));
    let before = e.up.count();
    for _ in 0..5 {
        let r = e.call("GET", "/api/campaigns/1", "bob").await;
        assert_refused(&r, 503, "");
    }
    assert_eq!(e.up.count(), before);
}

/// An invalidated entry is known to be wrong: never served, not even stale during an outage,
/// whether the message named the principal or its tenant. Untouched entries still serve reads.
#[tokio::test]
async fn an_invalidated_entry_is_never_served_stale_during_an_outage() {
    let mut e = env(Opts::default()).await;
    e.roles("bob", r#"["editor"]"#).await;
    e.roles("dan", r#"["editor"]"#).await;
    e.redis
        .hset("t:beta:user:erin", "roles", r#"["editor"]"#)
        .await;
    let erin = token("erin", "beta");
    let erin_get = || request(e.gw.addr, "GET", "/api/campaigns/1", Some(&erin), &[]);
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    e.allowed("GET", "/api/campaigns/1", "dan").await;
    assert_eq!(erin_get().await.status, 200);

    e.invalidate("acme:bob").await;
    e.invalidate("beta").await;
    e.redis.kill();
    let store = e.store().clone();
    eventually("store notices the outage", || !store.health().subscribed).await;

    e.refused("GET", "/api/campaigns/1", "bob", 503, "").await;
    let before = e.up.count();
    assert_refused(&erin_get().await, 503, "");
    assert_eq!(e.up.count(), before);
    e.allowed("GET", "/api/campaigns/1", "dan").await;
}

/// A Redis that hangs (SIGSTOP: connected, silent) rather than dies: every request still gets
/// its answer within `command_timeout` (plus scheduling), from a stale entry for a cached
/// principal's read, else 503; nothing is allowed from a missing answer; it recovers on resume.
#[tokio::test]
async fn a_hung_redis_costs_at_most_command_timeout_and_fails_closed() {
    let e = env(Opts {
        ttl: "1ms", // every request after the first asks Redis
        command_timeout: "200ms",
        ..Opts::default()
    })
    .await;
    e.roles("bob", r#"["editor"]"#).await;
    e.roles("carol", r#"["editor"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;

    e.redis.freeze();
    let bound = Duration::from_millis(200 + 800);
    let t = Instant::now();
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    assert!(t.elapsed() < bound, "stale read took {:?}", t.elapsed());
    let t = Instant::now();
    e.refused("PUT", "/api/campaigns/1", "bob", 503, "").await;
    assert!(t.elapsed() < bound, "write refusal took {:?}", t.elapsed());
    let t = Instant::now();
    e.refused("GET", "/api/campaigns/1", "carol", 503, "").await;
    assert!(
        t.elapsed() < bound,
        "uncached refusal took {:?}",
        t.elapsed()
    );

    e.redis.thaw();
    eventually_async("a write is decided from Redis again", || async {
        e.call("PUT", "/api/campaigns/1", "carol").await.status == 200
    })
    .await;
}

#[tokio::test]
async fn a_restarted_redis_is_picked_up_without_restarting_the_gateway() {
    let mut e = env(Opts::default()).await;
    e.roles("bob", r#"["viewer"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;

    e.redis.kill();
    let store = e.store().clone();
    eventually("store notices the outage", || !store.health().subscribed).await;
    e.refused("GET", "/api/campaigns/1", "carol", 503, "").await;

    e.redis.restart().await; // same port, empty
    e.roles("carol", r#"["editor"]"#).await;
    e.wait_ready().await;
    e.allowed("PUT", "/api/campaigns/1", "carol").await;
    // The new server knows nothing of bob: the flush on reconnect means his old grants are
    // re-read, not trusted.
    e.refused("GET", "/api/campaigns/1", "bob", 403, "missing_permission")
        .await;
    // And the subscription is back: a publish on the new server evicts at once.
    e.roles("carol", "[]").await;
    e.invalidate("acme:carol").await;
    e.refused(
        "PUT",
        "/api/campaigns/1",
        "carol",
        403,
        "missing_permission",
    )
    .await;
}

#[tokio::test]
async fn a_gateway_started_while_redis_is_down_fails_closed_then_recovers() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let up = Upstream::start().await;
    let config = CONFIG
        .replace("{REDIS}", &redis.url())
        .replace("{TTL}", "60s")
        .replace("{MAX_STALE}", "5m")
        .replace("{COMMAND_TIMEOUT}", "250ms")
        .replace("{TRACKING}", "true");
    let gw = start_gateway(&config, &up).await;
    let r = request(
        gw.addr,
        "GET",
        "/api/campaigns/1",
        Some(&token("bob", "acme")),
        &[],
    )
    .await;
    assert_refused(&r, 503, "");
    assert_eq!(up.count(), 0);

    redis.restart().await;
    redis
        .hset("t:acme:user:bob", "roles", r#"["viewer"]"#)
        .await;
    let store = gw.gateway.store.redis().unwrap().clone();
    eventually("store recovers", || store.health().ready()).await;
    let r = request(
        gw.addr,
        "GET",
        "/api/campaigns/1",
        Some(&token("bob", "acme")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[tokio::test]
async fn malformed_values_deny_that_principal_and_are_counted() {
    let e = env(Opts::default()).await;
    let errors = || e.store().data_errors();
    e.roles("ok", r#"["editor"]"#).await;

    let cases: [(&str, &str, &str); 6] = [
        ("notjson", "roles", "viewer"),
        ("numbers", "roles", "[1,2]"),
        ("unknownrole", "roles", r#"["viewer","ghost"]"#),
        ("badfield", "rolez", r#"["viewer"]"#),
        ("baddeny", "deny", r#"["camp*"]"#),
        ("badscopes", "scopes", r#"{"a":1}"#),
    ];
    for (subject, field, value) in cases {
        e.roles(subject, r#"["editor"]"#).await;
        e.redis
            .hset(&format!("t:acme:user:{subject}"), field, value)
            .await;
        let before = errors();
        // Writes and reads alike: never a partial grant (`unknownrole` keeps only `viewer`).
        e.refused(
            "PUT",
            "/api/campaigns/1",
            subject,
            403,
            "missing_permission",
        )
        .await;
        assert!(errors() > before, "{subject}: data error not counted");
    }
    // The valid role of `unknownrole` still reads; the malformed principals read nothing.
    e.allowed("GET", "/api/campaigns/1", "unknownrole").await;
    e.refused(
        "GET",
        "/api/campaigns/1",
        "notjson",
        403,
        "missing_permission",
    )
    .await;

    // A key of the wrong type is bad data (403, counted), not an outage (503).
    e.redis.cmd(&["SET", "t:acme:user:str", "x"]).await;
    let before = errors();
    e.refused("GET", "/api/campaigns/1", "str", 403, "missing_permission")
        .await;
    assert!(errors() > before);

    // A broken custom role grants nothing; a broken tenant hash voids the tenant's principals.
    e.redis.hset("t:acme:roles", "broken", "{not json").await;
    e.invalidate("acme").await;
    let before = errors();
    e.refused("GET", "/api/campaigns/1", "ok", 403, "missing_permission")
        .await;
    assert!(errors() > before);
    e.redis.cmd(&["HDEL", "t:acme:roles", "broken"]).await;
    e.invalidate("acme").await;
    // Other principals were never affected once the data is fixed.
    e.allowed("PUT", "/api/campaigns/1", "ok").await;
}

#[tokio::test]
async fn a_hundred_concurrent_cold_requests_make_one_round_trip() {
    let e = env(Opts {
        command_timeout: "3s",
        ..Opts::default()
    })
    .await;
    e.roles("bob", r#"["viewer"]"#).await;
    e.redis.reset_stats().await;
    // Hold Redis busy so the misses pile up behind the first one (they coalesce either way:
    // a late request finds the cached entry).
    let sleeper = {
        let mut con = e.redis.connection().await;
        tokio::spawn(async move {
            let _: ::redis::RedisResult<::redis::Value> = ::redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("0.3")
                .query_async(&mut con)
                .await;
        })
    };
    let t = token("bob", "acme");
    let addr = e.gw.addr;
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(
                async move { request(addr, "GET", "/api/campaigns/1", Some(&t), &[]).await },
            )
        })
        .collect();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    sleeper.await.unwrap();
    assert_eq!(e.up.count(), 100);
    assert_eq!(
        e.redis.calls("hgetall").await,
        3,
        "one pipeline = three HGETALL"
    );
    assert_eq!(e.store().round_trips(), 1);
}

#[tokio::test]
async fn warm_cache_hits_make_zero_redis_calls() {
    let e = env(Opts::default()).await;
    e.roles("bob", r#"["viewer"]"#).await;
    e.allowed("GET", "/api/campaigns/1", "bob").await;
    e.redis.reset_stats().await;
    let trips = e.store().round_trips();
    for _ in 0..50 {
        e.allowed("GET", "/api/campaigns/1", "bob").await;
    }
    assert_eq!(e.redis.calls("hgetall").await, 0);
    assert_eq!(e.store().round_trips(), trips);
}

/// Principals with equal data share one compiled value (memory per cached principal, issue 7);
/// a changed assignment or tenant record is compiled again and never shared with the old one.
#[tokio::test]
async fn principals_with_equal_data_share_compiled_grants_until_it_changes() {
    use std::sync::Arc;
    let e = env(Opts::default()).await;
    for who in ["ann", "bob", "cy"] {
        e.roles(who, r#"["viewer"]"#).await;
    }
    e.roles("dan", r#"["editor"]"#).await;
    let (store, policy) = (e.store(), &e.gw.gateway.snapshot.policy);
    let resolve = |who: &'static str| async move {
        store
            .resolve_grants(policy, "acme", who, portcullis::grants::Access::Read)
            .await
            .unwrap()
    };
    let (ann, bob, cy, dan) = (
        resolve("ann").await,
        resolve("bob").await,
        resolve("cy").await,
        resolve("dan").await,
    );
    assert!(Arc::ptr_eq(&ann, &bob) && Arc::ptr_eq(&bob, &cy));
    assert!(!Arc::ptr_eq(&ann, &dan));
    assert!(Arc::ptr_eq(&ann.tenant, &dan.tenant));
    assert_eq!(store.cached_principals(), 4);

    // Bob's roles change: his new grants are his own, the others keep theirs.
    e.roles("bob", r#"["editor"]"#).await;
    e.invalidate("acme:bob").await;
    let bob2 = resolve("bob").await;
    assert!(!Arc::ptr_eq(&bob2, &ann));
    assert!(Arc::ptr_eq(&bob2, &dan), "now equal to dan's data");
    e.allowed("PUT", "/api/campaigns/1", "bob").await;
    e.refused("PUT", "/api/campaigns/1", "ann", 403, "missing_permission")
        .await;

    // The tenant record changes: everything is compiled again against the new record.
    e.redis.hset("t:acme:tenant", "tier", "growth").await;
    e.invalidate("acme").await;
    let ann2 = resolve("ann").await;
    assert!(!Arc::ptr_eq(&ann2, &ann));
    assert!(!Arc::ptr_eq(&ann2.tenant, &ann.tenant));
    assert!(Arc::ptr_eq(&resolve("cy").await, &ann2));
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[tokio::test]
async fn api_keys_allow_expire_and_refuse_unknown_keys() {
    let e = env(Opts::default()).await;
    e.roles("svc", r#"["editor"]"#).await;
    let live = format!("t:apikey:{}", key_hash("live-key-1"));
    e.redis.hset(&live, "tenant", "acme").await;
    e.redis.hset(&live, "subject", "svc").await;
    e.redis
        .hset(&live, "expires", &(now() + 3600).to_string())
        .await;
    let old = format!("t:apikey:{}", key_hash("old-key-1"));
    e.redis.hset(&old, "tenant", "acme").await;
    e.redis.hset(&old, "subject", "svc").await;
    e.redis
        .hset(&old, "expires", &(now() - 10).to_string())
        .await;

    let call = |headers: Vec<(&'static str, String)>| {
        let addr = e.gw.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(addr, "PUT", "/api/campaigns/1", None, &h).await
        }
    };
    let r = call(vec![("x-api-key", "live-key-1".into())]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.header("x-authz-subject"), Some("svc"));
    assert_eq!(seen.header("x-authz-tenant"), Some("acme"));
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key reached the upstream"
    );
    let r = call(vec![("authorization", "ApiKey live-key-1".into())]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(e.up.last().unwrap().header("authorization"), None);

    let before = e.up.count();
    let r = call(vec![("x-api-key", "old-key-1".into())]).await;
    assert_refused(&r, 401, "token_expired");
    let r = call(vec![("x-api-key", "no-such-key".into())]).await;
    assert_refused(&r, 401, "invalid_token");
    // Two credentials at once are ambiguous.
    let r = call(vec![
        ("x-api-key", "live-key-1".into()),
        ("authorization", format!("Bearer {}", token("svc", "acme"))),
    ])
    .await;
    assert_refused(&r, 401, "invalid_token");
    // Two keys (in any case of the name) are two readings of one credential.
    let r = call(vec![
        ("x-api-key", "live-key-1".into()),
        ("X-Api-Key", "no-such-key".into()),
    ])
    .await;
    assert_refused(&r, 400, "duplicate_header");
    assert_eq!(e.up.count(), before);

    // Revoking the key (DEL + publish for its principal) takes effect on the next request.
    e.redis.cmd(&["DEL", &live]).await;
    e.invalidate("acme:svc").await;
    let r = call(vec![("x-api-key", "live-key-1".into())]).await;
    assert_refused(&r, 401, "invalid_token");
}

/// PUBLISH → first request that sees the change, over many rounds; prints p50/p99.
#[tokio::test]
async fn publish_to_visible_latency() {
    let e = env(Opts::default()).await;
    let mut samples = Vec::new();
    for i in 0..40 {
        let (roles, expect) = if i % 2 == 0 {
            (r#"["viewer"]"#, 200)
        } else {
            ("[]", 403)
        };
        e.roles("bob", roles).await;
        let published = Instant::now();
        e.redis.publish("t:invalidate", "acme:bob").await;
        loop {
            let r = e.call("GET", "/api/campaigns/1", "bob").await;
            if r.status == expect {
                break;
            }
            assert!(published.elapsed() < Duration::from_secs(2));
        }
        samples.push(published.elapsed());
        // Re-warm so the next round starts from a cached entry.
        e.call("GET", "/api/campaigns/1", "bob").await;
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!(
        "publish -> visible: p50 {p50:?}, p99 {p99:?} ({} rounds)",
        samples.len()
    );
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?} over the 100 ms goal"
    );
}

/// Poll an async check until it holds or 5 s pass.
async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `portcullis explain` resolves from the configured Redis, like the gateway.
#[tokio::test]
async fn explain_resolves_from_redis() {
    let mut redis = RedisServer::start().await;
    redis
        .hset("t:acme:user:bob", "roles", r#"["viewer"]"#)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = CONFIG
        .replace("{UPSTREAM}", "127.0.0.1:9")
        .replace("{REDIS}", &redis.url())
        .replace("{TTL}", "30s")
        .replace("{MAX_STALE}", "5m")
        .replace("{COMMAND_TIMEOUT}", "250ms")
        .replace("{TRACKING}", "true");
    std::fs::write(&path, config).unwrap();
    // Blocking is fine here: nothing else runs in this test's runtime.
    let explain = |method: &'static str| {
        let path = path.clone();
        async move {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["explain", "--config"])
                .arg(&path)
                .args(["--tenant", "acme", "--subject", "bob", "--method", method])
                .args(["--path", "/api/campaigns/1"])
                .env("PORTCULLIS_TEST_SECRET", "s3cret")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            serde_json::from_str::<serde_json::Value>(&stdout).unwrap_or_else(|e| {
                panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
            })
        }
    };
    let allow = explain("GET").await;
    assert_eq!(allow["decision"], "allow", "{allow}");
    let deny = explain("PUT").await;
    assert_eq!(
        (deny["status"].as_u64(), deny["reason"].as_str()),
        (Some(403), Some("missing_permission")),
        "{deny}"
    );
    redis.kill();
    let down = explain("GET").await;
    assert_eq!(
        (down["status"].as_u64(), down["reason"].as_str()),
        (Some(503), Some("authorization_unavailable")),
        "{down}"
    );
}

/// `portcullis explain` (the real binary, which connects like the gateway) for `GET
/// /api/campaigns/1` as bob, with `config` and extra environment; its JSON answer.
fn explain_bob(config: &str, env: &[(&str, &str)], unset: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = config
        .replace("{UPSTREAM}", "127.0.0.1:9")
        .replace("{TTL}", "30s")
        .replace("{MAX_STALE}", "5m")
        .replace("{COMMAND_TIMEOUT}", "1s")
        .replace("{TRACKING}", "true");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["explain", "--config"])
        .arg(&path)
        .args(["--tenant", "acme", "--subject", "bob", "--method", "GET"])
        .args(["--path", "/api/campaigns/1"])
        .env("PORTCULLIS_TEST_SECRET", "s3cret");
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn decision(answer: &serde_json::Value) -> (Option<&str>, Option<u64>, Option<&str>) {
    (
        answer["decision"].as_str(),
        answer["status"].as_u64(),
        answer["reason"].as_str(),
    )
}

const ALLOWED: (Option<&str>, Option<u64>, Option<&str>) = (Some("allow"), Some(200), None);
const UNAVAILABLE: (Option<&str>, Option<u64>, Option<&str>) =
    (Some("deny"), Some(503), Some("authorization_unavailable"));

/// An ACL-protected Redis (the default user off): `username` + `password_env`, or credentials in
/// the URL, log the store in; a wrong password is an outage (503), never an allow.
#[tokio::test]
async fn redis_credentials_from_username_and_password_env_or_the_url() {
    let acl: Vec<String> = ["--user", "default", "off", "--user", "gw", "on"]
        .into_iter()
        .chain([">gw-s3cret", "~*", "&*", "+@all"])
        .map(str::to_owned)
        .collect();
    let redis = RedisServer::start_with(&acl, Some("gw:gw-s3cret")).await;
    redis
        .hset("t:acme:user:bob", "roles", r#"["viewer"]"#)
        .await;
    let with_password_env = CONFIG.replace("{REDIS}", &redis.url()).replace(
        "prefix = \"t\"",
        "prefix = \"t\"\nusername = \"gw\"\npassword_env = \"PORTCULLIS_TEST_REDIS_PASSWORD\"",
    );
    let answer = explain_bob(
        &with_password_env,
        &[("PORTCULLIS_TEST_REDIS_PASSWORD", "gw-s3cret")],
        &[],
    );
    assert_eq!(decision(&answer), ALLOWED, "{answer}");
    let answer = explain_bob(
        &with_password_env,
        &[("PORTCULLIS_TEST_REDIS_PASSWORD", "wrong")],
        &[],
    );
    assert_eq!(decision(&answer), UNAVAILABLE, "{answer}");
    // Without credentials the default user is off: no access, fail closed.
    let anonymous = CONFIG.replace("{REDIS}", &redis.url());
    assert_eq!(decision(&explain_bob(&anonymous, &[], &[])), UNAVAILABLE);
    let in_url = CONFIG.replace(
        "{REDIS}",
        &format!("redis://gw:gw-s3cret@127.0.0.1:{}/0", redis.port),
    );
    let answer = explain_bob(&in_url, &[], &[]);
    assert_eq!(decision(&answer), ALLOWED, "{answer}");
}

/// `rediss://`: the store speaks TLS (rustls) to a Redis whose certificate a private CA signed,
/// trusted through the platform's trust store (`SSL_CERT_FILE` here); a certificate the store
/// does not trust is an outage (503), never a plaintext fallback or an allow.
#[tokio::test]
async fn rediss_connects_over_tls_and_refuses_an_untrusted_certificate() {
    let pki = crate::support::edge::Pki::new();
    let (cert, key) = pki.write_server("redis");
    let tls_port = crate::support::redis::free_port();
    let tls: Vec<String> = vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        cert.display().to_string(),
        "--tls-key-file".into(),
        key.display().to_string(),
        "--tls-ca-cert-file".into(),
        pki.ca_path().display().to_string(),
        "--tls-auth-clients".into(),
        "no".into(),
    ];
    // The harness seeds over the plain port; the gateway only knows the TLS one.
    let redis = RedisServer::start_with(&tls, None).await;
    redis
        .hset("t:acme:user:bob", "roles", r#"["viewer"]"#)
        .await;
    let config = CONFIG.replace("{REDIS}", &format!("rediss://localhost:{tls_port}/0"));
    let ca = pki.ca_path().display().to_string();
    let answer = explain_bob(&config, &[("SSL_CERT_FILE", &ca)], &[]);
    assert_eq!(decision(&answer), ALLOWED, "{answer}");
    let answer = explain_bob(&config, &[], &["SSL_CERT_FILE", "SSL_CERT_DIR"]);
    assert_eq!(decision(&answer), UNAVAILABLE, "{answer}");
}
