//! JWT verification details: strict base64url, header and claim parsing, charsets.
//!
//! We parse the compact serialization ourselves instead of calling `jsonwebtoken::decode`
//! because (a) its time checks use the system clock, while `now` must be authoritative;
//! (b) serde_json maps keep the last of duplicate keys silently, and a typed struct only
//! catches duplicates of the fields it names; (c) the claim names are configurable.
//! Only the signature check (`jsonwebtoken::crypto::verify`) comes from the crate.
//!
//! INVARIANT: nothing here allocates per key or per claim except owned copies of strings that
//! contained JSON escapes, and the key list used for duplicate detection.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Longest accepted compact token (bytes). Bounds parsing work before the signature is checked.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Registered claims this module interprets; a configured subject/tenant claim may not reuse them.
pub(crate) const RESERVED_CLAIMS: [&str; 5] = ["exp", "nbf", "iss", "aud", "amr"];

// === base64url ===

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Upper bound of the decoded length of `len` base64url characters.
pub(crate) fn decoded_len(len: usize) -> usize {
    len / 4 * 3 + (len % 4) * 3 / 4
}

/// Strict unpadded base64url (RFC 7515 §2): no `=`, no whitespace, and the unused low bits of
/// the last character must be zero, so every byte string has exactly one accepted encoding.
pub(crate) fn b64url_decode_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    if input.len() % 4 == 1 {
        return Err(());
    }
    let mut chunks = input.chunks_exact(4);
    for chunk in &mut chunks {
        let mut n: u32 = 0;
        for &c in chunk {
            n = (n << 6) | u32::from(b64_value(c).ok_or(())?);
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = chunks.remainder();
    let mut n: u32 = 0;
    for &c in rest {
        n = (n << 6) | u32::from(b64_value(c).ok_or(())?);
    }
    match rest.len() {
        0 => {}
        2 => {
            if n & 0xF != 0 {
                return Err(());
            }
            out.push((n >> 4) as u8);
        }
        3 => {
            if n & 0x3 != 0 {
                return Err(());
            }
            out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]);
        }
        _ => return Err(()),
    }
    Ok(())
}

// === charsets ===

/// `[A-Za-z0-9._@:|+-]{1,256}`: safe in logs, headers and audit lines (no CR/LF, no spaces).
pub(crate) fn valid_subject(s: &[u8]) -> bool {
    (1..=256).contains(&s.len())
        && s.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b':' | b'|' | b'+' | b'-')
        })
}

/// `[A-Za-z0-9._@-]{1,128}`: no `:` or glob characters, because the tenant is part of the
/// Redis keys `authz:{tenant}:...` (security.md §3.17).
pub(crate) fn valid_tenant(s: &[u8]) -> bool {
    (1..=128).contains(&s.len())
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'))
}

// === JSON helpers ===

/// A JSON string, borrowed from the decoded buffer unless it contained escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// True when two keys are equal. Sorting makes this O(n log n) even for a hostile header,
/// which is parsed before the signature is checked.
fn has_duplicates(keys: &mut [Cow<'_, str>]) -> bool {
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

// === header ===

/// The protected header fields we act on.
pub(crate) struct Header<'de> {
    pub alg: Cow<'de, str>,
    pub kid: Option<Cow<'de, str>>,
}

/// Parse a decoded header. Rejects duplicate keys, `crit` (RFC 7515 §4.1.11: we understand no
/// extension) and embedded or remote keys (`jwk`, `jku`, `x5u`, `x5c`): keys come from config only.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header<'_>, ()> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Header<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JOSE header object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys: Vec<Cow<'de, str>> = Vec::new();
            let mut alg = None;
            let mut kid = None;
            while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                match key.as_ref() {
                    "alg" => alg = Some(map.next_value::<Str<'de>>()?.0),
                    "kid" => kid = Some(map.next_value::<Str<'de>>()?.0),
                    "crit" | "jwk" | "jku" | "x5u" | "x5c" => {
                        return Err(de::Error::custom("forbidden header parameter"));
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                keys.push(key);
            }
            if has_duplicates(&mut keys) {
                return Err(de::Error::custom("duplicate header parameter"));
            }
            let alg = alg.ok_or_else(|| de::Error::missing_field("alg"))?;
            Ok(Header { alg, kid })
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let header = de.deserialize_map(V).map_err(drop)?;
    de.end().map_err(drop)?;
    Ok(header)
}

// === claims ===

/// What the claim parser needs to know from the settings.
pub(crate) struct ClaimSpec<'s> {
    pub subject: &'s str,
    /// `None` when the tenant comes from a header.
    pub tenant: Option<&'s str>,
    /// Parse `iss` only when an issuer is configured; otherwise it is not our business.
    pub check_issuer: bool,
    /// Expected audience; `aud` is ignored when `None`.
    pub audience: Option<&'s str>,
}

/// Typed claims; every field was type-checked, none was semantically validated yet.
#[derive(Default)]
pub(crate) struct Claims<'de> {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iss: Option<Cow<'de, str>>,
    /// `Some(true)` when `aud` (string or array) contains the expected audience.
    pub aud_matches: Option<bool>,
    pub subject: Option<Cow<'de, str>>,
    pub tenant: Option<Cow<'de, str>>,
    pub mfa: bool,
}

/// `aud`: a string or an array of strings (RFC 7519 §4.1.3); yields whether it contains `expected`.
struct AudSeed<'s>(&'s str);

