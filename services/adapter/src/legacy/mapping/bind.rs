//! Applying a mapping to records: column resolution, transforms, typing and payload building.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Number, Value};

use super::{ColumnRef, FieldSpec, FieldType, Mapping, MappingError, Transform};
use crate::legacy::era::parse_date;
use crate::legacy::ids::sha256_hex;
use crate::legacy::records::Record;
use crate::legacy::width::{fold_to_halfwidth, katakana_to_fullwidth, trim_spaces};

/// The result of mapping one record.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    /// The event payload, with nested objects built from the field targets.
    pub payload: Value,
    /// The record key: key column values joined by `|` (`\` escapes `|` and `\`).
    pub key: String,
    /// The record version: the version column's value, or `sha256:<hex>` of the payload.
    pub version: String,
}

/// What is wrong with a field. Its Display never contains the value, so it is what reject
/// files record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A required value is empty (or one of the null values).
    #[error("required value is empty")]
    Missing,
    /// The row is shorter than the mapping expects.
    #[error("the row has no such column")]
    NoSuchColumn,
    /// Not an integer in the range of i64.
    #[error("not an integer")]
    NotInteger,
    /// Not a finite decimal number.
    #[error("not a number")]
    NotNumber,
    /// Not one of the accepted boolean spellings.
    #[error("not a boolean (true/false, 1/0, yes/no)")]
    NotBoolean,
    /// Not a valid date; the reason is left out for personal data.
    #[error("not a valid date{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotDate(Option<String>),
    /// A key column is empty.
    #[error("key value is empty")]
    KeyMissing,
    /// The version column is empty.
    #[error("version value is empty")]
    VersionMissing,
    /// Two targets collide (prevented by validation; kept so insertion never panics).
    #[error("target collides with another field")]
    TargetConflict,
}

/// A field that could not be mapped: names the column, the target and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The column as configured (name, or `#n`), or `value` for a constant.
    pub column: String,
    /// The target pointer, or `(key)` / `(version)`.
    pub target: String,
    /// What is wrong, without the value.
    pub problem: Problem,
    /// The offending value, for diagnosis; always `None` for `pii = true` fields.
    pub value: Option<String>,
    /// Whether the field is personal data (so the message says the value was withheld).
    pub pii: bool,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {} -> {}: {}", self.column, self.target, self.problem)?;
        match &self.value {
            _ if self.pii => f.write_str(" (value withheld: personal data)"),
            Some(value) => write!(f, " (value {value:?})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for FieldError {}

/// Where a bound field's text comes from.
enum Source {
    Column(usize),
    Constant(String),
}

struct BoundField<'a> {
    spec: &'a FieldSpec,
    source: Source,
    label: String,
    segments: Vec<String>,
}

/// A mapping whose columns are resolved against one file; see [`Mapping::bind`].
pub struct BoundMapping<'a> {
    fields: Vec<BoundField<'a>>,
    key: Vec<(usize, String)>,
    version: Option<(usize, String)>,
}

impl Mapping {
    /// Resolves column names against the file's header (or `column_names`) and checks that no
    /// key or version column is a personal-data column, since the key becomes the event's
    /// subject and is visible wherever events are listed.
    pub fn bind(&self, headers: Option<&[String]>) -> Result<BoundMapping<'_>, MappingError> {
        let names: Vec<String> = match headers {
            Some(h) if self.header => h.iter().map(|n| normalize_name(n)).collect(),
            _ => self.column_names.iter().map(|n| normalize_name(n)).collect(),
        };
        let mut problems = Vec::new();
        let mut resolve = |column: &ColumnRef, what: &str| -> Option<usize> {
            let found = match column {
                ColumnRef::Index(i) if *i >= 1 && (names.is_empty() || *i <= names.len()) => Some(i - 1),
                ColumnRef::Index(_) => None,
                ColumnRef::Name(name) => {
                    let wanted = normalize_name(name);
                    let mut hits = names.iter().enumerate().filter(|(_, n)| **n == wanted);
                    match (hits.next(), hits.next()) {
                        (Some((i, _)), None) => Some(i),
                        (Some(_), Some(_)) => {
                            problems.push(format!("{what}: column {name:?} appears more than once"));
                            return None;
                        }
                        (None, _) => None,
                    }
                }
            };
            if found.is_none() {
                problems.push(format!(
                    "{what}: column {column} is not in the file (columns: {})",
                    names.join(", ")
                ));
            }
            found
        };
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut pii_columns = Vec::new();
        for spec in &self.fields {
            let (source, label) = match (&spec.column, &spec.value) {
                (Some(column), _) => match resolve(column, &format!("field {:?}", spec.target)) {
                    Some(i) => {
                        if spec.pii {
                            pii_columns.push(i);
                        }
                        (Source::Column(i), column.to_string())
                    }
                    None => continue,
                },
                (None, Some(constant)) => (Source::Constant(constant.as_text()), "value".into()),
                (None, None) => continue, // refused by validation on load
            };
            let segments = pointer_segments(&spec.target).map(unescape_segment).collect();
            fields.push(BoundField { spec, source, label, segments });
        }
        let key: Vec<(usize, String)> =
            self.key.iter().filter_map(|c| resolve(c, "key").map(|i| (i, c.to_string()))).collect();
        let version = self.version.as_ref().and_then(|c| resolve(c, "version").map(|i| (i, c.to_string())));
        for (i, label) in key.iter().chain(&version) {
            if pii_columns.contains(i) {
                problems.push(format!("key/version column {label} is mapped as pii and would be exposed"));
            }
        }
        if problems.is_empty() {
            Ok(BoundMapping { fields, key, version })
        } else {
            Err(MappingError::Invalid(problems))
        }
    }
}

