//! `kakehashi trace`: an event's hops with times, gaps, outcomes, and who got it.

use crate::cli::{Conn, TraceArgs};
use crate::clients;
use crate::error::CtlError;
use crate::output::emit;
use kakehashi_proto::v1::{FindEventsRequest, Hop, TraceEventRequest};
use serde_json::json;

/// A timestamp in Unix microseconds (0 when absent).
pub(crate) fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    // Saturating: a server's odd timestamp prints oddly rather than overflowing.
    t.as_ref().map_or(0, |t| t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos) / 1000))
}

fn clock(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| us.to_string())
}

/// Parses `--since`: RFC 3339, or a span back from now like `30s`, `15m`, `2h`, `1d`.
pub fn parse_since(s: &str) -> Result<prost_types::Timestamp, CtlError> {
    let now = time::OffsetDateTime::now_utc();
    let at = if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        t
    } else {
        now.checked_sub(time::Duration::seconds(span_secs(s)?)).ok_or_else(|| too_far(s))?
    };
    Ok(prost_types::Timestamp { seconds: at.unix_timestamp(), nanos: 0 })
}

/// Seconds in a `--since` span like `30s`, `15m`, `2h`, `1d`.
fn span_secs(s: &str) -> Result<i64, CtlError> {
    let usage = || CtlError::Usage(format!("--since {s:?}: use RFC 3339 or 30s/15m/2h/1d"));
    // The unit is the last character, which may be multi-byte: never slice through it.
    let (at, unit) = s.char_indices().last().ok_or_else(usage)?;
    let per: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(usage()),
    };
    let n: i64 = s.get(..at).and_then(|n| n.parse().ok()).filter(|n| *n >= 0).ok_or_else(usage)?;
    n.checked_mul(per).ok_or_else(|| too_far(s))
}

/// A span too long to count in seconds, or to subtract from now as a date.
fn too_far(s: &str) -> CtlError {
    CtlError::Usage(format!("--since {s:?}: too far back (a date must be after year -9999)"))
}

fn hop_json(h: &Hop) -> serde_json::Value {
    json!({"hop": h.hop, "actor": h.actor, "time_us": micros(&h.time), "outcome": h.outcome, "detail": h.detail,
           "department": h.department, "subscription": h.subscription, "schema_version": h.schema_version,
           "trace_id": h.trace_id})
}

