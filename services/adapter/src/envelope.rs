//! Preparing an `Event` for the bus: defaults filled in (id, time, content type), limits
//! checked, and the NATS message built with `Nats-Msg-Id` = event id and W3C trace headers.

use async_nats::jetstream::message::PublishMessage;
use kakehashi_proto::v1::Event;
use kakehashi_proto::{ident, ids, subjects};
use kakehashi_runtime::telemetry::TraceContext;
use prost::Message as _;

/// Why an event was refused before reaching the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnvelopeError {
    /// Type is not lowercase dot-separated tokens.
    #[error("invalid event type {0:?}")]
    InvalidType(String),
    /// Id present but not a UUID/ULID.
    #[error("invalid event id {0:?}: use a UUID or ULID, or leave it empty")]
    InvalidId(String),
    /// Payload over the limit.
    #[error("payload is {size} bytes, over the limit of {limit} (max_payload_bytes)")]
    PayloadTooLarge {
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Payload is not JSON.
    #[error("payload is not JSON: {0}")]
    PayloadNotJson(String),
    /// Unsupported content type.
    #[error("data_content_type {0:?} is not supported (use application/json, or application/protobuf for a protobuf subject)")]
    ContentType(String),
    /// `schema` names a subject that is not one of the type's own (the bus would dead-letter it).
    #[error("schema {schema:?} is not a form of type {event_type:?}: leave it empty or name the type")]
    SchemaNotOfType {
        /// The named subject.
        schema: String,
        /// The event's type.
        event_type: String,
    },
}

impl EnvelopeError {
    /// Stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::InvalidType(_) => "invalid_type",
            EnvelopeError::InvalidId(_) => "invalid_id",
            EnvelopeError::PayloadTooLarge { .. } => "payload_too_large",
            EnvelopeError::PayloadNotJson(_) => "payload_not_json",
            EnvelopeError::ContentType(_) => "unsupported_content_type",
            EnvelopeError::SchemaNotOfType { .. } => "schema_not_of_type",
        }
    }
}

/// Fills defaults and checks the event; `source` is the caller's department.
pub fn prepare(mut event: Event, source: String, max_payload_bytes: usize) -> Result<Event, EnvelopeError> {
    event.source = source;
    if !ident::is_valid_event_type(&event.r#type) {
        return Err(EnvelopeError::InvalidType(event.r#type));
    }
    if !subjects::is_form_of_type(&event.schema, &event.r#type) {
        return Err(EnvelopeError::SchemaNotOfType { schema: event.schema, event_type: event.r#type });
    }
    if event.id.is_empty() {
        event.id = ids::new_event_id();
    } else if !ids::is_valid_event_id(&event.id) {
        return Err(EnvelopeError::InvalidId(event.id));
    }
    if event.data.len() > max_payload_bytes {
        return Err(EnvelopeError::PayloadTooLarge { size: event.data.len(), limit: max_payload_bytes });
    }
    match event.data_content_type.as_str() {
        "" => event.data_content_type = "application/json".into(),
        "application/json" => {}
        // Protobuf bytes of a protobuf subject: only the validator, which has the subject's
        // descriptors, can tell whether they decode.
        t if kakehashi_proto::PROTOBUF_CONTENT_TYPES.contains(&t) => {}
        other => return Err(EnvelopeError::ContentType(other.to_string())),
    }
    if event.data_content_type == "application/json" {
        // Only well-formedness here; the schema is the validator's job.
        serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
            .map_err(|e| EnvelopeError::PayloadNotJson(e.to_string()))?;
    }
    if event.time.is_none() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        event.time =
            Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 });
    }
    Ok(event)
}

/// The ingress subject and NATS message of a prepared event.
pub fn to_message(event: &Event) -> (String, PublishMessage) {
    to_message_traced(event, &std::collections::HashMap::new())
}

/// Like [`to_message`], with the W3C headers of the publishing span (`trace`), when there is
/// one, instead of the envelope's own context: the next hop becomes that span's child.
pub fn to_message_traced(
    event: &Event,
    trace: &std::collections::HashMap<String, String>,
) -> (String, PublishMessage) {
    let mut p = PublishMessage::build().payload(event.encode_to_vec().into()).message_id(&event.id);
    // One carrier's pair, and only a valid one: an invalid `traceparent` extension stays in the
    // event but is no trace context for the next hop.
    let context = TraceContext::from_map(trace).or_else(|| TraceContext::from_map(&event.extensions));
    for (h, v) in context.iter().flat_map(TraceContext::headers) {
        p = p.header(h, v);
    }
    (subjects::ingress(&event.source, &event.r#type, &event.subject), p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn event_with(extensions: &[(&str, &str)]) -> Event {
        Event {
            id: ids::new_event_id(),
            source: "city-x".into(),
            r#type: "otel.check.done".into(),
            extensions: extensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn protobuf_bytes_pass_to_the_validator_and_other_media_types_are_refused() {
        let with = |content_type: &str, data: &[u8]| Event {
            r#type: "health.vaccination.recorded".into(),
            schema: "health.vaccination.recorded.pb".into(),
            data_content_type: content_type.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        let bytes = [0x0a, 0x02, 0x08, 0x01];
        for t in ["application/protobuf", "application/x-protobuf"] {
            let prepared = prepare(with(t, &bytes), "city-x".into(), 1024).expect("protobuf accepted");
            assert_eq!((prepared.data_content_type.as_str(), &prepared.data[..]), (t, &bytes[..]));
        }
        let e = prepare(with("application/xml", b"<a/>"), "city-x".into(), 1024).expect_err("refused");
        assert_eq!(e.reason(), "unsupported_content_type");
        assert!(e.to_string().contains("application/protobuf"), "{e}");
        let e = prepare(with("application/json", &bytes), "city-x".into(), 1024).expect_err("not JSON");
        assert_eq!(e.reason(), "payload_not_json");
    }

    fn trace_headers(event: &Event) -> (Option<String>, Option<String>) {
        let (subject, msg) = to_message_traced(event, &HashMap::new());
        let headers = msg.outbound_message(subject).headers.unwrap_or_default();
        let get = |h: &str| headers.get(h).map(|v| v.as_str().to_string());
        (get(subjects::HEADER_TRACEPARENT), get(subjects::HEADER_TRACESTATE))
    }

    #[test]
    fn without_a_span_a_valid_extension_context_becomes_the_ingress_headers() {
        let event = event_with(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")]);
        assert_eq!(trace_headers(&event), (Some(VALID.into()), Some("congo=t61rcWkgMzE".into())));
    }

    #[test]
    fn an_invalid_extension_traceparent_and_its_tracestate_are_no_ingress_header() {
        for invalid in [
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "not a traceparent",
        ] {
            let event = event_with(&[("traceparent", invalid), ("tracestate", "congo=t61rcWkgMzE")]);
            assert_eq!(trace_headers(&event), (None, None), "{invalid}");
        }
    }
}
