//! The ingress validator: a durable pull consumer ("validator") on `KH_INGRESS`, shared by every
//! registry instance. Each batch is checked in order; accepted events are republished to
//! `kh.ev.<type>` byte for byte with `Nats-Msg-Id` = event id, rejected ones go to
//! `kh.dlq.<source>.<type>`; publishes are pipelined and the ingress message is acked only once
//! its publish is confirmed, so a crash anywhere loses nothing and duplicates nothing.

mod check;
mod lease;
pub mod reason;

pub use check::CheckLimits;

use crate::dead_letter;
use crate::store::SchemaStore;
use async_nats::jetstream::{self, consumer, message::PublishMessage, AckKind};
use futures::StreamExt;
use kakehashi_proto::audit::AuditRecord;
use kakehashi_proto::subjects::{self, HEADER_SCHEMA_VERSION, HEADER_TRACEPARENT, HEADER_TRACESTATE};
use kakehashi_proto::telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Durable name of the validator consumer, shared by all instances.
pub const CONSUMER: &str = "validator";

/// Failure to set up or run the validator (per-message problems are dead letters, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    /// The consumer could not be created or read.
    #[error("validator consumer: {0}")]
    Consumer(String),
}

/// Settings of the validator loop.
#[derive(Clone)]
pub struct ValidatorSettings {
    /// Messages per pull batch.
    pub batch: usize,
    /// Ack wait of the consumer.
    pub ack_wait: Duration,
    /// Check limits.
    pub limits: CheckLimits,
    /// Name in dead letters and the lease.
    pub actor: String,
    /// How long the validator lease lasts without renewal (failover time after a crash).
    pub lease_ttl: Duration,
    /// Where the validator's hops are recorded.
    pub audit: kakehashi_proto::audit::AuditWriter,
    /// Counters and latencies.
    pub metrics: crate::metrics::RegistryMetrics,
}