/// What happened, in one line per reader, from the hops.
fn summary(hops: &[Hop]) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(d) = hops.iter().find(|h| h.hop == "dead_lettered") {
        lines.push(format!("dead-lettered: {} (see `kakehashi dlq list --type {}`)", d.detail, d.r#type));
    }
    let mut readers: Vec<(&str, &str)> = Vec::new();
    for h in hops.iter().filter(|h| !h.subscription.is_empty()) {
        if !readers.iter().any(|(s, _)| *s == h.subscription) {
            readers.push((&h.subscription, &h.department));
        }
    }
    for (sub, dept) in readers {
        let last = hops.iter().rev().find(|h| h.subscription == sub).map(|h| h.hop.as_str()).unwrap_or("");
        let state = match last {
            "acked" => "acked",
            "delivered" => "delivered, not acked yet",
            "nacked" => "nacked, waiting for redelivery",
            "delivery_exhausted" => "NOT acked: dead-lettered as delivery_exhausted",
            "withheld" => "withheld: reader not permitted",
            other => other,
        };
        lines.push(format!("reached {dept} ({sub}): {state}"));
    }
    if lines.is_empty() {
        let last = hops.last().map(|h| h.hop.as_str()).unwrap_or("nothing");
        lines.push(format!("no subscriber has received it yet; last hop: {last}"));
    }
    lines
}

/// Runs `kakehashi trace`.
pub async fn run(conn: &Conn, json_mode: bool, a: TraceArgs) -> Result<(), CtlError> {
    let mut c = clients::flows(conn).await?;
    let Some(id) = a.event_id else {
        let since = parse_since(&a.since)?;
        let r = c
            .find_events(FindEventsRequest {
                source: a.source.unwrap_or_default(),
                r#type: a.event_type.unwrap_or_default(),
                since: Some(since),
                limit: a.limit,
            })
            .await?
            .into_inner();
        let events: Vec<serde_json::Value> = r
            .events
            .iter()
            .map(|e| json!({"event_id": e.event_id, "source": e.source, "type": e.r#type,
                            "first_seen_us": micros(&e.first_seen), "last_hop": e.last_hop, "last_outcome": e.last_outcome}))
            .collect();
        emit(json_mode, json!({"events": events, "truncated": r.truncated}), || {
            if r.events.is_empty() {
                return "no matching events".to_string();
            }
            let mut s: Vec<String> = r
                .events
                .iter()
                .map(|e| {
                    format!(
                        "{}  {}  {} from {}  → {} ({})",
                        clock(micros(&e.first_seen)),
                        e.event_id,
                        e.r#type,
                        e.source,
                        e.last_hop,
                        e.last_outcome
                    )
                })
                .collect();
            if r.truncated {
                s.push("(scan limit reached: narrow --since)".into());
            }
            s.join("\n")
        });
        return Ok(());
    };
    let r = c.trace_event(TraceEventRequest { event_id: id.clone() }).await?.into_inner();
    let lines = summary(&r.hops);
    emit(
        json_mode,
        json!({"event_id": r.event_id, "hops": r.hops.iter().map(hop_json).collect::<Vec<_>>(), "summary": lines}),
        || {
            let first = r.hops.first().map(|h| micros(&h.time)).unwrap_or(0);
            let head = r
                .hops
                .first()
                .map(|h| {
                    format!(
                        "event {} — {} from {}{}",
                        r.event_id,
                        h.r#type,
                        h.department,
                        if h.trace_id.is_empty() { String::new() } else { format!(", trace {}", h.trace_id) }
                    )
                })
                .unwrap_or_default();
            let mut out = vec![head];
            let mut prev = first;
            for h in &r.hops {
                let t = micros(&h.time);
                let mut extra = h.detail.clone();
                if h.schema_version > 0 && h.hop == "validated" {
                    extra = format!("schema v{}", h.schema_version);
                }
                if !h.subscription.is_empty() {
                    extra = format!("{} {} {}", h.department, h.subscription, extra);
                }
                out.push(format!(
                    "  {:<32} +{:>9.3}s (+{:.3}s)  {:<18} {:<8} {:<28} {}",
                    clock(t),
                    (t - first) as f64 / 1e6,
                    (t - prev) as f64 / 1e6,
                    h.hop,
                    h.outcome,
                    h.actor,
                    extra.trim()
                ));
                prev = t;
            }
            out.extend(lines.iter().map(|l| format!("→ {l}")));
            out.join("\n")
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_message(s: &str) -> String {
        match parse_since(s) {
            Err(CtlError::Usage(m)) => m,
            other => panic!("--since {s:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn since_spans_are_parsed_without_panicking_or_overflowing() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let at = parse_since("15m").expect("15m").seconds;
        assert!((now - 900 - at).abs() <= 5, "15m: {at} vs now {now}");
        assert_eq!(parse_since("2024-05-01T00:00:00Z").expect("RFC 3339").seconds, 1_714_521_600);
        // A multi-byte last character is not a unit (and must not be sliced through).
        assert!(usage_message("1日").contains("use RFC 3339"));
        assert!(usage_message("日").contains("use RFC 3339"));
        assert!(usage_message("").contains("use RFC 3339"));
        assert!(usage_message("-5m").contains("use RFC 3339"));
        // Overflows the date, or the multiplication: a clear error, not a panic.
        assert!(usage_message("99999999999d").contains("too far back"));
        assert!(usage_message("999999999999999d").contains("too far back"));
        assert!(usage_message("9223372036854775807s").contains("too far back"));
    }
}
