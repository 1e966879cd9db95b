//! Stage 2: raw TOML → `Snapshot`, collecting every error in one pass.
//!
//! Each `check_*` reads one section by exhaustive destructuring (a new raw field that is not
//! handled breaks the build), pushes every problem it finds into `Ctx::errors` and returns the
//! best value it can, so later checks still run and the user sees all mistakes at once. Errors
//! from `policy` and `identity` come back with a `Location` or a variant and are mapped onto the
//! span of the exact array element or key that caused them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use super::diagnostic::{FileId, Sources, backticked, did_you_mean, from_toml};
use super::raw::{self, Map, S, StrList};
use super::{
    AdminToken, ApiKeySettings, ConfigError, FileStoreData, GrantsSettings, HeaderIdentitySettings,
    HeaderNames, IdentityKinds, RedisSettings, RedisTarget, RouteEntry, SentinelSettings,
    ServerSettings, Snapshot, StaleFor, StoreSettings, UpstreamSettings,
};
use crate::identity::{
    Authenticator, DEFAULT_CACHE_SIZE, IdentitySetupError, JwksUrl, JwtSettings, TenantSource,
};
use crate::policy::{
    Location, Mode, Policy, PolicyDef, PolicyError, Requirement, RoleDef, Rule, SubjectData,
    TenantData,
};
use crate::route::{RouteConflict, RouteTableBuilder};

mod audit;
mod edge;

/// Upper bound of `[identity.jwt] cache_size` (a typo guard: each entry holds a whole token).
const MAX_JWT_CACHE_SIZE: usize = 10_000_000;
/// JWT algorithms `identity` verifies.
const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];
const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];
/// Headers the gateway must never overwrite with identity data.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "upgrade",
    "cookie",
    // Set by the gateway from the connection, next to the identity headers.
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Read, parse and validate `text` (the main file at `path`) and its includes.
pub(crate) fn validate(
    text: &str,
    path: &Path,
    secret: Option<&[u8]>,
) -> Result<Snapshot, Vec<ConfigError>> {
    let mut sources = Sources::default();
    let main = sources.add(path.to_path_buf(), text.to_owned());
    let file: raw::File = match toml::from_str(text) {
        Ok(file) => file,
        Err(err) => return Err(vec![from_toml(&sources, main, &err)]),
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    // Includes are read before the context borrows `sources`; their errors wait in `early`.
    let mut early = Vec::new();
    let includes = read_includes(&mut sources, main, &file.include, &base, &mut early);

    let mut ctx = Ctx {
        src: &sources,
        base,
        errors: early,
        secret,
    };
    let snapshot = ctx.build(main, file, includes);
    let mut errors = ctx.errors;
    if errors.is_empty() {
        return snapshot.ok_or_else(|| {
            vec![sources.error(
                main,
                None,
                "",
                "internal error: configuration rejected without a reason".to_owned(),
                None,
            )]
        });
    }
    // Files in load order, then position: the order a user fixes them in.
    let order: HashMap<PathBuf, usize> = (0..sources.len())
        .map(|id| (sources.path(id).to_path_buf(), id))
        .collect();
    errors.sort_by_key(|e| (order.get(&e.file).copied(), e.line, e.column));
    errors.dedup_by(|a, b| a.rendered == b.rendered);
    Err(errors)
}

fn read_includes(
    sources: &mut Sources,
    main: FileId,
    include: &Option<StrList>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<(FileId, raw::IncludeFile)> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    for (i, name) in include.iter().flatten().enumerate() {
        let key = format!("include[{i}]");
        if let Some(first) = seen.get(name.get_ref()) {
            let message = format!(
                "`{}` is included twice (first at {})",
                name.get_ref(),
                sources.location(main, first)
            );
            errors.push(sources.error(
                main,
                Some(name.span()),
                &key,
                message,
                Some("remove one of them".into()),
            ));
            continue;
        }
        seen.insert(name.get_ref().clone(), name.span());
        let path = base.join(name.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                let message = format!("cannot read included file `{}`: {err}", path.display());
                let help = Some(format!(
                    "include paths are relative to the directory of `{}`",
                    sources.path(main).display()
                ));
                errors.push(sources.error(main, Some(name.span()), &key, message, help));
                continue;
            }
        };
        let id = sources.add(path, text);
        match toml::from_str::<raw::IncludeFile>(sources.text(id)) {
            Ok(parsed) => out.push((id, parsed)),
            Err(err) => {
                let mut e = from_toml(sources, id, &err);
                if e.message.starts_with("unknown field") && e.help.is_none() {
                    let help =
                        "included files may contain only `[[routes]]`, `[roles.*]` and `[aliases]`";
                    e = sources.error(id, err.span(), "", e.message, Some(help.into()));
                }
                errors.push(e);
            }
        }
    }
    out
}

/// Validation state: the sources (for spans) and every error found so far.
struct Ctx<'s> {
    src: &'s Sources,
    /// Directory of the main file: relative paths resolve against it.
    base: PathBuf,
    errors: Vec<ConfigError>,
    /// HS secret given directly (demo, tests) instead of read from `secret_env`.
    secret: Option<&'s [u8]>,
}

/// Where a role's list elements sit, to map `Location::Role` back to the file.
#[derive(Default)]
struct RoleSpans {
    file: FileId,
    name: Range<usize>,
    permissions: Vec<Range<usize>>,
    own: Vec<Range<usize>>,
    inherits: Vec<Range<usize>>,
}

impl RoleSpans {
    fn element(&self, field: &str, index: usize) -> Range<usize> {
        let list = match field {
            "permissions" => &self.permissions,
            "own" => &self.own,
            "inherits" => &self.inherits,
            _ => return self.name.clone(),
        };
        list.get(index)
            .cloned()
            .unwrap_or_else(|| self.name.clone())
    }
}

/// A route after the checks that need no policy.
struct RoutePlan {
    file: FileId,
    path: String,
    methods: Vec<Method>,
    requirement: ReqPlan,
    upstream: usize,
    owner_param: Option<String>,
    scope_param: Option<String>,
    mfa: bool,
    mode: Option<Mode>,
    deny_status: Option<u16>,
    websocket: bool,
    websocket_max_lifetime: Option<Duration>,
}

enum ReqPlan {
    Public,
    Permission(String),
    AnyOf(Vec<String>),
    AllOf(Vec<String>),
}

/// One `(file, span, key)` triple, for mapping positional policy errors.
type At = (FileId, Range<usize>, String);

// === impl Ctx ===

