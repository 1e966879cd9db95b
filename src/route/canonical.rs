//! Path canonicalization (security.md R2): the path that is matched is the path that is
//! forwarded.

use std::borrow::Cow;

/// Why a request path is ambiguous or malformed (400 `ambiguous_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with `/`")]
    NotOrigin,
}

/// Canonicalize a raw request path (without query).
pub fn canonicalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOrigin);
    }
    Ok(Cow::Borrowed(raw))
}
