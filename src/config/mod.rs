//! Configuration: TOML (DESIGN.md §8) → validated `Snapshot` of domain types.
//!
//! Three stages: `raw` (serde, `deny_unknown_fields`, spans) → `validate` (every check, every
//! error collected with file:line:col and a help line) → `Snapshot`. `portcullis check`, `run`,
//! `demo` and (later) hot reload all go through `load`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod diagnostic;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use crate::identity::JwtSettings;
use crate::policy::{Mode, Policy, Rule, SubjectData, TenantData};
use crate::route::RouteTable;

/// One configuration problem, rendered as `file:line:col: error: message` + source line +
/// caret + `help: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no location (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `routes[3].upstream`.
    pub key: String,
    pub message: String,
    pub help: Option<String>,
    /// The rendered diagnostic (with source line and caret).
    pub rendered: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rendered)
    }
}

/// All errors of one load attempt. `Display` renders every error followed by a summary, so
/// the CLI can print it as is.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(f, "{}", e.rendered)?;
        }
        let n = self.errors.len();
        write!(
            f,
            "{n} configuration error{}",
            if n == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// `[server] admin_token_env`: the admin API then wants `Authorization: Bearer <token>`.
    pub admin_token: Option<AdminToken>,
    /// `[server] tls`: HTTPS on `listen`; `None` serves plain HTTP.
    pub tls: Option<TlsSettings>,
}

/// The admin API's bearer token, read from the environment at load; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter).
    Json,
}

/// `[log]`: diagnostics and the access log (the audit trail is `[audit]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `portcullis=debug`; `RUST_LOG` wins.
    pub level: String,
    /// One `access` line per request (default on).
    pub access_log: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: true,
        }
    }
}

/// Whether a TLS client must present a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Optional,
    Required,
}

/// TLS termination; paths are resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// mTLS: CA bundle client certificates must chain to, and whether one is required.
    pub client_auth: Option<(PathBuf, ClientAuth)>,
    /// How often the cert/key files are checked for changes (default 5 s).
    pub watch_interval: Duration,
}

/// What the gateway speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 only: prior knowledge on plain TCP, ALPN `h2` over TLS.
    Http2,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    /// `host:port` authorities; round robin over the healthy ones.
    pub targets: Vec<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this long (default 90 s).
    pub idle_timeout: Duration,
    /// Consecutive connect failures or timeouts that eject a target (default 3).
    pub max_failures: u32,
    /// How long an ejected target is skipped (default 10 s).
    pub eject_for: Duration,
    /// Concurrent requests (so connections) to this upstream; `None` = unbounded.
    pub max_connections: Option<usize>,
    pub protocol: UpstreamProtocol,
    /// `tls = true`: HTTPS to the targets; `Some(None)` trusts the system roots,
    /// `Some(Some(ca))` only the given CA bundle.
    pub tls: Option<Option<PathBuf>>,
}

/// `[limits]` (R11). Defaults follow nginx/Envoy orders of magnitude.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsSettings {
    /// A client has this long to finish the TLS handshake and send a request head (10 s).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (64 KiB; hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Most header fields in one request (100).
    pub max_headers: usize,
    /// Longest request target, path + query (8 KiB) → 414.
    pub max_uri_length: usize,
    /// Largest request body (10 MiB) → 413.
    pub max_body: u64,
    /// Concurrent client connections; beyond it the listener stops accepting (25,000).
    pub max_connections: usize,
    /// Requests served on one connection before it is closed; `None` = unlimited.
    pub max_requests_per_connection: Option<u64>,
    /// How long shutdown waits for in-flight requests (30 s).
    pub shutdown_timeout: Duration,
    /// Longest a WebSocket tunnel stays open (1 h); a route may set a shorter one.
    pub websocket_max_lifetime: Duration,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_body: 10 * 1024 * 1024,
            max_connections: 25_000,
            max_requests_per_connection: None,
            shutdown_timeout: Duration::from_secs(30),
            websocket_max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// `[cors] allow_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowOrigins {
    /// `"*"`: answered with `*`, never with the caller's origin (so never with credentials).
    Any,
    /// Exact `scheme://host[:port]` strings, lower-case.
    List(Vec<String>),
}

/// `[cors]`: the gateway answers preflights and decorates responses for allowed origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsSettings {
    pub allow_origins: AllowOrigins,
    pub allow_methods: Vec<http::Method>,
    pub allow_headers: Vec<http::HeaderName>,
    pub expose_headers: Vec<http::HeaderName>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

/// The file store's data (`[tenants.*]`, `[[assignments]]`).
#[derive(Debug, Clone, Default)]
pub struct FileStoreData {
    /// tenant name → record
    pub tenants: Vec<(String, TenantData)>,
    /// (tenant, subject) → assignment
    pub assignments: Vec<((String, String), SubjectData)>,
}

