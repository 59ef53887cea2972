//! The audit task: chains records, publishes them pipelined, republishes what is not
//! confirmed, and anchors the chain's head.

use super::{chain_name, head_key, now_us, AuditRecord, ChainHead, BATCH_HOP, GENESIS};
use async_nats::jetstream::{self, kv};
use kakehashi_proto::subjects;
use std::collections::BTreeMap;
use tokio::sync::{mpsc, watch};

/// How the audit task groups hops into records.
pub(super) struct Batching {
    /// Most hops in one record.
    pub hops: usize,
    /// About the most bytes in one record.
    pub bytes: usize,
    /// How long a record that holds a hop waits for more (zero: only what is queued already).
    pub linger: std::time::Duration,
}

/// Chains and publishes the records arriving on `rx`, for as long as writers exist. The hops
/// queued together or arriving within `batching.linger` of the first (at most `batching.hops`)
/// go into one batch record; a hop still alone then is a record of its own. Every record goes
/// to [`subjects::AUDIT_RECORDS`].
pub(super) async fn write_loop(
    js: jetstream::Context,
    anchor: Anchor,
    mut rx: mpsc::Receiver<AuditRecord>,
    batching: Batching,
) {
    let client = js.client();
    // Every record is published with a reply subject of its own under one inbox, and
    // JetStream's acknowledgements all arrive on one subscription: no request, inbox, timer or
    // future per record (what `send_publish` would cost for each of them).
    let inbox = client.new_inbox();
    let acks = loop {
        match client.subscribe(format!("{inbox}.*")).await {
            Ok(acks) => break acks,
            Err(e) => {
                tracing::warn!(error = %e, "audit acknowledgements not subscribed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let (actor, chain) = (anchor.actor.clone(), anchor.chain.clone());
    // Confirmations are awaited apart from publishing: after an outage many time out at once
    // rather than one after another, so the queue (and the hot path) never stalls on them. An
    // unconfirmed record is published again (a stored repeat is harmless).
    let (confirm_tx, confirm_rx) = mpsc::channel::<Pending>(MAX_UNCONFIRMED);
    let publisher = Publisher { client, inbox };
    tokio::spawn(confirm_loop(publisher.clone(), acks, confirm_rx, anchor));
    let mut links = Links { prev: GENESIS.to_string(), prev_time: 0, seq: 0, publisher, confirm_tx };
    let mut hops: Vec<AuditRecord> = Vec::with_capacity(batching.hops.min(256));
    while let Some(record) = rx.recv().await {
        // What is queued now and, when that is not a full batch, what arrived by the end of
        // the linger. Hops are acts already done: waiting delays the trail, never the events.
        // One timer per record, not a wake-up per hop arriving meanwhile.
        let until = tokio::time::Instant::now() + batching.linger;
        let mut bytes = approx_len(&record);
        hops.push(record);
        let mut lingered = batching.linger.is_zero();
        while hops.len() < batching.hops && bytes < batching.bytes {
            match rx.try_recv() {
                Ok(record) => {
                    bytes += approx_len(&record);
                    hops.push(record);
                }
                Err(mpsc::error::TryRecvError::Empty) if !lingered => {
                    tokio::time::sleep_until(until).await;
                    lingered = true;
                }
                Err(_) => break,
            }
        }
        let record = if hops.len() == 1 {
            let mut single = hops.pop().unwrap_or_default();
            single.actor.clone_from(&actor);
            single.chain.clone_from(&chain);
            single
        } else {
            AuditRecord {
                hop: BATCH_HOP.to_string(),
                actor: actor.clone(),
                chain: chain.clone(),
                time_us: hops.iter().map(|h| h.time_us).max().unwrap_or_default(),
                hops: hops.drain(..).map(Into::into).collect(),
                ..Default::default()
            }
        };
        links.write(record).await;
    }
}

/// At least as many bytes as a hop takes in a batch record: its strings, and at most 3 bytes of
/// tag and length for each of its 11 fields, 10 bytes for each number and 3 for the hop's own
/// length. Keeps a batch of long details under the stream's message limit.
fn approx_len(r: &AuditRecord) -> usize {
    let strings = [&r.event_id, &r.hop, &r.outcome, &r.detail, &r.trace_id, &r.department, &r.event_type];
    64 + strings.iter().map(|s| s.len()).sum::<usize>() + r.subscription.len()
}

/// The chain as written so far, and where its links go.
struct Links {
    prev: String,
    prev_time: i64,
    seq: u64,
    publisher: Publisher,
    confirm_tx: mpsc::Sender<Pending>,
}

impl Links {
    /// Chains `r` to the last link and publishes it.
    async fn write(&mut self, mut r: AuditRecord) {
        self.seq += 1;
        r.seq = self.seq;
        r.prev_hash = std::mem::take(&mut self.prev);
        r.prev_time_us = self.prev_time;
        let body = r.seal();
        self.prev_time = r.time_us;
        let mut pending = Pending {
            seq: self.seq,
            hash: r.hash.clone(),
            time_us: r.time_us,
            body: body.into(),
            due: Due::Ack(tokio::time::Instant::now() + ACK_WAIT),
            delay: FIRST_RETRY,
        };
        self.prev = std::mem::take(&mut r.hash);
        if !self.publisher.publish(&pending).await {
            pending.due = Due::Publish(tokio::time::Instant::now() + FIRST_RETRY);
        }
        let _ = self.confirm_tx.send(pending).await;
    }
}

/// Records published but not yet confirmed at once.
const MAX_UNCONFIRMED: usize = 4096;

/// How long a record's acknowledgement is awaited before it is published again (what
/// `send_publish` waits by default).
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The first wait before an unconfirmed record is published again; it doubles up to
/// [`MAX_RETRY`].
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A record on its way to `KH_AUDIT`. Published without `Nats-Msg-Id`: deduplication would
/// cost nats-server an id per record kept for the whole duplicate window, while a record stored
/// twice is harmless — readers and `verify` drop identical repeats.
struct Pending {
    /// Position in the actor's chain.
    seq: u64,
    /// The record's hash and time (for the anchored head).
    hash: String,
    time_us: i64,
    body: bytes::Bytes,
    /// What it waits for next.
    due: Due,
    /// The wait before the next publish once this one is not confirmed.
    delay: std::time::Duration,
}

/// What an unconfirmed record waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Its acknowledgement, until then (then it is published again).
    Ack(tokio::time::Instant),
    /// Being published again, then.
    Publish(tokio::time::Instant),
}

/// Publishes records with the reply subject `<inbox>.<seq>`.
#[derive(Clone)]
struct Publisher {
    client: async_nats::Client,
    inbox: String,
}

impl Publisher {
    /// Publishes `p`; false when the client did not take it.
    async fn publish(&self, p: &Pending) -> bool {
        let reply = format!("{}.{}", self.inbox, p.seq);
        self.client.publish_with_reply(subjects::AUDIT_RECORDS, reply, p.body.clone()).await.is_ok()
    }
}

/// Takes confirmations off the acknowledgement subscription and republishes what was not
/// confirmed in time or was refused, with backoff, until it is (a record stored twice is
/// dropped by readers; see [`drop_repeats`](super::drop_repeats)). Stored records move the
/// chain's head, which the anchor task (never awaited here) puts aside.
async fn confirm_loop(
    publisher: Publisher,
    mut acks: async_nats::Subscriber,
    mut rx: mpsc::Receiver<Pending>,
    anchor: Anchor,
) {
    use futures::StreamExt;
    let (head_tx, head_rx) = watch::channel((0, GENESIS.to_string(), 0));
    tokio::spawn(anchor.run(head_rx));
    let mut prefix = StoredPrefix { ahead: BTreeMap::new(), head: head_tx };
    let mut unconfirmed = Unconfirmed::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer_gone = false;
    let mut acks_open = true;
    loop {
        tokio::select! {
            next = rx.recv(), if !writer_gone && unconfirmed.waiting.len() < MAX_UNCONFIRMED => match next {
                Some(p) => {
                    if let Some(done) = unconfirmed.handed_over(p) {
                        prefix.stored(done);
                    }
                }
                None => writer_gone = true,
            },
            msg = acks.next(), if acks_open => match msg {
                Some(msg) => {
                    if let Some(done) = crate::pub_acks::reply_number(&msg).and_then(|seq| unconfirmed.replied(seq, crate::pub_acks::stored_seq(&msg).is_some())) {
                        prefix.stored(done);
                    }
                }
                // The client is closed: nothing will be confirmed any more.
                None => acks_open = false,
            },
            now = tick.tick(), if !unconfirmed.waiting.is_empty() => {
                for p in unconfirmed.due(now) {
                    if !publisher.publish(p).await {
                        p.due = Due::Publish(now + p.delay);
                        p.delay = (p.delay * 2).min(MAX_RETRY);
                    }
                }
            }
        }
        if writer_gone && unconfirmed.waiting.is_empty() {
            return;
        }
    }
}

/// The records handed over by the writer and not yet confirmed.
#[derive(Default)]
struct Unconfirmed {
    waiting: BTreeMap<u64, Pending>,
    /// The highest sequence handed over so far.
    handed: u64,
    /// Sequences confirmed before the writer handed their record over.
    early: std::collections::BTreeSet<u64>,
}

impl Unconfirmed {
    /// Takes `p` over from the writer; its head when it was already confirmed.
    fn handed_over(&mut self, p: Pending) -> Option<Head> {
        self.handed = self.handed.max(p.seq);
        if self.early.remove(&p.seq) {
            return Some((p.seq, p.hash, p.time_us));
        }
        self.waiting.insert(p.seq, p);
        None
    }

    /// Notes a reply for `seq`: its head when it says the record is stored and the record
    /// waited for it. A refusal has the record published again after its backoff.
    fn replied(&mut self, seq: u64, stored: bool) -> Option<Head> {
        if !stored {
            if let Some(p) = self.waiting.get_mut(&seq) {
                if matches!(p.due, Due::Ack(_)) {
                    tracing::warn!(seq, "audit record not confirmed; publishing it again");
                    p.due = Due::Publish(tokio::time::Instant::now() + p.delay);
                    p.delay = (p.delay * 2).min(MAX_RETRY);
                }
            }
            return None;
        }
        if let Some(p) = self.waiting.remove(&seq) {
            return Some((p.seq, p.hash, p.time_us));
        }
        // Not handed over yet (the reply overtook the hand-over); or a repeat's reply.
        if seq > self.handed {
            self.early.insert(seq);
        }
        None
    }

    /// The records to publish again at `now` (their acknowledgement now awaited): those whose
    /// backoff ended; those whose acknowledgement did not come in time start their backoff.
    fn due(&mut self, now: tokio::time::Instant) -> Vec<&mut Pending> {
        let mut again = Vec::new();
        for p in self.waiting.values_mut() {
            match p.due {
                Due::Ack(until) if until <= now => {
                    tracing::warn!(seq = p.seq, "audit record not confirmed; publishing it again");
                    p.due = Due::Publish(now + p.delay);
                    p.delay = (p.delay * 2).min(MAX_RETRY);
                }
                Due::Publish(at) if at <= now => {
                    p.due = Due::Ack(now + ACK_WAIT);
                    again.push(p);
                }
                _ => {}
            }
        }
        again
    }
}

/// A record's (sequence, hash, time).
type Head = (u64, String, i64);

/// The chain as far as it is stored without gaps. Records are confirmed out of order; only the
/// contiguous stored prefix may be anchored, or a crash could leave a head naming a record that
/// never arrived.
struct StoredPrefix {
    /// Stored records beyond the prefix, waiting for the gap before them to fill.
    ahead: BTreeMap<u64, (String, i64)>,
    /// Its last record (sequence 0: none yet), where the anchor task reads it.
    head: watch::Sender<Head>,
}

impl StoredPrefix {
    /// Notes that record `seq` (with its hash and time) is stored.
    fn stored(&mut self, (seq, hash, time_us): Head) {
        self.ahead.insert(seq, (hash, time_us));
        let ahead = &mut self.ahead;
        // Wakes the anchor task only when the prefix grew.
        self.head.send_if_modified(|head| {
            let before = head.0;
            while let Some((hash, time_us)) = ahead.remove(&(head.0 + 1)) {
                *head = (head.0 + 1, hash, time_us);
            }
            head.0 != before
        });
    }
}

/// Anchoring of one chain's head in `KH_CONFIG`, on its own task so that a slow bucket never
/// holds up the records.
pub(super) struct Anchor {
    heads: kv::Store,
    key: String,
    actor: String,
    chain: String,
    every: std::time::Duration,
    /// When the anchored head last matched the stored prefix (Unix µs), for metrics.
    current_at: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Anchor {
    /// Anchoring of `actor`'s chain `chain` in `heads`, every `every`.
    pub(super) fn new(
        heads: kv::Store,
        actor: String,
        chain: String,
        every: std::time::Duration,
        current_at: std::sync::Arc<std::sync::atomic::AtomicI64>,
    ) -> Self {
        let key = head_key(&chain_name(&actor, &chain));
        let every = every.max(std::time::Duration::from_millis(10));
        Self { heads, key, actor, chain, every, current_at }
    }

    /// Puts the head whenever it moved, every `every`; once the writer is gone, puts the last.
    async fn run(self, mut head: watch::Receiver<Head>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut anchored = 0;
        loop {
            tick.tick().await;
            let writer_gone = head.has_changed().is_err();
            let (seq, hash, time_us) = head.borrow_and_update().clone();
            if seq != anchored && self.put(seq, hash, time_us).await {
                anchored = seq;
            }
            // Current when nothing stored is left unanchored (an idle chain stays current).
            if seq == anchored {
                self.current_at.store(now_us(), std::sync::atomic::Ordering::Relaxed);
            }
            if writer_gone {
                return;
            }
        }
    }

    /// Puts one head; false (and a warning) when the bucket did not take it.
    async fn put(&self, seq: u64, hash: String, record_time_us: i64) -> bool {
        let head = ChainHead {
            actor: self.actor.clone(),
            chain: self.chain.clone(),
            seq,
            hash,
            record_time_us,
            time_us: now_us(),
        };
        let Ok(bytes) = serde_json::to_vec(&head) else { return false };
        match self.heads.put(&self.key, bytes.into()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "audit chain head not anchored; retrying");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64, due: Due) -> Pending {
        Pending {
            seq,
            hash: format!("h{seq}"),
            time_us: seq as i64,
            body: bytes::Bytes::from_static(b"{}"),
            due,
            delay: FIRST_RETRY,
        }
    }

    #[test]
    fn a_confirmation_counts_whether_it_overtakes_the_hand_over_or_not_and_a_repeat_is_ignored() {
        let later = tokio::time::Instant::now() + ACK_WAIT;
        let mut u = Unconfirmed::default();
        assert_eq!(u.handed_over(pending(1, Due::Ack(later))), None);
        assert_eq!(u.replied(1, true), Some((1, "h1".into(), 1)));
        // The reply to seq 2 overtakes its hand-over.
        assert_eq!(u.replied(2, true), None);
        assert_eq!(u.handed_over(pending(2, Due::Ack(later))), Some((2, "h2".into(), 2)));
        // A repeat's reply for what is already confirmed leaves nothing behind.
        assert_eq!(u.replied(1, true), None);
        assert_eq!(u.replied(2, true), None);
        assert!(u.waiting.is_empty() && u.early.is_empty());
    }

    #[test]
    fn refused_or_unanswered_records_are_published_again_after_a_doubling_backoff() {
        let now = tokio::time::Instant::now();
        let mut u = Unconfirmed::default();
        u.handed_over(pending(1, Due::Ack(now + ACK_WAIT)));
        u.handed_over(pending(2, Due::Ack(now + ACK_WAIT)));
        u.handed_over(pending(3, Due::Publish(now)));
        // Refused: published again once its backoff ends, not before.
        assert_eq!(u.replied(1, false), None);
        let again: Vec<u64> = u.due(now).into_iter().map(|p| p.seq).collect();
        assert_eq!(again, [3], "only the record whose publish failed is due now");
        let again: Vec<u64> =
            u.due(tokio::time::Instant::now() + FIRST_RETRY).into_iter().map(|p| p.seq).collect();
        assert_eq!(again, [1]);
        assert_eq!(u.waiting[&1].delay, FIRST_RETRY * 2);
        // Unanswered past the wait: backoff first, then published again.
        let late = now + ACK_WAIT + std::time::Duration::from_millis(1);
        let again: Vec<u64> = u.due(late).into_iter().map(|p| p.seq).collect();
        assert!(!again.contains(&2));
        assert!(matches!(u.waiting[&2].due, Due::Publish(_)));
        let again: Vec<u64> = u.due(late + FIRST_RETRY).into_iter().map(|p| p.seq).collect();
        assert!(again.contains(&2));
        assert_eq!(u.replied(2, true), Some((2, "h2".into(), 2)));
    }
}
