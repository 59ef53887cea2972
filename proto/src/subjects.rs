//! NATS names every Kakehashi process agrees on: streams, KV buckets, subjects and headers.
//!
//! Subjects never carry payload data (a My Number must never appear in one): only department
//! ids, event types and event ids, all of which are validated tokens.

/// Work-queue stream of events as published, before validation.
pub const STREAM_INGRESS: &str = "KH_INGRESS";
/// Validated events, retained for days so offline departments catch up.
pub const STREAM_EVENTS: &str = "KH_EVENTS";
/// Rejected events with the reason and the raw bytes.
pub const STREAM_DLQ: &str = "KH_DLQ";
/// Flow records of every hop of every event.
pub const STREAM_AUDIT: &str = "KH_AUDIT";
/// KV bucket of schemas.
pub const BUCKET_SCHEMAS: &str = "KH_SCHEMAS";
/// KV bucket of subscriptions and policies.
pub const BUCKET_CONFIG: &str = "KH_CONFIG";

/// Filter of the ingress stream.
pub const INGRESS_ALL: &str = "kh.in.>";
/// Filter of the events stream.
pub const EVENTS_ALL: &str = "kh.ev.>";
/// Filter of the dead-letter stream.
pub const DLQ_ALL: &str = "kh.dlq.>";
/// Filter of the audit stream.
pub const AUDIT_ALL: &str = "kh.audit.>";

/// Header carrying the dead-letter reason code (also inside the `DeadLetter` body).
pub const HEADER_REASON: &str = "Kh-Reason";
/// Header carrying the event id on messages whose body is not an `Event` (dead letters).
pub const HEADER_EVENT_ID: &str = "Kh-Event-Id";
/// Header with the schema version an event was validated against.
pub const HEADER_SCHEMA_VERSION: &str = "Kh-Schema-Version";
/// W3C trace context header.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C trace state header.
pub const HEADER_TRACESTATE: &str = "tracestate";

/// `kh.in.<source>.<type>`: where adapters publish.
pub fn ingress(source: &str, event_type: &str) -> String {
    format!("kh.in.{source}.{event_type}")
}

/// `kh.ev.<type>`: validated events.
pub fn events(event_type: &str) -> String {
    format!("kh.ev.{event_type}")
}

/// `kh.dlq.<source>.<type>`: dead letters.
pub fn dead_letter(source: &str, event_type: &str) -> String {
    format!("kh.dlq.{source}.{event_type}")
}

/// `kh.audit.<event id>`: flow records of one event.
pub fn audit(event_id: &str) -> String {
    format!("kh.audit.{event_id}")
}

/// The events filter for a subscription pattern (`health.>` → `kh.ev.health.>`).
pub fn events_filter(type_pattern: &str) -> String {
    format!("kh.ev.{type_pattern}")
}

/// Splits `kh.in.<source>.<type>` into (source, type); None if the subject has another shape.
pub fn parse_ingress(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("kh.in.")?;
    let (source, event_type) = rest.split_once('.')?;
    (!source.is_empty() && !event_type.is_empty()).then_some((source, event_type))
}

/// Whether a type pattern (`a.b.c`, `a.*.c`, `a.>`) matches an event type, with NATS semantics.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = event_type.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a subscription/policy pattern is well formed: tokens of `[a-z0-9-]+`, `*`, or a final `>`.
pub fn is_valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    !pattern.is_empty()
        && pattern.len() <= 200
        && tokens.iter().enumerate().all(|(i, t)| {
            (*t == ">" && i == tokens.len() - 1)
                || *t == "*"
                || (!t.is_empty()
                    && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_subject_round_trips() {
        let s = ingress("city-shibuya", "health.vaccination.recorded");
        assert_eq!(parse_ingress(&s), Some(("city-shibuya", "health.vaccination.recorded")));
        assert_eq!(parse_ingress("kh.in.only"), None);
        assert_eq!(parse_ingress("kh.ev.a.b"), None);
    }

    #[test]
    fn patterns_follow_nats_wildcards() {
        assert!(pattern_matches("health.>", "health.vaccination.recorded"));
        assert!(!pattern_matches("health.>", "health"));
        assert!(pattern_matches("health.*.recorded", "health.vaccination.recorded"));
        assert!(!pattern_matches("health.*", "health.vaccination.recorded"));
        assert!(pattern_matches("a.b", "a.b"));
        assert!(!pattern_matches("a.b", "a.b.c"));
        assert!(is_valid_pattern("health.>"));
        assert!(!is_valid_pattern("health.>.x"));
        assert!(!is_valid_pattern("Health"));
    }
}
