//! Who is calling: JWT verification (HS256/RS256/ES256/EdDSA, JWKS file) and the tenant.
//!
//! No I/O on the request path: keys are loaded when the config is built. The algorithm is
//! pinned by configuration, never chosen by the token header (RS/HS confusion, `alg=none`).
//!
//! Invariants (security.md §3.16, R8/R9):
//! - The header `alg` must be pinned, and the key must be allowed for it: HS algorithms verify
//!   only against the `secret_env` secret; RS/PS/ES/EdDSA only against JWKS keys whose type (and
//!   `alg`, when the JWK has one) admits that algorithm. `kid` only indexes the in-memory map.
//! - Claims are read only after the signature verified, and `now` (injected) is the only clock:
//!   `exp` is required and valid while `now < exp + leeway`; `nbf`, when present, once
//!   `nbf <= now + leeway`. `jsonwebtoken`'s own (system-clock) validation is not used.
//! - `MissingTenant` means the token is otherwise valid; every other failure after the
//!   `Authorization` header is present is `InvalidToken` or `TokenExpired`.
//! - A repeated token may be answered from the verified-token cache (`cache`), which never
//!   accepts what the full check would refuse: see the invariants there.

mod cache;
pub mod jwks;
pub mod jwt;
#[cfg(test)]
mod tests;

pub(crate) use jwt::{valid_subject, valid_tenant};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};

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
    /// JWKS downloaded from a URL and refreshed in the background (`jwks::JwksSource`).
    pub jwks_url: Option<JwksUrl>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub subject_claim: String,
    pub tenant: TenantSource,
    /// At most 60 s (config rejects more).
    pub leeway: Duration,
    /// Verified tokens remembered (`cache_size`, default [`DEFAULT_CACHE_SIZE`]); 0 disables.
    pub cache_size: usize,
}

/// Default `[identity.jwt] cache_size`.
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

/// `jwks_url` with its refresh settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    pub url: http::Uri,
    /// Regular refresh (`jwks_refresh_interval`, default 5 min).
    pub refresh: Duration,
    /// At most one download per this long, whatever asks (`jwks_min_refresh_interval`, 10 s):
    /// a flood of tokens with made-up `kid`s costs the identity provider nothing.
    pub min_interval: Duration,
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

// === AlgSet ===

/// A set of algorithms as a bitmask: copied and tested on every request without allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct AlgSet(u16);

impl AlgSet {
    /// Bit for each algorithm; 0 for any the crate may add later (never accepted).
    fn bit(alg: Algorithm) -> u16 {
        match alg {
            Algorithm::HS256 => 1 << 0,
            Algorithm::HS384 => 1 << 1,
            Algorithm::HS512 => 1 << 2,
            Algorithm::RS256 => 1 << 3,
            Algorithm::RS384 => 1 << 4,
            Algorithm::RS512 => 1 << 5,
            Algorithm::PS256 => 1 << 6,
            Algorithm::PS384 => 1 << 7,
            Algorithm::PS512 => 1 << 8,
            Algorithm::ES256 => 1 << 9,
            Algorithm::ES384 => 1 << 10,
            Algorithm::EdDSA => 1 << 11,
            _ => 0,
        }
    }

    fn of(algs: &[Algorithm]) -> AlgSet {
        AlgSet(algs.iter().fold(0, |acc, &a| acc | Self::bit(a)))
    }

    fn contains(self, alg: Algorithm) -> bool {
        let bit = Self::bit(alg);
        bit != 0 && self.0 & bit == bit
    }

    fn intersect(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 & other.0)
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn iter(self) -> impl Iterator<Item = Algorithm> {
        ALL_ALGORITHMS
            .into_iter()
            .filter(move |&a| self.contains(a))
    }
}

const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl fmt::Debug for AlgSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

// === Authenticator ===

