//! The public listener: accept (bounded by `max_connections`), optional TLS, HTTP/1.1 + h2
//! (chosen by the first bytes, like hyper-util's `auto`), per-connection request limits, CORS
//! response headers, graceful shutdown, and idle HTTP/1 keep-alive connections parked without
//! hyper's buffers (`idle`).
//!
//! Every connection task holds one permit of the connection semaphore from accept to close.
//! That one semaphore both bounds concurrent connections (when it is empty the loop stops
//! accepting and the kernel backlog holds newcomers) and tells shutdown when the drain is
//! done: all permits back means no connection is left.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::idle::{self, ConnIo, ConnState, ConnTimer};
use super::pipeline::{ConnInfo, Gateway, handle};
use super::respond::Body;
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
    let shared = Arc::new(Shared::new(runtime.clone(), limits.clone()));
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let connections = Arc::new(Semaphore::new(max as usize));
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
        let shared = shared.clone();
        // Two task types: a plain connection's task is not sized for TLS state.
        match gateway.tls.clone() {
            None => {
                let conn = ConnInfo::new(peer, false, None);
                tokio::spawn(serve_connection(shared, stream, conn, permit));
            }
            Some(terminator) => {
                tokio::spawn(async move {
                    // The handshake counts against the header timeout: a client that stalls
                    // it is a slowloris too. Boxed: only the handshake needs its state.
                    let header_timeout = shared.limits.header_read_timeout;
                    let handshake = Box::pin(terminator.acceptor().accept(stream));
                    let stream = match tokio::time::timeout(header_timeout, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(peer = %peer, error = %err, "TLS handshake failed.");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = ConnInfo::new(peer, true, tls::client_subject(stream.get_ref().1));
                    // Boxed: rustls' connection state is large, the parked task stays small.
                    serve_connection(shared, Box::new(stream), conn, permit).await;
                });
            }
        }
    }
    drop(listener);
    if let Some(reload) = reload {
        reload.abort();
    }
    shared.stop();
    if tokio::time::timeout(limits.shutdown_timeout, connections.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("Drain deadline passed; closing remaining connections.");
    }
}

/// The per-connection service: one gateway generation per request, `max_requests_per_connection`,
/// CORS response headers, and the signals `idle` needs.
fn service(
    shared: &Shared,
    conn: ConnInfo,
    state: &Arc<ConnState>,
) -> impl ConnService + Unpin + use<> {
    let runtime = shared.runtime.clone();
    let max_requests = runtime
        .current()
        .snapshot
        .limits
        .max_requests_per_connection;
    let state = state.clone();
    // Shared, not inline: the service lives in every parked connection's task.
    let conn = Arc::new(conn);
    service_fn(move |request: Request<Incoming>| {
        // INVARIANT: one load per request; the request keeps this generation to the end
        // (a reload meanwhile only affects later requests).
        let gateway = runtime.current();
        let conn = conn.clone();
        let state = state.clone();
        let served = state.request_started();
        async move {
            let version = request.version();
            let last = max_requests.is_some_and(|max| served >= max);
            if last {
                state.no_park.store(true, Ordering::SeqCst);
            }
            let cors = gateway.snapshot.cors.as_ref().map(|c| {
                let origin = request.headers().get(header::ORIGIN).cloned();
                (c, origin, cors::is_preflight(&request))
            });
            let mut response = handle(gateway.clone(), request, conn).await;
            if let Some((settings, origin, false)) = &cors {
                cors::decorate(settings, origin.as_ref(), &mut response);
            }
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // The socket becomes a tunnel: never take it back from hyper.
                state.no_park.store(true, Ordering::SeqCst);
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
}

/// The per-connection service (`service`) as the connection drivers take it.
trait ConnService:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// What every connection task shares: the `[limits]` of the first generation and the HTTP/2
/// builder (HTTP/1 builders are made per hyper instance, see `Shared::http1`).
struct Shared {
    runtime: Arc<Runtime>,
    limits: LimitsSettings,
    http2: http2::Builder<TokioExecutor>,
    /// The server is shutting down (set once, then `stop_notify` wakes every connection).
    /// Not a `watch` channel: its receiver and `changed` future would take room in every
    /// parked connection.
    stopping: AtomicBool,
    stop_notify: Notify,
}

impl Shared {
    fn new(runtime: Arc<Runtime>, limits: LimitsSettings) -> Shared {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(64);
        Shared {
            runtime,
            limits,
            http2,
            stopping: AtomicBool::new(false),
            stop_notify: Notify::new(),
        }
    }

    /// Tell every connection to finish what is in flight and close.
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_notify.notify_waiters();
    }

    /// Resolves once `stop` was called.
    async fn stopped(&self) {
        let notified = self.stop_notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a `stop` in between still wakes it.
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::SeqCst) {
            notified.await;
        }
    }

    /// hyper's HTTP/1 knobs from `[limits]`, for one hyper instance of a connection whose
    /// first request head must be complete by `first_deadline`. Timeouts need the timer
    /// (without it hyper ignores `header_read_timeout`, and there is no slowloris protection);
    /// the per-instance timer also tells `idle::ConnIo` when hyper waits for a head.
    fn http1(&self, first_deadline: Instant, state: &Arc<ConnState>) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(ConnTimer::new(
                state.clone(),
                first_deadline,
                self.limits.header_read_timeout,
            ))
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes)
            .max_headers(self.limits.max_headers);
        builder
    }
}

