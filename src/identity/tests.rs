//! Identity tests: every case asserts the exact `AuthnError` variant (security.md §3.16, R8/R9).

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const SECRET: &[u8] = b"portcullis-test-secret-0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn settings(algs: &[&str]) -> JwtSettings {
    JwtSettings {
        algorithms: algs.iter().map(|a| a.to_string()).collect(),
        secret_env: None,
        jwks_file: Some(fixture("jwks.json")),
        jwks_url: None,
        issuer: None,
        audience: None,
        subject_claim: "sub".into(),
        tenant: TenantSource::Claim("tenant".into()),
        leeway: Duration::from_secs(30),
        cache_size: DEFAULT_CACHE_SIZE,
    }
}

fn hs(algs: &[&str]) -> Authenticator {
    let mut s = settings(algs);
    s.jwks_file = None;
    Authenticator::build_with_secret(&s, Some(SECRET)).unwrap()
}

fn build(s: &JwtSettings) -> Authenticator {
    Authenticator::build_with_secret(s, Some(SECRET)).unwrap()
}

fn all() -> Authenticator {
    build(&settings(&["HS256", "RS256", "ES256", "EdDSA"]))
}

fn claims() -> Value {
    json!({ "sub": "alice", "tenant": "acme", "exp": NOW + 300 })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn pem_key(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(file)).unwrap();
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no PEM for {other:?}"),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign_hs(alg: Algorithm, claims: &Value) -> String {
    sign(alg, None, &EncodingKey::from_secret(SECRET), claims)
}

