//! The request pipeline: one straight line, DESIGN.md §1.
//!
//! `handle` builds the per-request context, runs `handle_inner`, maps any refusal through
//! `respond`, and emits exactly one audit event on every path (allow, deny, error).
//! `evaluate` is the decision part alone (route → identity → grants → decide); the live
//! gateway and `portcullis explain` both call it, so they cannot disagree.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::event::ip_text;
use crate::audit::{AuditLog, AuditUnavailable, Decision, EventBody, Text};
use crate::config::{RouteEntry, Snapshot};
use crate::grants::{Access, GrantsError, Resolved, Store};
use crate::identity::{Authenticator, AuthnError, Principal};
use crate::metrics::{Metrics, RouteMetrics};
use crate::policy::{self, Caller, Outcome, Reason, Verdict};
use crate::route;

use super::forward::{ForwardError, Outbound, Upstreams};
use super::headers;
use super::respond::{BadRequest, Body, Refusal};

/// Everything a request needs, built once from a validated config.
pub struct Gateway {
    pub snapshot: Snapshot,
    pub store: Store,
    pub authenticator: Arc<Authenticator>,
    /// Shared with the next generation when `[upstreams.*]` did not change (pools and health).
    pub upstreams: Arc<Upstreams>,
    /// Shared by every generation: one spool, one hash chain per process.
    pub audit: Arc<AuditLog>,
    /// `[server] tls`: the listener terminates TLS with this (`proxy::tls`).
    pub tls: Option<Arc<super::tls::Terminator>>,
    /// 1 at start, +1 per applied reload; the Redis cache is keyed by it.
    pub generation: u64,
    pub metrics: Arc<Metrics>,
    /// Indexed like `snapshot.route_entries`.
    pub route_metrics: Vec<Arc<RouteMetrics>>,
}

/// The connection a request arrived on. Shared by its requests (`Arc`): what is the same for
/// each of them is written once, at accept.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// Subject of the verified client certificate (mTLS), RFC 4514 style.
    pub client_cert_subject: Option<Arc<str>>,
    /// The peer's address as text, for audit events.
    peer_text: Text,
    /// The peer's address as the `X-Forwarded-For` value.
    forwarded_for: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, client_cert_subject: Option<Arc<str>>) -> ConnInfo {
        let peer_text = ip_text(peer.ip());
        // Digits, dots and colons: always a valid header value.
        let forwarded_for = HeaderValue::from_str(&peer_text)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            tls,
            client_cert_subject,
            peer_text,
            forwarded_for,
        }
    }
}

/// The decision for one request, as enforce or monitor mode sees it.
#[derive(Debug)]
pub struct Evaluation {
    /// Index into `Snapshot::route_entries`; `None` for `no_route`.
    pub route: Option<usize>,
    /// The verified caller, when there is one (also on public routes).
    pub principal: Option<Principal>,
    pub resolved: Option<Arc<Resolved>>,
    pub verdict: Verdict,
}

impl Gateway {
    pub fn route_entry(&self, id: usize) -> Option<&RouteEntry> {
        self.snapshot.route_entries.get(id)
    }

