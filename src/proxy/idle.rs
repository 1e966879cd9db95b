//! Idle HTTP/1 keep-alive connections without hyper's buffers ("parking").
//!
//! hyper 1.x keeps an HTTP/1 connection's read buffer (8 KiB), write buffer (8 KiB) and
//! parser state for the connection's whole life, so 10,000 idle keep-alive clients cost
//! ~250 MiB. Instead, `server` runs one hyper connection per *burst* of requests and takes it
//! apart (`into_parts`) the moment it is idle: between requests a connection is only its socket
//! and a small task, and the next bytes the client sends start a new hyper connection over the
//! same socket, with those bytes replayed in front (`ConnIo::prefix`).
//!
//! When is it safe to take hyper apart? Only when it is waiting for the *head* of the next
//! request with nothing buffered either way: no request body half-read (its remaining bytes
//! would be parsed as a new request: smuggling), no response bytes unflushed. Two signals,
//! both exact rather than guessed from timing:
//!
//! * `ConnTimer`: hyper arms the header-read timer exactly when it starts reading a request
//!   head (`Reading::Init`, which it only enters once the previous request and response are
//!   both complete and keep-alive is on). The service call for the parsed head disarms our
//!   flag (`ConnState::head_wanted`).
//! * `ConnIo` notes every write and clears the note only when a flush of the socket
//!   completes (hyper flushes the socket only after its own write buffer is empty).
//!
//! If hyper then asks the socket for bytes, there are none yet, and the connection has been
//! idle for `PARK_AFTER`, `ConnIo` raises `park_requested`; the driver in `server` sees it as
//! soon as hyper's poll returns `Pending` and calls `into_parts`. The grace period keeps a busy
//! keep-alive connection (next request within milliseconds) in one hyper instance instead of
//! taking hyper apart and rebuilding it (buffers, timer, boxed state) for every request; it
//! costs no timer of its own: the header-read timer hyper arms anyway first fires at the end
//! of the grace period (`GraceSleep`), notes it and wakes hyper, then runs on to the real
//! deadline. Bytes hyper had already read but not parsed (a pipelined, partial
//! next head) come back in `Parts::read_buf` and are replayed at once. A connection only parks
//! after its current hyper instance served at least one request, so a replayed partial head
//! is read to its end by hyper as before.
//!
//! What hyper did while idle is kept: the header-read timeout still runs from the moment the
//! connection went idle (the driver waits at most the rest of it, then closes like hyper;
//! a resumed instance gets only what is left), graceful shutdown closes a parked connection at
//! once (as hyper does an idle one), and the client closing is answered with a shutdown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Per connection, shared by the driver, the service, `ConnIo` and `ConnTimer`.
#[derive(Default)]
pub(super) struct ConnState {
    /// Requests handed to the service so far (all hyper instances of this connection).
    pub served: AtomicU64,
    /// The last request allowed by `max_requests_per_connection` was served: HTTP/2 sends
    /// GOAWAY. (HTTP/1 needs no signal: that request's response says `Connection: close`,
    /// and hyper closes after it.)
    pub done: Notify,
    /// hyper is reading a request head (set when it arms the header timer, cleared when the
    /// head reaches the service).
    pub head_wanted: AtomicBool,
    /// `ConnIo` refused a read so that the driver parks the connection.
    pub park_requested: AtomicBool,
    /// Never park again (upgraded, closing, shut down).
    pub no_park: AtomicBool,
    /// hyper has waited `PARK_AFTER` for the current request head.
    pub grace_passed: AtomicBool,
    /// When the current request head is due (hyper's header-read deadline), as nanoseconds
    /// since `epoch()`; 0 before the first one.
    head_deadline: AtomicU64,
}

/// How long a keep-alive connection waits for its next request inside hyper before it is
/// parked. Long enough that a busy client never parks, short enough that idle connections
/// give their buffers back almost at once.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(10);

