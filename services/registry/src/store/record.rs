//! What one schema version looks like in the `KH_SCHEMAS` bucket, and the bucket's key layout.
//!
//! Keys: `s.<subject>.v.<version>` for versions, `compat.<subject>` for overrides (`compat._global`
//! for the default) and `meta.next_id` for the global id counter. Subjects are dot-separated
//! lowercase tokens, so they are valid key material as they are.

use serde::{Deserialize, Serialize};

/// Base of the `$id` of every registered schema: `<BASE><subject>/<version>`. The `.invalid`
/// top-level domain is reserved, so these ids can never be fetched from the network by mistake:
/// the registry resolves them from its own store.
pub const SCHEMA_URI_BASE: &str = "https://kakehashi.invalid/schemas/";

/// Key of the global id counter.
pub const NEXT_ID_KEY: &str = "meta.next_id";
/// Key of the global compatibility default.
pub const GLOBAL_COMPAT_KEY: &str = "compat._global";

/// One stored version of a subject.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaRecord {
    /// Subject (normally an event type).
    pub subject: String,
    /// Version within the subject, from 1.
    pub version: u32,
    /// Global id.
    pub id: u64,
    /// Canonical JSON text of the schema (keys sorted, no insignificant whitespace).
    pub schema: String,
    /// Soft-deleted: still readable by id and version, no longer "latest" nor used for new events.
    #[serde(default)]
    pub deleted: bool,
    /// Registration time, RFC 3339.
    pub registered_at: String,
    /// Other schemas this one `$ref`s (JSON) or imports (protobuf), as `subject/version`.
    #[serde(default)]
    pub references: Vec<String>,
    /// JSON Schema or protobuf; records written before protobuf existed have no field: JSON.
    #[serde(default, skip_serializing_if = "SchemaType::is_json")]
    pub schema_type: SchemaType,
    /// The protobuf sources and compiled descriptors (PROTOBUF versions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<ProtobufSchema>,
}

/// What kind of schema a version is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    /// A JSON Schema (draft 2020-12) for JSON payloads.
    #[default]
    Json,
    /// `.proto` sources naming the payload message, for protobuf payloads.
    Protobuf,
}

impl SchemaType {
    /// Whether this is the default (JSON), which is not written to records.
    pub fn is_json(&self) -> bool {
        *self == SchemaType::Json
    }

    /// The API/CLI name (`JSON`, `PROTOBUF`).
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Json => "JSON",
            SchemaType::Protobuf => "PROTOBUF",
        }
    }
}

/// A protobuf version: its sources, payload message and compiled descriptor set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProtobufSchema {
    /// The `.proto` files as registered (name as imported, source text).
    pub files: Vec<ProtoFile>,
    /// Fully-qualified name of the payload message (`kakehashi.catalogue.health.v1.Vaccination`).
    pub message: String,
    /// Other registered versions whose files this one imports.
    #[serde(default)]
    pub imports: Vec<ProtoImport>,
    /// Whether payloads may carry fields this version does not declare (default: refused).
    #[serde(default)]
    pub allow_unknown_fields: bool,
    /// The compiled `FileDescriptorSet` (imports included), base64.
    pub descriptor_set: String,
}

/// One `.proto` file of a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtoFile {
    /// Name other files import it by (`vaccination.proto`, `kakehashi/catalogue/person.proto`).
    pub name: String,
    /// Source text.
    pub source: String,
}

/// A registered version a protobuf version imports files from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtoImport {
    /// The referenced subject.
    pub subject: String,
    /// Its version.
    pub version: u32,
}

/// KV key of a version.
pub fn version_key(subject: &str, version: u32) -> String {
    format!("s.{subject}.v.{version}")
}

/// KV key of a subject's compatibility override.
pub fn compat_key(subject: &str) -> String {
    format!("compat.{subject}")
}

/// Parses `s.<subject>.v.<version>`.
pub fn parse_version_key(key: &str) -> Option<(&str, u32)> {
    let rest = key.strip_prefix("s.")?;
    let (subject, version) = rest.rsplit_once(".v.")?;
    Some((subject, version.parse().ok()?))
}

/// The `$id` of a subject's version.
pub fn schema_uri(subject: &str, version: u32) -> String {
    format!("{SCHEMA_URI_BASE}{subject}/{version}")
}

/// Parses `<BASE><subject>/<version>` (a fragment is ignored) into (subject, version).
pub fn parse_schema_uri(uri: &str) -> Option<(&str, u32)> {
    let rest = uri.strip_prefix(SCHEMA_URI_BASE)?;
    let rest = rest.split('#').next()?;
    let (subject, version) = rest.split_once('/')?;
    Some((subject, version.parse().ok()?))
}

/// Every `$ref` of a schema document that names another registered schema, as (subject, version).
pub fn external_refs(schema: &serde_json::Value) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    collect_refs(schema, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect_refs(value: &serde_json::Value, out: &mut Vec<(String, u32)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some((s, ver)) = v.as_str().and_then(parse_schema_uri) {
                        out.push((s.to_string(), ver));
                    }
                }
                collect_refs(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_uris_round_trip() {
        let k = version_key("health.vaccination.recorded", 12);
        assert_eq!(parse_version_key(&k), Some(("health.vaccination.recorded", 12)));
        let u = schema_uri("common.person", 1);
        assert_eq!(parse_schema_uri(&u), Some(("common.person", 1)));
        assert_eq!(parse_schema_uri(&format!("{u}#/$defs/name")), Some(("common.person", 1)));
        assert_eq!(parse_schema_uri("https://example.com/x/1"), None);
    }

    #[test]
    fn records_without_a_schema_type_are_json_and_json_records_keep_their_old_shape() {
        let old =
            r#"{"subject":"a.b","version":1,"id":1,"schema":"{}","registered_at":"2026-01-01T00:00:00Z"}"#;
        let r: SchemaRecord = serde_json::from_str(old).expect("old record reads");
        assert_eq!((r.schema_type, r.protobuf.is_none()), (SchemaType::Json, true));
        let written = serde_json::to_value(&r).expect("json");
        assert!(written.get("schema_type").is_none() && written.get("protobuf").is_none(), "{written}");
        let proto = SchemaRecord { schema_type: SchemaType::Protobuf, ..r };
        assert_eq!(serde_json::to_value(&proto).expect("json")["schema_type"], "PROTOBUF");
    }

    #[test]
    fn external_refs_are_found_at_any_depth() {
        let s = serde_json::json!({"properties": {"p": {"$ref": schema_uri("common.person", 1)},
            "a": {"items": [{"$ref": format!("{}#/x", schema_uri("common.address", 2))}]},
            "l": {"$ref": "#/$defs/local"}}});
        assert_eq!(external_refs(&s), vec![("common.address".into(), 2), ("common.person".into(), 1)]);
    }
}
