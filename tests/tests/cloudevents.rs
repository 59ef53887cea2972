//! `kh.ev.>` carries binary-mode CloudEvents (the NATS protocol binding), read by a consumer
//! that knows only the CloudEvents spec: events published through the adapter's `Publish` and
//! its `PublishCloudEvent` (JSON and protobuf formats) are read from `KH_EVENTS` by
//! `tests/interop/cloudevents_consumer.py` — nats-py, its own binding parser and the stock
//! CloudEvents SDK's binary reader, nothing else — and every attribute checked. Delivery
//! rebuilds the same events from those messages, and still delivers one stored in the older
//! form (the whole protobuf `Event` as the body); bad CloudEvents are refused with
//! `INVALID_ARGUMENT` naming the attribute, and the source must be the caller.
//!
//! The consumer reads with the registry's own NATS identity, which already reads `KH_EVENTS`:
//! a third party needs nothing more than read access to the stream, and no department identity
//! gains `kh.ev.>` (`tests/tests/nats_lanes.rs`).

use kakehashi_ctl::nats_config::permissions::Service;
use kakehashi_proto::cloudevents;
use kakehashi_proto::cloudevents_v1::cloud_event::{
    cloud_event_attribute_value::Attr, CloudEventAttributeValue, Data,
};
use kakehashi_proto::cloudevents_v1::CloudEvent;
use kakehashi_proto::v1::publisher_client::PublisherClient;
use kakehashi_proto::v1::{publish_cloud_event_request, Event, PublishAck, PublishCloudEventRequest};
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{interop, Adapter, NatsServer, Registry};
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

const TYPE: &str = "test.ce.recorded";
const SOURCE: &str = "city-shibuya";
const TOKEN: &str = "tok-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: "mhlw", subscription: "ce" };
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const SOON: Duration = Duration::from_secs(30);

fn schema() -> Value {
    json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
    r
}

fn json_form(doc: Value) -> PublishCloudEventRequest {
    PublishCloudEventRequest {
        event: Some(publish_cloud_event_request::Event::Json(doc.to_string().into_bytes())),
    }
}

fn proto_form(ce: CloudEvent) -> PublishCloudEventRequest {
    PublishCloudEventRequest { event: Some(publish_cloud_event_request::Event::Protobuf(ce.encode_to_vec())) }
}

fn attr(a: Attr) -> CloudEventAttributeValue {
    CloudEventAttributeValue { attr: Some(a) }
}

async fn publish_ce(p: &mut PublisherClient<Channel>, request: PublishCloudEventRequest) -> PublishAck {
    p.publish_cloud_event(authed(request)).await.expect("PublishCloudEvent").into_inner()
}

/// What the consumer must read for one event: its attributes as strings, and its data.
struct Expected {
    attributes: HashMap<&'static str, String>,
    data: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_only_cloudevents_consumer_reads_every_attribute_from_kh_ev() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let mut config = adapter_config(&nats);
    config.credentials.insert(TOKEN.into(), SOURCE.into());
    let adapter = Adapter::start(config).await;
    assert_eq!(FLOW.prepare(&registry.endpoint(), schema()).await.version, 1);
    let mut sub = FLOW.open(&registry.endpoint(), 16).await;
    let mut p = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let schema_uri = format!("https://kakehashi.invalid/schemas/{TYPE}/1");
    let source_uri = format!("urn:kakehashi:department:{SOURCE}");

