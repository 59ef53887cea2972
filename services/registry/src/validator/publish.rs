//! Publishing a batch's outcomes: pipelined, each with a reply subject of its own under one
//! inbox, JetStream's acknowledgements read off one subscription per pull session. No request,
//! inbox, oneshot channel or timer per event (what `jetstream::Context::send_publish` costs for
//! each); the audit writer confirms its records the same way.
//!
//! The validated events the caller marks `atomic` (those of a record that repeats in the
//! batch) go to `KH_EVENTS` as one JetStream atomic batch: all stored or none; the rest are
//! pipelined beside it. Pipelined one by one, a publish lost in transit (the client drops its
//! write buffer when it reconnects; a stream leader dies before replicating) could be followed
//! by a stored later event of the same record, and its retry then stored after that one: the
//! record's order inverted. A batch with a message missing is refused whole instead
//! (docs/delivery.md).

use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use kakehashi_runtime::pub_acks::{acknowledged, reply_number, Refusal};
use std::time::Duration;

/// How long a batch's acknowledgements are awaited before what is unconfirmed is published
/// again (what `send_publish` waits by default).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Most messages nats-server takes in one atomic batch (its `max_batch_size` default); the
/// validator's `batch` is held to it at load.
pub(crate) const MAX_ATOMIC_BATCH: usize = 1000;

/// Why a message of a batch is not known to be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NotStored {
    /// The client did not take it (or an earlier message of the batch).
    #[error("publish failed: {0}")]
    NotSent(String),
    /// JetStream answered that it did not store it (no stream, limits, …), with its code and
    /// description.
    #[error("publish refused: {0}")]
    Refused(Refusal),
    /// JetStream refused the atomic batch it was part of (a message of it lost in transit, a
    /// duplicate, one too large, …): none of the batch is stored, and the refusal does not say
    /// which message it was about.
    #[error("atomic batch refused: {0}")]
    BatchRefused(Refusal),
    /// The client refused it as over the server's `max_payload`: refused again at every retry.
    #[error("publish failed: {0} (the NATS server's max_payload)")]
    OverMaxPayload(String),
    /// No acknowledgement within the wait.
    #[error("publish not confirmed")]
    Unconfirmed,
}

impl NotStored {
    /// Whether the message is too large for the server or its stream: the same message is
    /// refused again at every retry.
    pub(super) fn is_too_large(&self) -> bool {
        match self {
            NotStored::Refused(r) => r.is_too_large(),
            NotStored::OverMaxPayload(_) => true,
            NotStored::NotSent(_) | NotStored::BatchRefused(_) | NotStored::Unconfirmed => false,
        }
    }
}

/// One message to publish.
pub(super) struct Outbound {
    /// Where to.
    pub subject: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: Bytes,
    /// Whether it goes to `KH_EVENTS` in the atomic batch (an event of a repeated record).
    pub atomic: bool,
}

/// How a batch is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Pipelined; the messages marked `atomic`, when two or more, as one atomic batch.
    Atomic,
    /// Each message confirmed before the next is sent: for a batch JetStream refused whole,
    /// whose refusal names no message, so each message gets its own answer (a duplicate is
    /// then acknowledged as one, a message too large refused alone).
    OneByOne,
}

/// Where one pull session's publishes are confirmed.
pub(super) struct Confirmations {
    client: async_nats::Client,
    inbox: String,
    /// `<inbox>.*`; none after it ended (subscribed again before the next batch).
    acks: Option<Subscriber>,
    /// The number in the next message's reply subject `<inbox>.<n>`: replies to earlier
    /// batches (confirmed too late) are told apart from this one's and ignored. Messages sent
    /// without a reply (an atomic batch's before its commit) take a number too.
    next: u64,
}

impl Confirmations {
    /// Confirmations for publishes made with `client`.
    pub(super) fn new(client: async_nats::Client) -> Self {
        let inbox = client.new_inbox();
        Self { client, inbox, acks: None, next: 0 }
    }

    /// Publishes `messages` in order and waits for their acknowledgements: for each, the
    /// `KH_EVENTS` (or `KH_DLQ`) sequence it is stored at, or why it is not known to be.
    /// Messages after one the client did not take are not sent; one by one, none after one
    /// not stored.
    pub(super) async fn publish(
        &mut self,
        messages: Vec<Outbound>,
        mode: Mode,
    ) -> Vec<Result<u64, NotStored>> {
        match mode {
            Mode::Atomic => self.pipelined(messages).await,
            Mode::OneByOne => {
                let mut results = Vec::with_capacity(messages.len());
                for mut m in messages {
                    m.atomic = false;
                    let result = self.pipelined(vec![m]).await.pop().unwrap_or(Err(NotStored::Unconfirmed));
                    let stored = result.is_ok();
                    results.push(result);
                    if !stored {
                        break;
                    }
                }
                results
            }
        }
    }