    /// Decide a request whose path is already canonical. `identity` is the authenticator's
    /// answer (`Err(MissingToken)` when no credentials were sent).
    pub async fn evaluate(
        &self,
        method: &Method,
        path: &str,
        identity: Result<Principal, AuthnError>,
    ) -> Result<Evaluation, GrantsError> {
        let snap = &self.snapshot;
        let Some(found) = snap.routes.lookup(method, path) else {
            return Ok(Evaluation {
                route: None,
                principal: identity.ok(),
                resolved: None,
                verdict: Verdict::no_route(),
            });
        };
        let route_id = found.id;
        let Some(entry) = snap.route_entries.get(route_id) else {
            // INVARIANT: the table only holds ids of `route_entries`; fail closed if not.
            return Ok(Evaluation {
                route: None,
                principal: None,
                resolved: None,
                verdict: Verdict::no_route(),
            });
        };
        let rule = &entry.rule;
        let public = rule.requirement == policy::Requirement::Public;
        let principal = match identity {
            Ok(principal) => principal,
            Err(err) => {
                let verdict = if public {
                    policy::decide(&snap.policy, rule, None)
                } else {
                    Verdict::unauthenticated(reason_of(err), rule.mode)
                };
                return Ok(Evaluation {
                    route: Some(route_id),
                    principal: None,
                    resolved: None,
                    verdict,
                });
            }
        };
        let resolved = match self
            .store
            .resolve(
                &snap.policy,
                &principal.tenant,
                &principal.subject,
                Access::of(method),
            )
            .await
        {
            Ok(resolved) => resolved,
            // A public route needs no grants: serve it without identity rather than fail.
            Err(_) if public => {
                return Ok(Evaluation {
                    route: Some(route_id),
                    principal: None,
                    resolved: None,
                    verdict: policy::decide(&snap.policy, rule, None),
                });
            }
            Err(err) => return Err(err),
        };
        let param = |name: &Option<String>| {
            name.as_deref()
                .and_then(|n| found.params.get(n))
                .map(route::decode_segment)
        };
        let owner = param(&entry.owner_param);
        let scope = param(&entry.scope_param);
        let caller = Caller {
            subject: &principal.subject,
            mfa: principal.mfa,
            owner: owner.as_deref(),
            scope: scope.as_deref(),
        };
        let verdict = policy::decide(
            &snap.policy,
            rule,
            Some((&caller, &resolved.tenant, &resolved.principal)),
        );
        Ok(Evaluation {
            route: Some(route_id),
            principal: Some(principal),
            resolved: Some(resolved),
            verdict,
        })
    }
}

/// Longest API key accepted, in bytes.
const MAX_API_KEY_LEN: usize = 512;

impl Gateway {
    /// Who is calling, as `[identity] kinds` allows: an API key (header, or
    /// `Authorization: ApiKey <key>`; looked up in Redis) or a JWT bearer token. Presenting both
    /// is refused as ambiguous. `Err` only when an API key cannot be looked up (503).
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        method: &Method,
        now: u64,
    ) -> Result<Result<Principal, AuthnError>, GrantsError> {
        let kinds = &self.snapshot.identity;
        let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        let (header_key, authorization_key) = match &kinds.api_key {
            Some(settings) => (
                headers.get(&settings.header).map(|v| v.as_bytes()),
                authorization.and_then(api_key_scheme),
            ),
            None => (None, None),
        };
        // Two credentials (bearer + key, or key in both places) are ambiguous: refuse.
        if header_key.is_some() && authorization.is_some() {
            return Ok(Err(AuthnError::InvalidToken));
        }
        if let Some(key) = header_key.or(authorization_key) {
            return self.identify_api_key(key, method, now).await;
        }
        Ok(match authorization {
            _ if kinds.jwt => self.authenticator.authenticate(
                authorization,
                self.authenticator
                    .tenant_header()
                    .and_then(|name| headers.get(name))
                    .map(|v| v.as_bytes()),
                now,
            ),
            None => Err(AuthnError::MissingToken),
            Some(_) => Err(AuthnError::InvalidToken),
        })
    }

    async fn identify_api_key(
        &self,
        key: &[u8],
        method: &Method,
        now: u64,
    ) -> Result<Result<Principal, AuthnError>, GrantsError> {
        if key.is_empty() || key.len() > MAX_API_KEY_LEN || !key.iter().all(u8::is_ascii_graphic) {
            return Ok(Err(AuthnError::InvalidToken));
        }
        // `config` allows API keys only with the Redis store.
        let Some(store) = self.store.redis() else {
            return Ok(Err(AuthnError::InvalidToken));
        };
        Ok(match store.api_key(key, Access::of(method)).await? {
            None => Err(AuthnError::InvalidToken),
            Some(record) if record.expires.is_some_and(|e| now >= e) => {
                Err(AuthnError::TokenExpired)
            }
            Some(record) => Ok(Principal {
                tenant: record.tenant.clone(),
                subject: record.subject.clone(),
                mfa: false,
                expires_at: record.expires.unwrap_or(u64::MAX),
            }),
        })
    }
}

