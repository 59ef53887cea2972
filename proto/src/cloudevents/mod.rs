//! `Event` as a CloudEvent (CloudEvents 1.0): the one mapping every Kakehashi process uses.
//!
//! - [`binary`]: the NATS protocol binding in binary content mode, which `KH_EVENTS` holds
//!   (attributes as `ce-` headers, the body the event's `data` untouched), and the reader that
//!   also takes the older messages whose body is a whole protobuf `Event`.
//! - [`json`]: the JSON event format (`application/cloudevents+json`).
//! - [`protobuf`]: the protobuf event format (`io.cloudevents.v1.CloudEvent`).
//!
//! The attribute mapping, shared by all three (`docs/architecture.md`, "KH_EVENTS holds
//! binary-mode CloudEvents"):
//!
//! | `Event` | CloudEvents |
//! |---|---|
//! | `id`, `type` | `id`, `type` |
//! | `source` (department id) | `source` = `urn:kakehashi:department:<id>` (the URI SAN of department certificates) |
//! | `subject` (record key) | `subject`, when not empty |
//! | `time` | `time` (RFC 3339), when set |
//! | `data_content_type` | `datacontenttype`, when not empty |
//! | `schema`, `schema_version` | `dataschema` = `https://kakehashi.invalid/schemas/<subject>[/<version>]` (the registry's schema ids), when either is set |
//! | `extensions` | one extension attribute each; a key that is no valid CloudEvents name is escaped as `khx<hex of its UTF-8>` |
//! | `data` | data |
//!
//! Decoding gives back the same `Event` for every field, with one equivalence the envelope
//! itself defines: a `schema` equal to the `type` reads back as empty ("empty means the event
//! type").

pub mod binary;
pub mod json;
pub mod protobuf;

use crate::v1::Event;
use prost_types::Timestamp;
use std::borrow::Cow;
use std::fmt::Write as _;

/// The only CloudEvents version Kakehashi writes and reads.
pub const SPEC_VERSION: &str = "1.0";
/// `source` of an event from department `<id>`: `urn:kakehashi:department:<id>`.
pub const SOURCE_PREFIX: &str = "urn:kakehashi:department:";
/// Base of the registry's schema ids, and so of `dataschema`.
pub const SCHEMA_BASE: &str = "https://kakehashi.invalid/schemas/";
/// Prefix of an escaped extension name (`khx` + hex of the key's UTF-8 bytes).
pub const ESCAPED_EXTENSION_PREFIX: &str = "khx";
/// Context attribute names CloudEvents defines (never extension names).
pub const CORE_ATTRIBUTES: &[&str] =
    &["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data"];

/// Why something is not a CloudEvent Kakehashi can map onto an `Event`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    /// A REQUIRED attribute is absent (or empty).
    #[error("required attribute `{0}` is missing")]
    Missing(&'static str),
    /// `specversion` is not 1.0.
    #[error("attribute `specversion` is {0:?}; only \"1.0\" is supported")]
    SpecVersion(String),
    /// An attribute's value is not of the form Kakehashi maps.
    #[error("attribute `{attribute}`: {reason}")]
    Invalid {
        /// The attribute.
        attribute: String,
        /// What is wrong with it (never its value when that may be personal data).
        reason: String,
    },
    /// Both `data` and `data_base64` (JSON format).
    #[error("attributes `data` and `data_base64` are both present; a CloudEvent has at most one")]
    DataTwice,
    /// An extension attribute of a type that has no string form here.
    #[error("extension attribute `{name}` has a value of type {kind}; extensions must be a string, URI, URI-reference, boolean, integer, binary or timestamp")]
    ExtensionType {
        /// The extension attribute.
        name: String,
        /// The type found.
        kind: &'static str,
    },
    /// The JSON format's document is not a JSON object (or names a key twice).
    #[error("not a CloudEvents JSON document: {0}")]
    NotJson(String),
    /// The JSON format's document nests arrays and objects deeper than the reader's limit.
    #[error("the CloudEvents JSON document nests deeper than {max_depth} levels (max_json_depth)")]
    TooDeep {
        /// The limit.
        max_depth: usize,
    },
    /// The protobuf format's bytes are no `io.cloudevents.v1.CloudEvent`.
    #[error("not an encoded io.cloudevents.v1.CloudEvent: {0}")]
    NotProtobuf(String),
}

