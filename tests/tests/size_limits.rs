//! Size limits are the services' own, over real gRPC: the dry run (`ValidatePayload`) refuses
//! an oversized payload with the reason the bus dead-letters it for, and an oversized schema or
//! event gets `RESOURCE_EXHAUSTED` naming the configured limit from the service itself, not
//! `OUT_OF_RANGE` from the gRPC library's 4 MiB default. Only sizes over `max_request_bytes`
//! are left to the transport.

use kakehashi_proto::v1::publisher_client::PublisherClient;
use kakehashi_proto::v1::schema_registry_client::SchemaRegistryClient;
use kakehashi_proto::v1::{Event, RegisterSchemaRequest, ValidatePayloadRequest};
use kakehashi_tests::bus;
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
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
