//! Edge-test harness: a PKI generated in the test (rcgen), a TLS client (tokio-rustls +
//! hyper's client connections, h1 or h2), an upstream that can be gated, killed, spoken to
//! over h2 or TLS, and a gateway whose shutdown the test triggers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

use portcullis::proxy::{Gateway, server};

/// Process-wide rustls provider, once per test binary (crates.md §7).
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// === PKI ===

/// A throwaway CA that issues server and client certificates into a temp directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        init_crypto();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.ca_path(), pki.ca.pem()).unwrap();
        pki
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn issue(&self, cn: &str, client: bool) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issue a server certificate for `localhost`/`127.0.0.1` named `cn`, written to
    /// `server.pem`/`server.key` (overwriting: this is how a renewal looks on disk).
    pub fn write_server(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(cn, false);
        let (cp, kp) = (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        );
        // Key first, then cert: the reloader may see a mismatched pair in between and must
        // keep the old one until the cert lands.
        std::fs::write(&kp, key).unwrap();
        std::fs::write(&cp, cert).unwrap();
        (cp, kp)
    }

    pub fn client_identity(
        &self,
        cn: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = self.issue(cn, true);
        (
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A rustls server config for a TLS upstream, with the given ALPN.
    pub fn upstream_server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = self.issue("upstream", false);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

// === TLS client ===

/// Connect with TLS to `addr` as `localhost`, offering `alpn`, optionally with a client cert.
pub async fn tls_connect(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One response, body collected.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Send one request over `io` with HTTP/1.1 or HTTP/2 (prior knowledge or ALPN).
pub async fn send<S>(io: S, h2: bool, request: Request<Full<Bytes>>) -> Result<Answer, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        sender.send_request(request).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        sender.send_request(request).await?
    };
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// `GET path` with an absolute URI (h2 needs the authority).
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

// === upstream ===

/// One request as the edge upstream saw it, recorded only once its body was read completely.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: Version,
    /// The request target's authority (HTTP/2: `:authority`).
    pub authority: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// How the edge upstream speaks.
#[derive(Clone)]
pub enum Speak {
    H1,
    H2,
    Tls(Arc<rustls::ServerConfig>),
}

/// A recording upstream. Requests to `/slow…` wait for `release`; `kill` stops accepting and
/// drops every open connection, like a crashed process.
#[derive(Clone)]
pub struct EdgeUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Request heads received (counted before the body is read or a gate is waited on).
    pub heads: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    kill: Arc<watch::Sender<bool>>,
}

impl EdgeUpstream {
    pub async fn start(speak: Speak) -> EdgeUpstream {
        Self::serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), speak)
    }

    /// A new upstream on the address a killed one had (its listener may take a moment to go).
    pub async fn start_at(addr: SocketAddr, speak: Speak) -> EdgeUpstream {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve_on(listener, speak),
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{addr} still taken: {e}"),
            }
        }
    }

    fn serve_on(listener: TcpListener, speak: Speak) -> EdgeUpstream {
        let (kill, killed) = watch::channel(false);
        let up = EdgeUpstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            heads: Arc::default(),
            connections: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            kill: Arc::new(kill),
        };
        let this = up.clone();
        tokio::spawn(async move {
            let mut killed_accept = killed.clone();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                    _ = killed_accept.wait_for(|k| *k) => return,
                };
                this.connections.fetch_add(1, Ordering::SeqCst);
                let this = this.clone();
                let speak = speak.clone();
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = this.clone().serve(stream, speak) => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        up
    }

    async fn serve(self, stream: TcpStream, speak: Speak) {
        let service = service_fn(move |req: Request<Incoming>| {
            let this = self.clone();
            async move {
                this.heads.fetch_add(1, Ordering::SeqCst);
                if req.uri().path().starts_with("/slow")
                    && let Ok(permit) = this.gate.acquire().await
                {
                    permit.forget();
                }
                let stream = req.uri().path() == "/stream";
                let (parts, body) = req.into_parts();
                if let Ok(body) = body.collect().await {
                    this.seen.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_owned(),
                        version: parts.version,
                        authority: parts.uri.authority().map(|a| a.to_string()),
                        headers: parts.headers,
                        body: body.to_bytes(),
                    });
                }
                let body: UnsyncBoxBody<Bytes, Infallible> = if stream {
                    GatedBody {
                        wait: Some(Box::pin(async move {
                            if let Ok(permit) = this.gate.acquire().await {
                                permit.forget();
                            }
                        })),
                    }
                    .boxed_unsync()
                } else {
                    Full::new(Bytes::from_static(b"upstream ok")).boxed_unsync()
                };
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        match speak {
            Speak::H1 => {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            Speak::H2 => {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            Speak::Tls(config) => {
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Let `n` gated `/slow` requests answer.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn kill(&self) {
        let _ = self.kill.send(true);
    }
}

/// A response body that sends `upstream ok` only once the gate lets it (`/stream`): the head
/// is out at once, the body is held open.
struct GatedBody {
    wait: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl hyper::body::Body for GatedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let Some(wait) = self.wait.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match wait.as_mut().poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(()) => {
                self.wait = None;
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                    b"upstream ok",
                )))))
            }
        }
    }
}

// === gateway ===

/// A gateway whose shutdown the test triggers through the future passed to `server::serve`.
pub struct EdgeGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<()>,
}

impl EdgeGateway {
    /// Config text with `{UPSTREAM}`/`{UPSTREAM2}` replaced; relative paths resolve in `dir`.
    pub async fn start(config: &str, dir: &Path) -> EdgeGateway {
        init_crypto();
        let snapshot = portcullis::config::load_str_with_secret(
            config,
            &dir.join("gateway.toml"),
            Some(super::SECRET),
        )
        .unwrap_or_else(|errors| panic!("test config invalid:\n{errors}"));
        let gateway = Arc::new(Gateway::build(snapshot).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server::serve(listener, gateway.clone(), async move {
            let _ = stopped.await;
        }));
        EdgeGateway {
            addr,
            gateway,
            stop: Some(stop),
            served,
        }
    }

    /// Start graceful shutdown (stop accepting, drain).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A minimal gateway config: public `GET /health`, `/slow` (gated answer), `/stream` (gated
/// body), `/api/items` (any method,
/// permission `items.edit`, user `ed`), upstream `api` with `targets`, plus `extra` sections.
pub fn config(targets: &[String], upstream_extra: &str, extra: &str) -> String {
    let targets = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = [{targets}]
{upstream_extra}

[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_TEST_SECRET"

[grants]
store = "file"

[roles.editor]
permissions = ["items.edit"]

[[routes]]
methods = ["GET", "HEAD", "OPTIONS"]
path = "/health"
public = true
upstream = "api"

[[routes]]
methods = ["GET"]
path = "/slow"
public = true
upstream = "api"

[[routes]]
methods = ["GET"]
path = "/stream"
public = true
upstream = "api"

[[routes]]
methods = ["GET", "POST", "PUT", "DELETE"]
path = "/api/items"
permission = "items.edit"
upstream = "api"

[[assignments]]
tenant = "acme"
subject = "ed"
roles = ["editor"]
{extra}
"#
    )
}