impl Ctx<'_> {
    fn err(
        &mut self,
        file: FileId,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let e = self.src.error(file, Some(span), key, message.into(), help);
        self.errors.push(e);
    }

    fn build(
        &mut self,
        main: FileId,
        file: raw::File,
        includes: Vec<(FileId, raw::IncludeFile)>,
    ) -> Option<Snapshot> {
        let raw::File {
            include: _, // read before validation
            server,
            upstreams,
            identity,
            grants,
            policy,
            headers,
            roles,
            aliases,
            entitlements,
            routes,
            tenants,
            assignments,
            audit,
            limits,
            cors,
            log,
        } = file;

        let server = self.check_server(main, server);
        let upstreams = self.check_upstreams(main, upstreams);
        let (jwt, identity_kinds, api_key_span) = self.check_identity(main, identity);
        let (mode, separator, unmatched_status) = self.check_policy_section(main, policy);
        let headers = self.check_headers(main, headers);
        let audit = self.check_audit(main, audit);
        let limits = self.check_limits(main, limits);
        let cors = self.check_cors(main, cors);
        let log = self.check_log(main, log);

        // Roles, aliases and routes from the main file and every include, in load order.
        let mut all_roles = vec![(main, roles)];
        let mut all_aliases = vec![(main, aliases)];
        let mut all_routes: Vec<(FileId, S<raw::Route>)> =
            routes.into_iter().map(|r| (main, r)).collect();
        for (id, inc) in includes {
            let raw::IncludeFile {
                routes,
                roles,
                aliases,
            } = inc;
            all_roles.push((id, roles));
            all_aliases.push((id, aliases));
            all_routes.extend(routes.into_iter().map(|r| (id, r)));
        }

        let mut def = PolicyDef {
            separator,
            ..PolicyDef::default()
        };
        let role_spans = self.check_roles(all_roles, &mut def);
        let alias_spans = self.check_aliases(all_aliases, &role_spans, &mut def);
        let ent_spans = self.check_entitlements(main, entitlements, &mut def);
        let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
        let mut perm_spans: Vec<At> = Vec::new();
        let (plans, table) =
            self.check_routes(&all_routes, &upstream_names, &mut def, &mut perm_spans);
        let (store, cache_ttl, max_stale, stale_for) = self.check_grants(main, grants);
        let tenant_plans = self.check_tenants(main, &tenants, &def.tiers);
        let assignment_plans = self.check_assignments(main, &assignments);
        if let (Some(span), Some(StoreKind::File)) = (&api_key_span, &store) {
            self.err(
                main,
                span.clone(),
                "identity.kinds",
                "API keys are looked up in Redis and need `store = \"redis\"`",
                Some("set `[grants] store = \"redis\"` or remove `api_key` from `kinds`".into()),
            );
        }
        if let Some(StoreKind::Redis {
            span: store_span, ..
        }) = &store
        {
            let store_span = store_span.clone();
            if let Some((name, _)) = tenants.0.first() {
                self.err(
                    main,
                    name.span(),
                    &format!("tenants.{}", name.get_ref()),
                    "`[tenants.*]` is only used with `store = \"file\"`",
                    Some(format!(
                        "the grant store is Redis (set at {}); put tenant records in Redis or remove this section",
                        self.src.location(main, &store_span)
                    )),
                );
            }
            if let Some(first) = assignments.first() {
                self.err(
                    main,
                    first.span(),
                    "assignments[0]",
                    "`[[assignments]]` are only used with `store = \"file\"`",
                    Some(format!(
                        "the grant store is Redis (set at {}); assign roles with `portcullis roles` or remove them",
                        self.src.location(main, &store_span)
                    )),
                );
            }
        }

        // Policy: everything above fed `def`; map its errors back onto the spans we kept.
        let before_policy = self.errors.len();
        let policy = match Policy::compile(&def) {
            Ok(policy) => Some(policy),
            Err(errs) => {
                for e in errs {
                    let at = self.locate_policy(
                        main,
                        &e.at,
                        &role_spans,
                        &alias_spans,
                        &ent_spans,
                        &perm_spans,
                    );
                    self.policy_err(before_policy, at, e);
                }
                None
            }
        };

        let store = match (policy.as_ref(), store) {
            (Some(policy), Some(StoreKind::File)) => Some(StoreSettings::File(self.compile_store(
                policy,
                &tenant_plans,
                &assignment_plans,
                before_policy,
            ))),
            (None, Some(StoreKind::File)) => {
                // The policy did not compile, so `principal` cannot run; still report
                // assignments naming roles that exist nowhere, so one run shows every mistake.
                self.check_assignment_roles(&def, &tenant_plans, &assignment_plans);
                Some(StoreSettings::File(FileStoreData::default()))
            }
            (_, Some(StoreKind::Redis { settings, .. })) => Some(StoreSettings::Redis(*settings)),
            (_, None) => None,
        };

        let entries = policy
            .as_ref()
            .map(|p| self.compile_routes(p, plans, mode.unwrap_or_default()));

        let authenticator = jwt
            .as_ref()
            .and_then(|(jwt, spans)| self.build_authenticator(main, jwt, spans));

        // Only a clean run yields a snapshot; every `None` above has pushed an error.
        if !self.errors.is_empty() {
            return None;
        }
        let files: Vec<PathBuf> = (0..self.src.len())
            .map(|id| self.src.path(id).to_path_buf())
            .collect();
        let sha256 = {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            for id in 0..self.src.len() {
                hash.update(self.src.text(id).as_bytes());
            }
            hex::encode(hash.finalize())
        };
        Some(Snapshot {
            source: self.src.path(main).to_path_buf(),
            files,
            sha256,
            log,
            server: server?,
            upstreams,
            jwt: jwt?.0,
            identity: identity_kinds,
            authenticator: Arc::new(authenticator?),
            grants: GrantsSettings {
                store: store?,
                cache_ttl,
                max_stale,
                stale_for,
            },
            policy: policy?,
            mode: mode.unwrap_or_default(),
            unmatched_status,
            routes: table.build(),
            route_entries: entries?,
            headers,
            audit,
            limits,
            cors,
        })
    }

    /// Push a policy error unless a config check already reported a problem on the same line
    /// (both would describe the same mistake).
    fn policy_err(&mut self, before_policy: usize, at: At, e: PolicyError) {
        let (file, span, key) = at;
        let e = self.src.error(file, Some(span), &key, e.message, e.help);
        let dup = self
            .errors
            .iter()
            .take(before_policy)
            .any(|x| x.file == e.file && x.line == e.line);
        if !dup {
            self.errors.push(e);
        }
    }

    fn locate_policy(
        &self,
        main: FileId,
        at: &Location,
        roles: &HashMap<String, RoleSpans>,
        aliases: &HashMap<String, (FileId, Range<usize>)>,
        ent: &EntitlementSpans,
        perms: &[At],
    ) -> At {
        let fallback = || (main, 0..0, String::new());
        match at {
            Location::Role { role, field, index } => roles.get(role).map_or_else(fallback, |r| {
                (
                    r.file,
                    r.element(field, *index),
                    format!("roles.{role}.{field}[{index}]"),
                )
            }),
            Location::Alias { alias } => aliases.get(alias).map_or_else(fallback, |(f, s)| {
                (*f, s.clone(), format!("aliases.{alias}"))
            }),
            Location::RequireTier { index } => {
                ent.require_tier.get(*index).map_or_else(fallback, |s| {
                    (
                        main,
                        s.clone(),
                        format!("entitlements.require_tier[{index}]"),
                    )
                })
            }
            Location::RequireFeature { index } => {
                ent.require_feature.get(*index).map_or_else(fallback, |s| {
                    (
                        main,
                        s.clone(),
                        format!("entitlements.require_feature[{index}]"),
                    )
                })
            }
            Location::Mfa { index } => ent.mfa.get(*index).map_or_else(fallback, |s| {
                (
                    main,
                    s.clone(),
                    format!("entitlements.mfa.require[{index}]"),
                )
            }),
            Location::RoutePermission { index } => {
                perms.get(*index).cloned().unwrap_or_else(fallback)
            }
            // Store data is located by `compile_store`, which knows which record it compiled.
            Location::Subject { .. } | Location::Tenant { .. } => fallback(),
        }
    }

    // --- [server] ---

    fn check_server(
        &mut self,
        main: FileId,
        server: Option<S<raw::Server>>,
    ) -> Option<ServerSettings> {
        let Some(server) = server else {
            self.err(
                main,
                0..0,
                "server",
                "missing `[server]` section",
                Some("add `[server]` with `listen = \"0.0.0.0:8080\"`".into()),
            );
            return None;
        };
        let span = server.span();
        let raw::Server {
            listen,
            admin_listen,
            admin_token_env,
            tls,
        } = server.into_inner();
        let admin_token = admin_token_env.and_then(|name| match std::env::var(name.get_ref()) {
            Ok(token) if token.len() >= 16 => Some(AdminToken(token)),
            Ok(_) => {
                self.err(
                    main,
                    name.span(),
                    "server.admin_token_env",
                    format!(
                        "the admin token in `{}` is shorter than 16 characters",
                        name.get_ref()
                    ),
                    Some("use a random token, e.g. `openssl rand -hex 32`".into()),
                );
                None
            }
            Err(_) => {
                self.err(
                    main,
                    name.span(),
                    "server.admin_token_env",
                    format!("environment variable `{}` is not set", name.get_ref()),
                    Some(
                        "export the admin API token in that variable, or remove `admin_token_env`"
                            .into(),
                    ),
                );
                None
            }
        });
        let tls_given = tls.is_some();
        let tls = tls.and_then(|tls| self.check_server_tls(main, tls));
        let listen = match listen {
            Some(l) => self.socket_addr(main, &l, "server.listen"),
            None => {
                self.err(
                    main,
                    span,
                    "server.listen",
                    "missing `listen` in `[server]`",
                    Some("add `listen = \"0.0.0.0:8080\"`".into()),
                );
                None
            }
        };
        let admin = admin_listen
            .as_ref()
            .map(|a| (a.span(), self.socket_addr(main, a, "server.admin_listen")));
        if let (Some(l), Some((admin_span, Some(a)))) = (listen, &admin)
            && l == *a
        {
            self.err(
                main,
                admin_span.clone(),
                "server.admin_listen",
                format!("`admin_listen` is the same address as `listen` (`{a}`)"),
                Some("the admin API needs its own address, e.g. `127.0.0.1:9090`".into()),
            );
        }
        if tls_given && tls.is_none() {
            return None;
        }
        Some(ServerSettings {
            tls,
            admin_token,
            listen: listen?,
            admin_listen: match admin {
                Some((_, a)) => Some(a?),
                None => None,
            },
        })
    }

    fn socket_addr(&mut self, file: FileId, v: &S<String>, key: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let help = if v.get_ref().starts_with(':') {
                    format!("write `0.0.0.0{}`", v.get_ref())
                } else {
                    "write an IP address and port, e.g. `0.0.0.0:8080` or `[::1]:8080`".into()
                };
                self.err(
                    file,
                    v.span(),
                    key,
                    format!("invalid listen address `{}`", v.get_ref()),
                    Some(help),
                );
                None
            }
        }
    }

    // --- [upstreams.*] ---

    fn check_upstreams(
        &mut self,
        main: FileId,
        upstreams: Map<S<raw::Upstream>>,
    ) -> Vec<UpstreamSettings> {
        let mut out = Vec::new();
        for (name, up) in upstreams.0 {
            let key = format!("upstreams.{}", name.get_ref());
            let span = up.span();
            let raw::Upstream {
                targets,
                connect_timeout,
                request_timeout,
                idle_timeout,
                max_failures,
                eject_for,
                max_connections,
                protocol,
                tls,
                ca,
            } = up.into_inner();
            let pool = self.check_pool(
                main,
                &key,
                edge::RawPool {
                    idle_timeout,
                    max_failures,
                    eject_for,
                    max_connections,
                    protocol,
                    tls,
                    ca,
                },
            );
            let mut list = Vec::new();
            match targets {
                None => self.err(
                    main,
                    span,
                    &key,
                    format!("upstream `{}` has no `targets`", name.get_ref()),
                    Some("add `targets = [\"127.0.0.1:3000\"]`".into()),
                ),
                Some(t) if t.get_ref().is_empty() => self.err(
                    main,
                    t.span(),
                    &format!("{key}.targets"),
                    format!("upstream `{}` has no targets", name.get_ref()),
                    Some("list at least one `host:port`".into()),
                ),
                Some(t) => {
                    for (i, target) in t.into_inner().into_iter().enumerate() {
                        if self.check_target(main, &target, &format!("{key}.targets[{i}]")) {
                            list.push(target.into_inner());
                        }
                    }
                }
            }
            let connect_timeout = self.duration(
                main,
                &connect_timeout,
                &format!("{key}.connect_timeout"),
                Duration::from_secs(2),
                true,
            );
            let request_timeout = self.duration(
                main,
                &request_timeout,
                &format!("{key}.request_timeout"),
                Duration::from_secs(30),
                true,
            );
            out.push(UpstreamSettings {
                name: name.into_inner(),
                targets: list,
                connect_timeout,
                request_timeout,
                idle_timeout: pool.idle_timeout,
                max_failures: pool.max_failures,
                eject_for: pool.eject_for,
                max_connections: pool.max_connections,
                protocol: pool.protocol,
                tls: pool.tls,
            });
        }
        out
    }

    fn check_target(&mut self, file: FileId, target: &S<String>, key: &str) -> bool {
        let t = target.get_ref();
        if let Some((scheme, rest)) = t.split_once("://") {
            self.err(
                file,
                target.span(),
                key,
                format!("upstream target `{t}` must be `host:port`, without a scheme"),
                Some(format!("write `{}`", rest.trim_end_matches('/'))),
            );
            let _ = scheme;
            return false;
        }
        let ok = t
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| a.port_u16().is_some() && !a.host().is_empty() && !t.contains('@'))
            .is_some();
        if !ok {
            self.err(
                file,
                target.span(),
                key,
                format!("upstream target `{t}` is not `host:port`"),
                Some("write e.g. `127.0.0.1:3000` or `api.internal:8080`".into()),
            );
        }
        ok
    }

    /// Parse a duration, pushing an error and returning `default` when it is invalid.
    fn duration(
        &mut self,
        file: FileId,
        v: &Option<S<String>>,
        key: &str,
        default: Duration,
        non_zero: bool,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if non_zero && d.is_zero() => {
                self.err(
                    file,
                    v.span(),
                    key,
                    format!("`{}` must be greater than zero", key_leaf(key)),
                    None,
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    file,
                    v.span(),
                    key,
                    format!(
                        "invalid duration `{}`: {}",
                        v.get_ref(),
                        lower_first(&e.to_string())
                    ),
                    Some("write a number and a unit, e.g. `30s`, `250ms` or `5m`".into()),
                );
                default
            }
        }
    }

    // --- [identity] ---

    /// `[identity]`: the JWT settings (still required: `token`, `demo` and `explain` rely on
    /// them), the accepted kinds, and the span of `[identity.api_key]` (API keys need Redis).
    fn check_identity(
        &mut self,
        main: FileId,
        identity: Option<S<raw::Identity>>,
    ) -> (
        Option<(JwtSettings, JwtSpans)>,
        IdentityKinds,
        Option<Range<usize>>,
    ) {
        let mut out = IdentityKinds::default();
        let Some(identity) = identity else {
            self.err(
                main,
                0..0,
                "identity",
                "missing `[identity]` section",
                Some(
                    "add `[identity.jwt]` with `algorithms` and `secret_env` or `jwks_file`".into(),
                ),
            );
            return (None, out, None);
        };
        let span = identity.span();
        let raw::Identity {
            kinds,
            jwt,
            tenant,
            api_key,
            header,
        } = identity.into_inner();
        let header_span = header.as_ref().map(S::span);
        let header_settings = header.and_then(|h| self.check_header_identity(main, h));
        let mut header_kind = None;
        let mut api_key_kind = None;
        if let Some(kinds) = &kinds {
            if kinds.get_ref().is_empty() {
                self.err(
                    main,
                    kinds.span(),
                    "identity.kinds",
                    "`kinds` is empty",
                    Some("write `kinds = [\"jwt\"]`".into()),
                );
            }
            out.jwt = false;
            for (i, kind) in kinds.get_ref().iter().enumerate() {
                let key = format!("identity.kinds[{i}]");
                match kind.get_ref().as_str() {
                    "jwt" => out.jwt = true,
                    "api_key" => api_key_kind = Some(kind.span()),
                    "header" => header_kind = Some(kind.span()),
                    other => self.err(
                        main,
                        kind.span(),
                        &key,
                        format!("unknown identity kind `{other}`"),
                        Some(
                            did_you_mean(other, ["jwt", "api_key", "header"]).unwrap_or_else(
                                || "supported kinds: `jwt`, `api_key`, `header`".into(),
                            ),
                        ),
                    ),
                }
            }
        }
        match (&header_kind, &header_span) {
            (Some(_), Some(_)) => out.header = header_settings,
            (Some(kind), None) => self.err(
                main,
                kind.clone(),
                "identity.kinds",
                "identity kind `header` needs `[identity.header]`",
                Some("add `[identity.header]` with `subject`, `tenant` and `trusted_peers`".into()),
            ),
            (None, Some(s)) => self.err(
                main,
                s.clone(),
                "identity.header",
                "`[identity.header]` is set but `header` is not in `kinds`",
                Some("write `kinds = [\"jwt\", \"header\"]`".into()),
            ),
            (None, None) => {}
        }
        let api_key_span = api_key.as_ref().map(S::span);
        let header_name = match api_key.map(S::into_inner) {
            Some(raw::ApiKey { header: Some(h) }) => {
                self.header_name(main, &h, h.get_ref(), "identity.api_key.header")
            }
            _ => Some(HeaderName::from_static("x-api-key")),
        };
        match (&api_key_kind, &api_key_span) {
            (Some(_), _) => {
                out.api_key = header_name.map(|header| ApiKeySettings { header });
            }
            (None, Some(s)) => self.err(
                main,
                s.clone(),
                "identity.api_key",
                "`[identity.api_key]` is set but `api_key` is not in `kinds`",
                Some("write `kinds = [\"jwt\", \"api_key\"]`".into()),
            ),
            (None, None) => {}
        }
        let Some(jwt) = jwt else {
            self.err(
                main,
                span,
                "identity.jwt",
                "missing `[identity.jwt]` section",
                Some(
                    "add `[identity.jwt]` with `algorithms` and `secret_env` or `jwks_file`".into(),
                ),
            );
            return (None, out, api_key_kind);
        };
        (self.check_jwt(main, jwt, tenant), out, api_key_kind)
    }

    fn check_header_identity(
        &mut self,
        main: FileId,
        header: S<raw::HeaderIdentity>,
    ) -> Option<HeaderIdentitySettings> {
        let span = header.span();
        let raw::HeaderIdentity {
            subject,
            tenant,
            trusted_peers,
            trusted_client_certs,
        } = header.into_inner();
        let mut name = |v: Option<S<String>>, key: &str| match v {
            Some(v) => self.header_name(main, &v, v.get_ref(), &format!("identity.header.{key}")),
            None => {
                self.err(
                    main,
                    span.clone(),
                    &format!("identity.header.{key}"),
                    format!("missing `{key}` in `[identity.header]`"),
                    Some(format!(
                        "name the header carrying the {key}, e.g. `x-auth-{key}`"
                    )),
                );
                None
            }
        };
        let subject = name(subject, "subject");
        let tenant = name(tenant, "tenant");
        let mut peers = Vec::new();
        for (i, cidr) in trusted_peers.iter().flat_map(|l| l.get_ref()).enumerate() {
            let text = cidr.get_ref();
            let (addr, len) = text.split_once('/').unwrap_or((text, ""));
            let parsed = addr.parse::<std::net::IpAddr>().ok().and_then(|ip| {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = if len.is_empty() {
                    Some(max)
                } else {
                    len.parse::<u8>().ok()
                };
                len.filter(|&l| l <= max).map(|l| (ip, l))
            });
            match parsed {
                Some(p) => peers.push(p),
                None => self.err(
                    main,
                    cidr.span(),
                    &format!("identity.header.trusted_peers[{i}]"),
                    format!("invalid CIDR `{text}`"),
                    Some(
                        "write an address with a prefix length, e.g. `10.0.0.5/32` or `fd00::/64`"
                            .into(),
                    ),
                ),
            }
        }
        let certs: Vec<String> = trusted_client_certs
            .iter()
            .flat_map(|l| l.get_ref())
            .map(|c| c.get_ref().clone())
            .collect();
        let no_peers = trusted_peers
            .as_ref()
            .is_none_or(|l| l.get_ref().is_empty());
        if no_peers && certs.is_empty() {
            self.err(
                main,
                span,
                "identity.header.trusted_peers",
                "`[identity.header]` trusts nobody",
                Some("list the authenticating proxy in `trusted_peers = [\"10.0.0.5/32\"]` or its mTLS subject in `trusted_client_certs`".into()),
            );
        }
        Some(HeaderIdentitySettings {
            subject: subject?,
            tenant: tenant?,
            trusted_peers: peers,
            trusted_client_certs: certs,
        })
    }

    fn check_jwt(
        &mut self,
        main: FileId,
        jwt: S<raw::Jwt>,
        tenant: Option<S<raw::TenantFrom>>,
    ) -> Option<(JwtSettings, JwtSpans)> {
        let section = jwt.span();
        let raw::Jwt {
            algorithms,
            secret_env,
            jwks_file,
            jwks_url,
            jwks_refresh_interval,
            jwks_min_refresh_interval,
            issuer,
            audience,
            subject_claim,
            tenant_claim,
            leeway,
            cache_size,
        } = jwt.into_inner();
        let errors_before = self.errors.len();
        let mut algs = Vec::new();
        match &algorithms {
            None => self.err(
                main,
                section.clone(),
                "identity.jwt.algorithms",
                "missing `algorithms` in `[identity.jwt]`",
                Some("add e.g. `algorithms = [\"RS256\"]`".into()),
            ),
            Some(list) if list.get_ref().is_empty() => self.err(
                main,
                list.span(),
                "identity.jwt.algorithms",
                "`algorithms` is empty",
                Some(
                    "list the algorithms your identity provider signs with, e.g. `[\"RS256\"]`"
                        .into(),
                ),
            ),
            Some(list) => {
                for (i, alg) in list.get_ref().iter().enumerate() {
                    if ALGORITHMS.contains(&alg.get_ref().as_str()) {
                        algs.push(alg.get_ref().clone());
                        continue;
                    }
                    let help = did_you_mean(
                        &alg.get_ref().to_ascii_uppercase(),
                        ALGORITHMS.iter().copied(),
                    )
                    .or_else(|| did_you_mean(alg.get_ref(), ALGORITHMS.iter().copied()))
                    .unwrap_or_else(|| {
                        format!("supported: {}", backticked(ALGORITHMS.iter().copied()))
                    });
                    let message = if alg.get_ref().eq_ignore_ascii_case("none") {
                        "algorithm `none` is never accepted".to_owned()
                    } else {
                        format!("unsupported JWT algorithm `{}`", alg.get_ref())
                    };
                    self.err(
                        main,
                        alg.span(),
                        &format!("identity.jwt.algorithms[{i}]"),
                        message,
                        Some(help),
                    );
                }
            }
        }
        let has_hs = algs.iter().any(|a| a.starts_with("HS"));
        let has_asym = algs.iter().any(|a| !a.starts_with("HS"));
        let refresh = self.duration(
            main,
            &jwks_refresh_interval,
            "identity.jwt.jwks_refresh_interval",
            Duration::from_secs(300),
            true,
        );
        let min_interval = self.duration(
            main,
            &jwks_min_refresh_interval,
            "identity.jwt.jwks_min_refresh_interval",
            Duration::from_secs(10),
            true,
        );
        for (v, key) in [
            (&jwks_refresh_interval, "jwks_refresh_interval"),
            (&jwks_min_refresh_interval, "jwks_min_refresh_interval"),
        ] {
            if let (Some(v), None) = (v, &jwks_url) {
                self.err(
                    main,
                    v.span(),
                    &format!("identity.jwt.{key}"),
                    format!("`{key}` is set without `jwks_url`"),
                    Some("add `jwks_url`, or remove the key".into()),
                );
            }
        }
        let jwks_url_settings = match &jwks_url {
            None => None,
            Some(url) => {
                let parsed = url.get_ref().parse::<http::Uri>().ok().filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                });
                if parsed.is_none() {
                    self.err(
                        main,
                        url.span(),
                        "identity.jwt.jwks_url",
                        format!("invalid `jwks_url` `{}`", url.get_ref()),
                        Some("write an absolute `https://` URL, e.g. `https://idp.example.com/.well-known/jwks.json`".into()),
                    );
                }
                if jwks_file.is_some() {
                    self.err(
                        main,
                        url.span(),
                        "identity.jwt.jwks_url",
                        "`jwks_url` and `jwks_file` are both set",
                        Some("use one key source".into()),
                    );
                }
                parsed.map(|url| JwksUrl {
                    url,
                    refresh,
                    min_interval,
                })
            }
        };
        if let Some(env) = &secret_env {
            let name = env.get_ref();
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.err(
                    main,
                    env.span(),
                    "identity.jwt.secret_env",
                    format!("`{name}` is not an environment variable name"),
                    Some("`secret_env` names the variable holding the secret, e.g. `JWT_SECRET`; never put the secret itself here".into()),
                );
            } else if !has_hs && !algs.is_empty() {
                self.err(
                    main,
                    env.span(),
                    "identity.jwt.secret_env",
                    "`secret_env` is set but no HS algorithm is listed",
                    Some("add `HS256` to `algorithms` or remove `secret_env`".into()),
                );
            }
        } else if has_hs {
            self.err(
                main,
                algorithms.as_ref().map_or(section.clone(), |a| a.span()),
                "identity.jwt.secret_env",
                "HS algorithms need `secret_env`",
                Some(
                    "add `secret_env = \"JWT_SECRET\"` naming the variable with the shared secret"
                        .into(),
                ),
            );
        }
        if jwks_file.is_none() && has_asym && jwks_url.is_none() {
            self.err(
                main,
                algorithms.as_ref().map_or(section.clone(), |a| a.span()),
                "identity.jwt.jwks_file",
                "public-key algorithms need `jwks_file`",
                Some("add `jwks_file = \"jwks.json\"` (relative to this file)".into()),
            );
        }
        if let Some(file) = &jwks_file
            && file.get_ref().is_empty()
        {
            self.err(
                main,
                file.span(),
                "identity.jwt.jwks_file",
                "`jwks_file` is empty",
                None,
            );
        }
        for (v, key) in [
            (&issuer, "issuer"),
            (&audience, "audience"),
            (&subject_claim, "subject_claim"),
            (&tenant_claim, "tenant_claim"),
        ] {
            if let Some(v) = v
                && v.get_ref().trim().is_empty()
            {
                self.err(
                    main,
                    v.span(),
                    &format!("identity.jwt.{key}"),
                    format!("`{key}` is empty"),
                    Some(format!("remove `{key}` or give it a value")),
                );
            }
        }
        let leeway_d = self.duration(
            main,
            &leeway,
            "identity.jwt.leeway",
            Duration::from_secs(30),
            false,
        );
        if let Some(l) = &leeway
            && leeway_d > Duration::from_secs(60)
        {
            self.err(
                main,
                l.span(),
                "identity.jwt.leeway",
                format!("`leeway` of `{}` is more than 60s", l.get_ref()),
                Some("clock skew beyond a minute lets expired tokens through; fix the clocks (NTP) and keep `leeway` at most `60s`".into()),
            );
        }
        let cache_size = match &cache_size {
            None => DEFAULT_CACHE_SIZE,
            Some(c) => match usize::try_from(*c.get_ref()) {
                Ok(n) if n <= MAX_JWT_CACHE_SIZE => n,
                _ => {
                    self.err(
                        main,
                        c.span(),
                        "identity.jwt.cache_size",
                        format!(
                            "`cache_size` must be 0 (no cache) up to {MAX_JWT_CACHE_SIZE} entries"
                        ),
                        Some(format!("e.g. `cache_size = {DEFAULT_CACHE_SIZE}`")),
                    );
                    0
                }
            },
        };
        let tenant = self.tenant_source(main, tenant_claim.as_ref(), tenant);
        if self.errors.len() > errors_before {
            return None;
        }
        let spans = JwtSpans {
            section,
            algorithms: algorithms.as_ref().map(|a| a.span()),
            secret_env: secret_env.as_ref().map(|s| s.span()),
            jwks_file: jwks_file.as_ref().map(|s| s.span()),
        };
        let settings = JwtSettings {
            algorithms: algs,
            secret_env: secret_env.map(S::into_inner),
            jwks_file: jwks_file.map(|f| self.base.join(f.into_inner())),
            jwks_url: jwks_url_settings,
            issuer: issuer.map(S::into_inner),
            audience: audience.map(S::into_inner),
            subject_claim: subject_claim.map_or_else(|| "sub".to_owned(), S::into_inner),
            tenant: tenant?,
            leeway: leeway_d,
            cache_size,
        };
        Some((settings, spans))
    }

    fn tenant_source(
        &mut self,
        main: FileId,
        tenant_claim: Option<&S<String>>,
        tenant: Option<S<raw::TenantFrom>>,
    ) -> Option<TenantSource> {
        let Some(tenant) = tenant else {
            return Some(TenantSource::Claim(
                tenant_claim.map_or_else(|| "tenant".to_owned(), |c| c.get_ref().clone()),
            ));
        };
        let span = tenant.span();
        let raw::TenantFrom { from } = tenant.into_inner();
        let Some(from) = from else {
            self.err(
                main,
                span,
                "identity.tenant.from",
                "missing `from` in `[identity.tenant]`",
                Some("write `from = \"header:x-tenant-id\"` or `from = \"claim:tenant\"`".into()),
            );
            return None;
        };
        if let Some(claim) = tenant_claim {
            self.err(
                main,
                claim.span(),
                "identity.jwt.tenant_claim",
                format!(
                    "`tenant_claim` and `[identity.tenant]` (at {}) both say where the tenant comes from",
                    self.src.location(main, &from.span())
                ),
                Some("keep one of them".into()),
            );
            return None;
        }
        let key = "identity.tenant.from";
        let v = from.get_ref();
        if let Some(name) = v.strip_prefix("header:") {
            if self.header_name(main, &from, name, key).is_some() {
                return Some(TenantSource::Header(name.to_owned()));
            }
            return None;
        }
        if let Some(claim) = v.strip_prefix("claim:") {
            if claim.is_empty() {
                self.err(
                    main,
                    from.span(),
                    key,
                    "claim name is empty",
                    Some("write e.g. `claim:tenant`".into()),
                );
                return None;
            }
            return Some(TenantSource::Claim(claim.to_owned()));
        }
        if v == "host" || v.starts_with("path:") {
            self.err(
                main,
                from.span(),
                key,
                format!("tenant source `{v}` is not supported yet"),
                Some("supported: `header:NAME`, `claim:NAME`".into()),
            );
            return None;
        }
        self.err(
            main,
            from.span(),
            key,
            format!("invalid tenant source `{v}`"),
            Some("write `header:NAME` (e.g. `header:x-tenant-id`) or `claim:NAME` (e.g. `claim:tenant`)".into()),
        );
        None
    }

    fn build_authenticator(
        &mut self,
        main: FileId,
        jwt: &JwtSettings,
        spans: &JwtSpans,
    ) -> Option<Authenticator> {
        let built = match self.secret {
            Some(secret) => Authenticator::build_with_secret(jwt, Some(secret)),
            None => Authenticator::build(jwt),
        };
        match built {
            Ok(a) => Some(a),
            Err(e) => {
                let (span, key, help) = match &e {
                    IdentitySetupError::MissingSecret(var) => (
                        spans.secret_env.clone(),
                        "identity.jwt.secret_env",
                        Some(format!(
                            "export {var}=... with the HS256 secret before starting Portcullis"
                        )),
                    ),
                    IdentitySetupError::JwksRead { .. } => (
                        spans.jwks_file.clone(),
                        "identity.jwt.jwks_file",
                        Some("`jwks_file` is relative to the directory of this config file".into()),
                    ),
                    IdentitySetupError::JwksInvalid { .. } => (
                        spans.jwks_file.clone(),
                        "identity.jwt.jwks_file",
                        Some("the file must be a JSON Web Key Set: `{\"keys\": [...]}`".into()),
                    ),
                    IdentitySetupError::UnsupportedAlgorithm(_) => {
                        (spans.algorithms.clone(), "identity.jwt.algorithms", None)
                    }
                    IdentitySetupError::Other(_) => (None, "identity.jwt", None),
                };
                let span = span.unwrap_or_else(|| spans.section.clone());
                self.err(main, span, key, lower_first(&e.to_string()), help);
                None
            }
        }
    }

    // --- [grants] ---

    fn check_grants(
        &mut self,
        main: FileId,
        grants: Option<S<raw::Grants>>,
    ) -> (Option<StoreKind>, Duration, Duration, StaleFor) {
        let defaults = (Duration::from_secs(30), Duration::from_secs(300));
        let Some(grants) = grants else {
            return (
                Some(StoreKind::File),
                defaults.0,
                defaults.1,
                StaleFor::Reads,
            );
        };
        let span = grants.span();
        let raw::Grants {
            store,
            cache_ttl,
            max_stale,
            stale_for,
            redis,
        } = grants.into_inner();
        let cache_ttl = self.duration(main, &cache_ttl, "grants.cache_ttl", defaults.0, false);
        let max_stale = self.duration(main, &max_stale, "grants.max_stale", defaults.1, false);
        let stale_for = match stale_for {
            None => StaleFor::Reads,
            Some(s) => match s.get_ref().as_str() {
                "reads" => StaleFor::Reads,
                "all" => StaleFor::All,
                other => {
                    self.invalid_value(main, &s, "grants.stale_for", other, &["reads", "all"]);
                    StaleFor::Reads
                }
            },
        };
        let kind = match &store {
            None => Some((span.clone(), false)),
            Some(s) => match s.get_ref().as_str() {
                "file" => Some((s.span(), false)),
                "redis" => Some((s.span(), true)),
                other => {
                    self.invalid_value(main, s, "grants.store", other, &["file", "redis"]);
                    None
                }
            },
        };
        let kind = match (kind, redis) {
            (None, _) => None,
            (Some((_, false)), _) => Some(StoreKind::File),
            (Some((s, true)), None) => {
                self.err(
                    main,
                    s,
                    "grants.redis",
                    "`store = \"redis\"` needs a `[grants.redis]` section",
                    Some("add `[grants.redis]` with `url = \"redis://127.0.0.1:6379/0\"`".into()),
                );
                None
            }
            (Some((s, true)), Some(r)) => {
                self.check_redis(main, r).map(|settings| StoreKind::Redis {
                    span: s,
                    settings: Box::new(settings),
                })
            }
        };
        (kind, cache_ttl, max_stale, stale_for)
    }

    fn check_redis(&mut self, main: FileId, redis: S<raw::Redis>) -> Option<RedisSettings> {
        let rspan = redis.span();
        let raw::Redis {
            url,
            sentinels,
            master_name,
            db,
            prefix,
            username,
            password_env,
            connect_timeout,
            command_timeout,
            cache_capacity,
            client_tracking,
        } = redis.into_inner();
        let target = match (url, sentinels) {
            (Some(u), None) => {
                for (key, value) in [
                    ("master_name", master_name.as_ref().map(S::span)),
                    ("db", db.as_ref().map(S::span)),
                ] {
                    if let Some(span) = value {
                        self.err(
                            main,
                            span,
                            &format!("grants.redis.{key}"),
                            format!("`{key}` belongs to a Sentinel setup, but `url` is set"),
                            Some(if key == "db" {
                                "put the database in the URL (`redis://host:6379/2`) or use `sentinels`".into()
                            } else {
                                "remove it, or replace `url` with `sentinels = [\"host:26379\", ...]`".into()
                            }),
                        );
                    }
                }
                self.check_redis_url(main, u).map(RedisTarget::Url)
            }
            (Some(u), Some(list)) => {
                self.err(
                    main,
                    list.span(),
                    "grants.redis.sentinels",
                    format!(
                        "`url` (at {}) and `sentinels` are mutually exclusive",
                        self.src.location(main, &u.span())
                    ),
                    Some(
                        "keep `url` for one server, or `sentinels` + `master_name` to follow a Sentinel-managed master".into(),
                    ),
                );
                None
            }
            (None, Some(list)) => self
                .check_sentinels(main, rspan.clone(), list, master_name, db)
                .map(RedisTarget::Sentinel),
            (None, None) => {
                self.err(
                    main,
                    rspan.clone(),
                    "grants.redis.url",
                    "missing `url` (or `sentinels`) in `[grants.redis]`",
                    Some(
                        "add `url = \"redis://127.0.0.1:6379/0\"`, or `sentinels = [\"127.0.0.1:26379\"]` with `master_name = \"mymaster\"`".into(),
                    ),
                );
                None
            }
        };
        let prefix = match prefix {
            None => Some("authz".to_owned()),
            Some(p)
                if p.get_ref().is_empty()
                    || p.get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c == '{' || c == '}' || c == ':') =>
            {
                self.err(
                    main,
                    p.span(),
                    "grants.redis.prefix",
                    format!("invalid key prefix `{}`", p.get_ref()),
                    Some("use a non-empty name without spaces, `:` or braces, e.g. `authz`".into()),
                );
                None
            }
            Some(p) => Some(p.into_inner()),
        };
        let password = match password_env {
            None => Some(None),
            Some(name) => match std::env::var(name.get_ref()) {
                Ok(v) if !v.is_empty() => Some(Some(v)),
                _ => {
                    self.err(
                        main,
                        name.span(),
                        "grants.redis.password_env",
                        format!(
                            "environment variable `{}` is not set, empty or not UTF-8",
                            name.get_ref()
                        ),
                        Some(format!(
                            "export {}=... with the Redis password before starting Portcullis",
                            name.get_ref()
                        )),
                    );
                    None
                }
            },
        };
        let connect_timeout = self.duration(
            main,
            &connect_timeout,
            "grants.redis.connect_timeout",
            Duration::from_secs(1),
            true,
        );
        let command_timeout = self.duration(
            main,
            &command_timeout,
            "grants.redis.command_timeout",
            Duration::from_millis(250),
            true,
        );
        let cache_capacity = match cache_capacity {
            None => 100_000,
            Some(c) => match usize::try_from(*c.get_ref()) {
                Ok(n) if n > 0 => n,
                _ => {
                    self.err(
                        main,
                        c.span(),
                        "grants.redis.cache_capacity",
                        "`cache_capacity` must be a positive number of entries",
                        Some("e.g. `cache_capacity = 100000`".into()),
                    );
                    1
                }
            },
        };
        Some(RedisSettings {
            target: target?,
            prefix: prefix?,
            username: username.map(S::into_inner),
            password: password?,
            connect_timeout,
            command_timeout,
            cache_capacity,
            client_tracking: client_tracking.is_none_or(|t| *t.get_ref()),
        })
    }

    /// `[grants.redis] url`: one server.
    fn check_redis_url(&mut self, main: FileId, u: S<String>) -> Option<String> {
        let v = u.get_ref();
        let scheme_ok =
            v.starts_with("redis://") || v.starts_with("rediss://") || v.starts_with("unix://");
        if v.starts_with("redis+sentinel://") || v.starts_with("redis-sentinel://") {
            self.err(
                main,
                u.span(),
                "grants.redis.url",
                "Sentinel is configured with `sentinels` and `master_name`, not a URL",
                Some(
                    "replace `url` with e.g. `sentinels = [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]` and `master_name = \"mymaster\"`".into(),
                ),
            );
            None
        } else if v.starts_with("redis+cluster://") || v.starts_with("redis-cluster://") {
            self.err(
                main,
                u.span(),
                "grants.redis.url",
                "Redis Cluster is not supported",
                Some(
                    "the grant store needs one keyspace with pub/sub and client tracking: point `url` at a primary, or use Sentinel (`sentinels` + `master_name`)".into(),
                ),
            );
            None
        } else if scheme_ok && redis::Client::open(v.as_str()).is_ok() {
            Some(v.clone())
        } else {
            self.err(
                main,
                u.span(),
                "grants.redis.url",
                "invalid Redis URL (not shown: it may hold a password)",
                Some("write e.g. `redis://127.0.0.1:6379/0` (or `rediss://` for TLS)".into()),
            );
            None
        }
    }

    /// `[grants.redis] sentinels`, `master_name`, `db`: a master found through Sentinel.
    fn check_sentinels(
        &mut self,
        main: FileId,
        rspan: Range<usize>,
        list: S<StrList>,
        master_name: Option<S<String>>,
        db: Option<S<i64>>,
    ) -> Option<SentinelSettings> {
        let lspan = list.span();
        let entries = list.into_inner();
        let mut ok = true;
        if entries.is_empty() {
            self.err(
                main,
                lspan.clone(),
                "grants.redis.sentinels",
                "`sentinels` is empty",
                Some("list every sentinel, e.g. `sentinels = [\"10.0.0.1:26379\", \"10.0.0.2:26379\", \"10.0.0.3:26379\"]`".into()),
            );
            ok = false;
        }
        let mut sentinels = Vec::with_capacity(entries.len());
        let mut schemes = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let v = e.get_ref();
            let url = if v.contains("://") {
                v.clone()
            } else {
                format!("redis://{v}")
            };
            let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
            let parsed = scheme_ok
                .then(|| redis::IntoConnectionInfo::into_connection_info(url.as_str()).ok())
                .flatten();
            match parsed {
                Some(info) if info.redis_settings().db() == 0 => {
                    schemes.push(url.starts_with("rediss://"));
                    sentinels.push(url);
                }
                Some(_) => {
                    self.err(
                        main,
                        e.span(),
                        &format!("grants.redis.sentinels[{i}]"),
                        "a sentinel address names no database",
                        Some("set the master's database with `db = N`".into()),
                    );
                    ok = false;
                }
                None => {
                    self.err(
                        main,
                        e.span(),
                        &format!("grants.redis.sentinels[{i}]"),
                        "invalid sentinel address (not shown: it may hold a password)",
                        Some(
                            "write `host:port` (e.g. `10.0.0.1:26379`), or `redis://` / `rediss://` URLs for sentinels with a password or TLS".into(),
                        ),
                    );
                    ok = false;
                }
            }
        }
        if schemes.iter().any(|&t| t) && schemes.iter().any(|&t| !t) {
            self.err(
                main,
                lspan,
                "grants.redis.sentinels",
                "some sentinels use TLS (`rediss://`) and some do not",
                Some("use `rediss://` for all of them or for none".into()),
            );
            ok = false;
        }
        let master_name = match master_name {
            Some(m)
                if !m.get_ref().is_empty()
                    && !m
                        .get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Some(m.into_inner())
            }
            Some(m) => {
                self.err(
                    main,
                    m.span(),
                    "grants.redis.master_name",
                    "invalid master name",
                    Some("use the name from `sentinel monitor <name> ...`, e.g. `mymaster`".into()),
                );
                None
            }
            None => {
                self.err(
                    main,
                    rspan,
                    "grants.redis.master_name",
                    "`sentinels` needs `master_name`",
                    Some("add the name from `sentinel monitor <name> ...`, e.g. `master_name = \"mymaster\"`".into()),
                );
                None
            }
        };
        let db = match db {
            None => Some(0),
            Some(d) if *d.get_ref() >= 0 => Some(*d.get_ref()),
            Some(d) => {
                self.err(
                    main,
                    d.span(),
                    "grants.redis.db",
                    "`db` must be a database number (0 or more)",
                    Some("e.g. `db = 0`".into()),
                );
                None
            }
        };
        let tls = schemes.first().copied().unwrap_or(false);
        if !ok {
            return None;
        }
        Some(SentinelSettings {
            sentinels,
            master_name: master_name?,
            db: db?,
            tls,
        })
    }

    fn invalid_value(
        &mut self,
        file: FileId,
        v: &S<String>,
        key: &str,
        value: &str,
        valid: &[&str],
    ) {
        let help = did_you_mean(value, valid.iter().copied())
            .unwrap_or_else(|| format!("valid values: {}", backticked(valid.iter().copied())));
        self.err(
            file,
            v.span(),
            key,
            format!(
                "invalid `{}` value `{value}`; expected {}",
                key_leaf(key),
                backticked(valid.iter().copied())
            ),
            Some(help),
        );
    }

    // --- [policy] ---

    fn check_policy_section(
        &mut self,
        main: FileId,
        policy: Option<S<raw::Policy>>,
    ) -> (Option<Mode>, char, u16) {
        let Some(policy) = policy else {
            return (Some(Mode::Enforce), '.', 404);
        };
        let raw::Policy {
            default,
            mode,
            separator,
            unmatched_status,
        } = policy.into_inner();
        if let Some(d) = default
            && d.get_ref() != "deny"
        {
            self.err(
                main,
                d.span(),
                "policy.default",
                format!("invalid `default` value `{}`; expected `deny`", d.get_ref()),
                Some("only `deny` is supported: unmatched routes are always denied".into()),
            );
        }
        let mode = match mode {
            None => Some(Mode::Enforce),
            Some(m) => self.mode(main, &m, "policy.mode"),
        };
        let separator = match separator {
            None => '.',
            Some(s) => {
                let mut chars = s.get_ref().chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c != '*' && !c.is_whitespace() => c,
                    (Some('*'), None) => {
                        self.err(
                            main,
                            s.span(),
                            "policy.separator",
                            "`*` cannot be the separator",
                            Some("`*` is the wildcard; use e.g. `.`, `:` or `_`".into()),
                        );
                        '.'
                    }
                    _ => {
                        self.err(
                            main,
                            s.span(),
                            "policy.separator",
                            format!(
                                "`separator` must be exactly one character, got `{}`",
                                s.get_ref()
                            ),
                            Some("write e.g. `separator = \".\"`, `\":\"` or `\"_\"`".into()),
                        );
                        '.'
                    }
                }
            }
        };
        let unmatched = match unmatched_status {
            None => 404,
            Some(s) => match *s.get_ref() {
                404 => 404,
                403 => 403,
                other => {
                    self.err(
                        main,
                        s.span(),
                        "policy.unmatched_status",
                        format!("invalid `unmatched_status` `{other}`; expected `404` or `403`"),
                        None,
                    );
                    404
                }
            },
        };
        (mode, separator, unmatched)
    }

    fn mode(&mut self, file: FileId, m: &S<String>, key: &str) -> Option<Mode> {
        match m.get_ref().as_str() {
            "enforce" => Some(Mode::Enforce),
            "monitor" => Some(Mode::Monitor),
            other => {
                self.invalid_value(file, m, key, other, &["enforce", "monitor"]);
                None
            }
        }
    }

    // --- [headers] ---

    fn check_headers(&mut self, main: FileId, headers: Option<S<raw::Headers>>) -> HeaderNames {
        let (subject, tenant, roles, scope, request_id) = match headers {
            None => (None, None, None, None, None),
            Some(h) => {
                let raw::Headers {
                    subject,
                    tenant,
                    roles,
                    scope,
                    request_id,
                } = h.into_inner();
                (subject, tenant, roles, scope, request_id)
            }
        };
        let mut seen: HashMap<String, (String, Range<usize>)> = HashMap::new();
        let mut one = |ctx: &mut Self, v: Option<S<String>>, field: &str, default: &'static str| {
            let key = format!("headers.{field}");
            let Some(v) = v else {
                return HeaderName::from_static(default);
            };
            let Some(name) = ctx.header_name(main, &v, v.get_ref(), &key) else {
                return HeaderName::from_static(default);
            };
            if let Some((other, span)) = seen.get(name.as_str()) {
                let at = ctx.src.location(main, span);
                ctx.err(
                    main,
                    v.span(),
                    &key,
                    format!("header `{name}` is already used for `{other}` (at {at})"),
                    Some("each identity header needs its own name".into()),
                );
            } else {
                seen.insert(name.as_str().to_owned(), (field.to_owned(), v.span()));
            }
            name
        };
        HeaderNames {
            subject: one(self, subject, "subject", "x-authz-subject"),
            tenant: one(self, tenant, "tenant", "x-authz-tenant"),
            roles: one(self, roles, "roles", "x-authz-roles"),
            scope: one(self, scope, "scope", "x-authz-scope"),
            request_id: one(self, request_id, "request_id", "x-request-id"),
        }
    }

    /// Validate a lower-case header name (`name` may be a suffix of `v`, as in `header:NAME`).
    fn header_name(
        &mut self,
        file: FileId,
        v: &S<String>,
        name: &str,
        key: &str,
    ) -> Option<HeaderName> {
        let lower = name.to_ascii_lowercase();
        if name != lower && HeaderName::from_bytes(lower.as_bytes()).is_ok() {
            self.err(
                file,
                v.span(),
                key,
                format!("header name `{name}` must be lower-case"),
                Some(format!("write `{lower}`")),
            );
            return None;
        }
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => {
                self.err(
                    file,
                    v.span(),
                    key,
                    format!("header `{name}` is reserved"),
                    Some("pick a dedicated name such as `x-authz-subject`".into()),
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                self.err(
                    file,
                    v.span(),
                    key,
                    format!("invalid header name `{name}`"),
                    Some("use lower-case letters, digits and `-`, e.g. `x-tenant-id`".into()),
                );
                None
            }
        }
    }

    // --- [roles.*], [aliases] ---

    fn check_roles(
        &mut self,
        files: Vec<(FileId, Map<S<raw::Role>>)>,
        def: &mut PolicyDef,
    ) -> HashMap<String, RoleSpans> {
        let mut spans: HashMap<String, RoleSpans> = HashMap::new();
        for (file, roles) in files {
            for (name, role) in roles.0 {
                let key = format!("roles.{}", name.get_ref());
                if let Some(first) = spans.get(name.get_ref()) {
                    let at = self.src.location(first.file, &first.name);
                    self.err(
                        file,
                        name.span(),
                        &key,
                        format!("role `{}` is defined twice (first at {at})", name.get_ref()),
                        Some("merge the two definitions".into()),
                    );
                    continue;
                }
                if !valid_name(name.get_ref()) {
                    self.err(
                        file,
                        name.span(),
                        &key,
                        format!("invalid role name `{}`", name.get_ref()),
                        Some("use letters, digits, `_` and `-`".into()),
                    );
                }
                let raw::Role {
                    permissions,
                    own,
                    inherits,
                    level,
                    all_scopes,
                } = role.into_inner();
                let (permissions, p_spans) = split_list(permissions);
                let (own, o_spans) = split_list(own);
                let (inherits, i_spans) = split_list(inherits);
                spans.insert(
                    name.get_ref().clone(),
                    RoleSpans {
                        file,
                        name: name.span(),
                        permissions: p_spans,
                        own: o_spans,
                        inherits: i_spans,
                    },
                );
                def.roles.push(RoleDef {
                    name: name.into_inner(),
                    permissions,
                    own,
                    inherits,
                    level: level.map(S::into_inner),
                    all_scopes: all_scopes.is_some_and(S::into_inner),
                });
            }
        }
        spans
    }

    fn check_aliases(
        &mut self,
        files: Vec<(FileId, Map<S<String>>)>,
        roles: &HashMap<String, RoleSpans>,
        def: &mut PolicyDef,
    ) -> HashMap<String, (FileId, Range<usize>)> {
        let mut spans: HashMap<String, (FileId, Range<usize>)> = HashMap::new();
        let role_names: Vec<&str> = roles.keys().map(String::as_str).collect();
        for (file, aliases) in files {
            for (alias, target) in aliases.0 {
                let key = format!("aliases.{}", alias.get_ref());
                let whole = alias.span().start..target.span().end;
                if let Some((f, first)) = spans.get(alias.get_ref()) {
                    let at = self.src.location(*f, first);
                    self.err(
                        file,
                        alias.span(),
                        &key,
                        format!(
                            "alias `{}` is defined twice (first at {at})",
                            alias.get_ref()
                        ),
                        None,
                    );
                    continue;
                }
                if let Some(role) = roles.get(alias.get_ref()) {
                    let at = self.src.location(role.file, &role.name);
                    self.err(
                        file,
                        alias.span(),
                        &key,
                        format!(
                            "alias `{}` has the same name as a role (defined at {at})",
                            alias.get_ref()
                        ),
                        Some("rename the alias or the role".into()),
                    );
                } else if !roles.contains_key(target.get_ref()) {
                    let help = did_you_mean(target.get_ref(), role_names.iter().copied())
                        .unwrap_or_else(|| {
                            if role_names.is_empty() {
                                "no roles are defined".to_owned()
                            } else {
                                let mut names = role_names.clone();
                                names.sort_unstable();
                                format!("defined roles: {}", backticked(names))
                            }
                        });
                    self.err(
                        file,
                        target.span(),
                        &key,
                        format!(
                            "alias `{}` names unknown role `{}`",
                            alias.get_ref(),
                            target.get_ref()
                        ),
                        Some(help),
                    );
                }
                spans.insert(alias.get_ref().clone(), (file, whole));
                def.aliases.push((alias.into_inner(), target.into_inner()));
            }
        }
        spans
    }

    // --- [entitlements] ---

    fn check_entitlements(
        &mut self,
        main: FileId,
        ent: Option<S<raw::Entitlements>>,
        def: &mut PolicyDef,
    ) -> EntitlementSpans {
        let mut spans = EntitlementSpans::default();
        let Some(ent) = ent else { return spans };
        let raw::Entitlements {
            tiers,
            require_tier,
            require_feature,
            mfa,
        } = ent.into_inner();
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        for (i, tier) in tiers.into_iter().flatten().enumerate() {
            let key = format!("entitlements.tiers[{i}]");
            if !valid_name(tier.get_ref()) {
                self.err(
                    main,
                    tier.span(),
                    &key,
                    format!("invalid tier name `{}`", tier.get_ref()),
                    Some("use letters, digits, `_` and `-`".into()),
                );
            } else if let Some(first) = seen.get(tier.get_ref()) {
                let at = self.src.location(main, first);
                self.err(
                    main,
                    tier.span(),
                    &key,
                    format!("tier `{}` is listed twice (first at {at})", tier.get_ref()),
                    None,
                );
            } else {
                seen.insert(tier.get_ref().clone(), tier.span());
                def.tiers.push(tier.into_inner());
            }
        }
        for (i, (pattern, tier)) in require_tier.0.into_iter().enumerate() {
            if !def.tiers.contains(tier.get_ref()) {
                let help = did_you_mean(tier.get_ref(), def.tiers.iter().map(String::as_str)).unwrap_or_else(|| {
                    if def.tiers.is_empty() {
                        "declare the tiers first: `tiers = [\"starter\", \"growth\"]` in `[entitlements]`".into()
                    } else {
                        format!("declared tiers: {}", backticked(def.tiers.iter().map(String::as_str)))
                    }
                });
                self.err(
                    main,
                    tier.span(),
                    &format!("entitlements.require_tier.\"{}\"", pattern.get_ref()),
                    format!("unknown tier `{}`", tier.get_ref()),
                    Some(help),
                );
            }
            let _ = i;
            spans
                .require_tier
                .push(pattern.span().start..tier.span().end);
            def.require_tier
                .push((pattern.into_inner(), tier.into_inner()));
        }
        for (pattern, feature) in require_feature.0 {
            if !valid_name(feature.get_ref()) {
                self.err(
                    main,
                    feature.span(),
                    &format!("entitlements.require_feature.\"{}\"", pattern.get_ref()),
                    format!("invalid feature name `{}`", feature.get_ref()),
                    Some("use letters, digits, `_` and `-`".into()),
                );
            }
            spans
                .require_feature
                .push(pattern.span().start..feature.span().end);
            def.require_feature
                .push((pattern.into_inner(), feature.into_inner()));
        }
        if let Some(mfa) = mfa {
            let raw::Mfa { require } = mfa.into_inner();
            for p in require.into_iter().flatten() {
                spans.mfa.push(p.span());
                def.mfa.push(p.into_inner());
            }
        }
        spans
    }

    // --- [[routes]] ---

    fn check_routes(
        &mut self,
        routes: &[(FileId, S<raw::Route>)],
        upstreams: &[String],
        def: &mut PolicyDef,
        perm_spans: &mut Vec<At>,
    ) -> (Vec<Option<RoutePlan>>, RouteTableBuilder) {
        let mut table = RouteTableBuilder::new();
        // Per route: where its path is and how to name it, for conflict messages.
        let mut names: Vec<(FileId, Range<usize>, String)> = Vec::new();
        let mut plans = Vec::new();
        let mut file_index: HashMap<FileId, usize> = HashMap::new();
        for (id, (file, route)) in routes.iter().enumerate() {
            let n = file_index.entry(*file).or_insert(0);
            let key = format!("routes[{n}]");
            *n += 1;
            let (plan, name) = self.check_route(*file, route, &key, upstreams, def, perm_spans);
            names.push(name.clone());
            if let Some(plan) = &plan {
                for method in &plan.methods {
                    match table.insert(method, &plan.path, id) {
                        Ok(()) => {}
                        Err(RouteConflict::Conflict { existing, .. }) if existing == id => {
                            self.err(
                                name.0,
                                name.1.clone(),
                                &format!("{key}.methods"),
                                format!("method `{method}` is listed twice in route `{}`", name.2),
                                Some("remove the duplicate".into()),
                            );
                        }
                        Err(RouteConflict::Conflict { existing, message }) => {
                            let (efile, espan, ename) =
                                names.get(existing).cloned().unwrap_or_else(|| name.clone());
                            let here = self.src.location(name.0, &name.1);
                            let there = self.src.location(efile, &espan);
                            let same = ename_path(&ename) == plan.path;
                            let what = if same {
                                "duplicate route"
                            } else {
                                "conflicting route"
                            };
                            let detail = if same {
                                String::new()
                            } else {
                                format!(" ({})", lower_first(&message))
                            };
                            self.err(
                                name.0,
                                name.1.clone(),
                                &format!("{key}.path"),
                                format!("{what} `{method} {}`: already declared by route `{ename}` at {there}{detail}", plan.path),
                                Some(if same { "remove one of the two routes or give them different methods".into() } else { "make the paths distinguishable, e.g. both with the same parameter name".into() }),
                            );
                            self.err(
                                efile,
                                espan,
                                &format!("{key}.path"),
                                format!(
                                    "{what} `{method} {}`: declared again by route `{}` at {here}",
                                    ename_path(&ename),
                                    name.2
                                ),
                                None,
                            );
                        }
                        Err(RouteConflict::Invalid(message)) => {
                            self.err(
                                name.0,
                                name.1.clone(),
                                &format!("{key}.path"),
                                format!(
                                    "invalid route path `{}`: {}",
                                    plan.path,
                                    lower_first(&message)
                                ),
                                None,
                            );
                        }
                    }
                }
            }
            plans.push(plan);
        }
        (plans, table)
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one check per route key, in key order"
    )]
    fn check_route(
        &mut self,
        file: FileId,
        route: &S<raw::Route>,
        key: &str,
        upstreams: &[String],
        def: &mut PolicyDef,
        perm_spans: &mut Vec<At>,
    ) -> (Option<RoutePlan>, (FileId, Range<usize>, String)) {
        let span = route.span();
        let raw::Route {
            methods,
            path,
            permission,
            any_of,
            all_of,
            public,
            upstream,
            owner,
            scope,
            mfa,
            mode,
            deny_status,
            websocket,
            websocket_max_lifetime,
        } = route.get_ref();
        let errors_before = self.errors.len();

        let mut method_list = Vec::new();
        match methods {
            None => self.err(
                file,
                span.clone(),
                &format!("{key}.methods"),
                "route has no `methods`",
                Some("add e.g. `methods = [\"GET\"]`".into()),
            ),
            Some(m) if m.get_ref().is_empty() => self.err(
                file,
                m.span(),
                &format!("{key}.methods"),
                "`methods` is empty",
                Some("list at least one method, e.g. `[\"GET\"]`".into()),
            ),
            Some(m) => {
                for (i, method) in m.get_ref().iter().enumerate() {
                    if let Some(m) = self.method(file, method, &format!("{key}.methods[{i}]")) {
                        method_list.push(m);
                    }
                }
            }
        }
        let methods_text = if method_list.is_empty() {
            methods.as_ref().map_or_else(String::new, |m| {
                m.get_ref()
                    .iter()
                    .map(|s| s.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        } else {
            method_list
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };

        let mut params = Vec::new();
        let path_ok = match path {
            None => {
                self.err(
                    file,
                    span.clone(),
                    &format!("{key}.path"),
                    "route has no `path`",
                    Some("add e.g. `path = \"/api/items/{id}\"`".into()),
                );
                false
            }
            Some(p) => match route_params(p.get_ref()) {
                Ok(ps) => {
                    params = ps;
                    true
                }
                Err((message, help)) => {
                    self.err(file, p.span(), &format!("{key}.path"), message, help);
                    false
                }
            },
        };
        let path_text = path
            .as_ref()
            .map_or_else(String::new, |p| p.get_ref().clone());
        let name = format!("{methods_text} {path_text}");
        let name_at = (
            file,
            path.as_ref().map_or(span.clone(), |p| p.span()),
            name.clone(),
        );

        // Exactly one requirement.
        let mut given: Vec<(&str, Range<usize>)> = Vec::new();
        if let Some(p) = permission {
            given.push(("permission", p.span()));
        }
        if let Some(p) = any_of {
            given.push(("any_of", p.span()));
        }
        if let Some(p) = all_of {
            given.push(("all_of", p.span()));
        }
        if let Some(p) = public
            && *p.get_ref()
        {
            given.push(("public", p.span()));
        }
        let mut requirement = None;
        match given.as_slice() {
            [] => self.err(
                file,
                span.clone(),
                key,
                format!("route `{name}` has no requirement"),
                Some("add one of `permission = \"...\"`, `any_of = [...]`, `all_of = [...]` or `public = true`".into()),
            ),
            [(first, _), (second, second_span), ..] => self.err(
                file,
                second_span.clone(),
                &format!("{key}.{second}"),
                format!("route `{name}` sets both `{first}` and `{second}`"),
                Some("a route has exactly one of `permission`, `any_of`, `all_of` or `public = true`".into()),
            ),
            [(which, _)] => {
                requirement = match *which {
                    "public" => Some(ReqPlan::Public),
                    "permission" => permission.as_ref().and_then(|p| {
                        self.route_permission(file, p, &format!("{key}.permission"), &name, def, perm_spans).map(ReqPlan::Permission)
                    }),
                    "any_of" => any_of.as_ref().and_then(|l| self.route_permission_list(file, l, &format!("{key}.any_of"), &name, def, perm_spans)).map(ReqPlan::AnyOf),
                    _ => all_of.as_ref().and_then(|l| self.route_permission_list(file, l, &format!("{key}.all_of"), &name, def, perm_spans)).map(ReqPlan::AllOf),
                };
            }
        }
        let is_public = matches!(requirement, Some(ReqPlan::Public));

        let upstream_idx = match upstream {
            None => {
                self.err(
                    file,
                    span.clone(),
                    &format!("{key}.upstream"),
                    format!("route `{name}` has no `upstream`"),
                    Some(upstream_help(None, upstreams)),
                );
                None
            }
            Some(u) => match upstreams.iter().position(|n| n == u.get_ref()) {
                Some(i) => Some(i),
                None => {
                    self.err(
                        file,
                        u.span(),
                        &format!("{key}.upstream"),
                        format!("unknown upstream `{}` in route `{name}`", u.get_ref()),
                        Some(upstream_help(Some(u.get_ref()), upstreams)),
                    );
                    None
                }
            },
        };

        let param_of = |ctx: &mut Self, v: &Option<S<String>>, field: &str| -> Option<String> {
            let v = v.as_ref()?;
            let fkey = format!("{key}.{field}");
            if is_public {
                ctx.err(
                    file,
                    v.span(),
                    &fkey,
                    format!("public route `{name}` cannot have `{field}`"),
                    Some(format!(
                        "public routes check no identity; remove `{field}` or `public = true`"
                    )),
                );
                return None;
            }
            let listed = if params.is_empty() {
                format!("the path `{path_text}` has no parameters")
            } else {
                format!(
                    "parameters of `{path_text}`: {}",
                    backticked(params.iter().map(|p| p.as_str()))
                )
            };
            let Some(inner) = v
                .get_ref()
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
            else {
                let help = if params.iter().any(|p| p == v.get_ref()) {
                    format!("write `{field} = \"{{{}}}\"`", v.get_ref())
                } else {
                    listed
                };
                ctx.err(
                    file,
                    v.span(),
                    &fkey,
                    format!(
                        "`{field}` must name a path parameter as `\"{{param}}\"`, got `{}`",
                        v.get_ref()
                    ),
                    Some(help),
                );
                return None;
            };
            if !path_ok {
                return None;
            }
            if params.iter().any(|p| p == inner) {
                Some(inner.to_owned())
            } else {
                let help = did_you_mean(inner, params.iter().map(String::as_str)).unwrap_or(listed);
                ctx.err(
                    file,
                    v.span(),
                    &fkey,
                    format!(
                        "`{field}` names `{{{inner}}}`, which is not a parameter of `{path_text}`"
                    ),
                    Some(help),
                );
                None
            }
        };
        let owner_param = param_of(self, owner, "owner");
        let scope_param = param_of(self, scope, "scope");
        if let Some(m) = mfa
            && *m.get_ref()
            && is_public
        {
            self.err(
                file,
                m.span(),
                &format!("{key}.mfa"),
                format!("public route `{name}` cannot require MFA"),
                Some("public routes check no identity; remove `mfa` or `public = true`".into()),
            );
        }
        let mode = match mode {
            None => None,
            Some(m) => self.mode(file, m, &format!("{key}.mode")),
        };
        let deny_status = match deny_status {
            None => None,
            Some(s) => match *s.get_ref() {
                403 => Some(403),
                404 => Some(404),
                other => {
                    self.err(file, s.span(), &format!("{key}.deny_status"), format!("invalid `deny_status` `{other}`; expected `403` or `404`"), Some("`404` hides that the resource exists; the audit event keeps the real reason".into()));
                    None
                }
            },
        };

        let websocket_on = websocket.as_ref().is_some_and(|w| *w.get_ref());
        if let Some(w) = websocket
            && websocket_on
            && !method_list.contains(&Method::GET)
        {
            self.err(
                file,
                w.span(),
                &format!("{key}.websocket"),
                format!("websocket route `{name}` does not allow `GET`"),
                Some("a WebSocket handshake is a `GET`; add it to `methods`".into()),
            );
        }
        let websocket_max_lifetime = match websocket_max_lifetime {
            Some(l) if !websocket_on => {
                self.err(
                    file,
                    l.span(),
                    &format!("{key}.websocket_max_lifetime"),
                    format!(
                        "`websocket_max_lifetime` on route `{name}`, which is not a websocket route"
                    ),
                    Some("add `websocket = true`, or remove the key".into()),
                );
                None
            }
            Some(_) => Some(self.duration(
                file,
                websocket_max_lifetime,
                &format!("{key}.websocket_max_lifetime"),
                Duration::from_secs(3600),
                true,
            )),
            None => None,
        };

        if self.errors.len() > errors_before || !path_ok {
            return (None, name_at);
        }
        let plan = match (requirement, upstream_idx) {
            (Some(requirement), Some(upstream)) => Some(RoutePlan {
                file,
                path: path_text,
                methods: method_list,
                requirement,
                upstream,
                owner_param,
                scope_param,
                mfa: mfa.as_ref().is_some_and(|m| *m.get_ref()),
                mode,
                deny_status,
                websocket: websocket_on,
                websocket_max_lifetime,
            }),
            _ => None,
        };
        (plan, name_at)
    }

    fn method(&mut self, file: FileId, m: &S<String>, key: &str) -> Option<Method> {
        let text = m.get_ref();
        let upper = text.to_ascii_uppercase();
        if text != &upper && Method::from_bytes(upper.as_bytes()).is_ok() {
            self.err(
                file,
                m.span(),
                key,
                format!("method `{text}` must be upper-case"),
                Some(format!("write `{upper}`")),
            );
            return None;
        }
        match Method::from_bytes(text.as_bytes()) {
            Ok(method) if STANDARD_METHODS.contains(&text.as_str()) => Some(method),
            Ok(method) => match did_you_mean(text, STANDARD_METHODS.iter().copied()) {
                // An extension method one typo away from a standard one is almost surely a typo.
                Some(help) => {
                    self.err(
                        file,
                        m.span(),
                        key,
                        format!("unknown method `{text}`"),
                        Some(help),
                    );
                    None
                }
                None => Some(method),
            },
            Err(_) => {
                self.err(
                    file,
                    m.span(),
                    key,
                    format!("invalid method `{text}`"),
                    Some(format!(
                        "valid methods: {}",
                        backticked(STANDARD_METHODS.iter().copied())
                    )),
                );
                None
            }
        }
    }

    fn route_permission(
        &mut self,
        file: FileId,
        p: &S<String>,
        key: &str,
        route: &str,
        def: &mut PolicyDef,
        perm_spans: &mut Vec<At>,
    ) -> Option<String> {
        let text = p.get_ref();
        if text.trim().is_empty() {
            self.err(
                file,
                p.span(),
                key,
                format!("empty permission in route `{route}`"),
                Some("write the permission the route requires, e.g. `orders.view`".into()),
            );
            return None;
        }
        if text.contains('*') {
            self.err(
                file,
                p.span(),
                key,
                format!(
                    "route `{route}` requires `{text}`, a pattern; route permissions are concrete"
                ),
                Some(
                    "name the exact permission, e.g. `orders.view`; wildcards belong in roles"
                        .into(),
                ),
            );
            return None;
        }
        def.route_permissions.push(text.clone());
        perm_spans.push((file, p.span(), key.to_owned()));
        Some(text.clone())
    }

    fn route_permission_list(
        &mut self,
        file: FileId,
        list: &S<StrList>,
        key: &str,
        route: &str,
        def: &mut PolicyDef,
        perm_spans: &mut Vec<At>,
    ) -> Option<Vec<String>> {
        if list.get_ref().is_empty() {
            self.err(
                file,
                list.span(),
                key,
                format!("`{}` of route `{route}` is empty", key_leaf(key)),
                Some("list at least one permission".into()),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, p) in list.get_ref().iter().enumerate() {
            match self.route_permission(file, p, &format!("{key}[{i}]"), route, def, perm_spans) {
                Some(p) => out.push(p),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn compile_routes(
        &mut self,
        policy: &Policy,
        plans: Vec<Option<RoutePlan>>,
        mode: Mode,
    ) -> Vec<RouteEntry> {
        let mut out = Vec::new();
        for plan in plans.into_iter().flatten() {
            let RoutePlan {
                file,
                path,
                methods,
                requirement,
                upstream,
                owner_param,
                scope_param,
                mfa,
                mode: route_mode,
                deny_status,
                websocket,
                websocket_max_lifetime,
            } = plan;
            let mut missing = None;
            let mut id = |name: &str| {
                let found = policy.permission_id(name);
                if found.is_none() {
                    missing = Some(name.to_owned());
                }
                found
            };
            let requirement = match requirement {
                ReqPlan::Public => Some(Requirement::Public),
                ReqPlan::Permission(p) => id(&p).map(Requirement::Permission),
                ReqPlan::AnyOf(ps) => ps
                    .iter()
                    .map(|p| id(p))
                    .collect::<Option<Box<[_]>>>()
                    .map(Requirement::AnyOf),
                ReqPlan::AllOf(ps) => ps
                    .iter()
                    .map(|p| id(p))
                    .collect::<Option<Box<[_]>>>()
                    .map(Requirement::AllOf),
            };
            let Some(requirement) = requirement else {
                let message = format!(
                    "internal error: permission `{}` of route `{path}` is not in the compiled policy",
                    missing.unwrap_or_default()
                );
                self.errors
                    .push(self.src.error(file, None, "routes", message, None));
                continue;
            };
            let name = |id: &crate::policy::PermId| policy.permission_name(*id).to_owned();
            let required: Arc<[String]> = match &requirement {
                Requirement::Public => Arc::default(),
                Requirement::Permission(id) => Arc::from([name(id)]),
                Requirement::AnyOf(ids) | Requirement::AllOf(ids) => ids.iter().map(name).collect(),
            };
            out.push(RouteEntry {
                path,
                methods,
                rule: Rule {
                    requirement,
                    has_owner: owner_param.is_some(),
                    has_scope: scope_param.is_some(),
                    mfa,
                    mode: route_mode.unwrap_or(mode),
                },
                upstream,
                owner_param,
                scope_param,
                deny_status,
                websocket,
                websocket_max_lifetime,
                required,
            });
        }
        out
    }

    // --- [tenants.*], [[assignments]] (file store) ---

    fn check_tenants(
        &mut self,
        main: FileId,
        tenants: &Map<S<raw::Tenant>>,
        tiers: &[String],
    ) -> Vec<TenantPlan> {
        let mut out = Vec::new();
        for (name, tenant) in &tenants.0 {
            let key = format!("tenants.{}", name.get_ref());
            let raw::Tenant {
                tier,
                features,
                roles,
            } = tenant.get_ref();
            if let Some(t) = tier
                && !tiers.contains(t.get_ref())
            {
                let help = did_you_mean(t.get_ref(), tiers.iter().map(String::as_str))
                    .unwrap_or_else(|| {
                        if tiers.is_empty() {
                            "declare tiers in `[entitlements] tiers = [...]`".into()
                        } else {
                            format!(
                                "declared tiers: {}",
                                backticked(tiers.iter().map(String::as_str))
                            )
                        }
                    });
                self.err(
                    main,
                    t.span(),
                    &format!("{key}.tier"),
                    format!(
                        "unknown tier `{}` for tenant `{}`",
                        t.get_ref(),
                        name.get_ref()
                    ),
                    Some(help),
                );
            }
            let mut feature_list = Vec::new();
            for (i, f) in features.iter().flat_map(|f| f.get_ref().iter()).enumerate() {
                if valid_name(f.get_ref()) {
                    feature_list.push(f.get_ref().clone());
                } else {
                    self.err(
                        main,
                        f.span(),
                        &format!("{key}.features[{i}]"),
                        format!("invalid feature name `{}`", f.get_ref()),
                        Some("use letters, digits, `_` and `-`".into()),
                    );
                }
            }
            let mut custom = Vec::new();
            let mut role_spans = HashMap::new();
            for (rname, role) in roles.iter().flat_map(|r| r.get_ref().0.iter()) {
                let raw::TenantRole {
                    permissions,
                    own,
                    inherits,
                } = role.get_ref();
                let spans_of =
                    |l: &Option<StrList>| l.iter().flatten().map(S::span).collect::<Vec<_>>();
                let strs_of = |l: &Option<StrList>| {
                    l.iter()
                        .flatten()
                        .map(|s| s.get_ref().clone())
                        .collect::<Vec<_>>()
                };
                role_spans.insert(
                    rname.get_ref().clone(),
                    RoleSpans {
                        file: main,
                        name: rname.span(),
                        permissions: spans_of(permissions),
                        own: spans_of(own),
                        inherits: spans_of(inherits),
                    },
                );
                custom.push(RoleDef {
                    name: rname.get_ref().clone(),
                    permissions: strs_of(permissions),
                    own: strs_of(own),
                    inherits: strs_of(inherits),
                    level: None,
                    all_scopes: false,
                });
            }
            out.push(TenantPlan {
                name: name.get_ref().clone(),
                key_span: name.span(),
                tier_span: tier.as_ref().map(S::span),
                features_span: features.as_ref().map(S::span),
                roles_span: roles.as_ref().map(S::span),
                role_spans,
                data: TenantData {
                    tier: tier.as_ref().map(|t| t.get_ref().clone()),
                    features: feature_list,
                    custom_roles: custom,
                },
            });
        }
        out
    }

    fn check_assignments(
        &mut self,
        main: FileId,
        assignments: &[S<raw::Assignment>],
    ) -> Vec<AssignmentPlan> {
        let mut out = Vec::new();
        let mut seen: HashMap<(String, String), Range<usize>> = HashMap::new();
        for (i, a) in assignments.iter().enumerate() {
            let key = format!("assignments[{i}]");
            let raw::Assignment {
                tenant,
                subject,
                roles,
                grant,
                deny,
                scopes,
            } = a.get_ref();
            let mut ok = true;
            for (v, field) in [(tenant, "tenant"), (subject, "subject")] {
                match v {
                    None => {
                        self.err(
                            main,
                            a.span(),
                            &format!("{key}.{field}"),
                            format!("assignment has no `{field}`"),
                            Some(format!("add `{field} = \"...\"`")),
                        );
                        ok = false;
                    }
                    Some(v) if v.get_ref().trim().is_empty() => {
                        self.err(
                            main,
                            v.span(),
                            &format!("{key}.{field}"),
                            format!("`{field}` is empty"),
                            None,
                        );
                        ok = false;
                    }
                    Some(_) => {}
                }
            }
            if roles.is_none() {
                self.err(
                    main,
                    a.span(),
                    &format!("{key}.roles"),
                    "assignment has no `roles`",
                    Some("add `roles = [\"viewer\"]` (or `roles = []` with `grant`)".into()),
                );
                ok = false;
            }
            let (Some(tenant), Some(subject), Some(roles), true) = (tenant, subject, roles, ok)
            else {
                continue;
            };
            let pair = (tenant.get_ref().clone(), subject.get_ref().clone());
            if let Some(first) = seen.get(&pair) {
                let at = self.src.location(main, first);
                self.err(
                    main,
                    subject.span(),
                    &format!("{key}.subject"),
                    format!(
                        "subject `{}` of tenant `{}` is assigned twice (first at {at})",
                        pair.1, pair.0
                    ),
                    Some("merge the two assignments".into()),
                );
                continue;
            }
            seen.insert(pair.clone(), subject.span());
            let (grant, grant_spans) = split_list(grant.clone());
            let (deny, deny_spans) = split_list(deny.clone());
            let (scope_list, scope_spans) = split_list(scopes.clone());
            out.push(AssignmentPlan {
                key,
                tenant: pair.0.clone(),
                subject: pair.1.clone(),
                span: a.span(),
                roles: roles.get_ref().iter().map(S::span).collect(),
                grant: grant_spans,
                deny: deny_spans,
                scopes: scope_spans,
                data: SubjectData {
                    roles: roles
                        .get_ref()
                        .iter()
                        .map(|r| r.get_ref().clone())
                        .collect(),
                    grant,
                    deny,
                    scopes: scope_list,
                },
            });
        }
        out
    }

    fn compile_store(
        &mut self,
        policy: &Policy,
        tenants: &[TenantPlan],
        assignments: &[AssignmentPlan],
        before_policy: usize,
    ) -> FileStoreData {
        let main = 0;
        let mut data = FileStoreData::default();
        let mut compiled = HashMap::new();
        for t in tenants {
            let (grants, errs) = policy.tenant(&t.data);
            for e in errs {
                let (span, key) = match &e.at {
                    Location::Tenant { field: "tier" } => {
                        (t.tier_span.clone(), format!("tenants.{}.tier", t.name))
                    }
                    Location::Tenant { field: "features" } => (
                        t.features_span.clone(),
                        format!("tenants.{}.features", t.name),
                    ),
                    Location::Tenant { field: "roles" } => (
                        tenant_role_span(t, &e.message).or_else(|| t.roles_span.clone()),
                        format!("tenants.{}.roles", t.name),
                    ),
                    Location::Tenant { field } => {
                        (t.roles_span.clone(), format!("tenants.{}.{field}", t.name))
                    }
                    Location::Role { role, field, index } => (
                        t.role_spans.get(role).map(|r| r.element(field, *index)),
                        format!("tenants.{}.roles.{role}.{field}[{index}]", t.name),
                    ),
                    _ => (None, format!("tenants.{}", t.name)),
                };
                let span = span.unwrap_or_else(|| t.key_span.clone());
                self.policy_err(before_policy, (main, span, key), e);
            }
            compiled.insert(t.name.clone(), grants);
            data.tenants.push((t.name.clone(), t.data.clone()));
        }
        let no_record = policy.tenant(&TenantData::default()).0;
        for a in assignments {
            let tenant = compiled.get(&a.tenant).unwrap_or(&no_record);
            let (_, errs) = policy.principal(tenant, &a.data);
            for e in errs {
                let (span, key) = match &e.at {
                    Location::Subject { field, index } => {
                        let list = match *field {
                            "roles" => &a.roles,
                            "grant" => &a.grant,
                            "deny" => &a.deny,
                            _ => &a.scopes,
                        };
                        (
                            list.get(*index).cloned(),
                            format!("{}.{field}[{index}]", a.key),
                        )
                    }
                    _ => (None, a.key.clone()),
                };
                let span = span.unwrap_or_else(|| a.span.clone());
                self.policy_err(before_policy, (main, span, key), e);
            }
            data.assignments
                .push(((a.tenant.clone(), a.subject.clone()), a.data.clone()));
        }
        data
    }

    fn check_assignment_roles(
        &mut self,
        def: &PolicyDef,
        tenants: &[TenantPlan],
        assignments: &[AssignmentPlan],
    ) {
        let main = 0;
        for a in assignments {
            let custom = tenants
                .iter()
                .filter(|t| t.name == a.tenant)
                .flat_map(|t| t.data.custom_roles.iter().map(|r| r.name.as_str()));
            let known: Vec<&str> = def
                .roles
                .iter()
                .map(|r| r.name.as_str())
                .chain(def.aliases.iter().map(|(alias, _)| alias.as_str()))
                .chain(custom)
                .collect();
            for (index, role) in a.data.roles.iter().enumerate() {
                if known.contains(&role.as_str()) {
                    continue;
                }
                let help = did_you_mean(role, known.iter().copied()).unwrap_or_else(|| {
                    let mut names = known.clone();
                    names.sort_unstable();
                    format!("valid roles: {}", backticked(names))
                });
                let span = a
                    .roles
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| a.span.clone());
                self.err(
                    main,
                    span,
                    &format!("{}.roles[{index}]", a.key),
                    format!("unknown role `{role}` grants nothing"),
                    Some(help),
                );
            }
        }
    }
}

/// Where `[identity.jwt]` keys are, for `IdentitySetupError`s.
struct JwtSpans {
    section: Range<usize>,
    algorithms: Option<Range<usize>>,
    secret_env: Option<Range<usize>>,
    jwks_file: Option<Range<usize>>,
}

#[derive(Default)]
struct EntitlementSpans {
    require_tier: Vec<Range<usize>>,
    require_feature: Vec<Range<usize>>,
    mfa: Vec<Range<usize>>,
}

struct TenantPlan {
    name: String,
    key_span: Range<usize>,
    tier_span: Option<Range<usize>>,
    features_span: Option<Range<usize>>,
    roles_span: Option<Range<usize>>,
    role_spans: HashMap<String, RoleSpans>,
    data: TenantData,
}

struct AssignmentPlan {
    key: String,
    tenant: String,
    subject: String,
    span: Range<usize>,
    roles: Vec<Range<usize>>,
    grant: Vec<Range<usize>>,
    deny: Vec<Range<usize>>,
    scopes: Vec<Range<usize>>,
    data: SubjectData,
}

/// The grant store as configured, before the policy exists to compile file data.
enum StoreKind {
    File,
    Redis {
        span: Range<usize>,
        settings: Box<RedisSettings>,
    },
}

/// Point a tenant custom-role error at the role (or its list element) the message names:
/// `policy` reports them all at `Location::Tenant { field: "roles" }`.
fn tenant_role_span(t: &TenantPlan, message: &str) -> Option<Range<usize>> {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let name = quoted.next()?;
    let role = t.role_spans.get(name)?;
    for field in ["permissions", "own"] {
        if let Some(rest) = message.split(&format!(" {field}[")).nth(1)
            && let Some(index) = rest.split(']').next().and_then(|i| i.parse().ok())
        {
            return Some(role.element(field, index));
        }
    }
    if message.contains(" inherits ")
        && let Some(parent) = quoted.next()
        && let Some(def) = t.data.custom_roles.iter().find(|r| r.name == name)
        && let Some(i) = def.inherits.iter().position(|p| p == parent)
    {
        return Some(role.element("inherits", i));
    }
    Some(role.name.clone())
}

fn split_list(list: Option<StrList>) -> (Vec<String>, Vec<Range<usize>>) {
    list.into_iter()
        .flatten()
        .map(|s| {
            let span = s.span();
            (s.into_inner(), span)
        })
        .unzip()
}

/// Names of roles, tiers and features: letters, digits, `_`, `-`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn key_leaf(key: &str) -> &str {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    leaf.split('[').next().unwrap_or(leaf)
}

fn lower_first(s: &str) -> String {
    let s = s.trim().trim_end_matches('.');
    let mut chars = s.chars();
    match chars.next() {
        // Keep acronyms (`JWKS`, `HS256`) as they are.
        Some(c) if chars.next().is_some_and(char::is_lowercase) => {
            c.to_lowercase().chain(s.chars().skip(1)).collect()
        }
        _ => s.to_owned(),
    }
}

fn ename_path(name: &str) -> &str {
    name.split_once(' ').map_or(name, |(_, p)| p)
}

fn upstream_help(written: Option<&str>, upstreams: &[String]) -> String {
    let defined = if upstreams.is_empty() {
        "no upstreams are defined; add `[upstreams.NAME]` with `targets = [\"host:port\"]`"
            .to_owned()
    } else {
        format!(
            "defined upstreams: {}",
            backticked(upstreams.iter().map(String::as_str))
        )
    };
    match written.and_then(|w| did_you_mean(w, upstreams.iter().map(String::as_str))) {
        Some(dym) => format!("{dym} ({defined})"),
        None => defined,
    }
}

/// The parameter names of a route path, or why the path is not one.
fn route_params(path: &str) -> Result<Vec<String>, (String, Option<String>)> {
    if !path.starts_with('/') {
        return Err((
            format!("route path `{path}` must start with `/`"),
            Some(format!("write `/{path}`")),
        ));
    }
    if path.contains('?') || path.contains('#') {
        let clean = path.split(['?', '#']).next().unwrap_or(path);
        return Err((
            format!("route path `{path}` contains a query or fragment"),
            Some(format!("routes match the path only; write `{clean}`")),
        ));
    }
    let mut params = Vec::new();
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix(':') {
            let fixed = path.replace(segment, &format!("{{{name}}}"));
            return Err((
                format!("`{segment}` in route path `{path}` is not a parameter"),
                Some(format!("use `{{{name}}}`: write `{fixed}`")),
            ));
        }
        if let Some(name) = segment.strip_prefix('*')
            && !name.is_empty()
        {
            let fixed = path.replace(segment, &format!("{{*{name}}}"));
            return Err((
                format!("`{segment}` in route path `{path}` is not a catch-all"),
                Some(format!("use `{{*{name}}}`: write `{fixed}`")),
            ));
        }
        let mut rest = segment;
        while let Some(start) = rest.find('{') {
            let after = rest.get(start + 1..).unwrap_or("");
            let Some(end) = after.find('}') else { break };
            let name = after.get(..end).unwrap_or("").trim_start_matches('*');
            if name.is_empty() {
                return Err((
                    format!("route path `{path}` has a parameter without a name"),
                    Some("write e.g. `{id}`".into()),
                ));
            }
            if params.iter().any(|p| p == name) {
                return Err((
                    format!("parameter `{{{name}}}` appears twice in route path `{path}`"),
                    Some("give each parameter its own name".into()),
                ));
            }
            params.push(name.to_owned());
            rest = after.get(end + 1..).unwrap_or("");
        }
    }
    Ok(params)
}

/// `"1GiB"`, `"512MiB"`, `"10MB"`, `"4096"` → bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    num.checked_mul(mult)
}

#[cfg(test)]
pub(crate) mod unit {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("1gb"), None);
        assert_eq!(parse_size("GiB"), None);
    }

    #[test]
    fn params() {
        assert_eq!(
            route_params("/a/{id}/b/{*rest}").unwrap(),
            vec!["id", "rest"]
        );
        assert!(route_params("a/b").is_err());
        let (m, h) = route_params("/users/:id").unwrap_err();
        assert_eq!(m, "`:id` in route path `/users/:id` is not a parameter");
        assert_eq!(h.unwrap(), "use `{id}`: write `/users/{id}`");
    }
}
