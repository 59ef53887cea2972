//! One trace across processes: the adapter runs in this test process, the registry in its own
//! (`kh-registry`, set up like the real binary), each exporting over OTLP/gRPC to one real
//! receiver. The registry's spans join the trace the client started through the adapter: the
//! context crosses NATS headers between the processes and gRPC metadata to the subscriber.

use kakehashi_proto::v1::publisher_client;
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::otlp::{OtlpReceiver, ReceivedSpan};
use kakehashi_tests::process::RegistryProcess;
use kakehashi_tests::services::adapter_config;
use kakehashi_tests::{wait, Adapter, NatsServer};
use std::time::Duration;

const CLIENT_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const CLIENT_SPAN: &str = "051581bf3cb55c13";
const TYPE: &str = "otel.process.done";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &["city-x"], reader: "mhlw", subscription: "otelp" };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_process_spans_join_the_trace_started_in_the_adapter_process() {
    let receiver = OtlpReceiver::start().await;
    // Only this test runs in this process (one test per file); the registry child started
    // below inherits the OTEL_* variables.
    let telemetry = receiver.install_export("kakehashi-adapter", "warn");

    let nats = NatsServer::start();
    // Quiet logs (RUST_LOG=warn in the child) must not switch its tracing off.
    let registry = RegistryProcess::start_with(&nats, "registry-otel", "").await;
    let adapter = Adapter::start(adapter_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), r#"{"type":"object"}"#).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 4).await;

    let mut publisher =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("adapter");
    let request = bus::traced_publish("city-x", TYPE, b"{}", CLIENT_TRACE, CLIENT_SPAN);
    let ack = publisher.publish(request).await.expect("publish").into_inner();
    assert!(ack.error.is_none(), "accepted: {ack:?}");
    let d = subscriber.expect_and_ack("the event", Duration::from_secs(20)).await;
    assert_eq!(d.event.expect("event").id, ack.event_id);

    let spans = wait::until("every hop's span at the receiver", Duration::from_secs(20), || {
        let spans = receiver.spans();
        async move {
            let has = |n: &str| spans.iter().any(|s| s.trace_id == CLIENT_TRACE && s.operation() == n);
            ["publish", "validate", "deliver", "ack"].iter().all(|n| has(n)).then_some(spans)
        }
    })
    .await;
    let span = |n: &str| -> &ReceivedSpan {
        spans
            .iter()
            .find(|s| s.trace_id == CLIENT_TRACE && s.operation() == n)
            .unwrap_or_else(|| panic!("{n} missing: {spans:#?}"))
    };
    let (publish, validate, deliver, acked) =
        (span("publish"), span("validate"), span("deliver"), span("ack"));
    assert_eq!(
        (publish.service.as_str(), publish.parent_span_id.as_str()),
        ("kakehashi-adapter", CLIENT_SPAN)
    );
    for s in [validate, deliver, acked] {
        assert_eq!(s.service, "kakehashi-registry", "{} is exported by the registry process", s.name);
    }
    assert_eq!(
        validate.parent_span_id, publish.span_id,
        "validate (registry) is a child of publish (adapter)"
    );
    assert_eq!(deliver.parent_span_id, validate.span_id);
    assert_eq!(acked.parent_span_id, deliver.span_id);
    drop(telemetry);
}