fn sign_pem(alg: Algorithm, kid: Option<&str>, file: &str, claims: &Value) -> String {
    sign(alg, kid, &pem_key(alg, file), claims)
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A correctly HS256-signed token from raw header and payload JSON text, for the cases
/// `jsonwebtoken::encode` cannot produce (duplicate keys, forbidden header parameters).
fn raw_hs256(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{sig}")
}

fn std_payload() -> String {
    format!(r#"{{"sub":"alice","tenant":"acme","exp":{}}}"#, NOW + 300)
}

fn auth(a: &Authenticator, token: &str) -> Result<Principal, AuthnError> {
    a.authenticate(Some(format!("Bearer {token}").as_bytes()), None, NOW)
}

fn auth_at(a: &Authenticator, token: &str, now: u64) -> Result<Principal, AuthnError> {
    a.authenticate(Some(format!("Bearer {token}").as_bytes()), None, now)
}

fn alice() -> Principal {
    Principal {
        tenant: "acme".into(),
        subject: "alice".into(),
        mfa: false,
        expires_at: NOW + 300,
    }
}

use AuthnError::{InvalidToken, MissingTenant, MissingToken, TokenExpired};

// === valid tokens ===

#[test]
fn hs256_valid() {
    let a = hs(&["HS256"]);
    assert_eq!(auth(&a, &sign_hs(Algorithm::HS256, &claims())), Ok(alice()));
}

#[test]
fn hs384_and_hs512_valid_when_pinned() {
    let a = hs(&["HS384", "HS512"]);
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_eq!(auth(&a, &sign_hs(alg, &claims())), Ok(alice()), "{alg:?}");
    }
}

#[test]
fn rs256_valid_with_and_without_kid() {
    let a = all();
    let t = sign_pem(Algorithm::RS256, Some("rsa-1"), "rsa.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
    let t = sign_pem(Algorithm::RS256, None, "rsa.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
}

#[test]
fn es256_valid_with_and_without_kid() {
    let a = all();
    let t = sign_pem(Algorithm::ES256, Some("ec-1"), "ec.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
    let t = sign_pem(Algorithm::ES256, None, "ec.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
}

#[test]
fn eddsa_valid() {
    let a = all();
    let t = sign_pem(Algorithm::EdDSA, Some("ed-1"), "ed25519.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
}

#[test]
fn hs_token_kid_is_ignored() {
    // The HS secret is the only HMAC key; a kid cannot select anything else for HS tokens.
    let a = all();
    let t = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(SECRET),
        &claims(),
    );
    assert_eq!(auth(&a, &t), Ok(alice()));
}

// === algorithm attacks ===

#[test]
fn alg_none_any_case_is_rejected() {
    let a = all();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        let unsigned = format!(
            "{}.{}.",
            b64(header.as_bytes()),
            b64(std_payload().as_bytes())
        );
        assert_eq!(auth(&a, &unsigned), Err(InvalidToken), "{alg} unsigned");
        // Same, with a (valid HS256) signature attached.
        let signed = raw_hs256(&header, &std_payload());
        assert_eq!(auth(&a, &signed), Err(InvalidToken), "{alg} signed");
    }
}

#[test]
fn alg_names_are_case_sensitive() {
    let a = hs(&["HS256"]);
    let t = raw_hs256(r#"{"alg":"hs256"}"#, &std_payload());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
}

#[test]
fn hs_rs_confusion_is_rejected() {
    // The attacker HMAC-signs with the RSA public key (PEM text) as the secret.
    let public_pem = std::fs::read(fixture("rsa.pub.pem")).unwrap();
    let forged_key = EncodingKey::from_secret(&public_pem);
    for kid in [Some("rsa-1"), None] {
        let forged = sign(Algorithm::HS256, kid, &forged_key, &claims());
        // Only RS256 pinned: HS256 is not even considered.
        assert_eq!(
            auth(&build(&settings(&["RS256"])), &forged),
            Err(InvalidToken)
        );
        // Both pinned: HS256 verifies only against the configured secret, never the RSA key.
        assert_eq!(auth(&all(), &forged), Err(InvalidToken));
    }
    // Without any HS secret at all.
    let s = settings(&["RS256"]);
    let a = Authenticator::build_with_secret(&s, None).unwrap();
    let forged = sign(Algorithm::HS256, Some("rsa-1"), &forged_key, &claims());
    assert_eq!(auth(&a, &forged), Err(InvalidToken));
}

#[test]
fn alg_not_in_pinned_list_is_rejected() {
    let a = build(&settings(&["RS256"]));
    let t = sign_pem(Algorithm::ES256, Some("ec-1"), "ec.pem", &claims());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    let t = sign_pem(Algorithm::EdDSA, Some("ed-1"), "ed25519.pem", &claims());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    let a = hs(&["HS256"]);
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS512, &claims())),
        Err(InvalidToken)
    );
}

#[test]
fn alg_must_match_the_keys_alg() {
    // rsa-1 declares alg RS256: a PS256 signature by the same key is refused even when pinned.
    // The same public key listed without `alg` ("rsa-any") may verify any pinned RSA algorithm.
    let dir = tempfile::tempdir().unwrap();
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    let rsa_any = with(
        without(jwks["keys"][0].clone(), "alg"),
        "kid",
        json!("rsa-any"),
    );
    let path = dir.path().join("jwks.json");
    let keys = json!({ "keys": [jwks["keys"][0].clone(), rsa_any] });
    std::fs::write(&path, keys.to_string()).unwrap();
    let mut s = settings(&["RS256", "PS256"]);
    s.jwks_file = Some(path);
    let a = build(&s);
    let t = sign_pem(Algorithm::PS256, Some("rsa-1"), "rsa.pem", &claims());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    let t = sign_pem(Algorithm::PS256, Some("rsa-any"), "rsa.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
    let t = sign_pem(Algorithm::RS256, Some("rsa-any"), "rsa.pem", &claims());
    assert_eq!(auth(&a, &t), Ok(alice()));
    // An ES256 token naming the RSA key's kid.
    let a = all();
    let t = sign_pem(Algorithm::ES256, Some("rsa-1"), "ec.pem", &claims());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
}

#[test]
fn wrong_key_and_bad_signature_are_rejected() {
    let a = all();
    for kid in [Some("rsa-1"), None] {
        let t = sign_pem(Algorithm::RS256, kid, "rsa-other.pem", &claims());
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{kid:?}");
    }
    let t = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret"),
        &claims(),
    );
    assert_eq!(auth(&a, &t), Err(InvalidToken));

    // Payload swapped after signing.
    let good = sign_hs(Algorithm::HS256, &claims());
    let other = sign_hs(Algorithm::HS256, &with(claims(), "tenant", json!("evil")));
    let parts: Vec<&str> = good.split('.').collect();
    let other_payload = other.split('.').nth(1).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
    assert_eq!(auth(&a, &tampered), Err(InvalidToken));

    // Truncated signature.
    let truncated = &good[..good.len() - 4];
    assert_eq!(auth(&a, truncated), Err(InvalidToken));
}

#[test]
fn unknown_kid_is_rejected() {
    let a = all();
    for kid in ["rsa-2", "../../../../dev/null", "' OR 1=1 --", ""] {
        let t = sign_pem(Algorithm::RS256, Some(kid), "rsa.pem", &claims());
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{kid}");
    }
}

// === time ===

#[test]
fn expired_token() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &with(claims(), "exp", json!(NOW - 31)));
    assert_eq!(auth(&a, &t), Err(TokenExpired));
    // Boundary: valid only while now < exp + leeway.
    let t = sign_hs(Algorithm::HS256, &with(claims(), "exp", json!(NOW - 30)));
    assert_eq!(auth(&a, &t), Err(TokenExpired));
    // The injected clock is authoritative (this token is far in the future for the system).
    let t = sign_hs(Algorithm::HS256, &claims());
    assert_eq!(auth_at(&a, &t, NOW + 10_000), Err(TokenExpired));
}

