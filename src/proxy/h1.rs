//! A lean HTTP/1.1 client for the common case: a request without a body to a plain
//! (`http://`, HTTP/1.1) upstream. The request head is written straight to a pooled socket, the
//! response head is parsed with `httparse`, and the response body is read from the socket as
//! the downstream connection polls it, all on the request's own task. hyper-util's pooled
//! client costs a connection task, a request channel, a response channel and a body channel
//! per request, and a hand-off between two tasks at each step; for a small response that was
//! a large part of the gateway's CPU per request (benches/README.md). Requests with a body,
//! WebSocket upgrades, TLS and HTTP/2 upstreams still go through hyper (`forward`).
//!
//! Framing follows RFC 9112 §6.3 and fails closed on anything ambiguous, as nginx does:
//! - no body for a HEAD request or a 204/304 response, whatever the headers say;
//! - `Transfer-Encoding` must be exactly `chunked`; with a `Content-Length` too, or with any
//!   other coding, the response is refused (502) and the connection dropped;
//! - several `Content-Length` values must agree; a malformed one is refused;
//! - neither: the body runs until the upstream closes, and the connection is not reused;
//! - 1xx interim responses are skipped; an unasked-for 101 is refused.
//!
//! INVARIANT: a connection goes back to the pool only when its response ended exactly where
//! the framing said (no extra bytes), the upstream did not ask to close, and the body was read
//! to its end. Anything else drops the socket, so a desynchronised connection is never reused.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::headers::Added;

/// Why the lean client could not deliver a response head (the body reports `BodyError`).
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed a reused connection before answering: the request may be sent
    /// again on a fresh one (it was not processed, or it is idempotent).
    #[error("pooled connection closed before a response")]
    Stale,
    #[error("connection closed before a complete response head")]
    Closed,
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
    #[error("upstream answered 101 to a request that did not ask for an upgrade")]
    UnexpectedUpgrade,
}

