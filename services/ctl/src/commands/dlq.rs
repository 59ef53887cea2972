//! `kakehashi dlq …`: dead letters read from `KH_DLQ` with batch direct gets, the one way the
//! operator's NATS identity can read them (it lives outside the bus account); `replay` asks
//! the registry's `DeadLetters` API to put them back on ingress, so the operator's credentials
//! cannot publish as any department.

use crate::cli::{Conn, DlqCommand};
use crate::error::CtlError;
use crate::output::emit;
use async_nats::jetstream;
use kakehashi_proto::subjects::{DLQ_ALL, STREAM_DLQ};
use kakehashi_proto::v1::{DeadLetter, Event, RedriveDeadLettersRequest, TraceEventRequest};
use kakehashi_runtime::direct_get;
use prost::Message as _;
use serde_json::json;
use std::time::Duration;

/// A dead letter with its place in the stream (shared with the registry's `DeadLetters` API).
pub use kakehashi_registry::redrive::Stored;

/// Most ids one `RedriveDeadLettersRequest` may name (the registry's limit).
const REDRIVE_BATCH: usize = 1000;

/// How long one direct get may take to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

async fn connect(conn: &Conn) -> Result<jetstream::Context, CtlError> {
    Ok(jetstream::new(crate::nats_client::connect(conn).await?))
}

/// Every dead letter on `filter` (a `kh.dlq.…` subject pattern), oldest first. Messages that
/// are not dead letters are skipped (logged).
pub async fn read_all(js: &jetstream::Context, filter: &str) -> Result<Vec<Stored>, CtlError> {
    let mut out = Vec::new();
    direct_get::read_each(&js.client(), STREAM_DLQ, filter, 1, usize::MAX, ANSWER_WAIT, |m| {
        match DeadLetter::decode(m.payload) {
            Ok(letter) => out.push(Stored { seq: m.seq, letter }),
            Err(e) => eprintln!("warning: KH_DLQ #{} is not a DeadLetter, skipped: {e}", m.seq),
        }
        true
    })
    .await
    .map_err(|e| CtlError::Nats(e.to_string()))?;
    Ok(out)
}

/// The dead letter at `seq`.
async fn get(js: &jetstream::Context, seq: u64) -> Result<Stored, CtlError> {
    let mut found = None;
    direct_get::read_each(&js.client(), STREAM_DLQ, DLQ_ALL, seq, 1, ANSWER_WAIT, |m| {
        // The first message at or after `seq`: another one means `seq` is gone.
        found = (m.seq == seq).then(|| DeadLetter::decode(m.payload));
        false
    })
    .await
    .map_err(|e| CtlError::Nats(e.to_string()))?;
    match found {
        Some(Ok(letter)) => Ok(Stored { seq, letter }),
        Some(Err(e)) => Err(CtlError::Nats(format!("KH_DLQ #{seq} is not a DeadLetter: {e}"))),
        None => Err(CtlError::Usage(format!("KH_DLQ #{seq}: no such dead letter"))),
    }
}

fn summary_json(s: &Stored) -> serde_json::Value {
    let l = &s.letter;
    json!({"seq": s.seq, "reason": l.reason, "source": l.source, "type": l.r#type, "event_id": l.event_id,
           "message": l.message, "actor": l.actor, "subscription": l.subscription,
           "dead_lettered_at": l.dead_lettered_at.map(|t| t.seconds)})
}