impl CloudEventError {
    /// The attribute the error is about, when it is about one.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            CloudEventError::Missing(a) => Some(a),
            CloudEventError::SpecVersion(_) => Some("specversion"),
            CloudEventError::Invalid { attribute, .. } => Some(attribute),
            CloudEventError::DataTwice => Some("data_base64"),
            CloudEventError::ExtensionType { name, .. } => Some(name),
            CloudEventError::NotJson(_)
            | CloudEventError::TooDeep { .. }
            | CloudEventError::NotProtobuf(_) => None,
        }
    }

    fn invalid(attribute: &str, reason: impl Into<String>) -> Self {
        CloudEventError::Invalid { attribute: attribute.to_string(), reason: reason.into() }
    }
}

/// `source` of department `department`.
pub fn source_uri(department: &str) -> String {
    format!("{SOURCE_PREFIX}{department}")
}

/// The department a `source` names: `urn:kakehashi:department:<id>`, or a bare department id
/// (a relative URI-reference) from a publisher that does not write the URN.
pub fn department_of(source: &str) -> Result<&str, CloudEventError> {
    if let Some(id) = source.strip_prefix(SOURCE_PREFIX) {
        return Ok(id);
    }
    if crate::ident::is_valid_department_id(source) {
        return Ok(source);
    }
    Err(CloudEventError::invalid("source", format!("must be {SOURCE_PREFIX}<department id>")))
}

/// `dataschema` of (subject, version); version 0 (the latest at validation) leaves it out.
pub fn schema_uri(subject: &str, version: u32) -> String {
    let mut uri = String::with_capacity(SCHEMA_BASE.len() + subject.len() + 11);
    uri.push_str(SCHEMA_BASE);
    // Percent-encoded so that a `/` in a subject cannot be taken for the version separator;
    // registry subjects (`[a-z0-9.-]`) come out unchanged, as the registry's ids.
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            let _ = write!(uri, "%{b:02X}");
        }
    }
    if version > 0 {
        let _ = write!(uri, "/{version}");
    }
    uri
}

/// (subject, version) of a `dataschema`; version 0 when the URI names none.
pub fn parse_schema_uri(uri: &str) -> Result<(String, u32), CloudEventError> {
    let bad =
        || CloudEventError::invalid("dataschema", format!("must be {SCHEMA_BASE}<subject>[/<version>]"));
    let rest = uri.strip_prefix(SCHEMA_BASE).ok_or_else(bad)?;
    let (subject, version) = match rest.split_once('/') {
        Some((s, v)) => {
            let n: u32 = v.parse().map_err(|_| bad())?;
            // Only the canonical decimal form, so that the URI round-trips byte for byte.
            if n == 0 || n.to_string() != v {
                return Err(bad());
            }
            (s, n)
        }
        None => (rest, 0),
    };
    let subject = percent_decode(subject).map_err(|reason| CloudEventError::invalid("dataschema", reason))?;
    if subject.is_empty() {
        return Err(bad());
    }
    Ok((subject, version))
}

/// Whether `name` is a valid CloudEvents attribute name: lowercase ASCII letters and digits.
pub fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The extension attribute name of an `Event.extensions` key. A key that is no valid name, is
/// a core attribute's name, or starts with the escape prefix is escaped (`khx` + hex of its
/// UTF-8 bytes): lossless, and still a valid name, so nothing is refused.
pub fn extension_name(key: &str) -> Cow<'_, str> {
    if is_attribute_name(key) && !key.starts_with(ESCAPED_EXTENSION_PREFIX) && !CORE_ATTRIBUTES.contains(&key)
    {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{ESCAPED_EXTENSION_PREFIX}{}", hex::encode(key)))
    }
}

