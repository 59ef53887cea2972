//! How long and how often a publish is retried when the bus does not confirm it.

use std::time::Duration;

/// Retry policy for publishes: exponential backoff from `first_backoff`, doubling up to
/// `max_backoff`, until `give_up_after` has passed since the first failure. Every retry sends
/// the same message with the same `Nats-Msg-Id`, so a retry of a publish that was in fact
/// stored (only its confirmation was lost) is dropped by the bus as a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Wait before the first retry.
    pub first_backoff: Duration,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// After this long without a confirmation the publish is reported unavailable.
    pub give_up_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// No retries: the first failure is final (still bounded by the ack timeout).
    pub fn never() -> Self {
        Self { first_backoff: Duration::ZERO, max_backoff: Duration::ZERO, give_up_after: Duration::ZERO }
    }

    /// The wait before retry number `attempt` (0-based), without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.first_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// [`Self::backoff`] spread over 50–100 % of its value, so many adapters failing together
    /// do not retry in lock-step. `salt` is any varying number (e.g. clock nanoseconds).
    pub fn jittered(&self, attempt: u32, salt: u32) -> Duration {
        let base = self.backoff(attempt);
        base / 2 + base.mul_f64(f64::from(salt % 1000) / 2000.0)
    }
}

/// Clock nanoseconds: the salt of [`Retry::jittered`].
pub(crate) fn clock_salt() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let r = Retry::default();
        let waits: Vec<u128> = (0..8).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(r.backoff(200), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_backoff() {
        let r = Retry::default();
        for salt in [0, 1, 499, 999, 123_456_789] {
            let j = r.jittered(3, salt);
            assert!(j >= r.backoff(3) / 2 && j <= r.backoff(3), "{j:?}");
        }
    }
}
