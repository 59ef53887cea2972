//! The CloudEvents protobuf event format (`io.cloudevents.v1.CloudEvent`): optional attributes
//! and extensions in `attributes` with their CloudEvents types (`time` a timestamp,
//! `dataschema` a URI, the rest strings), `data` as `binary_data`.

use super::{
    event_schema, extension_key, extension_name, format_time, parse_schema_uri, parse_time, schema_field,
    schema_uri, source_uri, CloudEventError, SPEC_VERSION,
};
use crate::cloudevents_v1::cloud_event::{cloud_event_attribute_value::Attr, CloudEventAttributeValue, Data};
use crate::cloudevents_v1::CloudEvent;
use crate::v1::Event;
use base64::Engine as _;

fn value(attr: Attr) -> CloudEventAttributeValue {
    CloudEventAttributeValue { attr: Some(attr) }
}

/// `event` in the protobuf format.
pub fn to_proto(event: &Event) -> CloudEvent {
    let mut attributes = std::collections::HashMap::new();
    if !event.subject.is_empty() {
        attributes.insert("subject".to_string(), value(Attr::CeString(event.subject.clone())));
    }
    if let Some(t) = &event.time {
        attributes.insert("time".to_string(), value(Attr::CeTimestamp(*t)));
    }
    if !event.data_content_type.is_empty() {
        attributes
            .insert("datacontenttype".to_string(), value(Attr::CeString(event.data_content_type.clone())));
    }
    if let Some((subject, version)) = event_schema(event) {
        attributes.insert("dataschema".to_string(), value(Attr::CeUri(schema_uri(subject, version))));
    }
    for (key, v) in &event.extensions {
        attributes.insert(extension_name(key).into_owned(), value(Attr::CeString(v.clone())));
    }
    CloudEvent {
        id: event.id.clone(),
        source: source_uri(&event.source),
        spec_version: SPEC_VERSION.to_string(),
        r#type: event.r#type.clone(),
        attributes,
        data: (!event.data.is_empty()).then(|| Data::BinaryData(event.data.clone())),
    }
}

/// The event of an encoded protobuf-format CloudEvent.
pub fn from_slice(bytes: &[u8]) -> Result<Event, CloudEventError> {
    use prost::Message as _;
    let ce = CloudEvent::decode(bytes).map_err(|e| CloudEventError::NotProtobuf(e.to_string()))?;
    from_proto(ce)
}

/// `event` in the protobuf format, encoded.
pub fn to_vec(event: &Event) -> Vec<u8> {
    use prost::Message as _;
    to_proto(event).encode_to_vec()
}

/// A string-typed attribute (String, URI or URI-reference).
fn string_attr(name: &str, v: CloudEventAttributeValue) -> Result<String, CloudEventError> {
    match v.attr {
        Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s)) => Ok(s),
        _ => Err(CloudEventError::Invalid { attribute: name.into(), reason: "must be a string".into() }),
    }
}