#[derive(Debug, Clone)]
pub enum StoreSettings {
    File(FileStoreData),
    Redis(RedisSettings),
}

/// `[grants.redis]` (DESIGN.md §5).
#[derive(Clone)]
pub struct RedisSettings {
    /// One server by URL, or a master found through Redis Sentinel.
    pub target: RedisTarget,
    /// Key prefix, default `authz`.
    pub prefix: String,
    /// ACL user (overrides one in the URL).
    pub username: Option<String>,
    /// Read from `password_env` at load; never printed.
    pub password: Option<String>,
    /// One connection attempt (default 1 s).
    pub connect_timeout: Duration,
    /// Longest a request waits on Redis, reconnects included (default 250 ms).
    pub command_timeout: Duration,
    /// Most principals (and, separately, API keys) kept in the L1 cache (default 100 000).
    pub cache_capacity: usize,
    /// Server-assisted invalidation (`CLIENT TRACKING ... BCAST`, RESP3), default on: a writer that
    /// forgets to publish is still seen at once.
    pub client_tracking: bool,
}

/// Where the Redis store connects.
#[derive(Clone)]
pub enum RedisTarget {
    /// `url`: `redis://`, `rediss://` (TLS via rustls) or `unix://`; may carry `user:password@`.
    Url(String),
    /// `sentinels` + `master_name` (+ `db`): the current master, as the sentinels say.
    Sentinel(SentinelSettings),
}

/// `[grants.redis] sentinels`, `master_name`, `db`.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// Sentinel addresses as URLs (`redis://host:port`, or `rediss://` for TLS; may carry
    /// `user:password@` for the sentinels' own ACL). `host:port` entries are normalised to
    /// `redis://host:port`.
    pub sentinels: Vec<String>,
    /// The monitored master's name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Database on the master (default 0).
    pub db: i64,
    /// TLS to the master too (the sentinels are `rediss://`).
    pub tls: bool,
}

/// A URL without its `user:password@` part, for logs and `Debug`.
pub(crate) fn redacted_url(url: &str) -> &str {
    url.rsplit_once('@').map_or(url, |(_, host)| host)
}

impl std::fmt::Debug for RedisTarget {
    /// URLs may carry passwords: only hosts are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Url(url) => f.debug_tuple("Url").field(&redacted_url(url)).finish(),
            RedisTarget::Sentinel(s) => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &s.sentinels
                        .iter()
                        .map(|u| redacted_url(u))
                        .collect::<Vec<_>>(),
                )
                .field("master_name", &s.master_name)
                .field("db", &s.db)
                .field("tls", &s.tls)
                .finish(),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    /// URLs may carry a password: only hosts are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("cache_capacity", &self.cache_capacity)
            .field("client_tracking", &self.client_tracking)
            .finish()
    }
}

/// Which credentials the gateway accepts (`[identity] kinds`), in the order tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityKinds {
    /// `Authorization: Bearer <jwt>`.
    pub jwt: bool,
    /// `[identity.api_key]`: keys looked up in the grant store (Redis only).
    pub api_key: Option<ApiKeySettings>,
    /// `[identity.header]`: identity headers honoured from trusted peers only.
    pub header: Option<HeaderIdentitySettings>,
}

/// `[identity.header]` (security.md §3.10): honoured only from `trusted_peers` (CIDRs) or
/// mTLS clients whose certificate subject is in `trusted_client_certs`; stripped from
/// everyone else before anything reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderIdentitySettings {
    pub subject: http::HeaderName,
    pub tenant: http::HeaderName,
    /// `(network, prefix length)`.
    pub trusted_peers: Vec<(std::net::IpAddr, u8)>,
    /// Exact RFC 4514 subjects, as `ConnInfo::client_cert_subject` renders them.
    pub trusted_client_certs: Vec<String>,
}

impl HeaderIdentitySettings {
    /// Is this connection allowed to assert identity by header?
    pub fn trusts(&self, peer: std::net::IpAddr, client_cert: Option<&str>) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_peers
            .iter()
            .any(|&(net, len)| in_cidr(peer, net, len))
            || client_cert.is_some_and(|c| self.trusted_client_certs.iter().any(|t| t == c))
    }
}

fn in_cidr(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr;
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl Default for IdentityKinds {
    fn default() -> IdentityKinds {
        IdentityKinds {
            jwt: true,
            api_key: None,
            header: None,
        }
    }
}

/// `[identity.api_key]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySettings {
    /// Header carrying the key (default `x-api-key`); `Authorization: ApiKey <key>` also works.
    pub header: http::HeaderName,
}

