//! `GET /.well-known/portcullis/me` (DESIGN.md §7): the caller's tenant, roles and effective
//! permissions, so a client UI can hide what the user cannot do. The gateway still checks
//! every request; this answer grants nothing.
//!
//! Permissions are `Policy::held_permissions`: held on the route universe after deny
//! overrides, before entitlements, owner, scope and MFA (those depend on the request).

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::pipeline::Gateway;
use super::respond::{Body, Refusal};
use crate::grants::{Access, Resolved};
use crate::identity::{AuthnError, Principal};
use crate::policy::{Denial, Outcome, Reason};

/// The path, on the public listener.
pub const PATH: &str = "/.well-known/portcullis/me";

/// What the pipeline audits and answers.
pub struct Me {
    pub principal: Option<Principal>,
    /// The caller's grants, when the store answered (the audit event lists their roles).
    pub resolved: Option<Arc<Resolved>>,
    pub outcome: Outcome,
    pub response: Result<Response<Body>, Refusal>,
}

#[derive(Serialize)]
struct MeBody<'a> {
    tenant: &'a str,
    subject: &'a str,
    roles: &'a [String],
    /// Held in full.
    permissions: Vec<&'a str>,
    /// Held only on the caller's own records.
    own_permissions: Vec<&'a str>,
    /// Sub-tenant scopes; empty: unrestricted.
    scopes: &'a [String],
}

fn unauthenticated(err: AuthnError) -> Me {
    let reason = match err {
        AuthnError::MissingToken => Reason::MissingToken,
        AuthnError::InvalidToken => Reason::InvalidToken,
        AuthnError::TokenExpired => Reason::TokenExpired,
        AuthnError::MissingTenant => Reason::MissingTenant,
    };
    let denial = Denial {
        reason,
        permission: None,
        required_tier: None,
        required_feature: None,
    };
    Me {
        principal: None,
        resolved: None,
        outcome: Outcome::Deny(denial.clone()),
        response: Err(Refusal::Denied {
            denial,
            permission: None,
            status: 401,
            hide: false,
        }),
    }
}

/// Answer `/me` for the identity the authenticator produced.
pub async fn answer(gw: &Gateway, identity: Result<Principal, AuthnError>) -> Me {
    let principal = match identity {
        Ok(p) => p,
        Err(err) => return unauthenticated(err),
    };
    let snap = &gw.snapshot;
    let resolved = match gw
        .store
        .resolve(
            &snap.policy,
            &principal.tenant,
            &principal.subject,
            Access::Read,
        )
        .await
    {
        Ok(r) => r,
        Err(_) => {
            return Me {
                principal: Some(principal),
                resolved: None,
                outcome: Outcome::Allow {
                    own_only: false,
                    relied_on: None,
                },
                response: Err(Refusal::AuthorizationUnavailable),
            };
        }
    };
    let (mut permissions, mut own_permissions) = (Vec::new(), Vec::new());
    for (name, own) in snap.policy.held_permissions(&resolved.principal) {
        if own {
            own_permissions.push(name);
        } else {
            permissions.push(name);
        }
    }
    let body = MeBody {
        tenant: &principal.tenant,
        subject: &principal.subject,
        roles: resolved.principal.role_names(),
        permissions,
        own_permissions,
        scopes: resolved.principal.scopes(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-authz-source", HeaderValue::from_static("gateway"));
    // Per-user data: never cached by a shared cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Me {
        principal: Some(principal),
        resolved: Some(resolved),
        outcome: Outcome::Allow {
            own_only: false,
            relied_on: None,
        },
        response: Ok(response),
    }
}
