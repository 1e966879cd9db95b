//! The HTTP/1.1 fast path: a complete request head without a body, in the bytes already read,
//! is parsed here with `httparse` and its response written straight to the socket, without
//! building a hyper connection for it (its buffers, timer, dispatcher and encoder cost more CPU
//! per request than the gateway's own work; issue 7).
//!
//! Only the plainest requests qualify; everything else goes to hyper with the same bytes, so
//! hyper's own parsing and errors apply to it unchanged: a partial head, HTTP/1.0, any body
//! framing (`Content-Length`, `Transfer-Encoding`), `Expect`, `Upgrade`, a `Connection` header
//! other than `keep-alive`, `CONNECT`, a target that is not origin-form, more headers than
//! `FAST_HEADERS`, a head over `max_header_bytes`, or a name or value `http` refuses. The
//! parser is hyper's (`httparse`, default strict configuration), and a qualifying request has
//! exactly one reading: no body, so nothing after the head can be smuggled into it.
//!
//! Responses follow hyper's server encoding: `date` added, `Content-Length` kept or taken
//! from an exact body size, otherwise chunked; no body for `HEAD`, 204 and 304. A body that
//! ends short of (or runs past) its `Content-Length`, or fails, closes the connection.

use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::idle::ConnState;
use super::limits::ClientBody;
use super::pipeline::ConnInfo;
use super::respond::Body;
use crate::config::LimitsSettings;
use crate::runtime::Runtime;

/// Heads with more headers than this go to hyper (which applies `max_headers`).
const FAST_HEADERS: usize = 48;
/// A body frame up to this size is copied behind the head (one write); larger ones are written
/// from where they are, next to it.
const COPY_BELOW: usize = 4096;

/// What the fast path did with a connection's bytes.
pub(super) enum Outcome<I> {
    /// Served one request; the connection stays open. The bytes after its head (the start
    /// of a pipelined request; usually empty).
    Served(I, Bytes),
    /// Not for the fast path: hyper gets the connection and these bytes, unread.
    Hyper(I, Bytes),
    /// Served with `Connection: close`, or the write failed: the connection is done.
    Closed(I),
}

/// What the fast path needs of the connection.
pub(super) struct Conn<'a> {
    pub runtime: &'a Arc<Runtime>,
    pub limits: &'a LimitsSettings,
    pub conn: &'a ConnInfo,
    pub state: &'a ConnState,
    /// The server is shutting down: answer with `Connection: close`.
    pub stopping: bool,
}

/// Serve the request at the start of `bytes` if it qualifies (see the module doc).
pub(super) async fn serve<I>(mut io: I, bytes: Bytes, conn: Conn<'_>) -> Outcome<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Some((request, head_len)) = parse(&bytes, conn.limits) else {
        return Outcome::Hyper(io, bytes);
    };
    let rest = bytes.slice(head_len..);
    drop(bytes);
    let head_request = request.method() == Method::HEAD;
    let served = conn.state.request_started();
    let last = conn
        .limits
        .max_requests_per_connection
        .is_some_and(|max| served >= max);
    let gateway = conn.runtime.current();
    let response = super::server::respond(gateway, request, conn.conn.clone(), last).await;
    let close = last
        || conn.stopping
        || response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    match write_response(&mut io, response, head_request, close).await {
        Ok(true) if !close => Outcome::Served(io, rest),
        Ok(_) => Outcome::Closed(io),
        Err(err) => {
            tracing::debug!(error = %err, "Writing a response failed.");
            Outcome::Closed(io)
        }
    }
}