#[test]
fn expired_within_leeway_is_accepted() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &with(claims(), "exp", json!(NOW - 10)));
    let p = auth(&a, &t).unwrap();
    assert_eq!(p.expires_at, NOW - 10);
    // A token long expired by the system clock is still valid at an injected `now`.
    let t = sign_hs(Algorithm::HS256, &with(claims(), "exp", json!(1_000_100)));
    assert!(auth_at(&a, &t, 1_000_000).is_ok());
}

#[test]
fn nbf_in_the_future_is_rejected() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &with(claims(), "nbf", json!(NOW + 31)));
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    let t = sign_hs(Algorithm::HS256, &with(claims(), "nbf", json!(NOW + 30)));
    assert_eq!(auth(&a, &t), Ok(alice()));
    let t = sign_hs(Algorithm::HS256, &with(claims(), "nbf", json!(NOW - 100)));
    assert_eq!(auth(&a, &t), Ok(alice()));
}

#[test]
fn missing_or_mistyped_exp_is_rejected() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &without(claims(), "exp"));
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    for bad in [
        json!((NOW + 300).to_string()),
        json!(null),
        json!(-1),
        json!(1.7e9),
    ] {
        let t = sign_hs(Algorithm::HS256, &with(claims(), "exp", bad.clone()));
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{bad}");
    }
    let t = sign_hs(Algorithm::HS256, &with(claims(), "nbf", json!("0")));
    assert_eq!(auth(&a, &t), Err(InvalidToken));
}

// === iss / aud ===

#[test]
fn issuer_checked_only_when_configured() {
    let mut s = settings(&["HS256"]);
    s.issuer = Some("https://idp.example".into());
    let a = build(&s);
    let ok = with(claims(), "iss", json!("https://idp.example"));
    assert_eq!(auth(&a, &sign_hs(Algorithm::HS256, &ok)), Ok(alice()));
    let wrong = with(claims(), "iss", json!("https://evil.example"));
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &wrong)),
        Err(InvalidToken)
    );
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &claims())),
        Err(InvalidToken)
    );
    let mistyped = with(claims(), "iss", json!(["https://idp.example"]));
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &mistyped)),
        Err(InvalidToken)
    );

    let a = hs(&["HS256"]);
    assert_eq!(auth(&a, &sign_hs(Algorithm::HS256, &wrong)), Ok(alice()));
    assert_eq!(auth(&a, &sign_hs(Algorithm::HS256, &claims())), Ok(alice()));
}

#[test]
fn audience_checked_only_when_configured() {
    let mut s = settings(&["HS256"]);
    s.audience = Some("portcullis".into());
    let a = build(&s);
    for aud in [json!("portcullis"), json!(["other", "portcullis"])] {
        let t = sign_hs(Algorithm::HS256, &with(claims(), "aud", aud.clone()));
        assert_eq!(auth(&a, &t), Ok(alice()), "{aud}");
    }
    for aud in [
        json!("other"),
        json!(["other"]),
        json!([]),
        json!(["portcullis", 1]),
        json!(1),
        json!(null),
    ] {
        let t = sign_hs(Algorithm::HS256, &with(claims(), "aud", aud.clone()));
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{aud}");
    }
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &claims())),
        Err(InvalidToken)
    );

    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &with(claims(), "aud", json!(["other"])));
    assert_eq!(auth(&a, &t), Ok(alice()));
}

// === header parameters ===