/// `[identity.header]`: `None` when the peer is not trusted or sent no subject header (then
/// the other identity kinds apply); otherwise the asserted principal, checked like a token's.
fn header_identity(
    settings: &crate::config::HeaderIdentitySettings,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Option<Result<Principal, AuthnError>> {
    if !settings.trusts(conn.peer.ip(), conn.client_cert_subject.as_deref()) {
        return None;
    }
    let mut subjects = headers.get_all(&settings.subject).iter();
    let subject = subjects.next()?;
    let mut tenants = headers.get_all(&settings.tenant).iter();
    let tenant = tenants.next();
    if subjects.next().is_some() || tenants.next().is_some() {
        return Some(Err(AuthnError::InvalidToken));
    }
    if !crate::identity::valid_subject(subject.as_bytes()) {
        return Some(Err(AuthnError::InvalidToken));
    }
    let Some(tenant) = tenant.filter(|t| !t.is_empty()) else {
        return Some(Err(AuthnError::MissingTenant));
    };
    if !crate::identity::valid_tenant(tenant.as_bytes()) {
        return Some(Err(AuthnError::InvalidToken));
    }
    let text = |v: &HeaderValue| v.to_str().map(str::to_owned).ok();
    Some(match (text(subject), text(tenant)) {
        (Some(subject), Some(tenant)) => Ok(Principal {
            tenant,
            subject,
            mfa: false,
            expires_at: u64::MAX,
        }),
        _ => Err(AuthnError::InvalidToken),
    })
}

/// `ApiKey <key>` (scheme case-insensitive): the key.
fn api_key_scheme(authorization: &[u8]) -> Option<&[u8]> {
    let scheme = authorization.get(..7)?;
    (scheme.eq_ignore_ascii_case(b"ApiKey ")).then(|| authorization.get(7..).unwrap_or_default())
}

fn reason_of(err: AuthnError) -> Reason {
    match err {
        AuthnError::MissingToken => Reason::MissingToken,
        AuthnError::InvalidToken => Reason::InvalidToken,
        AuthnError::TokenExpired => Reason::TokenExpired,
        AuthnError::MissingTenant => Reason::MissingTenant,
    }
}

/// Wall-clock milliseconds: one reading per request serves its id and its token checks.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A client-supplied request id is kept only if it is short and plain.
fn valid_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A fresh request id: a UUIDv7 whose random bits come from a thread-local PRNG (`fastrand`).
/// `uuid::Uuid::now_v7` would make a `getrandom` system call and take a process-wide lock per
/// request; request ids must be unique, not secret (like audit event ids).
/// `millis`: the wall clock's reading, as from `unix_millis`.
pub fn new_request_id(millis: u64) -> HeaderValue {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut text = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
        .unwrap_or(HeaderValue::from_static("invalid"))
}

/// What the audit event needs, collected as the request moves along.
struct RequestCtx {
    started: Instant,
    /// The wall clock at arrival, in milliseconds since the Unix epoch.
    arrived_unix_ms: u64,
    request_id: HeaderValue,
    method: Method,
    /// Inline for the usual short path: no allocation of its own.
    path: Text,
    conn: Arc<ConnInfo>,
    /// The client's value, shared with the request's buffer: copied only into an event.
    user_agent: Option<HeaderValue>,
    route: Option<usize>,
    principal: Option<Principal>,
    /// The caller's grants (their roles go into the event), when resolved for a caller.
    resolved: Option<Arc<Resolved>>,
    outcome: Option<Outcome>,
    mode: policy::Mode,
    /// Arrival → decision, once there is one.
    decided_after: Option<std::time::Duration>,
    /// Decision to the upstream's response head (building the upstream request included), once
    /// forwarded.
    upstream_time: Option<std::time::Duration>,
}

/// Entry point for every request on the public listener.
pub async fn handle(
    gw: Arc<Gateway>,
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<Body> {
    let request_id_name = &gw.snapshot.headers.request_id;
    // One pass over the (few) fields for both: a lookup each hashed and probed the map.
    let (mut client_id, mut user_agent) = (None, None);
    for (name, value) in request.headers() {
        if name == header::USER_AGENT {
            user_agent.get_or_insert(value);
        }
        if name == request_id_name {
            client_id.get_or_insert(value);
        }
    }
    let arrived_unix_ms = unix_millis();
    let request_id = match client_id {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(arrived_unix_ms),
    };
    let user_agent = user_agent.cloned();
    let ctx = RequestCtx {
        started: Instant::now(),
        arrived_unix_ms,
        request_id: request_id.clone(),
        method: request.method().clone(),
        path: Text::default(),
        conn,
        user_agent,
        route: None,
        principal: None,
        resolved: None,
        outcome: None,
        mode: gw.snapshot.mode,
        decided_after: None,
        upstream_time: None,
    };
    // Fail closed before forwarding when the spool is known to be full (`on_full = "block"`):
    // the upstream never sees a request whose event cannot be written.
    if gw.audit.admit().is_err() {
        tracing::error!("Audit spool full; refusing the request.");
        return Refusal::AuditUnavailable.into_response(&request_id, request_id_name);
    }
    let mut in_flight = InFlight {
        gw: &gw,
        ctx,
        answered: false,
    };
    let (response, refusal_reason) = match handle_inner(&gw, &mut in_flight.ctx, request).await {
        Ok(response) => (response, None),
        Err(refusal) => {
            let reason = refusal.reason();
            (
                refusal.into_response(&request_id, request_id_name),
                Some(reason),
            )
        }
    };
    // Finished: from here on the event is recorded below (`record` queues it at once, so a
    // drop while waiting for the spool cannot lose it).
    in_flight.answered = true;
    let ctx = &in_flight.ctx;
    // Spooled durability: the response leaves only after its event is in the spool.
    let response = match audit(&gw, ctx, response.status().as_u16(), refusal_reason).await {
        Ok(()) => response,
        Err(AuditUnavailable) => {
            tracing::error!("Audit event could not be spooled; answering 503.");
            Refusal::AuditUnavailable.into_response(&request_id, request_id_name)
        }
    };
    observe(&gw, ctx, response.status().as_u16(), refusal_reason);
    response
}

/// A request being handled. If the server drops it before it is answered (its client went
/// away: an HTTP/1 connection closed, an h2 stream reset, while the gateway was deciding or
/// the upstream was answering), a decided request still gets its event and its metrics, with
/// nginx's status for it, 499, and the reason `client_closed`: the upstream may have acted on
/// it.
struct InFlight<'a> {
    gw: &'a Gateway,
    ctx: RequestCtx,
    /// Set once the request is answered: `handle` records its event then.
    answered: bool,
}

/// The status and reason of a request its client abandoned (nginx logs 499 too).
const CLIENT_CLOSED: (u16, &str) = (499, "client_closed");

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Answered: `handle` recorded it. Not decided: nothing was forwarded, nothing to
        // account for.
        if self.answered || self.ctx.outcome.is_none() {
            return;
        }
        let (status, reason) = CLIENT_CLOSED;
        // Queued by the call itself; nobody is left to wait for the spool.
        drop(record_decision(self.gw, &self.ctx, status, Some(reason)));
        observe(self.gw, &self.ctx, status, Some(reason));
    }
}

