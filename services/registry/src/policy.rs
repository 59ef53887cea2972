//! Who may publish and read which event types: policies in `KH_CONFIG` under `policy.<hex of the
//! pattern>` (patterns hold `*` and `>`, which KV keys may not), mirrored by a watch so a change
//! takes effect on every instance without restart. Nothing is allowed unless a policy says so.

use crate::watched::WatchedMap;
use async_nats::jetstream::kv;
use kakehashi_proto::subjects::{is_valid_pattern, pattern_matches};
use serde::{Deserialize, Serialize};

/// A stored policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Event type pattern.
    pub type_pattern: String,
    /// Departments that may publish matching types ("*" = any).
    #[serde(default)]
    pub producers: Vec<String>,
    /// Departments that may read matching types ("*" = any).
    #[serde(default)]
    pub readers: Vec<String>,
    /// Readers that get personal identifiers raw rather than pseudonymised.
    #[serde(default)]
    pub raw_pii_readers: Vec<String>,
}

impl PolicyRecord {
    /// Whether the policy concerns `dept`: it is a producer, reader or raw-PII reader, by name
    /// or through `*` (a wildcard applies to every department, so each may see it).
    pub fn names(&self, dept: &str) -> bool {
        lists(&self.producers, dept) || lists(&self.readers, dept) || lists(&self.raw_pii_readers, dept)
    }
}

/// Policy lookups and writes.
#[derive(Clone)]
pub struct Policies {
    kv: kv::Store,
    map: WatchedMap<PolicyRecord>,
}

/// A policy write failure.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Bad pattern or department id.
    #[error("invalid policy: {0}")]
    Invalid(String),
    /// KV failure.
    #[error("policy storage: {0}")]
    Storage(String),
}

fn key(pattern: &str) -> String {
    hex::encode(pattern.as_bytes())
}

fn lists(list: &[String], dept: &str) -> bool {
    list.iter().any(|d| d == "*" || d == dept)
}

impl Policies {
    /// Opens the policy mirror.
    pub async fn open(kv: kv::Store) -> Result<Self, PolicyError> {
        let map = WatchedMap::open(&kv, "policy").await.map_err(PolicyError::Storage)?;
        Ok(Self { kv, map })
    }

    /// Whether `dept` may publish `event_type`.
    pub fn may_publish(&self, dept: &str, event_type: &str) -> bool {
        self.any_matching(event_type, |p| lists(&p.producers, dept))
    }

    /// Whether `dept` may read `event_type`.
    pub fn may_read(&self, dept: &str, event_type: &str) -> bool {
        self.any_matching(event_type, |p| lists(&p.readers, dept))
    }

    /// Whether `dept` may read every type a subscription pattern can match: some policy whose
    /// pattern covers the whole subscription pattern lists it as a reader.
    pub fn may_read_pattern(&self, dept: &str, pattern: &str) -> bool {
        self.map.any(|p| covers(&p.type_pattern, pattern) && lists(&p.readers, dept))
    }

    /// Whether `dept` receives personal identifiers of `event_type` raw.
    pub fn raw_pii(&self, dept: &str, event_type: &str) -> bool {
        self.any_matching(event_type, |p| p.raw_pii_readers.iter().any(|d| d == dept))
    }

    /// Whether a policy whose pattern matches `event_type` satisfies `pred` (per event: no copies).
    fn any_matching(&self, event_type: &str, pred: impl Fn(&PolicyRecord) -> bool) -> bool {
        self.map.any(|p| pattern_matches(&p.type_pattern, event_type) && pred(p))
    }

    /// Every policy.
    pub fn list(&self) -> Vec<PolicyRecord> {
        self.map.values().iter().map(|p| (**p).clone()).collect()
    }

    /// Creates or replaces the policy of a pattern.
    pub async fn put(&self, policy: PolicyRecord) -> Result<PolicyRecord, PolicyError> {
        if !is_valid_pattern(&policy.type_pattern) {
            return Err(PolicyError::Invalid(format!("bad type pattern {:?}", policy.type_pattern)));
        }
        for d in policy.producers.iter().chain(&policy.readers).chain(&policy.raw_pii_readers) {
            if d != "*" && !kakehashi_proto::ident::is_valid_department_id(d) {
                return Err(PolicyError::Invalid(format!("bad department id {d:?}")));
            }
        }
        if policy.raw_pii_readers.iter().any(|d| d == "*") {
            return Err(PolicyError::Invalid(
                "raw personal data must be granted to named departments".into(),
            ));
        }
        let k = format!("policy.{}", key(&policy.type_pattern));
        let bytes = serde_json::to_vec(&policy).map_err(|e| PolicyError::Storage(e.to_string()))?;
        self.kv.put(&k, bytes.into()).await.map_err(|e| PolicyError::Storage(e.to_string()))?;
        self.map.insert(&key(&policy.type_pattern), policy.clone());
        Ok(policy)
    }

    /// Deletes the policy of a pattern.
    pub async fn delete(&self, pattern: &str) -> Result<(), PolicyError> {
        let k = format!("policy.{}", key(pattern));
        self.kv.delete(&k).await.map_err(|e| PolicyError::Storage(e.to_string()))?;
        self.map.remove(&key(pattern));
        Ok(())
    }
}

/// Whether every type matched by `inner` is matched by `outer` (NATS token wildcards).
pub fn covers(outer: &str, inner: &str) -> bool {
    let o: Vec<&str> = outer.split('.').collect();
    let i: Vec<&str> = inner.split('.').collect();
    for (idx, ot) in o.iter().enumerate() {
        match (*ot, i.get(idx)) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(&">")) => return false,
            ("*", Some(_)) => {}
            (a, Some(b)) if a == *b => {}
            _ => return false,
        }
    }
    o.len() == i.len()
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn coverage_of_patterns_follows_wildcards() {
        assert!(covers("health.>", "health.vaccination.recorded"));
        assert!(covers("health.>", "health.*.recorded"));
        assert!(covers("health.>", "health.vaccination.>"));
        assert!(!covers("health.vaccination.recorded", "health.>"));
        assert!(!covers("health.*.recorded", "health.>"));
        assert!(covers("health.*.recorded", "health.vaccination.recorded"));
        assert!(!covers("tax.>", "health.vaccination.recorded"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.b.c"));
    }
}
