//! The audit trail: every hop of every event appends a flow record to `KH_AUDIT`, all under
//! one subject ([`kakehashi_proto::subjects::AUDIT_RECORDS`]). The hops a process finds queued
//! together go into one batch record; an event's records are found through the registry's trace
//! index, which maps event ids to stream sequences ([`AuditRecord::into_hops`] unpacks a batch).
//! The records one process writes form a hash chain — each carries its sequence number in the
//! chain and the hash of its predecessor — and the chain's head is anchored in `KH_CONFIG`
//! (keys [`HEAD_PREFIX`]`<chain>`, read back by `kakehashi audit verify`), so a deleted or
//! altered record, the newest included, is detectable ([`verify`]); a batch record is one link,
//! its hash covering all its hops.
//!
//! Writing never blocks the hot path: records go through a bounded channel to one task per
//! process, which chains and publishes them pipelined. Records never hold payload data.

mod heads;
mod verify;
mod writer;

pub use heads::{head_key, ChainHead, HEAD_PREFIX};
pub use verify::{drop_repeats, verify, verify_trail, BrokenLink, Trail};

use crate::topology::TopologyConfig;
use async_nats::jetstream::{self, kv};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// One hop of one event, or a batch of hops: one link of an actor's chain. Stored in
/// `KH_AUDIT` as the protobuf message `kakehashi.v1.AuditRecord` (`proto/kakehashi/v1/audit.proto`,
/// same tags); serde gives its JSON for people and for records written before that.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Hash, prost::Message)]
pub struct AuditRecord {
    /// Event id.
    #[prost(string, tag = "1")]
    pub event_id: String,
    /// published, validated, dead_lettered, delivered, acked, nacked, delivery_exhausted, withheld.
    #[prost(string, tag = "2")]
    pub hop: String,
    /// The process that did it.
    #[prost(string, tag = "3")]
    pub actor: String,
    /// Which of the actor's chains (the writer's start, Unix µs): a process restarted under the
    /// same name starts a new chain instead of appearing to forge the old one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "4")]
    pub chain: String,
    /// Position in the actor's chain, from 1.
    #[prost(uint64, tag = "5")]
    pub seq: u64,
    /// Unix time in microseconds.
    #[prost(int64, tag = "6")]
    pub time_us: i64,
    /// ok | rejected | error.
    #[prost(string, tag = "7")]
    pub outcome: String,
    /// Reason code or short detail (never payload values).
    #[prost(string, tag = "8")]
    pub detail: String,
    /// W3C trace id, when the event carries trace context.
    #[prost(string, tag = "9")]
    pub trace_id: String,
    /// Department concerned: the publisher, or the reader for delivery hops.
    #[prost(string, tag = "10")]
    pub department: String,
    /// Event type.
    #[prost(string, tag = "11")]
    pub event_type: String,
    /// Subscription, for delivery hops.
    #[prost(string, tag = "12")]
    pub subscription: String,
    /// Schema version validated against.
    #[prost(uint32, tag = "13")]
    pub schema_version: u32,
    /// Where the event is stored in `KH_EVENTS` (0: not stored there, or not known to the hop).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    #[prost(uint64, tag = "14")]
    pub events_seq: u64,
    /// The hops of a batch record (empty for a record of one hop, whose fields above describe
    /// it): one link of the chain for many hops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[prost(message, repeated, tag = "16")]
    pub hops: Vec<BatchedHop>,
    /// Time of the actor's previous record (absent for the first): when it is older than the
    /// audit retention, a chain that starts here lost its beginning to expiry, not to deletion.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[prost(int64, tag = "17")]
    pub prev_time_us: i64,
    /// Hash of the actor's previous record (`genesis` for the first).
    #[prost(string, tag = "18")]
    pub prev_hash: String,
    /// SHA-256 over this record with `hash` empty, hex.
    #[prost(string, tag = "19")]
    pub hash: String,
}