/// The `Event.extensions` key of an extension attribute name (see [`extension_name`]).
pub fn extension_key(name: &str) -> Result<String, CloudEventError> {
    if !is_attribute_name(name) {
        return Err(CloudEventError::invalid(
            name,
            "extension attribute names are lowercase ASCII letters and digits only",
        ));
    }
    match name.strip_prefix(ESCAPED_EXTENSION_PREFIX) {
        Some(h) => hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
            CloudEventError::invalid(
                name,
                format!("names starting with {ESCAPED_EXTENSION_PREFIX} are escaped keys: hex of UTF-8 must follow"),
            )
        }),
        None => Ok(name.to_string()),
    }
}

/// `time` as RFC 3339 (UTC, fractional seconds only as long as needed).
pub fn format_time(ts: &Timestamp) -> Result<String, CloudEventError> {
    let bad = |reason: &str| CloudEventError::invalid("time", reason);
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| bad("nanos out of range"))?;
    let t = time::OffsetDateTime::from_unix_timestamp(ts.seconds)
        .map_err(|_| bad("outside the years RFC 3339 can write"))?
        .replace_nanosecond(nanos)
        .map_err(|_| bad("nanos out of range"))?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| bad("outside the years 0000-9999 of RFC 3339"))
}

/// An RFC 3339 `time` as a protobuf timestamp.
pub fn parse_time(s: &str) -> Result<Timestamp, CloudEventError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| CloudEventError::invalid("time", format!("not an RFC 3339 timestamp: {e}")))?;
    Ok(Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 })
}

/// Why an event's `time` cannot be a CloudEvents `time` (the validator dead-letters such an
/// event as a malformed envelope), or None when it can.
pub fn time_problem(event: &Event) -> Option<String> {
    let ts = event.time.as_ref()?;
    format_time(ts).err().map(|e| e.to_string())
}