/// A response body that broke off or was malformed; hyper then aborts the downstream response.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body: {0}")]
    Io(#[from] io::Error),
    #[error("upstream body: {0}")]
    Invalid(&'static str),
}

/// Longest response head accepted from an upstream (hyper's client default is ~400 KiB;
/// nginx's `proxy_buffer_size` is 4–8 KiB). Longer heads are refused with 502.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Read size for response bodies (nginx `proxy_buffers 8 4k|8k`; larger reads are fewer syscalls).
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line and longest trailer section accepted.
const MAX_CHUNK_LINE: usize = 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Idle keep-alive connections to one target, most recently used last.
pub struct IdlePool {
    conns: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// An idle connection, since when, and its read buffer: kept with it, so a response is read
/// into memory the last one used (once that response's bytes are dropped) instead of a new
/// allocation per request.
struct Idle {
    stream: TcpStream,
    since: Instant,
    buf: BytesMut,
}

/// A response head is read into at least this much room (more is reserved as it grows). An
/// idle connection keeps its buffer only if the whole response fit in it: at most this much
/// per idle connection (256 per target: 1 MiB).
const HEAD_BUF: usize = 4096;

impl IdlePool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<IdlePool> {
        Arc::new(IdlePool {
            conns: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        })
    }

    /// The most recently used idle connection that is still open, if any. Expired ones are
    /// dropped on the way (there is no reaper task: the upstream's own keep-alive timeout
    /// closes what is left, and the next checkout notices).
    /// `now`: the caller's clock reading.
    fn checkout(&self, now: Instant) -> Option<(TcpStream, BytesMut)> {
        loop {
            let Idle { stream, since, buf } = self.lock().pop_back()?;
            if now.saturating_duration_since(since) >= self.idle_timeout {
                // Older ones expired too.
                self.lock().clear();
                return None;
            }
            // Readable while idle means closed or unsolicited bytes: unusable either way.
            // No system call unless the reactor saw the socket become readable.
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Some((stream, buf)),
                _ => continue,
            }
        }
    }

    fn checkin(&self, stream: TcpStream, buf: BytesMut) {
        let mut conns = self.lock();
        if conns.len() >= self.max_idle {
            conns.pop_front();
        }
        conns.push_back(Idle {
            stream,
            since: Instant::now(),
            buf,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// Where a new connection goes, and how long connecting may take.
pub struct Dial<'a> {
    pub authority: &'a str,
    pub connect_timeout: Duration,
}

/// One bodyless request to `dial.authority` over a pooled or new connection. A reused
/// connection found closed before any response byte (the upstream closed it while it was
/// idle) is retried once on a new connection when the method is idempotent. `now`: the
/// caller's clock reading, for the idle connections' timeout.
pub async fn send(
    pool: &Arc<IdlePool>,
    now: Instant,
    dial: Dial<'_>,
    method: &Method,
    path_and_query: &PathAndQuery,
    headers: &HeaderMap,
    added: &Added,
) -> Result<Response<H1Body>, H1Error> {
    let mut head = Vec::with_capacity(512);
    encode_request(&mut head, method, path_and_query, headers, added);
    if let Some((stream, buf)) = pool.checkout(now) {
        match exchange(pool, stream, buf, &head, method).await {
            // Closed while idle, before any response byte. Only a request that is safe to
            // repeat is sent again: the upstream may have seen it (nginx does the same).
            Err(H1Error::Stale) if idempotent(method) => {}
            Err(H1Error::Stale) => return Err(H1Error::Closed),
            done => return done,
        }
    }
    let connect = TcpStream::connect(dial.authority);
    let stream = match tokio::time::timeout(dial.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(H1Error::Connect(err)),
        Err(_) => return Err(H1Error::ConnectTimeout),
    };
    let _ = stream.set_nodelay(true);
    match exchange(pool, stream, BytesMut::new(), &head, method).await {
        Err(H1Error::Stale) => Err(H1Error::Closed),
        done => done,
    }
}

/// Write the head, read the response head, hand the rest to the body.
async fn exchange(
    pool: &Arc<IdlePool>,
    mut stream: TcpStream,
    mut buf: BytesMut,
    head: &[u8],
    method: &Method,
) -> Result<Response<H1Body>, H1Error> {
    if let Err(err) = stream.write_all(head).await {
        return Err(if is_reset(&err) {
            H1Error::Stale
        } else {
            H1Error::Io(err)
        });
    }
    // The connection's buffer is empty between responses; once the last response's bytes are
    // gone this takes its memory back instead of allocating.
    buf.clear();
    buf.reserve(HEAD_BUF);
    // More room than that was needed: the buffer is not kept for the next response.
    let mut grown = false;
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Err(H1Error::Stale),
            Ok(0) => return Err(H1Error::Closed),
            Ok(_) => {}
            Err(err) if buf.is_empty() && is_reset(&err) => return Err(H1Error::Stale),
            Err(err) => return Err(H1Error::Io(err)),
        }
        while let Some(parsed) = parse_head(&buf)? {
            let head_bytes = buf.split_to(parsed.len).freeze();
            if parsed.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(H1Error::UnexpectedUpgrade);
            }
            if parsed.status.is_informational() {
                // 100 Continue, 103 Early Hints: interim, the real head follows.
                continue;
            }
            return build_response(pool, stream, buf, !grown, &head_bytes, parsed, method);
        }
        if buf.len() >= MAX_HEAD {
            return Err(H1Error::Invalid("response head too large"));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(HEAD_BUF);
            grown = true;
        }
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// `METHOD path HTTP/1.1`, the client's sanitized headers, then the gateway's (`added`), no
/// body framing headers (the request has no body; hyper's client sends none either).
fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    pq: &PathAndQuery,
    headers: &HeaderMap,
    added: &Added,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter().chain(added.iter()) {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete response head: its length in the buffer and where its fields are.
struct ParsedHead {
    len: usize,
    status: StatusCode,
    version: Version,
    /// (name start, name end, value start, value end) offsets into the head.
    fields: Vec<(usize, usize, usize, usize)>,
}

/// `Ok(None)`: the head is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<ParsedHead>, H1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("too many response header fields"));
        }
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::Invalid("malformed status code"))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(H1Error::Invalid("unsupported HTTP version")),
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let fields = response
        .headers
        .iter()
        .map(|h| {
            let name = offset(h.name.as_bytes());
            let value = offset(h.value);
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect();
    Ok(Some(ParsedHead {
        len,
        status,
        version,
        fields,
    }))
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn build_response(
    pool: &Arc<IdlePool>,
    stream: TcpStream,
    rest: BytesMut,
    keep_buf: bool,
    head: &Bytes,
    parsed: ParsedHead,
    method: &Method,
) -> Result<Response<H1Body>, H1Error> {
    // One pass over the fields builds the map and gathers what framing and reuse need: a
    // scan of the fields per name compared their bytes six times over.
    let mut scan = Scan::default();
    let mut headers = HeaderMap::with_capacity(parsed.fields.len());
    let value_at = |vs: usize, ve: usize| {
        HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error::Invalid("invalid header value"))
    };
    for &(ns, ne, vs, ve) in &parsed.fields {
        let name = response_name(head.get(ns..ne).unwrap_or_default())
            .map_err(|_| H1Error::Invalid("invalid header name"))?;
        let raw_value = head.get(vs..ve).unwrap_or_default();
        // `Connection` waits for the last field (below).
        if scan.note(&name, raw_value) {
            continue;
        }
        headers.append(name, value_at(vs, ve)?);
    }
    // `Connection: keep-alive` (or `close`) names no field but hop-by-hop ones, which
    // `headers::sanitize_response` removes anyway, as it removes `Connection` itself: such a
    // field stays out of the map instead of being put in and taken out again. Any other token
    // puts every `Connection` field in, for the sanitizer to act on.
    if scan.other_connection_token {
        for &(ns, ne, vs, ve) in &parsed.fields {
            if head
                .get(ns..ne)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"connection"))
            {
                headers.append(header::CONNECTION, value_at(vs, ve)?);
            }
        }
    }
    let framing = scan.framing(method, parsed.status)?;
    let reusable = framing != Framing::UntilClose
        && !scan.close
        && (parsed.version == Version::HTTP_11 || scan.keep_alive);
    let decoder = match framing {
        Framing::Empty | Framing::Length(0) => Decoder::Done,
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(Chunk::Size),
        Framing::UntilClose => Decoder::UntilClose,
    };
    let mut body = H1Body {
        stream: Some(stream),
        buf: rest,
        decoder,
        reusable,
        pool: pool.clone(),
        trailer_bytes: 0,
        keep_buf,
    };
    if body.decoder == Decoder::Done {
        body.finish();
    }
    let mut response = Response::new(body);
    *response.status_mut() = parsed.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The usual response field names, lower-case, with their constants.
const COMMON_NAMES: [(&[u8], HeaderName); 13] = [
    (b"date", header::DATE),
    (b"server", header::SERVER),
    (b"content-type", header::CONTENT_TYPE),
    (b"content-length", header::CONTENT_LENGTH),
    (b"connection", header::CONNECTION),
    (b"cache-control", header::CACHE_CONTROL),
    (b"etag", header::ETAG),
    (b"last-modified", header::LAST_MODIFIED),
    (b"vary", header::VARY),
    (b"content-encoding", header::CONTENT_ENCODING),
    (b"transfer-encoding", header::TRANSFER_ENCODING),
    (b"expires", header::EXPIRES),
    (b"accept-ranges", header::ACCEPT_RANGES),
];

/// A response field's name: the usual ones found by comparing bytes, the rest through
/// `HeaderName::from_bytes`, which lower-cases every name and matches it against the whole
/// standard table (about 115 instructions a name).
fn response_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    for (lower, name) in &COMMON_NAMES {
        if lower.len() == raw.len() && token_eq_lower(raw, lower) {
            return Ok(name.clone());
        }
    }
    HeaderName::from_bytes(raw)
}