/// Metrics and the access log for one finished request (labels: route pattern, never path).
fn observe(gw: &Gateway, ctx: &RequestCtx, status: u16, refusal_reason: Option<&'static str>) {
    let (decision, reason) = match &ctx.outcome {
        Some(Outcome::Allow { .. }) => ("allow", refusal_reason.unwrap_or("")),
        Some(Outcome::Deny(denial)) => ("deny", denial.reason.as_str()),
        None => ("error", refusal_reason.unwrap_or("")),
    };
    let route = ctx
        .route
        .and_then(|id| gw.route_metrics.get(id))
        .unwrap_or(&gw.metrics.unrouted);
    route.request(decision, reason);
    if let Some(d) = ctx.decided_after {
        route.decision_latency.observe(d);
    }
    if let Some(d) = ctx.upstream_time {
        route.upstream_latency.observe(d);
    }
    // Monitor mode: denied, yet forwarded. What an enforce rollout would refuse.
    if let Some(Outcome::Deny(denial)) = &ctx.outcome
        && ctx.mode == policy::Mode::Monitor
        && denial.reason != Reason::NoRoute
    {
        route.shadow_denial(denial.reason.as_str());
    }
    if gw.snapshot.log.access_log {
        let route = ctx
            .route
            .and_then(|id| gw.route_entry(id))
            .map(|e| e.path.as_str());
        tracing::info!(
            target: "portcullis::access",
            request_id = ctx.request_id.to_str().unwrap_or_default(),
            method = %ctx.method,
            route = route.unwrap_or(""),
            status,
            decision,
            reason,
            latency_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            tenant = ctx.principal.as_ref().map_or("", |p| p.tenant.as_str()),
            subject = ctx.principal.as_ref().map_or("", |p| p.subject.as_str()),
            client_ip = %ctx.conn.peer.ip(),
            "Request served."
        );
    }
}