#[test]
fn crit_jwk_jku_x5u_x5c_headers_are_rejected() {
    let a = hs(&["HS256"]);
    for extra in [
        r#""crit":["exp"]"#,
        r#""crit":[]"#,
        r#""jwk":{"kty":"oct","k":"c2VjcmV0"}"#,
        r#""jku":"https://evil.example/jwks.json""#,
        r#""x5u":"https://evil.example/cert.pem""#,
        r#""x5c":["MIIB"]"#,
    ] {
        let t = raw_hs256(&format!(r#"{{"alg":"HS256",{extra}}}"#), &std_payload());
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{extra}");
    }
    // Control: the same construction without them is accepted.
    let t = raw_hs256(r#"{"alg":"HS256","typ":"JWT"}"#, &std_payload());
    assert_eq!(auth(&a, &t), Ok(alice()));
}

#[test]
fn duplicate_header_keys_are_rejected() {
    let a = hs(&["HS256"]);
    let t = raw_hs256(r#"{"alg":"HS256","alg":"HS256"}"#, &std_payload());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    let t = raw_hs256(r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#, &std_payload());
    assert_eq!(auth(&a, &t), Err(InvalidToken));
}

// === tenant ===

#[test]
fn missing_tenant() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &without(claims(), "tenant"));
    assert_eq!(auth(&a, &t), Err(MissingTenant));
    let t = sign_hs(Algorithm::HS256, &with(claims(), "tenant", json!("")));
    assert_eq!(auth(&a, &t), Err(MissingTenant));
    // Only on an otherwise valid token: expiry and signature are reported first.
    let expired = with(without(claims(), "tenant"), "exp", json!(NOW - 100));
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &expired)),
        Err(TokenExpired)
    );
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"x"),
        &without(claims(), "tenant"),
    );
    assert_eq!(auth(&a, &forged), Err(InvalidToken));
}

#[test]
fn tenant_from_header() {
    let mut s = settings(&["HS256"]);
    s.tenant = TenantSource::Header("x-tenant-id".into());
    let a = build(&s);
    assert_eq!(a.tenant_header(), Some("x-tenant-id"));
    // The token's tenant claim is ignored when the tenant comes from a header.
    let t = sign_hs(Algorithm::HS256, &with(claims(), "tenant", json!("other")));
    let bearer = format!("Bearer {t}");
    let got = a.authenticate(Some(bearer.as_bytes()), Some(b"acme"), NOW);
    assert_eq!(got, Ok(alice()));
    assert_eq!(
        a.authenticate(Some(bearer.as_bytes()), None, NOW),
        Err(MissingTenant)
    );
    assert_eq!(
        a.authenticate(Some(bearer.as_bytes()), Some(b""), NOW),
        Err(MissingTenant)
    );
    for bad in [
        &b"acme:1"[..],
        b"acme\r\nx-admin: 1",
        b"ac me",
        b"*",
        &[0xff],
    ] {
        assert_eq!(
            a.authenticate(Some(bearer.as_bytes()), Some(bad), NOW),
            Err(InvalidToken)
        );
    }
    assert_eq!(hs(&["HS256"]).tenant_header(), None);
}

#[test]
fn custom_claim_names() {
    let mut s = settings(&["HS256"]);
    s.subject_claim = "uid".into();
    s.tenant = TenantSource::Claim("org".into());
    let a = build(&s);
    let c = json!({ "uid": "alice", "org": "acme", "sub": "ignored", "exp": NOW + 300 });
    assert_eq!(auth(&a, &sign_hs(Algorithm::HS256, &c)), Ok(alice()));
    // The default claim names no longer count.
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &claims())),
        Err(InvalidToken)
    );
}

// === claim types and charsets ===

#[test]
fn bad_claim_types_and_charsets_are_rejected() {
    let a = hs(&["HS256"]);
    let cases = [
        ("sub", json!(42)),
        ("sub", json!(["alice"])),
        ("sub", json!(null)),
        ("sub", json!("")),
        ("sub", json!("alice\r\nx-admin: 1")),
        ("sub", json!("alice\n")),
        ("sub", json!("a lice")),
        ("sub", json!("a".repeat(257))),
        ("sub", json!("ålice")),
        ("tenant", json!(7)),
        ("tenant", json!(["acme"])),
        ("tenant", json!({"id": "acme"})),
        ("tenant", json!(null)),
        ("tenant", json!("acme:roles")),
        ("tenant", json!("acme*")),
        ("tenant", json!("acme\r\n")),
        ("tenant", json!("a".repeat(129))),
        ("amr", json!("mfa")),
        ("amr", json!(["pwd", 1])),
    ];
    for (claim, value) in cases {
        let t = sign_hs(Algorithm::HS256, &with(claims(), claim, value.clone()));
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{claim}={value}");
    }
    let t = sign_hs(Algorithm::HS256, &without(claims(), "sub"));
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    // Longest allowed values and the full subject charset pass.
    let c = with(
        with(
            claims(),
            "sub",
            json!(format!("{}.x_@:|+-", "a".repeat(248))),
        ),
        "tenant",
        json!("T".repeat(128)),
    );
    assert!(auth(&a, &sign_hs(Algorithm::HS256, &c)).is_ok());
    // Escaped JSON strings are decoded before the charset check.
    let t = raw_hs256(
        r#"{"alg":"HS256"}"#,
        &format!(
            r#"{{"sub":"\u0061lice","tenant":"acme","exp":{}}}"#,
            NOW + 300
        ),
    );
    assert_eq!(auth(&a, &t), Ok(alice()));
    let t = raw_hs256(
        r#"{"alg":"HS256"}"#,
        &format!(
            r#"{{"sub":"alice","tenant":"acme\u000d\u000a","exp":{}}}"#,
            NOW + 300
        ),
    );
    assert_eq!(auth(&a, &t), Err(InvalidToken));
}

