//! For subscribers: dropping repeats. Delivery is at least once and every delivery a department
//! may already have seen carries `attempt > 1` (`docs/delivery.md`); the event id is the
//! idempotency key. [`SeenEvents`] remembers the ids a subscriber has processed, so a marked
//! repeat of one of them is skipped (acked without acting again).

use kakehashi_proto::v1::EventDelivery;
use std::collections::{HashSet, VecDeque};

/// The ids of the last `capacity` events a subscriber processed.
#[derive(Debug)]
pub struct SeenEvents {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl SeenEvents {
    /// Remembers up to `capacity` ids (the oldest are forgotten first). Size it to cover the
    /// longest redelivery span (ack wait × max deliveries) at the subscriber's event rate;
    /// a subscriber that must survive its own restarts keeps the ids in its own database.
    pub fn new(capacity: usize) -> Self {
        Self {
            ids: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// Whether `delivery` repeats an event this subscriber already processed: only a delivery
    /// marked as a possible repeat (`attempt > 1`) is looked up; a first delivery is new to the
    /// subscription by the bus's promise.
    pub fn is_repeat(&self, delivery: &EventDelivery) -> bool {
        delivery.attempt > 1 && delivery.event.as_ref().is_some_and(|e| self.ids.contains(&e.id))
    }

    /// Records that the event was processed: call after acting on it and before acking it.
    pub fn processed(&mut self, event_id: &str) {
        if self.ids.contains(event_id) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.ids.insert(event_id.to_string());
        self.order.push_back(event_id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_proto::v1::Event;

    fn delivery(id: &str, attempt: u32) -> EventDelivery {
        EventDelivery {
            event: Some(Event { id: id.into(), ..Default::default() }),
            attempt,
            ..Default::default()
        }
    }

    #[test]
    fn a_marked_repeat_of_a_processed_event_is_skipped_and_nothing_else() {
        let mut seen = SeenEvents::new(2);
        assert!(!seen.is_repeat(&delivery("a", 2)), "never processed: act on it");
        seen.processed("a");
        assert!(seen.is_repeat(&delivery("a", 2)));
        assert!(!seen.is_repeat(&delivery("a", 1)), "a first delivery is new by the bus's promise");
        seen.processed("b");
        seen.processed("b");
        seen.processed("c");
        assert!(!seen.is_repeat(&delivery("a", 3)), "forgotten beyond capacity");
        assert!(seen.is_repeat(&delivery("b", 3)) && seen.is_repeat(&delivery("c", 2)));
    }
}
