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

/// Every ingress subject (what publishers may use).
pub const INGRESS_ALL: &str = "kh.in.>";
/// Subjects `KH_INGRESS` accepts: `kh.in.<source>.<bucket or first type token>.<rest>`. A
/// shorter subject is no event subject at all; refusing it at the stream (the publisher gets no
/// ack) keeps it from sitting in the work queue where no partition consumer would read it.
pub const INGRESS_STREAM: &str = "kh.in.*.*.>";
/// Prefix under which `KH_INGRESS` stores messages, after the partition transform.
pub const PARTITIONED_PREFIX: &str = "kh.ip.";
/// Buckets a record key is hashed into for the ingress subject (`_0` … `_1023`).
pub const KEY_BUCKETS: u32 = 1024;
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

/// `kh.in.<source>._<bucket>.<type>`: where adapters publish an event whose record key is
/// `key` (the envelope's `subject`, may be empty). The bucket spreads keys over the ingress
/// partitions while keeping each (source, type, key) in one of them.
pub fn ingress(source: &str, event_type: &str, key: &str) -> String {
    format!("kh.in.{source}._{}.{event_type}", key_bucket(source, event_type, key))
}

/// The key bucket of an event: FNV-1a (32 bit) over `source`, a 0xFF byte, `type`, a 0xFF byte
/// and the record key, modulo [`KEY_BUCKETS`]. Publishers in other languages compute the same
/// (`docs/delivery.md`); a bucket reveals 10 bits of a hash, nothing of the key itself.
pub fn key_bucket(source: &str, event_type: &str, key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let parts = [source.as_bytes(), &[0xff], event_type.as_bytes(), &[0xff], key.as_bytes()];
    for b in parts.into_iter().flatten() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % KEY_BUCKETS
}

/// The stream subject transform that partitions ingress into `partitions` by the bucket token
/// (or, on a subject without one, the first token of the type): (source, destination).
pub fn ingress_transform(partitions: u32) -> (String, String) {
    (
        INGRESS_STREAM.to_string(),
        format!(
            "{PARTITIONED_PREFIX}{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.>"
        ),
    )
}

/// `kh.ip.<partition>.>`: the stored ingress messages of one partition.
pub fn partition_filter(partition: u32) -> String {
    format!("{PARTITIONED_PREFIX}{partition}.>")
}

/// An ingress subject taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressSubject<'a> {
    /// The department NATS let publish there.
    pub source: &'a str,
    /// The key bucket, when the publisher named one (`_<n>`): `None` on the short form
    /// `kh.in.<source>.<type>`, `Some(Err(()))` when the token is not a bucket number.
    pub bucket: Option<Result<u32, ()>>,
    /// The event type.
    pub event_type: &'a str,
}

/// Parses `kh.in.<source>[._<bucket>].<type>`, or the stored form with the partition in front
/// (`kh.ip.<partition>.<source>…`); None if the subject has another shape.
pub fn parse_ingress(subject: &str) -> Option<IngressSubject<'_>> {
    let rest = match subject.strip_prefix(PARTITIONED_PREFIX) {
        Some(stored) => stored.split_once('.')?.1,
        None => subject.strip_prefix("kh.in.")?,
    };
    let (source, rest) = rest.split_once('.')?;
    let (bucket, event_type) = match rest.strip_prefix('_') {
        Some(b) => {
            let (token, event_type) = b.split_once('.')?;
            let n = token.parse::<u32>().ok().filter(|n| *n < KEY_BUCKETS && !token.starts_with('+'));
            (Some(n.ok_or(())), event_type)
        }
        None => (None, rest),
    };
    (!source.is_empty() && !event_type.is_empty()).then_some(IngressSubject { source, bucket, event_type })
}

/// The ingress destination of `source` and `event_type` with the key bucket as a placeholder,
/// `kh.in.<source>._{bucket}.<type>`: what OpenTelemetry span names and
/// `messaging.destination.template` use, the bucket (one of 1,024) being too many names.
/// Written where it is displayed: span names are made for every event, and this costs no
/// allocation of its own there.
pub fn ingress_template<'a>(source: &'a str, event_type: &'a str) -> IngressTemplate<'a> {
    IngressTemplate { source, event_type }
}

/// [`ingress_template`]'s value: displays as `kh.in.<source>._{bucket}.<type>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressTemplate<'a> {
    source: &'a str,
    event_type: &'a str,
}

impl std::fmt::Display for IngressTemplate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kh.in.{}._{{bucket}}.{}", self.source, self.event_type)
    }
}