#[test]
fn payload_must_be_a_json_object() {
    let a = hs(&["HS256"]);
    for payload in [
        "[]",
        "\"x\"",
        "null",
        "",
        "{",
        &format!("{} x", std_payload()),
    ] {
        let t = raw_hs256(r#"{"alg":"HS256"}"#, payload);
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{payload}");
    }
}

#[test]
fn duplicate_payload_keys_are_rejected() {
    let a = hs(&["HS256"]);
    let exp = NOW + 300;
    for payload in [
        format!(r#"{{"sub":"alice","tenant":"acme","tenant":"evil","exp":{exp}}}"#),
        format!(r#"{{"sub":"alice","sub":"admin","tenant":"acme","exp":{exp}}}"#),
        format!(
            r#"{{"sub":"alice","tenant":"acme","exp":{exp},"exp":{}}}"#,
            exp + 9999
        ),
        format!(r#"{{"sub":"alice","tenant":"acme","exp":{exp},"x":1,"x":1}}"#),
        // Equal after unescaping.
        format!(r#"{{"sub":"alice","tenant":"acme","ten\u0061nt":"evil","exp":{exp}}}"#),
    ] {
        let t = raw_hs256(r#"{"alg":"HS256"}"#, &payload);
        assert_eq!(auth(&a, &t), Err(InvalidToken), "{payload}");
    }
}

// === Authorization header syntax ===

#[test]
fn malformed_authorization_values() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &claims());
    assert_eq!(a.authenticate(None, None, NOW), Err(MissingToken));
    let bad = [
        String::new(),
        t.clone(),
        format!("Basic {t}"),
        format!("Bearer{t}"),
        "Bearer".into(),
        "Bearer ".into(),
        format!("Bearer  {t}"),
        format!("Bearer {t} {t}"),
        format!("Bearer {t} "),
        format!("Bearer\t{t}"),
        format!(" Bearer {t}"),
        format!("Bearer {t}\r\n"),
        "Bearer abc.d!f.ghi".into(),
        "Bearer not-a-jwt".into(),
        "Bearer a.b".into(),
        format!("Bearer {t}.extra"),
        format!("Bearer {t}=="),
        format!("Bearer .{}", t.split_once('.').unwrap().1),
        "Bearer ...".into(),
    ];
    for value in bad {
        assert_eq!(
            a.authenticate(Some(value.as_bytes()), None, NOW),
            Err(InvalidToken),
            "{value:?}"
        );
    }
    // Garbage base64 in each part.
    let parts: Vec<&str> = t.split('.').collect();
    for i in 0..3 {
        let mut p = parts.clone();
        let garbage = format!("{}A", p[i]); // length ≡ 1 (mod 4) or non-zero tail bits or bad JSON
        p[i] = &garbage;
        assert_eq!(auth(&a, &p.join(".")), Err(InvalidToken), "part {i}");
    }
    // Non-UTF-8 bytes.
    let mut raw = format!("Bearer {t}").into_bytes();
    raw.push(0xff);
    assert_eq!(a.authenticate(Some(&raw), None, NOW), Err(InvalidToken));
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &claims());
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let v = format!("{scheme} {t}");
        assert_eq!(
            a.authenticate(Some(v.as_bytes()), None, NOW),
            Ok(alice()),
            "{scheme}"
        );
    }
}

#[test]
fn oversized_token_is_rejected() {
    let a = hs(&["HS256"]);
    let big = with(claims(), "pad", json!("x".repeat(7000)));
    let t = sign_hs(Algorithm::HS256, &big);
    assert!(t.len() > jwt::MAX_TOKEN_LEN);
    assert_eq!(auth(&a, &t), Err(InvalidToken));
    let fits = with(claims(), "pad", json!("x".repeat(5000)));
    let t = sign_hs(Algorithm::HS256, &fits);
    assert!(t.len() <= jwt::MAX_TOKEN_LEN);
    assert_eq!(auth(&a, &t), Ok(alice()));
}

// === amr ===

#[test]
fn amr_mfa() {
    let a = hs(&["HS256"]);
    let t = sign_hs(
        Algorithm::HS256,
        &with(claims(), "amr", json!(["pwd", "mfa"])),
    );
    assert!(auth(&a, &t).unwrap().mfa);
    let t = sign_hs(
        Algorithm::HS256,
        &with(claims(), "amr", json!(["pwd", "otp"])),
    );
    assert!(!auth(&a, &t).unwrap().mfa);
    let t = sign_hs(Algorithm::HS256, &with(claims(), "amr", json!([])));
    assert!(!auth(&a, &t).unwrap().mfa);
    assert!(!auth(&a, &sign_hs(Algorithm::HS256, &claims())).unwrap().mfa);
}

// === build ===

#[test]
fn build_reports_setup_errors() {
    let mut s = settings(&["HS256"]);
    s.jwks_file = None;
    s.secret_env = Some("PORTCULLIS_TEST_SECRET_THAT_IS_NEVER_SET_7f3a".into());
    assert!(matches!(
        Authenticator::build(&s),
        Err(IdentitySetupError::MissingSecret(name)) if name == "PORTCULLIS_TEST_SECRET_THAT_IS_NEVER_SET_7f3a"
    ));
    assert!(matches!(
        Authenticator::build_with_secret(&s, Some(b"")),
        Err(IdentitySetupError::MissingSecret(_))
    ));
    s.secret_env = None;
    assert!(matches!(
        Authenticator::build(&s),
        Err(IdentitySetupError::Other(_))
    ));

    for alg in ["none", "hs256", "ES512"] {
        assert!(matches!(
            Authenticator::build_with_secret(&settings(&[alg]), Some(SECRET)),
            Err(IdentitySetupError::UnsupportedAlgorithm(a)) if a == alg
        ));
    }
    assert!(matches!(
        Authenticator::build_with_secret(&settings(&[]), Some(SECRET)),
        Err(IdentitySetupError::Other(_))
    ));

    let mut s = settings(&["RS256"]);
    s.jwks_file = Some(fixture("does-not-exist.json"));
    assert!(matches!(
        Authenticator::build_with_secret(&s, None),
        Err(IdentitySetupError::JwksRead { .. })
    ));
    s.jwks_file = None;
    assert!(matches!(
        Authenticator::build_with_secret(&s, None),
        Err(IdentitySetupError::Other(_))
    ));
    s.jwks_file = Some(fixture("ec.pem"));
    assert!(matches!(
        Authenticator::build_with_secret(&s, None),
        Err(IdentitySetupError::JwksInvalid { .. })
    ));
    // The fixture has no ES384 key.
    assert!(matches!(
        Authenticator::build_with_secret(&settings(&["ES384"]), None),
        Err(IdentitySetupError::Other(_))
    ));

    let mut s = settings(&["HS256"]);
    s.subject_claim = "exp".into();
    assert!(matches!(
        Authenticator::build_with_secret(&s, Some(SECRET)),
        Err(IdentitySetupError::Other(_))
    ));
}

#[test]
fn build_rejects_bad_jwks_content() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    let rsa = jwks["keys"][0].clone();
    let cases = [
        (
            "oct",
            json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}),
        ),
        ("dup-kid", json!({"keys": [rsa.clone(), rsa.clone()]})),
        (
            "alg-mismatch",
            json!({"keys": [with(rsa.clone(), "alg", json!("ES256"))]}),
        ),
        ("not-jwks", json!({"kty": "RSA"})),
    ];
    for (name, content) in cases {
        let mut s = settings(&["RS256"]);
        s.jwks_file = Some(write(name, &content.to_string()));
        assert!(
            matches!(
                Authenticator::build_with_secret(&s, None),
                Err(IdentitySetupError::JwksInvalid { .. })
            ),
            "{name}"
        );
    }
    // Encryption keys are skipped, not used for signatures.
    let mut s = settings(&["RS256"]);
    s.jwks_file = Some(write(
        "enc",
        &json!({"keys": [with(rsa.clone(), "use", json!("enc"))]}).to_string(),
    ));
    assert!(matches!(
        Authenticator::build_with_secret(&s, None),
        Err(IdentitySetupError::Other(_))
    ));
}

