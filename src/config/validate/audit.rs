//! `[audit]`, `[audit.spool]` and `[[audit.sinks]]` (DESIGN.md §6).
//!
//! Sinks arrive as spanned key/value tables (see `raw::Audit`), so each sink type lists its
//! keys here and anything else is an error at the key's position, as strict as
//! `deny_unknown_fields` but with spans and a type-specific list of valid keys.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use super::super::diagnostic::{FileId, backticked, did_you_mean};
use super::super::raw::{self, Map, S};
use super::super::{
    AllowEvents, AuditFormat, AuditSettings, Durability, FsyncPolicy, OnFull, SecretSource,
    SinkKind, SinkSettings, SpoolSettings, SyslogTransport, TlsClientSettings,
};
use super::{Ctx, parse_size};

const SINK_TYPES: &[&str] = &[
    "stdout",
    "file",
    "syslog",
    "splunk_hec",
    "http",
    "elasticsearch",
];
const FORMATS: &[&str] = &["json", "ecs", "ocsf", "cef", "leef"];
/// Keys every sink accepts.
const COMMON_KEYS: &[&str] = &[
    "type",
    "name",
    "format",
    "batch_size",
    "batch_wait",
    "retry_initial",
    "retry_max",
];
const TLS_KEYS: &[&str] = &["ca_file", "cert_file", "key_file", "server_name"];
/// RFC 5424 §6.2.1 facility names.
const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// One sink table with its key (`audit.sinks[2]`), for field lookups with spans.
struct SinkTable<'a> {
    main: FileId,
    key: String,
    span: Range<usize>,
    entries: &'a [(S<String>, S<toml::Value>)],
}

impl SinkTable<'_> {
    fn get(&self, k: &str) -> Option<&S<toml::Value>> {
        self.entries
            .iter()
            .find(|(name, _)| name.get_ref() == k)
            .map(|(_, v)| v)
    }
}

