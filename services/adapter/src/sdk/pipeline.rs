//! Pipelined publishing: many events in flight, confirmations collected in order.
//!
//! A [`Pipeline`] sends events to `KH_INGRESS` without waiting for each confirmation, keeping
//! at most `window` unconfirmed ones, and hands back one result per event **in the order the
//! events were sent** — the order a checkpoint needs. When the oldest unconfirmed publish
//! fails with a transient error (timeout, no responders, connection lost), the pipeline waits
//! (backoff), then re-sends it and every later publish not yet confirmed, in order, with the
//! same `Nats-Msg-Id`s: whatever the bus had already stored is dropped as a duplicate, and the
//! relative order of the re-sent events is kept. After [`Retry::give_up_after`] the event is
//! reported [`PublishError::Unavailable`].

use super::bus::{classify, Ack, Failure, PublishError};
use super::retry::{clock_salt, Retry};
use crate::envelope;
use crate::schemas::SchemaIndex;
use async_nats::jetstream::{self, context, message::PublishMessage};
use futures::FutureExt;
use kakehashi_proto::v1::Event;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

type AckFuture =
    Pin<Box<dyn Future<Output = Result<jetstream::publish::PublishAck, context::PublishError>> + Send>>;

enum State {
    /// Sent; the confirmation is pending.
    Waiting(AckFuture),
    /// The outcome is known and waits to be collected.
    Settled(Result<Ack, PublishError>),
}

struct Slot {
    event_id: String,
    /// Subject and message, kept to re-send on a transient failure (the payload is shared
    /// `Bytes`, so this is not a copy).
    subject: String,
    message: PublishMessage,
    state: State,
}

/// A window of publishes in flight, confirmed in order. Create with [`super::Bus::pipeline`].
pub struct Pipeline {
    js: jetstream::Context,
    source: String,
    max_payload_bytes: usize,
    schemas: Option<SchemaIndex>,
    retry: Retry,
    window: usize,
    queue: VecDeque<Slot>,
}

impl Pipeline {
    pub(super) fn new(
        js: jetstream::Context,
        source: String,
        max_payload_bytes: usize,
        schemas: Option<SchemaIndex>,
        retry: Retry,
        window: usize,
    ) -> Self {
        Self { js, source, max_payload_bytes, schemas, retry, window: window.max(1), queue: VecDeque::new() }
    }