impl AuditRecord {
    /// A record of `hop` for `event` with `outcome`; the caller adds what else applies.
    pub fn hop(event: &kakehashi_proto::v1::Event, hop: &str, outcome: &str) -> Self {
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

    /// The hops this stored record holds, each as a record of its own carrying the link's
    /// chain fields (actor, chain, seq, hashes): the record itself unless it is a batch.
    pub fn into_hops(mut self) -> Vec<AuditRecord> {
        if self.hops.is_empty() {
            return vec![self];
        }
        let hops = std::mem::take(&mut self.hops);
        hops.into_iter()
            .map(|h| AuditRecord {
                event_id: h.event_id,
                hop: h.hop,
                time_us: h.time_us,
                outcome: h.outcome,
                detail: h.detail,
                trace_id: h.trace_id,
                department: h.department,
                event_type: h.event_type,
                subscription: h.subscription,
                schema_version: h.schema_version,
                events_seq: h.events_seq,
                ..self.clone()
            })
            .collect()
    }

    /// The hash this record should carry: SHA-256 of its stored encoding with `hash` empty.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.seal();
        unhashed.hash
    }

    /// Whether the record's content hashes to its `hash`: in the stored encoding, or, for a
    /// record written before that encoding, in the JSON it was written in (a forgery can match
    /// neither without a new hash, which the next link's `prev_hash` then contradicts).
    pub fn is_intact(&self) -> bool {
        self.hash == self.compute_hash() || self.hash == self.legacy_json_hash()
    }

    /// The hash a record written as JSON (before 2026-12-03) carries: SHA-256 of its JSON with
    /// `hash` empty.
    fn legacy_json_hash(&self) -> String {
        let unhashed = Self { hash: String::new(), ..self.clone() };
        serde_json::to_vec(&unhashed).map(|json| hex::encode(Sha256::digest(json))).unwrap_or_default()
    }

    /// Sets `hash` (SHA-256 of the record's protobuf encoding with `hash` empty) and returns the
    /// encoding of the hashed record, encoding it once: this runs for every record on the hot path.
    pub fn seal(&mut self) -> Vec<u8> {
        self.hash.clear();
        // Sized for the record with its hash field, so that it is written without reallocating.
        let mut body = Vec::with_capacity(self.encoded_len() + HASH_FIELD_LEN);
        // prost writes fields in tag order and leaves out empty ones: a stable encoding.
        self.encode_raw(&mut body);
        self.hash = hex::encode(Sha256::digest(&body));
        // `hash` has the highest tag, so appending it gives the very bytes encoding the hashed
        // record would.
        prost::encoding::string::encode(HASH_TAG, &self.hash, &mut body);
        body
    }

    /// Reads a record as stored in `KH_AUDIT`: protobuf, or JSON for records written before
    /// 2026-12-03 (a JSON record starts with `{`, which no protobuf record does).
    pub fn from_stored(payload: &[u8]) -> Result<Self, StoredRecordError> {
        if is_json_record(payload) {
            serde_json::from_slice(payload).map_err(StoredRecordError::Json)
        } else {
            <Self as prost::Message>::decode(payload).map_err(StoredRecordError::Protobuf)
        }
    }
}

/// Whether a stored record is one written as JSON (before 2026-12-03): it starts with `{`, which
/// no protobuf record can (field 15, whose tag byte that would be, is reserved).
pub fn is_json_record(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
}

/// Why a stored audit record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredRecordError {
    /// A record written as JSON that does not parse.
    #[error("audit record (JSON) unreadable: {0}")]
    Json(serde_json::Error),
    /// A protobuf record that does not decode.
    #[error("audit record (protobuf) unreadable: {0}")]
    Protobuf(prost::DecodeError),
}

/// The tag of [`AuditRecord::hash`], the highest (`proto/kakehashi/v1/audit.proto`).
const HASH_TAG: u32 = 19;

/// Bytes of the `hash` field: tag (2), length (1), 64 hex digits.
const HASH_FIELD_LEN: usize = 67;

/// The trace id (32 hex digits) of a W3C `traceparent`, or "" when it is not a valid one.
pub fn trace_id_of(traceparent: Option<&String>) -> String {
    traceparent
        .and_then(|tp| crate::telemetry::parse_traceparent(tp).ok())
        .map_or_else(String::new, |tp| tp.trace_id().to_string())
}