/// The HS secret in both directions (verify requests, mint for `portcullis token`/`demo`).
struct HmacKey {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

/// A JWKS public key with the algorithms it may verify: its type/`alg` intersected with the
/// pinned list, so the token header can never make it verify under another algorithm.
struct PublicKey {
    algs: AlgSet,
    key: DecodingKey,
}

/// The public keys in use; swapped whole when a JWKS URL is refreshed.
pub(crate) struct KeySet {
    keys: Vec<PublicKey>,
    /// `kid` → index into `keys`. A `kid` only ever selects from here (never a path or URL).
    by_kid: HashMap<String, usize>,
    /// Unique per key set built in this process: cached tokens verified with a public key
    /// record it and are served only while the same set is in use.
    generation: u64,
}

impl KeySet {
    fn new((keys, by_kid): KeyMap) -> KeySet {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        KeySet {
            keys,
            by_kid,
            generation: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Which key verified a signature.
#[derive(Clone, Copy)]
enum SignedBy {
    /// The HS secret (fixed for the authenticator's life).
    Secret,
    /// A public key of the key set with this generation.
    KeySet(u64),
}

/// The configured authenticator (closed set; only JWT for now).
pub struct Authenticator {
    pinned: AlgSet,
    hmac: Option<HmacKey>,
    keys: Arc<ArcSwap<KeySet>>,
    /// `jwks_url`: the background refresher that fills `keys`.
    jwks: Option<Arc<jwks::JwksSource>>,
    issuer: Option<String>,
    audience: Option<String>,
    subject_claim: String,
    tenant: TenantSource,
    leeway: u64,
    /// Verified tokens (`cache::TokenCache`); never shared with another authenticator.
    cache: cache::TokenCache,
}

impl fmt::Debug for Authenticator {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.keys.load();
        let mut kids: Vec<&str> = set.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("Authenticator")
            .field("algorithms", &self.pinned)
            .field("hmac_secret", &self.hmac.as_ref().map(|_| "<redacted>"))
            .field("public_keys", &set.keys.len())
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("subject_claim", &self.subject_claim)
            .field("tenant", &self.tenant)
            .field("leeway_s", &self.leeway)
            .field("cache_capacity", &self.cache.capacity())
            .finish()
    }
}

impl Authenticator {
    /// Load keys (env secret, JWKS file). Called at config load, never per request.
    pub fn build(settings: &JwtSettings) -> Result<Authenticator, IdentitySetupError> {
        let secret = match &settings.secret_env {
            Some(name) => Some(read_secret(name)?),
            None => None,
        };
        Self::build_with_secret(settings, secret.as_deref())
    }

    /// Like [`Authenticator::build`], but with the HS secret given directly instead of read from
    /// `settings.secret_env` (tests, and callers that obtained the secret another way; edition
    /// 2024 makes `std::env::set_var` unsafe, so tests cannot inject it through the environment).
    pub fn build_with_secret(
        settings: &JwtSettings,
        secret: Option<&[u8]>,
    ) -> Result<Authenticator, IdentitySetupError> {
        let mut pinned = AlgSet::default();
        for name in &settings.algorithms {
            let alg = Algorithm::from_str(name)
                .map_err(|_| IdentitySetupError::UnsupportedAlgorithm(name.clone()))?;
            pinned = AlgSet(pinned.0 | AlgSet::bit(alg));
        }
        if pinned.is_empty() {
            return Err(IdentitySetupError::Other(
                "`algorithms` is empty; pin at least one, e.g. `[\"HS256\"]`".into(),
            ));
        }
        check_claim_name("subject_claim", &settings.subject_claim)?;
        if let TenantSource::Claim(name) = &settings.tenant {
            check_claim_name("tenant claim", name)?;
        }

        let hmac = match secret {
            Some([]) => {
                return Err(IdentitySetupError::MissingSecret(
                    settings.secret_env.clone().unwrap_or_default(),
                ));
            }
            Some(s) => Some(HmacKey {
                decoding: DecodingKey::from_secret(s),
                encoding: EncodingKey::from_secret(s),
            }),
            None => None,
        };
        let hmac_algs = pinned.intersect(AlgSet::of(AlgorithmFamily::Hmac.algorithms()));
        if hmac.is_none()
            && let Some(alg) = hmac_algs.iter().next()
        {
            return Err(IdentitySetupError::Other(format!(
                "algorithm `{alg:?}` needs a secret; set `secret_env` to the name of the \
                 environment variable holding it"
            )));
        }

        let (keys, by_kid): KeyMap = match &settings.jwks_file {
            Some(path) => load_jwks(path, pinned)?,
            None => (Vec::new(), HashMap::new()),
        };
        // With `jwks_url` the keys arrive later (fail closed until then).
        for alg in pinned
            .iter()
            .filter(|a| a.family() != AlgorithmFamily::Hmac && settings.jwks_url.is_none())
        {
            if !keys.iter().any(|k| k.algs.contains(alg)) {
                let message = match &settings.jwks_file {
                    Some(path) => format!(
                        "algorithm `{alg:?}` is pinned but no key in `{}` can verify it; add a \
                         matching key or unpin the algorithm",
                        path.display()
                    ),
                    None => format!("algorithm `{alg:?}` needs public keys; set `jwks_file`"),
                };
                return Err(IdentitySetupError::Other(message));
            }
        }

        let keys = Arc::new(ArcSwap::from_pointee(KeySet::new((keys, by_kid))));
        let jwks = settings
            .jwks_url
            .clone()
            .map(|url| Arc::new(jwks::JwksSource::new(url, pinned, keys.clone())));
        Ok(Authenticator {
            pinned,
            hmac,
            keys,
            jwks,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            subject_claim: settings.subject_claim.clone(),
            tenant: settings.tenant.clone(),
            leeway: settings.leeway.as_secs(),
            cache: cache::TokenCache::new(settings.cache_size),
        })
    }

    /// Verify a request's credentials. `authorization` is the single `Authorization` header value
    /// (the proxy rejects duplicates before this), `tenant_header` the value of the configured
    /// tenant header when `TenantSource::Header`. `now` is unix seconds (injected for tests).
    ///
    /// Order: syntax, header, pinned algorithm, signature, and only then claims, so nothing in an
    /// unverified payload is interpreted. `now` is the only clock used.
    ///
    /// A token that passed every token-only check is remembered (`cache`) until its `exp`;
    /// presenting exactly the same token again skips the signature and claim checks, but the
    /// tenant header is still evaluated on every request.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        tenant_header: Option<&[u8]>,
        now: u64,
    ) -> Result<Principal, AuthnError> {
        let raw = bearer_value(authorization.ok_or(AuthnError::MissingToken)?)?;
        // Looked up before the character check: only checked tokens are ever stored, so bytes
        // equal to a stored key passed it already.
        if let Some(verified) = self.cache.get(raw, now, || self.keys.load().generation) {
            return self.principal(&verified, tenant_header);
        }
        let token = token_text(raw)?;
        let verified = Arc::new(self.verify_token(token, now)?);
        self.cache.insert(raw, &verified, now);
        self.principal(&verified, tenant_header)
    }

    /// Tokens currently remembered by the verified-token cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// The full check of everything that depends on the token alone.
    fn verify_token(&self, token: &str, now: u64) -> Result<cache::Verified, AuthnError> {
        let (header_b64, rest) = token.split_once('.').ok_or(AuthnError::InvalidToken)?;
        let (payload_b64, signature_b64) = rest.split_once('.').ok_or(AuthnError::InvalidToken)?;
        if header_b64.is_empty() || signature_b64.is_empty() || signature_b64.contains('.') {
            return Err(AuthnError::InvalidToken);
        }
        let signing_input = token
            .get(..header_b64.len() + 1 + payload_b64.len())
            .ok_or(AuthnError::InvalidToken)?;

        // One buffer for header and payload: a single allocation per request.
        let mut buf = Vec::with_capacity(
            jwt::decoded_len(header_b64.len()) + jwt::decoded_len(payload_b64.len()),
        );
        jwt::b64url_decode_into(header_b64.as_bytes(), &mut buf)
            .map_err(|()| AuthnError::InvalidToken)?;
        let header_len = buf.len();
        jwt::b64url_decode_into(payload_b64.as_bytes(), &mut buf)
            .map_err(|()| AuthnError::InvalidToken)?;
        let (header_bytes, payload_bytes) = buf.split_at(header_len);

        let header = jwt::parse_header(header_bytes).map_err(|()| AuthnError::InvalidToken)?;
        // Exact, case-sensitive names: `none`/`None`/`NONE` are simply unknown.
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthnError::InvalidToken)?;
        if !self.pinned.contains(alg) {
            return Err(AuthnError::InvalidToken);
        }
        let signed_by = self
            .verify_signature(alg, header.kid.as_deref(), signing_input, signature_b64)
            .ok_or(AuthnError::InvalidToken)?;

        let spec = jwt::ClaimSpec {
            subject: &self.subject_claim,
            tenant: match &self.tenant {
                TenantSource::Claim(name) => Some(name),
                TenantSource::Header(_) => None,
            },
            check_issuer: self.issuer.is_some(),
            audience: self.audience.as_deref(),
        };
        let claims =
            jwt::parse_claims(payload_bytes, &spec).map_err(|()| AuthnError::InvalidToken)?;
        self.check_claims(claims, signed_by, now)
    }