#[test]
fn mint_hs256_round_trips() {
    let a = hs(&["HS256"]);
    let t = a.mint_hs256(&claims()).unwrap();
    assert_eq!(auth(&a, &t), Ok(alice()));
    let no_secret = Authenticator::build_with_secret(&settings(&["RS256"]), None).unwrap();
    assert!(matches!(
        no_secret.mint_hs256(&claims()),
        Err(IdentitySetupError::Other(_))
    ));
}

#[test]
fn authenticator_is_shareable_and_debug_hides_the_secret() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authenticator>();
    let dbg = format!("{:?}", all());
    assert!(!dbg.contains(std::str::from_utf8(SECRET).unwrap()));
    assert!(dbg.contains("rsa-1"));
}

#[test]
fn build_reads_the_secret_from_the_environment() {
    // `set_var` is unsafe in edition 2024 (and `unsafe_code` is forbidden), so borrow a variable
    // the test process already has; its value is the secret.
    let Some(path) = std::env::var("PATH").ok().filter(|p| !p.is_empty()) else {
        return;
    };
    let mut s = settings(&["HS256"]);
    s.jwks_file = None;
    s.secret_env = Some("PATH".into());
    let a = Authenticator::build(&s).unwrap();
    let t = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(path.as_bytes()),
        &claims(),
    );
    assert_eq!(auth(&a, &t), Ok(alice()));
    assert_eq!(
        auth(&a, &sign_hs(Algorithm::HS256, &claims())),
        Err(InvalidToken)
    );
}

