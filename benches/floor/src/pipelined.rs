//! `--pipeline N`: the floor's requests multiplexed over N upstream connections with HTTP/1.1
//! pipelining. Everything the clients sent during one event-loop turn goes upstream in one
//! write per connection, and responses are read until the connection's queue is answered, so
//! the upstream side costs a few system calls and TCP segments per *turn* rather than per
//! request. An experiment, not a design: production proxies (nginx, Envoy, HAProxy) do not
//! pipeline to upstreams, since one slow or failed response holds up or loses every request
//! queued behind it. Same limits as the plain floor: clients wait for each response, bodies
//! are framed by `Content-Length`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Events, Interest, Registry, Token};

use crate::{LISTENER, bind, message_length, wait};

const READ_CHUNK: usize = 64 * 1024;

struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
}

struct Upstream {
    stream: TcpStream,
    out: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    /// Clients whose requests were written and not yet answered, in order.
    waiting: VecDeque<usize>,
    /// The response being forwarded: its client and the bytes of it still to come.
    current: Option<(usize, usize)>,
    /// A response said `Connection: close`.
    closing: bool,
}

/// Whether the head at the front of `buf` (complete) has `Connection: close`.
fn announces_close(buf: &[u8]) -> bool {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
    String::from_utf8_lossy(&buf[..end])
        .split("\r\n")
        .any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
            })
        })
}

enum Io {
    Done,
    Blocked,
    Closed,
}

/// Appends one `read` to `buf`, through `scratch` (one buffer for all sockets: growing `buf`
/// by a zeroed chunk per read would cost a 64 KiB memset each time).
fn read_some(stream: &mut TcpStream, scratch: &mut [u8], buf: &mut Vec<u8>) -> std::io::Result<Io> {
    match stream.read(scratch) {
        Ok(0) => Ok(Io::Closed),
        Ok(n) => {
            buf.extend_from_slice(&scratch[..n]);
            Ok(Io::Done)
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Io::Blocked),
        Err(e) => Err(e),
    }
}

/// Writes `out[*sent..]`; `Done` once all of it is out (and `out` is cleared).
fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, sent: &mut usize) -> std::io::Result<Io> {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Io::Blocked),
            Err(e) => return Err(e),
        }
    }
    out.clear();
    *sent = 0;
    Ok(Io::Done)
}

fn connect(registry: &Registry, upstream: SocketAddr, u: usize) -> Result<TcpStream, String> {
    let stream = std::net::TcpStream::connect(upstream)
        .and_then(|s| s.set_nodelay(true).and(s.set_nonblocking(true)).map(|()| s))
        .map_err(|e| format!("upstream {upstream}: {e}"))?;
    let mut stream = TcpStream::from_std(stream);
    registry
        .register(
            &mut stream,
            Token(2 * u + 1),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|e| format!("register: {e}"))?;
    Ok(stream)
}

/// The upstream connection closed (`keepalive_requests`) or failed: the requests queued on it
/// are lost, so their clients are closed; the next requests go on a new connection.
fn reconnect(
    up: &mut Upstream,
    clients: &mut [Option<Client>],
    registry: &Registry,
    upstream: SocketAddr,
    u: usize,
) -> Result<(), String> {
    let owed = up.current.take().map(|(c, _)| c).into_iter();
    for slot in owed.chain(up.waiting.drain(..)) {
        if let Some(mut client) = clients.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut client.stream);
        }
    }
    let _ = registry.deregister(&mut up.stream);
    up.out.clear();
    up.sent = 0;
    up.input.clear();
    up.closing = false;
    up.stream = connect(registry, upstream, u)?;
    Ok(())
}

