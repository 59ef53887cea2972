//! Dead-letter reason codes: stable strings that tools and people filter on.

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The bytes are not a decodable `Event`, or required envelope fields are missing.
    MalformedEnvelope,
    /// `Event.source` differs from the department in the subject.
    SourceMismatch,
    /// No schema is registered for the event's schema subject (or the pinned version).
    UnknownType,
    /// The payload does not satisfy its schema.
    SchemaViolation,
    /// The producer policy does not let the source publish this type.
    NotPermitted,
    /// The payload is over the configured size limit.
    PayloadTooLarge,
    /// A subscriber did not ack within the maximum number of deliveries.
    DeliveryExhausted,
}

impl Reason {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MalformedEnvelope => "malformed_envelope",
            Reason::SourceMismatch => "source_mismatch",
            Reason::UnknownType => "unknown_type",
            Reason::SchemaViolation => "schema_violation",
            Reason::NotPermitted => "not_permitted",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::DeliveryExhausted => "delivery_exhausted",
        }
    }
}