    async fn pipelined(&mut self, messages: Vec<Outbound>) -> Vec<Result<u64, NotStored>> {
        let mut results = Vec::with_capacity(messages.len());
        if self.acks.is_none() {
            match self.client.subscribe(format!("{}.*", self.inbox)).await {
                Ok(acks) => self.acks = Some(acks),
                Err(e) => {
                    results.push(Err(NotStored::NotSent(format!("acknowledgements not subscribed: {e}"))));
                    return results;
                }
            }
        }
        // One event alone needs no batch (and a plain publish answers a duplicate as one).
        let atomic = messages.iter().filter(|m| m.atomic).count();
        let mut batch = (atomic > 1).then(|| AtomicBatch::new(&self.inbox, self.next, atomic));
        let first = self.next;
        let mut waiting = 0usize;
        let mut committed = false;
        for Outbound { subject, mut headers, payload, atomic } in messages {
            let (sent, replied) = match batch.as_mut() {
                Some(b) if atomic => {
                    if b.stamp(&mut headers, results.len(), self.next) {
                        let reply = format!("{}.{}", self.inbox, self.next);
                        let sent = self
                            .client
                            .publish_with_reply_and_headers(subject, reply, headers, payload)
                            .await;
                        committed = sent.is_ok();
                        (sent, true)
                    } else {
                        // Answered only with the commit: no reply subject, nothing to read.
                        (self.client.publish_with_headers(subject, headers, payload).await, false)
                    }
                }
                _ => {
                    let reply = format!("{}.{}", self.inbox, self.next);
                    (self.client.publish_with_reply_and_headers(subject, reply, headers, payload).await, true)
                }
            };
            match sent {
                Ok(()) => {
                    self.next += 1;
                    waiting += usize::from(replied);
                    results.push(Err(NotStored::Unconfirmed));
                }
                Err(e) if e.kind() == async_nats::PublishErrorKind::MaxPayloadExceeded => {
                    results.push(Err(NotStored::OverMaxPayload(e.to_string())));
                    break;
                }
                Err(e) => {
                    results.push(Err(NotStored::NotSent(e.to_string())));
                    break;
                }
            }
        }
        if let Some(b) = batch.as_ref().filter(|_| !committed) {
            // A message could not be sent before the commit (one over the server's
            // max_payload with the batch headers, a closed connection): the batch will never
            // be stored. Retried the same way it would fail the same way, so its members are
            // refused as a batch and go again one by one, each getting its own answer.
            let refusal = Refusal {
                status: None,
                code: None,
                err_code: None,
                description: "atomic batch not completed: one of its messages could not be sent".into(),
            };
            for &i in &b.members {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Err(NotStored::BatchRefused(refusal.clone()));
                }
            }
            batch = None;
        }
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        let mut batch_ack = None;
        while waiting > 0 {
            let Some(acks) = self.acks.as_mut() else { break };
            match tokio::time::timeout_at(deadline, acks.next()).await {
                Ok(Some(reply)) => {
                    let n = reply_number(&reply);
                    let Some(i) = n.and_then(|n| n.checked_sub(first)).and_then(|i| usize::try_from(i).ok())
                    else {
                        continue;
                    };
                    if let Some(slot @ Err(NotStored::Unconfirmed)) = results.get_mut(i) {
                        let answer = acknowledged(&reply);
                        if batch.as_ref().is_some_and(|b| n == Some(b.commit_number)) {
                            batch_ack = Some(answer.map(|last| (last, batch_count(&reply))));
                        } else {
                            *slot = answer.map_err(NotStored::Refused);
                        }
                        waiting -= 1;
                    }
                }
                // The subscription ended (the client is closing): subscribed again next time.
                Ok(None) => self.acks = None,
                Err(_) => break,
            }
        }
        if let (Some(b), Some(answer)) = (&batch, batch_ack) {
            b.settle(answer, &mut results);
        }
        results
    }
}

/// The `count` of an atomic batch's commit answer (`{"seq":…,"count":…}`).
fn batch_count(reply: &async_nats::Message) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct BatchAck {
        count: Option<u64>,
    }
    serde_json::from_slice::<BatchAck>(&reply.payload).ok()?.count
}

/// The events of one `publish` sent as a JetStream atomic batch.
struct AtomicBatch {
    /// `Nats-Batch-Id`: unique per batch (the server keeps an abandoned one for a while).
    id: String,
    /// How many messages it holds.
    len: usize,
    /// The reply number of its commit: the message whose answer is the whole batch's.
    commit_number: u64,
    /// The results' indexes of its messages, in batch order.
    members: Vec<usize>,
}

impl AtomicBatch {
    fn new(inbox: &str, next: u64, len: usize) -> Self {
        // The inbox's unique token and the first reply number: unique per client and batch.
        let token = inbox.rsplit('.').next().unwrap_or(inbox);
        Self { id: format!("{token}-{next}"), len, commit_number: u64::MAX, members: Vec::with_capacity(len) }
    }

    /// Adds the batch headers to its next message, the results' `index`th, sent with reply
    /// number `number`; whether it is the commit.
    fn stamp(&mut self, headers: &mut HeaderMap, index: usize, number: u64) -> bool {
        self.members.push(index);
        let n = self.members.len();
        headers.insert(NATS_BATCH_ID, self.id.as_str());
        headers.insert(NATS_BATCH_SEQUENCE, n.to_string());
        let commit = n == self.len;
        if commit {
            headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
            self.commit_number = number;
        }
        commit
    }

    /// Gives each member the batch's answer: its own sequence (an atomic batch is stored
    /// contiguously, the commit's answer naming the last and how many), or why it is not
    /// stored. A refusal of the batch's content (a 400: a duplicate, a message missing or too
    /// large, atomic batches not allowed) makes every member `BatchRefused`; any other error
    /// (no stream leader for now, no responders) leaves them to be retried as they are.
    fn settle(&self, answer: Result<(u64, Option<u64>), Refusal>, results: &mut [Result<u64, NotStored>]) {
        let len = self.members.len();
        for (k, &i) in self.members.iter().enumerate() {
            let Some(slot) = results.get_mut(i) else { continue };
            *slot = match &answer {
                // Members after this one, counted back from the last.
                Ok((last, count)) if *count == u64::try_from(len).ok() => u64::try_from(len - 1 - k)
                    .ok()
                    .and_then(|after| last.checked_sub(after))
                    .ok_or(NotStored::Unconfirmed),
                Ok(_) => Err(NotStored::Unconfirmed),
                Err(r) if r.code == Some(400) => Err(NotStored::BatchRefused(r.clone())),
                Err(r) => Err(NotStored::Refused(r.clone())),
            };
        }
    }
}
