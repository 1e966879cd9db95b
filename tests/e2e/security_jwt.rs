//! JWT attacks (security.md §3.16–3.17, R8, R9): every forged, confused, expired or
//! malformed token is a 401 with nothing forwarded; valid public-key tokens work end to end;
//! the tenant comes only from the verified token.

use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ROUTE: &str = "/api/campaigns/1";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn jwks_path() -> String {
    format!(
        "{}/tests/fixtures/jwt/jwks.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// SECURITY_CONFIG with `[identity.jwt]` replaced by `jwt` (a TOML table body).
fn config_with_jwt(jwt: &str) -> String {
    let hs = "algorithms = [\"HS256\"]\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\n";
    assert!(SECURITY_CONFIG.contains(hs));
    SECURITY_CONFIG.replace(hs, jwt)
}

/// Public-key algorithms from the fixture JWKS (no HS secret configured).
fn pk_config(algorithms: &str) -> String {
    config_with_jwt(&format!(
        "algorithms = {algorithms}\njwks_file = \"{}\"\n",
        jwks_path()
    ))
}

/// Tiny unpadded base64url encoder (RFC 7515 §2), so tests can hand-build tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
        }
    }
    out
}

/// `header.payload.signature` from raw JSON texts, signed with `key` under `alg`.
fn signed_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET)
}