pub fn run(listen: SocketAddr, upstream: SocketAddr, connections: usize) -> Result<(), String> {
    let (mut poll, listener) = bind(listen)?;
    let both = Interest::READABLE | Interest::WRITABLE;
    let mut upstreams = Vec::new();
    for u in 0..connections.max(1) {
        let stream = connect(poll.registry(), upstream, u)?;
        upstreams.push(Upstream {
            stream,
            out: Vec::new(),
            sent: 0,
            input: Vec::new(),
            waiting: VecDeque::new(),
            current: None,
            closing: false,
        });
    }
    // Client slots are never reused: a response still queued upstream for a closed client
    // finds its slot empty and is dropped.
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut dirty_upstreams = vec![false; upstreams.len()];
    let mut dirty_clients: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0; READ_CHUNK];
    loop {
        wait(&mut poll, &mut events)?;
        for event in events.iter() {
            let token = event.token();
            if token == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let slot = clients.len();
                    let registered = stream.set_nodelay(true).and_then(|()| {
                        poll.registry().register(&mut stream, Token(2 * slot), both)
                    });
                    if registered.is_ok() {
                        clients.push(Some(Client {
                            stream,
                            request: Vec::new(),
                            out: Vec::new(),
                            sent: 0,
                        }));
                    }
                }
            } else if token.0 % 2 == 0 {
                let slot = token.0 / 2;
                let Some(client) = clients.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                let mut close = false;
                if !client.out.is_empty() {
                    close |= flush(&mut client.stream, &mut client.out, &mut client.sent).is_err();
                }
                // Read until one request is complete (the client then waits for its answer).
                while !close {
                    match read_some(&mut client.stream, &mut scratch, &mut client.request) {
                        Ok(Io::Done) => {}
                        Ok(Io::Blocked) => break,
                        Ok(Io::Closed) | Err(_) => {
                            close = true;
                            break;
                        }
                    }
                    match message_length(&client.request) {
                        Ok(Some(len)) if len == client.request.len() => {
                            let u = slot % upstreams.len();
                            upstreams[u].out.extend_from_slice(&client.request);
                            upstreams[u].waiting.push_back(slot);
                            dirty_upstreams[u] = true;
                            client.request.clear();
                            break;
                        }
                        Ok(None) => {}
                        Ok(Some(_)) | Err(_) => close = true,
                    }
                }
                if close && let Some(mut client) = clients[slot].take() {
                    let _ = poll.registry().deregister(&mut client.stream);
                }
            } else {
                let u = token.0 / 2;
                let up = &mut upstreams[u];
                let mut lost =
                    !up.out.is_empty() && flush(&mut up.stream, &mut up.out, &mut up.sent).is_err();
                // Read while responses are owed; forward each as its bytes arrive.
                while !lost && (up.current.is_some() || !up.waiting.is_empty()) {
                    match read_some(&mut up.stream, &mut scratch, &mut up.input) {
                        Ok(Io::Done) => {}
                        Ok(Io::Blocked) => break,
                        Ok(Io::Closed) | Err(_) => {
                            lost = true;
                            break;
                        }
                    }
                    let mut at = 0;
                    loop {
                        if up.current.is_none() {
                            match message_length(&up.input[at..]) {
                                Ok(Some(total)) => {
                                    let client =
                                        up.waiting.pop_front().ok_or("unasked response")?;
                                    up.current = Some((client, total));
                                    // The upstream answers no more on this connection (nginx's
                                    // keepalive_requests): what is queued behind is lost.
                                    up.closing |= announces_close(&up.input[at..]);
                                }
                                Ok(None) => break,
                                Err(e) => return Err(format!("upstream response: {e}")),
                            }
                        }
                        let Some((client, remaining)) = up.current else {
                            break;
                        };
                        let n = remaining.min(up.input.len() - at);
                        if n == 0 {
                            break;
                        }
                        if let Some(Some(c)) = clients.get_mut(client) {
                            if c.out.is_empty() {
                                dirty_clients.push(client);
                            }
                            c.out.extend_from_slice(&up.input[at..at + n]);
                        }
                        at += n;
                        up.current = (remaining > n).then_some((client, remaining - n));
                    }
                    up.input.drain(..at);
                }
                if lost || (up.closing && up.current.is_none()) {
                    reconnect(up, &mut clients, poll.registry(), upstream, u)?;
                }
            }
        }
        // One write per upstream connection for everything this turn's clients sent, then one
        // per client for what came back.
        for (u, dirty) in dirty_upstreams.iter_mut().enumerate() {
            if std::mem::take(dirty) {
                let up = &mut upstreams[u];
                if flush(&mut up.stream, &mut up.out, &mut up.sent).is_err() {
                    reconnect(up, &mut clients, poll.registry(), upstream, u)?;
                }
            }
        }
        for slot in dirty_clients.drain(..) {
            if let Some(Some(c)) = clients.get_mut(slot)
                && flush(&mut c.stream, &mut c.out, &mut c.sent).is_err()
                && let Some(mut client) = clients[slot].take()
            {
                let _ = poll.registry().deregister(&mut client.stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_connection_close_in_the_head_only() {
        assert!(announces_close(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(announces_close(
            b"HTTP/1.1 200 OK\r\nconnection:Close\r\n\r\n"
        ));
        assert!(!announces_close(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!announces_close(
            b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nConnection: close"
        ));
    }
}