    /// The tenant header name when the tenant comes from a header.
    pub fn tenant_header(&self) -> Option<&str> {
        match &self.tenant {
            TenantSource::Header(name) => Some(name),
            TenantSource::Claim(_) => None,
        }
    }

    /// Mint an HS256 token (for `portcullis token` and `demo`); fails without an HS secret.
    pub fn mint_hs256(&self, claims: &serde_json::Value) -> Result<String, IdentitySetupError> {
        let hmac = self.hmac.as_ref().ok_or_else(|| {
            IdentitySetupError::Other(
                "cannot mint a token: no HS secret is configured; set `secret_env`".into(),
            )
        })?;
        let header = jsonwebtoken::Header::new(Algorithm::HS256);
        jsonwebtoken::encode(&header, claims, &hmac.encoding)
            .map_err(|e| IdentitySetupError::Other(format!("cannot mint a token: {e}")))
    }

    /// The HS secret for HMAC algorithms (a `kid` cannot select anything else); for public-key
    /// algorithms the key named by `kid`, or without `kid` every key allowed for `alg`.
    /// `None` when the signature does not verify.
    fn verify_signature(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        signing_input: &str,
        signature_b64: &str,
    ) -> Option<SignedBy> {
        let check = |key: &DecodingKey| {
            matches!(
                jsonwebtoken::crypto::verify(signature_b64, signing_input.as_bytes(), key, alg),
                Ok(true)
            )
        };
        if alg.family() == AlgorithmFamily::Hmac {
            let ok = self.hmac.as_ref().is_some_and(|h| check(&h.decoding));
            return ok.then_some(SignedBy::Secret);
        }
        // One load: the generation recorded is the one of the set that verified.
        let set = self.keys.load();
        let ok = match kid {
            Some(kid) => match set.by_kid.get(kid).and_then(|&i| set.keys.get(i)) {
                Some(k) => k.algs.contains(alg) && check(&k.key),
                None => {
                    // A rotated key we have not seen yet: ask for a (rate-limited) download
                    // in the background; this request fails now, never waits on the network.
                    if let Some(jwks) = &self.jwks {
                        jwks.request_refresh();
                    }
                    false
                }
            },
            None => set
                .keys
                .iter()
                .filter(|k| k.algs.contains(alg))
                .any(|k| check(&k.key)),
        };
        ok.then_some(SignedBy::KeySet(set.generation))
    }

