//! Role management on the admin API: the `portcullis roles` operations (`grants::ops`, the
//! same code) over HTTP, audited by the running gateway's own `AuditLog`.
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /v1/tenants/{t}/principals/{s}` | a principal's `roles`, `grant`, `deny`, `scopes` |
//! | `PATCH /v1/tenants/{t}/principals/{s}` | `{"assign","revoke","grant","ungrant","deny","undeny": [..], "scopes": [..]}` |
//! | `GET /v1/tenants/{t}/roles` | the tenant's custom roles |
//! | `GET /v1/tenants/{t}/roles/{name}` | one custom role (404 if none) |
//! | `PUT /v1/tenants/{t}/roles/{name}` | create/replace `{"permissions","own","inherits"}`, or `{"clone_from": "role"}` |
//! | `DELETE /v1/tenants/{t}/roles/{name}` | reset (delete) a custom role (404 if none) |
//! | `GET /v1/tenants/{t}/entitlements` | the tenant's `tier` and `features` |
//! | `PATCH /v1/tenants/{t}/entitlements` | `{"tier": "..", "features": [..]}`; what is not given is kept |
//!
//! Fail closed: without `[server] admin_token_env` every endpoint here answers 403 (the token
//! is what stands between the network and the grants). Writes need `X-Portcullis-Actor: <name>`,
//! recorded as the `role.change` event's `actor`: the token is one shared secret and names
//! nobody, so the caller says on whose behalf it acts. Only for the Redis grant store (409
//! otherwise). Errors are `{"error": code, "detail": message}`; nothing is written on any error.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{AdminResponse, MAX_BODY, json};
use crate::audit::AuditLog;
use crate::audit::event::RoleChange;
use crate::config::StoreSettings;
use crate::grants::admin::{Admin, AdminError, CustomRoleJson};
use crate::grants::ops::{
    ChangeAudit, Outcome, RoleOps, RoleSource, RolesError, SubjectEdit, check_name,
    entitlements_state, subject_state,
};
use crate::policy::SubjectData;
use crate::proxy::Gateway;

/// The header that names who makes a change.
pub const ACTOR_HEADER: &str = "x-portcullis-actor";

/// How long connecting to Redis may take before the request fails with 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole operation may take. Past it the answer is 503 as well, but a change in
/// flight may still commit: the error says to read the record again.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything an `/v1/tenants` request can fail with; `response` is the one mapping to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum TenantsApiError {
    #[error(
        "role management over the admin API needs an admin token: set `[server] admin_token_env` and export the token in that variable"
    )]
    TokenNotConfigured,
    #[error("the grant store is `file`; role management needs `[grants] store = \"redis\"`")]
    NotRedis,
    #[error("no such endpoint; see the admin API section of the README")]
    NotFound,
    #[error("{0}")]
    Missing(String),
    #[error("method not allowed; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("`X-Portcullis-Actor` is required for changes: name who makes this change")]
    ActorRequired,
    #[error("invalid `X-Portcullis-Actor`: {0}")]
    InvalidActor(String),
    #[error("the body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("invalid JSON body: {0}")]
    InvalidBody(String),
    #[error("cannot connect to the grant store within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error(
        "the grant store did not answer within {}s; a change may or may not have been applied, read the record to check",
        OPERATION_TIMEOUT.as_secs()
    )]
    OperationTimeout,
    #[error(transparent)]
    Roles(#[from] RolesError),
}

