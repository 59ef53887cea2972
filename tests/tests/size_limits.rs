//! Size limits are the services' own, over real gRPC: the dry run (`ValidatePayload`) refuses
//! an oversized payload with the reason the bus dead-letters it for, and an oversized schema or
//! event gets `RESOURCE_EXHAUSTED` naming the configured limit from the service itself, not
//! `OUT_OF_RANGE` from the gRPC library's 4 MiB default. Only sizes over `max_request_bytes`
//! are left to the transport. And every message `KH_INGRESS` accepts, however close to its size
//! limit, can be dead-lettered whole: its partition never stalls on a letter `KH_DLQ` refuses.
//! Nesting too is limited by our own `limits.max_json_depth`, in the dry run and on the bus
//! alike, never by the JSON parser's built-in recursion limit.

use kakehashi_proto::subjects;
use kakehashi_proto::v1::publisher_client::PublisherClient;
use kakehashi_proto::v1::schema_registry_client::SchemaRegistryClient;
use kakehashi_proto::v1::{Event, RegisterSchemaRequest, ValidatePayloadRequest};
use kakehashi_tests::bus;
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
use prost::Message as _;
use serde_json::json;
use std::time::Duration;
use tonic::Code;

const TYPE: &str = "test.limits.record";
const SOURCE: &str = "city-shibuya";
const MB: usize = 1_000_000;

/// A JSON object of about `bytes` bytes.
fn padded(bytes: usize) -> Vec<u8> {
    json!({ "pad": "x".repeat(bytes) }).to_string().into_bytes()
}

