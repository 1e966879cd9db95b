//! Role management over the admin API (`/v1/tenants/...`) end to end: a gateway with the Redis
//! grant store, its admin listener and a throwaway `redis-server`, all on real sockets. A change
//! made over the API reaches the data plane on the next request and is audited by the running
//! gateway as `role.change`; every refused request leaves Redis and the audit trail as they were.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::support::redis::{RedisServer, wait_for};
use crate::support::{RawResponse, SECRET, Upstream, eventually, request, send_raw, token};
use portcullis::config::AdminToken;
use portcullis::proxy::{Gateway, server};
use portcullis::runtime::Runtime;
use tokio::net::TcpListener;

const TOKEN: &str = "roles-admin-token-0123456789";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["{UPSTREAM}"]

[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

[grants]
store = "{STORE}"

[grants.redis]
url = "{REDIS}"
prefix = "adm"

[roles.viewer]
permissions = ["campaigns.view"]

[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]

[entitlements]
tiers = ["starter", "growth"]

[[routes]]
methods = ["PUT"]
path = "/api/campaigns/{id}"
permission = "campaigns.edit"
upstream = "api"

[[audit.sinks]]
type = "file"
path = "{AUDIT}"
format = "json"
"#;

struct Live {
    addr: SocketAddr,
    admin: SocketAddr,
    gateway: Arc<Gateway>,
    audit: PathBuf,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Live {
    /// The gateway and its admin listener; `token`: `[server] admin_token_env` resolved.
    async fn start(redis: &RedisServer, store: &str, admin_token: Option<&str>) -> Live {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("gateway-audit.jsonl");
        let text = CONFIG
            .replace("{UPSTREAM}", &upstream.addr.to_string())
            .replace("{STORE}", store)
            .replace("{REDIS}", &redis.url())
            .replace("{AUDIT}", audit.to_str().unwrap());
        let path = dir.path().join("gateway.toml");
        let mut snapshot =
            portcullis::config::load_str_with_secret(&text, &path, Some(SECRET)).unwrap();
        snapshot.server.admin_token = admin_token.map(|t| AdminToken(t.to_owned()));
        let gateway = Arc::new(Gateway::build(snapshot).unwrap());
        let runtime = Runtime::new(gateway.clone(), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(server::serve_runtime(
            listener,
            runtime.clone(),
            std::future::pending(),
        ));
        tokio::spawn(portcullis::admin::serve(
            admin_listener,
            runtime,
            std::future::pending(),
        ));
        Live {
            addr,
            admin,
            gateway,
            audit,
            _upstream: upstream,
            _dir: dir,
        }
    }

    /// One admin API request: `token` as the bearer, `actor` as `X-Portcullis-Actor`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        actor: Option<&str>,
        body: Option<&str>,
    ) -> RawResponse {
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(actor) = actor {
            req.push_str(&format!("X-Portcullis-Actor: {actor}\r\n"));
        }
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        send_raw(self.admin, req.as_bytes()).await
    }

    /// An authorized change by `alice`.
    async fn change(&self, method: &str, path: &str, body: Option<&str>) -> RawResponse {
        self.call(method, path, Some(TOKEN), Some("alice"), body)
            .await
    }

    /// Bob's `PUT /api/campaigns/1` on the data plane: its status.
    async fn bob_edits(&self) -> u16 {
        let bob = token("bob", "acme");
        request(self.addr, "PUT", "/api/campaigns/1", Some(&bob), &[])
            .await
            .status
    }

    fn invalidations(&self) -> u64 {
        self.gateway.store.redis().unwrap().invalidations()
    }
}

/// The `role.change` events in the gateway's JSON-lines audit file.
fn role_changes(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "role.change")
        .collect()
}

/// `adm:acme:user:bob`'s `roles` field as stored.
async fn stored_roles(redis: &RedisServer) -> ::redis::Value {
    redis.cmd(&["HGET", "adm:acme:user:bob", "roles"]).await
}

fn error_of(response: &RawResponse) -> (u16, String, String) {
    let body = response.json();
    (
        response.status,
        body["error"].as_str().unwrap_or_default().to_owned(),
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

const BOB: &str = "/v1/tenants/acme/principals/bob";

// Multi-threaded: the gateway's Redis push handler keeps running while a test task waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_changed_over_the_admin_api_reach_the_data_plane_and_are_audited() {
    let redis = RedisServer::start().await;
    let live = Live::start(&redis, "redis", Some(TOKEN)).await;
    let store = live.gateway.store.redis().unwrap();
    eventually("store ready", || store.health().ready()).await;

    assert_eq!(live.bob_edits().await, 403);
    // Cached now: only the invalidation can make the next request see the change.
    assert_eq!(live.bob_edits().await, 403);

    let seen = live.invalidations();
    let res = live
        .change("PATCH", BOB, Some(r#"{"assign": ["editor"]}"#))
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let body = res.json();
    assert_eq!(body["applied"], true);
    assert_eq!(body["change"], "roles +editor");
    assert_eq!(body["before"]["roles"], serde_json::json!([]));
    assert_eq!(body["after"]["roles"], serde_json::json!(["editor"]));
    eventually("invalidation after assign", || live.invalidations() > seen).await;
    assert_eq!(
        live.bob_edits().await,
        200,
        "the next request sees the role"
    );

    let res = live.call("GET", BOB, Some(TOKEN), None, None).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json(),
        serde_json::json!({"tenant": "acme", "subject": "bob", "roles": ["editor"], "grant": [], "deny": [], "scopes": []})
    );

    // The same change again: nothing to do, nothing written, nothing audited.
    let res = live
        .change("PATCH", BOB, Some(r#"{"assign": ["editor"]}"#))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["applied"], false);

    let seen = live.invalidations();
    let res = live
        .change("PATCH", BOB, Some(r#"{"revoke": ["editor"]}"#))
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["change"], "roles -editor");
    eventually("invalidation after revoke", || live.invalidations() > seen).await;
    assert_eq!(live.bob_edits().await, 403, "the next request is denied");

    // The running gateway audited both, with who, what, and the record before and after.
    let user =
        |roles: &[&str]| serde_json::json!({"roles": roles, "grant": [], "deny": [], "scopes": []});
    wait_for("two role.change events", Duration::from_secs(5), || async {
        role_changes(&live.audit).len() >= 2
    })
    .await;
    let changes = role_changes(&live.audit);
    assert_eq!(changes.len(), 2, "{changes:?}");
    for (event, (change, before, after)) in changes.iter().zip([
        ("roles +editor", user(&[]), user(&["editor"])),
        ("roles -editor", user(&["editor"]), user(&[])),
    ]) {
        assert_eq!(event["actor"], "alice");
        assert_eq!(event["tenant"], "acme");
        assert_eq!(event["subject"], "bob");
        assert_eq!(event["change"], change);
        assert_eq!(event["before"], before);
        assert_eq!(event["after"], after);
    }

    // Refused requests change nothing: not Redis, not the audit trail, not the data plane.
    let assign = Some(r#"{"assign": ["editor"]}"#);
    let refused: Vec<(RawResponse, u16, &str)> = vec![
        (
            live.call("PATCH", BOB, None, Some("alice"), assign).await,
            401,
            "unauthenticated",
        ),
        (
            live.call("PATCH", BOB, Some("wrong-token"), Some("alice"), assign)
                .await,
            401,
            "unauthenticated",
        ),
        (
            live.call("PATCH", BOB, Some(TOKEN), None, assign).await,
            400,
            "actor_required",
        ),
        (
            live.call("PATCH", BOB, Some(TOKEN), Some("al ice"), assign)
                .await,
            400,
            "invalid_actor",
        ),
        (
            live.change("PATCH", BOB, Some(r#"{"asign": ["editor"]}"#))
                .await,
            400,
            "invalid_body",
        ),
        (
            live.change("PATCH", BOB, Some(r#"{"assign": "editor"}"#))
                .await,
            400,
            "invalid_body",
        ),
        (
            live.change("PATCH", BOB, Some("{")).await,
            400,
            "invalid_body",
        ),
        (live.change("PATCH", BOB, None).await, 400, "invalid_body"),
        (
            live.change("PATCH", BOB, Some("{}")).await,
            400,
            "invalid_request",
        ),
        (
            live.change("PATCH", BOB, Some(r#"{"assign": ["edtor"]}"#))
                .await,
            400,
            "invalid_request",
        ),
        (
            live.change("PATCH", BOB, Some(r#"{"grant": ["camp*.edit"]}"#))
                .await,
            400,
            "invalid_request",
        ),
        (
            live.change(
                "PATCH",
                BOB,
                Some(r#"{"assign": ["editor"], "revoke": ["editor"]}"#),
            )
            .await,
            400,
            "invalid_request",
        ),
        (
            live.change("PATCH", "/v1/tenants/acme/principals/bob:x", assign)
                .await,
            400,
            "invalid_request",
        ),
        (
            live.change("PATCH", "/v1/tenants/ac*me/principals/bob", assign)
                .await,
            400,
            "invalid_request",
        ),
        (
            live.change("POST", BOB, assign).await,
            405,
            "method_not_allowed",
        ),
        (
            live.change("PATCH", "/v1/tenants/acme/users/bob", assign)
                .await,
            404,
            "not_found",
        ),
    ];
    for (i, (res, status, error)) in refused.iter().enumerate() {
        assert_eq!(
            (res.status, res.json()["error"].as_str().unwrap_or_default()),
            (*status, *error),
            "refused request #{i}: {}",
            res.body
        );
    }
    let (_, _, detail) = error_of(&refused[9].0);
    assert!(detail.contains("did you mean `editor`?"), "{detail}");
    let (_, _, detail) = error_of(&refused[10].0);
    assert!(detail.contains("whole segment"), "{detail}");
    assert_eq!(refused[14].0.header("allow"), Some("GET, PATCH"));
    assert_eq!(
        refused[0].0.header("www-authenticate"),
        Some("Bearer realm=\"portcullis-admin\"")
    );
    assert_eq!(stored_roles(&redis).await, ::redis::Value::Nil);
    assert_eq!(live.bob_edits().await, 403);

    // Tenant custom roles: create, refuse what is wrong, read, clone, reset.
    let publisher = "/v1/tenants/acme/roles/publisher";
    let res = live
        .change(
            "PUT",
            publisher,
            Some(r#"{"permissions": ["campaigns.edit"]}"#),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["change"], "role_create");
    assert_eq!(res.json()["before"], serde_json::Value::Null);
    let res = live
        .change(
            "PUT",
            publisher,
            Some(r#"{"clone_from": "editor", "permissions": ["x.y"]}"#),
        )
        .await;
    assert_eq!(error_of(&res).0, 400);
    let res = live
        .change(
            "PUT",
            "/v1/tenants/acme/roles/editor",
            Some(r#"{"permissions": ["campaigns.edit"]}"#),
        )
        .await;
    assert_eq!(error_of(&res).0, 400);
    assert!(error_of(&res).2.contains("built-in"), "{}", res.body);
    let res = live.call("GET", publisher, Some(TOKEN), None, None).await;
    assert_eq!(
        res.json()["definition"],
        serde_json::json!({"permissions": ["campaigns.edit"], "own": [], "inherits": []})
    );
    let res = live
        .change(
            "PUT",
            "/v1/tenants/acme/roles/copy",
            Some(r#"{"clone_from": "editor"}"#),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        res.json()["after"],
        serde_json::json!({"permissions": ["campaigns.edit"], "own": [], "inherits": ["viewer"]})
    );
    let res = live
        .call("GET", "/v1/tenants/acme/roles", Some(TOKEN), None, None)
        .await;
    let listed = res.json();
    assert_eq!(
        listed["roles"]
            .as_object()
            .map(|r| r.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["copy".to_owned(), "publisher".to_owned()])
    );
    let res = live.change("DELETE", publisher, None).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["change"], "role_reset");
    let res = live.change("DELETE", publisher, None).await;
    assert_eq!(error_of(&res).0, 404);
    let res = live.call("GET", publisher, Some(TOKEN), None, None).await;
    assert_eq!(error_of(&res).0, 404);

    // Entitlements: what is not given is kept; unknown tiers are refused.
    let entitlements = "/v1/tenants/acme/entitlements";
    let res = live
        .change(
            "PATCH",
            entitlements,
            Some(r#"{"tier": "growth", "features": ["reports"]}"#),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = live
        .change("PATCH", entitlements, Some(r#"{"tier": "starter"}"#))
        .await;
    assert_eq!(
        res.json()["after"],
        serde_json::json!({"tier": "starter", "features": ["reports"]})
    );
    let res = live
        .change("PATCH", entitlements, Some(r#"{"tier": "gold"}"#))
        .await;
    assert_eq!(error_of(&res).0, 400);
    assert!(error_of(&res).2.contains("unknown tier `gold`"));
    let res = live
        .call("GET", entitlements, Some(TOKEN), None, None)
        .await;
    assert_eq!(
        res.json(),
        serde_json::json!({"tenant": "acme", "tier": "starter", "features": ["reports"]})
    );

    let audited = 2 + 3 + 2;
    wait_for(
        "every role.change event",
        Duration::from_secs(5),
        || async { role_changes(&live.audit).len() >= audited },
    )
    .await;
    let changes = role_changes(&live.audit);
    assert_eq!(
        changes
            .iter()
            .map(|e| e["change"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        [
            "roles +editor",
            "roles -editor",
            "role_create",
            "role_clone",
            "role_reset",
            "tenant",
            "tenant"
        ]
    );

    // Redis down: 503, nothing audited (and so nothing can have been written).
    let mut redis = redis;
    redis.kill();
    let res = live.change("PATCH", BOB, assign).await;
    let (status, error, _) = error_of(&res);
    assert_eq!((status, error.as_str()), (503, "grant_store_unavailable"));
    assert!(res.header("retry-after").is_some());
    let res = live.call("GET", BOB, Some(TOKEN), None, None).await;
    assert_eq!(error_of(&res).0, 503);
    assert_eq!(role_changes(&live.audit).len(), audited);
}

#[tokio::test]
async fn without_an_admin_token_role_management_is_refused_and_nothing_is_written() {
    let redis = RedisServer::start().await;
    let live = Live::start(&redis, "redis", None).await;
    for (method, path, actor, body) in [
        ("GET", BOB, None, None),
        (
            "PATCH",
            BOB,
            Some("alice"),
            Some(r#"{"assign": ["editor"]}"#),
        ),
        (
            "PUT",
            "/v1/tenants/acme/roles/publisher",
            Some("alice"),
            Some(r#"{"permissions": ["campaigns.edit"]}"#),
        ),
        (
            "PATCH",
            "/v1/tenants/acme/entitlements",
            Some("alice"),
            Some(r#"{"tier": "growth"}"#),
        ),
    ] {
        let res = live.call(method, path, None, actor, body).await;
        let (status, error, detail) = error_of(&res);
        assert_eq!(
            (status, error.as_str()),
            (403, "admin_token_required"),
            "{method} {path}"
        );
        assert!(detail.contains("admin_token_env"), "{detail}");
    }
    assert_eq!(stored_roles(&redis).await, ::redis::Value::Nil);
    assert_eq!(
        redis
            .cmd(&["EXISTS", "adm:acme:roles", "adm:acme:tenant"])
            .await,
        ::redis::Value::Int(0)
    );
    assert!(role_changes(&live.audit).is_empty());
    // The rest of the admin API is unaffected.
    let res = live.call("GET", "/healthz", None, None, None).await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn the_file_store_cannot_be_managed_over_the_admin_api() {
    let redis = RedisServer::start().await;
    let live = Live::start(&redis, "file", Some(TOKEN)).await;
    let res = live
        .change("PATCH", BOB, Some(r#"{"assign": ["editor"]}"#))
        .await;
    let (status, error, detail) = error_of(&res);
    assert_eq!((status, error.as_str()), (409, "store_not_redis"));
    assert!(detail.contains("store = \"redis\""), "{detail}");
    assert!(role_changes(&live.audit).is_empty());
}