impl TenantsApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::TokenNotConfigured => (StatusCode::FORBIDDEN, "admin_token_required"),
            Self::NotRedis => (StatusCode::CONFLICT, "store_not_redis"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::Missing(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::ActorRequired => (StatusCode::BAD_REQUEST, "actor_required"),
            Self::InvalidActor(_) => (StatusCode::BAD_REQUEST, "invalid_actor"),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            Self::ConnectTimeout | Self::OperationTimeout => {
                (StatusCode::SERVICE_UNAVAILABLE, "grant_store_unavailable")
            }
            Self::Roles(RolesError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Roles(
                RolesError::Changed(_) | RolesError::Store(AdminError::Contention { .. }),
            ) => (StatusCode::CONFLICT, "conflict"),
            Self::Roles(RolesError::Audit(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable")
            }
            Self::Roles(RolesError::Store(AdminError::Redis(_))) => {
                (StatusCode::SERVICE_UNAVAILABLE, "grant_store_unavailable")
            }
            // Data the store itself would refuse: an operator has to repair it in Redis.
            Self::Roles(RolesError::Store(AdminError::Data { .. })) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "invalid_stored_data")
            }
        }
    }

    /// The JSON response: `{"error": code, "detail": message}`.
    pub fn response(&self) -> AdminResponse {
        let (status, code) = self.status_and_code();
        let mut response = json(
            status,
            &serde_json::json!({"error": code, "detail": self.to_string()}),
        );
        match self {
            Self::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::ConnectTimeout
            | Self::OperationTimeout
            | Self::Roles(RolesError::Audit(_) | RolesError::Store(AdminError::Redis(_))) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// The running gateway's audit log: the event is appended to its spool (and fsynced) before
/// the change commits, and reaches the sinks from there like every other event.
struct GatewayAudit<'a>(&'a AuditLog);

impl ChangeAudit for GatewayAudit<'_> {
    async fn record(&self, change: RoleChange) -> Result<(), RolesError> {
        self.0
            .record_role_change(change)
            .await
            .map_err(|e| RolesError::Audit(e.to_string()))
    }
}

/// One `/v1/tenants/...` resource.
#[derive(Debug, PartialEq, Eq)]
enum Resource<'a> {
    Principal { tenant: &'a str, subject: &'a str },
    Roles { tenant: &'a str },
    Role { tenant: &'a str, name: &'a str },
    Entitlements { tenant: &'a str },
}

impl Resource<'_> {
    fn allowed(&self) -> &'static str {
        match self {
            Resource::Principal { .. } | Resource::Entitlements { .. } => "GET, PATCH",
            Resource::Roles { .. } => "GET",
            Resource::Role { .. } => "GET, PUT, DELETE",
        }
    }
}

/// Parse a path under `/v1/tenants/` (names are validated later, with the operations' rules).
fn resource(path: &str) -> Option<Resource<'_>> {
    let rest = path.strip_prefix("/v1/tenants/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [tenant, "principals", subject] => Some(Resource::Principal { tenant, subject }),
        [tenant, "roles"] => Some(Resource::Roles { tenant }),
        [tenant, "roles", name] => Some(Resource::Role { tenant, name }),
        [tenant, "entitlements"] => Some(Resource::Entitlements { tenant }),
        _ => None,
    }
}

/// `PATCH /v1/tenants/{t}/principals/{s}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalPatch {
    #[serde(default)]
    assign: Vec<String>,
    #[serde(default)]
    revoke: Vec<String>,
    #[serde(default)]
    grant: Vec<String>,
    #[serde(default)]
    ungrant: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    undeny: Vec<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// `PUT /v1/tenants/{t}/roles/{name}`: a definition, or `clone_from` alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePut {
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    own: Option<Vec<String>>,
    #[serde(default)]
    inherits: Option<Vec<String>>,
    #[serde(default)]
    clone_from: Option<String>,
}

/// `PATCH /v1/tenants/{t}/entitlements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntitlementsPatch {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    features: Option<Vec<String>>,
}

/// Serve one `/v1/tenants/...` request (the bearer token, when configured, was checked).
pub async fn handle(gateway: &Gateway, request: Request<Incoming>) -> AdminResponse {
    match serve(gateway, request).await {
        Ok(response) => response,
        Err(err) => {
            if let TenantsApiError::Roles(
                RolesError::Store(AdminError::Redis(_) | AdminError::Data { .. })
                | RolesError::Audit(_),
            ) = &err
            {
                tracing::warn!(error = %err, "Admin role management request failed.");
            }
            err.response()
        }
    }
}