/// Build the request's one event from `ctx` and record it; resolves when the audit log has
/// it (see `AuditLog::record`), never waiting for a sink.
async fn audit(
    gw: &Gateway,
    ctx: &RequestCtx,
    status: u16,
    refusal_reason: Option<&'static str>,
) -> Result<(), AuditUnavailable> {
    match record_decision(gw, ctx, status, refusal_reason) {
        Some(recorded) => recorded.await,
        None => Ok(()),
    }
}

/// Record the request's event, if it is to be recorded (allow events may be off): queued by
/// this call; the future resolves as `AuditLog::record`'s does. The event is built here, next
/// to the queueing, so that it is not moved through a return value (600 bytes).
fn record_decision(
    gw: &Gateway,
    ctx: &RequestCtx,
    status: u16,
    refusal_reason: Option<&'static str>,
) -> Option<impl Future<Output = Result<(), AuditUnavailable>>> {
    let (decision, reason) = match &ctx.outcome {
        Some(Outcome::Allow { .. }) => {
            if refusal_reason.is_some() {
                // Allowed, then the upstream failed: the decision stands, the reason says why.
                ("allow", refusal_reason)
            } else {
                if !gw.audit.wants_allow() {
                    return None;
                }
                ("allow", None)
            }
        }
        Some(Outcome::Deny(denial)) => ("deny", Some(denial.reason.as_str())),
        None => ("error", refusal_reason),
    };
    let entry = ctx.route.and_then(|id| gw.route_entry(id));
    // Copied as `Text`: inline, no allocation, for all but a long path or user agent.
    let event = Decision {
        decision,
        reason,
        required: entry.map(|e| e.required.clone()).unwrap_or_default(),
        tenant: ctx.principal.as_ref().map(|p| Text::new(&p.tenant)),
        subject: ctx.principal.as_ref().map(|p| Text::new(&p.subject)),
        roles: ctx
            .resolved
            .as_ref()
            .map(|r| r.principal.role_names_shared())
            .unwrap_or_default(),
        method: Text::new(ctx.method.as_str()),
        path: ctx.path.clone(),
        route: entry.map(|e| Text::new(&e.path)),
        upstream: entry
            .and_then(|e| gw.upstreams.name(e.upstream))
            .map(Text::new),
        status,
        client_ip: ctx.conn.peer_text.clone(),
        user_agent: ctx
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(Text::new),
        request_id: Text::new(ctx.request_id.to_str().unwrap_or_default()),
        latency_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        mode: ctx.mode.as_str(),
    };
    Some(gw.audit.record(EventBody::Decision(event)))
}