    // 1. `Publish`: a unicode record key, an extension CloudEvents can name, one it cannot
    //    (escaped), and trace context (the distributed-tracing extension).
    let published = Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: SOURCE.into(),
        r#type: TYPE.into(),
        subject: "鈴木 一郎/1".into(),
        data: br#"{"n":1}"#.to_vec(),
        extensions: [("region", "関東 %"), ("x-request", "a b"), ("traceparent", TRACEPARENT)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let first = p.publish(authed(published.clone())).await.expect("Publish").into_inner();

    // 2. `PublishCloudEvent`, JSON format, with a pinned dataschema and an integer extension.
    let second_id = kakehashi_proto::ids::new_event_id();
    let second = publish_ce(
        &mut p,
        json_form(json!({
            "specversion": "1.0", "id": second_id, "source": source_uri, "type": TYPE,
            "subject": "resident-2", "time": "2026-12-02T05:00:00.123456789Z",
            "datacontenttype": "application/json", "dataschema": schema_uri,
            "priority": 5, "data": {"n": 2}
        })),
    )
    .await;
    assert_eq!(second.event_id, second_id);

    // 3. `PublishCloudEvent`, protobuf format: the bare department id as source, a boolean
    //    extension, binary data (its id is required: CloudEvents has no "fill one in").
    let third_id = kakehashi_proto::ids::new_event_id();
    let third = publish_ce(
        &mut p,
        proto_form(CloudEvent {
            id: third_id.clone(),
            source: SOURCE.into(),
            spec_version: "1.0".into(),
            r#type: TYPE.into(),
            attributes: [
                ("subject".to_string(), attr(Attr::CeString("resident-3".into()))),
                ("datacontenttype".to_string(), attr(Attr::CeString("application/json".into()))),
                ("flag".to_string(), attr(Attr::CeBoolean(true))),
            ]
            .into_iter()
            .collect(),
            data: Some(Data::BinaryData(br#"{"n":3}"#.to_vec())),
        }),
    )
    .await;
    assert_eq!(third.event_id, third_id);

    // Bad CloudEvents: INVALID_ARGUMENT naming the attribute; nothing published.
    let base = json!({"specversion": "1.0", "id": kakehashi_proto::ids::new_event_id(), "source": source_uri, "type": TYPE, "data": {"n": 0}});
    let with = |k: &str, v: Value| {
        let mut d = base.clone();
        d[k] = v;
        d
    };
    let without = |k: &str| {
        let mut d = base.clone();
        d.as_object_mut().expect("object").remove(k);
        d
    };
    let bad: Vec<(PublishCloudEventRequest, &str)> = vec![
        (json_form(without("type")), "`type`"),
        (json_form(without("id")), "`id`"),
        (json_form(with("specversion", json!("0.3"))), "specversion"),
        (json_form(with("data_base64", json!("e30="))), "data_base64"),
        (json_form(with("nested", json!({"a": 1}))), "nested"),
        (json_form(with("dataschema", json!("https://example.com/s.json"))), "dataschema"),
        (json_form(with("source", json!("/somewhere/else"))), "source"),
        (
            proto_form(CloudEvent {
                id: "1".into(),
                source: source_uri.clone(),
                spec_version: "1.0".into(),
                r#type: TYPE.into(),
                attributes: [("unset".to_string(), CloudEventAttributeValue { attr: None })]
                    .into_iter()
                    .collect(),
                data: None,
            }),
            "unset",
        ),
        (PublishCloudEventRequest { event: None }, "json"),
    ];
    for (request, names) in bad {
        let status = p.publish_cloud_event(authed(request)).await.expect_err(names);
        assert_eq!(status.code(), Code::InvalidArgument, "{names}: {status:?}");
        assert!(status.message().contains(names), "the refusal names {names}: {}", status.message());
    }
    // Identity rules are `Publish`'s: the authenticated department must be the source.
    let other = with("source", json!("urn:kakehashi:department:mhlw"));
    let status = p.publish_cloud_event(authed(json_form(other))).await.expect_err("as another department");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = p
        .publish_cloud_event(tonic::Request::new(json_form(base.clone())))
        .await
        .expect_err("no credentials");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The reader gets the three events, rebuilt from the CloudEvents as they were published.
    let mut delivered = HashMap::new();
    for _ in 0..3 {
        let d = sub.expect_and_ack("a published event", SOON).await;
        let e = d.event.expect("event");
        delivered.insert(e.id.clone(), e);
    }
    let d1 = &delivered[&first.event_id];
    assert_eq!(
        (d1.subject.as_str(), d1.data.as_slice()),
        (published.subject.as_str(), published.data.as_slice())
    );
    for k in ["region", "x-request"] {
        assert_eq!(d1.extensions.get(k), published.extensions.get(k), "extension {k}");
    }
    assert_eq!(d1.data_content_type, "application/json");
    assert!(d1.time.is_some(), "the adapter's time");
    let d2 = &delivered[&second_id];
    assert_eq!((d2.schema.as_str(), d2.schema_version), ("", 1), "the pinned dataschema, as an envelope pin");
    assert_eq!(d2.time.map(|t| (t.seconds, t.nanos)), Some((1_796_187_600, 123_456_789)));
    assert_eq!(d2.extensions.get("priority").map(String::as_str), Some("5"));
    assert_eq!(d2.data, br#"{"n":2}"#);
    let d3 = &delivered[&third_id];
    assert_eq!(
        (d3.subject.as_str(), d3.extensions.get("flag").map(String::as_str)),
        ("resident-3", Some("true"))
    );

    // The spec-only consumer reads every attribute from the `ce-` headers and the body.
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let common = |id: &str, subject: &str| -> HashMap<&'static str, String> {
        [
            ("specversion", "1.0".to_string()),
            ("id", id.to_string()),
            ("source", source_uri.clone()),
            ("type", TYPE.to_string()),
            ("subject", subject.to_string()),
            ("datacontenttype", "application/json".to_string()),
            ("dataschema", schema_uri.clone()),
        ]
        .into_iter()
        .collect()
    };
    let mut a1 = common(&first.event_id, "鈴木 一郎/1");
    a1.insert("region", "関東 %".into());
    a1.insert("khx782d72657175657374", "a b".into());
    a1.insert("traceparent", TRACEPARENT.into());
    expected.insert(first.event_id.clone(), Expected { attributes: a1, data: json!({"n": 1}) });
    let mut a2 = common(&second_id, "resident-2");
    a2.insert("time", "2026-12-02T05:00:00.123456789Z".into());
    a2.insert("priority", "5".into());
    expected.insert(second_id.clone(), Expected { attributes: a2, data: json!({"n": 2}) });
    let mut a3 = common(&third_id, "resident-3");
    a3.insert("flag", "true".into());
    expected.insert(third_id.clone(), Expected { attributes: a3, data: json!({"n": 3}) });

    let creds = nats.generated().service(Service::Registry);
    let args = vec![
        "--url".to_string(),
        nats.url(),
        "--creds".into(),
        creds.display().to_string(),
        "--count".into(),
        "3".into(),
    ];
    let out = interop::run("cloudevents_consumer.py", args, Duration::from_secs(120)).await;
    interop::expect_success("cloudevents_consumer.py", &out);
    println!("cloudevents_consumer.py read:\n{}", String::from_utf8_lossy(&out.stdout));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        let attrs = line["attributes"].as_object().expect("attributes");
        let id = attrs["id"].as_str().expect("id");
        let want = expected.remove(id).unwrap_or_else(|| panic!("unexpected event {id}: {line}"));
        assert_eq!(line["subject"], format!("kh.ev.{TYPE}"));
        for (k, v) in &want.attributes {
            assert_eq!(
                attrs.get(*k).and_then(Value::as_str),
                Some(v.as_str()),
                "attribute {k} of {id}: {line}"
            );
        }
        assert!(attrs.contains_key("time"), "every event has a time: {line}");
        let extra: Vec<&String> = attrs
            .keys()
            .filter(|k| k.as_str() != "time" && !want.attributes.contains_key(k.as_str()))
            .collect();
        assert!(extra.is_empty(), "attributes nobody published: {extra:?} in {line}");
        // The body is the data as published, byte for byte.
        assert_eq!(
            serde_json::from_str::<Value>(line["data"].as_str().expect("data")).ok(),
            Some(want.data.clone())
        );
        // The stock SDK read the same event.
        let sdk = &line["sdk"];
        for k in ["id", "source", "type", "specversion", "subject", "datacontenttype", "dataschema"] {
            assert_eq!(sdk[k].as_str(), want.attributes.get(k).map(String::as_str), "SDK {k}: {line}");
        }
        for (k, v) in
            want.attributes.iter().filter(|(k, _)| !cloudevents::CORE_ATTRIBUTES.contains(k) && **k != "time")
        {
            assert_eq!(sdk["extensions"][*k].as_str(), Some(v.as_str()), "SDK extension {k}: {line}");
        }
        assert!(sdk["time"].is_string(), "the SDK parsed the time: {line}");
        assert_eq!(sdk["data"], want.data, "the SDK's data: {line}");
    }
    assert!(expected.is_empty(), "not read by the consumer: {:?}", expected.keys().collect::<Vec<_>>());

    // A message stored before the validator wrote CloudEvents (no `ce-` headers, the whole
    // envelope as the body) is still delivered, whole.
    let mut old = Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: SOURCE.into(),
        r#type: TYPE.into(),
        subject: "resident-old".into(),
        time: Some(Default::default()),
        data_content_type: "application/json".into(),
        data: br#"{"n":4}"#.to_vec(),
        extensions: [("legacy".to_string(), "yes".to_string())].into_iter().collect(),
        ..Default::default()
    };
    if let Some(t) = old.time.as_mut() {
        t.seconds = 1_700_000_000;
    }
    let js = bus::jetstream(&nats).await;
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(old.encode_to_vec().into())
        .message_id(&old.id)
        .header(kakehashi_proto::subjects::HEADER_SCHEMA_VERSION, "1");
    js.send_publish(kakehashi_proto::subjects::events(TYPE), msg)
        .await
        .expect("publish")
        .await
        .expect("stored");
    let d = sub.expect_and_ack("the event stored in the older form", SOON).await;
    let got = d.event.expect("event");
    // As stored: delivery adds nothing to the event (its own context goes in EventDelivery).
    assert_eq!(got, old);
    assert_eq!(bus::stream_len(&js, bus::DLQ).await, 0, "nothing was dead-lettered");
}
