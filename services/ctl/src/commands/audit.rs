//! `kakehashi audit verify`: reads every actor's anchored chain head, then all of KH_AUDIT, and
//! checks each hash chain against itself and its head.

use crate::cli::Conn;
use crate::error::CtlError;
use crate::output::emit;
use async_nats::jetstream::{self, consumer};
use kakehashi_proto::subjects::{AUDIT_ALL, BUCKET_CONFIG, STREAM_AUDIT};
use kakehashi_runtime::audit::{chain_name, read_heads, verify_trail, AuditRecord, Trail};
use serde_json::json;
use std::time::Duration;

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
    kakehashi_runtime::streams::read_each(
        js,
        STREAM_AUDIT,
        AUDIT_ALL,
        consumer::DeliverPolicy::All,
        usize::MAX,
        Duration::from_secs(2),
        |seq, payload| {
            // An unreadable record is itself tampering evidence: keep it as a record whose
            // hash cannot match, so the chain breaks there.
            let r = AuditRecord::from_stored(payload).unwrap_or_else(|_| AuditRecord {
                actor: "(unreadable)".into(),
                seq: 1,
                ..Default::default()
            });
            each(seq, r);
            true
        },
    )
    .await
    .map(|_| ())
    .map_err(CtlError::Nats)
}

/// Runs the verification; an error when a chain is broken.
pub async fn verify(conn: &Conn, json_mode: bool) -> Result<(), CtlError> {
    let js = jetstream::new(crate::nats_client::connect(conn).await?);
    let bucket =
        js.get_key_value(BUCKET_CONFIG).await.map_err(|e| CtlError::Nats(format!("{BUCKET_CONFIG}: {e}")))?;
    // Heads first: a head read after the records could name records stored in between.
    let heads = read_heads(&bucket).await.map_err(CtlError::Nats)?;
    let trail = read_trail(&js).await?;
    // Records older than the stream's retention may be gone by expiry, not by tampering.
    let mut stream =
        js.get_stream(STREAM_AUDIT).await.map_err(|e| CtlError::Nats(format!("{STREAM_AUDIT}: {e}")))?;
    let max_age =
        stream.info().await.map_err(|e| CtlError::Nats(format!("{STREAM_AUDIT}: {e}")))?.config.max_age;
    let horizon = if max_age.is_zero() {
        0
    } else {
        kakehashi_runtime::audit::now_us()
            .saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX))
    };
    let chains: std::collections::BTreeSet<String> = trail
        .chain_names()
        .map(str::to_string)
        .chain(heads.iter().map(|h| chain_name(&h.actor, &h.chain)))
        .collect();
    let broken = verify_trail(&trail, &heads, horizon);
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
        s.join("\n")
    });
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Usage(format!("{} broken chain(s)", broken.len())))
    }
}
