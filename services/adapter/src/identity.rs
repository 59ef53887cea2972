//! The calling department's identity. A request carries `authorization: Bearer <token>`; the
//! token maps to a department in configuration, and that department — never a field the caller
//! fills in — becomes the event's source. The lookup sits behind one function so mutual-TLS
//! identity (the client certificate's subject) can replace tokens without touching callers.

use std::collections::BTreeMap;
use tonic::{metadata::MetadataMap, Status};

/// Resolves callers to departments.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    tokens: BTreeMap<String, String>,
}

impl Identities {
    /// From configured `token → department` pairs; empty means development mode.
    pub fn new(tokens: BTreeMap<String, String>) -> Self {
        Self { tokens }
    }

    /// The department a request speaks for. In development mode the claimed source is taken
    /// as is; otherwise the token decides and a different claimed source is refused.
    pub fn department(&self, metadata: &MetadataMap, claimed: &str) -> Result<String, Status> {
        if self.tokens.is_empty() {
            if !kakehashi_proto::ident::is_valid_department_id(claimed) {
                return Err(Status::invalid_argument("source must be a department id ([a-z0-9-]+)"));
            }
            return Ok(claimed.to_string());
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let dept = self.tokens.get(token).ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if !claimed.is_empty() && claimed != dept {
            return Err(Status::permission_denied(format!(
                "caller is {dept}; it may not publish as {claimed}"
            )));
        }
        Ok(dept.clone())
    }
}
