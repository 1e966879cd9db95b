//! The admin API on `[server] admin_listen`, never on the data-plane port (STYLE §2.3).
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | config loaded, grant store reachable, audit spool writable (503 if not) |
//! | `GET /metrics` | Prometheus text (`metrics`) |
//! | `POST /v1/explain` | one `explain --batch` line in; `portcullis explain --format json`'s answer (decision, route, trace) plus `text`, the human trace |
//! | `POST /v1/reload` | reload now (`runtime`); 200 applied or unchanged, 422 rejected |
//! | `GET /v1/config` | active config hash and generation, the last reload error |
//! | `/v1/tenants/{t}/...` | role management, the `portcullis roles` operations (`tenants`) |
//!
//! With `[server] admin_token_env`, every endpoint except the probes (`/healthz`, `/readyz`,
//! which reveal nothing and must work from a kubelet) wants `Authorization: Bearer <token>`,
//! compared in constant time. Without it, role management is refused altogether (fail closed).
//! Responses are JSON except `/metrics`.

mod tenants;

pub use tenants::{ACTOR_HEADER, TenantsApiError};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::cli::ExplainQuery;
use crate::cli::explain::{explain_request, render_text};
use crate::runtime::Runtime;

/// Largest `/v1/explain` and `/v1/tenants` body.
const MAX_BODY: usize = 64 * 1024;

/// Serve the admin API until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "Admin accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let runtime = runtime.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(handle(&runtime, request).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, error: &str) -> AdminResponse {
    json(status, &serde_json::json!({ "error": error }))
}

async fn handle(runtime: &Runtime, request: Request<Incoming>) -> AdminResponse {
    let gateway = runtime.current();
    let path = request.uri().path().to_owned();
    let probe = matches!(path.as_str(), "/healthz" | "/readyz");
    if let Some(token) = &gateway.snapshot.server.admin_token
        && !probe
    {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let ok = presented.is_some_and(|p| bool::from(p.ct_eq(token.0.as_bytes())));
        if !ok {
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthenticated");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
            return response;
        }
    }
    if path.starts_with("/v1/tenants/") || path == "/v1/tenants" {
        return tenants::handle(&gateway, request).await;
    }
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let store = gateway.store.is_ready();
            let spool = gateway.audit.admit().is_ok();
            let ready = store && spool;
            json(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &serde_json::json!({
                    "ready": ready,
                    "checks": {
                        "config": true,
                        "grant_store": store,
                        "audit_spool": spool,
                    },
                    "generation": gateway.generation,
                }),
            )
        }
        (&Method::GET, "/metrics") => {
            let text = gateway.metrics.render(&gateway);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/v1/config") => {
            let snap = &gateway.snapshot;
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "generation": gateway.generation,
                    "sha256": snap.sha256,
                    "source": snap.source.display().to_string(),
                    "files": snap.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                    "loaded_at": gateway.metrics.loaded_at.load(Ordering::Relaxed),
                    "routes": snap.route_entries.len(),
                    "last_error": runtime.last_error(),
                }),
            )
        }
        (&Method::POST, "/v1/reload") => {
            let outcome = runtime.reload("admin").await;
            let status = if outcome.error.is_some() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            json(status, &serde_json::to_value(&outcome).unwrap_or_default())
        }
        (&Method::POST, "/v1/explain") => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            };
            let query: ExplainQuery = match serde_json::from_slice(&body) {
                Ok(query) => query,
                Err(err) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "invalid_query", "detail": err.to_string()}),
                    );
                }
            };
            // The same library call as `portcullis explain --format json`, plus the text trace.
            let explanation = explain_request(&gateway, &query).await;
            let mut value = serde_json::to_value(&explanation).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("text".into(), render_text(&explanation).into());
            }
            json(StatusCode::OK, &value)
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/config" | "/v1/reload" | "/v1/explain") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    }
}