/// RFC 9112 checks hyper leaves to the application (R1), before anything is interpreted.
fn preflight(request: &Request<Incoming>, gw: &Gateway) -> Result<(), Refusal> {
    if matches!(*request.method(), Method::CONNECT | Method::TRACE) {
        return Err(Refusal::MethodNotAllowed);
    }
    // One pass over the fields: for the usual two or three, a `get_all` per name hashed
    // and probed the map four times over.
    let tenant_header = gw.authenticator.tenant_header();
    let api_key_header = gw.snapshot.identity.api_key.as_ref().map(|k| &k.header);
    let (mut hosts, mut authorizations, mut tenants, mut api_keys) = (0u32, 0u32, 0u32, 0u32);
    let mut underscore = false;
    for (name, _) in request.headers() {
        if name == header::HOST {
            hosts += 1;
        } else if name == header::AUTHORIZATION {
            authorizations += 1;
        }
        tenants += u32::from(tenant_header.is_some_and(|t| name.as_str().eq_ignore_ascii_case(t)));
        api_keys += u32::from(api_key_header == Some(name));
        // WSGI/CGI frameworks read `X_User` as `X-User`: an underscore name could smuggle a
        // header past the strip list.
        underscore |= name.as_str().contains('_');
    }
    if hosts > 1 || (hosts == 0 && request.version() == Version::HTTP_11) {
        return Err(Refusal::BadRequest(if hosts > 1 {
            BadRequest::DuplicateHeader
        } else {
            BadRequest::MissingHost
        }));
    }
    if authorizations > 1 || tenants > 1 || api_keys > 1 {
        return Err(Refusal::BadRequest(BadRequest::DuplicateHeader));
    }
    if underscore {
        return Err(Refusal::BadRequest(BadRequest::InvalidHeaderName));
    }
    let uri = request.uri();
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Refusal::BadRequest(BadRequest::InvalidTarget));
    }
    if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > gw.snapshot.limits.max_uri_length {
        return Err(Refusal::UriTooLong);
    }
    Ok(())
}

