//! Publishing a batch's outcomes: pipelined, each with a reply subject of its own under one
//! inbox, JetStream's acknowledgements read off one subscription per pull session. No request,
//! inbox, oneshot channel or timer per event (what `jetstream::Context::send_publish` costs for
//! each); the audit writer confirms its records the same way.
//!
//! The validated events the caller marks `batched` (those of a record that repeats in the
//! batch) go to `KH_EVENTS` as one JetStream fast batch (ADR-50 fast ingest, nats-server 2.14+,
//! `allow_batched`) with gaps refused: the server numbers the batch's messages and stores none
//! after one that did not arrive; the rest are pipelined beside it. Pipelined one by one, a
//! publish lost in transit (the client drops its write buffer when it reconnects; a stream
//! leader dies before replicating) could be followed by a stored later event of the same record,
//! and its retry then stored after that one: the record's order inverted (docs/delivery.md).
//! A fast batch stores each message as it comes, without the atomic batch's wait for a disk
//! sync at its commit (docs/BENCHMARKS.md, 2026-12-04, ninth session).

use async_nats::HeaderMap;
use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use kakehashi_runtime::pub_acks::{acknowledged, reply_number, Refusal};
use std::time::Duration;

/// How long a batch's acknowledgements are awaited before what is unconfirmed is published
/// again (what `send_publish` waits by default).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Most messages the validator pulls and publishes as one batch (`validator.batch` is held to
/// it at load): what one batch holds in memory and in flight before it is confirmed.
pub(crate) const MAX_BATCH: usize = 1000;

/// JetStream's error code for a fast batch on a stream without `allow_batched`.
const ERR_FAST_BATCHES_DISABLED: u64 = 10205;

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
    /// JetStream did not store it as part of a fast batch: an earlier message of the batch was
    /// missing or refused, the batch is unknown to the stream leader, or fast batches are not
    /// allowed on the stream. The refusal need not be about this message.
    #[error("fast batch refused: {0}")]
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

    /// Whether the stream leader refused it as a duplicate of a copy it staged and has not
    /// stored (see `process_batch`).
    pub(super) fn is_id_in_process(&self) -> bool {
        matches!(self, NotStored::Refused(r) if r.is_id_in_process())
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
    /// Whether it goes to `KH_EVENTS` in the fast batch (an event of a repeated record).
    pub batched: bool,
}

/// How a batch is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Pipelined; the messages marked `batched`, when two or more, as one fast batch.
    Batched,
    /// Each message confirmed before the next is sent, so each gets its own answer and none is
    /// stored after one that is not: for a record's events when a fast batch may not be used
    /// (a retry, a redelivery: see `process_batch`) or was refused.
    OneByOne,
}

/// Where one pull session's publishes are confirmed.
pub(super) struct Confirmations {
    client: async_nats::Client,
    inbox: String,
    /// `<inbox>.>`; none after it ended (subscribed again before the next batch).
    acks: Option<Subscriber>,
    /// The number in the next message's reply subject `<inbox>.<n>`: replies to earlier
    /// batches (confirmed too late) are told apart from this one's and ignored. A fast batch's
    /// messages, answered on subjects of their batch, take a number too.
    next: u64,
    /// `KH_EVENTS` refused a fast batch as not allowed there: a batch with a repeated record
    /// goes one by one from then on, without a refused round first.
    fast_batches_off: bool,
}

impl Confirmations {
    /// Confirmations for publishes made with `client`.
    pub(super) fn new(client: async_nats::Client) -> Self {
        let inbox = client.new_inbox();
        Self { client, inbox, acks: None, next: 0, fast_batches_off: false }
    }

