//! The one place where a refusal becomes an HTTP response (DESIGN.md §4).
//!
//! The `match` over `Refusal` has no `_ =>` arm on purpose: a new variant must not compile
//! until someone decides its status. Every response built here carries
//! `x-authz-source: gateway` and the request id.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde::Serialize;

use crate::policy::{Denial, Reason};

pub type Body = BoxBody<Bytes, BodyError>;

/// Why a streamed response body broke off (hyper's client or the lean HTTP/1 client).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Malformed or ambiguous requests (400 unless noted); the reason goes in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    AmbiguousPath,
    MissingHost,
    DuplicateHeader,
    InvalidHeaderName,
    InvalidTarget,
    InvalidIdentity,
}

impl BadRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::AmbiguousPath => "ambiguous_path",
            BadRequest::MissingHost => "missing_host",
            BadRequest::DuplicateHeader => "duplicate_header",
            BadRequest::InvalidHeaderName => "invalid_header_name",
            BadRequest::InvalidTarget => "invalid_target",
            BadRequest::InvalidIdentity => "invalid_identity",
        }
    }
}

/// Every response the gateway answers itself instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A policy denial (401/403/404); `hide` answers like `no_route` 404 (`deny_status = 404`).
    Denied {
        denial: Denial,
        permission: Option<String>,
        status: u16,
        hide: bool,
    },
    BadRequest(BadRequest),
    /// CONNECT, TRACE: never tunnelled, never forwarded.
    MethodNotAllowed,
    UriTooLong,
    /// The grant store cannot answer and nothing usable is cached.
    AuthorizationUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The audit spool cannot record the event (`on_full = "block"`): fail closed rather
    /// than serve an unaudited request.
    AuditUnavailable,
    /// The body is larger than `[limits] max_body` (declared, or counted while streaming).
    PayloadTooLarge,
    /// The upstream is at its `max_connections` and none freed up within `request_timeout`.
    UpstreamBusy,
    /// A CORS preflight answered by the gateway (`[cors]`): 204 with `headers`; `allowed` is
    /// false when the origin, method or headers are not allowed (no CORS headers then).
    Preflight {
        allowed: bool,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_permission: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_feature: Option<&'a str>,
    request_id: &'a str,
}

impl Refusal {
    /// The status this refusal answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Denied { status, hide, .. } => {
                if *hide {
                    404
                } else {
                    *status
                }
            }
            Refusal::BadRequest(_) => 400,
            Refusal::MethodNotAllowed => 405,
            Refusal::UriTooLong => 414,
            Refusal::AuthorizationUnavailable => 503,
            Refusal::UpstreamUnavailable => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::AuditUnavailable => 503,
            Refusal::PayloadTooLarge => 413,
            Refusal::UpstreamBusy => 503,
            Refusal::Preflight { .. } => 204,
        }
    }

    /// The reason for audit and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Denied { denial, .. } => denial.reason.as_str(),
            Refusal::BadRequest(b) => b.as_str(),
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::AuthorizationUnavailable => "authorization_unavailable",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::PayloadTooLarge => "payload_too_large",
            Refusal::UpstreamBusy => "upstream_busy",
            Refusal::Preflight { allowed: true, .. } => "cors_preflight",
            Refusal::Preflight { allowed: false, .. } => "cors_preflight_rejected",
        }
    }

    pub fn into_response(
        self,
        request_id: &HeaderValue,
        request_id_name: &HeaderName,
    ) -> Response<Body> {
        let rid = request_id.to_str().unwrap_or_default();
        let status = self.status();
        let mut www_authenticate = None;
        let mut retry_after = false;
        let body = match &self {
            Refusal::Denied {
                denial,
                permission,
                status,
                hide,
            } => {
                let error = match (hide, status) {
                    (true, _) | (false, 404) => "not_found",
                    (false, 401) => "unauthenticated",
                    (false, _) => "forbidden",
                };
                if *hide {
                    ErrorBody {
                        error,
                        reason: Some(Reason::NoRoute.as_str()),
                        required_permission: None,
                        required_tier: None,
                        required_feature: None,
                        request_id: rid,
                    }
                } else {
                    if *status == 401 {
                        www_authenticate = Some(match denial.reason {
                            Reason::MissingToken => "Bearer",
                            Reason::MfaRequired => {
                                "Bearer error=\"insufficient_user_authentication\""
                            }
                            _ => "Bearer error=\"invalid_token\"",
                        });
                    }
                    ErrorBody {
                        error,
                        reason: Some(denial.reason.as_str()),
                        required_permission: permission.as_deref(),
                        required_tier: denial.required_tier.as_deref(),
                        required_feature: denial.required_feature.as_deref(),
                        request_id: rid,
                    }
                }
            }
            Refusal::BadRequest(b) => plain("bad_request", Some(b.as_str()), rid),
            Refusal::MethodNotAllowed => plain("method_not_allowed", None, rid),
            Refusal::UriTooLong => plain("uri_too_long", None, rid),
            Refusal::AuthorizationUnavailable => {
                retry_after = true;
                plain("authorization_unavailable", None, rid)
            }
            Refusal::UpstreamUnavailable => plain("upstream_unavailable", None, rid),
            Refusal::UpstreamTimeout => plain("upstream_timeout", None, rid),
            Refusal::AuditUnavailable => {
                retry_after = true;
                plain("audit_unavailable", None, rid)
            }
            Refusal::PayloadTooLarge => plain("payload_too_large", None, rid),
            Refusal::UpstreamBusy => {
                retry_after = true;
                plain("upstream_busy", None, rid)
            }
            // No body: 204 carries the CORS headers only.
            Refusal::Preflight { headers, .. } => {
                let mut response = Response::new(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                );
                *response.status_mut() = StatusCode::NO_CONTENT;
                let out = response.headers_mut();
                for (name, value) in headers {
                    out.append(name.clone(), value.clone());
                }
                out.insert("x-authz-source", HeaderValue::from_static("gateway"));
                out.insert(request_id_name.clone(), request_id.clone());
                return response;
            }
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-authz-source", HeaderValue::from_static("gateway"));
        headers.insert(request_id_name.clone(), request_id.clone());
        if let Some(value) = www_authenticate {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        if retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn plain<'a>(
    error: &'static str,
    reason: Option<&'static str>,
    request_id: &'a str,
) -> ErrorBody<'a> {
    ErrorBody {
        error,
        reason,
        required_permission: None,
        required_tier: None,
        required_feature: None,
        request_id,
    }
}