impl<'de> DeserializeSeed<'de> for AudSeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AudSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(Str(v)) = seq.next_element::<Str<'de>>()? {
            found |= v == self.0;
        }
        Ok(found)
    }
}

/// `amr`: an array of strings (RFC 8176); yields whether it contains `"mfa"`.
struct AmrSeed;

impl<'de> DeserializeSeed<'de> for AmrSeed {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AmrSeed {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut mfa = false;
        while let Some(Str(v)) = seq.next_element::<Str<'de>>()? {
            mfa |= v == "mfa";
        }
        Ok(mfa)
    }
}

struct ClaimsVisitor<'s>(&'s ClaimSpec<'s>);

impl<'de> Visitor<'de> for ClaimsVisitor<'_> {
    type Value = Claims<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JWT claims object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let spec = self.0;
        let mut claims = Claims::default();
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            let k = key.as_ref();
            match k {
                "exp" => claims.exp = Some(map.next_value()?),
                "nbf" => claims.nbf = Some(map.next_value()?),
                "iss" if spec.check_issuer => claims.iss = Some(map.next_value::<Str<'de>>()?.0),
                "aud" => match spec.audience {
                    Some(expected) => {
                        claims.aud_matches = Some(map.next_value_seed(AudSeed(expected))?);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                "amr" => claims.mfa = map.next_value_seed(AmrSeed)?,
                // Build rejects subject/tenant names among RESERVED_CLAIMS, so the arms above
                // never shadow them; subject and tenant may share one claim.
                _ if k == spec.subject => {
                    let Str(v) = map.next_value::<Str<'de>>()?;
                    if spec.tenant == Some(k) {
                        claims.tenant = Some(v.clone());
                    }
                    claims.subject = Some(v);
                }
                _ if spec.tenant == Some(k) => {
                    claims.tenant = Some(map.next_value::<Str<'de>>()?.0);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            keys.push(key);
        }
        if has_duplicates(&mut keys) {
            return Err(de::Error::custom("duplicate claim"));
        }
        Ok(claims)
    }
}

/// Parse a decoded, signature-verified payload. Rejects non-objects, duplicate top-level keys,
/// trailing data, and any interpreted claim of the wrong JSON type.
pub(crate) fn parse_claims<'de>(bytes: &'de [u8], spec: &ClaimSpec<'_>) -> Result<Claims<'de>, ()> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let claims = de.deserialize_map(ClaimsVisitor(spec)).map_err(drop)?;
    de.end().map_err(drop)?;
    Ok(claims)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn dec(s: &str) -> Result<Vec<u8>, ()> {
        let mut out = Vec::new();
        b64url_decode_into(s.as_bytes(), &mut out).map(|()| out)
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(dec("").unwrap(), b"");
        assert_eq!(dec("Zg").unwrap(), b"f");
        assert_eq!(dec("Zm8").unwrap(), b"fo");
        assert_eq!(dec("Zm9v").unwrap(), b"foo");
        assert_eq!(dec("-_8").unwrap(), [0xfb, 0xff]);
        assert!(dec("Zg==").is_err(), "padding");
        assert!(dec("Zh").is_err(), "non-zero trailing bits");
        assert!(dec("Zm9").is_err(), "non-zero trailing bits");
        assert!(dec("Z").is_err(), "impossible length");
        assert!(dec("Zm+v").is_err(), "standard alphabet");
        assert!(dec("Zm 9v").is_err(), "whitespace");
        for len in 0..20 {
            assert!(decoded_len(len) >= len * 3 / 4);
        }
    }

    #[test]
    fn charsets() {
        assert!(valid_subject(b"user:42|a+b@x.y-z_"));
        assert!(!valid_subject(b""));
        assert!(!valid_subject(b"a b"));
        assert!(!valid_subject(&[b'a'; 257]));
        assert!(valid_tenant(b"acme-1.eu_x@y"));
        assert!(!valid_tenant(b"acme:1"));
        assert!(!valid_tenant(b"acme*"));
        assert!(!valid_tenant(&[b'a'; 129]));
    }

    #[test]
    fn header_duplicates_and_forbidden_parameters() {
        assert_eq!(
            parse_header(br#"{"alg":"HS256","kid":"k"}"#).unwrap().alg,
            "HS256"
        );
        assert!(parse_header(br#"{"alg":"HS256","alg":"none"}"#).is_err());
        assert!(parse_header(br#"{"alg":"HS256","crit":[]}"#).is_err());
        assert!(parse_header(br#"{"alg":"HS256","x5c":null}"#).is_err());
        assert!(parse_header(br#"{"kid":"k"}"#).is_err());
        assert!(parse_header(br#"{"alg":"HS256"} x"#).is_err());
        assert!(parse_header(br#"["alg"]"#).is_err());
    }
}
