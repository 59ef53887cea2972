//! The audit task: chains records, publishes them pipelined, republishes what is not
//! confirmed, and anchors the chain's head.

use super::{chain_name, head_key, now_us, AuditRecord, ChainHead, GENESIS};
use async_nats::jetstream::{self, kv};
use tokio::sync::mpsc;

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
            subject: crate::subjects::audit(&r.event_id),
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
/// until it is (a record stored twice is dropped by readers; see [`drop_repeats`]).
async fn confirm_loop(js: jetstream::Context, mut rx: mpsc::Receiver<Pending>, mut anchor: Anchor) {
    use futures::stream::{FuturesUnordered, StreamExt};
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
    let mut tick = tokio::time::interval(anchor.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = rx.recv(), if waiting.len() < MAX_UNCONFIRMED => match next {
                Some(p) => waiting.push(settle(js.clone(), p)),
                None => break,
            },
            Some(done) = waiting.next(), if !waiting.is_empty() => anchor.stored(done),
            _ = tick.tick() => anchor.put().await,
        }
    }
    while let Some(done) = waiting.next().await {
        anchor.stored(done);
    }
    anchor.put().await;
}

/// The chain's head as far as it is stored without gaps, and its anchoring in `KH_CONFIG`.
/// Records are confirmed out of order; only the contiguous stored prefix may be anchored, or a
/// crash could leave a head naming a record that never arrived.
pub(super) struct Anchor {
    heads: kv::Store,
    key: String,
    actor: String,
    chain: String,
    every: std::time::Duration,
    /// Last record of the contiguous stored prefix (0: none yet), its hash and time.
    seq: u64,
    hash: String,
    time_us: i64,
    /// Stored records beyond the prefix, waiting for the gap before them to fill.
    ahead: std::collections::BTreeMap<u64, (String, i64)>,
    /// The sequence last anchored.
    anchored: u64,
}

impl Anchor {
    /// Anchoring of `actor`'s chain `chain` in `heads`, every `every`.
    pub(super) fn new(heads: kv::Store, actor: String, chain: String, every: std::time::Duration) -> Self {
        let key = head_key(&chain_name(&actor, &chain));
        let (hash, every) = (GENESIS.to_string(), every.max(std::time::Duration::from_millis(10)));
        let ahead = Default::default();
        Self { heads, key, actor, chain, every, seq: 0, hash, time_us: 0, ahead, anchored: 0 }
    }

    /// Notes that record `seq` (with its hash and time) is stored.
    fn stored(&mut self, (seq, hash, time_us): (u64, String, i64)) {
        self.ahead.insert(seq, (hash, time_us));
        while let Some((hash, time_us)) = self.ahead.remove(&(self.seq + 1)) {
            self.seq += 1;
            self.hash = hash;
            self.time_us = time_us;
        }
    }

    /// Anchors the head when it moved (a failure is retried at the next tick).
    async fn put(&mut self) {
        if self.seq == self.anchored {
            return;
        }
        let head = ChainHead {
            actor: self.actor.clone(),
            chain: self.chain.clone(),
            seq: self.seq,
            hash: self.hash.clone(),
            record_time_us: self.time_us,
            time_us: now_us(),
        };
        let Ok(bytes) = serde_json::to_vec(&head) else { return };
        match self.heads.put(&self.key, bytes.into()).await {
            Ok(_) => self.anchored = self.seq,
            Err(e) => tracing::warn!(error = %e, "audit chain head not anchored; retrying"),
        }
    }
}
