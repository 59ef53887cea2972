//! `kakehashi audit verify`: reads every actor's anchored chain head, then all of KH_AUDIT, and
//! checks each hash chain against itself and its head. Both are read with batch direct gets,
//! the one way the operator's NATS identity can read them (it lives outside the bus account).

use crate::cli::Conn;
use crate::error::CtlError;
use crate::output::emit;
use async_nats::jetstream;
use kakehashi_proto::subjects::{AUDIT_ALL, BUCKET_CONFIG, STREAM_AUDIT};
use kakehashi_runtime::audit::{chain_name, verify_trail, AuditRecord, ChainHead, Trail, HEAD_PREFIX};
use kakehashi_runtime::direct_get;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one direct get may take to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Every stored audit record with its stream sequence, parsed as it is read (no payload is
/// kept); a batch record whole, as it is chained ([`AuditRecord::into_hops`] unpacks it).
pub async fn read_all(js: &jetstream::Context) -> Result<Vec<(u64, AuditRecord)>, CtlError> {
    let mut records = Vec::new();
    read_each(js, |seq, r| records.push((seq, r))).await?;
    Ok(records)
}

/// The whole trail reduced to what the chain check needs, record by record.
pub async fn read_trail(js: &jetstream::Context) -> Result<Trail, CtlError> {
    let mut trail = Trail::default();
    read_each(js, |seq, r| trail.push(seq, &r)).await?;
    Ok(trail)
}

async fn read_each(js: &jetstream::Context, mut each: impl FnMut(u64, AuditRecord)) -> Result<(), CtlError> {
    direct_get::read_each(&js.client(), STREAM_AUDIT, AUDIT_ALL, 1, usize::MAX, ANSWER_WAIT, |m| {
        // An unreadable record is itself tampering evidence: keep it as a record whose hash
        // cannot match, so the chain breaks there.
        let r = AuditRecord::from_stored(m.payload).unwrap_or_else(|_| AuditRecord {
            actor: "(unreadable)".into(),
            seq: 1,
            ..Default::default()
        });
        each(m.seq, r);
        true
    })
    .await
    .map(|_| ())
    .map_err(|e| CtlError::Nats(e.to_string()))
}

/// Every anchored chain head in the `KH_CONFIG` bucket: the newest value of each head key,
/// read from the bucket's stream (a deleted key has none).
pub async fn read_heads(js: &jetstream::Context) -> Result<Vec<ChainHead>, CtlError> {
    let filter = format!("$KV.{BUCKET_CONFIG}.{HEAD_PREFIX}>");
    let mut newest: BTreeMap<String, Option<Result<ChainHead, String>>> = BTreeMap::new();
    let stream = format!("KV_{BUCKET_CONFIG}");
    direct_get::read_each(&js.client(), &stream, &filter, 1, usize::MAX, ANSWER_WAIT, |m| {
        let deleted = m
            .headers
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let head = (!deleted).then(|| {
            serde_json::from_slice::<ChainHead>(m.payload)
                .map_err(|e| format!("chain head {} is unreadable (altered?): {e}", m.subject))
        });
        newest.insert(m.subject.to_string(), head);
        true
    })
    .await
    .map_err(|e| CtlError::Nats(e.to_string()))?;
    newest.into_values().flatten().map(|h| h.map_err(CtlError::Nats)).collect()
}

/// Reads of the trail `verify` makes while only chains' newest records are missing (a replica
/// behind).
const LAG_READS: u32 = 3;
/// The pause between those reads.
const LAG_PAUSE: Duration = Duration::from_secs(1);

/// Runs the verification; an error when a chain is broken. `max_age` is how long KH_AUDIT
/// keeps records (`topology.audit_max_age_secs`): older records may be gone by expiry, not by
/// tampering. The operator's identity may not read the stream's settings, so it is given.
pub async fn verify(conn: &Conn, json_mode: bool, max_age: Duration) -> Result<(), CtlError> {
    let js = jetstream::new(crate::nats_client::connect(conn).await?);
    let horizon = if max_age.is_zero() {
        0
    } else {
        kakehashi_runtime::audit::now_us()
            .saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX))
    };
    let mut reads = 0;
    let (heads, trail, broken) = loop {
        // Heads first: a head read after the records could name records stored in between.
        let heads = read_heads(&js).await?;
        let trail = read_trail(&js).await?;
        let broken = verify_trail(&trail, &heads, horizon);
        reads += 1;
        // Direct gets may be answered by a replica a moment behind the one that answered for
        // the heads: newest records missing behind a head are read again before being named.
        if reads < LAG_READS && !broken.is_empty() && broken.iter().all(|b| b.at_end) {
            tokio::time::sleep(LAG_PAUSE).await;
            continue;
        }
        break (heads, trail, broken);
    };
    let chains: std::collections::BTreeSet<String> = trail
        .chain_names()
        .map(str::to_string)
        .chain(heads.iter().map(|h| chain_name(&h.actor, &h.chain)))
        .collect();
    let items: Vec<serde_json::Value> = broken
        .iter()
        .map(|b| json!({"actor": b.actor, "chain_seq": b.seq, "stream_seq": b.stream_seq, "problem": b.problem}))
        .collect();
    emit(json_mode, json!({"records": trail.len(), "chains": chains.len(), "broken": items}), || {
        if broken.is_empty() {
            return format!("audit trail intact: {} records in {} chains", trail.len(), chains.len());
        }
        let mut s = vec![format!("AUDIT TRAIL BROKEN: {} of {} chains", broken.len(), chains.len())];
        for b in &broken {
            let at = b.stream_seq.map(|q| format!("KH_AUDIT #{q}")).unwrap_or_else(|| "(deleted)".into());
            s.push(format!("  {} record {} {at}: {}", b.actor, b.seq, b.problem));
        }
        s.push(format!(
            "  (records older than {} s count as expired; if KH_AUDIT keeps them for less, give its topology.audit_max_age_secs as --max-age-secs)",
            max_age.as_secs()
        ));
        s.join("\n")
    });
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Usage(format!("{} broken chain(s)", broken.len())))
    }
}
