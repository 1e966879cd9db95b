//! `Text`: the string type of a decision event's fields, stored inline up to `INLINE` bytes.
//!
//! Every audited request copies a dozen short strings into its event (tenant, subject, roles,
//! method, route, upstream, client address, request id, ...): as `String`s that was a dozen
//! allocations on the request thread and as many frees on the writer's. Most of them fit in 38
//! bytes (a request id is 36), so they are copied into the event itself; a longer one (a long
//! path or user agent) goes to the heap as before. It reads as a `str` (`Deref`) and is built
//! with `From<&str>`/`From<String>`, so code that built or read the `String` fields still does.

use std::fmt;
use std::ops::Deref;

/// Longest text kept inline: 38 bytes, so a `Text` is 40 bytes (a `String` is 24).
const INLINE: usize = 38;

/// A string, inline up to `INLINE` bytes.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    // INVARIANT: `buf[..len]` is UTF-8 (copied from a `str`), `len <= INLINE`.
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

// === impl Text ===

impl Text {
    pub fn new(s: &str) -> Text {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut buf = [0u8; INLINE];
                if let Some(to) = buf.get_mut(..s.len()) {
                    to.copy_from_slice(s.as_bytes());
                }
                Text(Repr::Inline { len, buf })
            }
            _ => Text(Repr::Heap(s.into())),
        }
    }

    /// The UTF-8 bytes, without checking them again (what the JSON writer escapes).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Never falls back to "": the bytes were a `str` (see the invariant).
            Repr::Inline { len, buf } => {
                std::str::from_utf8(buf.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }
}

impl Default for Text {
    fn default() -> Text {
        Text(Repr::Inline {
            len: 0,
            buf: [0; INLINE],
        })
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        if s.len() <= INLINE {
            Text::new(&s)
        } else {
            Text(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_read_back_what_they_were_given() {
        for s in [
            "",
            "a",
            "é😀",
            &"x".repeat(INLINE),
            &"x".repeat(INLINE + 1),
            &"é".repeat(30),
        ] {
            for t in [Text::from(s), Text::from(s.to_owned())] {
                assert_eq!(t.as_str(), s);
                assert_eq!(t.as_bytes(), s.as_bytes());
                assert_eq!(&*t, s);
                assert_eq!(format!("{t:?}"), format!("{s:?}"));
                assert_eq!(
                    serde_json::to_string(&t).unwrap(),
                    serde_json::to_string(s).unwrap()
                );
            }
        }
        assert!(matches!(
            Text::from("x".repeat(INLINE)).0,
            Repr::Inline { .. }
        ));
        assert!(matches!(
            Text::from("x".repeat(INLINE + 1)).0,
            Repr::Heap(_)
        ));
        assert_eq!(std::mem::size_of::<Text>(), 40);
    }
}