/// Which requests may be served from a stale cache entry while Redis is down (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleFor {
    /// GET, HEAD, OPTIONS only, so an outage never extends a revoked user's write access.
    #[default]
    Reads,
    All,
}

#[derive(Debug, Clone)]
pub struct GrantsSettings {
    pub store: StoreSettings,
    pub cache_ttl: Duration,
    pub max_stale: Duration,
    /// `[grants] stale_for = "reads" | "all"`.
    pub stale_for: StaleFor,
}

/// How a sink renders events (DESIGN.md §6: every format is a mapping of the native JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFormat {
    /// The canonical event, byte for byte as hashed (the only format `audit verify` can check).
    Json,
    /// Elastic Common Schema.
    Ecs,
    /// OCSF API Activity (6003) with the security_control profile.
    Ocsf,
    /// ArcSight CEF.
    Cef,
    /// IBM QRadar LEEF 2.0.
    Leef,
}

impl AuditFormat {
    /// Whether the rendering is a JSON object (HEC `event`, `_bulk` source, NDJSON line).
    pub fn is_json(self) -> bool {
        matches!(
            self,
            AuditFormat::Json | AuditFormat::Ecs | AuditFormat::Ocsf
        )
    }
}

/// Where a credential comes from; resolved when the audit pipeline starts, never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// Client-side TLS for a sink (RFC 5425 syslog, https sinks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsClientSettings {
    /// PEM roots; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against; the address's host when absent.
    pub server_name: Option<String>,
}

/// Syslog transport: TCP with RFC 6587 octet counting, TLS per RFC 5425, or UDP (RFC 5426).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    Tcp,
    Tls,
    Udp,
}

/// What kind of sink, with its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate when the file would grow past this many bytes.
        max_size: Option<u64>,
        /// Rotated files kept (`path.1` .. `path.N`).
        max_files: usize,
    },
    Syslog {
        /// `host:port`.
        address: String,
        transport: SyslogTransport,
        tls: TlsClientSettings,
        /// RFC 5424 facility code (default 10, authpriv).
        facility: u8,
        app_name: String,
        /// SD-ID of the structured data element (`name@PEN`).
        sd_id: String,
    },
    SplunkHec {
        /// Base URL, e.g. `https://splunk:8088`; the sink posts to `/services/collector/event`.
        url: String,
        token: SecretSource,
        index: Option<String>,
        source: String,
        sourcetype: String,
        tls: TlsClientSettings,
    },
    Http {
        url: String,
        /// Sent as is on every request.
        headers: Vec<(String, String)>,
        /// Header name -> environment variable holding its value (for credentials).
        headers_env: Vec<(String, String)>,
        tls: TlsClientSettings,
    },
    Elasticsearch {
        /// Base URL; the sink posts to `/_bulk`.
        url: String,
        index: String,
        /// `Authorization: ApiKey <value>`.
        api_key: Option<SecretSource>,
        tls: TlsClientSettings,
    },
}

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// Unique; names the sink's cursor file in the spool.
    pub name: String,
    pub format: AuditFormat,
    /// Events per request/write.
    pub batch_size: usize,
    /// How long a partial batch waits for more events.
    pub batch_wait: Duration,
    /// Exponential backoff with full jitter between these bounds.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub kind: SinkKind,
}

impl SinkSettings {
    /// Defaults for a sink of `kind` (used by validation and tests).
    pub fn new(name: &str, format: AuditFormat, kind: SinkKind) -> SinkSettings {
        SinkSettings {
            name: name.to_owned(),
            format,
            batch_size: 500,
            batch_wait: Duration::from_millis(200),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            kind,
        }
    }
}

/// `allow_events`: denies are always audited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AllowEvents {
    All,
    None,
    /// Fraction in (0, 1].
    Sample(f64),
}

/// When a response may be sent relative to its audit event reaching the spool (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Respond only after the event is appended to the spool file.
    #[default]
    Spooled,
    /// Append asynchronously; a crash may lose the queue.
    Buffered,
}

/// What happens when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Fail closed: refuse requests rather than forward unaudited ones.
    #[default]
    Block,
    /// Keep serving and count the dropped events.
    Drop,
}

/// When the spool is fsynced (`[audit.spool] fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// After every group-commit batch.
    Always,
    /// At most every `fsync_interval` (a machine crash loses at most that window).
    #[default]
    Interval,
    /// Leave it to the OS (a process crash still loses nothing: the data is in the page cache).
    Never,
}

