//! `floor`: the cheapest HTTP/1.1 keep-alive forwarder we could write, as a lower bound for
//! what a proxy that forwards each request with its own reads and writes (nginx, Portcullis)
//! costs on this machine's loopback TCP (benches/load.sh, variant `floor`).
//!
//! One thread, one epoll (mio), and per client connection one upstream connection of its own,
//! opened when the client connects. A request costs four system calls besides the shared
//! `epoll_wait`: read the request, write it upstream, read the response, write it back. No
//! socket is read until it would block: the forwarder stops reading a side once the message
//! on it is complete (the head's `Content-Length` says where), which is what makes it cheaper
//! than a general proxy, and it is only right for clients that wait for each response before
//! sending the next request (wrk, benches/pace, curl; no pipelining). It authorizes nothing,
//! adds no headers, and does not handle chunked bodies, `HEAD`, 1xx, 204 or 304 responses:
//! enough for the benchmark's GETs, and no more.
//!
//! Usage: `floor LISTEN_ADDR UPSTREAM_ADDR [--pipeline N]` (e.g. `floor 127.0.0.1:8081
//! 127.0.0.1:8080`); `--pipeline N` multiplexes the clients over N pipelined upstream
//! connections instead (`pipelined.rs`).

mod pipelined;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

pub(crate) const LISTENER: Token = Token(usize::MAX);
const BUFFER: usize = 64 * 1024;

/// Which way the current message flows.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    Request,
    Response,
}

struct Pair {
    client: TcpStream,
    upstream: TcpStream,
    stage: Stage,
    buf: Vec<u8>,
    /// Bytes of `buf` read from the source, and of those, written to the destination.
    filled: usize,
    sent: usize,
    /// Bytes of the current message read so far, and its whole length once its head is in.
    seen: usize,
    total: Option<usize>,
}

enum Progress {
    Blocked,
    Closed,
}

/// The length of the message whose head is at the front of `buf`, once the head is complete:
/// head plus `Content-Length` (0 when absent). `Err` for what this forwarder does not frame.
fn message_length(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut body = 0;
    for line in head.split("\r\n").skip(1) {
        let (name, value) = line.split_once(':').ok_or("header line without a colon")?;
        if name.eq_ignore_ascii_case("content-length") {
            body = value.trim().parse().map_err(|_| "bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding is not supported");
        }
    }
    Ok(Some(head_end + 4 + body))
}

impl Pair {
    /// Moves the current message as far as the sockets allow; called on any event of either.
    fn pump(&mut self) -> Result<Progress, String> {
        loop {
            let (src, dst) = match self.stage {
                Stage::Request => (&mut self.client, &mut self.upstream),
                Stage::Response => (&mut self.upstream, &mut self.client),
            };
            if self.total.is_some() && self.sent < self.filled {
                match dst.write(&self.buf[self.sent..self.filled]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                    Err(e) => return Err(format!("write: {e}")),
                }
                continue;
            }
            if self.total == Some(self.seen) {
                // The message is through. The next one starts on the other side; its first
                // bytes arrive as a new readiness edge, so no read is tried until then.
                self.stage = match self.stage {
                    Stage::Request => Stage::Response,
                    Stage::Response => Stage::Request,
                };
                (self.filled, self.sent, self.seen, self.total) = (0, 0, 0, None);
                return Ok(Progress::Blocked);
            }
            if self.total.is_some() {
                (self.filled, self.sent) = (0, 0);
            } else if self.filled == self.buf.len() {
                return Err("message head larger than the buffer".into());
            }
            match src.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(Progress::Closed),
                Ok(n) => {
                    self.filled += n;
                    self.seen += n;
                    if self.total.is_none() {
                        self.total = message_length(&self.buf[..self.filled])?;
                    }
                    if self.total.is_some_and(|t| self.seen > t) {
                        return Err(
                            "more bytes than the message (pipelining is not supported)".into()
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

fn open_pair(
    poll: &Poll,
    client: TcpStream,
    upstream: SocketAddr,
    slot: usize,
) -> std::io::Result<Pair> {
    let std_upstream = std::net::TcpStream::connect(upstream)?;
    std_upstream.set_nodelay(true)?;
    std_upstream.set_nonblocking(true)?;
    client.set_nodelay(true)?;
    let mut pair = Pair {
        client,
        upstream: TcpStream::from_std(std_upstream),
        stage: Stage::Request,
        buf: vec![0; BUFFER],
        filled: 0,
        sent: 0,
        seen: 0,
        total: None,
    };
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut pair.client, Token(2 * slot), both)?;
    poll.registry()
        .register(&mut pair.upstream, Token(2 * slot + 1), both)?;
    Ok(pair)
}

/// The epoll instance and the listening socket (token `LISTENER`) of either mode.
pub(crate) fn bind(listen: SocketAddr) -> Result<(Poll, TcpListener), String> {
    let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register: {e}"))?;
    Ok((poll, listener))
}

/// `epoll_wait` without a timeout; an interrupted wait returns with no events.
pub(crate) fn wait(poll: &mut Poll, events: &mut Events) -> Result<(), String> {
    match poll.poll(events, None) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        Err(e) => Err(format!("epoll_wait: {e}")),
    }
}

fn run(listen: SocketAddr, upstream: SocketAddr) -> Result<(), String> {
    let (mut poll, listener) = bind(listen)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    loop {
        wait(&mut poll, &mut events)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("floor: accept: {e}");
                            break;
                        }
                    };
                    let slot = pairs
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or(pairs.len());
                    match open_pair(&poll, client, upstream, slot) {
                        Ok(pair) if slot == pairs.len() => pairs.push(Some(pair)),
                        Ok(pair) => pairs[slot] = Some(pair),
                        Err(e) => eprintln!("floor: upstream {upstream}: {e}"),
                    }
                }
                continue;
            }
            let slot = event.token().0 / 2;
            let Some(pair) = pairs.get_mut(slot).and_then(Option::as_mut) else {
                continue; // an event of a pair closed earlier in this batch
            };
            let close = match pair.pump() {
                Ok(Progress::Blocked) => false,
                Ok(Progress::Closed) => true,
                Err(e) => {
                    // A client that hangs up mid-response (wrk at the end of a run) is no news.
                    if !e.contains("Broken pipe") && !e.contains("reset by peer") {
                        eprintln!("floor: connection {slot}: {e}");
                    }
                    true
                }
            };
            if close && let Some(mut pair) = pairs[slot].take() {
                let _ = poll.registry().deregister(&mut pair.client);
                let _ = poll.registry().deregister(&mut pair.upstream);
            }
        }
    }
}

const USAGE: &str =
    "usage: floor LISTEN_ADDR UPSTREAM_ADDR [--pipeline N] (e.g. 127.0.0.1:8081 127.0.0.1:8080)";

fn main() -> ExitCode {
    let usage = || {
        eprintln!("{USAGE}");
        ExitCode::from(2)
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(Ok(listen)), Some(Ok(upstream))) = (
        args.first().map(|a| a.parse::<SocketAddr>()),
        args.get(1).map(|a| a.parse::<SocketAddr>()),
    ) else {
        return usage();
    };
    let pipeline = match &args[2..] {
        [] => None,
        [flag, n] if flag == "--pipeline" => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return usage(),
        },
        _ => return usage(),
    };
    let result = match pipeline {
        Some(n) => pipelined::run(listen, upstream, n),
        None => run(listen, upstream),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_by_head_and_content_length() {
        assert_eq!(message_length(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(
            message_length(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some(27))
        );
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel";
        assert_eq!(message_length(response), Ok(Some(43)));
        assert!(message_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(message_length(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
