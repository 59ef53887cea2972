//! `kakehashi dlq …`: dead letters read straight from `KH_DLQ`.

use crate::cli::{Conn, DlqCommand};
use crate::error::CtlError;
use crate::output::emit;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use kakehashi_proto::subjects::STREAM_DLQ;
use kakehashi_proto::v1::{DeadLetter, Event};
use prost::Message as _;
use serde_json::json;

/// A dead letter with its place in the stream.
pub struct Stored {
    /// KH_DLQ sequence.
    pub seq: u64,
    /// The record.
    pub letter: DeadLetter,
}

async fn connect(conn: &Conn) -> Result<jetstream::Context, CtlError> {
    let client =
        async_nats::connect(&conn.nats).await.map_err(|e| CtlError::Nats(format!("{}: {e}", conn.nats)))?;
    Ok(jetstream::new(client))
}

/// Every dead letter on `filter` (a `kh.dlq.…` subject pattern), oldest first.
pub async fn read_all(js: &jetstream::Context, filter: &str) -> Result<Vec<Stored>, CtlError> {
    let mut stream = js.get_stream(STREAM_DLQ).await.map_err(|e| CtlError::Nats(e.to_string()))?;
    let info = stream.info().await.map_err(|e| CtlError::Nats(e.to_string()))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| CtlError::Nats(e.to_string()))?;
    let mut messages = ordered.messages().await.map_err(|e| CtlError::Nats(e.to_string()))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), messages.next()).await;
        let Ok(Some(Ok(m))) = next else { break };
        let (seq, pending) = m.info().map(|i| (i.stream_sequence, i.pending)).unwrap_or((0, 0));
        if let Ok(letter) = DeadLetter::decode(m.payload.as_ref()) {
            out.push(Stored { seq, letter });
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
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
        DlqCommand::Show { seq } => {
            let stream = js.get_stream(STREAM_DLQ).await.map_err(|e| CtlError::Nats(e.to_string()))?;
            let m = stream
                .get_raw_message(seq)
                .await
                .map_err(|e| CtlError::Nats(format!("KH_DLQ #{seq}: {e}")))?;
            let letter = DeadLetter::decode(m.payload.as_ref())
                .map_err(|e| CtlError::Nats(format!("KH_DLQ #{seq} is not a DeadLetter: {e}")))?;
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
