//! The CloudEvents NATS protocol binding, binary content mode: every attribute a `ce-<name>`
//! header (value percent-encoded as the binding prescribes), the message body the event's
//! `data` bytes as they are. This is what `KH_EVENTS` holds; [`from_events_message`] also
//! reads the messages stored before (no `ce-specversion`, the body a protobuf `Event`).

use super::{
    event_schema, extension_key, extension_name, format_time, parse_schema_uri, percent_decode,
    percent_encode, schema_field, schema_uri, source_uri, CloudEventError, SOURCE_PREFIX, SPEC_VERSION,
};
use crate::v1::Event;
use async_nats::header::HeaderName;
use async_nats::HeaderMap;
use bytes::Bytes;
use prost::Message as _;

/// Prefix of every CloudEvents attribute header.
pub const PREFIX: &str = "ce-";
/// `specversion`: its presence marks a binary-mode message.
pub const SPECVERSION: &str = "ce-specversion";
/// `id`.
pub const ID: &str = "ce-id";
/// `source`.
pub const SOURCE: &str = "ce-source";
/// `type`.
pub const TYPE: &str = "ce-type";
/// `subject` (the record key).
pub const SUBJECT: &str = "ce-subject";
/// `time`.
pub const TIME: &str = "ce-time";
/// `datacontenttype`.
pub const DATACONTENTTYPE: &str = "ce-datacontenttype";
/// `dataschema`.
pub const DATASCHEMA: &str = "ce-dataschema";
/// The distributed tracing extension's `traceparent`.
const TRACEPARENT: &str = "ce-traceparent";
/// The distributed tracing extension's `tracestate`.
const TRACESTATE: &str = "ce-tracestate";
/// Not a CloudEvents attribute: present when the publisher left the schema version to the
/// validator (`schema_version` 0), while `ce-dataschema` names the version it validated against.
pub const HEADER_SCHEMA_LATEST: &str = "Kh-Schema-Latest";

