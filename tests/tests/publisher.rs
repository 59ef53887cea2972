//! The adapter's `Publisher` service over real sockets: `Publish` acks name the `KH_INGRESS`
//! sequence and flag a repeated id as a duplicate; events of an unregistered type, payloads
//! that are not JSON or too large are refused with a reason — per event on `PublishStream`,
//! which answers every event in order and keeps going; with credentials configured the token
//! decides the source.
//!
//! The registry runs with its validator off, so published events stay in `KH_INGRESS` where the
//! tests can read them back; it is only there to register schemas the way operators do.

use kakehashi_proto::subjects::{ingress, published_ingress};
use kakehashi_proto::v1::publisher_client::PublisherClient;
use kakehashi_proto::v1::{Event, PublishAck};
use kakehashi_tests::bus::{register_schema, start_ingress_only, LENIENT_SCHEMA};
use kakehashi_tests::services::adapter_config;
use kakehashi_tests::{Adapter, NatsServer, Registry};
use prost::Message as _;
use tokio_stream::StreamExt;
use tonic::Code;

const TYPE: &str = "test.publisher.recorded";
const SOURCE: &str = "city-shibuya";

/// A bus with the test type registered; the validator is off so `KH_INGRESS` keeps what is
/// published.
async fn bus(
    tweak: impl FnOnce(&mut kakehashi_adapter::config::AdapterConfig),
) -> (NatsServer, Registry, Adapter) {
    let (nats, registry) = start_ingress_only(TYPE).await;
    let mut config = adapter_config(&nats);
    tweak(&mut config);
    let adapter = Adapter::start(config).await;
    (nats, registry, adapter)
}

fn event(n: usize) -> Event {
    Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: SOURCE.into(),
        r#type: TYPE.into(),
        data: serde_json::json!({ "n": n }).to_string().into_bytes(),
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    r
}

/// The `Event` stored at `sequence` in `KH_INGRESS`, with its subject.
async fn stored(nats: &NatsServer, sequence: u64) -> (String, Event) {
    let client = nats.admin().await;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("KH_INGRESS").await.expect("KH_INGRESS");
    let m = stream.get_raw_message(sequence).await.expect("stored message");
    (m.subject.to_string(), Event::decode(m.payload.as_ref()).expect("an Event"))
}

#[tokio::test]
async fn publish_ack_has_a_sequence_and_a_repeated_id_is_reported_as_duplicate() {
    let (nats, _registry, adapter) = bus(|_| {}).await;
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");

    let first = event(1);
    let ack = publisher.publish(first.clone()).await.expect("publish").into_inner();
    assert_eq!((ack.event_id.as_str(), ack.stream.as_str()), (first.id.as_str(), "KH_INGRESS"));
    assert!(ack.sequence > 0 && !ack.duplicate, "{ack:?}");

    let again = publisher.publish(first.clone()).await.expect("publish again").into_inner();
    assert!(again.duplicate, "same id again must be a duplicate: {again:?}");
    assert_eq!(again.sequence, ack.sequence, "a duplicate names the original's sequence");

    let other = publisher.publish(event(2)).await.expect("publish other").into_inner();
    assert!(!other.duplicate && other.sequence > ack.sequence);

    let (subject, stored) = stored(&nats, ack.sequence).await;
    assert_eq!(published_ingress(&subject), ingress(SOURCE, TYPE, &stored.subject), "stored as {subject}");
    assert_eq!(stored.data, first.data);
    assert_eq!(stored.data_content_type, "application/json", "filled in");
    assert!(stored.time.is_some(), "time filled in");
}

#[tokio::test]
async fn publish_refuses_unknown_type_bad_json_and_oversized_payloads_with_reasons() {
    let (_nats, registry, adapter) = bus(|c| c.max_payload_bytes = 1024).await;
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");

    let unknown = Event { r#type: "test.publisher.unregistered".into(), ..event(1) };
    let refused = publisher.publish(unknown.clone()).await.expect_err("unknown type");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("no schema is registered for test.publisher.unregistered"));

    let not_json = Event { data: b"{not json".to_vec(), ..event(2) };
    let refused = publisher.publish(not_json).await.expect_err("not JSON");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("payload is not JSON"), "{}", refused.message());

    let big =
        Event { data: serde_json::json!({ "pad": "x".repeat(2000) }).to_string().into_bytes(), ..event(3) };
    let refused = publisher.publish(big).await.expect_err("too large");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("over the limit of 1024"), "{}", refused.message());

    // Registered after the adapter started: accepted at once (the adapter catches up with
    // the schema bucket before refusing).
    register_schema(&registry.endpoint(), "test.publisher.unregistered", LENIENT_SCHEMA).await;
    let ack = publisher.publish(unknown).await.expect("registered now").into_inner();
    assert!(ack.sequence > 0);
}

