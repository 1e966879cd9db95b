//! Who is calling: JWT verification (HS256/RS256/ES256/EdDSA, JWKS file) and the tenant.
//!
//! INTERFACE SKELETON: public items are the contract; `todo!()` bodies are to be implemented.
//!
//! No I/O on the request path: keys are loaded when the config is built. The algorithm is
//! pinned by configuration, never chosen by the token header (RS/HS confusion, `alg=none`).

pub mod jwt;

use std::time::Duration;

/// Where the tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A claim of the verified token (default `tenant`).
    Claim(String),
    /// A request header (lower-case name). Only the token's subject is then from the token.
    Header(String),
}

/// Validated `[identity.jwt]` settings, built by `config`.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Non-empty; every entry one of HS256, RS256, ES256, EdDSA (more of the same families ok).
    pub algorithms: Vec<String>,
    /// Name of the environment variable holding the HS256 secret (raw UTF-8 bytes).
    pub secret_env: Option<String>,
    /// JWKS file with public keys (RS/ES/EdDSA).
    pub jwks_file: Option<std::path::PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub subject_claim: String,
    pub tenant: TenantSource,
    /// At most 60 s (config rejects more).
    pub leeway: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentitySetupError {
    #[error("environment variable `{0}` is not set or empty; export it with the HS256 secret")]
    MissingSecret(String),
    #[error("cannot read JWKS file `{path}`: {source}")]
    JwksRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JWKS file `{path}`: {message}")]
    JwksInvalid { path: String, message: String },
    #[error(
        "unsupported algorithm `{0}`; supported: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
    )]
    UnsupportedAlgorithm(String),
    #[error("{0}")]
    Other(String),
}

/// Why a token was refused; maps 1:1 to the 401 reasons of DESIGN.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
    #[error("token has no tenant")]
    MissingTenant,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub subject: String,
    /// `amr` claim contains `"mfa"`.
    pub mfa: bool,
    /// Token expiry (unix seconds), for caches keyed by token.
    pub expires_at: u64,
}

/// The configured authenticator (closed set; only JWT for now).
pub struct Authenticator {
    // implementation-defined
}

impl Authenticator {
    /// Load keys (env secret, JWKS file). Called at config load, never per request.
    pub fn build(settings: &JwtSettings) -> Result<Authenticator, IdentitySetupError> {
        let _ = settings;
        todo!()
    }

    /// Verify a request's credentials. `authorization` is the single `Authorization` header value
    /// (the proxy rejects duplicates before this), `tenant_header` the value of the configured
    /// tenant header when `TenantSource::Header`. `now` is unix seconds (injected for tests).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        tenant_header: Option<&[u8]>,
        now: u64,
    ) -> Result<Principal, AuthnError> {
        let _ = (authorization, tenant_header, now);
        todo!()
    }

    /// The tenant header name when the tenant comes from a header.
    pub fn tenant_header(&self) -> Option<&str> {
        todo!()
    }

    /// Mint an HS256 token (for `portcullis token` and `demo`); fails without an HS secret.
    pub fn mint_hs256(&self, claims: &serde_json::Value) -> Result<String, IdentitySetupError> {
        let _ = claims;
        todo!()
    }
}
