//! Building the `DeadLetter` record and its headers: one place, used by the validator and by
//! delivery (`delivery_exhausted`).

use crate::validator::reason::Reason;
use async_nats::HeaderMap;
use kakehashi_proto::subjects::{self, HEADER_EVENT_ID, HEADER_REASON};
use kakehashi_proto::v1::{DeadLetter, Event, FieldViolation};
use prost::Message as _;

/// A dead letter ready to publish.
pub struct Outgoing {
    /// `kh.dlq.<source>.<type>`.
    pub subject: String,
    /// Reason and event id headers (plus `Nats-Msg-Id` when the caller sets one).
    pub headers: HeaderMap,
    /// Encoded `DeadLetter`.
    pub body: Vec<u8>,
}

/// What went wrong, and with what.
pub struct Details<'a> {
    /// Reason class.
    pub reason: Reason,
    /// One-line explanation.
    pub message: String,
    /// Field failures.
    pub violations: Vec<FieldViolation>,
    /// Subject the bytes arrived on.
    pub original_subject: &'a str,
    /// The bytes as received.
    pub raw: &'a [u8],
    /// Whatever was decoded.
    pub event: Option<&'a Event>,
    /// Rejecting instance.
    pub actor: &'a str,
    /// Subscription (delivery failures).
    pub subscription: &'a str,
    /// Schema version, when known.
    pub schema_version: u32,
}

/// Builds the dead letter. Its subject takes the department and type from the ingress subject,
/// else (delivery failures) from the envelope, and `unknown` when neither is usable.
pub fn build(d: Details<'_>) -> Outgoing {
    // The ingress subject names the department NATS let publish there, so it wins over what
    // the envelope claims (a source_mismatch is filed under the real sender).
    let (source, event_type) = match subjects::parse_ingress(d.original_subject) {
        Some(p) if kakehashi_proto::ident::is_valid_department_id(p.source) => {
            (p.source.to_string(), p.event_type.to_string())
        }
        _ => match d.event {
            Some(e)
                if kakehashi_proto::ident::is_valid_department_id(&e.source)
                    && kakehashi_proto::ident::is_valid_event_type(&e.r#type) =>
            {
                (e.source.clone(), e.r#type.clone())
            }
            _ => ("unknown".to_string(), "unknown".to_string()),
        },
    };
    let event_id = d.event.map(|e| e.id.clone()).unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REASON, d.reason.code());
    if kakehashi_proto::ids::is_valid_event_id(&event_id) {
        headers.insert(HEADER_EVENT_ID, event_id.as_str());
    }
    let letter = DeadLetter {
        reason: d.reason.code().to_string(),
        message: d.message,
        violations: d.violations,
        // As published (without the partition the stream stored it under): a replay goes there.
        original_subject: subjects::published_ingress(d.original_subject).into_owned(),
        raw: d.raw.to_vec(),
        event_id,
        source: source.clone(),
        r#type: event_type.clone(),
        dead_lettered_at: Some(now_timestamp()),
        actor: d.actor.to_string(),
        subscription: d.subscription.to_string(),
        schema_version: d.schema_version,
    };
    Outgoing { subject: subjects::dead_letter(&source, &event_type), headers, body: letter.encode_to_vec() }
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }
}
