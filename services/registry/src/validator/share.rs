//! Spreads the ingress partitions over the registry instances. Each instance announces itself in
//! `KH_CONFIG` (`validators.<id>` = how many partitions it is busy on, every second). One busy
//! on more than its fair share (partitions ÷ live instances, rounded up) hands its highest
//! partition over with an unpin, but only while another live instance is below its share: so a
//! crashed instance (its last announcement still counts for a few seconds) is never handed
//! anything, and partitions do not bounce between instances at their share. Only throughput
//! depends on this: correctness does not, as NATS pins exactly one puller per partition
//! consumer whatever the instances believe.

use async_nats::jetstream::kv;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// KV key prefix of the instances' announcements.
const PREFIX: &str = "validators.";
/// How often an instance announces itself.
const ANNOUNCE: Duration = Duration::from_secs(1);
/// An instance not heard from for this long (two and a half announcements) no longer counts.
const LIVE_FOR: Duration = Duration::from_millis(2500);

/// This instance's view of who validates what.
#[derive(Clone)]
pub struct Share {
    inner: Arc<Inner>,
}

struct Inner {
    partitions: usize,
    /// Partitions this instance received messages on, and when last.
    busy: Mutex<BTreeMap<u32, Instant>>,
    /// Other instances, by announcement key: when they were last heard from, and how many
    /// partitions they said they were busy on.
    others: Mutex<HashMap<String, (Instant, usize)>>,
}

impl Share {
    /// A share of `partitions`, alone until others are heard from.
    pub fn new(partitions: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                partitions: partitions as usize,
                busy: Mutex::new(BTreeMap::new()),
                others: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Instances validating now, this one included.
    pub fn live(&self) -> usize {
        let others = self.inner.others.lock().unwrap_or_else(PoisonError::into_inner);
        1 + others.values().filter(|(seen, _)| seen.elapsed() < LIVE_FOR).count()
    }

    /// Most partitions this instance should be busy on.
    pub fn fair(&self) -> usize {
        self.inner.partitions.div_ceil(self.live())
    }

    /// Notes that this instance is validating `partition`.
    pub fn busy(&self, partition: u32) {
        self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner).insert(partition, Instant::now());
    }

    /// Notes that this instance is no longer on `partition` (idle for `idle`, or handed over).
    pub fn forget(&self, partition: u32, idle: Option<Duration>) {
        let mut busy = self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none_or(|idle| busy.get(&partition).is_some_and(|t| t.elapsed() >= idle)) {
            busy.remove(&partition);
        }
    }

    /// Whether this instance should hand `partition` over: it is busy on more than its fair
    /// share, `partition` is the highest-numbered of them (one hand-over at a time), and a live
    /// instance is below its share to take it.
    pub fn should_release(&self, partition: u32) -> bool {
        let fair = self.fair();
        let over = {
            let busy = self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner);
            busy.len() > fair && busy.keys().next_back() == Some(&partition)
        };
        over && {
            let others = self.inner.others.lock().unwrap_or_else(PoisonError::into_inner);
            others.values().any(|(seen, busy)| seen.elapsed() < LIVE_FOR && *busy < fair)
        }
    }

    fn busy_count(&self) -> usize {
        self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Announces this instance every second and listens to the others' announcements until
    /// `shutdown`; the announcement is deleted on the way out so the others rebalance at once.
    pub async fn announce(self, kv: kv::Store, id: String, mut shutdown: watch::Receiver<bool>) {
        let key = format!("{PREFIX}{id}");
        let mut watch = match kv.watch(format!("{PREFIX}*")).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch validator announcements; this instance validates as if alone");
                None
            }
        };
        let mut tick = tokio::time::interval(ANNOUNCE);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    match kv.put(&key, self.busy_count().to_string().into()).await {
                        // Once per run of failures: others then see this instance as gone and
                        // take more partitions, which is safe, only slower.
                        Err(e) if !failing => {
                            tracing::warn!(error = %e, key = %key, "validator announcement failed");
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(_) => failing = false,
                    }
                }
                Some(entry) = async {
                    match watch.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Ok(entry) = entry else { continue };
                    if entry.key == key {
                        continue;
                    }
                    let mut others = self.inner.others.lock().unwrap_or_else(PoisonError::into_inner);
                    match entry.operation {
                        kv::Operation::Put => {
                            let busy = std::str::from_utf8(&entry.value).ok().and_then(|v| v.parse().ok());
                            // An unreadable count (another version) counts as full: never a taker.
                            others.insert(entry.key, (Instant::now(), busy.unwrap_or(usize::MAX)));
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            others.remove(&entry.key);
                        }
                    }
                    others.retain(|_, (seen, _)| seen.elapsed() < LIVE_FOR * 4);
                }
            }
        }
        let _ = kv.delete(&key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_over_its_share_releases_its_highest_partition() {
        let share = Share::new(6);
        for p in 0..6 {
            share.busy(p);
        }
        assert_eq!(share.fair(), 6);
        assert!(!share.should_release(5), "alone, every partition is its share");
        let others = |busy: usize, ago: Duration| {
            let mut o = share.inner.others.lock().unwrap_or_else(PoisonError::into_inner);
            o.insert("b".into(), (Instant::now() - ago, busy));
        };
        others(3, Duration::ZERO);
        assert_eq!(share.fair(), 3);
        assert!(!share.should_release(5), "the other is at its share: nobody to hand over to");
        others(0, LIVE_FOR * 2);
        assert_eq!(share.fair(), 6, "a silent instance (crashed) no longer counts");
        assert!(!share.should_release(5));
        others(0, Duration::ZERO);
        assert!(share.should_release(5));
        assert!(!share.should_release(4), "one at a time, the highest first");
        share.forget(5, None);
        share.forget(4, None);
        share.forget(3, None);
        assert!(!share.should_release(2), "at its fair share");
        share.forget(2, Some(Duration::from_secs(60)));
        assert!(
            share.inner.busy.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&2),
            "not idle long enough"
        );
    }
}