/// The event of a protobuf-format CloudEvent.
pub fn from_proto(ce: CloudEvent) -> Result<Event, CloudEventError> {
    if ce.spec_version.is_empty() {
        return Err(CloudEventError::Missing("specversion"));
    }
    if ce.spec_version != SPEC_VERSION {
        return Err(CloudEventError::SpecVersion(ce.spec_version));
    }
    for (field, name) in [(&ce.id, "id"), (&ce.source, "source"), (&ce.r#type, "type")] {
        if field.is_empty() {
            return Err(CloudEventError::Missing(name));
        }
    }
    let mut event = Event {
        id: ce.id,
        source: super::department_of(&ce.source)?.to_string(),
        r#type: ce.r#type,
        ..Default::default()
    };
    let mut dataschema = None;
    for (name, v) in ce.attributes {
        match name.as_str() {
            "specversion" | "id" | "source" | "type" | "data" => {
                return Err(CloudEventError::Invalid {
                    attribute: name.clone(),
                    reason: "belongs in its own field, not in `attributes`".into(),
                })
            }
            "subject" => event.subject = string_attr(&name, v)?,
            "datacontenttype" => event.data_content_type = string_attr(&name, v)?,
            "dataschema" => dataschema = Some(string_attr(&name, v)?),
            "time" => {
                event.time = Some(match v.attr {
                    Some(Attr::CeTimestamp(t)) => t,
                    Some(Attr::CeString(s)) => parse_time(&s)?,
                    _ => {
                        return Err(CloudEventError::Invalid {
                            attribute: name,
                            reason: "must be a timestamp".into(),
                        })
                    }
                })
            }
            _ => {
                // Every CloudEvents type has a canonical string form (the one binary mode writes).
                let s = match v.attr {
                    Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s)) => s,
                    Some(Attr::CeBoolean(b)) => b.to_string(),
                    Some(Attr::CeInteger(i)) => i.to_string(),
                    Some(Attr::CeBytes(b)) => base64::engine::general_purpose::STANDARD.encode(b),
                    Some(Attr::CeTimestamp(t)) => format_time(&t).map_err(|e| CloudEventError::Invalid {
                        attribute: name.clone(),
                        reason: e.to_string(),
                    })?,
                    None => return Err(CloudEventError::ExtensionType { name, kind: "none (no value set)" }),
                };
                event.extensions.insert(extension_key(&name)?, s);
            }
        }
    }
    if let Some(uri) = dataschema {
        let (subject, version) = parse_schema_uri(&uri)?;
        event.schema = schema_field(subject, &event.r#type);
        event.schema_version = version;
    }
    event.data = match ce.data {
        None => Vec::new(),
        Some(Data::BinaryData(b)) => b,
        Some(Data::TextData(t)) => t.into_bytes(),
        Some(Data::ProtoData(_)) => {
            return Err(CloudEventError::Invalid {
                attribute: "data".into(),
                reason: "proto_data (google.protobuf.Any) is not supported; send binary_data or text_data"
                    .into(),
            })
        }
    };
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::testing;
    use proptest::prelude::*;

    fn minimal() -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: "urn:kakehashi:department:mhlw".into(),
            spec_version: "1.0".into(),
            r#type: "a.b".into(),
            ..Default::default()
        }
    }

    #[test]
    fn typed_extensions_take_their_canonical_string_form() {
        let mut ce = minimal();
        ce.attributes.insert("flag".into(), value(Attr::CeBoolean(true)));
        ce.attributes.insert("n".into(), value(Attr::CeInteger(-7)));
        ce.attributes.insert("raw".into(), value(Attr::CeBytes(vec![0, 1, 2])));
        ce.data = Some(Data::TextData("{}".into()));
        let e = from_proto(ce).expect("valid");
        let ext = |k: &str| e.extensions.get(k).map(String::as_str);
        assert_eq!((ext("flag"), ext("n"), ext("raw")), (Some("true"), Some("-7"), Some("AAEC")));
        assert_eq!(e.data, b"{}");
    }

    #[test]
    fn bad_events_name_the_attribute() {
        let mut cases = Vec::new();
        let mut ce = minimal();
        ce.spec_version = "0.3".into();
        cases.push((ce, "specversion"));
        let mut ce = minimal();
        ce.r#type.clear();
        cases.push((ce, "type"));
        let mut ce = minimal();
        ce.attributes.insert("ext".into(), CloudEventAttributeValue { attr: None });
        cases.push((ce, "ext"));
        let mut ce = minimal();
        ce.attributes.insert("time".into(), value(Attr::CeBoolean(true)));
        cases.push((ce, "time"));
        let mut ce = minimal();
        ce.data = Some(Data::ProtoData(prost_types::Any::default()));
        cases.push((ce, "data"));
        let mut ce = minimal();
        ce.attributes.insert("dataschema".into(), value(Attr::CeUri("https://example.com/s".into())));
        cases.push((ce, "dataschema"));
        let mut ce = minimal();
        ce.attributes.insert("Upper".into(), value(Attr::CeString("x".into())));
        cases.push((ce, "Upper"));
        assert!(matches!(from_slice(b"\xff"), Err(CloudEventError::NotProtobuf(_))));
        for (ce, attribute) in cases {
            let e = from_proto(ce).expect_err(attribute);
            assert_eq!(e.attribute(), Some(attribute), "{e}");
        }
    }

    proptest! {
        #[test]
        fn from_proto_inverts_to_proto(e in testing::event()) {
            prop_assert_eq!(from_slice(&to_vec(&e)), Ok(e));
        }
    }
}
