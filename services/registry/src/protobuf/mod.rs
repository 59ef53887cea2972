//! Protobuf payloads: compiling registered `.proto` sources ([`compile`]), validating and
//! pseudonymising payload bytes against the registered message ([`payload`]) or its canonical
//! proto3 JSON form ([`json`]), and the
//! `kakehashi.v1.my_number` field option that marks personal identifiers, and the form
//! (protobuf or canonical JSON) each reader asks for ([`transcode`]).

pub mod compile;
pub mod derive;
pub mod json;
pub mod payload;
pub mod transcode;

use prost_reflect::FieldDescriptor;

pub use compile::{compile, Compiled, ProtoError};
pub use payload::ProtoSchema;
pub use transcode::{in_reader_form, reader_content_type};

/// Name every schema imports the options by; the registry provides the file itself.
pub const OPTIONS_FILE: &str = "kakehashi/v1/options.proto";
/// The options file's source (the same file the contracts crate ships).
pub const OPTIONS_SOURCE: &str = include_str!("../../../../proto/kakehashi/v1/options.proto");
/// Full name of the My Number field option.
pub const MY_NUMBER_OPTION: &str = "kakehashi.v1.my_number";

/// Media types of protobuf payloads (`Event.data_content_type`).
pub use kakehashi_proto::PROTOBUF_CONTENT_TYPES;

/// What an event's `data_content_type` says its payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json`, or empty (the default).
    Json,
    /// `application/protobuf` or `application/x-protobuf`.
    Protobuf,
}

impl ContentType {
    /// Parses a media type (parameters such as `; charset=utf-8` ignored); `None` if unsupported.
    pub fn parse(media_type: &str) -> Option<Self> {
        let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "" | "application/json" => Some(ContentType::Json),
            t if PROTOBUF_CONTENT_TYPES.contains(&t) => Some(ContentType::Protobuf),
            _ => None,
        }
    }
}

/// Checks an event's payload against its resolved schema: JSON Schema for JSON payloads,
/// the registered message for protobuf subjects, whether the payload is its bytes or its
/// canonical proto3 JSON; protobuf bytes for a JSON Schema subject are a `schema_violation` that
/// says so.
pub fn check_event_payload(
    data: &[u8],
    content_type: ContentType,
    schema: &crate::store::PayloadSchema,
    limits: crate::validator::CheckLimits,
) -> Result<(), crate::validator::PayloadRejected> {
    use crate::store::PayloadSchema;
    use crate::validator::{reason::Reason, PayloadRejected};
    match (content_type, schema) {
        (ContentType::Json, PayloadSchema::Json(v)) => crate::validator::check_payload(data, v, limits),
        (ContentType::Protobuf, PayloadSchema::Protobuf(p)) => payload::check_payload(data, p, limits),
        (ContentType::Json, PayloadSchema::Protobuf(p)) => json::check_payload(data, p, limits),
        (ContentType::Protobuf, PayloadSchema::Json(_)) => Err(PayloadRejected {
            reason: Reason::SchemaViolation,
            message: "the subject's schema is a JSON Schema: publish JSON (application/json), not protobuf"
                .into(),
            violations: Vec::new(),
        }),
    }
}

/// What delivery does with a payload's personal identifiers.
#[derive(Debug, PartialEq)]
pub enum Pseudonymised {
    /// The subject's version is a JSON Schema: the JSON path applies.
    NotProtobuf,
    /// Protobuf subject, with nothing to replace: the payload (bytes or proto3 JSON) passes
    /// through untouched.
    Unchanged,
    /// Protobuf subject, the payload re-encoded in its own form with the reader's pseudonyms.
    Replaced(Vec<u8>),
}

/// Replaces the My Numbers of a protobuf subject's payload by `department`'s pseudonyms, whether
/// published as bytes or as proto3 JSON (`content_type`, the event's `data_content_type`); the
/// fields are found by the field option either way (fails closed: an error withholds the event).
pub fn pseudonymise(
    store: &crate::store::SchemaStore,
    subject: &str,
    version: u32,
    data: &[u8],
    content_type: &str,
    secret: &[u8],
    department: &str,
) -> Result<Pseudonymised, String> {
    if !store.is_protobuf(subject, version).map_err(|e| format!("schema of a delivered event: {e}"))? {
        return Ok(Pseudonymised::NotProtobuf);
    }
    let (schema, _) =
        store.payload_schema(subject, version).map_err(|e| format!("schema of a delivered event: {e}"))?;
    let crate::store::PayloadSchema::Protobuf(proto) = schema else {
        return Ok(Pseudonymised::NotProtobuf);
    };
    let replaced = match ContentType::parse(content_type) {
        Some(ContentType::Protobuf) => proto.pseudonymise(data, secret, department)?,
        Some(ContentType::Json) => json::pseudonymise(&proto, data, secret, department)?,
        None => return Err(format!("delivered event's data_content_type {content_type:?} is not supported")),
    };
    Ok(match replaced {
        Some(bytes) => Pseudonymised::Replaced(bytes),
        None => Pseudonymised::Unchanged,
    })
}

/// Whether a field carries `[(kakehashi.v1.my_number) = true]`.
pub fn is_my_number(field: &FieldDescriptor) -> bool {
    let Some(ext) = field.parent_pool().get_extension_by_name(MY_NUMBER_OPTION) else {
        return false;
    };
    field.options().get_extension(&ext).as_bool().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(ContentType::parse(""), Some(ContentType::Json));
        assert_eq!(ContentType::parse("application/json; charset=utf-8"), Some(ContentType::Json));
        assert_eq!(ContentType::parse("application/protobuf"), Some(ContentType::Protobuf));
        assert_eq!(ContentType::parse("Application/X-Protobuf"), Some(ContentType::Protobuf));
        assert_eq!(ContentType::parse("text/csv"), None);
    }
}