/// The `ce-` headers of `event`. `validated_version` (0: none) is the schema version the
/// validator used; `ce-dataschema` names it.
pub fn headers(event: &Event, validated_version: u32) -> HeaderMap {
    // Static names and values moved in whole: this runs once per validated event.
    let name = HeaderName::from_static;
    let mut h = HeaderMap::new();
    h.insert(name(SPECVERSION), SPEC_VERSION);
    h.insert(name(ID), encoded(&event.id));
    h.insert(name(SOURCE), encoded_owned(source_uri(&event.source)));
    h.insert(name(TYPE), encoded(&event.r#type));
    if !event.subject.is_empty() {
        h.insert(name(SUBJECT), encoded(&event.subject));
    }
    // An unwritable time never gets here on the bus: the validator dead-letters it first.
    if let Some(t) = event.time.as_ref().and_then(|t| format_time(t).ok()) {
        h.insert(name(TIME), t);
    }
    if !event.data_content_type.is_empty() {
        h.insert(name(DATACONTENTTYPE), encoded(&event.data_content_type));
    }
    let schema =
        event_schema(event).or_else(|| (validated_version > 0).then_some((event.r#type.as_str(), 0)));
    if let Some((subject, pinned)) = schema {
        let version = if validated_version > 0 { validated_version } else { pinned };
        h.insert(name(DATASCHEMA), encoded_owned(schema_uri(subject, version)));
        if pinned == 0 && validated_version > 0 {
            h.insert(name(HEADER_SCHEMA_LATEST), "true");
        }
    }
    for (key, value) in &event.extensions {
        // The trace context, on nearly every event, under static names (no name allocation).
        match key.as_str() {
            "traceparent" => h.insert(name(TRACEPARENT), encoded(value)),
            "tracestate" => h.insert(name(TRACESTATE), encoded(value)),
            _ => h.insert(format!("{PREFIX}{}", extension_name(key)), encoded(value)),
        }
    }
    h
}

/// A header value: `value` percent-encoded.
fn encoded(value: &str) -> String {
    percent_encode(value).into_owned()
}

/// Like [`encoded`], reusing `value`'s allocation when nothing needs encoding.
fn encoded_owned(value: String) -> String {
    match percent_encode(&value) {
        std::borrow::Cow::Owned(e) => e,
        std::borrow::Cow::Borrowed(_) => value,
    }
}

/// The `KH_EVENTS` message of a validated event: its headers and, as the body, the `data`
/// field sliced out of the ingress envelope `raw` (no copy, no re-serialisation).
pub fn events_message(raw: &Bytes, event: &Event, validated_version: u32) -> (HeaderMap, Bytes) {
    let body = match data_slice(raw) {
        Some(d) if d[..] == event.data[..] => d,
        // Not reachable for an envelope prost decoded; kept correct rather than fast.
        _ => Bytes::from(event.data.clone()),
    };
    (headers(event, validated_version), body)
}

/// Whether a message is in binary mode (has `ce-specversion`, in any letter case).
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers.get(SPECVERSION).is_some()
        || headers.iter().any(|(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(SPECVERSION))
}

/// The event of a binary-mode message. Header names are matched in any letter case; values
/// are unquoted (RFC 7230 quoted strings) and percent-decoded.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Event, CloudEventError> {
    let mut event = Event { data: body.to_vec(), ..Default::default() };
    let (mut spec, mut id, mut source, mut ty, mut dataschema, mut latest) =
        (None, None, None, None, None, false);
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(HEADER_SCHEMA_LATEST) {
            latest = true;
            continue;
        }
        let Some(attr) = name
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &name[PREFIX.len()..])
        else {
            continue;
        };
        let attr = attr.to_ascii_lowercase();
        let raw = values.first().map(|v| v.as_str()).unwrap_or("");
        let value = header_value(raw)
            .map_err(|reason| CloudEventError::Invalid { attribute: attr.clone(), reason })?;
        match attr.as_str() {
            "specversion" => spec = Some(value),
            "id" => id = Some(value),
            "source" => source = Some(value),
            "type" => ty = Some(value),
            "subject" => event.subject = value,
            "time" => event.time = Some(super::parse_time(&value)?),
            "datacontenttype" => event.data_content_type = value,
            "dataschema" => dataschema = Some(value),
            _ => {
                event.extensions.insert(extension_key(&attr)?, value);
            }
        }
    }
    match spec {
        None => return Err(CloudEventError::Missing("specversion")),
        Some(v) if v != SPEC_VERSION => return Err(CloudEventError::SpecVersion(v)),
        Some(_) => {}
    }
    event.id = id.ok_or(CloudEventError::Missing("id"))?;
    let source = source.ok_or(CloudEventError::Missing("source"))?;
    // What this module wrote always has the URN; a bare department id is accepted as well.
    event.source = match source.strip_prefix(SOURCE_PREFIX) {
        Some(d) => d.to_string(),
        None => super::department_of(&source)?.to_string(),
    };
    event.r#type = ty.ok_or(CloudEventError::Missing("type"))?;
    if let Some(uri) = dataschema {
        let (subject, version) = parse_schema_uri(&uri)?;
        event.schema = schema_field(subject, &event.r#type);
        event.schema_version = if latest { 0 } else { version };
    }
    Ok(event)
}

/// A `KH_EVENTS` message that could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum StoredEventError {
    /// Binary mode, but not a CloudEvent this module can read.
    #[error("stored CloudEvent unreadable: {0}")]
    CloudEvent(#[from] CloudEventError),
    /// The older form, but the body is no protobuf `Event`.
    #[error("stored event undecodable: {0}")]
    Envelope(#[from] prost::DecodeError),
}

/// The event of a `KH_EVENTS` message in either form: binary-mode CloudEvent, or (stored
/// before the validator wrote CloudEvents) a protobuf `Event` as the whole body.
pub fn from_events_message(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Event, StoredEventError> {
    match headers.filter(|h| is_binary(h)) {
        Some(h) => Ok(decode(h, payload)?),
        None => Ok(Event::decode(payload)?),
    }
}

/// The stored event of a `KH_EVENTS` message as protobuf `Event` bytes, for records that keep
/// "the bytes as received" (a delivery dead letter's `raw`): re-encoded from a binary-mode
/// message, so that `raw` stays a whole envelope; the body itself for an older message or one
/// that cannot be read.
pub fn envelope_bytes<'a>(headers: Option<&HeaderMap>, payload: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    match headers.filter(|h| is_binary(h)).map(|h| decode(h, payload)) {
        Some(Ok(event)) => std::borrow::Cow::Owned(event.encode_to_vec()),
        _ => std::borrow::Cow::Borrowed(payload),
    }
}

/// A header value as the binding reads it: a double-quoted string unescaped first (older
/// writers), then one round of percent-decoding.
fn header_value(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        let mut unquoted = String::with_capacity(raw.len());
        let mut chars = raw[1..raw.len() - 1].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => unquoted.push(chars.next().ok_or("a quoted value ends in a backslash")?),
                c => unquoted.push(c),
            }
        }
        return percent_decode(&unquoted);
    }
    percent_decode(raw)
}

