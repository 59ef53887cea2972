//! Feeds the trace index: an ordered consumer over all of `KH_AUDIT`, from the record after the
//! last one indexed, in batches of what has arrived; drops the tables of expired days.

use super::store::{event_key, Indexed, Store, BUILD};
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use kakehashi_proto::subjects;
use prost::Message;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Most records indexed in one transaction.
const BATCH: usize = 1024;
/// How often expired days are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Slack past the retention before a day is dropped: a record's time (its act) comes a little
/// before nats-server stores it, and expiry goes by the latter.
const PRUNE_SLACK_US: i64 = 3600 * 1_000_000;

/// Reads `KH_AUDIT` into `store` until `stop`, starting again after any failure (the client
/// reconnects on its own; the stream may not exist yet on a new bus).
pub(super) async fn run(
    js: jetstream::Context,
    store: Arc<Store>,
    applied: watch::Sender<u64>,
    retention: Duration,
    durable_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let gate = Arc::new(Semaphore::new(1));
    loop {
        tokio::select! {
            r = follow(&js, &store, &gate, &applied, retention, durable_every) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "trace index stopped reading KH_AUDIT; starting again");
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Dropping `follow` does not stop a store call already running on a blocking thread: wait
    // for it, so the file is closed once this returns (a registry restarted in the same process
    // opens it again at once).
    let _ = gate.acquire().await;
}

/// One ordered consumer's life: indexes what it delivers until it fails.
async fn follow(
    js: &jetstream::Context,
    store: &Arc<Store>,
    gate: &Arc<Semaphore>,
    applied: &watch::Sender<u64>,
    retention: Duration,
    durable_every: Duration,
) -> Result<(), String> {
    let stream = js.get_stream(subjects::STREAM_AUDIT).await.map_err(|e| format!("KH_AUDIT: {e}"))?;
    let info = stream.cached_info();
    let last = info.state.last_sequence;
    let created = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
    let mut from = *applied.borrow();
    let (built_from, build) = blocking(store, gate, |s| Ok((s.stream_created()?, s.build()?))).await?;
    if built_from != created || from > last || build < BUILD {
        // Not the stream the index was built from (recreated, or restored from elsewhere; or an
        // index never started), or an older build of the index (one that skipped the records
        // it could not read, or whose tables are keyed otherwise): read this one from its start.
        if from > 0 && build < BUILD {
            tracing::warn!(
                indexed = from,
                build,
                "trace index built by an older version; reindexing KH_AUDIT"
            );
        } else if from > 0 {
            tracing::warn!(
                indexed = from,
                stream_last = last,
                "KH_AUDIT is not the stream indexed; reindexing"
            );
        }
        blocking(store, gate, move |s| s.reset_for(created)).await?;
        applied.send_replace(0);
        from = 0;
    }
    let start = match from {
        0 => consumer::DeliverPolicy::All,
        n => consumer::DeliverPolicy::ByStartSequence { start_sequence: n + 1 },
    };
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects::AUDIT_ALL.to_string(),
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("KH_AUDIT consumer: {e}"))?;
    let mut messages = ordered.messages().await.map_err(|e| format!("KH_AUDIT read: {e}"))?;
    let mut last_durable = tokio::time::Instant::now();
    // Whether a commit since the last durable one is not on disk yet.
    let mut dirty = false;
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            let horizon = kakehashi_runtime::audit::now_us() - retention.as_micros() as i64 - PRUNE_SLACK_US;
            let dropped = blocking(store, gate, move |s| s.prune(horizon)).await?;
            if dropped > 0 {
                tracing::info!(days = dropped, "trace index: expired days dropped");
            }
            last_prune = Some(tokio::time::Instant::now());
        }
        // Waits for the first record, then takes what else has arrived, never waiting for more.
        let first = match tokio::time::timeout(durable_every, messages.next()).await {
            Ok(Some(m)) => Some(m),
            Ok(None) => return Err("KH_AUDIT read ended".into()),
            Err(_) => None,
        };
        let mut batch = Vec::new();
        let mut upto = *applied.borrow();
        let mut next = first;
        while let Some(m) = next.take() {
            let m = m.map_err(|e| format!("KH_AUDIT read: {e}"))?;
            let info = m.info().map_err(|e| format!("KH_AUDIT message: {e}"))?;
            let seq = info.stream_sequence;
            match indexed(seq, &m.payload) {
                Some(r) => batch.push(r),
                None => tracing::warn!(seq, "unreadable audit record; not indexed"),
            }
            upto = upto.max(seq);
            if batch.len() < BATCH {
                next = messages.next().now_or_never().flatten();
            }
        }
        let durable = last_durable.elapsed() >= durable_every;
        if upto == *applied.borrow() && !(durable && dirty) {
            continue;
        }
        blocking(store, gate, move |s| s.apply(&batch, upto, durable)).await?;
        dirty = !durable;
        if durable {
            last_durable = tokio::time::Instant::now();
        }
        applied.send_replace(upto);
    }
}

