//! The public listener: accept (bounded by `max_connections`), optional TLS, HTTP/1.1 + h2
//! (hyper-util auto), per-connection request limits, CORS response headers, graceful shutdown.
//!
//! Every connection task holds one permit of the connection semaphore from accept to close.
//! That one semaphore both bounds concurrent connections (when it is empty the loop stops
//! accepting and the kernel backlog holds newcomers) and tells shutdown when the drain is
//! done: all permits back means no connection is left.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

use super::pipeline::{ConnInfo, Gateway, handle};
use super::{cors, tls};
use crate::config::LimitsSettings;
use crate::runtime::Runtime;

/// Serve a fixed gateway (no reload) until `shutdown` resolves; see `serve_runtime`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    serve_runtime(listener, Runtime::new(gateway, None), shutdown).await;
}

/// Serve until `shutdown` resolves, then stop accepting and drain in-flight requests for up
/// to `[limits] shutdown_timeout`. Connection-level settings (`[limits]`, TLS) are the first
/// generation's: a reload never re-binds or re-tunes the listener.
pub async fn serve_runtime(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    let gateway = runtime.current();
    let limits = gateway.snapshot.limits.clone();
    let builder = Arc::new(http_builder(&limits));
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let connections = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let reload = gateway.tls.as_ref().map(tls::Terminator::spawn_watch);
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot before accepting: beyond `max_connections` clients queue in
        // the kernel backlog instead of costing a task and buffers.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let runtime = runtime.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let header_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let conn = ConnInfo {
                peer,
                tls: gateway.tls.is_some(),
                client_cert_subject: None,
            };
            match gateway.tls.clone() {
                None => serve_connection(runtime, builder, stream, conn, stop).await,
                Some(terminator) => {
                    // The handshake counts against the header timeout: a client that stalls
                    // it is a slowloris too.
                    let accepted =
                        tokio::time::timeout(header_timeout, terminator.acceptor.accept(stream))
                            .await;
                    let stream = match accepted {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(peer = %peer, error = %err, "TLS handshake failed.");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = ConnInfo {
                        client_cert_subject: tls::client_subject(stream.get_ref().1),
                        ..conn
                    };
                    serve_connection(runtime, builder, stream, conn, stop).await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if let Some(reload) = reload {
        reload.abort();
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(limits.shutdown_timeout, connections.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("Drain deadline passed; closing remaining connections.");
    }
}

/// hyper's per-connection knobs from `[limits]`. Timeouts need the timer (without it hyper
/// ignores `header_read_timeout`, and there is no slowloris protection).
fn http_builder(limits: &LimitsSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(64);
    builder
}

/// Per connection: requests served so far, and the signal that the last one was served.
struct ConnState {
    served: AtomicU64,
    done: Notify,
}

/// Serve one connection until it closes, shutting it down gracefully (finish in-flight
/// requests, then close; GOAWAY on h2) on server shutdown or after
/// `max_requests_per_connection`.
async fn serve_connection<I>(
    runtime: Arc<Runtime>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    conn: ConnInfo,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_requests = runtime
        .current()
        .snapshot
        .limits
        .max_requests_per_connection;
    let state = Arc::new(ConnState {
        served: AtomicU64::new(0),
        done: Notify::new(),
    });
    let service = {
        let state = state.clone();
        service_fn(move |request: Request<Incoming>| {
            // INVARIANT: one load per request; the request keeps this generation to the end
            // (a reload meanwhile only affects later requests).
            let gateway = runtime.current();
            let conn = conn.clone();
            let state = state.clone();
            async move {
                let version = request.version();
                let served = state.served.fetch_add(1, Ordering::Relaxed) + 1;
                let last = max_requests.is_some_and(|max| served >= max);
                let cors = gateway.snapshot.cors.as_ref().map(|c| {
                    let origin = request.headers().get(header::ORIGIN).cloned();
                    (c, origin, cors::is_preflight(&request))
                });
                let mut response = handle(gateway.clone(), request, conn).await;
                if let Some((settings, origin, false)) = &cors {
                    cors::decorate(settings, origin.as_ref(), &mut response);
                }
                if last {
                    if version < Version::HTTP_2 {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    state.done.notify_one();
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    // With upgrades: a websocket route's 101 must complete (`proxy::upgrade`); every other
    // route strips `Upgrade` and never answers 101, so nothing else can be tunnelled.
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "Connection ended with an error.");
                }
                break;
            }
            changed = stop.wait_for(|stop| *stop), if !closing => {
                let _ = changed;
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = state.done.notified(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