    /// Events sent (or refused) whose result has not been collected yet.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether every result has been collected.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn unconfirmed(&self) -> usize {
        self.queue.iter().filter(|s| matches!(s.state, State::Waiting(_))).count()
    }

    /// Starts publishing `event` as this pipeline's department. Returns once it is sent —
    /// first waiting for the oldest publish to be confirmed when `window` are unconfirmed. An
    /// event refused before sending (invalid, too large, unknown type) takes its place in
    /// the order like any other; collect results with [`Self::try_next`] or [`Self::next`].
    pub async fn send(&mut self, event: Event) {
        while self.unconfirmed() >= self.window {
            self.settle_oldest().await;
        }
        let claimed_id = event.id.clone();
        let event = match envelope::prepare(event, self.source.clone(), self.max_payload_bytes) {
            Ok(event) => event,
            Err(e) => {
                let refused = PublishError::Refused { reason: e.reason(), message: e.to_string() };
                self.push_settled(claimed_id, Err(refused));
                return;
            }
        };
        if let Some(schemas) = &self.schemas {
            let subject = if event.schema.is_empty() { &event.r#type } else { &event.schema };
            if let Err(e) = schemas.resolve(subject, event.schema_version).await {
                let refused = PublishError::Refused { reason: e.reason(), message: e.to_string() };
                self.push_settled(event.id, Err(refused));
                return;
            }
        }
        let (subject, message) = envelope::to_message(&event);
        let ack = start(&self.js, subject.clone(), message.clone()).await;
        self.queue.push_back(Slot { event_id: event.id, subject, message, state: State::Waiting(ack) });
    }

    /// Records a refusal decided by the caller (e.g. a local schema check) in its place in
    /// the order, without sending anything.
    pub fn refuse(&mut self, event_id: String, reason: &'static str, message: String) {
        self.push_settled(event_id, Err(PublishError::Refused { reason, message }));
    }

    fn push_settled(&mut self, event_id: String, result: Result<Ack, PublishError>) {
        let slot = Slot {
            event_id,
            subject: String::new(),
            message: PublishMessage::build(),
            state: State::Settled(result),
        };
        self.queue.push_back(slot);
    }

    /// The oldest result if it is already known, without waiting.
    pub fn try_next(&mut self) -> Option<Result<Ack, PublishError>> {
        let front = self.queue.front_mut()?;
        if let State::Waiting(ack) = &mut front.state {
            match ack.as_mut().now_or_never() {
                Some(Ok(ack)) => front.state = State::Settled(Ok(Ack::new(&front.event_id, ack))),
                Some(Err(e)) => match classify(&e) {
                    Failure::Refused(refused) => front.state = State::Settled(Err(refused)),
                    // Retrying means waiting: the error is kept (a finished future is never
                    // polled again) for `next`, which re-sends it.
                    Failure::Transient => {
                        front.state = State::Waiting(Box::pin(futures::future::ready(Err(e))));
                        return None;
                    }
                },
                None => return None,
            }
        }
        match self.queue.pop_front().map(|s| s.state) {
            Some(State::Settled(result)) => Some(result),
            _ => None,
        }
    }

    /// The oldest result, waiting for its confirmation (with retries) if needed; `None` when
    /// every result has been collected. Cancel-safe: dropping the future loses nothing (a
    /// retry in progress starts its clock again on the next call).
    pub async fn next(&mut self) -> Option<Result<Ack, PublishError>> {
        if matches!(self.queue.front()?.state, State::Waiting(_)) {
            self.settle_oldest().await;
        }
        match self.queue.pop_front().map(|s| s.state) {
            Some(State::Settled(result)) => Some(result),
            _ => None,
        }
    }

    /// Waits for the oldest unconfirmed publish to settle: confirmed, refused, or — after
    /// retries until the policy gives up — unavailable.
    async fn settle_oldest(&mut self) {
        let Some(index) = self.queue.iter().position(|s| matches!(s.state, State::Waiting(_))) else {
            return;
        };
        let mut first_failure: Option<Instant> = None;
        let mut attempts = 1u32;
        loop {
            let slot = &mut self.queue[index];
            let State::Waiting(ack) = &mut slot.state else { return };
            let error = match ack.await {
                Ok(ack) => {
                    slot.state = State::Settled(Ok(Ack::new(&slot.event_id, ack)));
                    return;
                }
                Err(e) => e,
            };
            match classify(&error) {
                Failure::Refused(refused) => {
                    slot.state = State::Settled(Err(refused));
                    return;
                }
                Failure::Transient => {}
            }
            // Keep the failure in the slot while waiting, so a caller dropping this future
            // mid-retry leaves a slot that is retried next time, not a finished future.
            slot.state = State::Waiting(Box::pin(futures::future::ready(Err(context::PublishError::new(
                error.kind(),
            )))));
            let since = *first_failure.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.retry.give_up_after {
                let unavailable = PublishError::Unavailable {
                    message: error.to_string(),
                    attempts,
                    elapsed: since.elapsed(),
                };
                slot.state = State::Settled(Err(unavailable));
                return;
            }
            tracing::debug!(event_id = %slot.event_id, attempt = attempts, error = %error, "publish not confirmed; retrying");
            let wait = self.retry.jittered(attempts - 1, clock_salt());
            tokio::time::sleep(wait.min(self.retry.give_up_after.saturating_sub(since.elapsed()))).await;
            attempts += 1;
            self.resend_from(index).await;
        }
    }

    /// Re-sends the publish at `index` and every later one not confirmed yet, in order.
    async fn resend_from(&mut self, index: usize) {
        for i in index..self.queue.len() {
            let slot = &mut self.queue[i];
            let State::Waiting(ack) = &mut slot.state else { continue };
            if i > index {
                match ack.as_mut().now_or_never() {
                    Some(Ok(ack)) => {
                        slot.state = State::Settled(Ok(Ack::new(&slot.event_id, ack)));
                        continue;
                    }
                    Some(Err(e)) => match classify(&e) {
                        Failure::Refused(refused) => {
                            slot.state = State::Settled(Err(refused));
                            continue;
                        }
                        // Not left holding a finished future while the re-send is awaited.
                        Failure::Transient => {
                            slot.state = State::Waiting(Box::pin(futures::future::ready(Err(e))));
                        }
                    },
                    None => {}
                }
            }
            let ack = start(&self.js, slot.subject.clone(), slot.message.clone()).await;
            self.queue[i].state = State::Waiting(ack);
        }
    }
}

/// Sends one message; the future resolves to its confirmation. A send that fails at once
/// (client buffer full for too long, oversized) becomes a future of that error, so every
/// failure goes through the same classification and retries.
async fn start(js: &jetstream::Context, subject: String, message: PublishMessage) -> AckFuture {
    match js.send_publish(subject, message).await {
        Ok(confirm) => Box::pin(std::future::IntoFuture::into_future(confirm)),
        Err(e) => Box::pin(futures::future::ready(Err(e))),
    }
}