#[tokio::test]
async fn dry_run_refuses_a_payload_over_the_limit_with_the_reason_the_bus_dead_letters_it_for() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    bus::register_schema(&registry.endpoint(), TYPE, r#"{"type":"object"}"#).await;
    let mut c = SchemaRegistryClient::connect(registry.endpoint()).await.expect("connect registry");
    // Valid JSON, valid under the schema, over the default 512 KiB payload limit.
    let payload = padded(700 * 1024);

    let dry = c
        .validate_payload(ValidatePayloadRequest {
            subject: TYPE.into(),
            version: 0,
            payload: payload.clone(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(!dry.valid, "a payload the bus dead-letters is not valid in the dry run");
    assert_eq!(dry.reason, "payload_too_large");
    assert_eq!(dry.violations.len(), 1, "{:?}", dry.violations);
    assert!(dry.violations[0].message.contains("limits.max_payload_bytes"), "{:?}", dry.violations);
    let small = c
        .validate_payload(ValidatePayloadRequest { subject: TYPE.into(), version: 0, payload: padded(10) })
        .await
        .expect("validate")
        .into_inner();
    assert!(small.valid && small.reason.is_empty(), "{small:?}");

    // The bus says the same of the same payload.
    let js = bus::jetstream(&nats).await;
    let event = Event { data: payload, ..bus::event(SOURCE, TYPE, 0) };
    bus::publish_ingress(&js, &event).await;
    let letter = wait::until("the dead letter", Duration::from_secs(10), || {
        let js = js.clone();
        async move { bus::dead_letters(&js).await.into_iter().next() }
    })
    .await;
    assert_eq!(letter.header("Kh-Reason").as_deref(), Some(dry.reason.as_str()));
}

/// A JSON object nested `depth` objects deep, a value at the bottom.
fn nested(depth: usize) -> Vec<u8> {
    let mut doc = json!("my number 123456789018");
    for _ in 0..depth {
        doc = json!({ "k": doc });
    }
    doc.to_string().into_bytes()
}

#[tokio::test]
async fn a_payload_nested_deeper_than_max_json_depth_is_dead_lettered_naming_the_limit() {
    let nats = NatsServer::start();
    let mut config = registry_config(&nats);
    config.limits.max_json_depth = 8;
    let registry = Registry::start(config).await;
    bus::register_schema(&registry.endpoint(), TYPE, r#"{"type":"object"}"#).await;
    bus::put_policy(&registry.endpoint(), TYPE, &[SOURCE], &[]).await;
    let expected = "payload nests deeper than 8 levels (limits.max_json_depth)";

    // The dry run: at the limit valid, one level deeper (or far deeper than the JSON parser's own
    // limit of 128) refused with our limit's message.
    let c = SchemaRegistryClient::connect(registry.endpoint()).await.expect("connect registry");
    let dry = |payload: Vec<u8>| {
        let request = ValidatePayloadRequest { subject: TYPE.into(), version: 0, payload };
        let mut c = c.clone();
        async move { c.validate_payload(request).await.expect("validate").into_inner() }
    };
    let at = dry(nested(8)).await;
    assert!(at.valid && at.reason.is_empty(), "{at:?}");
    for depth in [9, 200] {
        let deep = dry(nested(depth)).await;
        assert!(!deep.valid, "{depth}: {deep:?}");
        assert_eq!(deep.reason, "schema_violation", "{depth}");
        assert_eq!(deep.violations.len(), 1, "{depth}: {:?}", deep.violations);
        assert_eq!(deep.violations[0].message, expected, "{depth}");
    }

    // The bus says the same: the deeper event is dead-lettered, the one at the limit behind it
    // (same record key, same partition) is validated.
    let js = bus::jetstream(&nats).await;
    let deep = Event { data: nested(9), ..bus::event(SOURCE, TYPE, 0) };
    let at = Event { data: nested(8), ..bus::event(SOURCE, TYPE, 1) };
    let raw = bus::publish_ingress(&js, &deep).await;
    bus::publish_ingress(&js, &at).await;
    let letter = wait::until("the dead letter", Duration::from_secs(10), || {
        let js = js.clone();
        async move { bus::dead_letters(&js).await.into_iter().next() }
    })
    .await;
    assert_eq!(letter.letter.reason, "schema_violation", "{}", letter.letter.message);
    assert_eq!(letter.header("Kh-Reason").as_deref(), Some("schema_violation"));
    assert_eq!(letter.letter.message, expected);
    assert!(!letter.letter.message.contains("123456789018"), "no payload value is quoted");
    assert!(letter.letter.raw == raw, "the raw bytes are kept");
    wait::until("the event at the limit in KH_EVENTS", Duration::from_secs(10), || {
        let (js, id) = (js.clone(), at.id.clone());
        async move { bus::event_ids_in_events_stream(&js).await.contains(&id).then_some(()) }
    })
    .await;
    assert_eq!(bus::dead_letters(&js).await.len(), 1, "only the deeper event is dead-lettered");
}

#[tokio::test]
async fn an_8_mb_schema_is_refused_by_the_registry_naming_max_schema_bytes() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let mut c = SchemaRegistryClient::connect(registry.endpoint()).await.expect("connect registry");
    let schema = json!({"type": "object", "description": "x".repeat(8 * MB)}).to_string();
    let refused = c
        .register_schema(RegisterSchemaRequest { subject: TYPE.into(), schema, ..Default::default() })
        .await
        .expect_err("over max_schema_bytes");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_schema_bytes"), "{}", refused.message());
}

#[tokio::test]
async fn a_10_mb_event_is_refused_by_the_adapter_naming_max_payload_bytes() {
    let nats = NatsServer::start();
    let adapter = Adapter::start(adapter_config(&nats)).await;
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let event = Event { data: padded(10 * MB), ..bus::event(SOURCE, TYPE, 0) };
    let refused = publisher.publish(event).await.expect_err("over max_payload_bytes");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_payload_bytes"), "{}", refused.message());
}

#[tokio::test]
async fn requests_over_max_request_bytes_are_refused_by_the_transport_naming_the_bound() {
    let nats = NatsServer::start();
    let mut config = registry_config(&nats);
    config.limits.max_request_bytes = 2 * 1024 * 1024;
    let registry = Registry::start(config).await;
    let mut c = SchemaRegistryClient::connect(registry.endpoint()).await.expect("connect registry");
    let schema = |bytes: usize| json!({"type": "object", "description": "x".repeat(bytes)}).to_string();

    let ours = c
        .register_schema(RegisterSchemaRequest {
            subject: TYPE.into(),
            schema: schema(MB),
            ..Default::default()
        })
        .await
        .expect_err("over max_schema_bytes");
    assert_eq!(ours.code(), Code::ResourceExhausted, "under the bound the service answers: {ours:?}");
    let absurd = c
        .register_schema(RegisterSchemaRequest {
            subject: TYPE.into(),
            schema: schema(3 * MB),
            ..Default::default()
        })
        .await
        .expect_err("over max_request_bytes");
    assert_eq!(absurd.code(), Code::OutOfRange, "{absurd:?}");
    assert!(absurd.message().contains("2097152"), "the bound is named: {}", absurd.message());
}

/// An event whose encoding is exactly `size` bytes (its `data` padded).
fn event_of_size(size: usize) -> Event {
    let mut event = bus::event(SOURCE, TYPE, 0);
    let mut pad = size.saturating_sub(event.encoded_len());
    loop {
        event.data = vec![b'x'; pad];
        match event.encoded_len() {
            n if n == size => return event,
            n if n > size => pad -= 1,
            // The length prefix of `data` grew by a byte less than assumed.
            _ => pad += 1,
        }
    }
}

#[tokio::test]
async fn a_message_just_under_the_ingress_limit_is_dead_lettered_whole_and_its_partition_moves_on() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    bus::register_schema(&registry.endpoint(), TYPE, r#"{"type":"object"}"#).await;
    bus::put_policy(&registry.endpoint(), TYPE, &[SOURCE], &[]).await;
    let admin = bus::jetstream(&nats).await;
    let mut ingress = admin.get_stream(subjects::STREAM_INGRESS).await.expect("KH_INGRESS");
    let limit = ingress.info().await.expect("KH_INGRESS info").config.max_message_size;
    let limit = usize::try_from(limit).expect("KH_INGRESS has a size limit");

    // The department itself publishes, straight to NATS, a message a few hundred bytes under
    // the stream's limit (headers included), then a valid event of the same key (so of the same
    // partition, validated only after the big one is settled).
    let client = nats
        .department_auth(SOURCE)
        .options("test-department")
        .expect("department credentials")
        .connect(nats.url())
        .await
        .expect("connect as the department");
    let js = async_nats::jetstream::new(client);
    let big = event_of_size(limit - 200);
    let valid = bus::event(SOURCE, TYPE, 1);
    assert_eq!(big.subject, valid.subject, "one record key, one partition");
    let subject = subjects::ingress(SOURCE, TYPE, &big.subject);
    let raw = big.encode_to_vec();
    js.publish(subject.clone(), raw.clone().into())
        .await
        .expect("publish the big message")
        .await
        .expect("KH_INGRESS stores a message under its limit");
    js.publish(subject, valid.encode_to_vec().into())
        .await
        .expect("publish the valid event")
        .await
        .expect("KH_INGRESS stores the valid event");

    let letter = wait::until("the big message's dead letter", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move { bus::dead_letters(&admin).await.into_iter().find(|l| !l.letter.raw.is_empty()) }
    })
    .await;
    assert_eq!(letter.letter.reason, "payload_too_large", "{}", letter.letter.message);
    assert_eq!(letter.header("Kh-Reason").as_deref(), Some("payload_too_large"));
    assert_eq!(letter.letter.raw.len(), raw.len(), "the raw bytes are kept whole");
    assert!(letter.letter.raw == raw, "the raw bytes are kept unchanged");
    assert!(letter.letter.message.contains("limits.max_payload_bytes"), "{}", letter.letter.message);

    // The partition moved on: the valid event behind it is validated.
    wait::until("the valid event in KH_EVENTS", Duration::from_secs(20), || {
        let (admin, id) = (admin.clone(), valid.id.clone());
        async move { bus::event_ids_in_events_stream(&admin).await.contains(&id).then_some(()) }
    })
    .await;
    bus::wait_stream_len(&admin, subjects::STREAM_INGRESS, 0, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_registry_lowers_an_old_ingress_limit_and_refuses_a_dead_letter_stream_too_small() {
    let nats = NatsServer::start();
    let admin = bus::jetstream(&nats).await;
    let max_size = |name: &'static str| {
        let admin = admin.clone();
        async move {
            let mut stream = admin.get_stream(name).await.expect("stream");
            stream.info().await.expect("stream info").config.max_message_size
        }
    };

    // KH_INGRESS as a version before the dead-letter room left it: as large as KH_DLQ.
    let registry = Registry::start(registry_config(&nats)).await;
    let (ingress, dlq) = (max_size(subjects::STREAM_INGRESS).await, max_size(subjects::STREAM_DLQ).await);
    assert!(ingress < dlq, "KH_INGRESS ({ingress}) leaves room under KH_DLQ ({dlq})");
    registry.stop().await;
    let mut config =
        admin.get_stream(subjects::STREAM_INGRESS).await.expect("KH_INGRESS").cached_info().config.clone();
    config.max_message_size = dlq;
    admin.update_stream(config).await.expect("enlarge KH_INGRESS");
    let registry = Registry::start(registry_config(&nats)).await;
    assert_eq!(max_size(subjects::STREAM_INGRESS).await, ingress, "lowered again at start");
    registry.stop().await;

    // A KH_DLQ made smaller than KH_INGRESS's messages: the registry refuses to start, naming it.
    let mut config =
        admin.get_stream(subjects::STREAM_DLQ).await.expect("KH_DLQ").cached_info().config.clone();
    config.max_message_size = ingress;
    admin.update_stream(config).await.expect("shrink KH_DLQ");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        kakehashi_registry::run(registry_config(&nats), listener, std::future::pending()),
    )
    .await
    .expect("refused at start, not served")
    .expect_err("a dead letter of the largest ingress message would not fit");
    let refused = refused.to_string();
    assert!(!refused.contains('\n'), "one line: {refused}");
    assert!(
        refused.contains("KH_DLQ")
            && refused.contains("max_message_size")
            && refused.contains("topology.max_message_bytes"),
        "{refused}"
    );
}