/// The HTTP/2 connection preface: a client that starts with it speaks h2 (prior knowledge on
/// plain HTTP, or ALPN `h2`); anything else is HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a wait for the client's next bytes ended.
enum Wait {
    Bytes(Bytes),
    /// The client closed its side.
    Eof,
    /// The header timeout passed, the socket failed, or the server is shutting down.
    Close,
}

/// Wait for the client's next bytes until `deadline`, or until shutdown.
fn wait_for_bytes<'a, I>(io: &'a mut I, deadline: Instant, shared: &'a Shared) -> NextBytes<'a, I>
where
    I: AsyncRead + Unpin,
{
    NextBytes {
        io,
        shared,
        registered: false,
        sleep: tokio::time::sleep_until(deadline.into()),
        stopped: shared.stop_notify.notified(),
    }
}

pin_project_lite::pin_project! {
    /// `wait_for_bytes`: the state every parked connection sits in, written out as a struct
    /// (no `select!`, no async-fn copies of its arguments) to keep that state small.
    struct NextBytes<'a, I> {
        io: &'a mut I,
        shared: &'a Shared,
        registered: bool,
        #[pin]
        sleep: tokio::time::Sleep,
        #[pin]
        stopped: tokio::sync::futures::Notified<'a>,
    }
}

impl<I: AsyncRead + Unpin> Future for NextBytes<'_, I> {
    type Output = Wait;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Wait> {
        let mut this = self.project();
        if !*this.registered {
            // Registered before the flag is read: a shutdown in between still wakes this wait.
            this.stopped.as_mut().enable();
            *this.registered = true;
            if this.shared.stopping.load(Ordering::SeqCst) {
                return Poll::Ready(Wait::Close);
            }
        }
        if let Poll::Ready(read) = idle::poll_next_bytes(*this.io, cx) {
            return Poll::Ready(match read {
                Ok(Some(bytes)) => Wait::Bytes(bytes),
                Ok(None) => Wait::Eof,
                Err(err) => {
                    tracing::debug!(error = %err, "Reading an idle connection failed.");
                    Wait::Close
                }
            });
        }
        if this.sleep.poll(cx).is_ready() || this.stopped.poll(cx).is_ready() {
            return Poll::Ready(Wait::Close);
        }
        Poll::Pending
    }
}

/// Close a connection that hyper is not serving: FIN (and `close_notify` on TLS), bounded.
async fn close<I: AsyncWrite + Unpin>(mut io: I, within: Duration) {
    let _ = tokio::time::timeout(within, io.shutdown()).await;
}

