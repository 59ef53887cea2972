//! The declarative mapping file: how the columns of a legacy file become an event payload.
//!
//! A mapping is TOML (documented in `docs/legacy-mapping.md`), parsed into [`Mapping`] and
//! validated as a whole on load, so an operator sees every mistake at once and before any row
//! is read. Column names can only be checked against the file's header, which
//! [`Mapping::bind`] does; the resulting [`BoundMapping`] turns records into payloads.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::decode::Encoding;
use super::records::Layout;

mod bind;

pub use bind::{BoundMapping, FieldError, Mapped, Problem};

/// A validated mapping file. Build it with [`Mapping::from_toml`] or [`Mapping::load`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Event type of every event produced, e.g. `health.vaccination.recorded`.
    pub event_type: String,
    /// Schema version to pin; absent means the latest at validation time.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// Department the file must come from; normally the caller's identity decides, and a
    /// mapping that names a source refuses callers with another one.
    #[serde(default)]
    pub source: Option<String>,
    /// `csv` or `fixed`.
    pub format: Format,
    /// `utf-8`, `shift_jis` / `cp932`, or `auto` (the default).
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// CSV delimiter, one ASCII character (default `,`); not allowed for `fixed`.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Whether the first row holds column names.
    #[serde(default)]
    pub header: bool,
    /// Field widths in bytes of the file's encoding (`fixed` only).
    #[serde(default)]
    pub widths: Vec<usize>,
    /// Names for the columns when the file has no header row (optional).
    #[serde(default)]
    pub column_names: Vec<String>,
    /// Columns whose (trimmed, width-folded) values form the record key.
    pub key: Vec<ColumnRef>,
    /// Column giving the record's version, e.g. an update timestamp. Without it the version
    /// is a digest of the payload, so a changed record still gets a new event id.
    #[serde(default)]
    pub version: Option<ColumnRef>,
    /// The payload fields, in order.
    pub fields: Vec<FieldSpec>,
}

/// The input file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Delimited text.
    Csv,
    /// Fixed-width records, one per line.
    Fixed,
}

/// A column, by 1-based position or by name (from the header row or `column_names`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(untagged)]
pub enum ColumnRef {
    /// 1-based column number, as a person counts columns.
    Index(usize),
    /// Column name; compared after trimming and full-width folding.
    Name(String),
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(i) => write!(f, "#{i}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// One payload field.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// JSON pointer into the payload, e.g. `/person/name_kana`; objects are created as needed.
    pub target: String,
    /// Where the value comes from; exactly one of `column` and `value`.
    #[serde(default)]
    pub column: Option<ColumnRef>,
    /// A constant used instead of a column (still transformed and typed).
    #[serde(default)]
    pub value: Option<Constant>,
    /// JSON type to produce.
    #[serde(default, rename = "type")]
    pub kind: FieldType,
    /// Text transforms applied in order before the null check and typing.
    #[serde(default)]
    pub transforms: Vec<Transform>,
    /// Whether an empty value rejects the row; an empty optional field is left out.
    #[serde(default = "yes")]
    pub required: bool,
    /// Values meaning "empty", compared after transforms and trimming (e.g. `"-"`).
    #[serde(default)]
    pub null_values: Vec<String>,
    /// Personal data (e.g. a My Number): its value never appears in an error or reject file,
    /// and its column may not be part of the key or version.
    #[serde(default)]
    pub pii: bool,
}

/// A constant field value as written in TOML.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Constant {
    /// `value = true`
    Bool(bool),
    /// `value = 131130`
    Integer(i64),
    /// `value = 1.5`
    Float(f64),
    /// `value = "131130"`
    Text(String),
}

impl Constant {
    /// The constant as the text a column would have held.
    pub fn as_text(&self) -> String {
        match self {
            Self::Bool(b) => b.to_string(),
            Self::Integer(i) => i.to_string(),
            Self::Float(x) => x.to_string(),
            Self::Text(s) => s.clone(),
        }
    }
}

/// The JSON type a field is converted to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// A JSON string, as transformed.
    #[default]
    String,
    /// A JSON integer (i64); width-folded and trimmed first, so `１２` works.
    Integer,
    /// A finite JSON number; width-folded and trimmed first.
    Number,
    /// `true`/`false`, `1`/`0`, `yes`/`no`, `y`/`n` (any case).
    Boolean,
    /// An era or Gregorian date, converted to ISO `YYYY-MM-DD` (see [`super::era`]).
    Date,
}

/// A text transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Trim ASCII whitespace and U+3000 at both ends.
    Trim,
    /// Full-width ASCII to ASCII, U+3000 to space.
    Halfwidth,
    /// Half-width katakana to full-width, voiced marks combined.
    FullwidthKana,
    /// Keep only digits (full-width digits become ASCII), e.g. for `1234-5678-9012`.
    DigitsOnly,
    /// Uppercase.
    Upper,
}

