//! Stage 1: the TOML shape of DESIGN.md §8, exactly as written by the user.
//!
//! Every struct is `deny_unknown_fields` (an unknown key in an authorization config is a
//! mistake, never something to ignore) and nothing uses `flatten` (serde does not support the
//! combination). Everything semantic validation can reject is `Spanned`, down to single array
//! elements, so `validate` can point at the exact value. Nothing here leaves `config`.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;
pub(crate) type StrList = Vec<S<String>>;

/// A TOML table with user-chosen keys, in document order (`toml` has no `preserve_order` here,
/// and order matters for messages and for "first wins" rules), keys spanned.
#[derive(Debug)]
pub(crate) struct Map<V>(pub Vec<(S<String>, V)>);

impl<V> Default for Map<V> {
    fn default() -> Self {
        Map(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Map<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = Map<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Map<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(Map(entries))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// The main config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub include: Option<StrList>,
    pub server: Option<S<Server>>,
    #[serde(default)]
    pub upstreams: Map<S<Upstream>>,
    pub identity: Option<S<Identity>>,
    pub grants: Option<S<Grants>>,
    pub policy: Option<S<Policy>>,
    pub headers: Option<S<Headers>>,
    #[serde(default)]
    pub roles: Map<S<Role>>,
    #[serde(default)]
    pub aliases: Map<S<String>>,
    pub entitlements: Option<S<Entitlements>>,
    #[serde(default)]
    pub routes: Vec<S<Route>>,
    #[serde(default)]
    pub tenants: Map<S<Tenant>>,
    #[serde(default)]
    pub assignments: Vec<S<Assignment>>,
    pub audit: Option<S<Audit>>,
    pub limits: Option<S<Limits>>,
    pub cors: Option<S<Cors>>,
    pub log: Option<S<Log>>,
}

/// `[log]`: the process's own diagnostics (not the audit trail).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    pub format: Option<S<String>>,
    pub level: Option<S<String>>,
    pub access_log: Option<S<bool>>,
}

/// An `include`d file: routes and roles only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncludeFile {
    #[serde(default)]
    pub routes: Vec<S<Route>>,
    #[serde(default)]
    pub roles: Map<S<Role>>,
    #[serde(default)]
    pub aliases: Map<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub listen: Option<S<String>>,
    pub admin_listen: Option<S<String>>,
    pub admin_token_env: Option<S<String>>,
    pub tls: Option<S<ServerTls>>,
}

/// `[server] tls = { cert = "...", key = "..." }` (paths relative to the config file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerTls {
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub client_ca: Option<S<String>>,
    pub client_auth: Option<S<String>>,
    pub watch_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub targets: Option<S<StrList>>,
    pub connect_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub max_failures: Option<S<i64>>,
    pub eject_for: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub protocol: Option<S<String>>,
    pub tls: Option<S<bool>>,
    pub ca: Option<S<String>>,
}

/// `[limits]`: bounds on what one client may make the gateway hold (R11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    pub header_read_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<String>>,
    pub max_headers: Option<S<i64>>,
    pub max_uri_length: Option<S<String>>,
    pub max_body: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub max_requests_per_connection: Option<S<i64>>,
    pub shutdown_timeout: Option<S<String>>,
    pub websocket_max_lifetime: Option<S<String>>,
}

/// `[cors]`: browser preflights answered by the gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cors {
    /// `"*"` or a list of origins; kept as a value so either shape keeps its span.
    pub allow_origins: Option<S<toml::Value>>,
    pub allow_methods: Option<S<StrList>>,
    pub allow_headers: Option<S<StrList>>,
    pub expose_headers: Option<S<StrList>>,
    pub allow_credentials: Option<S<bool>>,
    pub max_age: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Identity {
    pub kinds: Option<S<StrList>>,
    pub jwt: Option<S<Jwt>>,
    pub tenant: Option<S<TenantFrom>>,
    pub api_key: Option<S<ApiKey>>,
    pub header: Option<S<HeaderIdentity>>,
}