/// Serve one connection until it closes, shutting it down gracefully (finish in-flight
/// requests, then close; GOAWAY on h2) on server shutdown or after
/// `max_requests_per_connection`.
///
/// The first bytes decide the protocol, as hyper-util's `auto` did: the h2 preface means h2,
/// anything else HTTP/1. HTTP/1 runs one hyper connection per burst of requests and parks the
/// bare socket in between (`idle`); h2 runs in a separate allocation so that an idle HTTP/1
/// connection's task does not carry h2's state.
fn serve_connection<I>(
    shared: Arc<Shared>,
    mut io: I,
    conn: ConnInfo,
    // Held until the connection is closed.
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let mut service = service(&shared, conn, &state);
    // Not an `async fn`: its arguments would stay in the task next to the locals they become.
    // The parked wait below is what an idle connection costs, so every byte here counts
    // (`tests::a_plain_connection_task_stays_small`).
    async move {
        let _hold = &permit;
        let mut deadline = Instant::now() + shared.limits.header_read_timeout;
        // Boxed: needed once, and its buffer must not stay in the parked task.
        let (mut prefix, h2): (Bytes, bool);
        match Box::pin(detect(io, deadline, &shared)).await {
            Some(detected) => (io, prefix, h2) = detected,
            None => return,
        }
        if h2 {
            return Box::pin(serve_h2(shared, io, prefix, service, state)).await;
        }
        loop {
            // Boxed: the busy part (hyper and the select around it) exists only during a
            // burst, so a parked connection's task is the bare socket, the service and the
            // wait below.
            let buffered;
            match Box::pin(burst(&shared, io, prefix, service, &state, deadline)).await {
                Some(parked) => (io, service, deadline, buffered) = parked,
                None => return,
            }
            prefix = if buffered.is_empty() {
                // Dropped before the wait, so that the task keeps no room for it.
                drop(buffered);
                match wait_for_bytes(&mut io, deadline, &shared).await {
                    Wait::Bytes(bytes) => bytes,
                    Wait::Eof | Wait::Close => break,
                }
            } else {
                buffered
            };
        }
        // Boxed: its timer must not take room in every parked task.
        Box::pin(close(io, shared.limits.header_read_timeout)).await;
    }
}

/// The protocol: read until the bytes are the h2 preface or cannot be (`true`: h2). A client
/// that sends nothing is held no longer than a request head may take, then closed (`None`).
async fn detect<I>(mut io: I, deadline: Instant, shared: &Shared) -> Option<(I, Bytes, bool)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut first = BytesMut::new();
    let h2 = loop {
        match wait_for_bytes(&mut io, deadline, shared).await {
            Wait::Bytes(bytes) => first.extend_from_slice(&bytes),
            // EOF mid-preface: HTTP/1 gets what there is, as under `auto`.
            Wait::Eof if !first.is_empty() => break false,
            Wait::Eof | Wait::Close => {
                close(io, shared.limits.header_read_timeout).await;
                return None;
            }
        }
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] {
            break false;
        }
        if n == H2_PREFACE.len() {
            break true;
        }
    };
    Some((io, first.freeze(), h2))
}

/// A connection between two bursts of requests, taken back from hyper: the socket, the
/// service, when the next request head must be complete, and the bytes of the next request
/// hyper or `ConnIo` already read (pipelining; empty if none).
type Parked<I, S> = (I, S, Instant, Bytes);