    /// The `jwks_url` refresher, if configured (started by the gateway, `jwks::JwksSource::start`).
    pub fn jwks_source(&self) -> Option<&Arc<jwks::JwksSource>> {
        self.jwks.as_ref()
    }

    /// After a reload with the same `jwks_url`: keep serving the keys already downloaded
    /// instead of failing every token until the first refresh.
    pub fn adopt_keys(&self, previous: &Authenticator) {
        if let (Some(new), Some(old)) = (&self.jwks, &previous.jwks)
            && new.url() == old.url()
        {
            self.keys.store(previous.keys.load_full());
        }
    }

    /// Time, issuer, audience, subject and, with the tenant from a claim, the tenant. The
    /// tenant is last so that `MissingTenant` means "otherwise valid" (with the tenant from a
    /// header, `principal` checks it after this).
    fn check_claims(
        &self,
        claims: jwt::Claims<'_>,
        signed_by: SignedBy,
        now: u64,
    ) -> Result<cache::Verified, AuthnError> {
        let exp = claims.exp.ok_or(AuthnError::InvalidToken)?;
        // RFC 7519 §4.1.4: valid only while now < exp (plus leeway).
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthnError::TokenExpired);
        }
        // RFC 7519 §4.1.5: valid from nbf on (minus leeway).
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(AuthnError::InvalidToken);
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(AuthnError::InvalidToken);
        }
        if self.audience.is_some() && claims.aud_matches != Some(true) {
            return Err(AuthnError::InvalidToken);
        }
        let subject = claims.subject.ok_or(AuthnError::InvalidToken)?;
        if !jwt::valid_subject(subject.as_bytes()) {
            return Err(AuthnError::InvalidToken);
        }
        let tenant = match &self.tenant {
            TenantSource::Claim(_) => {
                Some(checked_tenant(claims.tenant.as_deref().map(str::as_bytes))?)
            }
            TenantSource::Header(_) => None,
        };
        Ok(cache::Verified {
            subject: subject.into(),
            tenant,
            mfa: claims.mfa,
            exp,
            nbf: claims.nbf,
            key_generation: match signed_by {
                SignedBy::Secret => None,
                SignedBy::KeySet(generation) => Some(generation),
            },
        })
    }

    /// The caller: the verified token plus, with the tenant from a header, this request's
    /// tenant header (checked here on every request, cached token or not).
    fn principal(
        &self,
        verified: &cache::Verified,
        tenant_header: Option<&[u8]>,
    ) -> Result<Principal, AuthnError> {
        let tenant = match (&self.tenant, &verified.tenant) {
            (TenantSource::Header(_), _) => checked_tenant(tenant_header)?,
            (TenantSource::Claim(_), Some(tenant)) => tenant.clone(),
            // INVARIANT: `check_claims` sets the tenant in claim mode; fail closed if not.
            (TenantSource::Claim(_), None) => return Err(AuthnError::MissingTenant),
        };
        Ok(Principal {
            tenant: tenant.into(),
            subject: verified.subject.as_ref().to_owned(),
            mfa: verified.mfa,
            expires_at: verified.exp,
        })
    }
}