// === verified-token cache ===

/// The fixture JWKS restricted to `kids`, installed as the key set (what a JWKS URL refresh does).
fn rotate_to(a: &Authenticator, kids: &[&str]) {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    let doc = json!({ "keys": keys }).to_string();
    let set = KeySet::new(parse_jwks(doc.as_bytes(), "test", a.pinned).unwrap());
    a.keys.store(Arc::new(set));
}

#[test]
fn cache_serves_a_repeated_token_until_exp_by_the_injected_clock() {
    let a = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &claims());
    assert_eq!(auth_at(&a, &t, NOW), Ok(alice()));
    assert_eq!(a.cached_tokens(), 1);
    assert_eq!(auth_at(&a, &t, NOW + 299), Ok(alice()), "hit before exp");
    // At exp the entry is no longer served: the full check runs and applies the leeway
    // (30 s), without caching the token again.
    assert_eq!(auth_at(&a, &t, NOW + 300), Ok(alice()));
    assert_eq!(a.cached_tokens(), 0);
    assert_eq!(auth_at(&a, &t, NOW + 329), Ok(alice()));
    assert_eq!(a.cached_tokens(), 0);
    assert_eq!(auth_at(&a, &t, NOW + 330), Err(TokenExpired));
    // Cached again at an earlier clock, then refused after exp + leeway although cached.
    assert_eq!(auth_at(&a, &t, NOW), Ok(alice()));
    assert_eq!(a.cached_tokens(), 1);
    assert_eq!(auth_at(&a, &t, NOW + 330), Err(TokenExpired));
}

#[test]
fn cache_never_holds_a_token_before_nbf() {
    let a = hs(&["HS256"]);
    // nbf 10 s ahead: accepted within the leeway, but not cached.
    let t = sign_hs(Algorithm::HS256, &with(claims(), "nbf", json!(NOW + 10)));
    assert_eq!(auth_at(&a, &t, NOW), Ok(alice()));
    assert_eq!(a.cached_tokens(), 0);
    // nbf beyond the leeway: refused, and still refused on the next try.
    let far = sign_hs(Algorithm::HS256, &with(claims(), "nbf", json!(NOW + 100)));
    assert_eq!(auth_at(&a, &far, NOW), Err(InvalidToken));
    assert_eq!(auth_at(&a, &far, NOW), Err(InvalidToken));
    assert_eq!(a.cached_tokens(), 0);
    // Once nbf has passed it is cached; a clock stepping back before nbf - leeway refuses it.
    assert_eq!(auth_at(&a, &far, NOW + 100), Ok(alice()));
    assert_eq!(a.cached_tokens(), 1);
    assert_eq!(auth_at(&a, &far, NOW), Err(InvalidToken));
}

