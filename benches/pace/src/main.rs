//! `pace`: an open-loop HTTP/1.1 load generator for latency at a fixed rate (benches/load.sh).
//!
//! h2load's `--rps` gives every connection its own timer, and timers started together fire
//! together: 20 connections send in bursts of 20, and the p99 measures how long the 20th of
//! a burst queues, not what a hop adds. Here one schedule (uniform, as wrk2, or Poisson
//! arrivals) says when each request is due; a due request goes out on an idle keep-alive
//! connection at once (the loop spins on a zero-timeout poll, so sends are a few µs late at
//! most), and its latency counts from when it was due. A request that finds no idle
//! connection waits, and that wait is in its latency too (no coordinated omission).
//!
//! Output: one `RESULT <req/s> <p50 µs> <p99 µs> <requests> <errors>` line (what load.sh
//! parses), then the percentiles and how late the sends were.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Args {
    addr: SocketAddr,
    request: Vec<u8>,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
    poisson: bool,
    seed: u64,
}

const USAGE: &str = "usage: pace --url http://HOST:PORT/PATH [-H 'Name: value']... --rate REQ_PER_S \
[--duration S] [--warmup S] [--connections N] [--arrivals uniform|poisson] [--seed N]";

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut headers = Vec::new();
    let (mut rate, mut duration, mut warmup, mut connections) = (None, 10.0, 2.0, 32usize);
    let (mut poisson, mut seed) = (false, 0x9e37_79b9_7f4a_7c15u64);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "-H" | "--header" => headers.push(value()?),
            "--rate" => rate = Some(number(value()?)?),
            "--duration" => duration = number(value()?)?,
            "--warmup" => warmup = number(value()?)?,
            "--connections" | "-c" => {
                connections = value()?.parse().map_err(|e| format!("{flag}: {e}"))?
            }
            "--arrivals" => match value()?.as_str() {
                "uniform" => poisson = false,
                "poisson" => poisson = true,
                other => return Err(format!("--arrivals {other}: uniform or poisson")),
            },
            "--seed" => seed = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let url = url.ok_or(USAGE)?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs (plain HTTP/1.1 on loopback)")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or(format!("{authority}: no address"))?;
    let rate = rate.ok_or("--rate is required")?;
    let positive = |x: f64| x > 0.0; // false for NaN too
    if !positive(rate) || connections == 0 || !positive(duration) || warmup < 0.0 {
        return Err("--rate, --duration and --connections must be positive".into());
    }
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for h in &headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    Ok(Args {
        addr,
        request: request.into_bytes(),
        rate,
        duration,
        warmup,
        connections,
        poisson,
        seed: seed | 1,
    })
}

/// Inter-arrival gaps: constant, or exponential (Poisson arrivals) from xorshift64*.
struct Arrivals {
    mean_ns: f64,
    poisson: bool,
    state: u64,
}

impl Arrivals {
    fn next_gap(&mut self) -> Duration {
        if !self.poisson {
            return Duration::from_nanos(self.mean_ns as u64);
        }
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let uniform = (bits as f64 + 0.5) / (1u64 << 53) as f64; // in (0, 1)
        Duration::from_nanos((-uniform.ln() * self.mean_ns) as u64)
    }
}

struct Conn {
    stream: TcpStream,
    /// When the request in flight was due, and when it actually went out.
    in_flight: Option<(Instant, Instant)>,
    read: Vec<u8>,
    /// Bytes of the request not yet written (a full socket buffer; rare).
    unsent: usize,
}

enum Parsed {
    Incomplete,
    Done { ok: bool, len: usize },
    Bad,
}

/// One response at the front of `buf`: status line, `Content-Length` or chunked framing.
fn parse_response(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parsed::Incomplete;
    };
    let head = &buf[..head_end];
    let Ok(head) = std::str::from_utf8(head) else {
        return Parsed::Bad;
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Parsed::Bad;
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Bad;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) => length = Some(n),
                Err(_) => return Parsed::Bad,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body_start = head_end + 4;
    let ok = (200..400).contains(&status);
    if chunked {
        // Good enough for a benchmark: the body ends at the last-chunk marker.
        return match buf[body_start..].windows(5).position(|w| w == b"0\r\n\r\n") {
            Some(at) => Parsed::Done {
                ok,
                len: body_start + at + 5,
            },
            None => Parsed::Incomplete,
        };
    }
    let len = body_start + length.unwrap_or(0);
    if buf.len() >= len {
        Parsed::Done { ok, len }
    } else {
        Parsed::Incomplete
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    sorted[at]
}