impl Ctx<'_> {
    pub(super) fn check_audit(
        &mut self,
        main: FileId,
        audit: Option<S<raw::Audit>>,
    ) -> AuditSettings {
        let mut settings = AuditSettings {
            allow_events: AllowEvents::All,
            sinks: Vec::new(),
            gateway_name: "portcullis".to_owned(),
            durability: Durability::Spooled,
            fsync_interval: Duration::from_secs(1),
            spool: None,
            hmac_key: None,
            checkpoint_interval: Duration::from_secs(300),
        };
        let Some(audit) = audit else { return settings };
        let raw::Audit {
            allow_events,
            gateway,
            durability,
            fsync_interval,
            hmac_key_env,
            hmac_key_file,
            checkpoint_interval,
            sinks,
            spool,
        } = audit.into_inner();
        if let Some(a) = allow_events {
            let v = a.get_ref();
            settings.allow_events = match v.as_str() {
                "all" => AllowEvents::All,
                "none" => AllowEvents::None,
                s => match s.strip_prefix("sample:").map(str::parse::<f64>) {
                    Some(Ok(f)) if f > 0.0 && f <= 1.0 => AllowEvents::Sample(f),
                    Some(_) => {
                        self.err(
                            main,
                            a.span(),
                            "audit.allow_events",
                            format!("invalid sample rate in `{s}`"),
                            Some(
                                "the rate is a fraction in (0, 1], e.g. `sample:0.01` for 1%"
                                    .into(),
                            ),
                        );
                        AllowEvents::All
                    }
                    None => {
                        self.err(main, a.span(), "audit.allow_events", format!("invalid `allow_events` value `{s}`"), Some("write `all`, `none` or `sample:RATE` (e.g. `sample:0.01`); denies are always audited".into()));
                        AllowEvents::All
                    }
                },
            };
        }
        if let Some(g) = gateway {
            if g.get_ref().trim().is_empty() {
                self.err(
                    main,
                    g.span(),
                    "audit.gateway",
                    "`gateway` is empty",
                    Some("name this gateway instance, e.g. `gw-1`".into()),
                );
            } else {
                settings.gateway_name = g.into_inner();
            }
        }
        if let Some(d) = durability {
            settings.durability = match d.get_ref().as_str() {
                "spooled" => Durability::Spooled,
                "buffered" => Durability::Buffered,
                other => {
                    self.invalid_value(
                        main,
                        &d,
                        "audit.durability",
                        other,
                        &["spooled", "buffered"],
                    );
                    Durability::Spooled
                }
            };
        }
        settings.fsync_interval = self.duration(
            main,
            &fsync_interval,
            "audit.fsync_interval",
            Duration::from_secs(1),
            true,
        );
        settings.checkpoint_interval = self.duration(
            main,
            &checkpoint_interval,
            "audit.checkpoint_interval",
            Duration::from_secs(300),
            true,
        );
        settings.hmac_key = match (hmac_key_env, hmac_key_file) {
            (Some(_), Some(f)) => {
                self.err(
                    main,
                    f.span(),
                    "audit.hmac_key_file",
                    "`hmac_key_env` and `hmac_key_file` are both set",
                    Some("keep one of them".into()),
                );
                None
            }
            (Some(e), None) if e.get_ref().is_empty() => {
                self.err(
                    main,
                    e.span(),
                    "audit.hmac_key_env",
                    "`hmac_key_env` is empty",
                    None,
                );
                None
            }
            (Some(e), None) => Some(SecretSource::Env(e.into_inner())),
            (None, Some(f)) if f.get_ref().is_empty() => {
                self.err(
                    main,
                    f.span(),
                    "audit.hmac_key_file",
                    "`hmac_key_file` is empty",
                    None,
                );
                None
            }
            (None, Some(f)) => Some(SecretSource::File(self.base.join(f.get_ref()))),
            (None, None) => None,
        };
        let mut names: HashMap<String, Range<usize>> = HashMap::new();
        for (i, sink) in sinks.iter().enumerate() {
            if let Some(s) = self.check_sink(main, sink, &format!("audit.sinks[{i}]"), i) {
                if let Some(first) = names.get(&s.name) {
                    let at = self.src.location(main, first);
                    self.err(
                        main,
                        sink.span(),
                        &format!("audit.sinks[{i}].name"),
                        format!("two audit sinks are named `{}` (first at {at})", s.name),
                        Some(
                            "each sink keeps its own delivery cursor; give it a unique `name`"
                                .into(),
                        ),
                    );
                    continue;
                }
                names.insert(s.name.clone(), sink.span());
                settings.sinks.push(s);
            }
        }
        if let Some(spool) = spool {
            settings.spool = self.check_spool(main, spool);
        }
        settings
    }

    fn check_spool(&mut self, main: FileId, spool: S<raw::Spool>) -> Option<SpoolSettings> {
        let span = spool.span();
        let raw::Spool {
            dir,
            max_size,
            on_full,
            segment_size,
            fsync,
        } = spool.into_inner();
        let max_size = self.size(main, &max_size, "audit.spool.max_size", 1 << 30);
        let segment_size = self.size(main, &segment_size, "audit.spool.segment_size", 64 << 20);
        let on_full = match on_full {
            None => Some(OnFull::Block),
            Some(o) => match o.get_ref().as_str() {
                "block" => Some(OnFull::Block),
                "drop" => Some(OnFull::Drop),
                other => {
                    self.invalid_value(main, &o, "audit.spool.on_full", other, &["block", "drop"]);
                    None
                }
            },
        };
        let fsync = match fsync {
            None => Some(FsyncPolicy::Interval),
            Some(f) => match f.get_ref().as_str() {
                "always" => Some(FsyncPolicy::Always),
                "interval" => Some(FsyncPolicy::Interval),
                "never" => Some(FsyncPolicy::Never),
                other => {
                    self.invalid_value(
                        main,
                        &f,
                        "audit.spool.fsync",
                        other,
                        &["always", "interval", "never"],
                    );
                    None
                }
            },
        };
        let dir = match dir {
            Some(d) if !d.get_ref().is_empty() => Some(self.base.join(d.get_ref())),
            Some(d) => {
                self.err(main, d.span(), "audit.spool.dir", "`dir` is empty", None);
                None
            }
            None => {
                self.err(
                    main,
                    span,
                    "audit.spool.dir",
                    "missing `dir` in `[audit.spool]`",
                    Some("add `dir = \"/var/lib/portcullis/spool\"`".into()),
                );
                None
            }
        };
        Some(SpoolSettings {
            dir: dir?,
            max_size: max_size?,
            on_full: on_full?,
            segment_size: segment_size?,
            fsync: fsync?,
        })
    }

    /// A positive size like `64MiB`; `None` (with an error pushed) when invalid.
    fn size(
        &mut self,
        main: FileId,
        v: &Option<S<String>>,
        key: &str,
        default: u64,
    ) -> Option<u64> {
        let Some(v) = v else { return Some(default) };
        match parse_size(v.get_ref()) {
            Some(0) | None => {
                self.err(
                    main,
                    v.span(),
                    key,
                    format!("invalid size `{}`", v.get_ref()),
                    Some("write a positive number and a unit, e.g. `512MiB` or `1GiB`".into()),
                );
                None
            }
            Some(n) => Some(n),
        }
    }

    fn check_sink(
        &mut self,
        main: FileId,
        sink: &S<Map<S<toml::Value>>>,
        key: &str,
        index: usize,
    ) -> Option<SinkSettings> {
        let t = SinkTable {
            main,
            key: key.to_owned(),
            span: sink.span(),
            entries: &sink.get_ref().0,
        };
        let Some(kind) = t.get("type") else {
            self.err(
                main,
                t.span.clone(),
                &format!("{key}.type"),
                "audit sink has no `type`",
                Some(format!(
                    "add `type = \"file\"`; sink types: {}",
                    backticked(SINK_TYPES.iter().copied())
                )),
            );
            return None;
        };
        let Some(kind_str) = kind.get_ref().as_str() else {
            self.err(
                main,
                kind.span(),
                &format!("{key}.type"),
                "sink `type` must be a string",
                None,
            );
            return None;
        };
        let specific: &[&str] = match kind_str {
            "stdout" => &[],
            "file" => &["path", "max_file_size", "max_files"],
            "syslog" => &[
                "address",
                "transport",
                "facility",
                "app_name",
                "sd_id",
                "ca_file",
                "cert_file",
                "key_file",
                "server_name",
            ],
            "splunk_hec" => &[
                "url",
                "token_env",
                "token_file",
                "index",
                "source",
                "sourcetype",
                "ca_file",
                "cert_file",
                "key_file",
                "server_name",
            ],
            "http" => &[
                "url",
                "headers",
                "headers_env",
                "ca_file",
                "cert_file",
                "key_file",
                "server_name",
            ],
            "elasticsearch" => &[
                "url",
                "index",
                "api_key_env",
                "api_key_file",
                "ca_file",
                "cert_file",
                "key_file",
                "server_name",
            ],
            other => {
                let help = did_you_mean(other, SINK_TYPES.iter().copied()).unwrap_or_else(|| {
                    format!("sink types: {}", backticked(SINK_TYPES.iter().copied()))
                });
                self.err(
                    main,
                    kind.span(),
                    &format!("{key}.type"),
                    format!("unknown audit sink type `{other}`"),
                    Some(help),
                );
                return None;
            }
        };
        let errors_before = self.errors.len();
        let allowed: Vec<&str> = COMMON_KEYS.iter().chain(specific).copied().collect();
        for (name, _) in t.entries {
            if !allowed.contains(&name.get_ref().as_str()) {
                let help = did_you_mean(name.get_ref(), allowed.iter().copied());
                self.err(
                    main,
                    name.span(),
                    &format!("{key}.{}", name.get_ref()),
                    format!(
                        "unknown field `{}` for sink type `{kind_str}`, expected one of {}",
                        name.get_ref(),
                        backticked(allowed.iter().copied())
                    ),
                    help,
                );
            }
        }
        let format = match self.sink_str(&t, "format") {
            None => Some(AuditFormat::Json),
            Some((f, span)) => match f.as_str() {
                "json" => Some(AuditFormat::Json),
                "ecs" => Some(AuditFormat::Ecs),
                "ocsf" => Some(AuditFormat::Ocsf),
                "cef" => Some(AuditFormat::Cef),
                "leef" => Some(AuditFormat::Leef),
                other => {
                    let help = did_you_mean(other, FORMATS.iter().copied()).unwrap_or_else(|| {
                        format!("formats: {}", backticked(FORMATS.iter().copied()))
                    });
                    self.err(
                        main,
                        span,
                        &format!("{key}.format"),
                        format!("unknown audit format `{other}`"),
                        Some(help),
                    );
                    None
                }
            },
        };
        if kind_str == "elasticsearch"
            && format.is_some_and(|f| !f.is_json())
            && let Some(v) = t.get("format")
        {
            self.err(
                main,
                v.span(),
                &format!("{key}.format"),
                "`_bulk` documents must be JSON objects",
                Some("use `json`, `ecs` or `ocsf` for an elasticsearch sink".into()),
            );
        }
        let name = match self.sink_str(&t, "name") {
            None => format!("{kind_str}-{index}"),
            Some((n, span)) => {
                if n.is_empty()
                    || !n
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    self.err(
                        main,
                        span,
                        &format!("{key}.name"),
                        format!("invalid sink name `{n}`"),
                        Some(
                            "use letters, digits, `-`, `_` and `.` (it names a file in the spool)"
                                .into(),
                        ),
                    );
                }
                n
            }
        };
        let mut settings =
            SinkSettings::new(&name, format.unwrap_or(AuditFormat::Json), SinkKind::Stdout);
        if let Some(n) = self.sink_int(&t, "batch_size", 1, 100_000) {
            settings.batch_size = n;
        }
        if let Some(d) = self.sink_duration(&t, "batch_wait") {
            settings.batch_wait = d;
        }
        if let Some(d) = self.sink_duration(&t, "retry_initial") {
            settings.retry_initial = d;
        }
        if let Some(d) = self.sink_duration(&t, "retry_max") {
            settings.retry_max = d;
        }
        let kind = match kind_str {
            "stdout" => Some(SinkKind::Stdout),
            "file" => {
                let path = self.sink_required(
                    &t,
                    "path",
                    "add `path = \"/var/log/portcullis/audit.jsonl\"`",
                );
                let max_size = self.sink_str(&t, "max_file_size").and_then(|(s, span)| {
                    let size = parse_size(&s).filter(|n| *n > 0);
                    if size.is_none() {
                        self.err(
                            main,
                            span,
                            &format!("{key}.max_file_size"),
                            format!("invalid size `{s}`"),
                            Some("write e.g. `100MiB`".into()),
                        );
                    }
                    size
                });
                let max_files = self.sink_int(&t, "max_files", 1, 1000).unwrap_or(5);
                path.map(|p| SinkKind::File {
                    path: self.base.join(p),
                    max_size,
                    max_files,
                })
            }
            "syslog" => {
                let address =
                    self.sink_required(&t, "address", "add `address = \"siem.example:6514\"`");
                if let (Some(a), Some(v)) = (&address, t.get("address"))
                    && a.rsplit_once(':')
                        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    self.err(
                        main,
                        v.span(),
                        &format!("{key}.address"),
                        format!("syslog address `{a}` is not `host:port`"),
                        Some("write e.g. `siem.example:6514`".into()),
                    );
                }
                let transport = match self.sink_str(&t, "transport") {
                    None => Some(SyslogTransport::Tls),
                    Some((s, span)) => match s.as_str() {
                        "tcp" => Some(SyslogTransport::Tcp),
                        "tls" => Some(SyslogTransport::Tls),
                        "udp" => Some(SyslogTransport::Udp),
                        other => {
                            self.one_of(
                                main,
                                span,
                                &format!("{key}.transport"),
                                other,
                                &["tls", "tcp", "udp"],
                            );
                            None
                        }
                    },
                };
                let facility = match self.sink_str(&t, "facility") {
                    None => Some(10),
                    Some((s, span)) => match FACILITIES.iter().find(|(n, _)| *n == s) {
                        Some((_, code)) => Some(*code),
                        None => {
                            let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                            self.one_of(main, span, &format!("{key}.facility"), &s, &names);
                            None
                        }
                    },
                };
                let app_name = self
                    .sink_printable(&t, "app_name", 48)
                    .unwrap_or_else(|| "portcullis".into());
                let sd_id = self
                    .sink_printable(&t, "sd_id", 32)
                    .unwrap_or_else(|| "portcullis@32473".into());
                let tls = self.sink_tls(&t);
                match (address, transport, facility) {
                    (Some(address), Some(transport), Some(facility)) => Some(SinkKind::Syslog {
                        address,
                        transport,
                        tls,
                        facility,
                        app_name,
                        sd_id,
                    }),
                    _ => None,
                }
            }
            "splunk_hec" => {
                let url = self.sink_url(&t);
                let token = self.sink_secret(&t, "token_env", "token_file", true);
                let index = self.sink_str(&t, "index").map(|(s, _)| s);
                let source = self
                    .sink_str(&t, "source")
                    .map_or_else(|| "portcullis".into(), |(s, _)| s);
                let sourcetype = self
                    .sink_str(&t, "sourcetype")
                    .map_or_else(|| "portcullis:audit".into(), |(s, _)| s);
                let tls = self.sink_tls(&t);
                match (url, token) {
                    (Some(url), Some(token)) => Some(SinkKind::SplunkHec {
                        url,
                        token,
                        index,
                        source,
                        sourcetype,
                        tls,
                    }),
                    _ => None,
                }
            }
            "http" => {
                let url = self.sink_url(&t);
                let headers = self.sink_headers(&t, "headers");
                let headers_env = self.sink_headers(&t, "headers_env");
                let tls = self.sink_tls(&t);
                url.map(|url| SinkKind::Http {
                    url,
                    headers,
                    headers_env,
                    tls,
                })
            }
            _ => {
                let url = self.sink_url(&t);
                let index = self
                    .sink_str(&t, "index")
                    .map_or_else(|| "portcullis-audit".into(), |(s, _)| s);
                let api_key = self.sink_secret(&t, "api_key_env", "api_key_file", false);
                let tls = self.sink_tls(&t);
                url.map(|url| SinkKind::Elasticsearch {
                    url,
                    index,
                    api_key,
                    tls,
                })
            }
        };
        settings.format = format?;
        settings.kind = kind?;
        (self.errors.len() == errors_before).then_some(settings)
    }

    fn one_of(&mut self, main: FileId, span: Range<usize>, key: &str, value: &str, valid: &[&str]) {
        let help = did_you_mean(value, valid.iter().copied())
            .unwrap_or_else(|| format!("valid values: {}", backticked(valid.iter().copied())));
        let leaf = key.rsplit('.').next().unwrap_or(key);
        self.err(
            main,
            span,
            key,
            format!(
                "invalid `{leaf}` value `{value}`; expected {}",
                backticked(valid.iter().copied())
            ),
            Some(help),
        );
    }

    /// A string value (an error when present with another type).
    fn sink_str(&mut self, t: &SinkTable<'_>, k: &str) -> Option<(String, Range<usize>)> {
        let v = t.get(k)?;
        match v.get_ref().as_str() {
            Some(s) => Some((s.to_owned(), v.span())),
            None => {
                self.err(
                    t.main,
                    v.span(),
                    &format!("{}.{k}", t.key),
                    format!("`{k}` must be a string"),
                    None,
                );
                None
            }
        }
    }

    fn sink_required(&mut self, t: &SinkTable<'_>, k: &str, help: &str) -> Option<String> {
        match self.sink_str(t, k) {
            Some((s, _)) if !s.is_empty() => Some(s),
            Some((_, span)) => {
                self.err(
                    t.main,
                    span,
                    &format!("{}.{k}", t.key),
                    format!("`{k}` is empty"),
                    Some(help.into()),
                );
                None
            }
            None if t.get(k).is_none() => {
                self.err(
                    t.main,
                    t.span.clone(),
                    &format!("{}.{k}", t.key),
                    format!("audit sink has no `{k}`"),
                    Some(help.into()),
                );
                None
            }
            None => None,
        }
    }

    /// RFC 5424 header fields: printable US-ASCII, bounded length.
    fn sink_printable(&mut self, t: &SinkTable<'_>, k: &str, max: usize) -> Option<String> {
        let (s, span) = self.sink_str(t, k)?;
        if s.is_empty()
            || s.len() > max
            || !s.bytes().all(|b| (33..=126).contains(&b))
            || s.contains(['=', ']', '"'])
        {
            self.err(
                t.main,
                span,
                &format!("{}.{k}", t.key),
                format!("invalid `{k}` `{s}`"),
                Some(format!("RFC 5424 allows 1 to {max} printable ASCII characters without spaces, `=`, `]` or `\"`")),
            );
            return None;
        }
        Some(s)
    }

    fn sink_url(&mut self, t: &SinkTable<'_>) -> Option<String> {
        let url = self.sink_required(t, "url", "add e.g. `url = \"https://siem.example:8088\"`")?;
        match url.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                Some(url.trim_end_matches('/').to_owned())
            }
            _ => {
                let span = t.get("url").map_or(t.span.clone(), S::span);
                self.err(
                    t.main,
                    span,
                    &format!("{}.url", t.key),
                    format!("invalid url `{url}`"),
                    Some("write an absolute `http://` or `https://` URL".into()),
                );
                None
            }
        }
    }

    fn sink_int(&mut self, t: &SinkTable<'_>, k: &str, min: i64, max: i64) -> Option<usize> {
        let v = t.get(k)?;
        match v.get_ref().as_integer() {
            Some(n) if (min..=max).contains(&n) => usize::try_from(n).ok(),
            _ => {
                self.err(
                    t.main,
                    v.span(),
                    &format!("{}.{k}", t.key),
                    format!("`{k}` must be an integer from {min} to {max}"),
                    None,
                );
                None
            }
        }
    }

    fn sink_duration(&mut self, t: &SinkTable<'_>, k: &str) -> Option<Duration> {
        let (s, span) = self.sink_str(t, k)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                self.err(
                    t.main,
                    span,
                    &format!("{}.{k}", t.key),
                    format!("invalid duration `{s}`"),
                    Some("write a positive number and a unit, e.g. `500ms` or `30s`".into()),
                );
                None
            }
        }
    }

    fn sink_secret(
        &mut self,
        t: &SinkTable<'_>,
        env: &str,
        file: &str,
        required: bool,
    ) -> Option<SecretSource> {
        let e = self.sink_str(t, env);
        let f = self.sink_str(t, file);
        match (e, f) {
            (Some(_), Some((_, span))) => {
                self.err(
                    t.main,
                    span,
                    &format!("{}.{file}", t.key),
                    format!("`{env}` and `{file}` are both set"),
                    Some("keep one of them".into()),
                );
                None
            }
            (Some((name, _)), None) if !name.is_empty() => Some(SecretSource::Env(name)),
            (None, Some((path, _))) if !path.is_empty() => {
                Some(SecretSource::File(self.base.join(path)))
            }
            (Some((_, span)), None) | (None, Some((_, span))) => {
                self.err(
                    t.main,
                    span,
                    &format!("{}.{env}", t.key),
                    "the credential source is empty",
                    None,
                );
                None
            }
            (None, None) => {
                if required {
                    self.err(
                        t.main,
                        t.span.clone(),
                        &format!("{}.{env}", t.key),
                        format!("audit sink has no `{env}`"),
                        Some(format!("name the environment variable holding the token (`{env} = \"HEC_TOKEN\"`) or use `{file}`")),
                    );
                }
                None
            }
        }
    }

    fn sink_tls(&mut self, t: &SinkTable<'_>) -> TlsClientSettings {
        let mut tls = TlsClientSettings::default();
        for k in TLS_KEYS {
            if let Some((v, span)) = self.sink_str(t, k) {
                if v.is_empty() {
                    self.err(
                        t.main,
                        span,
                        &format!("{}.{k}", t.key),
                        format!("`{k}` is empty"),
                        None,
                    );
                    continue;
                }
                match *k {
                    "ca_file" => tls.ca_file = Some(self.base.join(v)),
                    "cert_file" => tls.cert_file = Some(self.base.join(v)),
                    "key_file" => tls.key_file = Some(self.base.join(v)),
                    _ => tls.server_name = Some(v),
                }
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            self.err(
                t.main,
                t.span.clone(),
                &format!("{}.cert_file", t.key),
                "a client certificate needs both `cert_file` and `key_file`",
                None,
            );
        }
        tls
    }

    /// A table of header name -> string.
    fn sink_headers(&mut self, t: &SinkTable<'_>, k: &str) -> Vec<(String, String)> {
        let Some(v) = t.get(k) else { return Vec::new() };
        let Some(table) = v.get_ref().as_table() else {
            self.err(
                t.main,
                v.span(),
                &format!("{}.{k}", t.key),
                format!("`{k}` must be a table of strings"),
                Some("write e.g. `headers = { \"X-Source\" = \"portcullis\" }`".into()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, value) in table {
            let valid_name = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            match value.as_str() {
                Some(s) if valid_name && http::HeaderValue::from_str(s).is_ok() => {
                    out.push((name.clone(), s.to_owned()));
                }
                _ => self.err(
                    t.main,
                    v.span(),
                    &format!("{}.{k}.{name}", t.key),
                    format!("invalid header `{name}` in `{k}`"),
                    Some("header names are tokens and values are visible ASCII strings".into()),
                ),
            }
        }
        out
    }
}