impl BoundMapping<'_> {
    /// Maps one record to a payload, key and version; the first failing field is returned.
    pub fn apply(&self, record: &Record) -> Result<Mapped, FieldError> {
        let mut payload = Map::new();
        for field in &self.fields {
            let spec = field.spec;
            let error = |problem, value: Option<&str>| FieldError {
                column: field.label.clone(),
                target: spec.target.clone(),
                problem,
                value: if spec.pii { None } else { value.map(str::to_owned) },
                pii: spec.pii,
            };
            let raw = match &field.source {
                Source::Column(i) => {
                    record.fields.get(*i).ok_or_else(|| error(Problem::NoSuchColumn, None))?
                }
                Source::Constant(text) => text,
            };
            let text = apply_transforms(raw, &spec.transforms);
            let trimmed = trim_spaces(&text);
            if trimmed.is_empty() || spec.null_values.iter().any(|n| n == trimmed) {
                if spec.required {
                    return Err(error(Problem::Missing, None));
                }
                continue;
            }
            let value = convert(&text, spec.kind, spec.pii).map_err(|p| error(p, Some(raw)))?;
            insert(&mut payload, &field.segments, value).map_err(|p| error(p, None))?;
        }
        let mut key = String::new();
        for (n, (i, label)) in self.key.iter().enumerate() {
            let part = normalized(record, *i, label, "(key)", Problem::KeyMissing)?;
            if n > 0 {
                key.push('|');
            }
            key.push_str(&part.replace('\\', "\\\\").replace('|', "\\|"));
        }
        let payload = Value::Object(payload);
        let version = match &self.version {
            Some((i, label)) => normalized(record, *i, label, "(version)", Problem::VersionMissing)?,
            // serde_json maps are sorted, so equal payloads serialize to equal bytes.
            None => format!("sha256:{}", sha256_hex(payload.to_string().as_bytes())),
        };
        Ok(Mapped { payload, key, version })
    }
}

/// A key or version value: trimmed and width-folded so `０１` and `01 ` are the same key.
fn normalized(
    record: &Record,
    i: usize,
    label: &str,
    target: &str,
    empty: Problem,
) -> Result<String, FieldError> {
    let error = |problem| FieldError {
        column: label.into(),
        target: target.into(),
        problem,
        value: None,
        pii: false,
    };
    let raw = record.fields.get(i).ok_or_else(|| error(Problem::NoSuchColumn))?;
    let folded = fold_to_halfwidth(raw);
    let value = trim_spaces(&folded);
    if value.is_empty() {
        return Err(error(empty));
    }
    Ok(value.to_owned())
}

fn apply_transforms<'s>(raw: &'s str, transforms: &[Transform]) -> Cow<'s, str> {
    let mut text = Cow::Borrowed(raw);
    for t in transforms {
        text = match t {
            Transform::Trim => Cow::Owned(trim_spaces(&text).to_owned()),
            Transform::Halfwidth => Cow::Owned(fold_to_halfwidth(&text).into_owned()),
            Transform::FullwidthKana => Cow::Owned(katakana_to_fullwidth(&text).into_owned()),
            Transform::DigitsOnly => {
                Cow::Owned(fold_to_halfwidth(&text).chars().filter(char::is_ascii_digit).collect())
            }
            Transform::Upper => Cow::Owned(text.to_uppercase()),
        };
    }
    text
}

pub(super) fn convert(text: &str, kind: FieldType, pii: bool) -> Result<Value, Problem> {
    if kind == FieldType::String {
        return Ok(Value::String(text.to_owned()));
    }
    // Typed values are folded and trimmed whatever the transforms say: `１２` is a number.
    let folded = fold_to_halfwidth(text);
    let t = trim_spaces(&folded);
    match kind {
        FieldType::String => Ok(Value::String(t.to_owned())),
        FieldType::Integer => t.parse::<i64>().map(Value::from).map_err(|_| Problem::NotInteger),
        FieldType::Number => t
            .parse::<f64>()
            .ok()
            .filter(|x| t.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) && x.is_finite())
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or(Problem::NotNumber),
        FieldType::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "n" => Ok(Value::Bool(false)),
            _ => Err(Problem::NotBoolean),
        },
        FieldType::Date => parse_date(t)
            .map(|d| Value::String(d.to_iso()))
            .map_err(|e| Problem::NotDate((!pii).then(|| e.reason()))),
    }
}

fn insert(root: &mut Map<String, Value>, segments: &[String], value: Value) -> Result<(), Problem> {
    let Some((last, parents)) = segments.split_last() else {
        return Err(Problem::TargetConflict);
    };
    let mut node = root;
    for seg in parents {
        node = node
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or(Problem::TargetConflict)?;
    }
    match node.insert(last.clone(), value) {
        None => Ok(()),
        Some(_) => Err(Problem::TargetConflict),
    }
}

/// Column names compare equal after trimming and full-width folding.
pub(super) fn normalize_name(name: &str) -> String {
    trim_spaces(&fold_to_halfwidth(name)).to_owned()
}

/// The raw (still escaped) segments of a JSON pointer, without the leading `/`.
pub(super) fn pointer_segments(pointer: &str) -> impl Iterator<Item = &str> {
    pointer.strip_prefix('/').unwrap_or(pointer).split('/')
}

/// RFC 6901: `~1` is `/` and `~0` is `~`, in that order.
fn unescape_segment(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}