/// The producer policy the validator consults.
pub type ProducerPolicy = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Runs until `shutdown` turns true: waits for the lease, validates while holding it.
pub async fn run(
    js: jetstream::Context,
    lease_kv: async_nats::jetstream::kv::Store,
    store: SchemaStore,
    policy: ProducerPolicy,
    settings: ValidatorSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ValidatorError> {
    let stream =
        js.get_stream(subjects::STREAM_INGRESS).await.map_err(|e| ValidatorError::Consumer(e.to_string()))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                filter_subject: subjects::INGRESS_ALL.to_string(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                // One batch outstanding at most: after a crash the next owner receives the
                // unacked batch again before anything newer, so order per key survives.
                max_ack_pending: settings.batch as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ValidatorError::Consumer(e.to_string()))?;
    let mut lease = lease::Lease::new(lease_kv, settings.actor.clone(), settings.lease_ttl);
    while !*shutdown.borrow() {
        if !lease.try_acquire().await {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(lease.renew_every()) => {}
            }
            continue;
        }
        tracing::info!(actor = %settings.actor, "validator lease acquired");
        let held =
            validate_while_held(&js, &consumer, &mut lease, &store, &policy, &settings, &mut shutdown).await;
        if let Err(e) = held {
            tracing::warn!(error = %e, "validator pull failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    lease.release().await;
    Ok(())
}

/// Pulls and validates until the lease is lost or shutdown is asked.
async fn validate_while_held(
    js: &jetstream::Context,
    consumer: &consumer::PullConsumer,
    lease: &mut lease::Lease,
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ValidatorError> {
    let messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| ValidatorError::Consumer(e.to_string()))?;
    let mut chunks = messages.ready_chunks(settings.batch);
    let mut renew = tokio::time::interval(lease.renew_every());
    loop {
        let chunk = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = renew.tick() => {
                if !lease.renew().await {
                    tracing::warn!("validator lease lost; standing by");
                    return Ok(());
                }
                continue;
            }
            c = chunks.next() => c,
        };
        let Some(chunk) = chunk else { return Ok(()) };
        let mut batch = Vec::with_capacity(chunk.len());
        for m in chunk {
            match m {
                Ok(m) => batch.push(m),
                Err(e) => tracing::warn!(error = %e, "ingress pull error"),
            }
        }
        process_batch(js, store, policy, settings, batch, shutdown).await;
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// Checks a batch, then publishes every outcome pipelined and acks each ingress message once
/// its publish is confirmed. On a failure it publishes again from the first unconfirmed
/// message, in order (dedup drops what was already stored), so a failure never reorders or
/// skips anything; unacked messages are kept alive with progress acks meanwhile.
async fn process_batch(
    js: &jetstream::Context,
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    batch: Vec<jetstream::Message>,
    shutdown: &watch::Receiver<bool>,
) {
    let mut outgoing: Vec<(String, PublishMessage, Option<AuditRecord>, Verdict)> = batch
        .iter()
        .map(|msg| {
            let span = tracing::info_span!(
                "kakehashi.validate",
                otel.name = "validate",
                subject = %msg.subject,
                event_id = tracing::field::Empty,
                trace_id = tracing::field::Empty
            );
            outcome(store, policy, settings, msg, &span)
        })
        .collect();
    let mut done = 0;
    let mut backoff = Duration::from_millis(100);
    while done < batch.len() {
        let mut confirmations = Vec::with_capacity(batch.len() - done);
        // A copy per send: a retry must publish exactly what the first attempt did (which may
        // be stored already), never a fresh verdict that schemas or policies changed meanwhile.
        for (subject, publish, _, _) in &outgoing[done..] {
            match js.send_publish(subject.clone(), publish.clone()).await {
                Ok(f) => confirmations.push(f),
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed; retrying in order");
                    break;
                }
            }
        }
        for confirmation in confirmations {
            match confirmation.await {
                Ok(_) => {
                    if let Err(e) = batch[done].ack().await {
                        tracing::warn!(error = %e, "ingress ack failed; the event will be redelivered and deduplicated");
                    }
                    count(settings, &batch[done], &outgoing[done].3);
                    if let Some(record) = outgoing[done].2.take() {
                        settings.audit.record(record).await;
                    }
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publish not confirmed; retrying in order");
                    break;
                }
            }
        }
        if done < batch.len() {
            if *shutdown.borrow() {
                // Unacked messages are redelivered to whoever holds the lease next.
                return;
            }
            for msg in &batch[done..] {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// What became of an ingress message, for the metrics.
enum Verdict {
    /// Valid, of this type.
    Validated(String),
    /// Dead-lettered for this reason.
    DeadLettered(&'static str),
}

fn count(settings: &ValidatorSettings, msg: &jetstream::Message, verdict: &Verdict) {
    let m = &settings.metrics;
    match verdict {
        Verdict::Validated(t) => {
            m.validated.with(&[t]).inc();
            if let Ok(info) = msg.info() {
                m.publish_to_validated.with(&[]).observe(crate::metrics::since(info.published));
            }
        }
        Verdict::DeadLettered(reason) => m.dead_lettered.with(&[reason]).inc(),
    }
}

/// What to publish for one ingress message.
fn outcome(
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    msg: &jetstream::Message,
    span: &tracing::Span,
) -> (String, PublishMessage, Option<AuditRecord>, Verdict) {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    match check::check(&msg.subject, &msg.payload, store, settings.limits, |s, t| policy(s, t)) {
        Ok(accepted) => {
            let event = &accepted.event;
            span.record("event_id", event.id.as_str());
            // The publisher's context from the NATS headers, or for an event published without
            // them (straight to NATS) the envelope's own; set before the span is entered, as a
            // started span can no longer change its parent.
            telemetry::adopt(span, telemetry::context_from(msg.headers.as_ref(), Some(&event.extensions)));
            let _guard = span.enter();
            let trace_id = telemetry::trace_id(span, event.extensions.get(HEADER_TRACEPARENT));
            span.record("trace_id", trace_id.as_str());
            let mut p = PublishMessage::build()
                // The envelope passes through untouched: no re-serialisation on the hot path.
                .payload(msg.payload.clone())
                .message_id(&event.id)
                .header(HEADER_SCHEMA_VERSION, accepted.schema_version.to_string().as_str());
            // Downstream hops become children of this one; without export, pass context on.
            let ours = telemetry::traceparent_of(span);
            for h in [HEADER_TRACEPARENT, HEADER_TRACESTATE] {
                if let Some(v) = ours.get(h).or_else(|| event.extensions.get(h)) {
                    p = p.header(h, v.as_str());
                }
            }
            tracing::debug!(event_type = %event.r#type, version = accepted.schema_version, "validated");
            let mut record = AuditRecord::hop(event, "validated", "ok");
            record.schema_version = accepted.schema_version;
            record.trace_id = trace_id;
            let verdict = Verdict::Validated(event.r#type.clone());
            (subjects::events(&event.r#type), p, Some(record), verdict)
        }
        Err(rejected) => {
            if let Some(e) = &rejected.event {
                span.record("event_id", e.id.as_str());
            }
            // A dead-lettered event's trace still shows where it stopped.
            telemetry::adopt(
                span,
                telemetry::context_from(msg.headers.as_ref(), rejected.event.as_ref().map(|e| &e.extensions)),
            );
            let _guard = span.enter();
            let trace_id = telemetry::trace_id(
                span,
                rejected.event.as_ref().and_then(|e| e.extensions.get(HEADER_TRACEPARENT)),
            );
            span.record("trace_id", trace_id.as_str());
            tracing::info!(reason = rejected.reason.code(), detail = %rejected.message, "dead-lettered");
            let out = dead_letter::build(dead_letter::Details {
                reason: rejected.reason,
                message: rejected.message,
                violations: rejected.violations,
                original_subject: &msg.subject,
                raw: &msg.payload,
                event: rejected.event.as_ref(),
                actor: &settings.actor,
                subscription: "",
                schema_version: rejected.schema_version,
            });
            let p = PublishMessage::build()
                .payload(out.body.into())
                .headers(out.headers)
                // Keyed by ingress sequence: a redelivered message is dead-lettered once.
                .message_id(format!("dlq-in-{seq}"));
            let record =
                rejected.event.as_ref().filter(|e| kakehashi_proto::ids::is_valid_event_id(&e.id)).map(|e| {
                    let mut r = AuditRecord::hop(e, "dead_lettered", "rejected");
                    r.detail = rejected.reason.code().to_string();
                    r.schema_version = rejected.schema_version;
                    r.trace_id = trace_id;
                    r
                });
            (out.subject, p, record, Verdict::DeadLettered(rejected.reason.code()))
        }
    }
}
