//! The ingress validator: a durable pull consumer ("validator") on `KH_INGRESS`, shared by every
//! registry instance. Each batch is checked in order; accepted events are republished to
//! `kh.ev.<type>` byte for byte with `Nats-Msg-Id` = event id, rejected ones go to
//! `kh.dlq.<source>.<type>`; publishes are pipelined and the ingress message is acked only once
//! its publish is confirmed, so a crash anywhere loses nothing and duplicates nothing.

mod check;
pub mod reason;

pub use check::CheckLimits;

use crate::dead_letter;
use crate::store::SchemaStore;
use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use kakehashi_proto::subjects::{self, HEADER_SCHEMA_VERSION, HEADER_TRACEPARENT, HEADER_TRACESTATE};
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
#[derive(Debug, Clone)]
pub struct ValidatorSettings {
    /// Messages per pull batch.
    pub batch: usize,
    /// Ack wait of the consumer.
    pub ack_wait: Duration,
    /// Check limits.
    pub limits: CheckLimits,
    /// Name in dead letters.
    pub actor: String,
}

/// The producer policy the validator consults.
pub type ProducerPolicy = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Runs until `shutdown` turns true.
pub async fn run(
    js: jetstream::Context,
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
                max_ack_pending: (settings.batch * 8) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ValidatorError::Consumer(e.to_string()))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| ValidatorError::Consumer(e.to_string()))?;
    let mut chunks = messages.ready_chunks(settings.batch);
    loop {
        let chunk = tokio::select! {
            _ = shutdown.changed() => break,
            c = chunks.next() => c,
        };
        let Some(chunk) = chunk else { break };
        let mut batch = Vec::with_capacity(chunk.len());
        for m in chunk {
            match m {
                Ok(m) => batch.push(m),
                Err(e) => tracing::warn!(error = %e, "ingress pull error"),
            }
        }
        process_batch(&js, &store, &policy, &settings, batch).await;
        if *shutdown.borrow() {
            break;
        }
    }
    Ok(())
}

/// Checks a batch, publishes every outcome pipelined, then acks each message whose publish the
/// server confirmed. A failed publish leaves its message unacked, so it is redelivered.
async fn process_batch(
    js: &jetstream::Context,
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    batch: Vec<jetstream::Message>,
) {
    let mut pending = Vec::with_capacity(batch.len());
    for msg in batch {
        let span = tracing::info_span!("validate", subject = %msg.subject, event_id = tracing::field::Empty);
        let _guard = span.enter();
        let publish = outcome(store, policy, settings, &msg, &span);
        let future = match publish {
            Some((subject, p)) => js.send_publish(subject, p).await,
            None => {
                pending.push((msg, None));
                continue;
            }
        };
        match future {
            Ok(f) => pending.push((msg, Some(f))),
            Err(e) => {
                tracing::warn!(error = %e, "publish failed; message will be redelivered");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
    for (msg, future) in pending {
        let Some(future) = future else { continue };
        match future.await {
            Ok(_) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ingress ack failed; the event will be redelivered and deduplicated");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish not confirmed; message will be redelivered");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

/// What to publish for one ingress message.
fn outcome(
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    msg: &jetstream::Message,
    span: &tracing::Span,
) -> Option<(String, jetstream::message::PublishMessage)> {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    match check::check(&msg.subject, &msg.payload, store, settings.limits, |s, t| policy(s, t)) {
        Ok(accepted) => {
            let event = &accepted.event;
            span.record("event_id", event.id.as_str());
            let mut p = jetstream::message::PublishMessage::build()
                // The envelope passes through untouched: no re-serialisation on the hot path.
                .payload(msg.payload.clone())
                .message_id(&event.id)
                .header(HEADER_SCHEMA_VERSION, accepted.schema_version.to_string().as_str());
            for h in [HEADER_TRACEPARENT, HEADER_TRACESTATE] {
                if let Some(v) = event.extensions.get(h) {
                    p = p.header(h, v.as_str());
                }
            }
            tracing::debug!(event_type = %event.r#type, version = accepted.schema_version, "validated");
            Some((subjects::events(&event.r#type), p))
        }
        Err(rejected) => {
            if let Some(e) = &rejected.event {
                span.record("event_id", e.id.as_str());
            }
            tracing::info!(reason = rejected.reason.code(), message = %rejected.message, "dead-lettered");
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
            let p = jetstream::message::PublishMessage::build()
                .payload(out.body.into())
                .headers(out.headers)
                // Keyed by ingress sequence: a redelivered message is dead-lettered once.
                .message_id(format!("dlq-in-{seq}"));
            Some((out.subject, p))
        }
    }
}
