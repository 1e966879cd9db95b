//! `syslog`: RFC 5424 messages with structured data, over TCP with RFC 6587 octet counting,
//! TLS per RFC 5425 (octet counting inside TLS, optional client certificate), or UDP
//! (RFC 5426, one message per datagram, lossy by nature).
//!
//! Stream syslog has no application-level acknowledgement, and a write to a peer that just
//! died still succeeds (research/siem.md §1.2). So the sink keeps the last batch it wrote
//! (the window); before each send it probes the connection, and on reconnect it resends the
//! window first. Delivery is at-least-once; duplicates carry the same `eid`.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{SinkError, tls_config};
use crate::audit::format::{self, SyslogHeader};
use crate::audit::spool::Record;
use crate::config::{AuditFormat, SinkKind, SinkSettings, SyslogTransport};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Whether the peer has closed or reset the connection (a non-blocking probe: syslog
    /// receivers never send anything, so readable means EOF or error).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        match self {
            Conn::Tcp(s) => match s.try_read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            },
            Conn::Tls(s) => match tokio::time::timeout(Duration::ZERO, s.read(&mut buf)).await {
                Err(_) => false,
                Ok(Ok(0)) | Ok(Err(_)) => true,
                Ok(Ok(_)) => false,
            },
        }
    }
}

pub(crate) struct SyslogSink {
    address: String,
    transport: SyslogTransport,
    format: AuditFormat,
    header: SyslogHeader,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    udp: Option<UdpSocket>,
    /// The frames of the last batch written on the current connection.
    window: Vec<u8>,
}

impl SyslogSink {
    pub fn new(settings: &SinkSettings) -> Result<SyslogSink, String> {
        let SinkKind::Syslog {
            address,
            transport,
            tls,
            facility,
            app_name,
            sd_id,
        } = &settings.kind
        else {
            return Err("not a syslog sink".into());
        };
        let tls = if *transport == SyslogTransport::Tls {
            let config = tls_config(tls, false)?;
            let host = tls.server_name.clone().unwrap_or_else(|| {
                address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(h, _)| h)
                    .trim_matches(['[', ']'])
                    .to_owned()
            });
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("invalid TLS server name `{host}`"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(SyslogSink {
            address: address.clone(),
            transport: *transport,
            format: settings.format,
            header: SyslogHeader {
                facility: *facility,
                app_name: app_name.clone(),
                sd_id: sd_id.clone(),
                procid: std::process::id().to_string(),
            },
            tls,
            conn: None,
            udp: None,
            window: Vec::new(),
        })
    }

    fn message(&self, record: &Record) -> Vec<u8> {
        match format::parse(&record.payload) {
            Ok(event) => {
                let msg = format::render_parsed(self.format, &record.payload, &event);
                format::rfc5424(&self.header, &event, &msg)
            }
            // Unreadable record: still deliver its bytes, with a minimal header.
            Err(_) => {
                let mut m = format!(
                    "<{}>1 - - {} - - - ",
                    u16::from(self.header.facility) * 8 + 3,
                    self.header.app_name
                )
                .into_bytes();
                m.extend_from_slice(&record.payload);
                m
            }
        }
    }

    async fn connect(&mut self) -> Result<Conn, SinkError> {
        let connect_err = |reason: String| SinkError::Connect {
            address: self.address.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| SinkError::Timeout)?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Tcp(tcp)),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| SinkError::Timeout)?
                        .map_err(|e| connect_err(format!("TLS handshake: {e}")))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }

    pub async fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        if self.transport == SyslogTransport::Udp {
            if self.udp.is_none() {
                let bind = if self.address.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let socket = UdpSocket::bind(bind).await?;
                socket
                    .connect(&self.address)
                    .await
                    .map_err(|e| SinkError::Connect {
                        address: self.address.clone(),
                        reason: e.to_string(),
                    })?;
                self.udp = Some(socket);
            }
            for record in batch {
                let msg = self.message(record);
                if let Some(socket) = &self.udp
                    && let Err(err) = socket.send(&msg).await
                {
                    self.udp = None;
                    return Err(err.into());
                }
            }
            return Ok(());
        }
        let mut frames = Vec::with_capacity(batch.len() * 700);
        for record in batch {
            format::octet_frame(&mut frames, &self.message(record));
        }
        if let Some(conn) = &mut self.conn
            && conn.closed().await
        {
            tracing::warn!(address = %self.address, "Syslog receiver closed the connection; reconnecting and resending the last batch.");
            self.conn = None;
        }
        if self.conn.is_none() {
            let mut conn = self.connect().await?;
            if !self.window.is_empty() {
                tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(&self.window))
                    .await
                    .map_err(|_| SinkError::Timeout)??;
            }
            self.conn = Some(conn);
        }
        let Some(conn) = &mut self.conn else {
            return Err(SinkError::Timeout);
        };
        match tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(&frames)).await {
            Ok(Ok(())) => {
                self.window = frames;
                Ok(())
            }
            Ok(Err(err)) => {
                self.conn = None;
                Err(err.into())
            }
            Err(_) => {
                self.conn = None;
                Err(SinkError::Timeout)
            }
        }
    }
}
