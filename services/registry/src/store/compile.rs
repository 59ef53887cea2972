//! Turning a stored schema into a `jsonschema::Validator`: draft 2020-12, formats asserted (with
//! the Japanese identifier formats), `$ref`s to other subjects resolved from the store only.

use super::record::{parse_schema_uri, SchemaRecord};
use kakehashi_proto::ident;
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
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .with_format("my-number", ident::is_valid_my_number)
        .with_format("corporate-number", ident::is_valid_corporate_number)
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
