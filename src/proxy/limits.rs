//! Request body limits (R11): a declared `Content-Length` over `max_body` is refused with 413
//! before anything is forwarded; a streamed body is counted as it passes and cut off the moment
//! it exceeds the limit, which aborts the upstream request (the upstream never sees a complete
//! oversize request, and the client gets 413 if no response has started).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::respond::Refusal;
use crate::config::LimitsSettings;

/// Refuse a request whose declared length (Content-Length, h1 or h2) is already too large.
pub fn check_declared_length(
    request: &Request<Incoming>,
    limits: &LimitsSettings,
) -> Result<(), Refusal> {
    if request.body().size_hint().lower() > limits.max_body {
        return Err(Refusal::PayloadTooLarge);
    }
    Ok(())
}

/// A streamed request body that failed on its way upstream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("reading the client's body failed: {0}")]
    Client(#[source] hyper::Error),
}

/// The body sent upstream: the client's, counted against `max_body`, or none (a retry of a
/// bodyless request).
#[derive(Debug)]
pub struct LimitedBody {
    inner: Option<Incoming>,
    remaining: u64,
    limit: u64,
    /// Set when the limit trips, for a client whose error does not carry the body's (HTTP/2:
    /// the stream is reset, the response future only sees the reset).
    tripped: Option<Arc<AtomicBool>>,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64) -> LimitedBody {
        LimitedBody {
            inner: Some(inner),
            remaining: limit,
            limit,
            tripped: None,
        }
    }

    pub fn empty() -> LimitedBody {
        LimitedBody {
            inner: None,
            remaining: 0,
            limit: 0,
            tripped: None,
        }
    }

    /// Report the limit tripping through `tripped`.
    pub fn watched(mut self, tripped: Arc<AtomicBool>) -> LimitedBody {
        self.tripped = Some(tripped);
        self
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if n > this.remaining {
                        // Stop reading the client; the error aborts the upstream request.
                        this.inner = None;
                        if let Some(tripped) = &this.tripped {
                            tripped.store(true, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(BodyError::Client(err)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Whether `err` (or anything it wraps) is the body limit tripping.
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if matches!(e.downcast_ref::<BodyError>(), Some(BodyError::TooLarge(_))) {
            return true;
        }
        cur = e.source();
    }
    false
}