/// The bytes of field 7 (`data`) inside an encoded `Event`, as a slice of `raw`; None when
/// `raw` is not well-formed protobuf (the caller then copies the decoded field instead).
pub fn data_slice(raw: &Bytes) -> Option<Bytes> {
    fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos)?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let b = &raw[..];
    let (mut pos, mut found) = (0usize, None);
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        match key & 7 {
            0 => {
                varint(b, &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= b.len())?;
                // A repeated singular field: the last one wins, as in every protobuf decoder.
                if key >> 3 == 7 {
                    found = Some(pos..end);
                }
                pos = end;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
    }
    (pos == b.len()).then(|| found.map(|r| raw.slice(r)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::testing;
    use proptest::prelude::*;

    fn sample() -> Event {
        Event {
            id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            source: "city-shibuya".into(),
            r#type: "health.vaccination.recorded".into(),
            subject: "住民 1".into(),
            time: Some(prost_types::Timestamp { seconds: 1_764_633_600, nanos: 5 }),
            data_content_type: "application/json".into(),
            data: br#"{"dose":1}"#.to_vec(),
            schema: String::new(),
            schema_version: 0,
            extensions: [
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("trace-id", "x y"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }

    #[test]
    fn headers_are_what_a_cloudevents_reader_expects() {
        let e = sample();
        let h = headers(&e, 2);
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_string());
        assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(get("ce-id").as_deref(), Some(e.id.as_str()));
        assert_eq!(get("ce-source").as_deref(), Some("urn:kakehashi:department:city-shibuya"));
        assert_eq!(get("ce-type").as_deref(), Some("health.vaccination.recorded"));
        assert_eq!(get("ce-subject").as_deref(), Some("%E4%BD%8F%E6%B0%91%201"));
        assert_eq!(get("ce-time").as_deref(), Some("2025-12-02T00:00:00.000000005Z"));
        assert_eq!(get("ce-datacontenttype").as_deref(), Some("application/json"));
        assert_eq!(
            get("ce-dataschema").as_deref(),
            Some("https://kakehashi.invalid/schemas/health.vaccination.recorded/2"),
            "the version validated against, though the publisher pinned none"
        );
        assert_eq!(get("ce-traceparent").as_deref(), e.extensions.get("traceparent").map(String::as_str));
        assert_eq!(get("ce-khx74726163652d6964").as_deref(), Some("x%20y"));
        assert_eq!(decode(&h, &e.data), Ok(e));
    }

    #[test]
    fn reads_quoted_and_lowercase_hex_and_any_case() {
        let mut h = HeaderMap::new();
        h.insert("CE-SpecVersion", "1.0");
        h.insert("ce-id", "\"a\\\"b%20c\"");
        h.insert("Ce-Source", "mhlw");
        h.insert("ce-type", "a.b");
        h.insert("ce-subject", "%e2%82%ac");
        let e = decode(&h, b"{}").expect("decodes");
        assert_eq!((e.id.as_str(), e.source.as_str(), e.subject.as_str()), ("a\"b c", "mhlw", "€"));
    }

    #[test]
    fn refuses_what_is_not_a_1_0_event() {
        let mut h = headers(&sample(), 0);
        h.insert(SPECVERSION, "0.3");
        assert_eq!(decode(&h, b""), Err(CloudEventError::SpecVersion("0.3".into())));
        let mut h = HeaderMap::new();
        h.insert(SPECVERSION, "1.0");
        assert_eq!(decode(&h, b"").map_err(|e| e.attribute().map(String::from)), Err(Some("id".into())));
        let mut h = headers(&sample(), 0);
        h.insert(SUBJECT, "%C0%A0");
        assert_eq!(decode(&h, b"").map_err(|e| e.attribute().map(String::from)), Err(Some("subject".into())));
    }

    #[test]
    fn old_and_new_kh_events_messages_both_read() {
        let e = sample();
        let old = e.encode_to_vec();
        assert_eq!(from_events_message(None, &old).expect("old form"), e);
        let mut plain = HeaderMap::new();
        plain.insert("Nats-Msg-Id", e.id.as_str());
        assert_eq!(from_events_message(Some(&plain), &old).expect("old form with headers"), e);
        let (h, body) = events_message(&Bytes::from(old), &e, 1);
        assert_eq!(&body[..], &e.data[..]);
        assert_eq!(from_events_message(Some(&h), &body).expect("new form"), e);
        assert!(from_events_message(None, b"\xff\xff").is_err());
        // Map order is not fixed on the wire: compare what the bytes decode to.
        assert_eq!(Event::decode(envelope_bytes(Some(&h), &body).as_ref()).expect("an Event"), e);
        assert_eq!(envelope_bytes(None, b"old").as_ref(), b"old");
    }

    #[test]
    fn data_is_sliced_out_of_the_envelope() {
        let e = sample();
        let raw = Bytes::from(e.encode_to_vec());
        let d = data_slice(&raw).expect("well-formed");
        assert_eq!(&d[..], &e.data[..]);
        // Same allocation: a view into the ingress message, not a copy.
        assert!(raw.as_ptr() <= d.as_ptr() && d.as_ptr() < raw.as_ptr().wrapping_add(raw.len()));
        assert_eq!(data_slice(&Bytes::from(Event::default().encode_to_vec())), Some(Bytes::new()));
        assert_eq!(data_slice(&Bytes::from_static(b"\x3a\x05ab")), None, "truncated");
    }

    /// Per-event cost of the mapping against the envelope it replaced (docs/BENCHMARKS.md):
    /// `cargo test --release -p kakehashi-proto --lib cloudevents::binary::tests::cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check: run in release"]
    fn cost() {
        let mut e = sample();
        e.data =
            include_bytes!("../../../schemas/health.vaccination.recorded/examples/valid-mr-second-dose.json")
                .to_vec();
        e.subject = "resident-1".into();
        e.extensions.remove("trace-id");
        let raw = Bytes::from(e.encode_to_vec());
        let n = 200_000u32;
        let time = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        };
        let (h, body) = events_message(&raw, &e, 1);
        let mut sink = 0usize;
        let old_validate = time(&mut || sink += raw.clone().len());
        let new_validate = time(&mut || sink += events_message(&raw, &e, 1).0.len());
        let old_deliver =
            time(&mut || sink += Event::decode(raw.as_ref()).map(|e| e.data.len()).unwrap_or(0));
        let new_deliver =
            time(&mut || sink += from_events_message(Some(&h), &body).map(|e| e.data.len()).unwrap_or(0));
        let header_bytes: usize = h
            .iter()
            .map(|(k, v)| {
                AsRef::<str>::as_ref(k).len() + v.iter().map(|v| v.as_str().len() + 4).sum::<usize>()
            })
            .sum();
        println!(
            "envelope {} B; CloudEvent body {} B + ~{header_bytes} B of ce- headers\nvalidator: {old_validate:.0} ns -> {new_validate:.0} ns per event\ndelivery decode: {old_deliver:.0} ns -> {new_deliver:.0} ns per event ({sink})",
            raw.len(),
            body.len()
        );
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(e in testing::event(), validated in prop_oneof![Just(0u32), 1u32..50]) {
            // A pinned event is validated against its pin, never another version.
            let validated = if e.schema_version > 0 && validated > 0 { e.schema_version } else { validated };
            let h = headers(&e, validated);
            // Every header is sendable: printable ASCII.
            for (_, values) in h.iter() {
                for v in values {
                    prop_assert!(v.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)), "{:?}", v.as_str());
                }
            }
            prop_assert_eq!(decode(&h, &e.data), Ok(e.clone()));
            let raw = Bytes::from(e.encode_to_vec());
            let (h, body) = events_message(&raw, &e, validated);
            prop_assert_eq!(from_events_message(Some(&h), &body).ok(), Some(e.clone()));
            prop_assert_eq!(from_events_message(None, &raw).ok(), Some(e));
        }
    }
}
