//! The calling department's identity. A request carries `authorization: Bearer <token>`; the
//! token maps to a department in configuration, and that department — never a field the caller
//! fills in — becomes the event's source. The lookup sits behind one function so mutual-TLS
//! identity (the client certificate's subject) can replace tokens without touching callers.

use std::collections::{BTreeMap, BTreeSet};
use tonic::{metadata::MetadataMap, Status};

/// Resolves callers to departments.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    tokens: BTreeMap<String, String>,
    admins: BTreeSet<String>,
}

impl Identities {
    /// From configured `token → department` pairs and the departments allowed to administer the
    /// bus (schemas, policies, any department's subscriptions); no tokens means development mode.
    pub fn new(tokens: BTreeMap<String, String>, admins: impl IntoIterator<Item = String>) -> Self {
        Self { tokens, admins: admins.into_iter().collect() }
    }

    /// Whether tokens are checked (false in development mode).
    pub fn enforced(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn caller(&self, metadata: &MetadataMap) -> Result<&String, Status> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        self.tokens.get(token).ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// Refuses unless the caller is an administrator (anyone in development mode).
    pub fn require_admin(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if !self.enforced() {
            return Ok(());
        }
        let dept = self.caller(metadata)?;
        if self.admins.contains(dept) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!("{dept} is not an administrator of the bus")))
        }
    }

    /// Refuses unless the caller is an authenticated department (anyone in development mode).
    pub fn require_caller(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if self.enforced() {
            self.caller(metadata)?;
        }
        Ok(())
    }

    /// The department a request acts for on `department`'s resources: itself, or any
    /// department when the caller is an administrator.
    pub fn acting_for(&self, metadata: &MetadataMap, department: &str) -> Result<String, Status> {
        if !self.enforced() {
            return Ok(department.to_string());
        }
        let dept = self.caller(metadata)?;
        if dept == department || self.admins.contains(dept) {
            Ok(department.to_string())
        } else {
            Err(Status::permission_denied(format!("{dept} may not act for {department}")))
        }
    }

    /// The department a request speaks for. In development mode the claimed source is taken
    /// as is; otherwise the token decides and a different claimed source is refused.
    pub fn department(&self, metadata: &MetadataMap, claimed: &str) -> Result<String, Status> {
        if self.tokens.is_empty() {
            if !crate::ident::is_valid_department_id(claimed) {
                return Err(Status::invalid_argument("source must be a department id ([a-z0-9-]+)"));
            }
            return Ok(claimed.to_string());
        }
        let dept = self.caller(metadata)?;
        if !claimed.is_empty() && claimed != dept {
            return Err(Status::permission_denied(format!(
                "caller is {dept}; it may not publish as {claimed}"
            )));
        }
        Ok(dept.clone())
    }
}
