//! Permission names and patterns (`resource.action`, `email.*`, `*.view`, `*`).
//!
//! Grammar, with `sep` the configured single-character separator (default `.`):
//!
//! - a *name* is one or more non-empty segments joined by `sep`; a segment is made of ASCII
//!   letters, digits, `-`, `_` and `:`, minus `sep` itself (with `_` as the separator,
//!   `payment_methods_view` has three segments);
//! - a *pattern* is a name where a segment may be `*`. A `*` must be a whole segment
//!   (`camp*` is an error). It matches exactly one segment, except as the last segment, where
//!   it matches one or more (`email.*` matches `email.campaigns.send`, `*.view` does not match
//!   `a.b.view`, `*` matches every name).
//!
//! Matching is case-sensitive. `Pattern::matches` is the naive per-name check: `policy` runs it
//! only at compile time, against the permission universe, never on the request path.

use std::fmt;

/// Why a permission name or pattern is malformed. `Display` is the lowercase message;
/// [`PatternError::help`] says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty permission")]
    Empty,
    #[error("empty segment in `{input}`")]
    EmptySegment { input: String, sep: char },
    #[error("`*` must be a whole segment, found `{segment}` in `{input}`")]
    PartialWildcard { input: String, segment: String },
    #[error("invalid character `{ch}` in `{input}`")]
    InvalidChar { input: String, ch: char, sep: char },
    /// A concrete name was expected (route requirements), but the input has a `*` segment.
    #[error("`{input}` is a pattern, but a concrete permission is required here")]
    Wildcard { input: String },
}

impl PatternError {
    /// How to fix the input.
    pub fn help(&self) -> String {
        match self {
            PatternError::Empty => "write a permission such as `campaigns.view`".to_owned(),
            PatternError::EmptySegment { sep, .. } => {
                format!("segments are separated by a single `{sep}` and may not be empty")
            }
            PatternError::PartialWildcard { segment, .. } => {
                let prefix = segment.replace('*', "");
                format!(
                    "`*` matches whole segments only; to match everything under `{prefix}`, \
                     make it its own segment"
                )
            }
            PatternError::InvalidChar { sep, .. } => format!(
                "segments use ASCII letters, digits, `-`, `_` and `:`, separated by `{sep}`"
            ),
            PatternError::Wildcard { .. } => {
                "route requirements name the exact permission (no `*`); \
                 wildcards belong in role patterns"
                    .to_owned()
            }
        }
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Any,
}

/// A parsed permission pattern. Keeps its source text for messages and `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: Box<str>,
    sep: char,
    // INVARIANT: non-empty.
    segments: Box<[Segment]>,
}

/// Whether `c` may appear inside a segment when `sep` is the separator.
fn is_segment_char(c: char, sep: char) -> bool {
    c != sep && (c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))
}

/// Split `input` into segments, checking the grammar; `allow_any` admits `*` segments.
fn parse_segments(input: &str, sep: char, allow_any: bool) -> Result<Vec<Segment>, PatternError> {
    if input.is_empty() {
        return Err(PatternError::Empty);
    }
    let mut segments = Vec::new();
    for seg in input.split(sep) {
        if seg.is_empty() {
            return Err(PatternError::EmptySegment {
                input: input.to_owned(),
                sep,
            });
        }
        if seg == "*" {
            if !allow_any {
                return Err(PatternError::Wildcard {
                    input: input.to_owned(),
                });
            }
            segments.push(Segment::Any);
            continue;
        }
        if seg.contains('*') {
            return Err(PatternError::PartialWildcard {
                input: input.to_owned(),
                segment: seg.to_owned(),
            });
        }
        if let Some(ch) = seg.chars().find(|&c| !is_segment_char(c, sep)) {
            return Err(PatternError::InvalidChar {
                input: input.to_owned(),
                ch,
                sep,
            });
        }
        segments.push(Segment::Literal(seg.into()));
    }
    Ok(segments)
}

/// Check that `name` is a concrete permission (no `*`), as route requirements must be.
pub fn validate_name(name: &str, sep: char) -> Result<(), PatternError> {
    parse_segments(name, sep, false).map(|_| ())
}

// === impl Pattern ===

impl Pattern {
    pub fn parse(input: &str, sep: char) -> Result<Pattern, PatternError> {
        let segments = parse_segments(input, sep, true)?;
        Ok(Pattern {
            source: input.into(),
            sep,
            segments: segments.into_boxed_slice(),
        })
    }

    /// Whether the (concrete) permission `name` matches. No allocation.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split(self.sep);
        let last = self.segments.len();
        for (i, seg) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            if part.is_empty() {
                return false;
            }
            match seg {
                // A trailing `*` takes this segment and any that follow (one or more).
                Segment::Any if i + 1 == last => return parts.all(|p| !p.is_empty()),
                Segment::Any => {}
                Segment::Literal(lit) => {
                    if **lit != *part {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether the pattern has a `*` segment (otherwise it names exactly one permission).
    pub fn is_wildcard(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Any))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn separator(&self) -> char {
        self.sep
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}
