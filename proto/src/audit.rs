//! The audit trail: every hop of every event appends a flow record to `KH_AUDIT` under
//! `kh.audit.<event id>`. The records of one actor (one process) form a hash chain — each
//! carries its sequence number within the actor and the hash of its predecessor — so a deleted
//! or altered record is detectable ([`verify`]).
//!
//! Writing never blocks the hot path: records go through a bounded channel to one task per
//! process, which chains and publishes them pipelined. Records never hold payload data.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// One hop of one event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
pub struct AuditRecord {
    /// Event id.
    pub event_id: String,
    /// published, validated, dead_lettered, delivered, acked, nacked, delivery_exhausted, withheld.
    pub hop: String,
    /// The process that did it.
    pub actor: String,
    /// Position in the actor's chain, from 1.
    pub seq: u64,
    /// Unix time in microseconds.
    pub time_us: i64,
    /// ok | rejected | error.
    pub outcome: String,
    /// Reason code or short detail (never payload values).
    pub detail: String,
    /// W3C trace id, when the event carries trace context.
    pub trace_id: String,
    /// Department concerned: the publisher, or the reader for delivery hops.
    pub department: String,
    /// Event type.
    pub event_type: String,
    /// Subscription, for delivery hops.
    pub subscription: String,
    /// Schema version validated against.
    pub schema_version: u32,
    /// Hash of the actor's previous record (`genesis` for the first).
    pub prev_hash: String,
    /// SHA-256 over this record with `hash` empty, hex.
    pub hash: String,
}

impl AuditRecord {
    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.seal().map(|_| unhashed.hash).unwrap_or_default()
    }

    /// Sets `hash` (SHA-256 of the record's JSON with `hash` empty) and returns the JSON of the
    /// hashed record, serialising it once: this runs for every record on the hot path.
    pub fn seal(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        self.hash.clear();
        // serde_json writes struct fields in declaration order: a stable encoding.
        let mut body = serde_json::to_vec(&*self)?;
        self.hash = hex::encode(Sha256::digest(&body));
        // `hash` is the last field, so `…,"hash":""}` becomes `…,"hash":"<hex>"}`: the very
        // bytes serialising the hashed record would give (hex needs no escaping).
        if body.ends_with(br#""hash":""}"#) {
            body.truncate(body.len() - 2);
            body.extend_from_slice(self.hash.as_bytes());
            body.extend_from_slice(br#""}"#);
            Ok(body)
        } else {
            serde_json::to_vec(&*self)
        }
    }
}

/// The trace id (32 hex digits) of a W3C `traceparent`, or "" when it is not one.
pub fn trace_id_of(traceparent: Option<&String>) -> String {
    traceparent
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .unwrap_or_default()
}

impl AuditRecord {
    /// A record of `hop` for `event` with `outcome`; the caller adds what else applies.
    pub fn hop(event: &crate::v1::Event, hop: &str, outcome: &str) -> Self {
        Self {
            event_id: event.id.clone(),
            hop: hop.to_string(),
            outcome: outcome.to_string(),
            trace_id: trace_id_of(event.extensions.get("traceparent")),
            department: event.source.clone(),
            event_type: event.r#type.clone(),
            // The moment of the act, not of the (later, queued) write: a validated record is
            // written after its event is stored, when delivery may already have recorded a hop.
            time_us: now_us(),
            ..Default::default()
        }
    }
}

/// The first `prev_hash` of every chain.
pub const GENESIS: &str = "genesis";

/// Hands records to the audit task.
#[derive(Clone, Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<AuditRecord>,
    actor: String,
}

impl AuditWriter {
    /// Starts the audit task for `actor`; `capacity` bounds the records waiting to be written.
    pub fn start(js: jetstream::Context, actor: String, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(write_loop(js, rx));
        Self { tx, actor }
    }

