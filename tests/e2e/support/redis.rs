//! A throwaway `redis-server` per test: a free loopback port, no persistence, killed on drop.
//! Never the shared 6379.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments (ACL users, a TLS port, ...).
    extra: Vec<String>,
    /// `user:password@` for the harness's own connections, when the default user is off.
    auth: String,
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Start on a free port and wait until it answers PING.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[], None).await
    }

    /// Start with extra `redis-server` arguments; `auth` (`user:password`) is what the
    /// harness's own connections (`hset`, `cmd`, ...) log in with.
    pub async fn start_with(extra: &[String], auth: Option<&str>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
            extra: extra.to_vec(),
            auth: auth.map(|a| format!("{a}@")).unwrap_or_default(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): install it (Debian: `apt-get install \
                     redis-server`; `bash .ci/run` does this) — the Redis tests start their own \
                     server on a free port"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut con) = self.try_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come up",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The plain-TCP URL with the harness's credentials (`start_with`'s `auth`).
    fn harness_url(&self) -> String {
        format!("redis://{}127.0.0.1:{}/0", self.auth, self.port)
    }

    /// Kill the server (SIGKILL) and wait for it to exit: an outage, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open and the kernel still accepts new
    /// ones, but nothing answers — a hung Redis, not a dead one. `thaw` resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} redis-server");
    }

    /// Start again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn try_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = redis::Client::open(self.harness_url())?;
        client.get_multiplexed_async_connection().await
    }

    pub async fn connection(&self) -> MultiplexedConnection {
        self.try_connection().await.expect("connect to test redis")
    }

    /// Run one command, panicking on error.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let mut con = self.connection().await;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    pub async fn hset(&self, key: &str, field: &str, value: &str) {
        self.cmd(&["HSET", key, field, value]).await;
    }

    pub async fn publish(&self, channel: &str, payload: &str) {
        self.cmd(&["PUBLISH", channel, payload]).await;
    }

    /// `calls` of one command in `INFO commandstats` (0 when never called).
    pub async fn calls(&self, command: &str) -> u64 {
        let info = match self.cmd(&["INFO", "commandstats"]).await {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("unexpected INFO reply {other:?}"),
        };
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub async fn reset_stats(&self) {
        self.cmd(&["CONFIG", "RESETSTAT"]).await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// === Sentinel: a master, a replica and three sentinels (tests/e2e/e2e_redis_sentinel.rs) ===

/// One `redis-server` process (data node or sentinel) on a loopback port; SIGKILLed on drop.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, args: &[String]) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): install it (Debian: `apt-get install \
                     redis-server`)"
                )
            });
        Node {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL and reap: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command; `Err` when the node is down or refuses it.
    pub async fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut con).await
    }

    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args)
            .await
            .unwrap_or_else(|e| panic!("redis :{} {args:?}: {e}", self.port))
    }

    /// `master`, `slave` or `sentinel` (first element of `ROLE`); `None` if unreachable.
    pub async fn role(&self) -> Option<String> {
        match self.try_cmd(&["ROLE"]).await.ok()? {
            redis::Value::Array(items) => items.first().and_then(|v| match v {
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                redis::Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            }),
            _ => None,
        }
    }

    /// A field of `INFO <section>` (e.g. `master_link_status`).
    pub async fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let text = match self.try_cmd(&["INFO", section]).await.ok()? {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            _ => return None,
        };
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait (polling, up to `limit`) for an async condition.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `master` (the first data node), `replica` (`--replicaof` it) and three sentinels
/// monitoring it as `mymaster` with quorum 2, `down-after-milliseconds 500` and
/// `failover-timeout 2000`. Everything on free loopback ports, killed on drop.
pub struct SentinelSetup {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

pub const MASTER_NAME: &str = "mymaster";

fn data_node_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl SentinelSetup {
    /// Start everything and wait until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels (so a failover can be authorised at once).
    pub async fn start() -> SentinelSetup {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).expect("node dir");
            p
        };
        let master_port = free_port();
        let master = Node::spawn(master_port, &data_node_args(master_port, &sub("master")));
        wait_for("master up", Duration::from_secs(10), || async {
            master.role().await.as_deref() == Some("master")
        })
        .await;
        let replica_port = free_port();
        let mut args = data_node_args(replica_port, &sub("replica"));
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master_port.to_string(),
        ]);
        let replica = Node::spawn(replica_port, &args);
        wait_for("replica in sync", Duration::from_secs(10), || async {
            replica
                .info_field("replication", "master_link_status")
                .await
                .as_deref()
                == Some("up")
        })
        .await;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let sdir = sub(&format!("sentinel{i}"));
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 500\n\
                     sentinel failover-timeout {MASTER_NAME} 2000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = sdir.display()
                ),
            )
            .expect("write sentinel.conf");
            sentinels.push(Node::spawn(
                port,
                &[conf.to_string_lossy().into_owned(), "--sentinel".to_owned()],
            ));
        }
        for s in &sentinels {
            wait_for(
                "sentinel knows the replica and the other sentinels",
                Duration::from_secs(10),
                || async {
                    let master = s.try_cmd(&["SENTINEL", "MASTER", MASTER_NAME]).await;
                    let field = |name: &str| -> Option<String> {
                        let redis::Value::Array(items) = master.as_ref().ok()? else {
                            return None;
                        };
                        let text = |v: &redis::Value| match v {
                            redis::Value::BulkString(b) => {
                                Some(String::from_utf8_lossy(b).into_owned())
                            }
                            redis::Value::SimpleString(s) => Some(s.clone()),
                            _ => None,
                        };
                        items
                            .chunks_exact(2)
                            .find(|kv| text(&kv[0]).as_deref() == Some(name))
                            .and_then(|kv| text(&kv[1]))
                    };
                    field("num-slaves").as_deref() == Some("1")
                        && field("num-other-sentinels").as_deref() == Some("2")
                },
            )
            .await;
        }
        SentinelSetup {
            master,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    /// The sentinels as `[grants.redis] sentinels` entries.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }
}