async fn serve(
    gateway: &Gateway,
    request: Request<Incoming>,
) -> Result<AdminResponse, TenantsApiError> {
    if gateway.snapshot.server.admin_token.is_none() {
        return Err(TenantsApiError::TokenNotConfigured);
    }
    let path = request.uri().path().to_owned();
    let resource = resource(&path).ok_or(TenantsApiError::NotFound)?;
    let method = request.method().clone();
    let write = match (&resource, &method) {
        (_, &Method::GET) => false,
        (Resource::Principal { .. } | Resource::Entitlements { .. }, &Method::PATCH)
        | (Resource::Role { .. }, &Method::PUT | &Method::DELETE) => true,
        _ => return Err(TenantsApiError::MethodNotAllowed(resource.allowed())),
    };
    let StoreSettings::Redis(settings) = &gateway.snapshot.grants.store else {
        return Err(TenantsApiError::NotRedis);
    };
    let actor = if write {
        actor(request.headers())?
    } else {
        String::new()
    };
    let body = if write && method != Method::DELETE {
        Some(read_body(request).await?)
    } else {
        None
    };
    let admin = match tokio::time::timeout(CONNECT_TIMEOUT, Admin::connect(settings)).await {
        Ok(admin) => admin.map_err(RolesError::from)?,
        Err(_) => return Err(TenantsApiError::ConnectTimeout),
    };
    let audit = GatewayAudit(&gateway.audit);
    let ops = RoleOps {
        snap: &gateway.snapshot,
        admin: &admin,
        audit: &audit,
        actor: &actor,
    };
    let run = operate(&ops, &resource, &method, body.as_ref());
    match tokio::time::timeout(OPERATION_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => Err(TenantsApiError::OperationTimeout),
    }
}

fn actor(headers: &http::HeaderMap) -> Result<String, TenantsApiError> {
    let value = headers
        .get(ACTOR_HEADER)
        .ok_or(TenantsApiError::ActorRequired)?;
    let value = value.to_str().map_err(|_| {
        TenantsApiError::InvalidActor(
            "use 1 to 256 ASCII letters, digits, `-`, `_`, `.`, `@`".into(),
        )
    })?;
    check_name("actor", value).map_err(|e| TenantsApiError::InvalidActor(e.to_string()))?;
    Ok(value.to_owned())
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, TenantsApiError> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => Err(TenantsApiError::BodyTooLarge),
    }
}

fn parse<T: DeserializeOwned>(body: Option<&Bytes>) -> Result<T, TenantsApiError> {
    let body = body.map_or(&b""[..], |b| &b[..]);
    serde_json::from_slice(body).map_err(|e| TenantsApiError::InvalidBody(e.to_string()))
}

fn outcome_json<T>(
    mut target: serde_json::Value,
    outcome: &Outcome<T>,
    state: impl Fn(&T) -> serde_json::Value,
) -> AdminResponse {
    if let Some(object) = target.as_object_mut() {
        object.insert("applied".into(), outcome.applied.into());
        object.insert("change".into(), outcome.change.clone().into());
        object.insert("before".into(), state(&outcome.before));
        object.insert("after".into(), state(&outcome.after));
    }
    json(StatusCode::OK, &target)
}

