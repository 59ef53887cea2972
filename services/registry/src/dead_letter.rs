//! Building the `DeadLetter` record and its headers: one place, used by the validator and by
//! delivery (`delivery_exhausted`).

use crate::validator::reason::Reason;
use async_nats::HeaderMap;
use kakehashi_proto::subjects::{self, HEADER_EVENT_ID, HEADER_REASON};
use kakehashi_proto::v1::{DeadLetter, Event, FieldViolation};
use prost::Message as _;

/// A dead letter ready to publish.
#[derive(Debug)]
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

/// Room [`build_within`] leaves under its limit for headers the caller adds (`Nats-Msg-Id`).
pub const CALLER_HEADERS_ROOM: usize = 128;

/// Longest `message` kept when a dead letter must be shortened to fit.
const SHORT_MESSAGE: usize = 512;

/// A dead letter that does not fit its stream even shortened: the raw bytes with the fields
/// around them are over the limit (the raw bytes are never cut).
#[derive(Debug, thiserror::Error)]
#[error("the dead letter is {size} bytes with its headers, over the limit of {limit} (KH_DLQ's max_message_size or the server's max_payload; topology.max_message_bytes)")]
pub struct TooLarge {
    /// Its size, shortened as far as it goes.
    pub size: usize,
    /// The limit.
    pub limit: usize,
    /// The letter anyway (its publish will be refused, so its failure is logged).
    pub letter: Outgoing,
}

/// The size of a NATS message of `headers` and a body of `body` bytes, as the server and
/// JetStream count it (`max_payload`, `max_message_size`).
pub fn message_len(headers: &HeaderMap, body: usize) -> usize {
    let mut len = b"NATS/1.0\r\n".len() + b"\r\n".len();
    for (name, values) in headers.iter() {
        for v in values {
            len += AsRef::<[u8]>::as_ref(name).len() + 2 + v.as_str().len() + 2;
        }
    }
    len + body
}

/// [`build`], shortened when the letter with its headers (and [`CALLER_HEADERS_ROOM`]) would be
/// over `limit` bytes: an event id that is not a valid id is left out first (the raw bytes hold
/// it), then the field violations (counted in the message), then the message is cut to a few
/// hundred bytes. The raw bytes are always kept whole: a letter still too large is
/// [`TooLarge`].
pub fn build_within(d: Details<'_>, limit: usize) -> Result<Outgoing, Box<TooLarge>> {
    let (subject, headers, mut letter) = letter(d);
    let budget = limit.saturating_sub(CALLER_HEADERS_ROOM);
    let size = |l: &DeadLetter| message_len(&headers, l.encoded_len());
    if size(&letter) > budget && !kakehashi_proto::ids::is_valid_event_id(&letter.event_id) {
        letter.event_id.clear();
    }
    if size(&letter) > budget && !letter.violations.is_empty() {
        let n = letter.violations.len();
        letter.violations.clear();
        letter.message =
            format!("{} ({n} field violations left out to fit KH_DLQ)", shorten(&letter.message));
    }
    if size(&letter) > budget && letter.message.len() > SHORT_MESSAGE {
        letter.message = format!("{}…", shorten(&letter.message));
    }
    let fits = size(&letter) <= budget;
    let total = size(&letter) + CALLER_HEADERS_ROOM;
    let out = Outgoing { subject, headers, body: letter.encode_to_vec() };
    if fits {
        Ok(out)
    } else {
        Err(Box::new(TooLarge { size: total, limit, letter: out }))
    }
}

/// The first [`SHORT_MESSAGE`] bytes of `m` (on a character boundary).
fn shorten(m: &str) -> &str {
    let mut end = m.len().min(SHORT_MESSAGE);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    &m[..end]
}

/// Builds the dead letter. Its subject takes the department and type from the ingress subject,
/// else (delivery failures) from the envelope, and `unknown` when neither is usable.
pub fn build(d: Details<'_>) -> Outgoing {
    let (subject, headers, letter) = letter(d);
    Outgoing { subject, headers, body: letter.encode_to_vec() }
}

/// The dead letter's subject, headers and record.
fn letter(d: Details<'_>) -> (String, HeaderMap, DeadLetter) {
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
    (subjects::dead_letter(&source, &event_type), headers, letter)
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details<'a>(raw: &'a [u8], event: Option<&'a Event>, violations: usize) -> Details<'a> {
        Details {
            reason: Reason::SchemaViolation,
            message: "m".repeat(2000),
            violations: (0..violations)
                .map(|i| FieldViolation {
                    pointer: format!("/f{i}"),
                    message: "x".repeat(100),
                    ..Default::default()
                })
                .collect(),
            original_subject: "kh.ip.3.city-x._7.test.record",
            raw,
            event,
            actor: "registry@test",
            subscription: "",
            schema_version: 1,
        }
    }

    #[test]
    fn a_letter_that_fits_is_not_shortened() {
        let raw = vec![7u8; 1000];
        let full = build(details(&raw, None, 3));
        let within = build_within(details(&raw, None, 3), 1 << 20).expect("fits");
        let (a, b) = (DeadLetter::decode(full.body.as_slice()), DeadLetter::decode(within.body.as_slice()));
        let (a, b) = (a.expect("decodes"), b.expect("decodes"));
        assert_eq!(a.violations, b.violations);
        assert_eq!(a.message, b.message);
    }

    #[test]
    fn a_letter_too_large_loses_its_extras_but_never_raw_bytes() {
        let raw = vec![7u8; 100_000];
        // An invalid id as long as the raw bytes: kept, the letter would be twice the message.
        let event = Event { id: "i".repeat(100_000), ..Default::default() };
        let limit = 100_000 + 4096;
        let out = build_within(details(&raw, Some(&event), 100), limit).expect("fits shortened");
        assert!(message_len(&out.headers, out.body.len()) + CALLER_HEADERS_ROOM <= limit);
        let letter = DeadLetter::decode(out.body.as_slice()).expect("decodes");
        assert_eq!(letter.raw, raw);
        assert!(letter.event_id.is_empty());
        assert!(letter.violations.is_empty());
        assert!(letter.message.contains("100 field violations left out"), "{}", letter.message);
        assert!(letter.message.len() < 700, "{}", letter.message.len());

        let too_small = build_within(details(&raw, None, 0), 100_000).expect_err("raw alone is over");
        assert!(too_small.size > too_small.limit);
        let letter = DeadLetter::decode(too_small.letter.body.as_slice()).expect("decodes");
        assert_eq!(letter.raw, raw, "not cut even then");
    }
}