async fn handle_inner(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let snap = &gw.snapshot;
    // Checks first: nothing below may see a request with two readings.
    preflight(&request, gw)?;
    // Edge limits and CORS (proxy::limits, proxy::cors): answered before any identity work.
    super::limits::check_declared_length(&request, &snap.limits)?;
    super::cors::answer_preflight(&request, snap.cors.as_ref())?;
    // `rewritten`: the canonical path when it differs from the client's (then the upstream's
    // target is built from it, below); `canonical` borrows one or the other until the
    // decision, `ctx.path` keeps a copy for the event.
    let rewritten = match route::canonicalize(request.uri().path()) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(path)) => Some(path),
        Err(_) => return Err(Refusal::BadRequest(BadRequest::AmbiguousPath)),
    };
    let canonical = rewritten.as_deref().unwrap_or(request.uri().path());
    ctx.path = Text::new(canonical);

    // A WebSocket handshake listens for revocations before its grants are resolved, so one
    // racing the decision still closes the tunnel (`proxy::upgrade`).
    let websocket = super::upgrade::is_websocket_handshake(&request);
    let revocations = if websocket {
        gw.store.redis().map(|r| r.revocations())
    } else {
        None
    };

    // Identity before the store: a request without valid credentials never costs a grants
    // round trip (an API key costs one lookup, cached like grants).
    // Trusted-header identity first, and only from a trusted peer: from anyone else the
    // headers are never read (and are stripped before forwarding, below).
    let trusted = snap
        .identity
        .header
        .as_ref()
        .and_then(|h| header_identity(h, request.headers(), &ctx.conn));
    let identity = match trusted {
        Some(identity) => identity,
        None => gw
            .identify(
                request.headers(),
                request.method(),
                ctx.arrived_unix_ms / 1000,
            )
            .await
            .map_err(|_| Refusal::AuthorizationUnavailable)?,
    };
    // The caller's own grants (DESIGN.md §7): answered by the gateway, audited like any request.
    if canonical == super::me::PATH && request.method() == Method::GET {
        let me = super::me::answer(gw, identity).await;
        ctx.principal = me.principal;
        ctx.resolved = me.resolved;
        ctx.outcome = Some(me.outcome);
        let mut response = me.response?;
        response
            .headers_mut()
            .insert(snap.headers.request_id.clone(), ctx.request_id.clone());
        return Ok(response);
    }
    let mut eval = gw
        .evaluate(request.method(), canonical, identity)
        .await
        .map_err(|_| Refusal::AuthorizationUnavailable)?;
    ctx.route = eval.route;
    if eval.principal.is_some() {
        ctx.resolved.clone_from(&eval.resolved);
    }
    // Moved, not cloned: from here on the request reads the caller from `ctx`.
    ctx.principal = eval.principal.take();
    if let Some(entry) = eval.route.and_then(|id| gw.route_entry(id)) {
        ctx.mode = entry.rule.mode;
    }
    ctx.outcome = Some(eval.verdict.outcome.clone());
    // One clock reading for the decision's latency and the upstream's start.
    let decided = Instant::now();
    ctx.decided_after = Some(decided.saturating_duration_since(ctx.started));

    let (Some(grant), Some(entry)) = (
        eval.verdict.grant(),
        eval.route.and_then(|id| gw.route_entry(id)),
    ) else {
        return Err(refusal_for(snap, &eval).unwrap_or(Refusal::AuthorizationUnavailable));
    };

    // Only now, after the full decision, may a websocket route take the upgrade.
    let tunnel = websocket && entry.websocket;
    let downstream = tunnel.then(|| hyper::upgrade::on(&mut request));

    // Strip, then set (R5): the client's map is sanitized before any gateway header goes in.
    let (mut parts, body) = request.into_parts();
    let host_field = parts.headers.get(header::HOST).cloned();
    let host_in_map = host_field.is_some();
    let client_host = host_field.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // Looked up only where API keys are configured.
    let api_key_auth = snap.identity.api_key.is_some()
        && parts
            .headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| api_key_scheme(v.as_bytes()).is_some());
    let out = &mut parts.headers;
    let stripped = headers::sanitize_request(out, &snap.headers);
    // Identity headers of `[identity.header]` never pass through, trusted or not: the
    // upstream gets the gateway's own identity headers instead.
    if let Some(h) = &snap.identity.header {
        out.remove(&h.subject);
        out.remove(&h.tenant);
    }
    // A gateway credential never reaches the upstream (a JWT does: upstreams may verify it).
    if let Some(api_key) = &snap.identity.api_key {
        out.remove(&api_key.header);
        if api_key_auth {
            out.remove(header::AUTHORIZATION);
        }
    }
    // The upstream sees the client's Host, as behind Envoy (h2 requests carry it as :authority).
    // Looked for only if it was not there or something was removed since.
    let host_may_be_gone =
        stripped || snap.identity.header.is_some() || snap.identity.api_key.is_some();
    if let Some(host) = &client_host
        && (!host_in_map || host_may_be_gone)
        && !out.contains_key(header::HOST)
    {
        out.insert(header::HOST, host.clone());
    }
    if tunnel {
        super::upgrade::set_upgrade_headers(out);
    }
    // Strip, then set: the gateway's own headers, apart from the client's (`headers::Added`).
    let mut added = headers::Added::with_capacity(8);
    set_forwarding_headers(&mut added, &ctx.conn, client_host);
    added.set(snap.headers.request_id.clone(), ctx.request_id.clone());
    if let (Some(principal), Some(resolved)) = (&ctx.principal, &eval.resolved) {
        let invalid = || Refusal::BadRequest(BadRequest::InvalidIdentity);
        let value = |s: &str| HeaderValue::from_str(s).map_err(|_| invalid());
        added.set(snap.headers.subject.clone(), value(&principal.subject)?);
        added.set(snap.headers.tenant.clone(), value(&principal.tenant)?);
        let roles = resolved.roles_header().ok_or_else(invalid)?;
        added.set(snap.headers.roles.clone(), roles.clone());
    }
    if grant.own_only() {
        added.set(snap.headers.scope.clone(), HeaderValue::from_static("own"));
    }

    let path_and_query = match (rewritten, parts.uri.path_and_query()) {
        // The client's target as it came: shared with its buffer, not parsed again.
        (None, Some(target)) => Ok(target.clone()),
        (rewritten, _) => {
            let canonical = rewritten.as_deref().unwrap_or(parts.uri.path());
            match parts.uri.query() {
                Some(q) => PathAndQuery::try_from(format!("{canonical}?{q}")),
                None => PathAndQuery::try_from(canonical),
            }
        }
    }
    .map_err(|_| Refusal::BadRequest(BadRequest::InvalidTarget))?;
    let request = Request::from_parts(parts, body);
    let forwarded = gw
        .upstreams
        .forward(
            grant,
            entry.upstream,
            Outbound {
                request,
                added,
                path_and_query,
            },
            tunnel,
            decided,
        )
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "Upstream request failed.");
            match err {
                ForwardError::Timeout(_) => Refusal::UpstreamTimeout,
                ForwardError::Busy(_) => Refusal::UpstreamBusy,
                ForwardError::BodyTooLarge(_) => Refusal::PayloadTooLarge,
                ForwardError::Unavailable { .. }
                | ForwardError::Failed { .. }
                | ForwardError::InvalidTarget(_)
                | ForwardError::UnexpectedUpgrade(_)
                | ForwardError::UpgradeUnsupported(_)
                | ForwardError::TlsSetup { .. } => Refusal::UpstreamUnavailable,
            }
        });
    ctx.upstream_time = Some(decided.elapsed());
    let mut response = forwarded?;
    // `forward` returns a 101 only when `tunnel` asked for it.
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = if switching {
        if !super::upgrade::upstream_accepted(response.headers()) {
            tracing::warn!("Upstream answered 101 without `Upgrade: websocket`; refusing.");
            return Err(Refusal::UpstreamUnavailable);
        }
        Some(hyper::upgrade::on(&mut response))
    } else {
        None
    };
    headers::sanitize_response(response.headers_mut());
    if let (Some(up), Some(down)) = (upstream_upgrade, downstream) {
        super::upgrade::set_upgrade_headers(response.headers_mut());
        let (tenant, subject) = ctx
            .principal
            .as_ref()
            .map(|p| (p.tenant.clone(), p.subject.clone()))
            .unwrap_or_default();
        let guard = super::upgrade::TunnelGuard {
            tenant,
            subject,
            revocations,
            max_lifetime: entry
                .websocket_max_lifetime
                .unwrap_or(snap.limits.websocket_max_lifetime),
        };
        super::upgrade::spawn_tunnel(down, up, guard, gw.metrics.clone());
    }
    // The upstream's own id, if it sent one, stands (one hash and probe either way).
    response
        .headers_mut()
        .entry(snap.headers.request_id.clone())
        .or_insert_with(|| ctx.request_id.clone());
    Ok(response.map(|body| body.boxed()))
}