fn connect(poll: &Poll, addr: SocketAddr, token: usize) -> std::io::Result<TcpStream> {
    let std_stream = std::net::TcpStream::connect(addr)?;
    std_stream.set_nodelay(true)?;
    std_stream.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(std_stream);
    poll.registry().register(
        &mut stream,
        Token(token),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(stream)
}

fn run(args: Args) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let stream = connect(&poll, args.addr, i).map_err(|e| format!("{}: {e}", args.addr))?;
        conns.push(Conn {
            stream,
            in_flight: None,
            read: Vec::with_capacity(80 * 1024),
            unsent: 0,
        });
    }
    let mut idle: VecDeque<usize> = (0..args.connections).collect();
    let mut arrivals = Arrivals {
        mean_ns: 1e9 / args.rate,
        poisson: args.poisson,
        state: args.seed,
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let expected = (args.rate * args.duration * 1.1) as usize + 16;
    let (mut latencies, mut service, mut send_lag) = (
        Vec::with_capacity(expected),
        Vec::with_capacity(expected),
        Vec::with_capacity(expected),
    );
    let (mut errors, mut queued) = (0u64, 0u64);
    let mut due: VecDeque<Instant> = VecDeque::new();
    let mut next_due = start;
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let drain_deadline = stop_at + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        while next_due <= now && next_due < stop_at {
            due.push_back(next_due);
            next_due += arrivals.next_gap();
        }
        let in_flight = args.connections - idle.len();
        if next_due >= stop_at && due.is_empty() && in_flight == 0 {
            break;
        }
        if now > drain_deadline {
            errors += (due.len() + in_flight) as u64;
            break;
        }
        while let Some(&when) = due.front() {
            let Some(i) = idle.pop_front() else {
                break;
            };
            due.pop_front();
            if now.duration_since(when) > Duration::from_micros(50) && when >= measure_from {
                queued += 1;
            }
            let conn = &mut conns[i];
            conn.in_flight = Some((when, now));
            match conn.stream.write(&args.request) {
                Ok(n) => conn.unsent = args.request.len() - n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => conn.unsent = args.request.len(),
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        poll.poll(&mut events, Some(Duration::ZERO))
            .map_err(|e| e.to_string())?;
        for event in &events {
            let i = event.token().0;
            let conn = &mut conns[i];
            if conn.unsent > 0 && event.is_writable() {
                let from = args.request.len() - conn.unsent;
                match conn.stream.write(&args.request[from..]) {
                    Ok(n) => conn.unsent -= n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            if !event.is_readable() && !event.is_read_closed() {
                continue;
            }
            let mut closed = false;
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => conn.read.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let done_at = Instant::now();
            match parse_response(&conn.read) {
                Parsed::Incomplete if !closed => {}
                Parsed::Done { ok, len } => {
                    conn.read.drain(..len);
                    if let Some((when, sent)) = conn.in_flight.take() {
                        if when >= measure_from {
                            if ok {
                                latencies.push(done_at.duration_since(when).as_nanos() as u64);
                                service.push(done_at.duration_since(sent).as_nanos() as u64);
                                send_lag.push(sent.duration_since(when).as_nanos() as u64);
                            } else {
                                errors += 1;
                            }
                        }
                        idle.push_back(i);
                    }
                }
                Parsed::Incomplete | Parsed::Bad => {
                    // A closed or garbled connection: count its request, open a new one.
                    if conn
                        .in_flight
                        .take()
                        .is_some_and(|(when, _)| when >= measure_from)
                    {
                        errors += 1;
                    }
                    let _ = poll.registry().deregister(&mut conn.stream);
                    conn.stream = connect(&poll, args.addr, i)
                        .map_err(|e| format!("reconnect {}: {e}", args.addr))?;
                    conn.read.clear();
                    conn.unsent = 0;
                    idle.push_back(i);
                }
            }
        }
    }
    latencies.sort_unstable();
    service.sort_unstable();
    send_lag.sort_unstable();
    let us = |ns: u64| ns / 1000;
    let n = latencies.len();
    // One write at the end, and a closed stdout (`| head -1`) is not an error.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "RESULT {:.1} {} {} {} {}",
        n as f64 / args.duration,
        us(percentile(&latencies, 0.50)),
        us(percentile(&latencies, 0.99)),
        n,
        errors
    );
    let mut row = |name: &str, v: &[u64]| {
        let _ = writeln!(
            out,
            "{name:<28} p50 {:>6} µs  p90 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>6}",
            us(percentile(v, 0.50)),
            us(percentile(v, 0.90)),
            us(percentile(v, 0.99)),
            us(percentile(v, 0.999)),
            us(v.last().copied().unwrap_or(0)),
        );
    };
    row("latency (from due time)", &latencies);
    row("latency (from send)", &service);
    row("send lag (send - due)", &send_lag);
    let _ = writeln!(
        out,
        "{} arrivals at {:.0} req/s over {:.1} s on {} connections: {n} answered, {errors} errors, {queued} waited > 50 µs for a connection",
        if args.poisson { "poisson" } else { "uniform" },
        args.rate,
        args.duration,
        args.connections
    );
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pace: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_by_content_length_and_chunked() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1";
        assert!(matches!(parse_response(r), Parsed::Done { ok: true, len } if len == r.len() - 8));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabc"),
            Parsed::Incomplete
        ));
        let c =
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert!(matches!(parse_response(c), Parsed::Done { ok: false, len } if len == c.len()));
        assert!(matches!(parse_response(b"garbage\r\n\r\n"), Parsed::Bad));
    }

    #[test]
    fn poisson_gaps_average_to_the_rate() {
        let mut a = Arrivals {
            mean_ns: 100_000.0,
            poisson: true,
            state: 12345,
        };
        let total: Duration = (0..100_000).map(|_| a.next_gap()).sum();
        let mean = total.as_nanos() as f64 / 100_000.0;
        assert!((mean - 100_000.0).abs() < 2_000.0, "mean gap {mean} ns");
    }
}