    /// The actor this writer records as.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Appends a record (actor, time, chain fields are filled in). When the queue is full the
    /// record waits: an audit trail with holes would defeat its purpose.
    pub async fn record(&self, mut r: AuditRecord) {
        r.actor = self.actor.clone();
        if r.time_us == 0 {
            r.time_us = now_us();
        }
        if self.tx.send(r).await.is_err() {
            tracing::warn!("audit task stopped; record dropped");
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn write_loop(js: jetstream::Context, mut rx: mpsc::Receiver<AuditRecord>) {
    let mut prev = GENESIS.to_string();
    let mut seq = 0u64;
    // Confirmations are awaited concurrently, apart from publishing: after an outage many time
    // out at once rather than one after another, so the queue (and the hot path) never stalls
    // on them. An unconfirmed record is published again (a stored repeat is harmless).
    let (confirm_tx, confirm_rx) = mpsc::channel::<Pending>(MAX_UNCONFIRMED);
    tokio::spawn(confirm_loop(js.clone(), confirm_rx));
    while let Some(mut r) = rx.recv().await {
        seq += 1;
        r.seq = seq;
        r.prev_hash = std::mem::take(&mut prev);
        let Ok(body) = r.seal() else { continue };
        prev = r.hash.clone();
        let pending =
            Pending { subject: crate::subjects::audit(&r.event_id), seq, body: body.into(), confirmation: None };
        let confirmation = publish(&js, &pending).await;
        let _ = confirm_tx.send(Pending { confirmation, ..pending }).await;
    }
}

/// Records published but not yet confirmed at once.
const MAX_UNCONFIRMED: usize = 4096;

/// A record on its way to `KH_AUDIT`. Published without `Nats-Msg-Id`: deduplication would
/// cost nats-server an id per record kept for the whole duplicate window (and ~30 % more CPU per
/// record, measured in the hot-path bench), while a record stored twice is harmless — readers
/// and `verify` drop identical repeats.
struct Pending {
    subject: String,
    /// Position in the actor's chain (for logs).
    seq: u64,
    body: bytes::Bytes,
    confirmation: Option<jetstream::context::PublishAckFuture>,
}

async fn publish(js: &jetstream::Context, p: &Pending) -> Option<jetstream::context::PublishAckFuture> {
    let msg = jetstream::message::PublishMessage::build().payload(p.body.clone());
    js.send_publish(p.subject.clone(), msg).await.ok()
}

/// Awaits confirmations concurrently and republishes what was not confirmed, with backoff,
/// until it is (a record stored twice is dropped by readers; see [`drop_repeats`]).
async fn confirm_loop(js: jetstream::Context, mut rx: mpsc::Receiver<Pending>) {
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
                return;
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
            Some(()) = waiting.next(), if !waiting.is_empty() => {}
        }
    }
    while waiting.next().await.is_some() {}
}

/// A broken link found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Actor whose chain is broken.
    pub actor: String,
    /// Sequence number of the first record that does not check out.
    pub seq: u64,
    /// Stream sequence of that record in `KH_AUDIT`, when it exists.
    pub stream_seq: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

/// Checks every actor's chain; returns the first broken link of each broken chain.
/// `records` are (KH_AUDIT stream sequence, record).
pub fn verify(records: &[(u64, AuditRecord)]) -> Vec<BrokenLink> {
    let mut by_actor: BTreeMap<&str, Vec<&(u64, AuditRecord)>> = BTreeMap::new();
    for r in records {
        by_actor.entry(r.1.actor.as_str()).or_default().push(r);
    }
    let mut broken = Vec::new();
    for (actor, mut chain) in by_actor {
        chain.sort_by_key(|(_, r)| r.seq);
        let mut prev: Option<&AuditRecord> = None;
        for (stream_seq, r) in chain {
            let expected_seq = prev.map_or(1, |p| p.seq + 1);
            // A record published again after a lost confirmation is stored twice, byte for byte.
            if prev == Some(r) {
                continue;
            }
            let problem = if prev.is_some_and(|p| p.seq == r.seq) {
                Some(format!("a second, different record {} (forged)", r.seq))
            } else if r.seq != expected_seq {
                Some(format!("record {expected_seq} is missing (next present is {})", r.seq))
            } else if r.hash != r.compute_hash() {
                Some("content does not match its hash (altered)".to_string())
            } else if r.prev_hash != prev.map_or(GENESIS, |p| p.hash.as_str()) {
                Some("does not link to its predecessor's hash".to_string())
            } else {
                None
            };
            if let Some(problem) = problem {
                let at_missing = r.seq != expected_seq && prev.is_none_or(|p| p.seq != r.seq);
                broken.push(BrokenLink {
                    actor: actor.to_string(),
                    seq: if at_missing { expected_seq } else { r.seq },
                    stream_seq: (!at_missing).then_some(*stream_seq),
                    problem,
                });
                break;
            }
            prev = Some(r);
        }
    }
    broken
}

/// Drops repeated copies of a record (same actor, sequence and content) from records read
/// back: the writer publishes a record again when its confirmation is lost, without a
/// `Nats-Msg-Id`, so a record may be stored twice. Differing records are all kept.
pub fn drop_repeats(records: &mut Vec<(u64, AuditRecord)>) {
    let mut seen = std::collections::HashSet::new();
    records.retain(|(_, r)| seen.insert(r.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<(u64, AuditRecord)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    event_id: format!("e{seq}"),
                    hop: "validated".into(),
                    actor: "a".into(),
                    seq,
                    prev_hash: prev.clone(),
                    ..Default::default()
                };
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                (seq + 100, r)
            })
            .collect()
    }

    #[test]
    fn sealed_body_is_the_hashed_records_json_and_the_hash_covers_it_with_hash_empty() {
        let mut r = AuditRecord {
            event_id: "e1".into(),
            hop: "dead_lettered".into(),
            detail: "say \"健康\"\n".into(),
            prev_hash: GENESIS.into(),
            hash: "stale".into(),
            ..Default::default()
        };
        let body = r.seal().expect("serialises");
        assert_eq!(body, serde_json::to_vec(&r).expect("serialises"));
        let unhashed = AuditRecord { hash: String::new(), ..r.clone() };
        let expected = hex::encode(Sha256::digest(serde_json::to_vec(&unhashed).expect("serialises")));
        assert_eq!(r.hash, expected);
        assert_eq!(r.compute_hash(), expected);
    }

    #[test]
    fn intact_chain_verifies() {
        assert!(verify(&chain(5)).is_empty());
    }

    #[test]
    fn a_record_stored_twice_is_one_link_and_is_read_back_once() {
        let mut c = chain(5);
        let again = (200, c[2].1.clone());
        c.push(again);
        assert!(verify(&c).is_empty(), "{:?}", verify(&c));
        drop_repeats(&mut c);
        assert_eq!(c.len(), 5);
    }

    #[test]
    fn a_second_different_record_under_one_sequence_is_named() {
        let mut c = chain(5);
        let mut forged = c[2].1.clone();
        forged.outcome = "error".into();
        forged.hash = forged.compute_hash();
        c.push((200, forged));
        let b = verify(&c);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].seq, b[0].stream_seq), (3, Some(200)));
        assert!(b[0].problem.contains("second, different"), "{}", b[0].problem);
        drop_repeats(&mut c);
        assert_eq!(c.len(), 6, "differing records are all kept");
    }

    #[test]
    fn altered_record_is_named() {
        let mut c = chain(5);
        c[2].1.outcome = "ok-but-forged".into();
        let b = verify(&c);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].seq, b[0].stream_seq), (3, Some(103)));
        assert!(b[0].problem.contains("altered"));
    }

    #[test]
    fn deleted_record_is_named() {
        let mut c = chain(5);
        c.remove(1);
        let b = verify(&c);
        assert_eq!((b[0].seq, b[0].stream_seq), (2, None));
        assert!(b[0].problem.contains("missing"));
    }

    #[test]
    fn rehashed_forgery_breaks_the_next_link() {
        let mut c = chain(5);
        c[1].1.outcome = "forged".into();
        c[1].1.hash = c[1].1.compute_hash();
        let b = verify(&c);
        assert_eq!(b[0].seq, 3, "the successor no longer links to the forged record");
    }
}
