//! The HTTP/2 upstream client (`protocol = "http2"`): one multiplexed connection per target,
//! opened on first use and replaced once the upstream closes it (GOAWAY, idle close, error).
//!
//! Why not hyper-util's pooled client: it takes the connection's address from the request URI,
//! so `:authority` had to be the target's address, with the client's `Host` sent beside it as a
//! header. RFC 9113 §8.3.1 lets a server refuse that, and nginx does (400, "duplicate host
//! header"): every request failed. Here the connection is picked by target and `:authority`
//! carries the client's `Host`, with no `host` field, as Envoy forwards it.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::forward::Connector;
use super::limits::LimitedBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often one request goes again after closing connections gave it back unsent: a bound
/// for an upstream that closes every connection at once.
const MAX_UNSENT: u32 = 3;

/// Why a request got no response over HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    /// No connection: TCP connect, TLS or the HTTP/2 preface failed. The request never left.
    #[error("connect failed: {0}")]
    Connect(BoxError),
    /// The upstream did not process the request: its stream was above a GOAWAY's last stream
    /// or reset with REFUSED_STREAM (RFC 9113 §8.7). It may go again.
    #[error("request refused, not processed: {source}")]
    Refused {
        /// By a GOAWAY: the connection takes no new streams.
        going_away: bool,
        #[source]
        source: hyper::Error,
    },
    /// The request was sent (or may have been) and failed: never retried.
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

impl H2Error {
    fn from_response(err: hyper::Error) -> H2Error {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cause {
            if let Some(e) = e.downcast_ref::<h2::Error>() {
                // A remote GOAWAY reaches only the streams it did not process (and any opened
                // after it); an EOF or I/O error later is another kind.
                if e.is_remote()
                    && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
                {
                    return H2Error::Refused {
                        going_away: e.is_go_away(),
                        source: err,
                    };
                }
                break;
            }
            cause = e.source();
        }
        H2Error::Request(err)
    }
}

/// One target's connection.
pub struct Slot {
    /// The target's address as a URI, for the connector (built once, at config load).
    dial: Uri,
    current: ArcSwapOption<SendRequest<LimitedBody>>,
    /// Held while connecting, so a burst of first requests opens one connection, not many.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    pub fn new(dial: Uri) -> Slot {
        Slot {
            dial,
            current: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn live(&self) -> Option<Arc<SendRequest<LimitedBody>>> {
        self.current.load_full().filter(|s| !s.is_closed())
    }

    /// The live connection, or a new one.
    async fn sender(
        &self,
        connector: &Connector,
    ) -> Result<Arc<SendRequest<LimitedBody>>, H2Error> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let mut connector = connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(H2Error::Connect)?;
        let io = connector
            .call(self.dial.clone())
            .await
            .map_err(H2Error::Connect)?;
        let (sender, connection) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| H2Error::Connect(Box::new(e)))?;
        let target = self.dial.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%target, %error, "Upstream HTTP/2 connection ended.");
            }
        });
        let sender = Arc::new(sender);
        self.current.store(Some(sender.clone()));
        Ok(sender)
    }

    /// Send `request` over the target's connection. A request a closing connection gave back
    /// unsent goes again on a new one (at most `MAX_UNSENT` times).
    pub async fn send(
        &self,
        connector: &Connector,
        mut request: Request<LimitedBody>,
    ) -> Result<Response<Incoming>, H2Error> {
        let mut unsent = 0;
        loop {
            let shared = self.sender(connector).await?;
            let mut sender = (*shared).clone();
            let mut failed = match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            if let Some(back) = failed.take_message()
                && unsent < MAX_UNSENT
            {
                tracing::debug!(target = %self.dial, error = %failed.error(), "Upstream HTTP/2 connection closed before the request; reconnecting.");
                unsent += 1;
                self.forget(shared);
                request = back;
                continue;
            }
            let error = H2Error::from_response(failed.into_error());
            if let H2Error::Refused {
                going_away: true, ..
            } = error
            {
                // The connection takes no new streams: the next request opens another.
                self.forget(shared);
            }
            return Err(error);
        }
    }

    /// Drop `closing` from the slot unless another request has already replaced it.
    fn forget(&self, closing: Arc<SendRequest<LimitedBody>>) {
        let _ = self.current.compare_and_swap(&Some(closing), None);
    }
}

/// The request URI for HTTP/2: `:authority` from the client's `Host` (removed from the
/// fields), or the target's when there is none or it is not a valid authority.
pub fn request_uri(
    scheme: Scheme,
    headers: &mut HeaderMap,
    target: &Authority,
    path_and_query: PathAndQuery,
) -> Result<Uri, http::Error> {
    let authority = headers
        .remove(http::header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| target.clone());
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_for(host: Option<&str>) -> (Uri, HeaderMap) {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(http::header::HOST, host.parse().unwrap());
        }
        headers.insert("accept", "*/*".parse().unwrap());
        let uri = request_uri(
            Scheme::HTTP,
            &mut headers,
            &Authority::from_static("10.0.0.7:8080"),
            PathAndQuery::from_static("/a/b?c=d"),
        )
        .unwrap();
        (uri, headers)
    }

    #[test]
    fn the_clients_host_becomes_the_authority_and_leaves_the_fields() {
        let (uri, headers) = uri_for(Some("api.example.com"));
        assert_eq!(uri, "http://api.example.com/a/b?c=d");
        assert!(headers.get(http::header::HOST).is_none());
        assert_eq!(headers.len(), 1, "other fields stay");
    }

    #[test]
    fn without_a_usable_host_the_target_is_the_authority() {
        assert_eq!(uri_for(None).0, "http://10.0.0.7:8080/a/b?c=d");
        // Not an authority (a space): never sent as one.
        let (uri, headers) = uri_for(Some("bad host"));
        assert_eq!(uri, "http://10.0.0.7:8080/a/b?c=d");
        assert!(headers.get(http::header::HOST).is_none());
    }
}