async fn operate(
    ops: &RoleOps<'_, GatewayAudit<'_>>,
    resource: &Resource<'_>,
    method: &Method,
    body: Option<&Bytes>,
) -> Result<AdminResponse, TenantsApiError> {
    let subject_json = |tenant: &str, subject: &str, data: &SubjectData| {
        let mut value = subject_state(data);
        if let Some(object) = value.as_object_mut() {
            object.insert("tenant".into(), tenant.into());
            object.insert("subject".into(), subject.into());
        }
        value
    };
    match (resource, method) {
        (Resource::Principal { tenant, subject }, &Method::GET) => {
            let data = ops.subject(tenant, subject).await?;
            Ok(json(StatusCode::OK, &subject_json(tenant, subject, &data)))
        }
        (Resource::Principal { tenant, subject }, _) => {
            let patch: PrincipalPatch = parse(body)?;
            let edit = SubjectEdit {
                assign: patch.assign,
                revoke: patch.revoke,
                grant: patch.grant,
                ungrant: patch.ungrant,
                deny: patch.deny,
                undeny: patch.undeny,
                scopes: patch.scopes,
            };
            let outcome = ops.edit_subject(tenant, subject, &edit).await?;
            Ok(outcome_json(
                serde_json::json!({"tenant": tenant, "subject": subject}),
                &outcome,
                subject_state,
            ))
        }
        (Resource::Roles { tenant }, _) => {
            let data = ops.tenant(tenant).await?;
            let roles: serde_json::Map<String, serde_json::Value> = data
                .custom_roles
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        serde_json::json!({
                            "permissions": r.permissions,
                            "own": r.own,
                            "inherits": r.inherits,
                        }),
                    )
                })
                .collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"tenant": tenant, "roles": roles}),
            ))
        }
        (Resource::Role { tenant, name }, &Method::GET) => {
            let stored = ops.custom_role(tenant, name).await?;
            if stored.is_null() {
                return Err(TenantsApiError::Missing(format!(
                    "tenant `{tenant}` has no custom role `{name}`"
                )));
            }
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"tenant": tenant, "role": name, "definition": stored}),
            ))
        }
        (Resource::Role { tenant, name }, &Method::DELETE) => {
            let outcome = ops.set_custom_role(tenant, name, None).await?;
            if !outcome.applied {
                return Err(TenantsApiError::Missing(format!(
                    "tenant `{tenant}` has no custom role `{name}`; nothing to reset"
                )));
            }
            Ok(outcome_json(
                serde_json::json!({"tenant": tenant, "role": name}),
                &outcome,
                Clone::clone,
            ))
        }
        (Resource::Role { tenant, name }, _) => {
            let put: RolePut = parse(body)?;
            let source = match put {
                RolePut {
                    permissions: None,
                    own: None,
                    inherits: None,
                    clone_from: Some(from),
                } => RoleSource::Clone(from),
                RolePut {
                    clone_from: Some(_),
                    ..
                } => {
                    return Err(TenantsApiError::InvalidBody(
                        "`clone_from` copies a whole role; give it alone, without `permissions`, `own` or `inherits`".into(),
                    ));
                }
                RolePut {
                    permissions,
                    own,
                    inherits,
                    clone_from: None,
                } => RoleSource::Define(CustomRoleJson {
                    permissions: permissions.unwrap_or_default(),
                    own: own.unwrap_or_default(),
                    inherits: inherits.unwrap_or_default(),
                }),
            };
            let outcome = ops.set_custom_role(tenant, name, Some(source)).await?;
            Ok(outcome_json(
                serde_json::json!({"tenant": tenant, "role": name}),
                &outcome,
                Clone::clone,
            ))
        }
        (Resource::Entitlements { tenant }, &Method::GET) => {
            let e = ops.entitlements(tenant).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"tenant": tenant, "tier": e.tier, "features": e.features}),
            ))
        }
        (Resource::Entitlements { tenant }, _) => {
            let patch: EntitlementsPatch = parse(body)?;
            let outcome = ops
                .set_entitlements(tenant, patch.tier.as_deref(), patch.features.as_deref())
                .await?;
            Ok(outcome_json(
                serde_json::json!({"tenant": tenant}),
                &outcome,
                entitlements_state,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_resources_and_nothing_else() {
        assert_eq!(
            resource("/v1/tenants/acme/principals/bob"),
            Some(Resource::Principal {
                tenant: "acme",
                subject: "bob"
            })
        );
        assert_eq!(
            resource("/v1/tenants/acme/roles"),
            Some(Resource::Roles { tenant: "acme" })
        );
        assert_eq!(
            resource("/v1/tenants/acme/roles/publisher"),
            Some(Resource::Role {
                tenant: "acme",
                name: "publisher"
            })
        );
        assert_eq!(
            resource("/v1/tenants/acme/entitlements"),
            Some(Resource::Entitlements { tenant: "acme" })
        );
        for bad in [
            "/v1/tenants",
            "/v1/tenants/",
            "/v1/tenants/acme",
            "/v1/tenants/acme/principals",
            "/v1/tenants/acme/principals/bob/",
            "/v1/tenants/acme/principals/bob/x",
            "/v1/tenants/acme/users/bob",
        ] {
            assert_eq!(resource(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_error_maps_to_one_status() {
        let status = |e: TenantsApiError| e.response().status();
        assert_eq!(
            status(TenantsApiError::TokenNotConfigured),
            StatusCode::FORBIDDEN
        );
        assert_eq!(status(TenantsApiError::NotRedis), StatusCode::CONFLICT);
        assert_eq!(
            status(RolesError::Invalid("x".into()).into()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(RolesError::Changed("role").into()),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(RolesError::Audit("x".into()).into()),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let redis = redis::RedisError::from((redis::ErrorKind::Io, "down"));
        let down = TenantsApiError::from(RolesError::from(AdminError::Redis(redis)));
        let response = down.response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let e = TenantsApiError::MethodNotAllowed("GET").response();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.headers()[header::ALLOW], "GET");
    }
}
