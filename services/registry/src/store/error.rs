//! Why a schema store operation failed.

use crate::compat::Incompatibility;

/// A schema store failure; each maps to one gRPC code in `api::status`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The document is not JSON, violates the 2020-12 meta-schema, or has a bad `$id`/`$ref`.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    /// The subject name is not lowercase dot-separated tokens.
    #[error("invalid subject {0:?}: expected lowercase dot-separated tokens like resident.address.changed")]
    InvalidSubject(String),
    /// The document is larger than the configured limit.
    #[error("schema is {size} bytes, over the limit of {limit} (limits.max_schema_bytes)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No such subject, version or id.
    #[error("{0} not found")]
    NotFound(String),
    /// The candidate breaks the subject's compatibility mode.
    #[error("schema is incompatible with {subject} under {mode}: {} problem(s)", problems.len())]
    Incompatible {
        /// Subject.
        subject: String,
        /// Mode applied.
        mode: String,
        /// Every problem found.
        problems: Vec<Incompatibility>,
    },
    /// Other schemas still reference the version.
    #[error("{target} is referenced by {}", referrers.join(", "))]
    Referenced {
        /// The version asked to delete.
        target: String,
        /// Who references it.
        referrers: Vec<String>,
    },
    /// A precondition of the operation does not hold (e.g. permanent delete before soft delete).
    #[error("{0}")]
    Precondition(String),
    /// Concurrent writers kept winning the compare-and-set; the caller may retry.
    #[error("too much concurrent registration on {0}, try again")]
    Contention(String),
    /// The KV bucket failed.
    #[error("schema storage: {0}")]
    Storage(String),
}