/// Runs `f` on the store off the async threads, holding `gate` until it has finished (even when
/// the caller has been dropped meanwhile).
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    gate: &Arc<Semaphore>,
    f: impl FnOnce(&Store) -> Result<T, redb::Error> + Send + 'static,
) -> Result<T, String> {
    let permit = gate.clone().acquire_owned().await.map_err(|e| format!("trace index task: {e}"))?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let result = f(&store);
        // The store's handle first: when the gate opens, this call holds the file no more.
        drop(store);
        drop(permit);
        result
    })
    .await
    .map_err(|e| format!("trace index task: {e}"))?
    .map_err(|e| format!("trace index: {e}"))
}

/// What the index needs of a protobuf record: its time and event ids (the other fields are
/// skipped, not decoded).
#[derive(Clone, PartialEq, prost::Message)]
struct IdsOnly {
    #[prost(string, tag = "1")]
    event_id: String,
    #[prost(int64, tag = "6")]
    time_us: i64,
    #[prost(message, repeated, tag = "16")]
    hops: Vec<HopId>,
}

/// A batch record's hop as the index needs it.
#[derive(Clone, PartialEq, prost::Message)]
struct HopId {
    #[prost(string, tag = "1")]
    event_id: String,
}

/// What the index needs of a record written as JSON (before 2026-12-03), borrowed from it.
#[derive(Deserialize)]
struct JsonIdsOnly<'a> {
    #[serde(default, borrow)]
    event_id: Cow<'a, str>,
    #[serde(default)]
    time_us: i64,
    #[serde(default, borrow)]
    hops: Vec<JsonHopId<'a>>,
}

#[derive(Deserialize)]
struct JsonHopId<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
}

/// The index entry of the record at `seq`; none when it is not an audit record.
pub(super) fn indexed(seq: u64, payload: &[u8]) -> Option<Indexed> {
    let mut keys = Vec::new();
    let mut add = |id: &str| {
        if !id.is_empty() {
            keys.push(event_key(id));
        }
    };
    let time_us = if kakehashi_runtime::audit::is_json_record(payload) {
        let r: JsonIdsOnly = serde_json::from_slice(payload).ok()?;
        if r.hops.is_empty() {
            add(&r.event_id);
        }
        r.hops.iter().for_each(|h| add(&h.event_id));
        r.time_us
    } else {
        let r = IdsOnly::decode(payload).ok()?;
        if r.hops.is_empty() {
            add(&r.event_id);
        }
        r.hops.iter().for_each(|h| add(&h.event_id));
        r.time_us
    };
    keys.sort_unstable();
    keys.dedup();
    Some(Indexed { seq, time_us, event_keys: keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_runtime::audit::{AuditRecord, BatchedHop, BATCH_HOP};

    #[test]
    fn a_record_is_indexed_under_its_event_and_a_batch_under_each_of_its_hops_events_once() {
        let single =
            AuditRecord { event_id: "e1".into(), hop: "validated".into(), time_us: 9, ..Default::default() };
        let got = indexed(3, &single.clone().seal()).expect("indexed");
        assert_eq!(got, Indexed { seq: 3, time_us: 9, event_keys: vec![event_key("e1")] });
        let old_json = indexed(3, &serde_json::to_vec(&single).expect("json")).expect("indexed");
        assert_eq!(old_json, got, "a record written as JSON before is indexed alike");
        let hop = |id: &str| BatchedHop { event_id: id.into(), hop: "acked".into(), ..Default::default() };
        let batch = AuditRecord {
            hop: BATCH_HOP.into(),
            time_us: 12,
            hops: vec![hop("e2"), hop("e1"), hop("e2")],
            ..Default::default()
        };
        let got = indexed(4, &batch.clone().seal()).expect("indexed");
        let mut both = [event_key("e1"), event_key("e2")];
        both.sort_unstable();
        assert_eq!((got.time_us, got.event_keys.as_slice()), (12, both.as_slice()));
        let old_json = indexed(4, &serde_json::to_vec(&batch).expect("json")).expect("indexed");
        assert_eq!(old_json, got);
        assert_eq!(indexed(5, b"{not json"), None);
        assert_eq!(indexed(5, &[0x0a, 0x05, b'e']), None, "a truncated record");
    }
}
