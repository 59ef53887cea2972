//! The registry's Prometheus metrics: what was validated, dead-lettered, delivered and acked,
//! how long the hops took, how far each subscription lags (and how old its oldest unacked event
//! is), what waits in `KH_INGRESS`, and how well the schema cache works.

use crate::store::SchemaStore;
use crate::subscriptions::Subscriptions;
use async_nats::jetstream;
use kakehashi_proto::subjects::{STREAM_AUDIT, STREAM_EVENTS, STREAM_INGRESS};
use kakehashi_runtime::metrics::{CounterVec, HistogramVec, Registry, DEFAULT_LATENCY_BUCKETS};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Handles the hot path increments.
#[derive(Clone)]
pub struct RegistryMetrics {
    /// Where they are rendered from.
    pub registry: Registry,
    /// Valid events, by source department and type.
    pub validated: CounterVec,
    /// Dead letters, by reason and source department.
    pub dead_lettered: CounterVec,
    /// Times this instance became the pinned validator (startup and failovers).
    pub validator_takeovers: CounterVec,
    /// Batches of events JetStream refused whole, then published one at a time.
    pub validator_batches_refused: CounterVec,
    /// Deliveries, by subscription and reading department.
    pub delivered: CounterVec,
    /// Acks, by subscription and reading department.
    pub acked: CounterVec,
    /// Accepted into KH_INGRESS → validated (server timestamps).
    pub publish_to_validated: HistogramVec,
    /// Validated → acked by the subscriber, by subscription.
    pub validated_to_acked: HistogramVec,
}

type Lag = Arc<Mutex<Vec<(Vec<String>, f64)>>>;