/// How a chain is named to people and keyed: the actor, and which of its chains.
pub fn chain_name(actor: &str, chain: &str) -> String {
    if chain.is_empty() {
        actor.to_string()
    } else {
        format!("{actor} [{chain}]")
    }
}

fn is_zero(t: &i64) -> bool {
    *t == 0
}

fn is_zero_u64(t: &u64) -> bool {
    *t == 0
}

fn is_zero_u32(t: &u32) -> bool {
    *t == 0
}

/// One hop inside a batch record ([`AuditRecord::hops`]): a record's per-hop fields
/// (`kakehashi.v1.AuditHop`, under the same tags as in the record).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Hash, prost::Message)]
pub struct BatchedHop {
    /// Event id.
    #[prost(string, tag = "1")]
    pub event_id: String,
    /// Any hop but `batch` (see [`AuditRecord::hop`]).
    #[prost(string, tag = "2")]
    pub hop: String,
    /// Unix time in microseconds.
    #[prost(int64, tag = "6")]
    pub time_us: i64,
    /// ok | rejected | error.
    #[prost(string, tag = "7")]
    pub outcome: String,
    /// Reason code or short detail (never payload values).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "8")]
    pub detail: String,
    /// W3C trace id, when the event carries trace context.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "9")]
    pub trace_id: String,
    /// Department concerned: the publisher, or the reader for delivery hops.
    #[prost(string, tag = "10")]
    pub department: String,
    /// Event type.
    #[prost(string, tag = "11")]
    pub event_type: String,
    /// Subscription, for delivery hops.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "12")]
    pub subscription: String,
    /// Schema version the event was validated against.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    #[prost(uint32, tag = "13")]
    pub schema_version: u32,
    /// Where the event is stored in `KH_EVENTS` (0: not stored there, or not known to the hop).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    #[prost(uint64, tag = "14")]
    pub events_seq: u64,
}

impl From<AuditRecord> for BatchedHop {
    fn from(r: AuditRecord) -> Self {
        Self {
            event_id: r.event_id,
            hop: r.hop,
            time_us: r.time_us,
            outcome: r.outcome,
            detail: r.detail,
            trace_id: r.trace_id,
            department: r.department,
            event_type: r.event_type,
            subscription: r.subscription,
            schema_version: r.schema_version,
            events_seq: r.events_seq,
        }
    }
}

/// The `hop` of a batch record ([`AuditRecord::hops`]).
pub const BATCH_HOP: &str = "batch";

/// The first `prev_hash` of every chain.
pub const GENESIS: &str = "genesis";

