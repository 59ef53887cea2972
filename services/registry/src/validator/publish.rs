//! Publishing a batch's outcomes: pipelined, each with a reply subject of its own under one
//! inbox, JetStream's acknowledgements read off one subscription per pull session. No request,
//! inbox, oneshot channel or timer per event (what `jetstream::Context::send_publish` costs for
//! each); the audit writer confirms its records the same way.

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use kakehashi_runtime::pub_acks::{acknowledged, reply_number, Refusal};
use std::time::Duration;

/// How long a batch's acknowledgements are awaited before what is unconfirmed is published
/// again (what `send_publish` waits by default).
const ACK_WAIT: Duration = Duration::from_secs(5);

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
            NotStored::NotSent(_) | NotStored::Unconfirmed => false,
        }
    }
}

/// Where one pull session's publishes are confirmed.
pub(super) struct Confirmations {
    client: async_nats::Client,
    inbox: String,
    /// `<inbox>.*`; none after it ended (subscribed again before the next batch).
    acks: Option<Subscriber>,
    /// The number in the next message's reply subject `<inbox>.<n>`: replies to earlier
    /// batches (confirmed too late) are told apart from this one's and ignored.
    next: u64,
}

impl Confirmations {
    /// Confirmations for publishes made with `client`.
    pub(super) fn new(client: async_nats::Client) -> Self {
        let inbox = client.new_inbox();
        Self { client, inbox, acks: None, next: 0 }
    }

    /// Publishes `messages` (subject, headers, payload) in order and waits for their
    /// acknowledgements: for each, the `KH_EVENTS` (or `KH_DLQ`) sequence it is stored at, or
    /// why it is not known to be. Messages after one the client did not take are not sent.
    pub(super) async fn publish(
        &mut self,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Vec<Result<u64, NotStored>> {
        let mut results = Vec::new();
        if self.acks.is_none() {
            match self.client.subscribe(format!("{}.*", self.inbox)).await {
                Ok(acks) => self.acks = Some(acks),
                Err(e) => {
                    results.push(Err(NotStored::NotSent(format!("acknowledgements not subscribed: {e}"))));
                    return results;
                }
            }
        }
        let first = self.next;
        for (subject, headers, payload) in messages {
            let reply = format!("{}.{}", self.inbox, self.next);
            match self.client.publish_with_reply_and_headers(subject, reply, headers, payload).await {
                Ok(()) => {
                    self.next += 1;
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
        let sent = usize::try_from(self.next - first).unwrap_or(usize::MAX);
        let mut waiting = sent;
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
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
                        *slot = acknowledged(&reply).map_err(NotStored::Refused);
                        waiting -= 1;
                    }
                }
                // The subscription ended (the client is closing): subscribed again next time.
                Ok(None) => self.acks = None,
                Err(_) => break,
            }
        }
        results
    }
}
