//! Path canonicalization (security.md R2): the path that is matched is the path that is
//! forwarded, and a path with more than one plausible reading is rejected, never guessed.
//!
//! Rules, in the order they apply:
//! - the path must be origin-form (`/...`); `*` and anything else is rejected;
//! - raw bytes must be RFC 3986 `pchar`s or `/`: a raw `\`, `;`, space, CTL, non-ASCII, `"`,
//!   `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`, `#` is rejected (Tomcat `;` params, IIS `\`);
//! - `%XX` must be two hex digits. Unreserved escapes (`%2e`, `%41`, ...) are decoded once;
//!   `%2F`, `%5C`, `%25` (double encoding), `%00`–`%1F`, `%7F` and every escape of a non-ASCII
//!   byte are rejected (encoded separators, NUL, overlong UTF-8, NFKC folding); every other
//!   escape stays encoded with upper-case hex (`%3f` → `%3F`);
//! - empty segments are merged (`//` → `/`), `.` segments removed and `..` segments remove
//!   their parent (RFC 3986 §5.2.4, after decoding, so `%2e%2e` counts); a `..` above the root
//!   is rejected. A trailing slash is kept: `/a/` and `/a` are different routes.

use std::borrow::Cow;

/// Why a request path is ambiguous or malformed (400 `ambiguous_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must be origin-form, starting with `/`")]
    NotOrigin,
    #[error("malformed percent-escape")]
    BadEscape,
    #[error("encoded `/` or `\\` in path")]
    EncodedSeparator,
    #[error("encoded `%` in path (double encoding)")]
    DoubleEncoding,
    #[error("control character in path")]
    Control,
    #[error("non-ASCII byte in path")]
    NonAscii,
    #[error("character `{}` is not allowed in a path", *.0 as char)]
    Forbidden(u8),
    #[error("`..` above the root")]
    AboveRoot,
}

/// Canonicalize a raw request path (the query already split off). Borrows when the path is
/// already canonical, which is the common case.
pub fn canonicalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOrigin);
    }
    let mut needs_rewrite = false;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        // Most bytes of most paths: one table lookup.
        if PLAIN[usize::from(b)] {
            prev = b;
            continue;
        }
        match b {
            b'%' => {
                check_escape(bytes, i)?;
                needs_rewrite = true;
            }
            b'.' if prev == b'/' && is_dot_segment(bytes.get(i..).unwrap_or_default()) => {
                needs_rewrite = true
            }
            b'/' if prev == b'/' => needs_rewrite = true,
            _ => check_raw(b)?,
        }
        prev = b;
    }
    if !needs_rewrite {
        return Ok(Cow::Borrowed(raw));
    }
    rewrite(bytes).map(Cow::Owned)
}

/// `rest` starts at a segment's first byte: is that segment `.` or `..`?
fn is_dot_segment(rest: &[u8]) -> bool {
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    matches!(rest.get(..end), Some(b".") | Some(b".."))
}