/// A process-wide origin for instants kept in atomics.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl ConnState {
    /// Called by the service for every request head hyper hands over.
    pub fn request_started(&self) -> u64 {
        self.head_wanted.store(false, Ordering::SeqCst);
        self.grace_passed.store(false, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn take_park_request(&self) -> bool {
        self.park_requested.swap(false, Ordering::SeqCst)
    }

    /// The header-read deadline hyper set for the head it is waiting for, if any: a parked
    /// connection keeps it (the idle time inside hyper counts).
    pub fn head_deadline(&self) -> Option<Instant> {
        match self.head_deadline.load(Ordering::SeqCst) {
            0 => None,
            nanos => Some(epoch() + Duration::from_nanos(nanos)),
        }
    }

    fn set_head_deadline(&self, deadline: Instant) {
        let nanos = u64::try_from(deadline.saturating_duration_since(epoch()).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.head_deadline.store(nanos, Ordering::SeqCst);
    }
}

/// The socket as hyper sees it: `prefix` first (bytes read while parked or left over by the
/// previous hyper instance), then the socket; refuses the read that would start an idle wait
/// inside hyper (see the module docs).
pub(super) struct ConnIo<I> {
    inner: I,
    prefix: Bytes,
    /// `None`: never park (HTTP/2).
    state: Option<Arc<ConnState>>,
    /// `served` when this hyper instance started: park only after it served a request.
    served_at_start: u64,
    /// Bytes were offered to the socket since the last completed flush.
    unflushed: bool,
}

impl<I> ConnIo<I> {
    pub fn new(inner: I, prefix: Bytes, state: Option<Arc<ConnState>>) -> ConnIo<I> {
        let served_at_start = state
            .as_ref()
            .map_or(0, |s| s.served.load(Ordering::SeqCst));
        ConnIo {
            inner,
            prefix,
            state,
            served_at_start,
            unflushed: false,
        }
    }

    /// The socket back, and any replay bytes hyper did not read (normally none).
    pub fn into_inner(self) -> (I, Bytes) {
        (self.inner, self.prefix)
    }

    fn should_park(&self) -> bool {
        let Some(state) = &self.state else {
            return false;
        };
        !self.unflushed
            && state.head_wanted.load(Ordering::SeqCst)
            && state.grace_passed.load(Ordering::SeqCst)
            && !state.no_park.load(Ordering::SeqCst)
            && state.served.load(Ordering::SeqCst) > self.served_at_start
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending()
            && this.should_park()
            && let Some(state) = &this.state
        {
            // Nothing to read and hyper idle: the driver acts on `park_requested` as soon as
            // hyper's poll returns, and never polls this hyper instance again. (Bytes that
            // are already there go straight to hyper: no park for a client that is quick.)
            state.park_requested.store(true, Ordering::SeqCst);
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(state) = &this.state {
            state.no_park.store(true, Ordering::SeqCst);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one hyper instance of a connection: Tokio's, noting when hyper starts
/// reading a request head, and holding the instance's first head to `first_deadline` (the
/// header-read timeout that was already running while the connection was parked).
///
/// INVARIANT: hyper's HTTP/1 server uses its timer only for the header-read timeout, armed
/// at the start of each request head (hyper 1.x `Conn::poll_read_head`).
pub(super) struct ConnTimer {
    inner: TokioTimer,
    state: Arc<ConnState>,
    first_deadline: Instant,
    first_done: AtomicBool,
    /// The header-read timeout hyper was given: its deadline less this is when it started the
    /// head (one clock reading less per request).
    header_timeout: Duration,
    /// The one Tokio timer behind every header wait of this hyper instance (`GraceSleep`).
    slot: Arc<TimerSlot>,
}

/// A Tokio timer kept registered between a connection's request heads, and re-armed for the
/// next one. A fresh timer per head, armed at `PARK_AFTER` while every other timer of the
/// runtime was further out (the upstream requests' timeouts, at a high rate), made Tokio wake
/// its own driver with a system call (an `eventfd` write) on each: 0.8 per request at peak
/// (benches/README.md, sixth session). Re-armed, the old deadline was the runtime's earliest
/// timer when it parked, and the new one is later: nothing to wake. If the old deadline
/// passes while a request is served, the connection's task is polled once for nothing.
/// Dropped with the hyper instance, so a parked connection holds none.
type TimerSlot = std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>;

impl ConnTimer {
    pub fn new(
        state: Arc<ConnState>,
        first_deadline: Instant,
        header_timeout: Duration,
    ) -> ConnTimer {
        ConnTimer {
            inner: TokioTimer::new(),
            state,
            first_deadline,
            first_done: AtomicBool::new(false),
            header_timeout,
            slot: Arc::default(),
        }
    }

    /// The head's wait until `deadline` (`head_started`'s), with the grace counted from when
    /// hyper started the head: `hyper_deadline` less the header-read timeout.
    fn grace_sleep(&self, hyper_deadline: Instant, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let grace = hyper_deadline
            .checked_sub(self.header_timeout)
            .unwrap_or_else(Instant::now)
            + PARK_AFTER;
        Box::pin(GraceSleep::new(
            self.state.clone(),
            self.slot.clone(),
            grace,
            deadline,
        ))
    }

    fn head_started(&self, deadline: Instant) -> Instant {
        self.state.head_wanted.store(true, Ordering::SeqCst);
        self.state.grace_passed.store(false, Ordering::SeqCst);
        let deadline = if self.first_done.swap(true, Ordering::SeqCst) {
            deadline
        } else {
            deadline.min(self.first_deadline)
        };
        self.state.set_head_deadline(deadline);
        deadline
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep(duration)
    }

    fn sleep_until(&self, hyper_deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let deadline = self.head_started(hyper_deadline);
        self.grace_sleep(hyper_deadline, deadline)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        let deadline = self.head_started(new_deadline);
        *sleep = self.grace_sleep(new_deadline, deadline);
    }
}

/// hyper's header-read timer with a stop on the way: at `PARK_AFTER` (if that comes before
/// the deadline) it notes `grace_passed` and wakes hyper, whose next read then lets the
/// connection park; it completes only at the real deadline. The timer itself is the
/// instance's `TimerSlot`, armed for this head at the first poll.
struct GraceSleep {
    state: Arc<ConnState>,
    slot: Arc<TimerSlot>,
    /// What the slot is armed for first: the grace, or the deadline if that comes first.
    first: Instant,
    deadline: Instant,
    armed: bool,
    grace_noted: bool,
}

impl GraceSleep {
    fn new(
        state: Arc<ConnState>,
        slot: Arc<TimerSlot>,
        grace: Instant,
        deadline: Instant,
    ) -> GraceSleep {
        GraceSleep {
            state,
            slot,
            first: grace.min(deadline),
            deadline,
            armed: false,
            grace_noted: grace >= deadline,
        }
    }
}

impl Sleep for GraceSleep {}

impl Future for GraceSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut slot = this.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let first = this.first.into();
        let sleep = match &mut *slot {
            Some(sleep) if this.armed => sleep,
            Some(sleep) => {
                sleep.as_mut().reset(first);
                sleep
            }
            None => slot.insert(Box::pin(tokio::time::sleep_until(first))),
        };
        this.armed = true;
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.grace_noted {
            return Poll::Ready(());
        }
        this.grace_noted = true;
        this.state.grace_passed.store(true, Ordering::SeqCst);
        sleep.as_mut().reset(this.deadline.into());
        // hyper polls its read before this timer: poll again so the read sees the grace.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Poll for the next bytes from `io` without holding a buffer between polls: `Some(bytes)`,
/// or `None` once the peer closed its side.
pub(super) fn poll_next_bytes<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Option<Bytes>>> {
    let mut scratch = [0u8; 2048];
    let mut buf = ReadBuf::new(&mut scratch);
    ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
    let filled = buf.filled();
    Poll::Ready(Ok(
        (!filled.is_empty()).then(|| Bytes::copy_from_slice(filled))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_header_timer_notes_the_grace_then_runs_to_the_real_deadline() {
        let state = Arc::new(ConnState::default());
        let start = Instant::now();
        let timer = ConnTimer::new(
            state.clone(),
            start + Duration::from_secs(60),
            Duration::from_secs(1),
        );
        state.grace_passed.store(true, Ordering::SeqCst);
        let deadline = start + Duration::from_secs(1);
        let mut sleep = timer.sleep_until(deadline);
        // Arming the timer starts a head: no grace yet, and the deadline is kept for parking.
        assert!(state.head_wanted.load(Ordering::SeqCst));
        assert!(!state.grace_passed.load(Ordering::SeqCst));
        assert_eq!(
            state
                .head_deadline()
                .map(|d| d.duration_since(start).as_millis()),
            Some(1000)
        );

        // At `PARK_AFTER` it notes the grace and wakes the task without completing.
        std::future::poll_fn(|cx| match sleep.as_mut().poll(cx) {
            Poll::Pending if state.grace_passed.load(Ordering::SeqCst) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => panic!("the header timer completed at the grace period"),
        })
        .await;
        assert!(start.elapsed() >= PARK_AFTER);
        assert!(
            Instant::now() < deadline,
            "the grace came too late to be the grace"
        );

        // It completes only at the header deadline (hyper's timeout).
        sleep.as_mut().await;
        assert!(Instant::now() >= deadline);

        // The next request head clears the grace again.
        state.request_started();
        assert!(!state.grace_passed.load(Ordering::SeqCst));
    }

    /// One Tokio timer serves every head of a hyper instance: a wait re-arms it for its own
    /// grace, whatever an earlier, abandoned wait had armed it for.
    #[tokio::test]
    async fn each_head_wait_rearms_the_shared_timer_for_its_own_grace() {
        let state = Arc::new(ConnState::default());
        let timer = ConnTimer::new(
            state.clone(),
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
        );
        // A wait armed and then given up at once: its head arrived.
        let mut abandoned = timer.sleep_until(Instant::now() + Duration::from_secs(1));
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(abandoned.as_mut().poll(cx))).await;
        assert!(first_poll.is_pending());
        drop(abandoned);
        state.request_started();
        // The next head is waited for later: its grace counts from then, not from the first.
        tokio::time::sleep(PARK_AFTER / 2).await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1);
        let mut sleep = timer.sleep_until(deadline);
        std::future::poll_fn(|cx| match sleep.as_mut().poll(cx) {
            Poll::Pending if state.grace_passed.load(Ordering::SeqCst) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => panic!("the header timer completed at the grace period"),
        })
        .await;
        assert!(
            started.elapsed() >= PARK_AFTER,
            "grace noted after {:?}, before PARK_AFTER",
            started.elapsed()
        );
        sleep.as_mut().await;
        assert!(Instant::now() >= deadline);
    }
}