/// `[audit.spool]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Resolved against the config file's directory.
    pub dir: PathBuf,
    /// Bytes (default 1 GiB).
    pub max_size: u64,
    pub on_full: OnFull,
    /// Bytes per segment file (default 64 MiB).
    pub segment_size: u64,
    pub fsync: FsyncPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    pub allow_events: AllowEvents,
    pub sinks: Vec<SinkSettings>,
    /// Gateway name in events (`gateway` field); default `portcullis`.
    pub gateway_name: String,
    /// `[audit] durability` (default `spooled`).
    pub durability: Durability,
    /// `[audit] fsync_interval` (default 1 s).
    pub fsync_interval: Duration,
    /// `[audit.spool]`; absent: an in-memory spool (nothing survives a restart).
    pub spool: Option<SpoolSettings>,
    /// `hmac_key_env` / `hmac_key_file`: chain hashes become HMAC-SHA256 with this key.
    pub hmac_key: Option<SecretSource>,
    /// `checkpoint_interval` (default 5 min): period of `audit.checkpoint` events.
    pub checkpoint_interval: Duration,
}

/// One route of the route map, compiled.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The path pattern as written (`/api/campaigns/{id}`), for audit `route`.
    pub path: String,
    pub methods: Vec<http::Method>,
    pub rule: Rule,
    /// Index into `Snapshot::upstreams`.
    pub upstream: usize,
    /// Path parameter named by `owner = "{param}"`.
    pub owner_param: Option<String>,
    /// Path parameter named by `scope = "{param}"`.
    pub scope_param: Option<String>,
    /// Status for denials on this route (`deny_status = 404` hides existence); `None` = reason's.
    pub deny_status: Option<u16>,
    /// `websocket = true`: a `GET` with `Upgrade: websocket` may be tunnelled after the decision.
    pub websocket: bool,
    /// `websocket_max_lifetime` on the route; `[limits]`' when absent.
    pub websocket_max_lifetime: Option<Duration>,
    /// The required permissions' names, in the order written, as every audit event of the
    /// route carries them (shared, not built per event).
    pub required: Arc<[String]>,
}

/// Names of the identity headers the gateway sets upstream (lower-case).
#[derive(Debug, Clone)]
pub struct HeaderNames {
    pub subject: http::HeaderName,
    pub tenant: http::HeaderName,
    pub roles: http::HeaderName,
    pub scope: http::HeaderName,
    pub request_id: http::HeaderName,
}

/// A validated configuration: everything the gateway needs, nothing raw.
pub struct Snapshot {
    /// The main config file.
    pub source: PathBuf,
    /// The main file and every include, in load order: what the reload watch polls.
    pub files: Vec<PathBuf>,
    /// SHA-256 (hex) over every file's text in load order: the admin API's config hash.
    pub sha256: String,
    pub log: LogSettings,
    pub server: ServerSettings,
    pub upstreams: Vec<UpstreamSettings>,
    pub jwt: JwtSettings,
    /// `[identity] kinds` and `[identity.api_key]`.
    pub identity: IdentityKinds,
    /// Built from `jwt` at load (keys read, secret from the environment) so `check` catches it.
    pub authenticator: std::sync::Arc<crate::identity::Authenticator>,
    pub grants: GrantsSettings,
    pub policy: Policy,
    pub mode: Mode,
    /// Status for `no_route`: 404 (default) or 403.
    pub unmatched_status: u16,
    pub routes: RouteTable,
    /// Indexed by the ids stored in `routes`.
    pub route_entries: Vec<RouteEntry>,
    pub headers: HeaderNames,
    pub audit: AuditSettings,
    pub limits: LimitsSettings,
    /// `None` without `[cors]`: a preflight is then an ordinary request that needs a route.
    pub cors: Option<CorsSettings>,
}

/// Load, parse and validate a config file, reporting every error at once.
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path),
        Err(err) => {
            let mut sources = diagnostic::Sources::default();
            let file = sources.add(path.to_path_buf(), String::new());
            let message = format!("cannot read config file `{}`: {err}", path.display());
            let error = sources.error(file, None, "", message, None);
            Err(ConfigErrors {
                errors: vec![error],
            })
        }
    }
}

/// Parse and validate config text; `path` is used for messages and relative paths
/// (e.g. `jwks_file` resolves against the config file's directory).
pub fn load_str(text: &str, path: &Path) -> Result<Snapshot, ConfigErrors> {
    validate::validate(text, path, None).map_err(|errors| ConfigErrors { errors })
}

/// Like `load_str`, but with the HS256 secret given directly instead of read from
/// `identity.jwt.secret_env` (the demo generates one; tests inject one).
pub fn load_str_with_secret(
    text: &str,
    path: &Path,
    secret: Option<&[u8]>,
) -> Result<Snapshot, ConfigErrors> {
    validate::validate(text, path, secret).map_err(|errors| ConfigErrors { errors })
}
