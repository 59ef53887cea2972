//! The validation of one ingress message, as a pure function of its bytes, its subject and the
//! schema store: either the event is accepted (and passes through byte for byte) or it is
//! rejected with a reason and details.

use super::reason::Reason;
use crate::store::{SchemaStore, StoreError};
use crate::validation;
use kakehashi_proto::v1::{Event, FieldViolation};
use kakehashi_proto::{ident, ids, subjects};
use prost::Message as _;

/// An accepted event: what the validator needs to republish it.
#[derive(Debug)]
pub struct Accepted {
    /// The decoded envelope (for ids, trace context; its bytes are republished, not it).
    pub event: Event,
    /// Schema version validated against.
    pub schema_version: u32,
}

/// A rejected event.
#[derive(Debug)]
pub struct Rejected {
    /// Reason class.
    pub reason: Reason,
    /// One-line explanation (never quotes payload values).
    pub message: String,
    /// Per-field failures.
    pub violations: Vec<FieldViolation>,
    /// Whatever could be decoded.
    pub event: Option<Event>,
    /// Schema version validated against, when one was found.
    pub schema_version: u32,
}

fn reject(reason: Reason, message: impl Into<String>, event: Option<Event>) -> Box<Rejected> {
    Box::new(Rejected { reason, message: message.into(), violations: Vec::new(), event, schema_version: 0 })
}

/// Limits the check applies.
#[derive(Debug, Clone, Copy)]
pub struct CheckLimits {
    /// Largest `Event.data`.
    pub max_payload_bytes: usize,
    /// Most violations reported.
    pub max_violations: usize,
    /// Deepest nesting of arrays and objects in a JSON payload (at most
    /// `kakehashi_proto::strict_json::MAX_DEPTH_CEILING`).
    pub max_json_depth: usize,
}

