//! One Subscribe stream per subscription on this instance. Per-key order is a property of one
//! stream reading the subscription's consumer: a second stream would take some deliveries,
//! and each stream would see the other's as lost in transit (and reset the consumer). A second
//! open waits briefly for the first stream to end (a client reconnecting before its old stream
//! noticed), then is refused.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a second Subscribe waits for the subscription's open stream to end.
pub const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// The subscriptions (consumer names) with an open stream on this instance.
#[derive(Clone, Default)]
pub struct StreamClaims {
    open: Arc<Mutex<HashSet<String>>>,
}

/// An open stream's claim on its subscription, released when dropped.
pub struct Claim {
    open: Arc<Mutex<HashSet<String>>>,
    consumer: String,
}

impl StreamClaims {
    /// Claims `consumer` for a new stream, waiting up to `wait` for an open one to end; None
    /// when it is still open.
    pub async fn claim(&self, consumer: &str, wait: Duration) -> Option<Claim> {
        let deadline = Instant::now() + wait;
        loop {
            if self.open.lock().unwrap_or_else(PoisonError::into_inner).insert(consumer.to_string()) {
                return Some(Claim { open: self.open.clone(), consumer: consumer.to_string() });
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.consumer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_to_end_or_is_refused() {
        let claims = StreamClaims::default();
        let first = claims.claim("sub_a_x", CLAIM_WAIT).await.expect("first claim");
        assert!(claims.claim("sub_a_x", Duration::from_millis(100)).await.is_none());
        assert!(claims.claim("sub_a_y", Duration::ZERO).await.is_some(), "other subscriptions are free");
        let later = tokio::spawn({
            let claims = claims.clone();
            async move { claims.claim("sub_a_x", Duration::from_secs(5)).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(first);
        assert!(later.await.expect("task"), "claimed once the first stream ended");
    }
}