/// The response enforce mode gives a denied evaluation (`None` for an allow).
pub fn refusal_for(snap: &Snapshot, eval: &Evaluation) -> Option<Refusal> {
    match &eval.verdict.outcome {
        Outcome::Deny(denial) => {
            let entry = eval.route.and_then(|id| snap.route_entries.get(id));
            let status = if denial.reason == Reason::NoRoute {
                snap.unmatched_status
            } else {
                denial.reason.status()
            };
            Some(Refusal::Denied {
                permission: denial
                    .permission
                    .map(|id| snap.policy.permission_name(id).to_owned()),
                denial: denial.clone(),
                status,
                hide: denial.reason.status() == 403
                    && entry.is_some_and(|e| e.deny_status == Some(404)),
            })
        }
        Outcome::Allow { .. } => None,
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `x-forwarded-*` from the socket, never from the client (the client's copies are gone).
/// Constant names: inserting by `&str` would allocate a custom `HeaderName` per request.
fn set_forwarding_headers(
    out: &mut headers::Added,
    conn: &ConnInfo,
    client_host: Option<HeaderValue>,
) {
    out.set(X_FORWARDED_FOR, conn.forwarded_for.clone());
    out.set(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    if let Some(host) = client_host {
        out.set(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_uuid_v7_values_and_valid_headers() {
        let ids: Vec<HeaderValue> = (0..1000).map(|_| new_request_id(unix_millis())).collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            assert!(valid_request_id(id));
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 7);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert!(seen.insert(parsed), "duplicate id {parsed}");
        }
        // The timestamp is now, in milliseconds.
        let (secs, _) = uuid::Uuid::parse_str(ids[0].to_str().unwrap())
            .unwrap()
            .get_timestamp()
            .unwrap()
            .to_unix();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) <= 5);
    }
}