/// Why a mapping could not be loaded or bound to a file.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("reading mapping file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Not valid TOML, or a key of the wrong type or unknown (the message has the position).
    #[error("mapping file is not valid: {0}")]
    Toml(#[from] toml::de::Error),
    /// Every problem found, each naming the setting it concerns.
    #[error("invalid mapping: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

fn default_encoding() -> String {
    "auto".into()
}

fn yes() -> bool {
    true
}

impl Mapping {
    /// Reads and validates a mapping file.
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| MappingError::Io { path: path.to_path_buf(), source })?;
        Self::from_toml(&text)
    }

    /// Parses and validates mapping TOML.
    pub fn from_toml(text: &str) -> Result<Self, MappingError> {
        let mapping: Mapping = toml::from_str(text)?;
        let problems = mapping.problems();
        if problems.is_empty() {
            Ok(mapping)
        } else {
            Err(MappingError::Invalid(problems))
        }
    }

    /// The encoding setting, parsed (validated on load; unknown names fall back to `Auto`).
    pub fn encoding(&self) -> Encoding {
        Encoding::from_name(&self.encoding).unwrap_or_default()
    }

    /// The record layout for [`super::records::ReaderOptions`].
    pub fn layout(&self) -> Layout {
        match self.format {
            Format::Csv => Layout::Csv { delimiter: self.delimiter_byte().unwrap_or(b',') },
            Format::Fixed => Layout::Fixed { widths: self.widths.clone() },
        }
    }

    /// Columns each row must have, when the mapping says (from `column_names`).
    pub fn expected_columns(&self) -> Option<usize> {
        (!self.column_names.is_empty() && !self.header).then_some(self.column_names.len())
    }

    fn delimiter_byte(&self) -> Option<u8> {
        let d = self.delimiter.as_deref()?;
        match d.as_bytes() {
            [b] if b.is_ascii() => Some(*b),
            _ => None,
        }
    }

    /// Every problem with the mapping that can be found without the input file.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !is_token_path(&self.event_type) {
            p.push(format!("event_type {:?} must be lowercase dot-separated tokens", self.event_type));
        }
        if let Some(source) = &self.source {
            if !is_token(source) {
                p.push(format!("source {source:?} must be one lowercase token (a-z 0-9 - _)"));
            }
        }
        let encoding = Encoding::from_name(&self.encoding);
        if encoding.is_none() {
            p.push(format!("encoding {:?} is not one of utf-8, shift_jis, cp932, auto", self.encoding));
        }
        match self.format {
            Format::Csv => {
                if let Some(d) = &self.delimiter {
                    match self.delimiter_byte() {
                        None => p.push(format!("delimiter {d:?} must be one ASCII character")),
                        Some(b'"' | b'\r' | b'\n') => p.push(format!("delimiter {d:?} is not allowed")),
                        Some(b) if !encoding.unwrap_or_default().is_safe_separator(b) => p.push(format!(
                            "delimiter {d:?} can occur inside Shift_JIS characters; use , ; : or a tab"
                        )),
                        Some(_) => {}
                    }
                }
                if !self.widths.is_empty() {
                    p.push("widths is only for format = \"fixed\"".into());
                }
            }
            Format::Fixed => {
                if self.widths.is_empty() || self.widths.contains(&0) {
                    p.push("format = \"fixed\" needs widths, each at least 1 byte".into());
                }
                if self.delimiter.is_some() {
                    p.push("delimiter is not used with format = \"fixed\"".into());
                }
                if !self.column_names.is_empty() && self.column_names.len() != self.widths.len() {
                    p.push(format!(
                        "column_names has {} names but widths has {} fields",
                        self.column_names.len(),
                        self.widths.len()
                    ));
                }
            }
        }
        let mut seen_names = HashSet::new();
        for name in &self.column_names {
            if !seen_names.insert(bind::normalize_name(name)) {
                p.push(format!("column_names has {name:?} twice"));
            }
        }
        if self.key.is_empty() {
            p.push("key must name at least one column".into());
        }
        for column in &self.key {
            self.check_column(column, "key", &mut p);
        }
        if let Some(column) = &self.version {
            self.check_column(column, "version", &mut p);
        }
        if self.fields.is_empty() {
            p.push("at least one [[fields]] entry is needed".into());
        }
        let mut targets: Vec<&str> = Vec::new();
        for f in &self.fields {
            let what = format!("field {:?}", f.target);
            if !is_pointer(&f.target) {
                p.push(format!("{what}: target must be a JSON pointer like /person/name"));
            }
            match (&f.column, &f.value) {
                (Some(column), None) => self.check_column(column, &what, &mut p),
                (None, Some(_)) => {}
                _ => p.push(format!("{what}: give exactly one of column and value")),
            }
            for other in &targets {
                if pointer_overlaps(other, &f.target) {
                    p.push(format!("{what}: target overlaps field {other:?}"));
                }
            }
            targets.push(&f.target);
        }
        p
    }

    /// Checks what can be checked of a column reference before the header is known.
    fn check_column(&self, column: &ColumnRef, what: &str, problems: &mut Vec<String>) {
        let known = match self.format {
            // Without widths that is reported already; don't add a message per column.
            Format::Fixed => (!self.widths.is_empty()).then_some(self.widths.len()),
            Format::Csv if !self.header && !self.column_names.is_empty() => Some(self.column_names.len()),
            Format::Csv => None,
        };
        match column {
            ColumnRef::Index(0) => problems.push(format!("{what}: columns are numbered from 1")),
            ColumnRef::Index(i) if known.is_some_and(|n| *i > n) => {
                problems.push(format!("{what}: column {i} is past the last column"));
            }
            ColumnRef::Name(name) if !self.header => {
                let wanted = bind::normalize_name(name);
                if !self.column_names.iter().any(|c| bind::normalize_name(c) == wanted) {
                    problems.push(format!(
                        "{what}: column {name:?} needs header = true or an entry in column_names"
                    ));
                }
            }
            _ => {}
        }
    }
}

/// One NATS-safe token: what a source or an event-type segment may be.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_token_path(s: &str) -> bool {
    s.split('.').all(is_token)
}

fn is_pointer(s: &str) -> bool {
    s.starts_with('/') && bind::pointer_segments(s).all(|seg| !seg.is_empty())
}

/// Whether one target is the other or lies inside it (both can't be written).
fn pointer_overlaps(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short || long.strip_prefix(short).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests;
