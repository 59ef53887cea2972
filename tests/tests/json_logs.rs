//! Structured logs for ops: with `KAKEHASHI_LOG_FORMAT=json` the registry process writes JSON
//! lines, and a line logged inside a hop span carries that span's `event_id` and `trace_id` —
//! here the dead-lettering of an event whose publisher sent its own W3C trace context.

use kakehashi_proto::v1::publisher_client;
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::process::RegistryProcess;
use kakehashi_tests::services::adapter_config;
use kakehashi_tests::{wait, Adapter, NatsServer};
use std::time::Duration;

const CLIENT_TRACE: &str = "8e1a2c33a0a4b7de3c4f0b6d1e2f3a4b";
const TYPE: &str = "logs.check.done";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &["city-x"], reader: "mhlw", subscription: "logs" };

#[tokio::test]
async fn json_log_lines_of_a_hop_carry_its_event_and_trace_ids() {
    // Only this test runs in this process (one test per file); the registry child inherits these.
    std::env::set_var("KAKEHASHI_LOG_FORMAT", "json");
    std::env::set_var("KH_TEST_LOG", "info");
    let nats = NatsServer::start();
    let registry = RegistryProcess::start_with(&nats, "registry-logs", "").await;
    let adapter = Adapter::start(adapter_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), r#"{"type":"object","required":["n"]}"#).await;

    let mut publisher =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("adapter");
    let request = bus::traced_publish("city-x", TYPE, b"{}", CLIENT_TRACE, "b7ad6b7169203331");
    let ack = publisher.publish(request).await.expect("publish").into_inner();
    assert!(ack.error.is_none(), "the adapter accepts it; the validator rejects it: {ack:?}");

    let line = wait::until("the registry's dead-lettered log line", Duration::from_secs(20), || {
        let log = registry.log_tail(500);
        async move {
            // Each line parsed as a whole: a key written twice (a field named like the message)
            // would leave the last value, and the line would not be found.
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["fields"]["message"] == "dead-lettered")
        }
    })
    .await;
    eprintln!("{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["reason"], "schema_violation", "{line}");
    assert!(line["fields"]["detail"].as_str().is_some_and(|d| d.contains("required")), "{line}");
    assert_eq!(line["span"]["event_id"], ack.event_id.as_str(), "{line}");
    assert_eq!(line["span"]["trace_id"], CLIENT_TRACE, "{line}");
    assert_eq!(line["span"]["name"], "kakehashi.validate", "{line}");
}
