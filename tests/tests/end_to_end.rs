//! One event end to end: register a schema, allow a flow, subscribe, publish a valid and an
//! invalid event through the Publisher; the subscriber gets exactly the valid one, the invalid
//! one is dead-lettered naming the failing field, and garbage bytes are dead-lettered too.

use kakehashi_proto::v1::publisher_client::PublisherClient;
use kakehashi_proto::v1::{DeadLetter, Event};
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
use prost::Message as _;
use std::time::Duration;

const TYPE: &str = "test.dose.recorded";
const SOURCE: &str = "city-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: "mhlw", subscription: "doses" };

fn schema() -> String {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["dose_number", "vaccine"],
        "properties": {
            "dose_number": {"type": "integer", "minimum": 1},
            "vaccine": {"type": "string"}
        },
        "additionalProperties": false
    })
    .to_string()
}

fn event(data: serde_json::Value) -> Event {
    Event {
        source: SOURCE.into(),
        r#type: TYPE.into(),
        data: data.to_string().into_bytes(),
        ..Default::default()
    }
}

/// Reads the dead letters of one subject from KH_DLQ.
async fn dead_letters(js: &async_nats::jetstream::Context, subject: &str) -> Vec<DeadLetter> {
    let Ok(mut stream) = js.get_stream("KH_DLQ").await else { return vec![] };
    let Ok(info) = stream.info().await else { return vec![] };
    let last = info.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if m.subject.as_str() == subject {
                out.push(DeadLetter::decode(m.payload.as_ref()).expect("DeadLetter body"));
            }
        }
    }
    out
}

/// Waits (20 s at most) until this flow's subject has dead letters in KH_DLQ; returns them.
async fn first_dead_letters(nats: &NatsServer, what: &str) -> Vec<DeadLetter> {
    let js = async_nats::jetstream::new(nats.admin().await);
    let dlq_subject = format!("kh.dlq.{SOURCE}.{TYPE}");
    wait::until(what, Duration::from_secs(20), || {
        let js = js.clone();
        let subject = dlq_subject.clone();
        async move { Some(dead_letters(&js, &subject).await).filter(|l| !l.is_empty()) }
    })
    .await
}

#[tokio::test]
async fn valid_event_is_delivered_and_invalid_one_is_dead_lettered_with_pointer() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let adapter = Adapter::start(adapter_config(&nats)).await;

    let reg = FLOW.prepare(&registry.endpoint(), schema()).await;
    assert_eq!(reg.version, 1);
    assert!(reg.created);
    let mut deliveries = FLOW.open(&registry.endpoint(), 10).await;

    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let valid = publisher
        .publish(event(serde_json::json!({"dose_number": 2, "vaccine": "mRNA"})))
        .await
        .expect("publish valid")
        .into_inner();
    assert!(valid.sequence > 0);
    assert!(!valid.duplicate);
    let invalid = publisher
        .publish(event(serde_json::json!({"dose_number": "two", "vaccine": "mRNA"})))
        .await
        .expect("publish invalid")
        .into_inner();
    assert_ne!(valid.event_id, invalid.event_id);

    let got = deliveries.expect_and_ack("the valid event", Duration::from_secs(20)).await;
    let ev = got.event.expect("event");
    assert_eq!(ev.id, valid.event_id);
    assert_eq!(ev.source, SOURCE);

    let letters = first_dead_letters(&nats, "the invalid event in KH_DLQ").await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.reason, "schema_violation");
    assert_eq!(letter.event_id, invalid.event_id);
    assert!(
        letter.violations.iter().any(|v| v.pointer == "/dose_number"),
        "violations: {:?}",
        letter.violations
    );
    assert!(letter.message.contains("/dose_number"));
    let raw = Event::decode(letter.raw.as_ref()).expect("raw bytes are the original envelope");
    assert_eq!(raw.id, invalid.event_id);

    // The invalid event was validated after the valid one, so nothing else can still arrive;
    // make sure nothing does.
    deliveries.expect_nothing_for(Duration::from_millis(1500), "only the valid event is delivered").await;
    drop(registry);
}

#[tokio::test]
async fn garbage_bytes_on_ingress_are_dead_lettered_as_malformed_and_registry_keeps_serving() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let client = nats.admin().await;
    let js = async_nats::jetstream::new(client);
    let garbage: &[u8] = &[0xff, 0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef];
    js.publish("kh.in.city-x.some.type", garbage.to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored in KH_INGRESS");

    let letters = wait::until("garbage in KH_DLQ", Duration::from_secs(20), || {
        let js = js.clone();
        async move { Some(dead_letters(&js, "kh.dlq.city-x.some.type").await).filter(|l| !l.is_empty()) }
    })
    .await;
    assert_eq!(letters[0].reason, "malformed_envelope");
    assert_eq!(letters[0].raw, garbage, "raw bytes kept exactly");
    assert_eq!(letters[0].original_subject, "kh.in.city-x.some.type");

    // Still serving: health answers and a registration works.
    kakehashi_tests::services::wait_serving(registry.addr).await;
    bus::register_schema(&registry.endpoint(), TYPE, schema()).await;
}

#[tokio::test]
async fn a_payload_naming_a_key_twice_is_dead_lettered_not_delivered() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let adapter = Adapter::start(adapter_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), schema()).await;
    let mut deliveries = FLOW.open(&registry.endpoint(), 10).await;

    // Valid if the last `dose_number` counts (as a serde_json `Value` reads it), invalid if the
    // first does (as other parsers read it): the bus must not pick one for its readers.
    let twice = Event {
        data: br#"{"dose_number": "two", "dose_number": 2, "vaccine": "mRNA"}"#.to_vec(),
        ..event(serde_json::json!({}))
    };
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let ack = publisher.publish(twice.clone()).await.expect("publish").into_inner();

    let letters = first_dead_letters(&nats, "the event in KH_DLQ").await;
    let letter = &letters[0];
    assert_eq!(letter.reason, "schema_violation");
    assert_eq!(letter.event_id, ack.event_id);
    assert!(letter.message.contains("duplicate key"), "{}", letter.message);
    let raw = Event::decode(letter.raw.as_ref()).expect("raw bytes are the original envelope");
    assert_eq!(raw.data, twice.data, "the payload is kept byte for byte");
    deliveries.expect_nothing_for(Duration::from_millis(1500), "nothing is delivered").await;
}