/// `raw` (a field name as parsed: token characters only) equals `lower` (lower-case letters
/// and `-`) in any case, eight bytes at a time. `| 0x20` folds upper-case letters onto
/// lower-case ones; the only other byte it folds onto a letter or `-` is a control character
/// (CR onto `-`), which no token holds.
fn token_eq_lower(raw: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    raw.len() == lower.len()
        && raw
            .chunks(8)
            .zip(lower.chunks(8))
            .all(|(r, l)| word(r) | (FOLD >> (8 * (8 - r.len()))) == word(l))
}

/// What framing (RFC 9112 §6.3) and connection reuse need from a response head's fields.
#[derive(Debug, Default)]
struct Scan {
    /// `Connection` tokens: `close`, `keep-alive`, anything else.
    close: bool,
    keep_alive: bool,
    other_connection_token: bool,
    /// Some `Content-Length` field was seen; the one length they agree on, or why not.
    has_length: bool,
    length: Option<u64>,
    bad_length: Option<&'static str>,
    /// `Transfer-Encoding` codings seen (every comma-separated item counts), and whether the
    /// first was `chunked`.
    codings: usize,
    first_chunked: bool,
}

impl Scan {
    /// Take in one field; `true` for a `Connection` field (its tokens are all it holds).
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if *name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() {
                    self.other_connection_token = true;
                }
            }
            return true;
        }
        if *name == header::CONTENT_LENGTH {
            self.has_length = true;
            for part in value.split(|&b| b == b',') {
                if self.bad_length.is_some() {
                    break;
                }
                match parse_decimal(part.trim_ascii()) {
                    None => self.bad_length = Some("malformed Content-Length"),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.bad_length = Some("conflicting Content-Length values");
                    }
                    Some(n) => self.length = Some(n),
                }
            }
        } else if *name == header::TRANSFER_ENCODING {
            for coding in value.split(|&b| b == b',') {
                if self.codings == 0 {
                    self.first_chunked = coding.trim_ascii().eq_ignore_ascii_case(b"chunked");
                }
                self.codings += 1;
            }
        }
        false
    }

    fn framing(&self, method: &Method, status: StatusCode) -> Result<Framing, H1Error> {
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        if self.codings > 0 {
            if self.has_length {
                return Err(H1Error::Invalid(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            return if self.codings == 1 && self.first_chunked {
                Ok(Framing::Chunked)
            } else {
                Err(H1Error::Invalid("unsupported Transfer-Encoding"))
            };
        }
        match self.bad_length {
            Some(why) => Err(H1Error::Invalid(why)),
            None => Ok(self.length.map_or(Framing::UntilClose, Framing::Length)),
        }
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

/// Where the body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A response body read from the upstream socket by whoever polls it.
pub struct H1Body {
    stream: Option<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    reusable: bool,
    pool: Arc<IdlePool>,
    trailer_bytes: usize,
    /// The whole response is in `buf` as first read (`HEAD_BUF`): the idle connection may keep
    /// that buffer for its next response.
    keep_buf: bool,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl H1Body {
    /// The body ended: give the connection back if it is in a known state (see INVARIANT).
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(stream) = self.stream.take()
            && self.reusable
            && self.buf.is_empty()
        {
            let buf = if self.keep_buf {
                std::mem::take(&mut self.buf)
            } else {
                BytesMut::new()
            };
            self.pool.checkin(stream, buf);
        }
    }

    /// The next piece of the body from what is buffered: `Some(Ok(data))`, `Some(Err)`, or
    /// `None` when more bytes must be read first. Moves the decoder on.
    fn decode(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            match self.decoder {
                Decoder::Done => return None,
                Decoder::Length(left) => {
                    if self.buf.is_empty() {
                        return None;
                    }
                    let (data, left) = take_at_most(&mut self.buf, left);
                    self.decoder = Decoder::Length(left);
                    if left == 0 {
                        self.finish();
                    }
                    return Some(Ok(data));
                }
                Decoder::UntilClose => {
                    if self.buf.is_empty() {
                        return None;
                    }
                    return Some(Ok(self.buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Data(left)) => {
                    if self.buf.is_empty() {
                        return None;
                    }
                    let (data, left) = take_at_most(&mut self.buf, left);
                    self.decoder = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Some(Ok(data));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if self.buf.len() < 2 {
                        return None;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Some(Err(BodyError::Invalid("chunk data not followed by CRLF")));
                    }
                    self.buf.advance(2);
                    self.decoder = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Size) => {
                    let line = match take_line(&mut self.buf, MAX_CHUNK_LINE) {
                        Ok(Some(line)) => line,
                        Ok(None) => return None,
                        Err(err) => return Some(Err(err)),
                    };
                    let size = match parse_chunk_size(&line) {
                        Some(size) => size,
                        None => return Some(Err(BodyError::Invalid("malformed chunk size"))),
                    };
                    self.decoder = Decoder::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    // Trailer fields are read and dropped (as the gateway has always done
                    // for HTTP/1 upstreams unless the client asked for them).
                    let line = match take_line(&mut self.buf, MAX_TRAILERS) {
                        Ok(Some(line)) => line,
                        Ok(None) => return None,
                        Err(err) => return Some(Err(err)),
                    };
                    if line.is_empty() {
                        self.finish();
                        return None;
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Some(Err(BodyError::Invalid("trailer section too large")));
                    }
                }
            }
        }
    }
}

/// Up to `left` bytes off the front of `buf`, and how many are still owed after them.
fn take_at_most(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    let data = buf.split_to(take).freeze();
    (data, left - take as u64)
}

/// One CRLF-terminated line off the front of `buf` (without the CRLF); `Ok(None)` when the
/// line is not complete yet. A bare LF or an over-long line is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, BodyError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            if lf == 0 || buf.get(lf - 1) != Some(&b'\r') {
                return Err(BodyError::Invalid("line not terminated by CRLF"));
            }
            let mut line = buf.split_to(lf + 1);
            line.truncate(lf - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(BodyError::Invalid("line too long")),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`; at most 15 hex digits (no overflow).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest.first() != Some(&b';') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n * 16 + u64::from(v))
    })
}

impl hyper::body::Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(decoded) = this.decode() {
                return Poll::Ready(Some(decoded.map(Frame::data)));
            }
            if this.decoder == Decoder::Done {
                return Poll::Ready(None);
            }
            let Some(stream) = &this.stream else {
                return Poll::Ready(None);
            };
            let want = match this.decoder {
                Decoder::Length(left) => usize::try_from(left).unwrap_or(usize::MAX),
                _ => READ_CHUNK,
            };
            // A body read from the socket may grow the buffer: not kept once idle.
            this.keep_buf = false;
            this.buf.reserve(want.clamp(1024, 4 * READ_CHUNK));
            match stream.try_read_buf(&mut this.buf) {
                Ok(0) => {
                    if this.decoder == Decoder::UntilClose {
                        this.stream = None;
                        this.decoder = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    this.stream = None;
                    this.decoder = Decoder::Done;
                    return Poll::Ready(Some(Err(BodyError::Invalid(
                        "upstream closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(err) = ready!(stream.poll_read_ready(cx)) {
                        this.stream = None;
                        this.decoder = Decoder::Done;
                        return Poll::Ready(Some(Err(BodyError::Io(err))));
                    }
                }
                Err(err) => {
                    this.stream = None;
                    this.decoder = Decoder::Done;
                    return Poll::Ready(Some(Err(BodyError::Io(err))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