/// A tenant (claim or header): missing or empty is `MissingTenant`, outside the charset invalid.
fn checked_tenant(tenant: Option<&[u8]>) -> Result<Box<str>, AuthnError> {
    match tenant {
        None | Some([]) => Err(AuthnError::MissingTenant),
        Some(t) if !jwt::valid_tenant(t) => Err(AuthnError::InvalidToken),
        // valid_tenant admits ASCII only, so this never fails.
        Some(t) => std::str::from_utf8(t)
            .map(Box::from)
            .map_err(|_| AuthnError::InvalidToken),
    }
}

/// `Bearer <token>`: scheme case-insensitive (RFC 9110 §11.1), exactly one space, then 1 to
/// [`jwt::MAX_TOKEN_LEN`] bytes (checked by [`token_text`]). Anything else is invalid.
fn bearer_value(value: &[u8]) -> Result<&[u8], AuthnError> {
    let scheme = value.get(..6).ok_or(AuthnError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || value.get(6) != Some(&b' ') {
        return Err(AuthnError::InvalidToken);
    }
    let token = value.get(7..).unwrap_or_default();
    if token.is_empty() || token.len() > jwt::MAX_TOKEN_LEN {
        return Err(AuthnError::InvalidToken);
    }
    Ok(token)
}

/// One token of base64url characters and dots.
fn token_text(token: &[u8]) -> Result<&str, AuthnError> {
    if !token
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(AuthnError::InvalidToken);
    }
    std::str::from_utf8(token).map_err(|_| AuthnError::InvalidToken)
}

// === build helpers ===

