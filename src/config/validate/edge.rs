//! Stage 2 for the edge sections: `[server] tls`, the pool keys of `[upstreams.*]`, `[limits]`
//! and `[cors]`. Kept apart from `validate.rs` so the data-plane settings read in one place.
//!
//! TLS material is loaded here, with the same code the listener uses, so `portcullis check`
//! reports an unreadable certificate or a key that does not match before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};

use super::super::diagnostic::FileId;
use super::super::raw::{self, S, StrList};
use super::super::{
    AllowOrigins, ClientAuth, CorsSettings, LimitsSettings, LogFormat, LogSettings, TlsSettings,
    UpstreamProtocol,
};
use super::{Ctx, key_leaf, parse_size};

/// hyper refuses a read buffer below this (and panics when asked for one).
const MIN_HEADER_BYTES: u64 = 8 * 1024;

/// The pool keys of one `[upstreams.NAME]` table, validated.
pub(super) struct PoolKeys {
    pub idle_timeout: Duration,
    pub max_failures: u32,
    pub eject_for: Duration,
    pub max_connections: Option<usize>,
    pub protocol: UpstreamProtocol,
    pub tls: Option<Option<PathBuf>>,
}

/// The raw pool keys of one upstream, moved out by `check_upstreams`' destructuring.
pub(super) struct RawPool {
    pub idle_timeout: Option<S<String>>,
    pub max_failures: Option<S<i64>>,
    pub eject_for: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub protocol: Option<S<String>>,
    pub tls: Option<S<bool>>,
    pub ca: Option<S<String>>,
}

