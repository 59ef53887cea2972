//! The audit task: chains records, publishes them pipelined, republishes what is not
//! confirmed, and anchors the chain's head.

use super::{chain_name, head_key, now_us, AuditRecord, ChainHead, GENESIS};
use async_nats::jetstream::{self, kv};
use std::collections::BTreeMap;
use tokio::sync::{mpsc, watch};

/// Chains and publishes the records arriving on `rx`, for as long as writers exist.
pub(super) async fn write_loop(js: jetstream::Context, anchor: Anchor, mut rx: mpsc::Receiver<AuditRecord>) {
    let mut prev = GENESIS.to_string();
    let mut prev_time = 0i64;
    let mut seq = 0u64;
    // Confirmations are awaited concurrently, apart from publishing: after an outage many time
    // out at once rather than one after another, so the queue (and the hot path) never stalls
    // on them. An unconfirmed record is published again (a stored repeat is harmless).
    let (confirm_tx, confirm_rx) = mpsc::channel::<Pending>(MAX_UNCONFIRMED);
    tokio::spawn(confirm_loop(js.clone(), confirm_rx, anchor));
    while let Some(mut r) = rx.recv().await {
        seq += 1;
        r.seq = seq;
        r.prev_hash = std::mem::take(&mut prev);
        r.prev_time_us = prev_time;
        let Ok(body) = r.seal() else { continue };
        prev = r.hash.clone();
        prev_time = r.time_us;
        let pending = Pending {
            subject: kakehashi_proto::subjects::audit(&r.event_id),
            seq,
            hash: r.hash.clone(),
            time_us: r.time_us,
            body: body.into(),
            confirmation: None,
        };
        let confirmation = publish(&js, &pending).await;
        let _ = confirm_tx.send(Pending { confirmation, ..pending }).await;
    }
}

/// Records published but not yet confirmed at once.
const MAX_UNCONFIRMED: usize = 4096;

/// A record on its way to `KH_AUDIT`. Published without `Nats-Msg-Id`: deduplication would
/// cost nats-server an id per record kept for the whole duplicate window, while a record stored
/// twice is harmless — readers and `verify` drop identical repeats.
struct Pending {
    subject: String,
    /// Position in the actor's chain.
    seq: u64,
    /// The record's hash and time (for the anchored head).
    hash: String,
    time_us: i64,
    body: bytes::Bytes,
    confirmation: Option<jetstream::context::PublishAckFuture>,
}

async fn publish(js: &jetstream::Context, p: &Pending) -> Option<jetstream::context::PublishAckFuture> {
    let msg = jetstream::message::PublishMessage::build().payload(p.body.clone());
    js.send_publish(p.subject.clone(), msg).await.ok()
}

/// Awaits confirmations concurrently and republishes what was not confirmed, with backoff,
/// until it is (a record stored twice is dropped by readers; see [`drop_repeats`]). Stored
/// records move the chain's head, which the anchor task (never awaited here) puts aside.
async fn confirm_loop(js: jetstream::Context, mut rx: mpsc::Receiver<Pending>, anchor: Anchor) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let (head_tx, head_rx) = watch::channel((0, GENESIS.to_string(), 0));
    tokio::spawn(anchor.run(head_rx));
    let mut prefix = StoredPrefix { ahead: BTreeMap::new(), head: head_tx };
    let mut waiting = FuturesUnordered::new();
    let settle = |js: jetstream::Context, mut p: Pending| async move {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let confirmed = match p.confirmation.take() {
                Some(f) => f.await.is_ok(),
                None => false,
            };
            if confirmed {
                return (p.seq, p.hash, p.time_us);
            }
            tracing::warn!(seq = p.seq, "audit record not confirmed; publishing it again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
            p.confirmation = publish(&js, &p).await;
        }
    };
    loop {
        tokio::select! {
            next = rx.recv(), if waiting.len() < MAX_UNCONFIRMED => match next {
                Some(p) => waiting.push(settle(js.clone(), p)),
                None => break,
            },
            Some(done) = waiting.next(), if !waiting.is_empty() => prefix.stored(done),
        }
    }
    while let Some(done) = waiting.next().await {
        prefix.stored(done);
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