fn read_secret(name: &str) -> Result<Vec<u8>, IdentitySetupError> {
    match std::env::var_os(name) {
        None => Err(IdentitySetupError::MissingSecret(name.to_owned())),
        Some(v) if v.is_empty() => Err(IdentitySetupError::MissingSecret(name.to_owned())),
        Some(v) => v.into_string().map(String::into_bytes).map_err(|_| {
            IdentitySetupError::Other(format!(
                "environment variable `{name}` is not valid UTF-8; the secret is used as raw UTF-8 bytes"
            ))
        }),
    }
}

/// The claim parser interprets the registered claims itself; a configured claim name equal to
/// one of them would be ambiguous.
fn check_claim_name(what: &str, name: &str) -> Result<(), IdentitySetupError> {
    if name.is_empty() || jwt::RESERVED_CLAIMS.contains(&name) {
        return Err(IdentitySetupError::Other(format!(
            "{what} `{name}` is not allowed; it must be non-empty and not one of {}",
            jwt::RESERVED_CLAIMS.join(", ")
        )));
    }
    Ok(())
}

impl Drop for Authenticator {
    /// Stops the JWKS refresher with the last authenticator that uses it (a reload replaces it).
    fn drop(&mut self) {
        if let Some(jwks) = &self.jwks {
            jwks.stop();
        }
    }
}

type KeyMap = (Vec<PublicKey>, HashMap<String, usize>);

/// Read and check the JWKS file once. Encryption keys are skipped; keys whose type/`alg`
/// allows none of the pinned algorithms are skipped; anything malformed or ambiguous (symmetric
/// keys, unknown curves, `alg` contradicting the key type, duplicate `kid`) is an error.
fn load_jwks(path: &std::path::Path, pinned: AlgSet) -> Result<KeyMap, IdentitySetupError> {
    let shown = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| IdentitySetupError::JwksRead {
        path: shown(),
        source,
    })?;
    parse_jwks(&bytes, &shown(), pinned)
}

/// Check a JWKS document (file or URL; `source` names it in errors).
fn parse_jwks(bytes: &[u8], source: &str, pinned: AlgSet) -> Result<KeyMap, IdentitySetupError> {
    let invalid = |message: String| IdentitySetupError::JwksInvalid {
        path: source.to_owned(),
        message,
    };
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;

    let mut keys = Vec::new();
    let mut by_kid = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let label = match &jwk.common.key_id {
            Some(kid) => format!("`{kid}`"),
            None => format!("#{i}"),
        };
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(_) => continue,
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgSet::of(AlgorithmFamily::Rsa.algorithms()),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => AlgSet::of(&[Algorithm::ES256]),
                EllipticCurve::P384 => AlgSet::of(&[Algorithm::ES384]),
                ref other => {
                    return Err(invalid(format!(
                        "key {label}: curve {other:?} is not supported; use P-256 or P-384"
                    )));
                }
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => AlgSet::of(&[Algorithm::EdDSA]),
                ref other => {
                    return Err(invalid(format!(
                        "key {label}: curve {other:?} is not supported; use Ed25519"
                    )));
                }
            },
            AlgorithmParameters::OctetKey(_) => {
                return Err(invalid(format!(
                    "key {label}: symmetric (`oct`) keys do not belong in the JWKS file; use \
                     `secret_env` for HS algorithms"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "key {label}: unsupported key type; use RSA, EC or OKP"
                )));
            }
        };
        let algs = match jwk.common.key_algorithm {
            None => family,
            Some(key_alg) => {
                let alg = Algorithm::try_from(key_alg)
                    .ok()
                    .filter(|&a| family.contains(a))
                    .ok_or_else(|| {
                        invalid(format!(
                            "key {label}: `alg` {key_alg:?} does not match the key type; \
                             valid: {family:?}"
                        ))
                    })?;
                AlgSet::of(&[alg])
            }
        };
        let algs = algs.intersect(pinned);
        if algs.is_empty() {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {label}: {e}")))?;
        if let Some(kid) = &jwk.common.key_id
            && by_kid.insert(kid.clone(), keys.len()).is_some()
        {
            return Err(invalid(format!(
                "duplicate kid {label}; each key needs a unique `kid`"
            )));
        }
        keys.push(PublicKey { algs, key });
    }
    Ok((keys, by_kid))
}
