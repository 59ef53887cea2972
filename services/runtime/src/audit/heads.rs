//! Chain heads anchored outside `KH_AUDIT`: each actor puts the sequence and hash of its last
//! *stored* record into the `KH_CONFIG` bucket, so [`super::verify`] can tell when the newest
//! records of a chain were deleted (the chain alone cannot) or the chain was rewritten.

use serde::{Deserialize, Serialize};

/// Key prefix of the anchored heads in `KH_CONFIG`.
pub const HEAD_PREFIX: &str = "audit_head.";

/// The last stored record of one actor's chain, as anchored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The actor whose chain this is.
    pub actor: String,
    /// Which of its chains (see [`super::AuditRecord::chain`]).
    #[serde(default)]
    pub chain: String,
    /// Sequence of its last stored record.
    pub seq: u64,
    /// Hash of that record.
    pub hash: String,
    /// Time of that record (Unix microseconds): once older than the retention, it may be gone.
    #[serde(default)]
    pub record_time_us: i64,
    /// When it was anchored (Unix microseconds).
    pub time_us: i64,
}

/// The bucket key of a chain's head, by [`super::chain_name`] (hex: names hold characters keys
/// may not).
pub fn head_key(chain_name: &str) -> String {
    format!("{HEAD_PREFIX}{}", hex::encode(chain_name))
}