/// Checks one ingress message. `may_publish` is the producer policy.
pub fn check(
    subject: &str,
    raw: &[u8],
    store: &SchemaStore,
    limits: CheckLimits,
    may_publish: impl Fn(&str, &str) -> bool,
) -> Result<Accepted, Box<Rejected>> {
    // Envelope overhead is small; anything far larger than the payload limit is refused unread.
    if raw.len() > limits.max_payload_bytes + 64 * 1024 {
        return Err(reject(
            Reason::PayloadTooLarge,
            format!(
                "message is {} bytes, over the payload limit of {} (limits.max_payload_bytes)",
                raw.len(),
                limits.max_payload_bytes
            ),
            None,
        ));
    }
    let event = Event::decode(raw)
        .map_err(|e| reject(Reason::MalformedEnvelope, format!("not a kakehashi.v1.Event: {e}"), None))?;
    let Some(parsed) = subjects::parse_ingress(subject) else {
        return Err(reject(
            Reason::MalformedEnvelope,
            format!("subject {subject} is not kh.in.<source>._<key bucket>.<type>"),
            Some(event),
        ));
    };
    let (dept, subject_type) = (parsed.source, parsed.event_type);
    if !ids::is_valid_event_id(&event.id) {
        return Err(reject(Reason::MalformedEnvelope, "event id must be a UUID or ULID", Some(event)));
    }
    if !ident::is_valid_event_type(&event.r#type) {
        return Err(reject(
            Reason::MalformedEnvelope,
            "event type is not lowercase dot-separated tokens",
            Some(event),
        ));
    }
    if event.source != dept {
        let message = format!("source {:?} does not match the subject's department {dept:?}", event.source);
        return Err(reject(Reason::SourceMismatch, message, Some(event)));
    }
    if event.r#type != subject_type {
        let message = format!("type {:?} does not match the subject's type {subject_type:?}", event.r#type);
        return Err(reject(Reason::MalformedEnvelope, message, Some(event)));
    }
    // KH_EVENTS carries `time` as a CloudEvents (RFC 3339) timestamp.
    if let Some(problem) = kakehashi_proto::cloudevents::time_problem(&event) {
        return Err(reject(Reason::MalformedEnvelope, format!("event time: {problem}"), Some(event)));
    }
    if let Some(bucket) = parsed.bucket {
        // A wrong bucket would put this key's events in two partitions, out of order.
        let expected = subjects::key_bucket(&event.source, &event.r#type, &event.subject);
        if bucket != Ok(expected) {
            let named = match bucket {
                Ok(n) => format!("key bucket _{n}"),
                Err(()) => format!("no key bucket (_0 to _{})", subjects::KEY_BUCKETS - 1),
            };
            let message = format!(
                "subject {} names {named}, but the event's (source, type, subject) hash to _{expected}",
                subjects::published_ingress(subject)
            );
            return Err(reject(Reason::MalformedEnvelope, message, Some(event)));
        }
    }
    let Some(content_type) = crate::protobuf::ContentType::parse(&event.data_content_type) else {
        let message = format!(
            "data_content_type {:?} is not application/json or application/protobuf",
            event.data_content_type
        );
        return Err(reject(Reason::MalformedEnvelope, message, Some(event)));
    };
    if let Err(r) = check_size(&event.data, limits) {
        return Err(r.into_rejected(Some(event), 0));
    }
    if !may_publish(&event.source, &event.r#type) {
        let message = format!("department {} may not publish {}", event.source, event.r#type);
        return Err(reject(Reason::NotPermitted, message, Some(event)));
    }
    if !subjects::is_form_of_type(&event.schema, &event.r#type) {
        // The producer policy is on the type and readers' pseudonyms follow the schema's
        // annotations: a schema of the producer's choosing would bypass both.
        let message = format!(
            "schema {:?} is not a form of type {:?}: it must be empty, the type, or the type's protobuf form {:?}",
            event.schema,
            event.r#type,
            format!("{}{}", event.r#type, subjects::PROTOBUF_FORM_SUFFIX)
        );
        return Err(reject(Reason::MalformedEnvelope, message, Some(event)));
    }
    let schema_subject = if event.schema.is_empty() { event.r#type.as_str() } else { event.schema.as_str() };
    let (schema, version) = match store.payload_schema(schema_subject, event.schema_version) {
        Ok(v) => v,
        Err(StoreError::NotFound(what)) => {
            return Err(reject(Reason::UnknownType, format!("no schema: {what}"), Some(event)));
        }
        Err(e) => return Err(reject(Reason::UnknownType, format!("schema unusable: {e}"), Some(event))),
    };
    if let Err(r) = crate::protobuf::check_event_payload(&event.data, content_type, &schema, limits) {
        return Err(r.into_rejected(Some(event), version));
    }
    Ok(Accepted { event, schema_version: version })
}

/// Why a payload is refused, whatever envelope carries it.
#[derive(Debug)]
pub struct PayloadRejected {
    /// Reason class (the dead letter's reason).
    pub reason: Reason,
    /// One-line explanation (never quotes payload values).
    pub message: String,
    /// Per-field failures (none for the size limit or a payload that is not JSON).
    pub violations: Vec<FieldViolation>,
}

impl PayloadRejected {
    fn into_rejected(self, event: Option<Event>, schema_version: u32) -> Box<Rejected> {
        Box::new(Rejected {
            reason: self.reason,
            message: self.message,
            violations: self.violations,
            event,
            schema_version,
        })
    }
}

/// The payload size limit; checked before the producer policy and the schema lookup too, so an
/// oversized payload is refused as such whatever else is wrong with it.
pub(crate) fn check_size(data: &[u8], limits: CheckLimits) -> Result<(), PayloadRejected> {
    if data.len() <= limits.max_payload_bytes {
        return Ok(());
    }
    Err(PayloadRejected {
        reason: Reason::PayloadTooLarge,
        message: format!(
            "payload is {} bytes, over the limit of {} (limits.max_payload_bytes)",
            data.len(),
            limits.max_payload_bytes
        ),
        violations: Vec::new(),
    })
}

/// Every check the bus applies to a payload once its schema is resolved: the size limit, JSON
/// (no key named twice, no nesting deeper than `limits.max_json_depth`), the schema. The dry
/// run (`SchemaRegistry/ValidatePayload`) calls this same function, so it cannot call valid
/// what the bus dead-letters.
pub fn check_payload(
    data: &[u8],
    validator: &jsonschema::Validator,
    limits: CheckLimits,
) -> Result<(), PayloadRejected> {
    check_size(data, limits)?;
    // A key named twice is refused: readers disagree on which of the two counts. So is a
    // payload nested deeper than our limit, by its own message (and bounded so, the schema
    // validation's recursion is too).
    let payload = kakehashi_proto::strict_json::parse_within(data, limits.max_json_depth).map_err(|e| {
        let message = match e {
            kakehashi_proto::strict_json::ParseError::Json(e) => format!("payload is not JSON: {e}"),
            kakehashi_proto::strict_json::ParseError::TooDeep { max_depth } => {
                format!("payload nests deeper than {max_depth} levels (limits.max_json_depth)")
            }
        };
        PayloadRejected { reason: Reason::SchemaViolation, message, violations: Vec::new() }
    })?;
    let violations = validation::violations(validator, &payload, limits.max_violations);
    if violations.is_empty() {
        return Ok(());
    }
    Err(PayloadRejected {
        reason: Reason::SchemaViolation,
        message: validation::summary(&violations),
        violations,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn check_payload_refuses_a_payload_one_level_too_deep_with_its_own_message() {
        use crate::validator::{check_payload, reason::Reason, CheckLimits};
        let validator = jsonschema::validator_for(&json!({"type": "object"})).expect("schema");
        for max_json_depth in [4, 64] {
            let limits = CheckLimits { max_payload_bytes: 1 << 20, max_violations: 10, max_json_depth };
            // Objects all the way down (the schema wants an object).
            let object = |depth: usize| {
                let mut doc = r#""my number 123456789018""#.to_string();
                for _ in 0..depth {
                    doc = format!(r#"{{"k": {doc}}}"#);
                }
                doc
            };
            check_payload(object(max_json_depth).as_bytes(), &validator, limits).expect("at the limit");
            let refused = check_payload(object(max_json_depth + 1).as_bytes(), &validator, limits)
                .expect_err("one level deeper");
            assert_eq!(refused.reason, Reason::SchemaViolation);
            assert_eq!(
                refused.message,
                format!("payload nests deeper than {max_json_depth} levels (limits.max_json_depth)")
            );
            assert!(refused.violations.is_empty());
            // Far deeper than serde_json's own limit: still our answer, never its.
            let abyss = check_payload(object(1000).as_bytes(), &validator, limits).expect_err("deep");
            assert_eq!(abyss.message, refused.message);
        }
        // What is not JSON is still said so.
        let limits = CheckLimits { max_payload_bytes: 1 << 20, max_violations: 10, max_json_depth: 4 };
        let broken = check_payload(b"{\"k\": ", &validator, limits).expect_err("not JSON");
        assert!(broken.message.starts_with("payload is not JSON: "), "{}", broken.message);
    }
}
