//! One active validator at a time: a lease in `KH_CONFIG` (`lease.validator`) taken and renewed
//! with compare-and-set. Per-key order needs a single owner of the ingress consumer; the other
//! instances stand by and take over when the holder stops renewing (crash) or releases (shutdown).

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// KV key of the validator lease.
pub const KEY: &str = "lease.validator";

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    owner: String,
    until_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A lease this instance may hold.
pub struct Lease {
    kv: kv::Store,
    owner: String,
    ttl: Duration,
    revision: Option<u64>,
}

impl Lease {
    /// A lease for `owner`, valid `ttl` after each renewal.
    pub fn new(kv: kv::Store, owner: String, ttl: Duration) -> Self {
        Self { kv, owner, ttl, revision: None }
    }

    fn value(&self) -> bytes::Bytes {
        let h = Holder { owner: self.owner.clone(), until_ms: now_ms() + self.ttl.as_millis() as u64 };
        serde_json::to_vec(&h).unwrap_or_default().into()
    }

    /// Takes the lease if it is free, expired or already ours; true when held.
    pub async fn try_acquire(&mut self) -> bool {
        let entry = match self.kv.entry(KEY).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "lease read failed");
                return false;
            }
        };
        let result = match entry.filter(|e| e.operation == kv::Operation::Put) {
            None => self.kv.create(KEY, self.value()).await.ok(),
            Some(e) => {
                let holder: Option<Holder> = serde_json::from_slice(&e.value).ok();
                let free = holder.is_none_or(|h| h.owner == self.owner || h.until_ms < now_ms());
                if !free {
                    return false;
                }
                self.kv.update(KEY, self.value(), e.revision).await.ok()
            }
        };
        self.revision = result;
        result.is_some()
    }

    /// Extends the lease; false when it was lost (someone else took it after it expired).
    pub async fn renew(&mut self) -> bool {
        let Some(rev) = self.revision else { return false };
        self.revision = self.kv.update(KEY, self.value(), rev).await.ok();
        self.revision.is_some()
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(&mut self) {
        if let Some(rev) = self.revision.take() {
            let _ = self.kv.delete_expect_revision(KEY, Some(rev)).await;
        }
    }

    /// How often to renew.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}