/// Hands records to the audit task.
#[derive(Clone, Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<AuditRecord>,
    actor: String,
    /// When the anchored head last matched the stored chain (Unix µs; 0 = not yet), for metrics.
    anchored: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl AuditWriter {
    /// Starts the audit task for `actor`, holding at most `topology.audit_queue` records
    /// waiting to be written. The chain's head (last stored record) is anchored in `heads` (the
    /// `KH_CONFIG` bucket) every `topology.audit_anchor_ms`, so deleting the newest records is
    /// detectable too.
    pub fn start(js: jetstream::Context, heads: kv::Store, actor: String, topology: &TopologyConfig) -> Self {
        let (tx, rx) = mpsc::channel(topology.audit_queue.max(1));
        let anchor_every = std::time::Duration::from_millis(topology.audit_anchor_ms);
        let chain = now_us().to_string();
        let anchored = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let anchor = writer::Anchor::new(heads, actor.clone(), chain, anchor_every, anchored.clone());
        let batch_bytes = usize::try_from(topology.max_message_bytes / 2).unwrap_or(0).max(1);
        let batching = writer::Batching {
            hops: topology.audit_batch_hops.max(1),
            bytes: batch_bytes,
            linger: std::time::Duration::from_millis(topology.audit_linger_ms),
        };
        tokio::spawn(writer::write_loop(js, anchor, rx, batching));
        Self { tx, actor, anchored }
    }

    /// Records waiting in the queue to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Records the queue holds at most (`topology.audit_queue`).
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// When the anchored chain head last matched the stored chain, in Unix µs (0 = not yet):
    /// its age is how much of the newest trail could vanish undetected.
    pub fn anchored_at_us(&self) -> i64 {
        self.anchored.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The actor this writer records as.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Appends a record (actor, time, chain fields are filled in); it is written with the other
    /// hops queued at the same time, in one batch record. When the queue is full the record
    /// waits: an audit trail with holes would defeat its purpose.
    pub async fn record(&self, mut r: AuditRecord) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_of_an_invalid_traceparent_is_empty() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string();
        assert_eq!(trace_id_of(Some(&valid)), "4bf92f3577b34da6a3ce929d0e0e4736");
        for invalid in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id_of(Some(&invalid.to_string())), "", "{invalid}");
        }
    }

    #[test]
    fn sealed_body_is_the_hashed_records_encoding_and_the_hash_covers_it_with_hash_empty() {
        let mut r = AuditRecord {
            event_id: "e1".into(),
            hop: "dead_lettered".into(),
            detail: "say \"健康\"\n".into(),
            prev_hash: GENESIS.into(),
            hash: "stale".into(),
            ..Default::default()
        };
        let body = r.seal();
        assert_eq!(body, r.encode_to_vec());
        let unhashed = AuditRecord { hash: String::new(), ..r.clone() };
        let expected = hex::encode(Sha256::digest(unhashed.encode_to_vec()));
        assert_eq!(r.hash, expected);
        assert_eq!(r.compute_hash(), expected);
        assert_eq!(AuditRecord::from_stored(&body).expect("reads back"), r);
        assert!(r.is_intact());
    }

    #[test]
    fn a_record_written_as_json_before_reads_back_and_verifies_and_its_forgery_does_not() {
        // Sealed as the writer did before 2026-12-03: SHA-256 of the JSON with `hash` empty.
        let mut old = AuditRecord {
            event_id: "e1".into(),
            hop: "validated".into(),
            actor: "registry-1".into(),
            seq: 1,
            time_us: 5,
            outcome: "ok".into(),
            prev_hash: GENESIS.into(),
            ..Default::default()
        };
        old.hash = hex::encode(Sha256::digest(serde_json::to_vec(&old).expect("json")));
        let stored = serde_json::to_vec(&old).expect("json");
        let read = AuditRecord::from_stored(&stored).expect("reads back");
        assert_eq!(read, old);
        assert!(read.is_intact());
        assert_ne!(read.compute_hash(), read.hash, "intact by its JSON, not by the protobuf encoding");
        let forged = AuditRecord { outcome: "rejected".into(), ..read };
        assert!(!forged.is_intact());
        assert!(matches!(AuditRecord::from_stored(b"{not json"), Err(StoredRecordError::Json(_))));
        assert!(matches!(AuditRecord::from_stored(&[0x0a, 0x05, b'e']), Err(StoredRecordError::Protobuf(_))));
    }

    #[test]
    fn a_batch_record_is_one_link_whose_hash_covers_every_hop_and_unpacks_into_them() {
        let hop = |id: &str, name: &str| BatchedHop {
            event_id: id.into(),
            hop: name.into(),
            time_us: 7,
            outcome: "ok".into(),
            department: "mhlw".into(),
            event_type: "t".into(),
            subscription: "mhlw.s".into(),
            events_seq: 1025,
            ..Default::default()
        };
        let mut batch = AuditRecord {
            hop: BATCH_HOP.into(),
            actor: "registry-1".into(),
            chain: "c".into(),
            seq: 4,
            events_seq: 1025,
            hops: vec![hop("e1", "delivered"), hop("e2", "acked")],
            prev_hash: GENESIS.into(),
            ..Default::default()
        };
        let body = batch.seal();
        let stored = AuditRecord::from_stored(&body).expect("reads back");
        assert_eq!(stored.compute_hash(), batch.hash);
        let mut forged = stored.clone();
        forged.hops[1].outcome = "rejected".into();
        assert_ne!(forged.compute_hash(), forged.hash, "an altered hop breaks the link's hash");
        let hops = stored.into_hops();
        let got: Vec<(&str, &str, &str, u64)> =
            hops.iter().map(|h| (h.event_id.as_str(), h.hop.as_str(), h.actor.as_str(), h.seq)).collect();
        assert_eq!(got, [("e1", "delivered", "registry-1", 4), ("e2", "acked", "registry-1", 4)]);
        assert!(hops.iter().all(|h| h.hops.is_empty() && h.events_seq == 1025 && h.hash == batch.hash));
        // A record of one hop is its own single hop; old records without the new fields read.
        let single: AuditRecord = serde_json::from_str(r#"{"event_id":"e3","hop":"validated","actor":"a","seq":1,"time_us":1,"outcome":"ok","detail":"","trace_id":"","department":"d","event_type":"t","subscription":"","schema_version":1,"prev_hash":"genesis","hash":""}"#).expect("old record");
        assert_eq!(single.clone().into_hops(), [single]);
    }

    mod contract {
        //! The derived encoding is the contract's: `proto/kakehashi/v1/audit.proto`, as compiled
        //! into `kakehashi_proto`, reads what the writer stores and encodes it to the same bytes.
        use super::super::{AuditRecord, BatchedHop};
        use kakehashi_proto::v1 as pb;
        use proptest::prelude::*;
        use prost::Message;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![Just(String::new()), "[a-z0-9_.-]{1,12}", "\\PC{0,8}"]
        }

        fn hop() -> impl Strategy<Value = BatchedHop> {
            (text(), text(), any::<i64>(), text(), text(), text(), text(), any::<u32>(), any::<u64>())
                .prop_map(
                    |(
                        event_id,
                        hop,
                        time_us,
                        outcome,
                        detail,
                        department,
                        subscription,
                        schema_version,
                        events_seq,
                    )| {
                        BatchedHop {
                            event_id,
                            hop,
                            time_us,
                            outcome,
                            detail,
                            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                            department,
                            event_type: "vaccination.recorded".into(),
                            subscription,
                            schema_version,
                            events_seq,
                        }
                    },
                )
        }

        fn record() -> impl Strategy<Value = AuditRecord> {
            (
                (text(), text(), text(), text(), any::<u64>(), any::<i64>(), text(), text()),
                (any::<u32>(), any::<u64>(), proptest::collection::vec(hop(), 0..4), any::<i64>(), text()),
            )
                .prop_map(
                    |(
                        (event_id, hop, actor, chain, seq, time_us, outcome, detail),
                        (schema_version, events_seq, hops, prev_time_us, prev_hash),
                    )| AuditRecord {
                        event_id,
                        hop,
                        actor,
                        chain,
                        seq,
                        time_us,
                        outcome,
                        detail,
                        department: "city-shibuya".into(),
                        schema_version,
                        events_seq,
                        hops,
                        prev_time_us,
                        prev_hash,
                        ..Default::default()
                    },
                )
        }

        proptest! {
            #[test]
            fn the_proto_file_reads_a_sealed_record_and_encodes_it_to_the_same_bytes(mut r in record()) {
                let stored = r.seal();
                prop_assert_ne!(stored.first(), Some(&b'{'), "told apart from JSON by its first byte");
                let theirs = pb::AuditRecord::decode(stored.as_slice()).expect("the contract reads it");
                prop_assert_eq!(&theirs.hash, &r.hash);
                prop_assert_eq!(&theirs.actor, &r.actor);
                prop_assert_eq!(theirs.seq, r.seq);
                prop_assert_eq!(theirs.hops.len(), r.hops.len());
                for (t, o) in theirs.hops.iter().zip(&r.hops) {
                    prop_assert_eq!((&t.event_id, &t.hop, t.time_us, &t.detail, t.events_seq), (&o.event_id, &o.hop, o.time_us, &o.detail, o.events_seq));
                }
                prop_assert_eq!(theirs.encode_to_vec(), stored.clone());
                let back = AuditRecord::from_stored(&theirs.encode_to_vec()).expect("reads back");
                prop_assert!(back.is_intact());
                prop_assert_eq!(back, r);
            }
        }
    }
}