/// Valid claims for vic@acme (a viewer, allowed on ROUTE), as JSON text.
fn vic_claims() -> String {
    format!(r#"{{"sub":"vic","tenant":"acme","exp":{}}}"#, now() + 3600)
}

fn encode_with(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn vic_json() -> serde_json::Value {
    serde_json::json!({"sub": "vic", "tenant": "acme", "exp": now() + 3600})
}

struct Env {
    up: Upstream,
    gw: TestGateway,
}

async fn env_with(config: &str) -> Env {
    let up = Upstream::start().await;
    let gw = start_gateway(config, &up).await;
    Env { up, gw }
}

async fn env() -> Env {
    env_with(SECURITY_CONFIG).await
}

impl Env {
    /// The token is refused with 401 `reason` and nothing reaches the upstream.
    async fn rejects(&self, token: &str, reason: &str, what: &str) {
        let before = self.up.count();
        let r = request(self.gw.addr, "GET", ROUTE, Some(token), &[]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.raw);
        assert_eq!(r.json()["error"], "unauthenticated", "{what}");
        assert_eq!(r.reason(), reason, "{what}: {}", r.body);
        assert_eq!(r.header("x-authz-source"), Some("gateway"), "{what}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{what}"
        );
        assert_eq!(self.up.count(), before, "{what}: forwarded");
    }

    /// The token is accepted: 200 from the upstream, which sees the token's identity.
    async fn accepts(&self, token: &str, subject: &str, tenant: &str, what: &str) -> Recorded {
        let before = self.up.count();
        let r = request(self.gw.addr, "GET", ROUTE, Some(token), &[]).await;
        assert_eq!(r.status, 200, "{what}: {}", r.raw);
        assert_eq!(r.body, "upstream ok");
        assert_eq!(self.up.count(), before + 1, "{what}");
        let seen = self.up.last().unwrap();
        assert_eq!(seen.target, ROUTE);
        assert_eq!(seen.header("x-authz-subject"), Some(subject), "{what}");
        assert_eq!(seen.header("x-authz-tenant"), Some(tenant), "{what}");
        seen
    }
}

#[tokio::test]
async fn control_a_valid_hs256_token_is_accepted() {
    let e = env().await;
    e.accepts(&token("vic", "acme"), "vic", "acme", "HS256")
        .await;
}

#[tokio::test]
async fn alg_none_in_any_case_is_rejected() {
    let e = env().await;
    let payload = b64url(vic_claims().as_bytes());
    for alg in ["none", "NONE", "None", "nOnE", ""] {
        let header = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        for signature in ["", "AAAA", "c2ln"] {
            let t = format!("{header}.{payload}.{signature}");
            e.rejects(
                &t,
                "invalid_token",
                &format!("alg={alg:?} sig={signature:?}"),
            )
            .await;
        }
        // two-part form
        e.rejects(
            &format!("{header}.{payload}"),
            "invalid_token",
            &format!("alg={alg:?} 2 parts"),
        )
        .await;
    }
    // Missing alg altogether.
    let header = b64url(br#"{"typ":"JWT"}"#);
    e.rejects(&format!("{header}.{payload}."), "invalid_token", "no alg")
        .await;
}

#[tokio::test]
async fn stripped_or_truncated_signature_is_rejected() {
    let e = env().await;
    let good = token("vic", "acme");
    let (input, sig) = good.rsplit_once('.').unwrap();
    e.rejects(&format!("{input}."), "invalid_token", "empty signature")
        .await;
    e.rejects(
        &format!("{input}.{}", &sig[..sig.len() - 4]),
        "invalid_token",
        "truncated",
    )
    .await;
    let mut flipped = sig.as_bytes().to_vec();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    e.rejects(
        &format!("{input}.{}", String::from_utf8(flipped).unwrap()),
        "invalid_token",
        "flipped",
    )
    .await;
    e.rejects(&format!("{good}.extra"), "invalid_token", "four parts")
        .await;
}

#[tokio::test]
async fn hs_rs_confusion_is_rejected_on_an_rs256_only_gateway() {
    let e = env_with(&pk_config(r#"["RS256"]"#)).await;
    let public_pem = fixture("rsa.pub.pem");
    let as_secret = EncodingKey::from_secret(&public_pem);
    for header in [
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"alg":"HS256","kid":"rsa-1"}"#,
        r#"{"alg":"RS256","kid":"rsa-1"}"#,
        r#"{"alg":"RS256"}"#,
    ] {
        let t = signed_raw(header, &vic_claims(), &as_secret, Algorithm::HS256);
        e.rejects(&t, "invalid_token", header).await;
    }
    // Also with the PEM without its trailing newline, a common variant of the attack.
    let trimmed = EncodingKey::from_secret(public_pem.trim_ascii_end());
    let t = signed_raw(
        r#"{"alg":"HS256","kid":"rsa-1"}"#,
        &vic_claims(),
        &trimmed,
        Algorithm::HS256,
    );
    e.rejects(&t, "invalid_token", "trimmed pem").await;
    // Control: the real RS256 token works on this gateway.
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
    e.accepts(
        &encode_with(Algorithm::RS256, Some("rsa-1"), &rsa, &vic_json()),
        "vic",
        "acme",
        "RS256",
    )
    .await;
}

#[tokio::test]
async fn hs_rs_confusion_is_rejected_when_both_families_are_pinned() {
    let config = config_with_jwt(&format!(
        "algorithms = [\"HS256\", \"RS256\"]\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\njwks_file = \"{}\"\n",
        jwks_path()
    ));
    let e = env_with(&config).await;
    let as_secret = EncodingKey::from_secret(&fixture("rsa.pub.pem"));
    for header in [r#"{"alg":"HS256","kid":"rsa-1"}"#, r#"{"alg":"HS256"}"#] {
        let t = signed_raw(header, &vic_claims(), &as_secret, Algorithm::HS256);
        e.rejects(&t, "invalid_token", header).await;
    }
    // The HS secret cannot verify an RS256-labelled token either.
    let t = signed_raw(
        r#"{"alg":"RS256","kid":"rsa-1"}"#,
        &vic_claims(),
        &hs_key(),
        Algorithm::HS256,
    );
    e.rejects(&t, "invalid_token", "RS256 header, HMAC with the secret")
        .await;
    e.accepts(&token("vic", "acme"), "vic", "acme", "HS256 control")
        .await;
}

#[tokio::test]
async fn valid_rs256_es256_and_eddsa_tokens_are_accepted_end_to_end() {
    let e = env_with(&pk_config(r#"["RS256", "ES256", "EdDSA"]"#)).await;
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&fixture("ec.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap();
    let cases = [
        (Algorithm::RS256, "rsa-1", &rsa),
        (Algorithm::ES256, "ec-1", &ec),
        (Algorithm::EdDSA, "ed-1", &ed),
    ];
    for (alg, kid, key) in cases {
        let seen = e
            .accepts(
                &encode_with(alg, Some(kid), key, &vic_json()),
                "vic",
                "acme",
                kid,
            )
            .await;
        assert_eq!(seen.header("x-authz-roles"), Some("viewer"));
    }
    // A kid naming another key, or an unknown/traversal kid, never verifies.
    for (alg, kid, key) in [
        (Algorithm::RS256, "ec-1", &rsa),
        (Algorithm::ES256, "rsa-1", &ec),
        (Algorithm::EdDSA, "rsa-1", &ed),
        (Algorithm::RS256, "../../../../dev/null", &rsa),
        (Algorithm::RS256, "rsa-1' OR '1'='1", &rsa),
        (Algorithm::RS256, "rsa-2", &rsa),
    ] {
        e.rejects(
            &encode_with(alg, Some(kid), key, &vic_json()),
            "invalid_token",
            kid,
        )
        .await;
    }
    // A key outside the JWKS, claiming a JWKS kid.
    let other = EncodingKey::from_rsa_pem(&fixture("rsa-other.pem")).unwrap();
    e.rejects(
        &encode_with(Algorithm::RS256, Some("rsa-1"), &other, &vic_json()),
        "invalid_token",
        "rsa-other",
    )
    .await;
    e.rejects(
        &encode_with(Algorithm::RS256, None, &other, &vic_json()),
        "invalid_token",
        "rsa-other, no kid",
    )
    .await;
    // No HS secret on this gateway: an HS256 token is refused.
    e.rejects(
        &token("vic", "acme"),
        "invalid_token",
        "HS256 on a public-key gateway",
    )
    .await;
}

#[tokio::test]
async fn unpinned_public_key_algorithm_is_rejected() {
    // Only RS256 pinned: valid ES256 and EdDSA tokens from keys in the same JWKS are refused.
    let e = env_with(&pk_config(r#"["RS256"]"#)).await;
    let ec = EncodingKey::from_ec_pem(&fixture("ec.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap();
    e.rejects(
        &encode_with(Algorithm::ES256, Some("ec-1"), &ec, &vic_json()),
        "invalid_token",
        "ES256",
    )
    .await;
    e.rejects(
        &encode_with(Algorithm::EdDSA, Some("ed-1"), &ed, &vic_json()),
        "invalid_token",
        "EdDSA",
    )
    .await;
    // RS384/PS256 with the pinned RSA key are other algorithms.
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
    for alg in [Algorithm::RS384, Algorithm::PS256] {
        e.rejects(
            &encode_with(alg, Some("rsa-1"), &rsa, &vic_json()),
            "invalid_token",
            &format!("{alg:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_rejected() {
    let e = env().await;
    let t = token_with(serde_json::json!({"sub": "vic", "tenant": "acme", "exp": now() - 3600}));
    e.rejects(&t, "token_expired", "expired an hour ago").await;
    let t = token_with(serde_json::json!({"sub": "vic", "tenant": "acme", "exp": now() - 120}));
    e.rejects(&t, "token_expired", "expired beyond the leeway")
        .await;
    let t = token_with(serde_json::json!({"sub": "vic", "tenant": "acme", "exp": 0}));
    e.rejects(&t, "token_expired", "exp 0").await;
    let t = token_with(serde_json::json!({"sub": "vic", "tenant": "acme"}));
    e.rejects(&t, "invalid_token", "no exp").await;
    let t = token_with(
        serde_json::json!({"sub": "vic", "tenant": "acme", "exp": now() + 7200, "nbf": now() + 3600}),
    );
    e.rejects(&t, "invalid_token", "nbf in the future").await;
}

#[tokio::test]
async fn claim_type_confusion_is_rejected() {
    let e = env().await;
    let exp = now() + 3600;
    for claims in [
        serde_json::json!({"sub": "vic", "tenant": "acme", "exp": exp.to_string()}),
        serde_json::json!({"sub": "vic", "tenant": "acme", "exp": exp as f64 + 0.5}),
        serde_json::json!({"sub": "vic", "tenant": ["acme"], "exp": exp}),
        serde_json::json!({"sub": 42, "tenant": "acme", "exp": exp}),
        serde_json::json!({"sub": ["vic"], "tenant": "acme", "exp": exp}),
        serde_json::json!({"sub": "vic", "tenant": {"id": "acme"}, "exp": exp}),
        serde_json::json!({"sub": "vic", "tenant": "acme:*", "exp": exp}),
        serde_json::json!({"sub": "vic", "tenant": "acme", "exp": exp, "nbf": "0"}),
        serde_json::json!({"sub": "", "tenant": "acme", "exp": exp}),
    ] {
        e.rejects(
            &token_with(claims.clone()),
            "invalid_token",
            &claims.to_string(),
        )
        .await;
    }
}

#[tokio::test]
async fn wrong_audience_and_issuer_are_rejected_when_configured() {
    let config = config_with_jwt(
        "algorithms = [\"HS256\"]\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\nissuer = \"https://idp.example/\"\naudience = \"portcullis\"\n",
    );
    let e = env_with(&config).await;
    let exp = now() + 3600;
    let base = |extra: serde_json::Value| {
        let mut claims = serde_json::json!({"sub": "vic", "tenant": "acme", "exp": exp});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let good = base(serde_json::json!({"iss": "https://idp.example/", "aud": "portcullis"}));
    e.accepts(&token_with(good), "vic", "acme", "iss+aud").await;
    let arr =
        base(serde_json::json!({"iss": "https://idp.example/", "aud": ["other", "portcullis"]}));
    e.accepts(&token_with(arr), "vic", "acme", "aud array")
        .await;
    for claims in [
        base(serde_json::json!({"iss": "https://idp.example/", "aud": "other"})),
        base(serde_json::json!({"iss": "https://idp.example/", "aud": ["other"]})),
        base(serde_json::json!({"iss": "https://idp.example/", "aud": "Portcullis"})),
        base(serde_json::json!({"iss": "https://idp.example/"})),
        base(serde_json::json!({"iss": "https://evil.example/", "aud": "portcullis"})),
        base(serde_json::json!({"iss": "https://idp.example", "aud": "portcullis"})),
        base(serde_json::json!({"aud": "portcullis"})),
        base(serde_json::json!({"iss": ["https://idp.example/"], "aud": "portcullis"})),
        base(serde_json::json!({"iss": "https://idp.example/", "aud": 1})),
    ] {
        e.rejects(
            &token_with(claims.clone()),
            "invalid_token",
            &claims.to_string(),
        )
        .await;
    }
}

#[tokio::test]
async fn token_signed_with_another_secret_is_rejected() {
    let e = env().await;
    let other = EncodingKey::from_secret(b"not-the-portcullis-secret-0123456");
    e.rejects(
        &encode_with(Algorithm::HS256, None, &other, &vic_json()),
        "invalid_token",
        "other secret",
    )
    .await;
    let empty = EncodingKey::from_secret(b"");
    e.rejects(
        &encode_with(Algorithm::HS256, None, &empty, &vic_json()),
        "invalid_token",
        "empty secret",
    )
    .await;
    // HS384/HS512 with the right secret are not the pinned algorithm.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        e.rejects(
            &encode_with(alg, None, &hs_key(), &vic_json()),
            "invalid_token",
            &format!("{alg:?}"),
        )
        .await;
    }
}

#[tokio::test]
async fn crit_and_embedded_or_remote_key_headers_are_rejected() {
    let e = env().await;
    let jwk = r#"{"kty":"oct","k":"cG9ydGN1bGxpcy10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5"}"#;
    for header in [
        r#"{"alg":"HS256","crit":["exp"]}"#.to_owned(),
        r#"{"alg":"HS256","crit":[]}"#.to_owned(),
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#.to_owned(),
        r#"{"alg":"HS256","jku":"https://evil.example/jwks.json"}"#.to_owned(),
        format!(r#"{{"alg":"HS256","jwk":{jwk}}}"#),
        r#"{"alg":"HS256","x5u":"https://evil.example/cert.pem"}"#.to_owned(),
        r#"{"alg":"HS256","x5c":["MIIB"]}"#.to_owned(),
        r#"{"alg":"HS256","alg":"HS256"}"#.to_owned(),
        r#"{"alg":"HS256","kid":"a","kid":"b"}"#.to_owned(),
    ] {
        // Correctly signed with the real secret: only the header parameter can cause the 401.
        let t = signed_raw(&header, &vic_claims(), &hs_key(), Algorithm::HS256);
        e.rejects(&t, "invalid_token", &header).await;
    }
    // Control: the same construction with a plain header is accepted.
    let t = signed_raw(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &vic_claims(),
        &hs_key(),
        Algorithm::HS256,
    );
    e.accepts(&t, "vic", "acme", "hand-built control").await;
}

#[tokio::test]
async fn duplicate_claim_keys_are_rejected() {
    let e = env().await;
    let exp = now() + 3600;
    for payload in [
        format!(r#"{{"sub":"vic","sub":"root","tenant":"acme","exp":{exp}}}"#),
        format!(r#"{{"sub":"root","sub":"vic","tenant":"acme","exp":{exp}}}"#),
        format!(r#"{{"sub":"vic","tenant":"globex","tenant":"acme","exp":{exp}}}"#),
        format!(
            r#"{{"sub":"vic","tenant":"acme","exp":{exp},"exp":{}}}"#,
            exp + 99_999_999
        ),
        format!(r#"{{"sub":"vic","tenant":"acme","exp":{exp},"x":1,"x":2}}"#),
        format!(r#"{{"sub":"vic","tenant":"acme","exp":{exp},"s\u0075b":"root"}}"#),
    ] {
        let t = signed_raw(r#"{"alg":"HS256"}"#, &payload, &hs_key(), Algorithm::HS256);
        e.rejects(&t, "invalid_token", &payload).await;
    }
    // Trailing data after the object, and a non-object payload.
    for payload in [
        format!("{}x", vic_claims()),
        "[]".to_owned(),
        "null".to_owned(),
    ] {
        let t = signed_raw(r#"{"alg":"HS256"}"#, &payload, &hs_key(), Algorithm::HS256);
        e.rejects(&t, "invalid_token", &payload).await;
    }
}

#[tokio::test]
async fn malformed_bearer_values_are_rejected() {
    let e = env().await;
    let good = token("vic", "acme");
    for value in [
        format!("Bearer  {good}"),
        format!("Basic {good}"),
        format!("Bearer{good}"),
        format!("Bearer {}", good.replace('.', "=.")),
        format!("Bearer {}", "a".repeat(9000)),
    ] {
        let before = e.up.count();
        let r = request(
            e.gw.addr,
            "GET",
            ROUTE,
            None,
            &[("Authorization", value.as_str())],
        )
        .await;
        assert_eq!(r.status, 401, "{value:.40}: {}", r.raw);
        assert_eq!(r.reason(), "invalid_token", "{value:.40}");
        assert_eq!(e.up.count(), before);
    }
    // A token in the query string is not a credential.
    let r = request(
        e.gw.addr,
        "GET",
        &format!("{ROUTE}?access_token={good}"),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), "missing_token");
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn tenant_comes_only_from_the_verified_token() {
    let e = env().await;
    // mallory is a viewer in globex only; naming acme in headers does not make the acme
    // admin's grants (or anyone's) apply.
    let mallory = token("mallory", "globex");
    let before = e.up.count();
    let r = request(
        e.gw.addr,
        "GET",
        "/admin/users",
        Some(&mallory),
        &[
            ("X-Tenant-Id", "acme"),
            ("X-Authz-Tenant", "acme"),
            ("X-Tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.reason(), "missing_permission");
    assert_eq!(e.up.count(), before);
    // A subject valid in acme but presenting a globex token has no acme grants.
    let r = request(
        e.gw.addr,
        "GET",
        "/admin/users",
        Some(&token("root", "globex")),
        &[("X-Tenant-Id", "acme")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.raw);
    assert_eq!(r.reason(), "missing_permission");
    assert_eq!(e.up.count(), before);
    // The allowed case forwards the token's tenant and drops the client's tenant headers.
    let r = request(
        e.gw.addr,
        "GET",
        ROUTE,
        Some(&token("vic", "acme")),
        &[("X-Tenant-Id", "globex")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.header("x-authz-tenant"), Some("acme"));
    assert_eq!(seen.header("x-tenant-id"), None);
    // Query and path tenants are not sources either.
    let r = request(
        e.gw.addr,
        "GET",
        "/admin/users?tenant=acme",
        Some(&mallory),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(e.up.count(), before + 1);
}

#[tokio::test]
async fn missing_tenant_is_refused_without_a_default() {
    let e = env().await;
    let t = token_with(serde_json::json!({"sub": "vic", "exp": now() + 3600}));
    e.rejects(&t, "missing_tenant", "no tenant claim").await;
    let before = e.up.count();
    let r = request(
        e.gw.addr,
        "GET",
        ROUTE,
        Some(&t),
        &[("X-Tenant-Id", "acme")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), "missing_tenant");
    assert_eq!(e.up.count(), before);
}

/// `[identity.tenant] from = "header:x-tenant-id"`: the tenant is the header's, never the
/// token's claim; the subject's grants in that tenant decide; the header is not forwarded (the
/// upstream gets `x-authz-tenant`); no header, a malformed value or two headers are refused.
#[tokio::test]
async fn tenant_from_a_configured_header() {
    let config = SECURITY_CONFIG.replace(
        "[grants]\n",
        "[identity.tenant]\nfrom = \"header:x-tenant-id\"\n\n[grants]\n",
    );
    let e = env_with(&config).await;
    let vic = token_with(serde_json::json!({"sub": "vic", "exp": now() + 3600}));
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let (addr, vic) = (e.gw.addr, vic.clone());
        async move { request(addr, "GET", ROUTE, Some(&vic), headers).await }
    };
    let r = get(&[("X-Tenant-Id", "acme")]).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let seen = e.up.last().unwrap();
    assert_eq!(seen.header("x-authz-tenant"), Some("acme"));
    assert_eq!(seen.header("x-authz-subject"), Some("vic"));
    assert_eq!(
        seen.header("x-tenant-id"),
        None,
        "the tenant header was forwarded"
    );

    let before = e.up.count();
    // vic holds nothing in globex: the header picks the tenant, the grants decide.
    let r = get(&[("X-Tenant-Id", "globex")]).await;
    assert_eq!((r.status, r.reason()), (403, "missing_permission".into()));
    // A token's tenant claim is not a source in header mode.
    let claimed =
        token_with(serde_json::json!({"sub": "vic", "tenant": "acme", "exp": now() + 3600}));
    let r = request(e.gw.addr, "GET", ROUTE, Some(&claimed), &[]).await;
    assert_eq!(
        (r.status, r.reason()),
        (401, "missing_tenant".into()),
        "{}",
        r.raw
    );
    let r = get(&[]).await;
    assert_eq!(
        (r.status, r.reason()),
        (401, "missing_tenant".into()),
        "{}",
        r.raw
    );
    let r = get(&[("X-Tenant-Id", "ac me")]).await;
    assert_eq!(r.status, 401, "{}", r.raw);
    let r = get(&[("X-Tenant-Id", "acme"), ("X-Tenant-Id", "globex")]).await;
    assert_eq!(
        (r.status, r.reason()),
        (400, "duplicate_header".into()),
        "{}",
        r.raw
    );
    assert_eq!(e.up.count(), before, "a refused request was forwarded");
}