/// Bytes `check_raw` accepts that mean nothing else to the scan (not `%`, `.` or `/`).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        // `b < 256`: the cast is exact.
        let byte = b as u8;
        table[b] = matches!(byte, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
            || matches!(
                byte,
                b'-' | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

fn check_raw(b: u8) -> Result<(), PathError> {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => Ok(()),
        b'-' | b'.' | b'_' | b'~' => Ok(()),
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
            Ok(())
        }
        b'/' => Ok(()),
        0x00..=0x1f | 0x7f => Err(PathError::Control),
        0x80..=0xff => Err(PathError::NonAscii),
        other => Err(PathError::Forbidden(other)),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Validate the escape at `i` and return its decoded byte.
fn check_escape(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let hi = bytes.get(i + 1).copied().and_then(hex);
    let lo = bytes.get(i + 2).copied().and_then(hex);
    let (Some(hi), Some(lo)) = (hi, lo) else {
        return Err(PathError::BadEscape);
    };
    let decoded = hi << 4 | lo;
    match decoded {
        b'/' | b'\\' => Err(PathError::EncodedSeparator),
        b'%' => Err(PathError::DoubleEncoding),
        0x00..=0x1f | 0x7f => Err(PathError::Control),
        0x80..=0xff => Err(PathError::NonAscii),
        _ => Ok(decoded),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Slow path: decode unreserved escapes segment by segment, then resolve dot segments.
fn rewrite(bytes: &[u8]) -> Result<String, PathError> {
    // INVARIANT: every byte was validated by `canonicalize`'s scan, so the output is ASCII.
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in bytes.split(|&b| b == b'/').skip(1) {
        let mut segment = String::with_capacity(raw_segment.len());
        let mut i = 0;
        while let Some(&b) = raw_segment.get(i) {
            if b == b'%' {
                let decoded = check_escape(raw_segment, i)?;
                if is_unreserved(decoded) {
                    segment.push(decoded as char);
                } else {
                    segment.push('%');
                    segment.push(char::from(b"0123456789ABCDEF"[usize::from(decoded >> 4)]));
                    segment.push(char::from(b"0123456789ABCDEF"[usize::from(decoded & 0xf)]));
                }
                i += 3;
            } else {
                segment.push(b as char);
                i += 1;
            }
        }
        trailing_slash = false;
        match segment.as_str() {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(bytes.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Decode the escapes left in a canonical path segment (all ASCII, never `/` or `%`), for
/// comparing a path parameter with a subject or scope id.
pub fn decode_segment(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = match (
            b,
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => Some(hi << 4 | lo),
            _ => None,
        };
        match decoded {
            Some(d) if d.is_ascii() => {
                out.push(d as char);
                i += 3;
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        canonicalize(raw).unwrap().into_owned()
    }

    #[test]
    fn plain_bytes_are_exactly_the_accepted_ones_without_a_meaning_to_the_scan() {
        for b in 0..=255u8 {
            let expected = check_raw(b).is_ok() && !matches!(b, b'%' | b'.' | b'/');
            assert_eq!(PLAIN[usize::from(b)], expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/campaigns/42",
            "/a/b/",
            "/a.b/c~d/e-f_g",
            "/x/...",
            "/a/.b",
        ] {
            assert!(
                matches!(canonicalize(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_resolved_raw_and_encoded() {
        assert_eq!(ok("/health/../admin/users"), "/admin/users");
        assert_eq!(ok("/health/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/health/%2E%2e/admin"), "/admin");
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/%2e/b"), "/a/b");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/.%2e/b"), "/b");
    }

    #[test]
    fn double_slashes_merge() {
        assert_eq!(ok("//admin/users"), "/admin/users");
        assert_eq!(ok("/a//b///c"), "/a/b/c");
        assert_eq!(ok("/a/b//"), "/a/b/");
        assert_eq!(ok("//"), "/");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_normalise() {
        assert_eq!(ok("/%61pi/%7Euser"), "/api/~user");
        assert_eq!(ok("/admin%3f/../health"), "/health");
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3Bb"), "/a%3Bb");
    }

    #[test]
    fn ambiguous_input_is_rejected() {
        let cases = [
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%252e%252e/b", PathError::DoubleEncoding),
            ("/a%00b", PathError::Control),
            ("/a%0ab", PathError::Control),
            ("/a%c0%afb", PathError::NonAscii),
            ("/%EF%BC%8E%EF%BC%8E%EF%BC%8F", PathError::NonAscii),
            ("/a\\b", PathError::Forbidden(b'\\')),
            ("/v1/..;/internal", PathError::Forbidden(b';')),
            ("/a;b", PathError::Forbidden(b';')),
            ("/a#b", PathError::Forbidden(b'#')),
            ("/a b", PathError::Forbidden(b' ')),
            ("/a\u{e9}", PathError::NonAscii),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/admin", PathError::AboveRoot),
            ("*", PathError::NotOrigin),
            ("", PathError::NotOrigin),
            ("http://x/a", PathError::NotOrigin),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonicalize(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn segments_decode_for_owner_comparison() {
        assert_eq!(decode_segment("alice"), "alice");
        assert_eq!(decode_segment("alice%20"), "alice ");
        assert_eq!(decode_segment("a%3Fb"), "a?b");
    }

    #[test]
    fn canonicalization_is_idempotent_and_output_is_clean() {
        let inputs = [
            "/a/./b/../c//d/%2e%2E/e%3f",
            "/%7e/x/y/../../z/",
            "//a///b/./",
            "/a/b%20c/%41",
        ];
        for raw in inputs {
            let once = ok(raw);
            assert_eq!(ok(&once), once, "{raw}");
            assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"));
            assert!(!once.ends_with("/.") && !once.ends_with("/.."));
        }
    }

    /// Any input, hostile or not: no panic; a refusal, or a canonical path that is a fixed
    /// point, starts with `/`, has no empty, `.` or `..` segment, and carries no escape that
    /// could decode to a separator, a `%`, a control or a non-ASCII byte.
    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn hostile_path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/", "/", ".", "..", "%", "%2", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25",
                "%00", "%7f", "%c0%ae", "%41", "%7e", "a", "B", "~", "-", "\\", ";", " ", "?", "#",
                ":", "@", "\u{ff0e}", "\u{0}",
            ]);
            prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
        }

        fn check(raw: &str) {
            let Ok(canonical) = canonicalize(raw) else {
                return;
            };
            assert!(canonical.starts_with('/'), "{raw:?} -> {canonical:?}");
            assert_eq!(
                canonicalize(&canonical).ok().as_deref(),
                Some(&*canonical),
                "not a fixed point: {raw:?}"
            );
            let inner = canonical.strip_suffix('/').unwrap_or(&canonical);
            for segment in inner.split('/').skip(1) {
                assert!(
                    !matches!(segment, "" | "." | ".."),
                    "{raw:?} -> {canonical:?}"
                );
            }
            let upper = canonical.to_ascii_uppercase();
            for escape in ["%2F", "%5C", "%25", "%00", "%7F", "%C0", "%80"] {
                assert!(!upper.contains(escape), "{raw:?} -> {canonical:?}");
            }
            assert!(
                canonical.bytes().all(|b| b.is_ascii_graphic()),
                "{raw:?} -> {canonical:?}"
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn hostile_paths_never_panic_and_canonical_output_is_clean(raw in hostile_path()) {
                check(&raw);
            }

            #[test]
            fn arbitrary_text_never_panics(raw in "\\PC{0,64}") {
                check(&raw);
            }
        }
    }
}
