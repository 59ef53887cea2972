//! Readers choose the form of protobuf-typed payloads (`Subscription.content_type`): delivery
//! transcodes protobuf bytes to canonical proto3 JSON (prost-reflect's serde mapping: JSON names,
//! 64-bit integers as strings, enums by name, bytes as base64, well-known types in their JSON
//! forms), or canonical JSON back to bytes, after pseudonymisation.

use super::ContentType;
use crate::store::{PayloadSchema, SchemaStore};
use kakehashi_proto::v1::Event;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};

/// `application/json` and `application/protobuf`, the forms a reader may ask for.
pub const JSON: &str = "application/json";
/// See [`JSON`].
pub const PROTOBUF: &str = "application/protobuf";

/// A subscription's `content_type` option, normalised ("" = as published).
pub fn reader_content_type(asked: &str) -> Result<&'static str, tonic::Status> {
    match (asked.trim().is_empty(), ContentType::parse(asked)) {
        (true, _) => Ok(""),
        (false, Some(ContentType::Json)) => Ok(JSON),
        (false, Some(ContentType::Protobuf)) => Ok(PROTOBUF),
        (false, None) => Err(tonic::Status::invalid_argument(format!(
            "content_type {asked:?}: expected application/json, application/protobuf or empty (as published)"
        ))),
    }
}

/// The event in the form its reader asked for: a protobuf subject's events published as bytes
/// or as proto3 JSON are transcoded when the reader asked for the other form. Events already in
/// that form pass through untouched; so do events of JSON Schema subjects (always JSON, with
/// `data_content_type` `application/json` even for a reader that asked for protobuf).
pub fn in_reader_form(
    store: &SchemaStore,
    mut event: Event,
    version: u32,
    wanted: &str,
) -> Result<Event, String> {
    let (Some(want), Some(have)) = (ContentType::parse(wanted), ContentType::parse(&event.data_content_type))
    else {
        return Ok(event);
    };
    if wanted.is_empty() || want == have {
        return Ok(event);
    }
    let subject = if event.schema.is_empty() { event.r#type.as_str() } else { event.schema.as_str() };
    if !store.is_protobuf(subject, version).map_err(|e| format!("schema of a delivered event: {e}"))? {
        // A JSON Schema subject has no message to encode to: its events reach every reader as
        // JSON, and the delivery's content type says so.
        if event.data_content_type.trim().is_empty() {
            event.data_content_type = JSON.to_string();
        }
        return Ok(event);
    }
    let (schema, _) =
        store.payload_schema(subject, version).map_err(|e| format!("schema of a delivered event: {e}"))?;
    let PayloadSchema::Protobuf(proto) = schema else { return Ok(event) };
    let (data, content_type) = match want {
        ContentType::Json => (to_json(&proto.message, &event.data)?, JSON),
        ContentType::Protobuf => (from_json_for(&proto, &event.data)?, PROTOBUF),
    };
    event.data = data;
    event.data_content_type = content_type.to_string();
    Ok(event)
}

/// Protobuf bytes → canonical proto3 JSON.
pub fn to_json(message: &MessageDescriptor, data: &[u8]) -> Result<Vec<u8>, String> {
    let msg = DynamicMessage::decode(message.clone(), data)
        .map_err(|e| format!("stored protobuf payload does not decode: {e}"))?;
    serde_json::to_vec(&msg).map_err(|e| format!("protobuf payload has no JSON form: {e}"))
}

/// Proto3 JSON of a stored event → protobuf bytes, the version's unknown-field rule applied (a
/// version that allows unknown fields accepted them at validation; they have no place in the
/// bytes and are dropped, as a protobuf reader of that version would ignore them).
pub fn from_json_for(schema: &super::ProtoSchema, data: &[u8]) -> Result<Vec<u8>, String> {
    super::json::parse(schema, data)
        .map(|msg| msg.encode_to_vec())
        .map_err(|r| format!("stored proto3 JSON payload: {}", r.message))
}

/// Canonical proto3 JSON → protobuf bytes (unknown fields refused).
pub fn from_json(message: &MessageDescriptor, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let msg = DynamicMessage::deserialize(message.clone(), &mut de)
        .map_err(|e| format!("JSON payload is not {} in proto3 JSON: {e}", message.full_name()))?;
    de.end().map_err(|e| format!("trailing data after the JSON payload: {e}"))?;
    Ok(msg.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::ProtoFile;
    use std::collections::BTreeMap;

    fn message() -> MessageDescriptor {
        let source = "syntax = \"proto3\"; package t;\nimport \"google/protobuf/timestamp.proto\";\n\
            enum Kind { KIND_UNSPECIFIED = 0; KIND_MR = 1; }\n\
            message M { string my_number = 1; int64 big = 2; Kind kind = 3; bytes raw = 4;\n\
            google.protobuf.Timestamp at = 5; repeated uint32 doses = 6; }";
        let files = [ProtoFile { name: "t.proto".into(), source: source.into() }];
        super::super::compile(&files, &BTreeMap::new(), "t.M").expect("compiles").message
    }

    #[test]
    fn protobuf_to_canonical_json_and_back() {
        let json = br#"{"myNumber":"kh1:00","big":"9007199254740993","kind":"KIND_MR","raw":"AQI=","at":"2024-10-15T00:00:00Z","doses":[1,2]}"#;
        let bytes = from_json(&message(), json).expect("from JSON");
        let back: serde_json::Value =
            serde_json::from_slice(&to_json(&message(), &bytes).expect("to JSON")).expect("json");
        let expected: serde_json::Value = serde_json::from_slice(json).expect("json");
        assert_eq!(back, expected, "canonical: camelCase names, int64 as string, enum names, base64");
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for bad in [&b"{"[..], b"[]", br#"{"nobody":1}"#, br#"{"big":"x"}"#, b"{} {}"] {
            assert!(from_json(&message(), bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reader_content_types() {
        assert_eq!(reader_content_type("").ok(), Some(""));
        assert_eq!(reader_content_type("application/x-protobuf").ok(), Some(PROTOBUF));
        assert_eq!(reader_content_type("application/json").ok(), Some(JSON));
        assert!(reader_content_type("text/xml").is_err());
    }
}