impl RegistryMetrics {
    /// Registers every family; the lag gauges read what [`RegistryMetrics::watch_lag`] polls.
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            validated: registry.counter(
                "kakehashi_events_validated_total",
                "Events that passed validation, by source department and type.",
                &["source", "type"],
            ),
            dead_lettered: registry.counter(
                "kakehashi_events_dead_lettered_total",
                "Events dead-lettered, by reason and source department.",
                &["reason", "source"],
            ),
            validator_takeovers: registry.counter(
                "kakehashi_validator_takeovers_total",
                "Times this instance was pinned as the validator and started from the ack floor.",
                &[],
            ),
            validator_batches_refused: registry.counter(
                "kakehashi_validator_batches_refused_total",
                "Fast batches of validated events JetStream refused from some message on (one lost on the way or refused, fast batches not allowed on KH_EVENTS), the rest then published one event at a time.",
                &[],
            ),
            delivered: registry.counter(
                "kakehashi_events_delivered_total",
                "Deliveries to subscribers (redeliveries included).",
                &["subscription", "department"],
            ),
            acked: registry.counter(
                "kakehashi_events_acked_total",
                "Deliveries acked by subscribers.",
                &["subscription", "department"],
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

    /// A gauge family whose samples a poller writes into the returned cell; a scrape reads the
    /// last samples written.
    fn polled_gauge(&self, name: &str, help: &str, labels: &[&str]) -> Lag {
        let cell: Lag = Arc::new(Mutex::new(Vec::new()));
        let read = cell.clone();
        self.registry
            .gauge_fn(name, help, labels, move || read.lock().map(|v| v.clone()).unwrap_or_default());
        cell
    }

    /// Starts the poller: every `every`, each subscription's consumer (pending, unacked, and
    /// the age of the oldest event not yet acked), the messages waiting in `KH_INGRESS`, how far
    /// the trace index is behind `KH_AUDIT`, and the schema cache's counts. One consumer info and at most one direct get per subscription per
    /// round, off the scrape path: a scrape only reads the last round.
    pub fn watch_lag(
        &self,
        js: jetstream::Context,
        subs: Subscriptions,
        store: SchemaStore,
        indexed: tokio::sync::watch::Receiver<u64>,
        every: Duration,
    ) {
        let index_behind = self.polled_gauge(
            "kakehashi_trace_index_behind_records",
            "KH_AUDIT records this registry's trace index has not read yet (traces answer UNAVAILABLE while it is far behind).",
            &[],
        );
        let lag = self.polled_gauge(
            "kakehashi_subscription_lag_events",
            "Events not yet delivered (pending) or not yet acked, by subscription.",
            &["subscription", "state"],
        );
        let oldest = self.polled_gauge(
            "kakehashi_subscription_oldest_unacked_age_seconds",
            "Age of the oldest event a subscription has not acked yet (0 when none), by subscription.",
            &["subscription"],
        );
        let ingress = self.polled_gauge(
            "kakehashi_ingress_messages",
            "Messages in KH_INGRESS: published, not yet validated or dead-lettered.",
            &[],
        );
        // Counters fed from the store's running totals: the store counts, this copies the
        // increase each round, so the family is a real counter without the store knowing it.
        let lookups = self.registry.counter(
            "kakehashi_schema_cache_lookups_total",
            "Validator cache lookups by result.",
            &["result"],
        );
        let (hit, miss) = (lookups.with(&["hit"]), lookups.with(&["miss"]));
        tokio::spawn(async move {
            loop {
                let (hits, misses) = store.cache_stats();
                hit.inc_by(hits.saturating_sub(hit.get()));
                miss.inc_by(misses.saturating_sub(miss.get()));
                let mut samples = Vec::new();
                let mut ages = Vec::new();
                if let Ok(stream) = js.get_stream(STREAM_EVENTS).await {
                    for sub in subs.list("") {
                        let name = sub.consumer_name();
                        if let Ok(info) = stream.consumer_info(&name).await {
                            samples.push((vec![name.clone(), "pending".into()], info.num_pending as f64));
                            samples.push((vec![name.clone(), "unacked".into()], info.num_ack_pending as f64));
                            let age = if info.num_pending + info.num_ack_pending as u64 > 0 {
                                oldest_unacked_age(&stream, &info).await
                            } else {
                                Some(0.0)
                            };
                            if let Some(age) = age {
                                ages.push((vec![name], age));
                            }
                        }
                    }
                }
                if let Ok(mut l) = lag.lock() {
                    *l = samples;
                }
                if let Ok(mut l) = oldest.lock() {
                    *l = ages;
                }
                if let Ok(mut s) = js.get_stream(STREAM_AUDIT).await {
                    if let Ok(info) = s.info().await {
                        let behind = info.state.last_sequence.saturating_sub(*indexed.borrow());
                        if let Ok(mut l) = index_behind.lock() {
                            *l = vec![(Vec::new(), behind as f64)];
                        }
                    }
                }
                if let Ok(mut s) = js.get_stream(STREAM_INGRESS).await {
                    if let Ok(info) = s.info().await {
                        if let Ok(mut l) = ingress.lock() {
                            *l = vec![(Vec::new(), info.state.messages as f64)];
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the oldest event after the consumer's ack floor was stored: the first message
/// of its filter past the floor is the oldest one not acked (nor, maybe, delivered) yet.
async fn oldest_unacked_age(
    stream: &jetstream::stream::Stream,
    info: &jetstream::consumer::Info,
) -> Option<f64> {
    let filter = match info.config.filter_subjects.first() {
        Some(f) => f.clone(),
        None if !info.config.filter_subject.is_empty() => info.config.filter_subject.clone(),
        None => kakehashi_proto::subjects::EVENTS_ALL.to_string(),
    };
    let next = info.ack_floor.stream_sequence + 1;
    let m = stream.raw_message_builder().sequence(next).next_by_subject(filter).send().await.ok()?;
    Some(since(m.time))
}

/// Seconds from a JetStream server timestamp to now (0 when the clock says otherwise).
pub fn since(published: time::OffsetDateTime) -> f64 {
    (time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0)
}
