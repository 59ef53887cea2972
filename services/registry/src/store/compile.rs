//! Turning a stored schema into a `jsonschema::Validator`: draft 2020-12, every 2020-12 format
//! asserted (with the Japanese identifier formats), unknown formats kept as annotations (see
//! [`kakehashi_proto::formats`]), `$ref`s to other subjects resolved from the store only.

use super::record::{parse_schema_uri, SchemaRecord};
use kakehashi_proto::formats::KAKEHASHI_FORMAT_CHECKS;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The `$schema` every registered document is (or defaults to).
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Read-only view of the stored versions by (subject, version), shared with the watch task.
pub type VersionIndex = Arc<RwLock<BTreeMap<(String, u32), Arc<SchemaRecord>>>>;

/// Resolves `https://kakehashi.invalid/schemas/<subject>/<version>` from the store; never the network.
struct StoreRetriever {
    index: VersionIndex,
}

impl jsonschema::Retrieve for StoreRetriever {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let (subject, version) =
            parse_schema_uri(uri.as_str()).ok_or_else(|| format!("{uri} is not a registered schema id"))?;
        let index = self.index.read().map_err(|_| "schema index poisoned")?;
        let record = index
            .get(&(subject.to_string(), version))
            .ok_or_else(|| format!("referenced schema {subject}/{version} is not registered"))?;
        Ok(serde_json::from_str(&record.schema)?)
    }
}

/// Compiles a schema document. Errors are readable and name what is wrong.
pub fn compile(schema: &Value, index: &VersionIndex) -> Result<jsonschema::Validator, String> {
    if let Some(s) = schema.get("$schema") {
        if s.as_str() != Some(DRAFT_2020_12) {
            return Err(format!("$schema must be {DRAFT_2020_12} (draft 2020-12)"));
        }
    }
    let options = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        // Unknown formats are annotations (2020-12 §7.2.3); `register` reports them as warnings.
        .should_ignore_unknown_formats(true);
    KAKEHASHI_FORMAT_CHECKS
        .into_iter()
        .fold(options, |o, (name, check)| o.with_format(name, check))
        .with_retriever(StoreRetriever { index: index.clone() })
        .build(schema)
        .map_err(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{e} (at {at})")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(schema: Value) -> Result<jsonschema::Validator, String> {
        compile(&schema, &VersionIndex::default())
    }

    #[test]
    fn every_draft_2020_12_format_compiles_and_idn_formats_are_asserted() {
        for format in kakehashi_proto::formats::DRAFT_2020_12_FORMATS {
            compiled(json!({"type": "string", "format": format})).unwrap_or_else(|e| panic!("{format}: {e}"));
        }
        let email = compiled(json!({"format": "idn-email"})).expect("idn-email");
        assert!(email.is_valid(&json!("職員@市役所.example.jp")));
        assert!(!email.is_valid(&json!("職員@@市役所")));
        let host = compiled(json!({"format": "idn-hostname"})).expect("idn-hostname");
        assert!(host.is_valid(&json!("市役所.example.jp")));
        assert!(!host.is_valid(&json!("-市役所-.jp")));
    }

    #[test]
    fn unknown_format_is_an_annotation_and_custom_formats_stay_asserted() {
        let v = compiled(json!({"properties": {
            "x": {"format": "x-unknown"}, "m": {"format": "my-number"}, "c": {"format": "corporate-number"},
            "l": {"format": "local-government-code"}}}))
        .expect("unknown formats do not refuse a schema");
        assert!(v.is_valid(&json!({"x": "anything"})));
        assert!(!v.is_valid(&json!({"m": "123456789012"})));
        assert!(!v.is_valid(&json!({"c": "8000012050002"})));
        assert!(!v.is_valid(&json!({"l": "131131"})));
        assert!(v.is_valid(&json!({"m": "123456789018", "c": "7000012050002", "l": "131130"})));
    }
}
