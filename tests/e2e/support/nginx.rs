//! A throwaway nginx per test, for interoperability with a real, strict HTTP server: a free
//! loopback port, the test's own config and temp dir, one process (`master_process off`),
//! killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Start nginx with `http` as the body of its `http { }` block; `{port}` in it is replaced
    /// by the port it listens on. Waits until the port accepts connections.
    pub async fn start(http: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log {log} info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  \
             fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n{body}\n}}\n",
            pid = path("nginx.pid"),
            log = path("error.log"),
            tmp = path("tmp"),
            body = http.replace("{port}", &port.to_string()),
        );
        std::fs::create_dir_all(dir.path().join("tmp")).expect("nginx temp dir");
        std::fs::write(dir.path().join("nginx.conf"), config).expect("nginx.conf");
        // Debian keeps it in /usr/sbin, which a non-root PATH may lack.
        let binary = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("-v")
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "cannot find `nginx`: install it (Debian: `apt-get install nginx`; `bash \
                     .ci/run` does this) — the interoperability tests start their own on a free \
                     port"
                )
            });
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(path("error.log"))
            .arg("-c")
            .arg(path("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen:\n{}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nginx
    }

    /// What nginx logged (`info` and above): why it refused a request.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
