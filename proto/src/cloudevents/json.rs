//! The CloudEvents JSON event format (`application/cloudevents+json`), as the adapter reads
//! it and as tests and tools write it. `data` is written as a JSON value when the content type
//! is JSON and the bytes are exactly what a JSON writer gives back for them, else as
//! `data_base64`, so that `data` always comes back byte for byte.

use super::{
    event_schema, extension_key, extension_name, format_time, parse_schema_uri, parse_time, schema_field,
    schema_uri, source_uri, CloudEventError, SPEC_VERSION,
};
use crate::v1::Event;
use base64::Engine as _;
use serde_json::{Map, Value};

/// Media type of the format.
pub const MEDIA_TYPE: &str = "application/cloudevents+json";

/// Whether a `datacontenttype` declares JSON data (`*/json`, `*/*+json`; absent counts as JSON).
pub fn is_json_content_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media.is_empty() || media.split_once('/').is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

/// `event` in the JSON format. Fails only for a `time` RFC 3339 cannot write.
pub fn to_json(event: &Event) -> Result<Value, CloudEventError> {
    let mut m = Map::new();
    m.insert("specversion".into(), SPEC_VERSION.into());
    m.insert("id".into(), event.id.clone().into());
    m.insert("source".into(), source_uri(&event.source).into());
    m.insert("type".into(), event.r#type.clone().into());
    if !event.subject.is_empty() {
        m.insert("subject".into(), event.subject.clone().into());
    }
    if let Some(t) = &event.time {
        m.insert("time".into(), format_time(t)?.into());
    }
    if !event.data_content_type.is_empty() {
        m.insert("datacontenttype".into(), event.data_content_type.clone().into());
    }
    if let Some((subject, version)) = event_schema(event) {
        m.insert("dataschema".into(), schema_uri(subject, version).into());
    }
    for (key, value) in &event.extensions {
        m.insert(extension_name(key).into_owned(), value.clone().into());
    }
    if !event.data.is_empty() {
        let as_json = is_json_content_type(&event.data_content_type)
            .then(|| serde_json::from_slice::<Value>(&event.data).ok())
            .flatten()
            .filter(|v| serde_json::to_vec(v).is_ok_and(|b| b == event.data));
        match as_json {
            Some(v) => m.insert("data".into(), v),
            None => m.insert(
                "data_base64".into(),
                base64::engine::general_purpose::STANDARD.encode(&event.data).into(),
            ),
        };
    }
    Ok(Value::Object(m))
}

/// `event` as a JSON document (UTF-8 bytes).
pub fn to_vec(event: &Event) -> Result<Vec<u8>, CloudEventError> {
    Ok(to_json(event)?.to_string().into_bytes())
}

/// The event of a JSON-format document, nesting at most
/// [`MAX_DEPTH_CEILING`](crate::strict_json::MAX_DEPTH_CEILING) levels deep.
pub fn from_slice(document: &[u8]) -> Result<Event, CloudEventError> {
    from_slice_within(document, crate::strict_json::MAX_DEPTH_CEILING)
}

/// The event of a JSON-format document whose arrays and objects nest at most `max_depth`
/// levels deep (`data` included). An object naming a key twice is refused: readers disagree on
/// which of the two counts (I-JSON, RFC 7493).
pub fn from_slice_within(document: &[u8], max_depth: usize) -> Result<Event, CloudEventError> {
    use crate::strict_json::{parse_within, ParseError};
    let v = parse_within(document, max_depth).map_err(|e| match e {
        ParseError::Json(e) => CloudEventError::NotJson(e.to_string()),
        ParseError::TooDeep { max_depth } => CloudEventError::TooDeep { max_depth },
    })?;
    from_json(v)
}

/// The event of a parsed JSON-format document.
pub fn from_json(document: Value) -> Result<Event, CloudEventError> {
    let Value::Object(mut m) = document else {
        return Err(CloudEventError::NotJson("the document is not a JSON object".into()));
    };
    let (data, data_base64) = (m.remove("data"), m.remove("data_base64"));
    // `null` is "unset" for attributes (not for `data`, where it is a JSON null payload).
    m.retain(|_, v| !v.is_null());
    let mut take = |name: &'static str| -> Result<Option<String>, CloudEventError> {
        match m.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(CloudEventError::Invalid {
                attribute: name.into(),
                reason: "must be a JSON string".into(),
            }),
        }
    };
    let required = |v: Option<String>, name: &'static str| {
        v.filter(|s| !s.is_empty()).ok_or(CloudEventError::Missing(name))
    };
    let spec = required(take("specversion")?, "specversion")?;
    if spec != SPEC_VERSION {
        return Err(CloudEventError::SpecVersion(spec));
    }
    let id = required(take("id")?, "id")?;
    let source = required(take("source")?, "source")?;
    let r#type = required(take("type")?, "type")?;
    let mut event = Event {
        id,
        source: super::department_of(&source)?.to_string(),
        subject: take("subject")?.unwrap_or_default(),
        time: take("time")?.map(|t| parse_time(&t)).transpose()?,
        data_content_type: take("datacontenttype")?.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(uri) = take("dataschema")? {
        let (subject, version) = parse_schema_uri(&uri)?;
        event.schema = schema_field(subject, &r#type);
        event.schema_version = version;
    }
    event.r#type = r#type;
    for (name, value) in m {
        let value = match value {
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            // CloudEvents Integer: 32-bit signed; the canonical string form is its decimal.
            Value::Number(n) => match n.as_i64().filter(|i| i32::try_from(*i).is_ok()) {
                Some(i) => i.to_string(),
                None => {
                    return Err(CloudEventError::ExtensionType {
                        name,
                        kind: "a number that is no 32-bit integer",
                    })
                }
            },
            Value::Array(_) => return Err(CloudEventError::ExtensionType { name, kind: "array" }),
            Value::Object(_) => return Err(CloudEventError::ExtensionType { name, kind: "object" }),
            Value::Null => continue,
        };
        event.extensions.insert(extension_key(&name)?, value);
    }
    event.data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(CloudEventError::DataTwice),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| CloudEventError::Invalid {
                attribute: "data_base64".into(),
                reason: format!("not base64: {e}"),
            })?,
        (None, Some(Value::Null)) | (None, None) => Vec::new(),
        (None, Some(_)) => {
            return Err(CloudEventError::Invalid {
                attribute: "data_base64".into(),
                reason: "must be a base64 string".into(),
            })
        }
        (Some(d), None) if is_json_content_type(&event.data_content_type) => serde_json::to_vec(&d)
            .map_err(|e| CloudEventError::Invalid { attribute: "data".into(), reason: e.to_string() })?,
        (Some(Value::String(s)), None) => s.into_bytes(),
        (Some(_), None) => {
            return Err(CloudEventError::Invalid {
                attribute: "data".into(),
                reason: "with a datacontenttype that is not JSON, data must be a string (or use data_base64)"
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

    fn attr_of(e: CloudEventError) -> Option<String> {
        e.attribute().map(String::from)
    }

    #[test]
    fn a_document_nested_past_the_limit_or_naming_a_key_twice_is_refused_by_our_reader() {
        // `data` an object around `levels - 2` arrays: `levels` levels with the document's own.
        let doc = |levels: usize| {
            format!(
                r#"{{"specversion":"1.0","type":"a.b","source":"mhlw","id":"1","data":{{"k":{}{}}}}}"#,
                "[".repeat(levels - 2),
                "]".repeat(levels - 2)
            )
        };
        assert!(from_slice_within(doc(8).as_bytes(), 8).is_ok(), "at the limit");
        for levels in [9, 1000] {
            let e = from_slice_within(doc(levels).as_bytes(), 8).expect_err("too deep");
            assert!(matches!(e, CloudEventError::TooDeep { max_depth: 8 }), "{levels}: {e:?}");
            assert_eq!(
                e.to_string(),
                "the CloudEvents JSON document nests deeper than 8 levels (max_json_depth)"
            );
        }
        // Which `id` would a reader take? None: the document is refused.
        let twice = br#"{"specversion":"1.0","type":"a.b","source":"mhlw","id":"1","id":"2"}"#;
        let e = from_slice(twice).expect_err("a key named twice");
        assert!(e.to_string().contains("duplicate key"), "{e}");
    }

    #[test]
    fn reads_the_spec_examples() {
        let doc = br#"{
            "specversion": "1.0", "type": "com.example.someevent", "source": "urn:kakehashi:department:mhlw",
            "id": "C234-1234-1234", "time": "2018-04-05T17:31:00Z", "subject": null,
            "comexampleextension1": "value", "comexampleothervalue": 5, "flag": true, "unsetextension": null,
            "datacontenttype": "application/json", "data": {"appinfoA": "abc", "appinfoB": 123}
        }"#;
        let e = from_slice(doc).expect("valid");
        assert_eq!(e.source, "mhlw");
        assert_eq!(e.subject, "");
        assert_eq!(e.extensions.get("comexampleothervalue").map(String::as_str), Some("5"));
        assert_eq!(e.extensions.get("flag").map(String::as_str), Some("true"));
        assert!(!e.extensions.contains_key("unsetextension"));
        assert_eq!(e.data, br#"{"appinfoA":"abc","appinfoB":123}"#);
        let b64 = br#"{"specversion":"1.0","type":"a.b","source":"mhlw","id":"1","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;
        assert_eq!(from_slice(b64).expect("valid").data, vec![0, 1, 2]);
        let text = br#"{"specversion":"1.0","type":"a.b","source":"mhlw","id":"1","datacontenttype":"text/plain","data":"hi"}"#;
        assert_eq!(from_slice(text).expect("valid").data, b"hi");
    }

    #[test]
    fn bad_documents_name_the_attribute() {
        let base = r#""type":"a.b","source":"mhlw","id":"1""#;
        let cases = [
            (format!(r#"{{"specversion":"0.3",{base}}}"#), "specversion"),
            (r#"{"specversion":"1.0","source":"mhlw","id":"1"}"#.to_string(), "type"),
            (r#"{"specversion":"1.0","type":"a.b","source":"mhlw"}"#.to_string(), "id"),
            (r#"{"type":"a.b","source":"mhlw","id":"1"}"#.to_string(), "specversion"),
            (format!(r#"{{"specversion":"1.0",{base},"data":1,"data_base64":"AA=="}}"#), "data_base64"),
            (format!(r#"{{"specversion":"1.0",{base},"ext":{{"a":1}}}}"#), "ext"),
            (format!(r#"{{"specversion":"1.0",{base},"ext":[1]}}"#), "ext"),
            (format!(r#"{{"specversion":"1.0",{base},"ext":1.5}}"#), "ext"),
            (format!(r#"{{"specversion":"1.0",{base},"Bad":"x"}}"#), "Bad"),
            (format!(r#"{{"specversion":"1.0",{base},"time":"yesterday"}}"#), "time"),
            (format!(r#"{{"specversion":"1.0",{base},"dataschema":"https://example.com/x"}}"#), "dataschema"),
            (r#"{"specversion":"1.0","type":"a.b","source":"/x/y","id":"1"}"#.to_string(), "source"),
            (format!(r#"{{"specversion":"1.0",{base},"data_base64":"!!"}}"#), "data_base64"),
            (format!(r#"{{"specversion":"1.0",{base},"subject":5}}"#), "subject"),
        ];
        for (doc, attribute) in cases {
            let e = from_slice(doc.as_bytes()).expect_err(&doc);
            assert_eq!(attr_of(e.clone()).as_deref(), Some(attribute), "{doc}: {e}");
            assert!(e.to_string().contains(attribute), "the message names {attribute}: {e}");
        }
        assert!(matches!(from_slice(b"[1]"), Err(CloudEventError::NotJson(_))));
    }

    #[test]
    fn json_data_is_written_as_json_when_that_keeps_its_bytes() {
        let mut e = Event {
            id: "1".into(),
            source: "mhlw".into(),
            r#type: "a.b".into(),
            data_content_type: "application/json".into(),
            data: br#"{"a":1}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(to_json(&e).expect("writes")["data"], serde_json::json!({"a": 1}));
        e.data = br#"{ "a" : 1 }"#.to_vec();
        assert!(to_json(&e).expect("writes").get("data_base64").is_some(), "spacing kept via base64");
    }

    proptest! {
        #[test]
        fn from_json_inverts_to_json(e in testing::event()) {
            let doc = to_vec(&e).expect("representable time");
            prop_assert_eq!(from_slice(&doc), Ok(e));
        }
    }
}