/// The `Event` fields `dataschema` carries: (subject, version) as published.
fn event_schema(event: &Event) -> Option<(&str, u32)> {
    if event.schema.is_empty() && event.schema_version == 0 {
        return None;
    }
    let subject = if event.schema.is_empty() { event.r#type.as_str() } else { event.schema.as_str() };
    Some((subject, event.schema_version))
}

/// `schema` of an event of type `event_type` whose `dataschema` names `subject`.
fn schema_field(subject: String, event_type: &str) -> String {
    if subject == event_type {
        String::new()
    } else {
        subject
    }
}

/// Percent-encodes a header value as the NATS (and HTTP) binding requires: space, `"`, `%` and
/// everything outside printable ASCII, per UTF-8 byte, upper-case hex.
pub fn percent_encode(value: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// One round of percent-decoding; the bytes must be UTF-8 (an overlong or broken sequence is
/// refused, as the binding requires).
pub fn percent_decode(value: &str) -> Result<String, String> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("a % not followed by two hex digits")?;
            let s = std::str::from_utf8(hex).map_err(|_| "a % not followed by two hex digits")?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| "a % not followed by two hex digits")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoded bytes are not UTF-8".to_string())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Generators of arbitrary events for the round-trip property tests of every format.

    use crate::v1::Event;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Any string, biased towards the awkward: unicode, spaces, `%`, quotes, empty.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9.-]{1,12}",
            "[ -~]{0,16}",
            "\\PC{0,12}",
            Just("マイナンバー 太郎 %20 \"quoted\" \\ 😀".to_string()),
        ]
    }

    /// Extension maps with valid names, escaped-looking names, core names and unicode keys.
    pub fn extensions() -> impl Strategy<Value = HashMap<String, String>> {
        let key = prop_oneof![
            "[a-z0-9]{1,8}",
            Just("traceparent".to_string()),
            Just("tracestate".to_string()),
            Just("khxabc".to_string()),
            Just("id".to_string()),
            Just("data".to_string()),
            Just(String::new()),
            text(),
        ];
        proptest::collection::hash_map(key, text(), 0..5)
    }

    /// Timestamps RFC 3339 can write (years 0000–9999), any nanos.
    pub fn time() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
        proptest::option::of(
            (-62_167_219_200i64..253_402_300_799, 0i32..1_000_000_000)
                .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
    }

    /// Any non-empty string (CloudEvents requires `id` and `type`).
    pub fn nonempty() -> impl Strategy<Value = String> {
        text().prop_filter("non-empty", |s| !s.is_empty())
    }

    /// Any event, with `schema` never equal to `type` (the one documented equivalence).
    pub fn event() -> impl Strategy<Value = Event> {
        (
            (nonempty(), text(), nonempty(), text()),
            time(),
            prop_oneof![Just(String::new()), Just("application/json".to_string()), text()],
            proptest::collection::vec(any::<u8>(), 0..64),
            (text(), prop_oneof![Just(0u32), any::<u32>()]),
            extensions(),
        )
            .prop_map(
                |((id, source, r#type, subject), time, dct, data, (schema, schema_version), extensions)| {
                    let schema = if schema == r#type { String::new() } else { schema };
                    Event {
                        id,
                        source,
                        r#type,
                        subject,
                        time,
                        data_content_type: dct,
                        data,
                        schema,
                        schema_version,
                        extensions,
                    }
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_follows_the_binding() {
        // The binding's own example.
        assert_eq!(percent_encode("Euro € 😀"), "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(percent_decode("Euro%20%e2%82%ac%20%F0%9F%98%80").as_deref(), Ok("Euro € 😀"));
        assert_eq!(percent_encode("a\"b%c"), "a%22b%25c");
        assert!(percent_decode("%C0%A0").is_err(), "overlong UTF-8 is refused");
        assert!(percent_decode("%4").is_err());
        assert_eq!(percent_decode("%41bc").as_deref(), Ok("Abc"), "needless encoding is accepted");
    }

    #[test]
    fn schema_uris_are_the_registry_ids() {
        assert_eq!(
            schema_uri("health.vaccination.recorded", 3),
            "https://kakehashi.invalid/schemas/health.vaccination.recorded/3"
        );
        assert_eq!(parse_schema_uri(&schema_uri("a/b c", 7)), Ok(("a/b c".to_string(), 7)));
        assert_eq!(parse_schema_uri(&schema_uri("x.y", 0)), Ok(("x.y".to_string(), 0)));
        for bad in [
            "https://example.com/s.json",
            "https://kakehashi.invalid/schemas/x/07",
            "https://kakehashi.invalid/schemas/x/0",
            "https://kakehashi.invalid/schemas/",
        ] {
            let e = parse_schema_uri(bad).expect_err(bad);
            assert_eq!(e.attribute(), Some("dataschema"));
        }
    }

    #[test]
    fn extension_names_escape_what_cloudevents_cannot_name() {
        assert_eq!(extension_name("traceparent"), "traceparent");
        assert_eq!(extension_name("trace-id"), "khx74726163652d6964");
        assert_eq!(extension_name("id"), "khx6964", "a core attribute name is escaped");
        assert_eq!(extension_name("khxfoo"), "khx6b6878666f6f", "the escape prefix is escaped");
        for k in ["trace-id", "id", "khxfoo", "", "Ünï", "traceparent"] {
            assert_eq!(extension_key(&extension_name(k)).as_deref(), Ok(k));
        }
        assert!(extension_key("Bad").is_err());
        assert!(extension_key("khxzz").is_err());
    }

    #[test]
    fn times_are_rfc3339() {
        let ts = Timestamp { seconds: 1_764_633_600, nanos: 120_000_000 };
        assert_eq!(format_time(&ts).as_deref(), Ok("2025-12-02T00:00:00.12Z"));
        assert_eq!(parse_time("2025-12-02T09:00:00.12+09:00"), Ok(ts));
        assert!(format_time(&Timestamp { seconds: 0, nanos: -1 }).is_err());
        assert!(format_time(&Timestamp { seconds: 300_000_000_000, nanos: 0 }).is_err());
    }

    #[test]
    fn sources_name_departments() {
        assert_eq!(source_uri("mhlw"), "urn:kakehashi:department:mhlw");
        assert_eq!(department_of("urn:kakehashi:department:mhlw"), Ok("mhlw"));
        assert_eq!(department_of("mhlw"), Ok("mhlw"));
        assert_eq!(
            department_of("/departments/mhlw").map_err(|e| e.attribute().map(String::from)),
            Err(Some("source".into()))
        );
    }
}