/// Serve requests with one hyper instance, starting with `prefix`, until the connection goes
/// idle (`Some`: park it) or ends (`None`: closed here).
async fn burst<I, S>(
    shared: &Shared,
    io: I,
    prefix: Bytes,
    service: S,
    state: &Arc<ConnState>,
    deadline: Instant,
) -> Option<Parked<I, S>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnService,
{
    let header_timeout = shared.limits.header_read_timeout;
    let io_for_hyper = TokioIo::new(ConnIo::new(io, prefix, Some(state.clone())));
    // Boxed: a parked connection's task holds only a pointer-sized hole for it. The
    // builder is a temporary: kept in a local it (and its timer) would live through the
    // parked wait below.
    let mut connection = Box::new(
        shared
            .http1(deadline, state)
            .serve_connection(io_for_hyper, service)
            .with_upgrades(),
    );
    let mut closing = false;
    // The shutdown signal, registered by its first poll and polled again only once its flag
    // is set: every poll of a waiting `Notified` takes the `Notify`'s lock, and this loop is
    // polled at every wake-up of the connection (twice a request).
    let stop = shared.stopped();
    tokio::pin!(stop);
    let mut stop_registered = false;
    let parked = loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut *connection).poll(cx) {
                return Poll::Ready(Burst::Ended(result));
            }
            if state.take_park_request() {
                return Poll::Ready(Burst::Idle);
            }
            if closing {
                return Poll::Pending;
            }
            if !stop_registered || shared.stopping.load(Ordering::SeqCst) {
                stop_registered = true;
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Burst::Close);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Burst::Ended(result) => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "Connection ended with an error.");
                }
                return None;
            }
            Burst::Idle => break !closing,
            Burst::Close => {
                Pin::new(&mut *connection).graceful_shutdown();
                closing = true;
            }
        }
    };
    // Idle between requests: take hyper apart (its buffers are freed here). The header
    // timeout keeps running from when hyper started waiting (`PARK_AFTER` ago or more).
    let deadline = state
        .head_deadline()
        .unwrap_or_else(|| Instant::now() + header_timeout);
    // `{ connection }` moves the box into this statement so that its allocation is freed
    // here, not after the parked wait (the value moved out would leave it allocated).
    let parts = { connection }.into_parts()?;
    let (io, unread) = parts.io.into_inner().into_inner();
    if !parked {
        close(io, header_timeout).await;
        return None;
    }
    let buffered = if !parts.read_buf.is_empty() {
        // The start of a pipelined request: hyper reads the rest.
        parts.read_buf
    } else {
        // Empty `Bytes` hold no buffer.
        drop(parts.read_buf);
        if unread.is_empty() {
            Bytes::new()
        } else {
            unread
        }
    };
    Some((io, parts.service, deadline, buffered))
}

/// An HTTP/2 connection, in its own allocation (see `serve_connection`).
async fn serve_h2<I, S>(
    shared: Arc<Shared>,
    io: I,
    preface: Bytes,
    service: S,
    state: Arc<ConnState>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnService,
{
    let io = TokioIo::new(ConnIo::new(io, preface, None));
    let connection = shared.http2.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "Connection ended with an error.");
                }
                return;
            }
            () = shared.stopped(), if !closing => {
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

/// What ended a wait of `burst` on its hyper instance.
enum Burst<E> {
    /// hyper finished the connection.
    Ended(Result<(), E>),
    /// Idle between requests: park.
    Idle,
    /// Shutdown: finish what is in flight and close.
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::proxy::Gateway;

    /// Every idle keep-alive connection is one parked task of this future, so its size is
    /// most of the memory an idle connection costs (issue 7: 10,000 of them plus 100,000
    /// cached principals within 64 MiB). hyper's state and the select around it belong in
    /// the boxed `burst`, not here.
    #[tokio::test]
    async fn a_plain_connection_task_stays_small() {
        // The embedded demo config: any valid one will do, nothing is served.
        let snapshot = crate::config::load_str_with_secret(
            crate::cli::demo::DEMO_CONFIG,
            Path::new("config/demo.toml"),
            Some(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let gateway = Arc::new(Gateway::build(snapshot).unwrap());
        let limits = gateway.snapshot.limits.clone();
        let shared = Arc::new(Shared::new(Runtime::new(gateway, None), limits));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (stream, peer) = accepted.unwrap();
        let conn = ConnInfo::new(peer, false, None);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let task = serve_connection(shared, stream, conn, permit);
        let size = std::mem::size_of_val(&task);
        eprintln!("serve_connection future: {size} bytes");
        assert!(
            // With tokio's header and trailer, ≤ 400 bytes keeps the task cell (128-byte
            // aligned) at 512 bytes; 472 made it 640.
            size <= 400,
            "a parked connection's task future is {size} bytes"
        );
        drop((task, client));
    }
}
