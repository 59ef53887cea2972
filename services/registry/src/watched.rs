//! A map mirrored from one key prefix of a KV bucket by a watch, so every instance sees changes
//! (policies, subscriptions) without restart and without a request per lookup.

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// KV entries under `<prefix>.` decoded as JSON `T`, keyed by the rest of the key.
pub struct WatchedMap<T> {
    entries: Arc<RwLock<BTreeMap<String, Arc<T>>>>,
}

impl<T> Clone for WatchedMap<T> {
    fn clone(&self) -> Self {
        Self { entries: self.entries.clone() }
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> WatchedMap<T> {
    /// Loads the prefix's current entries, then follows changes in a background task.
    pub async fn open(kv: &kv::Store, prefix: &str) -> Result<Self, String> {
        let entries = Arc::new(RwLock::new(BTreeMap::new()));
        let filter = format!("{prefix}.>");
        let mut watch = kv.watch_with_history(&filter).await.map_err(|e| format!("watch {filter}: {e}"))?;
        // When the prefix holds nothing the watch yields nothing, so only wait for catch-up
        // when there is something to catch up with.
        let keys: Vec<String> = kv
            .keys()
            .await
            .map_err(|e| format!("keys: {e}"))?
            .filter_map(|k| async { k.ok() })
            .collect()
            .await;
        let has_any = keys.iter().any(|k| k.starts_with(&format!("{prefix}.")));
        let strip = format!("{prefix}.");
        // The task holds the map weakly: it ends once the map's owners are gone.
        let apply = {
            let entries = Arc::downgrade(&entries);
            let strip = strip.clone();
            move |entry: &kv::Entry| -> bool {
                let Some(entries) = entries.upgrade() else { return false };
                let Some(key) = entry.key.strip_prefix(&strip) else { return true };
                let mut map = entries.write().unwrap_or_else(|p| p.into_inner());
                match entry.operation {
                    kv::Operation::Put => match serde_json::from_slice::<T>(&entry.value) {
                        Ok(v) => {
                            map.insert(key.to_string(), Arc::new(v));
                        }
                        Err(e) => {
                            // Fails closed: a policy nobody can read grants nothing any more,
                            // rather than the value it replaced.
                            tracing::warn!(key = %entry.key, error = %e, "unreadable entry: removed");
                            map.remove(key);
                        }
                    },
                    _ => {
                        map.remove(key);
                    }
                }
                true
            }
        };
        if has_any {
            let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(Ok(entry)) = watch.next().await {
                    apply(&entry);
                    if entry.delta == 0 {
                        break;
                    }
                }
            })
            .await;
            caught_up.map_err(|_| format!("timed out loading {prefix}"))?;
        }
        let (kv, alive) = (kv.clone(), Arc::downgrade(&entries));
        tokio::spawn(async move {
            loop {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) if !apply(&entry) => return,
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "watch error"),
                    }
                }
                // A watch that ended would leave the map as it was for good (a revoked policy
                // still granting): watch again, from the current values.
                tracing::warn!(%filter, "KV watch ended; watching again");
                watch = loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if alive.strong_count() == 0 {
                        return;
                    }
                    match kv.watch_with_history(&filter).await {
                        Ok(w) => break w,
                        Err(e) => tracing::warn!(%filter, error = %e, "KV watch not restarted; retrying"),
                    }
                };
            }
        });
        Ok(Self { entries })
    }

    /// One entry.
    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Every entry, in key order.
    pub fn values(&self) -> Vec<Arc<T>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Whether some entry satisfies `pred`, checked under the read lock: no copy of the map
    /// on paths that ask per event.
    pub fn any(&self, mut pred: impl FnMut(&T) -> bool) -> bool {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).values().any(|v| pred(v))
    }

    /// Applies a local write at once (the watch will bring the same value again).
    pub fn insert(&self, key: &str, value: T) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), Arc::new(value));
    }

    /// Applies a local delete at once.
    pub fn remove(&self, key: &str) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}