/// The request at the start of `bytes` and the length of its head, if it qualifies.
fn parse(bytes: &Bytes, limits: &LimitsSettings) -> Option<(Request<ClientBody>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; FAST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) | Err(_) => return None,
    };
    if head_len > limits.max_header_bytes
        || req.version != Some(1)
        || req.headers.len() > limits.max_headers
    {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let target = req.path?;
    if method == Method::CONNECT || !target.starts_with('/') {
        return None;
    }
    let uri = Uri::from_maybe_shared(bytes.slice_ref(target.as_bytes())).ok()?;
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONNECTION && !h.value.eq_ignore_ascii_case(b"keep-alive"))
        {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value)).ok()?;
        map.append(name, value);
    }
    let mut request = Request::new(ClientBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Some((request, head_len))
}

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Write the head into `out`; returns the body's framing.
fn encode_head(
    response: &Response<Body>,
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Framing {
    let status = response.status();
    let headers = response.headers();
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // One parseable value, or none: anything else is not a length to frame by.
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let declared = match (lengths.next(), lengths.next()) {
        (Some(v), None) => v.to_str().ok().and_then(|v| v.parse::<u64>().ok()),
        _ => None,
    };
    let framing = if no_body {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = response.body().size_hint().exact() {
        Framing::Length(n)
    } else {
        Framing::Chunked
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // The framing is ours to write: never the upstream's transfer coding, never a length
        // that is not the one framed by (or on a 204).
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH
                && (declared.is_none() || status == StatusCode::NO_CONTENT))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) if declared.is_none() => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if close && !headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Write `response`; `Ok(false)` when its body did not match its framing (or failed), so the
/// connection cannot carry another response.
async fn write_response<I>(
    io: &mut I,
    response: Response<Body>,
    head_request: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(512);
    let framing = encode_head(&response, head_request, close, &mut out);
    let mut body = response.into_body();
    if framing == Framing::None {
        io.write_all(&out).await?;
        io.flush().await?;
        return Ok(true);
    }
    let mut sent: u64 = 0;
    let complete = loop {
        // The head (and small frames) wait in `out` only while the next frame is ready: a body
        // that is not yet there gets the head sent first, as hyper does.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
            .await
        {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(&out).await?;
                    io.flush().await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break true,
            Some(Err(err)) => {
                tracing::debug!(error = %err, "Response body failed; closing the connection.");
                break false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not sent (nor by hyper unless the client asked with `TE: trailers`).
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        let n = data.len() as u64;
        if let Framing::Length(len) = framing
            && sent + n > len
        {
            tracing::debug!(
                "Response body longer than its Content-Length; closing the connection."
            );
            break false;
        }
        sent += n;
        if framing == Framing::Chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() < COPY_BELOW {
            out.extend_from_slice(&data);
        } else {
            write_two(io, &out, &data).await?;
            out.clear();
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    };
    let complete = complete
        && match framing {
            Framing::Length(len) => sent == len,
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Framing::None => true,
        };
    if !out.is_empty() {
        io.write_all(&out).await?;
    }
    io.flush().await?;
    Ok(complete)
}

/// Write `a` then `b`, in one system call when the socket takes both.
async fn write_two<I: AsyncWrite + Unpin>(io: &mut I, a: &[u8], b: &[u8]) -> io::Result<()> {
    let n = io
        .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
        .await?;
    if n == 0 && !(a.is_empty() && b.is_empty()) {
        return Err(io::ErrorKind::WriteZero.into());
    }
    if n < a.len() {
        io.write_all(&a[n..]).await?;
        io.write_all(b).await
    } else {
        io.write_all(&b[n - a.len()..]).await
    }
}

/// The `date` header value, formatted once per second per thread (as hyper caches it).
fn date(f: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, httpdate::fmt_http_date(now));
        }
        f(cache.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Frame;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::proxy::Gateway;

    fn limits() -> LimitsSettings {
        LimitsSettings::default()
    }

    fn parses(head: &str) -> bool {
        parse(&Bytes::copy_from_slice(head.as_bytes()), &limits()).is_some()
    }

    #[test]
    fn only_plain_bodyless_http11_heads_take_the_fast_path() {
        let ok = "GET /a/b?q=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n";
        assert!(parses(ok));
        assert!(parses(
            "DELETE /a HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n"
        ));
        let (request, len) = parse(&Bytes::from_static(ok.as_bytes()), &limits()).unwrap();
        assert_eq!(len, ok.len());
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?q=1");
        assert_eq!(request.headers()["authorization"], "Bearer t");
        assert!(request.body().is_end_stream());
        // Everything hyper must see for itself.
        for head in [
            "GET /a HTTP/1.1\r\nHost: x\r\n",
            "GET /a HTTP/1.0\r\nHost: x\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        ] {
            assert!(!parses(head), "took the fast path: {head:?}");
        }
        let many: String = (0..FAST_HEADERS + 1)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect();
        assert!(!parses(&format!(
            "GET /a HTTP/1.1\r\nHost: x\r\n{many}\r\n"
        )));
        let tight = LimitsSettings {
            max_header_bytes: 30,
            ..limits()
        };
        let head = Bytes::from_static(b"GET /a HTTP/1.1\r\nHost: a-long-host-name\r\n\r\n");
        assert!(parse(&head, &tight).is_none());
    }

    fn response(status: u16, headers: &[(&str, &str)], body: Body) -> Response<Body> {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    fn full(bytes: &'static str) -> Body {
        Full::new(Bytes::from_static(bytes.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    }

    /// A body of `chunks` without a known length.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = super::super::respond::BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn streamed(chunks: &[&'static str]) -> Body {
        Chunks(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        )
        .boxed()
    }

    async fn written(response: Response<Body>, head: bool, close: bool) -> (String, bool) {
        let mut out = Vec::new();
        let complete = write_response(&mut out, response, head, close)
            .await
            .unwrap();
        // The date changes; everything else is exact.
        let text = String::from_utf8(out).unwrap();
        let text: String = text
            .split("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n");
        (text, complete)
    }

    #[tokio::test]
    async fn responses_are_framed_as_hyper_frames_them() {
        let (text, ok) = written(response(200, &[("x-a", "1")], full("hello")), false, false).await;
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(ok);
        let (text, ok) = written(response(200, &[], streamed(&["hel", "lo!"])), false, false).await;
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n3\r\nlo!\r\n0\r\n\r\n"
        );
        assert!(ok);
        // The upstream's own length is kept (and trusted only as far as the body matches it).
        let cl = [("content-length", "6")];
        let (text, ok) = written(response(200, &cl, streamed(&["hel", "lo!"])), false, true).await;
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nhello!"
        );
        assert!(ok);
        let (_, ok) = written(response(200, &cl, streamed(&["hel", "lo"])), false, false).await;
        assert!(!ok, "a short body must end the connection");
        let (_, ok) = written(response(200, &cl, streamed(&["hel", "lo!!"])), false, false).await;
        assert!(!ok, "a long body must end the connection");
        // No body on HEAD (its length stays), 204 and 304; never a transfer coding of the upstream.
        let (text, ok) = written(response(200, &cl, full("hello!")), true, false).await;
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n");
        assert!(ok);
        let (text, _) = written(response(204, &cl, full("")), false, false).await;
        assert_eq!(text, "HTTP/1.1 204 No Content\r\n\r\n");
        let te = [("transfer-encoding", "chunked")];
        let (text, _) = written(response(200, &te, full("ab")), false, false).await;
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nab");
        // Two lengths are no length: the body is framed by its own.
        let two = [("content-length", "2"), ("content-length", "3")];
        let (text, _) = written(response(200, &two, full("ab")), false, false).await;
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nab");
        // A large frame is written beside the head, not copied behind it.
        let big: &'static str = Box::leak("x".repeat(COPY_BELOW * 3).into_boxed_str());
        let (text, ok) = written(response(200, &[], full(big)), false, false).await;
        assert!(text.ends_with(big) && ok);
    }

    /// Through the gateway: a qualifying request is answered here, with the gateway's own
    /// response; anything else is handed back untouched for hyper.
    #[tokio::test]
    async fn the_gateway_answers_plain_requests_and_hands_the_rest_to_hyper() {
        let snapshot = crate::config::load_str_with_secret(
            crate::cli::demo::DEMO_CONFIG,
            Path::new("config/demo.toml"),
            Some(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let gateway = Arc::new(Gateway::build(snapshot).unwrap());
        let limits = gateway.snapshot.limits.clone();
        let runtime = Runtime::new(gateway, None);
        let conn = ConnInfo {
            peer: "127.0.0.1:9".parse().unwrap(),
            tls: false,
            client_cert_subject: None,
        };
        let state = ConnState::default();
        let ctx = || Conn {
            runtime: &runtime,
            limits: &limits,
            conn: &conn,
            state: &state,
            stopping: false,
        };
        let (server, mut client) = tokio::io::duplex(1 << 16);
        // No such route: the gateway answers it itself; the pipelined rest comes back.
        let bytes = Bytes::from_static(b"GET /projects HTTP/1.1\r\nHost: x\r\n\r\nGET /n");
        let server = match serve(server, bytes, ctx()).await {
            Outcome::Served(server, rest) => {
                assert_eq!(&rest[..], b"GET /n");
                server
            }
            _ => panic!("a plain GET must be served on the fast path"),
        };
        let mut out = vec![0u8; 4096];
        let n = client.read(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(head.contains("\r\ndate: "), "{text}");
        assert!(!head.contains("connection: close"), "{text}");
        assert_eq!(state.served.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A body: hyper's, byte for byte.
        let post = Bytes::from_static(
            b"POST /projects HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        );
        match serve(server, post.clone(), ctx()).await {
            Outcome::Hyper(_, bytes) => assert_eq!(bytes, post),
            _ => panic!("a request with a body must go to hyper"),
        }
        assert_eq!(state.served.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Shutting down: answered, then closed.
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let get = Bytes::from_static(b"GET /projects HTTP/1.1\r\nHost: x\r\n\r\n");
        let stopping = Conn {
            stopping: true,
            ..ctx()
        };
        assert!(matches!(
            serve(server, get, stopping).await,
            Outcome::Closed(_)
        ));
        let n = client.read(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out[..n]).contains("\r\nconnection: close\r\n"));
    }
}
