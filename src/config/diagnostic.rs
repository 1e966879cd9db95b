//! Rendering of `ConfigError`s in the rustc/cedar style:
//!
//! ```text
//! error: unknown upstream `apu` in route `GET /api/x`
//!  --> gateway.toml:12:12
//!    |
//! 12 | upstream = "apu"
//!    |            ^^^^^
//!    = help: did you mean `api`?
//! ```
//!
//! Spans are byte ranges into one of the loaded `Sources`; line and column are 1-based, the
//! column counted in characters so the caret lines up under non-ASCII text.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Index of a file in `Sources`.
pub(crate) type FileId = usize;

/// Every file read during one load (the main file first, then includes), so any span can be
/// rendered with its source line.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    files: Vec<(PathBuf, String)>,
}

impl Sources {
    pub(crate) fn add(&mut self, path: PathBuf, text: String) -> FileId {
        self.files.push((path, text));
        self.files.len() - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    pub(crate) fn path(&self, file: FileId) -> &Path {
        self.files.get(file).map_or(Path::new(""), |(p, _)| p)
    }

    pub(crate) fn text(&self, file: FileId) -> &str {
        self.files.get(file).map_or("", |(_, t)| t)
    }

    /// `file:line:col` of a span start, for messages that point at a second location.
    pub(crate) fn location(&self, file: FileId, span: &Range<usize>) -> String {
        let (line, col, _) = line_col(self.text(file), span.start);
        format!("{}:{line}:{col}", self.path(file).display())
    }

    /// Build a located error; `span = None` means the error has no position in the file.
    pub(crate) fn error(
        &self,
        file: FileId,
        span: Option<Range<usize>>,
        key: &str,
        message: String,
        help: Option<String>,
    ) -> ConfigError {
        let path = self.path(file).to_path_buf();
        let text = self.text(file);
        let (line, column, rendered) = match span {
            Some(span) => {
                let (line, column, _) = line_col(text, span.start);
                let rendered = render(&path, text, span, &message, help.as_deref());
                (line, column, rendered)
            }
            None => {
                let mut rendered = format!("error: {message}\n --> {}\n", path.display());
                if let Some(help) = &help {
                    rendered.push_str(&format!("  = help: {help}\n"));
                }
                (0, 0, rendered)
            }
        };
        ConfigError {
            file: path,
            line,
            column,
            key: key.to_owned(),
            message,
            help,
            rendered,
        }
    }
}

/// 1-based line, 1-based column (in chars) and the byte offset of the line start.
fn line_col(text: &str, offset: usize) -> (usize, usize, usize) {
    let offset = clamp_to_boundary(text, offset);
    let before = text.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = text
        .get(line_start..offset)
        .map_or(0, |s| s.chars().count())
        + 1;
    (line, column, line_start)
}

fn clamp_to_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn render(
    path: &Path,
    text: &str,
    span: Range<usize>,
    message: &str,
    help: Option<&str>,
) -> String {
    let (line, column, line_start) = line_col(text, span.start);
    let rest = text.get(line_start..).unwrap_or("");
    let source_line = rest.split('\n').next().unwrap_or("").trim_end_matches('\r');
    let start = clamp_to_boundary(text, span.start);
    let end = clamp_to_boundary(text, span.end.max(start));
    let line_end = line_start + source_line.len();
    let underlined = text.get(start..end.min(line_end)).unwrap_or("");
    let width = underlined.chars().count().max(1);
    // Keep tabs so the caret stays aligned with the source line as the terminal shows it.
    let pad: String = source_line
        .chars()
        .take(column - 1)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let gutter = " ".repeat(line.to_string().len());
    let mut out = format!(
        "error: {message}\n{gutter}--> {}:{line}:{column}\n{gutter} |\n{line} | {source_line}\n{gutter} | {pad}{}\n",
        path.display(),
        "^".repeat(width),
    );
    if let Some(help) = help {
        out.push_str(&format!("{gutter} = help: {help}\n"));
    }
    out
}

/// The closest candidate, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (crate::policy::edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" when something is close.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// `` `a`, `b`, `c` `` for lists of valid values.
pub(crate) fn backticked<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A syntax or shape error from `toml`/serde: keep its message, point at its span, and turn
/// serde's "unknown field `x`, expected one of ..." into a "did you mean" help.
pub(crate) fn from_toml(sources: &Sources, file: FileId, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().trim_end_matches('.').to_owned();
    let help = unknown_name_help(&message);
    let key = String::new();
    sources.error(file, err.span(), &key, message, help)
}

fn unknown_name_help(message: &str) -> Option<String> {
    let is_unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if !is_unknown {
        return None;
    }
    // Backticked words: the first is what was written, the rest are the valid ones.
    let mut words = message.split('`').skip(1).step_by(2);
    let written = words.next()?;
    let expected: Vec<&str> = words.collect();
    did_you_mean(written, expected.iter().copied())
}
