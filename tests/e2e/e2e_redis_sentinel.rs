//! The Redis grant store through Redis Sentinel, end to end: a master, a replica and three
//! sentinels started by the test on free ports. Decisions come from the master the sentinels
//! name; when it is killed (SIGKILL), the sentinels promote the replica and the gateway follows
//! without a restart (fresh decisions and invalidations from the new master), failing closed
//! while no master is reachable.

use std::time::{Duration, Instant};

use crate::support::redis::{MASTER_NAME, Node, SentinelSetup, wait_for};
use crate::support::*;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity]
kinds = ["jwt"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

[grants]
store = "redis"
cache_ttl = "60s"
max_stale = "5m"
[grants.redis]
sentinels = {SENTINELS}
master_name = "{MASTER}"
prefix = "t"
connect_timeout = "300ms"
command_timeout = "250ms"
client_tracking = true

[roles.viewer]
permissions = ["campaigns.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]

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
"#;

fn config(sentinels: &[String], master: &str) -> String {
    let list: Vec<String> = sentinels.iter().map(|s| format!("\"{s}\"")).collect();
    CONFIG
        .replace("{SENTINELS}", &format!("[{}]", list.join(", ")))
        .replace("{MASTER}", master)
}

struct Env {
    up: Upstream,
    gw: TestGateway,
}

impl Env {
    fn store(&self) -> &portcullis::grants::RedisStore {
        self.gw.gateway.store.redis().expect("redis store")
    }

    async fn call(&self, method: &str, who: &str) -> RawResponse {
        request(
            self.gw.addr,
            method,
            "/api/campaigns/1",
            Some(&token(who, "acme")),
            &[],
        )
        .await
    }

    /// 200 from the upstream, which saw exactly this request.
    async fn allowed(&self, method: &str, who: &str) {
        let before = self.up.count();
        let r = self.call(method, who).await;
        assert_eq!(r.status, 200, "{method} as {who}: {}", r.raw);
        assert_eq!(self.up.count(), before + 1);
        assert_eq!(self.up.last().unwrap().header("x-authz-subject"), Some(who));
    }

    /// Refused by the gateway with this status (and reason, for 403); the upstream saw nothing.
    async fn refused(&self, method: &str, who: &str, status: u16, reason: &str) {
        let before = self.up.count();
        let r = self.call(method, who).await;
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

async fn hset(node: &Node, subject: &str, roles: &str) {
    node.cmd(&["HSET", &format!("t:acme:user:{subject}"), "roles", roles])
        .await;
}

#[tokio::test]
async fn follows_a_sentinel_failover_and_never_allows_without_a_master() {
    let started = Instant::now();
    let mut redis = SentinelSetup::start().await;
    let setup_took = started.elapsed();
    let up = Upstream::start().await;
    let gw = start_gateway(&config(&redis.sentinel_addrs(), MASTER_NAME), &up).await;
    let e = Env { up, gw };
    let store = e.store().clone();
    eventually("connected to the master the sentinels name", || {
        store.health().ready()
    })
    .await;
    assert!(store.health().tracking, "CLIENT TRACKING not enabled");
    assert_eq!(store.masters_connected(), 1);

    // Decisions from data written on the master.
    hset(&redis.master, "bob", r#"["viewer"]"#).await;
    hset(&redis.master, "carol", r#"["editor"]"#).await;
    hset(&redis.master, "dan", r#"["editor"]"#).await;
    e.allowed("GET", "bob").await;
    e.refused("PUT", "bob", 403, "missing_permission").await;
    e.allowed("PUT", "carol").await;
    e.allowed("GET", "carol").await; // cached from here on
    // Revoke + publish on the master: seen on the very next request.
    hset(&redis.master, "bob", "[]").await;
    let before = store.invalidations();
    redis
        .master
        .cmd(&["PUBLISH", "t:invalidate", "acme:bob"])
        .await;
    eventually("the gateway applied the invalidation", || {
        store.invalidations() > before
    })
    .await;
    e.refused("GET", "bob", 403, "missing_permission").await;
    // Everything above is on the replica before the master dies (replication is async).
    let acked = redis.master.cmd(&["WAIT", "1", "2000"]).await;
    assert_eq!(acked, ::redis::Value::Int(1), "replica did not acknowledge");

    // The master crashes.
    redis.master.kill();
    let killed = Instant::now();
    eventually("store notices the lost master", || !store.health().ready()).await;

    // Without a master: the cached reader is served from stale grants; a write by the same
    // principal and an uncached principal are 503 — never allowed.
    e.allowed("GET", "carol").await;
    e.refused("PUT", "carol", 503, "").await;
    e.refused("GET", "dan", 503, "").await;

    // Poll until the gateway answers from the promoted replica. A request made while the
    // replica still says `slave` before and after it (so no master exists: the old one is
    // dead) must be refused.
    // Sentinel's own election retries after 2 x failover-timeout when a vote splits, so
    // allow for two of them on a busy machine; a single run is normally about 2.5 s.
    let deadline = Duration::from_secs(20);
    let mut refused_without_master = 0;
    let mut promoted = None;
    let mut switched = None;
    let replica_port = redis.replica.port.to_string();
    let recovered = loop {
        let no_master_before = redis.replica.role().await.as_deref() == Some("slave");
        let before = e.up.count();
        let r = e.call("PUT", "dan").await;
        let no_master_after = redis.replica.role().await.as_deref() == Some("slave");
        if !no_master_after && promoted.is_none() {
            promoted = Some(killed.elapsed());
        }
        if switched.is_none()
            && format!(
                "{:?}",
                redis.sentinels[0]
                    .try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                    .await
            )
            .contains(&replica_port)
        {
            switched = Some(killed.elapsed());
        }
        if no_master_before && no_master_after {
            assert_refused(&r, 503, "");
            assert_eq!(
                e.up.count(),
                before,
                "allowed while no master was reachable"
            );
            refused_without_master += 1;
        }
        if r.status == 200 {
            break killed.elapsed();
        }
        assert_refused(&r, 503, "");
        assert!(
            killed.elapsed() < deadline,
            "no decision from a new master within {deadline:?} of the crash (replica role: {:?})",
            redis.replica.role().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused_without_master > 0,
        "the outage was never observed: the test proves nothing"
    );
    assert_eq!(redis.replica.role().await.as_deref(), Some("master"));
    eventually("subscribed on the new master", || store.health().ready()).await;
    assert_eq!(store.masters_connected(), 2);
    assert!(
        store.health().tracking,
        "tracking not re-enabled after failover"
    );
    let sentinel_view = redis.sentinels[0]
        .cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
        .await;
    eprintln!(
        "setup {setup_took:?}; master killed -> replica says master after {promoted:?}, \
         sentinel 0 names it after {switched:?}, \
         first allow from it after {recovered:?} ({refused_without_master} requests refused \
         while no master existed); sentinels now name {sentinel_view:?}"
    );

    // Fresh decisions from the new master: data replicated before the crash...
    e.allowed("GET", "dan").await;
    e.refused("GET", "bob", 403, "missing_permission").await;
    e.allowed("PUT", "carol").await;
    // ...and a change written there, with a publish, is seen on the very next request...
    hset(&redis.replica, "carol", r#"["viewer"]"#).await;
    let before = store.invalidations();
    redis
        .replica
        .cmd(&["PUBLISH", "t:invalidate", "acme:carol"])
        .await;
    eventually("the gateway applied the invalidation", || {
        store.invalidations() > before
    })
    .await;
    e.refused("PUT", "carol", 403, "missing_permission").await;
    e.allowed("GET", "carol").await;
    // ...and, through client tracking re-enabled on the new master, even without one.
    hset(&redis.replica, "bob", r#"["viewer"]"#).await;
    wait_for("tracked write seen", Duration::from_secs(2), || async {
        e.call("GET", "bob").await.status == 200
    })
    .await;
    e.allowed("GET", "bob").await;
    eprintln!("total {:?}", started.elapsed());
}

#[tokio::test]
async fn no_reachable_sentinel_means_503_never_allow() {
    // Addresses nobody listens on: the gateway starts, is not ready, and refuses.
    let ports: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("127.0.0.1:{}", l.local_addr().unwrap().port())
        })
        .collect();
    let up = Upstream::start().await;
    let gw = start_gateway(&config(&ports, MASTER_NAME), &up).await;
    let e = Env { up, gw };
    for _ in 0..3 {
        e.refused("GET", "bob", 503, "").await;
        e.refused("PUT", "bob", 503, "").await;
    }
    assert!(!e.store().health().ready());
    assert_eq!(e.store().masters_connected(), 0);
}

#[tokio::test]
async fn an_unknown_master_name_is_refused_not_guessed() {
    let redis = SentinelSetup::start().await;
    let up = Upstream::start().await;
    let gw = start_gateway(&config(&redis.sentinel_addrs(), "othermaster"), &up).await;
    let e = Env { up, gw };
    hset(&redis.master, "bob", r#"["viewer"]"#).await;
    for _ in 0..3 {
        e.refused("GET", "bob", 503, "").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(e.store().masters_connected(), 0);
}