/// The payload limit is not the only one: extensions count too. An event `KH_INGRESS` would
/// refuse is refused by `Publish` itself as final (RESOURCE_EXHAUSTED, its own reason), never
/// as a bus that is unavailable and worth a retry.
#[tokio::test]
async fn an_event_over_the_ingress_limit_through_its_extensions_is_refused_as_final() {
    let (nats, _registry, adapter) = bus(|_| {}).await;
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let mut big = event(1);
    big.extensions.insert("pad".into(), "x".repeat(1_100_000));
    let refused = publisher.publish(big).await.expect_err("too large for KH_INGRESS");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("bytes encoded, over the"), "{}", refused.message());
    assert!(refused.message().contains("topology.max_message_bytes"), "{}", refused.message());
    let js = async_nats::jetstream::new(nats.admin().await);
    let ingress = js.get_stream("KH_INGRESS").await.expect("KH_INGRESS").get_info().await.expect("info");
    assert_eq!(ingress.state.messages, 0, "nothing reached the bus");
}

#[tokio::test]
async fn publish_stream_answers_every_event_in_order_with_per_event_errors() {
    let (_nats, _registry, adapter) = bus(|c| c.max_payload_bytes = 1024).await;
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");

    // 1,000 events; in every hundred, one is not JSON, one too large, one of an unknown type.
    let expected_reason = |i: usize| match i % 100 {
        17 => Some("payload_not_json"),
        42 => Some("payload_too_large"),
        73 => Some("unknown_type"),
        _ => None,
    };
    let events: Vec<Event> = (0..1000)
        .map(|i| match expected_reason(i) {
            Some("payload_not_json") => Event { data: b"n=1".to_vec(), ..event(i) },
            Some("payload_too_large") => Event {
                data: serde_json::json!({ "pad": "y".repeat(4096) }).to_string().into_bytes(),
                ..event(i)
            },
            Some(_) => Event { r#type: "test.publisher.nowhere".into(), ..event(i) },
            None => event(i),
        })
        .collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let acks: Vec<PublishAck> = publisher
        .publish_stream(tokio_stream::iter(events))
        .await
        .expect("stream opens")
        .into_inner()
        .map(|a| a.expect("ack, not a broken stream"))
        .collect()
        .await;

    assert_eq!(acks.len(), 1000, "one ack per event");
    let mut last_sequence = 0;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.event_id, ids[i], "ack {i} out of order");
        match (expected_reason(i), &ack.error) {
            (None, None) => {
                assert!(ack.sequence > last_sequence, "sequences grow in order: {ack:?}");
                last_sequence = ack.sequence;
            }
            (Some(reason), Some(e)) => {
                assert_eq!(e.reason, reason, "event {i}: {e:?}");
                assert!(!e.message.is_empty());
                let code = match reason {
                    "payload_too_large" => Code::ResourceExhausted,
                    "unknown_type" => Code::FailedPrecondition,
                    _ => Code::InvalidArgument,
                };
                assert_eq!(e.code, code as i32, "event {i}: {e:?}");
                assert_eq!(ack.sequence, 0);
            }
            (want, got) => panic!("event {i}: expected error {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn with_credentials_the_token_decides_the_source() {
    let (nats, _registry, adapter) = bus(|config| {
        config.credentials.insert("tok-shibuya".into(), SOURCE.into());
        config.credentials.insert("tok-mhlw".into(), "mhlw".into());
    })
    .await;
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");

    let anonymous = publisher.publish(event(1)).await.expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let as_other = Event { source: "mhlw".into(), ..event(2) };
    let refused = publisher.publish(with_token(as_other, "tok-shibuya")).await.expect_err("claims mhlw");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // No source claimed: the token's department is the source.
    let unclaimed = Event { source: String::new(), ..event(3) };
    let ack = publisher.publish(with_token(unclaimed, "tok-shibuya")).await.expect("publish").into_inner();
    let (subject, stored) = stored(&nats, ack.sequence).await;
    assert_eq!(stored.source, SOURCE);
    assert_eq!(published_ingress(&subject), ingress(SOURCE, TYPE, &stored.subject), "stored as {subject}");

    // On a stream the refusal is that event's ack; the others go through.
    let batch = vec![event(4), Event { source: "mhlw".into(), ..event(5) }, event(6)];
    let acks: Vec<PublishAck> = publisher
        .publish_stream(with_token(tokio_stream::iter(batch), "tok-shibuya"))
        .await
        .expect("stream opens")
        .into_inner()
        .map(|a| a.expect("ack"))
        .collect()
        .await;
    let reasons: Vec<Option<&str>> =
        acks.iter().map(|a| a.error.as_ref().map(|e| e.reason.as_str())).collect();
    assert_eq!(reasons, [None, Some("permission_denied"), None]);
    assert_eq!(acks[1].error.as_ref().map(|e| e.code), Some(Code::PermissionDenied as i32));
}