#[test]
fn cache_refuses_a_retired_kid_after_key_rotation() {
    let a = all();
    let rsa = sign_pem(Algorithm::RS256, Some("rsa-1"), "rsa.pem", &claims());
    let rsa_no_kid = sign_pem(Algorithm::RS256, None, "rsa.pem", &claims());
    let hs_token = sign_hs(Algorithm::HS256, &claims());
    for t in [&rsa, &rsa_no_kid, &hs_token] {
        assert_eq!(auth(&a, t), Ok(alice()));
    }
    assert_eq!(a.cached_tokens(), 3);
    assert_eq!(auth(&a, &rsa), Ok(alice()), "hit");

    // The provider retires rsa-1: both RSA tokens are refused although cached.
    rotate_to(&a, &["ec-1", "ed-1"]);
    assert_eq!(auth(&a, &rsa), Err(InvalidToken));
    assert_eq!(auth(&a, &rsa_no_kid), Err(InvalidToken));
    // The HS secret did not change: its token is still served.
    assert_eq!(auth(&a, &hs_token), Ok(alice()));

    // A new key set that contains the key again verifies afresh (and caches again).
    rotate_to(&a, &["rsa-1"]);
    assert_eq!(auth(&a, &rsa), Ok(alice()));
    assert_eq!(auth(&a, &rsa), Ok(alice()));
    // Any change of the set misses entries made with the previous one.
    rotate_to(&a, &[]);
    assert_eq!(auth(&a, &rsa), Err(InvalidToken));
}

#[test]
fn cache_keeps_evaluating_the_tenant_header_per_request() {
    let mut s = settings(&["HS256"]);
    s.tenant = TenantSource::Header("x-tenant-id".into());
    let a = build(&s);
    let t = sign_hs(Algorithm::HS256, &claims());
    let bearer = format!("Bearer {t}");
    let at = |tenant: Option<&[u8]>| a.authenticate(Some(bearer.as_bytes()), tenant, NOW);
    assert_eq!(at(Some(b"acme")), Ok(alice()));
    assert_eq!(a.cached_tokens(), 1);
    let other = at(Some(b"globex")).unwrap();
    assert_eq!(
        (other.tenant.as_str(), other.subject.as_str()),
        ("globex", "alice")
    );
    assert_eq!(at(None), Err(MissingTenant));
    assert_eq!(at(Some(b"")), Err(MissingTenant));
    assert_eq!(at(Some(b"acme:1")), Err(InvalidToken));
    assert_eq!(at(Some(b"acme")), Ok(alice()));
    // A token-only failure first is still reported as such (nothing was cached for it).
    let no_sub = sign_hs(Algorithm::HS256, &without(claims(), "sub"));
    let no_sub = format!("Bearer {no_sub}");
    assert_eq!(
        a.authenticate(Some(no_sub.as_bytes()), None, NOW),
        Err(InvalidToken)
    );
}

#[test]
fn cache_holds_only_successful_verifications() {
    let a = hs(&["HS256"]);
    let no_tenant = sign_hs(Algorithm::HS256, &without(claims(), "tenant"));
    let expired = sign_hs(Algorithm::HS256, &with(claims(), "exp", json!(NOW - 100)));
    let good = sign_hs(Algorithm::HS256, &claims());
    let tampered = format!("{}x", &good[..good.len() - 1]);
    for _ in 0..2 {
        assert_eq!(auth(&a, &no_tenant), Err(MissingTenant));
        assert_eq!(auth(&a, &expired), Err(TokenExpired));
        assert!(auth(&a, &tampered).is_err());
    }
    assert_eq!(a.cached_tokens(), 0);
    // A cached token does not make a different token (same prefix) valid.
    assert_eq!(auth(&a, &good), Ok(alice()));
    assert!(auth(&a, &tampered).is_err());
    assert!(auth(&a, &format!("{good}A")).is_err());
    assert_eq!(a.cached_tokens(), 1);
}

#[test]
fn cache_size_zero_disables_the_cache() {
    let mut s = settings(&["HS256"]);
    s.jwks_file = None;
    s.cache_size = 0;
    let a = build(&s);
    let t = sign_hs(Algorithm::HS256, &claims());
    for _ in 0..3 {
        assert_eq!(auth(&a, &t), Ok(alice()));
    }
    assert_eq!(a.cached_tokens(), 0);
    assert!(format!("{a:?}").contains("cache_capacity: 0"));
}

#[test]
fn a_new_authenticator_does_not_share_the_cache() {
    // A reload builds a new authenticator (here with another secret) that adopts the key
    // set; what the old one verified is not carried over.
    let old = hs(&["HS256"]);
    let t = sign_hs(Algorithm::HS256, &claims());
    assert_eq!(auth(&old, &t), Ok(alice()));
    assert_eq!(old.cached_tokens(), 1);
    let mut s = settings(&["HS256"]);
    s.jwks_file = None;
    let new = Authenticator::build_with_secret(&s, Some(b"another-secret-0123456789")).unwrap();
    new.adopt_keys(&old);
    assert_eq!(new.cached_tokens(), 0);
    assert_eq!(auth(&new, &t), Err(InvalidToken));
}