/// `[identity.header]`: identity set by a trusted authenticating proxy in front of us.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderIdentity {
    pub subject: Option<S<String>>,
    pub tenant: Option<S<String>>,
    pub trusted_peers: Option<S<StrList>>,
    pub trusted_client_certs: Option<S<StrList>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Jwt {
    pub algorithms: Option<S<StrList>>,
    pub secret_env: Option<S<String>>,
    pub jwks_file: Option<S<String>>,
    pub jwks_url: Option<S<String>>,
    pub jwks_refresh_interval: Option<S<String>>,
    pub jwks_min_refresh_interval: Option<S<String>>,
    pub issuer: Option<S<String>>,
    pub audience: Option<S<String>>,
    pub subject_claim: Option<S<String>>,
    pub tenant_claim: Option<S<String>>,
    pub leeway: Option<S<String>>,
    pub cache_size: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKey {
    pub header: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantFrom {
    pub from: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grants {
    pub store: Option<S<String>>,
    pub cache_ttl: Option<S<String>>,
    pub max_stale: Option<S<String>>,
    pub stale_for: Option<S<String>>,
    pub redis: Option<S<Redis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redis {
    pub url: Option<S<String>>,
    pub sentinels: Option<S<StrList>>,
    pub master_name: Option<S<String>>,
    pub db: Option<S<i64>>,
    pub prefix: Option<S<String>>,
    pub username: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub command_timeout: Option<S<String>>,
    pub cache_capacity: Option<S<i64>>,
    pub client_tracking: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Policy {
    pub default: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub separator: Option<S<String>>,
    pub unmatched_status: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Headers {
    pub subject: Option<S<String>>,
    pub tenant: Option<S<String>>,
    pub roles: Option<S<String>>,
    pub scope: Option<S<String>>,
    pub request_id: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Role {
    pub permissions: Option<StrList>,
    pub own: Option<StrList>,
    pub inherits: Option<StrList>,
    pub level: Option<S<i64>>,
    pub all_scopes: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entitlements {
    pub tiers: Option<StrList>,
    #[serde(default)]
    pub require_tier: Map<S<String>>,
    #[serde(default)]
    pub require_feature: Map<S<String>>,
    pub mfa: Option<S<Mfa>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mfa {
    pub require: Option<StrList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub methods: Option<S<StrList>>,
    pub path: Option<S<String>>,
    pub permission: Option<S<String>>,
    pub any_of: Option<S<StrList>>,
    pub all_of: Option<S<StrList>>,
    pub public: Option<S<bool>>,
    pub upstream: Option<S<String>>,
    pub owner: Option<S<String>>,
    pub scope: Option<S<String>>,
    pub mfa: Option<S<bool>>,
    pub mode: Option<S<String>>,
    pub deny_status: Option<S<i64>>,
    pub websocket: Option<S<bool>>,
    pub websocket_max_lifetime: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tenant {
    pub tier: Option<S<String>>,
    pub features: Option<S<StrList>>,
    pub roles: Option<S<Map<S<TenantRole>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantRole {
    pub permissions: Option<StrList>,
    pub own: Option<StrList>,
    pub inherits: Option<StrList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Assignment {
    pub tenant: Option<S<String>>,
    pub subject: Option<S<String>>,
    pub roles: Option<S<StrList>>,
    pub grant: Option<StrList>,
    pub deny: Option<StrList>,
    pub scopes: Option<StrList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Audit {
    pub allow_events: Option<S<String>>,
    pub gateway: Option<S<String>>,
    pub durability: Option<S<String>>,
    pub fsync_interval: Option<S<String>>,
    pub hmac_key_env: Option<S<String>>,
    pub hmac_key_file: Option<S<String>>,
    pub checkpoint_interval: Option<S<String>>,
    /// Sinks are kept as spanned key/value pairs rather than a `tag = "type"` enum: serde's
    /// internally tagged enums buffer their content and lose every span. Each sink type's keys
    /// are checked as strictly as `deny_unknown_fields` in `validate/audit.rs`.
    #[serde(default)]
    pub sinks: Vec<S<Map<S<toml::Value>>>>,
    pub spool: Option<S<Spool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spool {
    pub dir: Option<S<String>>,
    pub max_size: Option<S<String>>,
    pub on_full: Option<S<String>>,
    pub segment_size: Option<S<String>>,
    pub fsync: Option<S<String>>,
}