/// The subject an ingress message was published on, from the one it is stored under (the
/// partition token removed): where a replayed dead letter goes back to.
pub fn published_ingress(stored: &str) -> std::borrow::Cow<'_, str> {
    match stored.strip_prefix(PARTITIONED_PREFIX).and_then(|s| s.split_once('.')) {
        Some((_, rest)) => format!("kh.in.{rest}").into(),
        None => stored.into(),
    }
}

/// The suffix of a type's protobuf form, a subject of its own (`health.vaccination.recorded.pb`).
pub const PROTOBUF_FORM_SUFFIX: &str = ".pb";

/// Whether an event's `schema` names one of its type's own subjects: none (the type), the type,
/// or the type's protobuf form. Any other subject, however valid, is not the type's contract:
/// the producer policy is on the type, and readers' pseudonyms follow the schema's annotations.
pub fn is_form_of_type(schema: &str, event_type: &str) -> bool {
    schema.is_empty()
        || schema == event_type
        || schema.strip_prefix(event_type).is_some_and(|rest| rest == PROTOBUF_FORM_SUFFIX)
}

/// `kh.ev.<type>`: validated events.
pub fn events(event_type: &str) -> String {
    format!("kh.ev.{event_type}")
}

/// `kh.dlq.<source>.<type>`: dead letters.
pub fn dead_letter(source: &str, event_type: &str) -> String {
    format!("kh.dlq.{source}.{event_type}")
}

/// `kh.audit.b`: where every audit record is written, batch records of many hops and records
/// of one hop alike. One subject for the whole trail: nats-server keeps state per distinct
/// subject for as long as a message on it is retained, so a subject per event (as trails
/// written before 2026-12-02 have, `kh.audit.<event id>` and `kh.audit.s.<n>`) made its memory
/// grow with every event. An event's records are found through the registry's trace index.
pub const AUDIT_RECORDS: &str = "kh.audit.b";

/// The events filter for a subscription pattern (`health.>` → `kh.ev.health.>`).
pub fn events_filter(type_pattern: &str) -> String {
    format!("kh.ev.{type_pattern}")
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
    fn only_the_types_own_subjects_are_its_forms() {
        let t = "health.vaccination.recorded";
        for schema in ["", t, "health.vaccination.recorded.pb"] {
            assert!(is_form_of_type(schema, t), "{schema:?}");
        }
        for schema in [
            "common.person",
            "health.vaccination",
            "health.vaccination.recorded.v2",
            "health.vaccination.recorded.pb.pb",
            "health.vaccination.recordedpb",
            ".pb",
        ] {
            assert!(!is_form_of_type(schema, t), "{schema:?}");
        }
    }

    #[test]
    fn the_ingress_template_leaves_the_bucket_a_placeholder() {
        let t = ingress_template("city-x", "health.vaccination.recorded").to_string();
        assert_eq!(t, "kh.in.city-x._{bucket}.health.vaccination.recorded");
    }

    #[test]
    fn ingress_subject_round_trips() {
        let t = "health.vaccination.recorded";
        let s = ingress("city-shibuya", t, "resident-1");
        let b = key_bucket("city-shibuya", t, "resident-1");
        let want = IngressSubject { source: "city-shibuya", bucket: Some(Ok(b)), event_type: t };
        assert_eq!(parse_ingress(&s), Some(want));
        let stored = format!("kh.ip.3.city-shibuya._{b}.{t}");
        assert_eq!(parse_ingress(&stored), Some(want));
        assert_eq!(published_ingress(&stored), s);
        assert_eq!(published_ingress(&s), s);
        let short = IngressSubject { source: "city-shibuya", bucket: None, event_type: t };
        assert_eq!(parse_ingress(&format!("kh.in.city-shibuya.{t}")), Some(short));
        assert_eq!(parse_ingress("kh.in.x._1024.a.b").map(|p| p.bucket), Some(Some(Err(()))));
        assert_eq!(parse_ingress("kh.in.x._+1.a.b").map(|p| p.bucket), Some(Some(Err(()))));
        assert_eq!(parse_ingress("kh.in.only"), None);
        assert_eq!(parse_ingress("kh.ev.a.b"), None);
    }

    #[test]
    fn key_buckets_are_stable_and_spread() {
        // Fixed values: publishers in other languages must compute the same (docs/delivery.md).
        // (computed independently with the Python snippet of docs/delivery.md)
        assert_eq!(key_bucket("", "", ""), 163);
        assert_eq!(key_bucket("city-shibuya", "health.vaccination.recorded", "resident-1"), 603);
        let spread: std::collections::HashSet<u32> =
            (0..200).map(|i| key_bucket("city-x", "a.b", &format!("k{i}"))).collect();
        assert!(spread.len() > 150, "{} distinct buckets of 200 keys", spread.len());
        assert!(spread.iter().all(|b| *b < KEY_BUCKETS));
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