    /// Publishes `messages` in order and waits for their acknowledgements: for each, the
    /// `KH_EVENTS` (or `KH_DLQ`) sequence it is stored at (0 for a fast batch's message stored
    /// before its last: JetStream names only the last one's), or why it is not known to be.
    /// Messages after one the client did not take are not sent; one by one, none after one
    /// not stored.
    pub(super) async fn publish(
        &mut self,
        messages: Vec<Outbound>,
        mode: Mode,
    ) -> Vec<Result<u64, NotStored>> {
        let batch_needed = || messages.iter().filter(|m| m.batched).nth(1).is_some();
        match mode {
            Mode::Batched if !(self.fast_batches_off && batch_needed()) => self.pipelined(messages).await,
            Mode::Batched | Mode::OneByOne => {
                let mut results = Vec::with_capacity(messages.len());
                for mut m in messages {
                    m.batched = false;
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
            match self.client.subscribe(format!("{}.>", self.inbox)).await {
                Ok(acks) => self.acks = Some(acks),
                Err(e) => {
                    results.push(Err(NotStored::NotSent(format!("acknowledgements not subscribed: {e}"))));
                    return results;
                }
            }
        }
        // One event alone needs no batch (and a plain publish names its sequence).
        let batched = messages.iter().filter(|m| m.batched).count();
        let mut batch = (batched > 1).then(|| FastBatch::new(&self.inbox, self.next, batched));
        let first = self.next;
        let mut waiting = 0usize;
        for Outbound { subject, headers, payload, batched } in messages {
            // A fast batch's member is answered on a subject of its batch, read by the batch.
            let (reply, plain) = match batch.as_mut() {
                Some(b) if batched => (b.reply(results.len()), false),
                _ => (format!("{}.{}", self.inbox, self.next), true),
            };
            match self.client.publish_with_reply_and_headers(subject, reply, headers, payload).await {
                Ok(()) => {
                    self.next += 1;
                    waiting += usize::from(plain);
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
        if let Some(b) = batch.as_mut() {
            // Sends stop at the first message the client did not take: the members sent are a
            // prefix of the batch.
            b.members.retain(|&i| matches!(results.get(i), Some(Err(NotStored::Unconfirmed))));
            if b.members.len() < b.len {
                // Cut short, the batch never gets its commit, so its final answer never comes.
                // Sent again the same way it would be cut the same way: its members are
                // refused as a batch and go again one by one, each getting its own answer.
                let refusal = Refusal {
                    status: None,
                    code: None,
                    err_code: None,
                    description: "fast batch not completed: one of its messages could not be sent".into(),
                };
                for &i in &b.members {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Err(NotStored::BatchRefused(refusal.clone()));
                    }
                }
                batch = None;
            }
        }
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        while waiting > 0 || batch.as_ref().is_some_and(|b| !b.settled()) {
            let Some(acks) = self.acks.as_mut() else { break };
            match tokio::time::timeout_at(deadline, acks.next()).await {
                Ok(Some(reply)) => {
                    if let Some(b) = batch.as_mut() {
                        if b.answer(&reply) {
                            continue;
                        }
                    }
                    let n = reply_number(&reply);
                    let Some(i) = n.and_then(|n| n.checked_sub(first)).and_then(|i| usize::try_from(i).ok())
                    else {
                        continue;
                    };
                    if let Some(slot @ Err(NotStored::Unconfirmed)) = results.get_mut(i) {
                        *slot = acknowledged(&reply).map_err(NotStored::Refused);
                        tracing::trace!(reply = %reply.subject, answer = ?slot, "publish answered");
                        waiting -= 1;
                    }
                }
                // The subscription ended (the client is closing): subscribed again next time.
                Ok(None) => self.acks = None,
                Err(_) => break,
            }
        }
        if let Some(b) = &batch {
            b.settle(&mut results);
            tracing::debug!(batch = %b.prefix, end = ?b.end, answers = %b.answers_summary(), "fast batch answered");
            let disabled = |r: &Result<u64, NotStored>| matches!(r, Err(NotStored::BatchRefused(x)) if x.err_code == Some(ERR_FAST_BATCHES_DISABLED));
            if !self.fast_batches_off && results.iter().any(disabled) {
                tracing::warn!("KH_EVENTS does not allow fast batches: a batch in which a record repeats is published one event at a time (docs/operations.md)");
                self.fast_batches_off = true;
            }
        }
        results
    }
}

/// What JetStream answered one message of a fast batch on its own reply subject.
#[derive(Debug, Clone)]
enum Answer {
    /// Stored at this sequence as a publish of its own (a server that knows no fast batches
    /// stores each message plainly).
    Stored(u64),
    /// Not stored, and why.
    Refused(Refusal),
}

/// The events of one `publish` sent as a JetStream fast batch that refuses gaps: the server
/// stores its messages as they come, in its numbering, and none after one that is missing or
/// refused; the batch's last answer names how many it stored and the last one's sequence.
struct FastBatch {
    /// `<inbox>.<batch id>.<flow>.fail.`: the members' reply subjects, then `<n>.<op>.$FI`
    /// (the server reads the batch id, flow, gap mode, number and operation from the right).
    prefix: String,
    /// How many messages it holds.
    len: usize,
    /// The results' indexes of its messages, in batch order.
    members: Vec<usize>,
    /// Each member's own answer, once it came.
    answers: Vec<Option<Answer>>,
    /// The batch's final answer: how many of its messages are stored (from the first), the
    /// last of them at which sequence.
    end: Option<(u64, u64)>,
}

impl FastBatch {
    fn new(inbox: &str, next: u64, len: usize) -> Self {
        // Unique per stream while it lasts: the inbox's unique token and the first reply number
        // (the server keys batches by this id alone).
        let token = inbox.rsplit('.').next().unwrap_or(inbox);
        // The server acknowledges every `flow` messages. The whole batch is sent at once and
        // only its final answer is waited for, so flow = its length: no acknowledgement in
        // the middle (only the start's).
        let prefix = format!("{inbox}.{token}-{next}.{len}.fail.");
        Self { prefix, len, members: Vec::with_capacity(len), answers: vec![None; len], end: None }
    }

    /// The reply subject of its next message, the results' `index`th: the batch's start, a
    /// message appended, or its commit.
    fn reply(&mut self, index: usize) -> String {
        self.members.push(index);
        let n = self.members.len();
        let op = match n {
            1 => 0,
            n if n == self.len => 2,
            _ => 1,
        };
        format!("{}{n}.{op}.$FI", self.prefix)
    }

    /// Takes `reply` if it is addressed to this batch (whether or not it says anything new).
    fn answer(&mut self, reply: &async_nats::Message) -> bool {
        let Some(rest) = reply.subject.as_str().strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        // `<n>.<op>.$FI`
        let Some(k) =
            rest.split('.').next().and_then(|n| n.parse::<usize>().ok()).and_then(|n| n.checked_sub(1))
        else {
            return true;
        };
        #[derive(serde::Deserialize)]
        struct Reply<'a> {
            /// Flow control (`ack`), a gap seen (`gap`), a message's error (`err`); none for a
            /// publish acknowledgement or an API error.
            #[serde(default, rename = "type", borrow)]
            kind: Option<&'a str>,
            /// Set on the batch's final acknowledgement.
            #[serde(default)]
            count: Option<u64>,
            #[serde(default, borrow)]
            batch: Option<&'a str>,
        }
        let parsed =
            if reply.status.is_some() { None } else { serde_json::from_slice::<Reply>(&reply.payload).ok() };
        // A flow acknowledgement, or the notice of a gap (the final answer follows). A
        // message's error, in the batch's own form (ADR-50's `{"type":"err",…,"error":…}`) or
        // the plain API form nats-server 2.15.1 answered with, is read below like any refusal.
        if matches!(parsed.as_ref().and_then(|r| r.kind), Some("ack") | Some("gap")) {
            return true;
        }
        match acknowledged(reply) {
            Ok(seq) => match parsed.and_then(|r| r.count.filter(|_| r.batch.is_some())) {
                Some(count) => self.end = Some((count, seq)),
                None => self.set(k, Answer::Stored(seq)),
            },
            Err(r) => self.set(k, Answer::Refused(r)),
        }
        true
    }

    /// Each member's own answer in one line, for the debug log: `-` none, `s<seq>` stored,
    /// `r<err_code>` (or `r<status>`) refused.
    fn answers_summary(&self) -> String {
        use std::fmt::Write;
        let mut line = String::with_capacity(self.len * 4);
        for a in &self.answers {
            let _ = match a {
                None => write!(line, "- "),
                Some(Answer::Stored(seq)) => write!(line, "s{seq} "),
                Some(Answer::Refused(r)) => {
                    write!(line, "r{} ", r.err_code.or(r.status.map(u64::from)).unwrap_or(0))
                }
            };
        }
        line
    }

    fn set(&mut self, k: usize, answer: Answer) {
        if let Some(slot @ None) = self.answers.get_mut(k) {
            *slot = Some(answer);
        }
    }

    /// Whether nothing more is to be learnt: the final answer came, or the last member was
    /// answered on its own (refused; the server answers a batch's messages in order, so no
    /// final answer follows).
    fn settled(&self) -> bool {
        self.end.is_some() || self.answers.get(self.len - 1).is_some_and(Option::is_some)
    }

    /// Gives each member what is known of it: stored (at its sequence when that is known, 0
    /// when not), refused on its own (too large, …), refused with its batch (after a gap,
    /// fast batches not allowed: a 400), or unconfirmed.
    fn settle(&self, results: &mut [Result<u64, NotStored>]) {
        let after_gap = || Refusal {
            status: None,
            code: None,
            err_code: None,
            description: "not stored: an earlier message of its fast batch was not".into(),
        };
        let unanswered = || Refusal {
            status: None,
            code: None,
            err_code: None,
            description: "its fast batch ended without a final answer: not known to be stored".into(),
        };
        // A member refused on its own was not stored, whatever a final answer counts (seen in a
        // cluster whose stream leader kept changing: a count covering members another leader
        // had refused, which were never stored). The count is trusted only before the first
        // such member; members after it go again (answered as duplicates if stored after all).
        let first_refused = self.answers.iter().position(|a| matches!(a, Some(Answer::Refused(_))));
        for (k, &i) in self.members.iter().enumerate() {
            let Some(slot) = results.get_mut(i) else { continue };
            let n = u64::try_from(k + 1).unwrap_or(u64::MAX);
            let counted = |count: u64| first_refused.is_none_or(|f| k < f) && n <= count;
            *slot = match (&self.answers[k], self.end) {
                (Some(Answer::Stored(seq)), _) => Ok(*seq),
                (Some(Answer::Refused(r)), _) if r.is_too_large() => Err(NotStored::Refused(r.clone())),
                (Some(Answer::Refused(r)), _) if r.code == Some(400) => {
                    Err(NotStored::BatchRefused(r.clone()))
                }
                (Some(Answer::Refused(r)), _) => Err(NotStored::Refused(r.clone())),
                (None, Some((count, seq))) if counted(count) => Ok(if n == count { seq } else { 0 }),
                (None, Some(_)) => Err(NotStored::BatchRefused(after_gap())),
                (None, None) if self.settled() => Err(NotStored::BatchRefused(unanswered())),
                (None, None) => Err(NotStored::Unconfirmed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer to a member of a batch the stream leader does not know.
    const UNKNOWN_BATCH: &str =
        r#"{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"}}"#;
    /// The answer to a member over the stream's message size.
    const TOO_LARGE: &str =
        r#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;

    /// A batch of `len` members at results 0.., with their reply subjects.
    fn batch(len: usize) -> (FastBatch, Vec<String>) {
        let mut b = FastBatch::new("_INBOX.registry.abc", 7, len);
        let replies = (0..len).map(|i| b.reply(i)).collect();
        (b, replies)
    }

    /// JetStream's answer `payload` on `subject`.
    fn reply(subject: &str, payload: &str) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    fn settled(b: &FastBatch) -> Vec<Result<u64, NotStored>> {
        let mut results = vec![Err(NotStored::Unconfirmed); b.len];
        b.settle(&mut results);
        results
    }

    #[test]
    fn reply_subjects_name_the_batch_its_flow_the_gap_mode_each_number_and_operation() {
        let (_, replies) = batch(3);
        assert_eq!(
            replies,
            [
                "_INBOX.registry.abc.abc-7.3.fail.1.0.$FI",
                "_INBOX.registry.abc.abc-7.3.fail.2.1.$FI",
                "_INBOX.registry.abc.abc-7.3.fail.3.2.$FI"
            ]
        );
    }

    #[test]
    fn a_committed_batch_is_stored_whole_with_only_the_last_sequence_known() {
        let (mut b, r) = batch(3);
        assert!(b.answer(&reply(&r[0], r#"{"type":"ack","seq":0,"msgs":3}"#)));
        assert!(!b.settled(), "a flow acknowledgement settles nothing");
        assert!(b.answer(&reply(&r[2], r#"{"stream":"KH_EVENTS","seq":42,"batch":"abc-7","count":3}"#)));
        assert!(b.settled());
        assert_eq!(settled(&b), [Ok(0), Ok(0), Ok(42)]);
    }

    #[test]
    fn after_a_gap_the_stored_prefix_is_known_and_the_rest_refused_with_the_batch() {
        // The second message lost: the third shows the gap, the final answer counts one.
        let (mut b, r) = batch(4);
        b.answer(&reply(&r[0], r#"{"type":"ack","seq":0,"msgs":4}"#));
        b.answer(&reply(&r[2], r#"{"type":"gap","last_seq":1,"seq":3}"#));
        b.answer(&reply(&r[2], r#"{"stream":"KH_EVENTS","seq":9,"batch":"abc-7","count":1}"#));
        b.answer(&reply(&r[3], UNKNOWN_BATCH));
        let results = settled(&b);
        assert_eq!(results[0], Ok(9));
        assert!(results[1..].iter().all(|r| matches!(r, Err(NotStored::BatchRefused(_)))), "{results:?}");
    }

    #[test]
    fn a_member_refused_as_too_large_is_refused_alone_so_it_can_be_dead_lettered() {
        // In the plain API form nats-server 2.15.1 answers with, and in the batch's own form
        // (ADR-50's `{"type":"err",…}`), read alike.
        let batch_form = r#"{"type":"err","seq":2,"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        for refusal in [TOO_LARGE, batch_form] {
            let (mut b, r) = batch(3);
            b.answer(&reply(&r[1], refusal));
            b.answer(&reply(&r[2], r#"{"type":"gap","last_seq":2,"seq":3}"#));
            b.answer(&reply(&r[2], r#"{"stream":"KH_EVENTS","seq":5,"batch":"abc-7","count":1}"#));
            let results = settled(&b);
            assert_eq!(results[0], Ok(5));
            assert!(matches!(&results[1], Err(e) if e.is_too_large()), "{refusal}: {results:?}");
            assert!(matches!(results[2], Err(NotStored::BatchRefused(_))), "{refusal}: {results:?}");
        }
    }

    #[test]
    fn a_lost_start_leaves_every_member_refused_once_the_last_is_answered() {
        let (mut b, r) = batch(3);
        b.answer(&reply(&r[1], UNKNOWN_BATCH));
        assert!(!b.settled(), "the last member may still be answered");
        b.answer(&reply(&r[2], UNKNOWN_BATCH));
        assert!(b.settled(), "answers come in order: the first never arrived");
        assert!(settled(&b).iter().all(|r| matches!(r, Err(NotStored::BatchRefused(_)))));
    }

    #[test]
    fn fast_batches_not_allowed_refuse_every_member_with_the_batch() {
        let (mut b, r) = batch(2);
        for subject in &r {
            b.answer(&reply(
                subject,
                r#"{"error":{"code":400,"err_code":10205,"description":"batch publish is disabled"}}"#,
            ));
        }
        assert!(settled(&b).iter().all(|r| matches!(r, Err(NotStored::BatchRefused(_)))));
    }

    #[test]
    fn no_stream_answers_each_member_as_refused_to_be_retried_as_it_is() {
        let (mut b, r) = batch(2);
        for subject in &r {
            let mut m = reply(subject, "");
            m.status = Some(async_nats::StatusCode::NO_RESPONDERS);
            b.answer(&m);
        }
        assert!(settled(&b).iter().all(|r| matches!(r, Err(NotStored::Refused(x)) if x.status == Some(503))));
    }

    #[test]
    fn a_server_without_fast_batches_storing_each_plainly_names_each_sequence() {
        let (mut b, r) = batch(2);
        b.answer(&reply(&r[0], r#"{"stream":"KH_EVENTS","seq":3}"#));
        b.answer(&reply(&r[1], r#"{"stream":"KH_EVENTS","seq":4}"#));
        assert_eq!(settled(&b), [Ok(3), Ok(4)]);
    }

    #[test]
    fn members_among_plain_messages_are_settled_at_their_own_indexes() {
        let mut b = FastBatch::new("_INBOX.registry.abc", 7, 3);
        let r: Vec<String> = [1, 3, 4].into_iter().map(|i| b.reply(i)).collect();
        b.answer(&reply(&r[2], r#"{"stream":"KH_EVENTS","seq":20,"batch":"abc-7","count":3}"#));
        let mut results = vec![Err(NotStored::Unconfirmed); 5];
        results[0] = Ok(17);
        b.settle(&mut results);
        assert_eq!(results, [Ok(17), Ok(0), Err(NotStored::Unconfirmed), Ok(0), Ok(20)]);
    }

    #[test]
    fn the_final_answer_settles_at_once_before_the_later_members_are_refused() {
        let (mut b, r) = batch(4);
        b.answer(&reply(&r[2], r#"{"type":"gap","last_seq":1,"seq":3}"#));
        assert!(!b.settled(), "a gap notice comes before the final answer");
        b.answer(&reply(&r[2], r#"{"stream":"KH_EVENTS","seq":9,"batch":"abc-7","count":1}"#));
        assert!(b.settled());
    }

    #[test]
    fn a_commit_refused_as_too_large_leaves_the_rest_to_be_sent_again_one_by_one() {
        // No final answer follows a refused commit: the earlier members may be stored (sent
        // again, they are answered as duplicates).
        let (mut b, r) = batch(3);
        b.answer(&reply(&r[2], TOO_LARGE));
        assert!(b.settled());
        let results = settled(&b);
        assert!(results[..2].iter().all(|r| matches!(r, Err(NotStored::BatchRefused(_)))), "{results:?}");
        assert!(matches!(&results[2], Err(e) if e.is_too_large()), "{results:?}");
    }

    #[test]
    fn a_commit_stored_before_answers_sequence_0_so_no_sequence_is_known() {
        let (mut b, r) = batch(2);
        b.answer(&reply(&r[1], r#"{"stream":"KH_EVENTS","seq":0,"batch":"abc-7","count":2}"#));
        assert_eq!(settled(&b), [Ok(0), Ok(0)]);
    }

    #[test]
    fn a_member_refused_on_its_own_is_never_taken_as_stored_by_a_later_count() {
        // Its leader changed under the batch: one leader refused the second member, another
        // then counted the whole batch.
        let (mut b, r) = batch(3);
        b.answer(&reply(&r[1], UNKNOWN_BATCH));
        b.answer(&reply(&r[2], r#"{"stream":"KH_EVENTS","seq":12,"batch":"abc-7","count":3}"#));
        let results = settled(&b);
        assert_eq!(results[0], Ok(0));
        assert!(results[1..].iter().all(|r| matches!(r, Err(NotStored::BatchRefused(_)))), "{results:?}");
    }

    #[test]
    fn unanswered_members_without_the_last_answer_stay_unconfirmed() {
        let (mut b, r) = batch(3);
        b.answer(&reply(&r[0], r#"{"type":"ack","seq":0,"msgs":3}"#));
        assert!(!b.settled());
        assert!(settled(&b).iter().all(|r| *r == Err(NotStored::Unconfirmed)));
    }

    #[test]
    fn replies_to_another_batch_or_a_plain_publish_are_not_taken() {
        let (mut b, _) = batch(2);
        assert!(!b.answer(&reply("_INBOX.registry.abc.3", r#"{"stream":"KH_EVENTS","seq":3}"#)));
        assert!(!b.answer(&reply(
            "_INBOX.registry.abc.abc-2.2.fail.2.2.$FI",
            r#"{"stream":"KH_EVENTS","seq":3,"batch":"abc-2","count":2}"#
        )));
        assert!(b.end.is_none());
    }
}