/// Runs a dlq subcommand.
pub async fn run(conn: &Conn, json_mode: bool, cmd: DlqCommand) -> Result<(), CtlError> {
    let js = connect(conn).await?;
    match cmd {
        DlqCommand::List { reason, source, event_type } => {
            let filter = format!(
                "kh.dlq.{}.{}",
                source.as_deref().unwrap_or("*"),
                event_type.as_deref().unwrap_or(">")
            );
            let letters: Vec<Stored> = read_all(&js, &filter)
                .await?
                .into_iter()
                .filter(|s| reason.as_deref().is_none_or(|r| s.letter.reason == r))
                .collect();
            emit(json_mode, json!(letters.iter().map(summary_json).collect::<Vec<_>>()), || {
                if letters.is_empty() {
                    return "no dead letters".to_string();
                }
                letters
                    .iter()
                    .map(|s| {
                        format!(
                            "#{:<6} {:<20} {}/{} {}\n        {}",
                            s.seq,
                            s.letter.reason,
                            s.letter.source,
                            s.letter.r#type,
                            if s.letter.event_id.is_empty() { "(no event id)" } else { &s.letter.event_id },
                            s.letter.message
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        DlqCommand::Replay { seqs, reason, source, event_type, wait } => {
            let seqs = if !seqs.is_empty() {
                seqs
            } else if reason.is_some() || source.is_some() || event_type.is_some() {
                let filter = format!(
                    "kh.dlq.{}.{}",
                    source.as_deref().unwrap_or("*"),
                    event_type.as_deref().unwrap_or(">")
                );
                read_all(&js, &filter)
                    .await?
                    .into_iter()
                    .filter(|s| reason.as_deref().is_none_or(|r| s.letter.reason == r))
                    .map(|s| s.seq)
                    .collect()
            } else {
                return Err(CtlError::Usage(
                    "name KH_DLQ sequences, or filter with --reason/--source/--type".into(),
                ));
            };
            replay(conn, seqs, Duration::from_secs(wait), json_mode).await?;
        }
        DlqCommand::Show { seq } => {
            let Stored { letter, .. } = get(&js, seq).await?;
            let event = Event::decode(letter.raw.as_ref()).ok();
            let payload =
                event.as_ref().and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.data).ok());
            let stored = Stored { seq, letter };
            let mut j = summary_json(&stored);
            j["violations"] = json!(stored.letter.violations.iter().map(|v| json!({"pointer": v.pointer, "schema_pointer": v.schema_pointer, "message": v.message})).collect::<Vec<_>>());
            j["original_subject"] = json!(stored.letter.original_subject);
            j["raw_bytes"] = json!(stored.letter.raw.len());
            j["payload"] = payload.clone().unwrap_or(serde_json::Value::Null);
            emit(json_mode, j, || {
                let l = &stored.letter;
                let mut s = format!(
                    "dead letter #{seq}\n  reason:   {}\n  message:  {}\n  event:    {} ({} from {})\n  subject:  {}\n  actor:    {}\n  raw:      {} bytes",
                    l.reason, l.message, l.event_id, l.r#type, l.source, l.original_subject, l.actor, l.raw.len()
                );
                for v in &l.violations {
                    s.push_str(&format!(
                        "\n  violation {} — {}",
                        if v.pointer.is_empty() { "/" } else { &v.pointer },
                        v.message
                    ));
                }
                match &payload {
                    Some(p) => s.push_str(&format!(
                        "\n  payload:\n{}",
                        serde_json::to_string_pretty(p).unwrap_or_default()
                    )),
                    None => s.push_str("\n  payload:  (not a decodable event)"),
                }
                s
            });
        }
    }
    Ok(())
}

/// Has the registry redrive the letters at `seqs` (its `RedriveDeadLetters` API: the caller's
/// token decides which it may, the registry publishes and audits) and reports what became of
/// each.
async fn replay(conn: &Conn, seqs: Vec<u64>, wait: Duration, json_mode: bool) -> Result<(), CtlError> {
    let started_us = kakehashi_runtime::audit::now_us();
    let mut outcomes = Vec::new();
    if !seqs.is_empty() {
        let mut client = crate::clients::dead_letters(conn).await?;
        for ids in seqs.chunks(REDRIVE_BATCH) {
            let request = RedriveDeadLettersRequest { ids: ids.to_vec() };
            outcomes.extend(client.redrive_dead_letters(request).await?.into_inner().outcomes);
        }
    }
    let mut results = Vec::new();
    for o in outcomes {
        let outcome = match o.outcome.as_str() {
            "redriven" if o.event_id.is_empty() => "replayed (no event id to follow)".to_string(),
            "redriven" => follow(conn, &o.event_id, started_us, wait).await,
            "duplicate" => "already replayed (deduplicated)".to_string(),
            "not_found" => format!("not found: {}", o.detail),
            other => format!("{other}: {}", o.detail),
        };
        results.push((o.id, o.event_id, outcome));
    }
    emit(
        json_mode,
        json!(results
            .iter()
            .map(|(seq, id, o)| json!({"seq": seq, "event_id": id, "outcome": o}))
            .collect::<Vec<_>>()),
        || {
            if results.is_empty() {
                return "nothing to replay".to_string();
            }
            results.iter().map(|(seq, id, o)| format!("#{seq:<6} {id}  → {o}")).collect::<Vec<_>>().join("\n")
        },
    );
    Ok(())
}

/// Waits for the validator's verdict on a replayed event, from its trace (the registry's
/// `Flows.TraceEvent`, with the caller's token: the operator's NATS identity reads no trail by
/// time).
async fn follow(conn: &Conn, event_id: &str, since_us: i64, wait: Duration) -> String {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let trace = match crate::clients::flows(conn).await {
            Ok(mut flows) => {
                flows.trace_event(TraceEventRequest { event_id: event_id.to_string() }).await.ok()
            }
            Err(_) => None,
        };
        let hops = trace.map(|t| t.into_inner().hops).unwrap_or_default();
        let verdict = hops.iter().rfind(|h| {
            super::trace::micros(&h.time) >= since_us
                && matches!(h.hop.as_str(), "validated" | "dead_lettered")
        });
        if let Some(h) = verdict {
            return match h.hop.as_str() {
                "validated" => format!("validated against schema version {}", h.schema_version),
                _ => format!("dead-lettered again: {}", h.detail),
            };
        }
        if tokio::time::Instant::now() > deadline {
            return format!("replayed; no verdict within {wait:?} (check `kakehashi trace {event_id}`)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
