//! The registry's Prometheus metrics: what was validated, dead-lettered, delivered and acked,
//! how long the hops took, how far each subscription lags, and how well the schema cache works.

use crate::store::SchemaStore;
use crate::subscriptions::Subscriptions;
use async_nats::jetstream;
use kakehashi_proto::metrics::{CounterVec, HistogramVec, Registry, DEFAULT_LATENCY_BUCKETS};
use kakehashi_proto::subjects::STREAM_EVENTS;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Handles the hot path increments.
#[derive(Clone)]
pub struct RegistryMetrics {
    /// Where they are rendered from.
    pub registry: Registry,
    /// Valid events, by type.
    pub validated: CounterVec,
    /// Dead letters, by reason.
    pub dead_lettered: CounterVec,
    /// Times this instance became the pinned validator (startup and failovers).
    pub validator_takeovers: CounterVec,
    /// Deliveries, by subscription.
    pub delivered: CounterVec,
    /// Acks, by subscription.
    pub acked: CounterVec,
    /// Accepted into KH_INGRESS → validated (server timestamps).
    pub publish_to_validated: HistogramVec,
    /// Validated → acked by the subscriber, by subscription.
    pub validated_to_acked: HistogramVec,
}

type Lag = Arc<Mutex<Vec<(Vec<String>, f64)>>>;

impl RegistryMetrics {
    /// Registers every family; the cache and lag gauges read their sources at scrape time.
    pub fn new(store: SchemaStore) -> Self {
        let registry = Registry::new();
        let cache_store = store.clone();
        registry.gauge_fn(
            "kakehashi_schema_cache_lookups_total",
            "Validator cache lookups by result.",
            &["result"],
            move || {
                let (hits, misses) = cache_store.cache_stats();
                vec![(vec!["hit".into()], hits as f64), (vec!["miss".into()], misses as f64)]
            },
        );
        Self {
            validated: registry.counter(
                "kakehashi_events_validated_total",
                "Events that passed validation.",
                &["type"],
            ),
            dead_lettered: registry.counter(
                "kakehashi_events_dead_lettered_total",
                "Events dead-lettered, by reason.",
                &["reason"],
            ),
            validator_takeovers: registry.counter(
                "kakehashi_validator_takeovers_total",
                "Times this instance was pinned as the validator and started from the ack floor.",
                &[],
            ),
            delivered: registry.counter(
                "kakehashi_events_delivered_total",
                "Deliveries to subscribers (redeliveries included).",
                &["subscription"],
            ),
            acked: registry.counter(
                "kakehashi_events_acked_total",
                "Deliveries acked by subscribers.",
                &["subscription"],
            ),
            publish_to_validated: registry.histogram(
                "kakehashi_publish_to_validated_seconds",
                "From acceptance into KH_INGRESS to validation.",
                &[],
                DEFAULT_LATENCY_BUCKETS,
            ),
            validated_to_acked: registry.histogram(
                "kakehashi_validated_to_acked_seconds",
                "From validation (KH_EVENTS) to the subscriber's ack.",
                &["subscription"],
                DEFAULT_LATENCY_BUCKETS,
            ),
            registry,
        }
    }

    /// Starts the lag poller: every `every`, the pending count of each subscription's consumer.
    pub fn watch_lag(&self, js: jetstream::Context, subs: Subscriptions, every: Duration) {
        let lag: Lag = Arc::new(Mutex::new(Vec::new()));
        let read = lag.clone();
        self.registry.gauge_fn(
            "kakehashi_subscription_lag_events",
            "Events not yet delivered (pending) or not yet acked, by subscription.",
            &["subscription", "state"],
            move || read.lock().map(|v| v.clone()).unwrap_or_default(),
        );
        tokio::spawn(async move {
            loop {
                let mut samples = Vec::new();
                if let Ok(stream) = js.get_stream(STREAM_EVENTS).await {
                    for sub in subs.list("") {
                        let name = sub.consumer_name();
                        if let Ok(info) = stream.consumer_info(&name).await {
                            samples.push((vec![name.clone(), "pending".into()], info.num_pending as f64));
                            samples.push((vec![name, "unacked".into()], info.num_ack_pending as f64));
                        }
                    }
                }
                if let Ok(mut l) = lag.lock() {
                    *l = samples;
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// Seconds from a JetStream server timestamp to now (0 when the clock says otherwise).
pub fn since(published: time::OffsetDateTime) -> f64 {
    (time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0)
}