impl Ctx<'_> {
    // --- [server] tls ---

    pub(super) fn check_server_tls(
        &mut self,
        main: FileId,
        tls: S<raw::ServerTls>,
    ) -> Option<TlsSettings> {
        let span = tls.span();
        let raw::ServerTls {
            cert,
            key,
            client_ca,
            client_auth,
            watch_interval,
        } = tls.into_inner();
        let mut path = |v: Option<S<String>>, name: &str| match v {
            Some(p) if !p.get_ref().is_empty() => Some((self.base.join(p.get_ref()), p.span())),
            Some(p) => {
                self.err(
                    main,
                    p.span(),
                    &format!("server.tls.{name}"),
                    format!("`{name}` is empty"),
                    None,
                );
                None
            }
            None => None,
        };
        let cert = path(cert, "cert");
        let key = path(key, "key");
        let client_ca = path(client_ca, "client_ca");
        if cert.is_none() || key.is_none() {
            self.err(
                main,
                span.clone(),
                "server.tls",
                "`tls` needs both `cert` and `key`",
                Some(
                    "write `tls = { cert = \"certs/server.pem\", key = \"certs/server.key\" }`"
                        .into(),
                ),
            );
        }
        let auth = match client_auth {
            None => Some(ClientAuth::Required),
            Some(a) => match a.get_ref().as_str() {
                "optional" => Some(ClientAuth::Optional),
                "required" => Some(ClientAuth::Required),
                other => {
                    self.invalid_value(
                        main,
                        &a,
                        "server.tls.client_auth",
                        other,
                        &["optional", "required"],
                    );
                    None
                }
            },
        };
        let client_auth = match (client_ca, auth) {
            (Some((ca, _)), Some(auth)) => Some((ca, auth)),
            (None, _) => None,
            (Some(_), None) => return None,
        };
        let watch_interval = self.duration(
            main,
            &watch_interval,
            "server.tls.watch_interval",
            Duration::from_secs(5),
            true,
        );
        let settings = TlsSettings {
            cert: cert?.0,
            key: key?.0,
            client_auth,
            watch_interval,
        };
        if let Err(e) = crate::proxy::tls::server_config(&settings) {
            self.err(
                main,
                span,
                "server.tls",
                e.to_string(),
                Some("paths are relative to the config file; certificates and keys are PEM".into()),
            );
            return None;
        }
        Some(settings)
    }

    // --- [upstreams.*] pool keys ---

    pub(super) fn check_pool(&mut self, main: FileId, key: &str, raw: RawPool) -> PoolKeys {
        let RawPool {
            idle_timeout,
            max_failures,
            eject_for,
            max_connections,
            protocol,
            tls,
            ca,
        } = raw;
        let idle_timeout = self.duration(
            main,
            &idle_timeout,
            &format!("{key}.idle_timeout"),
            Duration::from_secs(90),
            true,
        );
        let eject_for = self.duration(
            main,
            &eject_for,
            &format!("{key}.eject_for"),
            Duration::from_secs(10),
            true,
        );
        let max_failures = self
            .count(main, &max_failures, &format!("{key}.max_failures"), 1_000)
            .map_or(3, |n| u32::try_from(n).unwrap_or(u32::MAX));
        let max_connections = self
            .count(
                main,
                &max_connections,
                &format!("{key}.max_connections"),
                1 << 20,
            )
            .and_then(|n| usize::try_from(n).ok());
        let protocol = match protocol {
            None => UpstreamProtocol::Http1,
            Some(p) => match p.get_ref().as_str() {
                "http1" => UpstreamProtocol::Http1,
                "http2" => UpstreamProtocol::Http2,
                other => {
                    self.invalid_value(
                        main,
                        &p,
                        &format!("{key}.protocol"),
                        other,
                        &["http1", "http2"],
                    );
                    UpstreamProtocol::Http1
                }
            },
        };
        let tls_on = tls.as_ref().is_some_and(|t| *t.get_ref());
        let tls = match (tls_on, ca) {
            (false, None) => None,
            (true, None) => Some(None),
            (true, Some(ca)) => {
                let path = self.base.join(ca.get_ref());
                if let Err(e) = crate::proxy::tls::read_roots(&path) {
                    self.err(
                        main,
                        ca.span(),
                        &format!("{key}.ca"),
                        e.to_string(),
                        Some(
                            "write the path of a PEM CA bundle, relative to the config file".into(),
                        ),
                    );
                }
                Some(Some(path))
            }
            (false, Some(ca)) => {
                self.err(
                    main,
                    ca.span(),
                    &format!("{key}.ca"),
                    "`ca` is set but `tls` is not enabled",
                    Some("add `tls = true` to this upstream or remove `ca`".into()),
                );
                None
            }
        };
        PoolKeys {
            idle_timeout,
            max_failures,
            eject_for,
            max_connections,
            protocol,
            tls,
        }
    }

    /// A positive integer no larger than `max`; `None` when absent or invalid (error pushed).
    fn count(&mut self, file: FileId, v: &Option<S<i64>>, key: &str, max: i64) -> Option<u64> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        if n < 1 || n > max {
            self.err(
                file,
                v.span(),
                key,
                format!("`{}` must be between 1 and {max}, got {n}", key_leaf(key)),
                None,
            );
            return None;
        }
        u64::try_from(n).ok()
    }

    fn size_at_least(
        &mut self,
        file: FileId,
        v: &Option<S<String>>,
        key: &str,
        min: u64,
    ) -> Option<u64> {
        let v = v.as_ref()?;
        match parse_size(v.get_ref()) {
            Some(n) if n >= min => Some(n),
            Some(_) => {
                self.err(
                    file,
                    v.span(),
                    key,
                    format!(
                        "`{}` must be at least {min} bytes, got `{}`",
                        key_leaf(key),
                        v.get_ref()
                    ),
                    None,
                );
                None
            }
            None => {
                self.err(
                    file,
                    v.span(),
                    key,
                    format!("invalid size `{}`", v.get_ref()),
                    Some("write a number and a unit, e.g. `64KiB` or `10MiB`".into()),
                );
                None
            }
        }
    }

    // --- [limits] ---

    pub(super) fn check_limits(
        &mut self,
        main: FileId,
        limits: Option<S<raw::Limits>>,
    ) -> LimitsSettings {
        let d = LimitsSettings::default();
        let Some(limits) = limits else { return d };
        let raw::Limits {
            header_read_timeout,
            max_header_bytes,
            max_headers,
            max_uri_length,
            max_body,
            max_connections,
            max_requests_per_connection,
            shutdown_timeout,
            websocket_max_lifetime,
        } = limits.into_inner();
        let to_usize = |n: u64, default: usize| usize::try_from(n).unwrap_or(default);
        LimitsSettings {
            header_read_timeout: self.duration(
                main,
                &header_read_timeout,
                "limits.header_read_timeout",
                d.header_read_timeout,
                true,
            ),
            max_header_bytes: self
                .size_at_least(
                    main,
                    &max_header_bytes,
                    "limits.max_header_bytes",
                    MIN_HEADER_BYTES,
                )
                .map_or(d.max_header_bytes, |n| to_usize(n, d.max_header_bytes)),
            max_headers: self
                .count(main, &max_headers, "limits.max_headers", 10_000)
                .map_or(d.max_headers, |n| to_usize(n, d.max_headers)),
            max_uri_length: self
                .size_at_least(main, &max_uri_length, "limits.max_uri_length", 1)
                .map_or(d.max_uri_length, |n| to_usize(n, d.max_uri_length)),
            max_body: self
                .size_at_least(main, &max_body, "limits.max_body", 0)
                .unwrap_or(d.max_body),
            max_connections: self
                .count(main, &max_connections, "limits.max_connections", 1 << 24)
                .map_or(d.max_connections, |n| to_usize(n, d.max_connections)),
            max_requests_per_connection: self.count(
                main,
                &max_requests_per_connection,
                "limits.max_requests_per_connection",
                i64::MAX,
            ),
            shutdown_timeout: self.duration(
                main,
                &shutdown_timeout,
                "limits.shutdown_timeout",
                d.shutdown_timeout,
                false,
            ),
            websocket_max_lifetime: self.duration(
                main,
                &websocket_max_lifetime,
                "limits.websocket_max_lifetime",
                d.websocket_max_lifetime,
                true,
            ),
        }
    }

    // --- [log] ---

    pub(super) fn check_log(&mut self, main: FileId, log: Option<S<raw::Log>>) -> LogSettings {
        let d = LogSettings::default();
        let Some(log) = log else { return d };
        let raw::Log {
            format,
            level,
            access_log,
        } = log.into_inner();
        let format = match &format {
            None => d.format,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    let other = other.to_owned();
                    self.invalid_value(main, f, "log.format", &other, &["text", "json"]);
                    d.format
                }
            },
        };
        let level = match &level {
            None => d.level,
            Some(l) => {
                if tracing_subscriber::EnvFilter::try_new(l.get_ref()).is_err() {
                    self.err(
                        main,
                        l.span(),
                        "log.level",
                        format!("invalid log level `{}`", l.get_ref()),
                        Some("use `error`, `warn`, `info`, `debug`, `trace` or a directive such as `portcullis=debug`".into()),
                    );
                }
                l.get_ref().clone()
            }
        };
        LogSettings {
            format,
            level,
            access_log: access_log.map_or(d.access_log, |a| *a.get_ref()),
        }
    }

    // --- [cors] ---

    pub(super) fn check_cors(
        &mut self,
        main: FileId,
        cors: Option<S<raw::Cors>>,
    ) -> Option<CorsSettings> {
        let cors = cors?;
        let span = cors.span();
        let raw::Cors {
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            allow_credentials,
            max_age,
        } = cors.into_inner();
        let origins = match allow_origins {
            None => {
                self.err(
                    main,
                    span,
                    "cors.allow_origins",
                    "missing `allow_origins` in `[cors]`",
                    Some("list the browser origins allowed, e.g. `allow_origins = [\"https://app.example.com\"]`".into()),
                );
                None
            }
            Some(v) => self.origins(main, &v),
        };
        let credentials = allow_credentials.as_ref().filter(|c| *c.get_ref());
        if let (Some(AllowOrigins::Any), Some(c)) = (&origins, credentials) {
            // Browsers refuse `*` with credentials; echoing any origin instead would hand every
            // site the user's cookies. Demand a list.
            self.err(
                main,
                c.span(),
                "cors.allow_credentials",
                "`allow_credentials = true` cannot be combined with `allow_origins = \"*\"`",
                Some("list the trusted origins in `allow_origins`".into()),
            );
        }
        let allow_credentials = credentials.is_some();
        let methods = match allow_methods {
            None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, m) in list.into_inner().into_iter().enumerate() {
                    if let Some(m) = self.method(main, &m, &format!("cors.allow_methods[{i}]")) {
                        out.push(m);
                    }
                }
                out
            }
        };
        let allow_headers = match allow_headers {
            None => vec![http::header::AUTHORIZATION, http::header::CONTENT_TYPE],
            Some(list) => self.header_list(main, list.into_inner(), "cors.allow_headers"),
        };
        let expose_headers = match expose_headers {
            None => Vec::new(),
            Some(list) => self.header_list(main, list.into_inner(), "cors.expose_headers"),
        };
        let max_age = max_age
            .is_some()
            .then(|| self.duration(main, &max_age, "cors.max_age", Duration::ZERO, false));
        Some(CorsSettings {
            allow_origins: origins?,
            allow_methods: methods,
            allow_headers,
            expose_headers,
            allow_credentials,
            max_age,
        })
    }

    fn origins(&mut self, main: FileId, v: &S<toml::Value>) -> Option<AllowOrigins> {
        let help = "write `\"*\"` or a list such as `[\"https://app.example.com\"]`";
        match v.get_ref() {
            toml::Value::String(s) if s == "*" => Some(AllowOrigins::Any),
            toml::Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    let Some(o) = item.as_str() else {
                        self.err(
                            main,
                            v.span(),
                            "cors.allow_origins",
                            "`allow_origins` must list strings",
                            Some(help.into()),
                        );
                        return None;
                    };
                    if o == "*" {
                        self.err(
                            main,
                            v.span(),
                            "cors.allow_origins",
                            "`*` cannot be one of several origins",
                            Some("write `allow_origins = \"*\"` on its own".into()),
                        );
                        return None;
                    }
                    if !valid_origin(o) {
                        self.err(
                            main,
                            v.span(),
                            "cors.allow_origins",
                            format!("invalid origin `{o}`"),
                            Some("an origin is `scheme://host[:port]` with no path, e.g. `https://app.example.com`".into()),
                        );
                        return None;
                    }
                    out.push(o.to_ascii_lowercase());
                }
                Some(AllowOrigins::List(out))
            }
            _ => {
                self.err(
                    main,
                    v.span(),
                    "cors.allow_origins",
                    "invalid `allow_origins`",
                    Some(help.into()),
                );
                None
            }
        }
    }

    fn header_list(&mut self, main: FileId, list: StrList, key: &str) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for (i, h) in list.into_iter().enumerate() {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => out.push(name),
                Err(_) => self.err(
                    main,
                    h.span(),
                    &format!("{key}[{i}]"),
                    format!("invalid header name `{}`", h.get_ref()),
                    None,
                ),
            }
        }
        out
    }
}

/// `scheme://host[:port]`, nothing after the authority.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest.parse::<http::uri::Authority>().is_ok()
}
