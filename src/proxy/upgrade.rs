//! WebSocket upgrades (security.md §3.14): only on routes with `websocket = true`, only
//! `Upgrade: websocket` on an HTTP/1.1 `GET`, only after the full decision allowed the request,
//! and only when the upstream answered 101 to that same request. Everywhere else `Upgrade` is
//! stripped as hop-by-hop and a 101 is never relayed (`forward`), so nothing can be tunnelled
//! past the decision (h2c smuggling).
//!
//! The tunnel outlives the request, so the decision is not final: it is closed when the
//! principal's grants are invalidated (the Redis store's `Revocation` broadcast, subscribed
//! before the grants were resolved, so a revocation racing the decision is not missed; a
//! lagging subscriber closes too) or when `websocket_max_lifetime` passes.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;

use crate::grants::Revocation;
use crate::metrics::{Metrics, TunnelEnd};
use std::sync::Arc;

/// Is this an HTTP/1.1 WebSocket handshake (`GET`, `Connection: upgrade`, `Upgrade: websocket`)?
pub fn is_websocket_handshake<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && has_token(headers, header::CONNECTION, "upgrade")
        && headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The hop-by-hop pair a WebSocket handshake needs, put back after sanitizing.
pub fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Did the upstream accept a WebSocket upgrade (101 with `Upgrade: websocket`)?
pub fn upstream_accepted(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Who the tunnel belongs to, and how long it may live.
pub struct TunnelGuard {
    pub tenant: String,
    pub subject: String,
    pub revocations: Option<broadcast::Receiver<Revocation>>,
    pub max_lifetime: Duration,
}

/// Bridge the two upgraded connections until either side closes, the grants are revoked, or
/// the lifetime ends. Runs detached from the request.
pub fn spawn_tunnel(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    guard: TunnelGuard,
    metrics: Arc<Metrics>,
) {
    metrics
        .tunnels_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let end = run(downstream, upstream, guard).await;
        metrics.tunnel_closed(end);
    });
}

async fn run(downstream: OnUpgrade, upstream: OnUpgrade, mut guard: TunnelGuard) -> TunnelEnd {
    let (down, up) = match tokio::join!(downstream, upstream) {
        (Ok(down), Ok(up)) => (down, up),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "WebSocket upgrade did not complete.");
            return TunnelEnd::Closed;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let (tenant, subject) = (guard.tenant.clone(), guard.subject.clone());
    let revoked = async {
        let Some(rx) = guard.revocations.as_mut() else {
            return std::future::pending::<()>().await;
        };
        loop {
            match rx.recv().await {
                Ok(r) if r.covers(&tenant, &subject) => return,
                Ok(_) => {}
                // Missed messages might include ours: fail closed.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                // The store is gone (a reload replaced it): nothing can revoke any more.
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    // Dropping both ends closes the TCP connections (no close frame: the gateway does not
    // speak WebSocket, it only carries it).
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "WebSocket tunnel ended with an error.");
            }
            TunnelEnd::Closed
        }
        () = revoked => {
            tracing::info!(tenant = %guard.tenant, subject = %guard.subject, "Grants revoked; closing WebSocket tunnel.");
            TunnelEnd::Revoked
        }
        () = tokio::time::sleep(guard.max_lifetime) => {
            tracing::info!(tenant = %guard.tenant, subject = %guard.subject, "WebSocket tunnel reached its max lifetime; closing.");
            TunnelEnd::Lifetime
        }
    }
}
