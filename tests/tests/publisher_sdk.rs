//! The adapter SDK against a real nats-server: a record published twice is acked once and
//! then reported as a duplicate (deterministic ids); an unregistered type is refused before
//! sending; a pipeline answers in the order sent; a publish made while the server restarts is
//! confirmed once it is back (re-sent with the same id if its confirmation timed out).

use kakehashi_adapter::sdk::{Bus, PublishError, Retry, ToEvent};
use kakehashi_tests::bus::start_ingress_only;
use std::time::Duration;

const TYPE: &str = "test.sdk.recorded";
const SOURCE: &str = "city-sapporo";

struct Record {
    event_type: &'static str,
    number: u32,
    updated: &'static str,
}

impl ToEvent for Record {
    fn event_type(&self) -> &str {
        self.event_type
    }
    fn key(&self) -> String {
        format!("R{:05}", self.number)
    }
    fn version(&self) -> String {
        self.updated.to_string()
    }
    fn payload(&self) -> serde_json::Value {
        serde_json::json!({ "n": self.number })
    }
}

fn record(number: u32) -> Record {
    Record { event_type: TYPE, number, updated: "2024-11-01T09:00:00+09:00" }
}

#[tokio::test]
async fn record_published_twice_is_stored_once_and_then_reported_as_duplicate() {
    let (nats, _registry) = start_ingress_only(TYPE).await;
    let sdk = Bus::builder(nats.url(), SOURCE)
        .credentials(nats.department_creds(SOURCE))
        .connect()
        .await
        .expect("connect");

    let first = sdk.publish_record(&record(1)).await.expect("publish");
    assert!(first.sequence > 0 && !first.duplicate);
    assert_eq!(first.stream, "KH_INGRESS");
    let again = sdk.publish_record(&record(1)).await.expect("publish again");
    assert_eq!(
        (again.event_id.as_str(), again.sequence, again.duplicate),
        (first.event_id.as_str(), first.sequence, true)
    );

    let corrected = Record { updated: "2024-11-02T09:00:00+09:00", ..record(1) };
    let new_version = sdk.publish_record(&corrected).await.expect("publish corrected");
    assert!(!new_version.duplicate && new_version.event_id != first.event_id, "a new version is a new event");
}

#[tokio::test]
async fn unregistered_type_is_refused_before_sending() {
    let (nats, _registry) = start_ingress_only(TYPE).await;
    let sdk = Bus::builder(nats.url(), SOURCE)
        .credentials(nats.department_creds(SOURCE))
        .connect()
        .await
        .expect("connect");
    let unknown = Record { event_type: "test.sdk.unregistered", ..record(1) };
    match sdk.publish_record(&unknown).await {
        Err(PublishError::Refused { reason: "unknown_type", message }) => {
            assert!(message.contains("test.sdk.unregistered"), "{message}");
        }
        other => panic!("expected an unknown_type refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn pipeline_answers_in_the_order_sent_with_refusals_in_place() {
    let (nats, _registry) = start_ingress_only(TYPE).await;
    let sdk = Bus::builder(nats.url(), SOURCE)
        .credentials(nats.department_creds(SOURCE))
        .connect()
        .await
        .expect("connect");
    let mut pipeline = sdk.pipeline(64);
    let mut sent = Vec::new();
    let mut results = Vec::new();
    for n in 0..500 {
        let r = if n % 50 == 7 { Record { event_type: "test.sdk.nowhere", ..record(n) } } else { record(n) };
        let event = sdk.event(&r);
        sent.push(event.id.clone());
        pipeline.send(event).await;
        while let Some(result) = pipeline.try_next() {
            results.push(result);
        }
    }
    while let Some(result) = pipeline.next().await {
        results.push(result);
    }
    assert_eq!(results.len(), 500);
    let mut last_sequence = 0;
    for (n, (result, id)) in results.iter().zip(&sent).enumerate() {
        match result {
            Ok(ack) => {
                assert_eq!(&ack.event_id, id, "result {n} out of order");
                assert!(ack.sequence > last_sequence);
                last_sequence = ack.sequence;
            }
            Err(e) => assert!(n % 50 == 7 && e.reason() == "unknown_type", "result {n}: {e}"),
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_made_while_the_server_restarts_is_confirmed_once_it_is_back() {
    let (mut nats, _registry) = start_ingress_only(TYPE).await;
    let sdk = Bus::builder(nats.url(), SOURCE)
        .credentials(nats.department_creds(SOURCE))
        .ack_timeout(Duration::from_millis(500))
        .retry(Retry { give_up_after: Duration::from_secs(30), ..Retry::default() })
        .connect()
        .await
        .expect("connect");
    let before = sdk.publish_record(&record(1)).await.expect("publish before");

    tokio::task::block_in_place(|| nats.kill());
    let publishing = {
        let sdk = sdk.clone();
        tokio::spawn(async move { sdk.publish_record(&record(2)).await })
    };
    tokio::task::block_in_place(|| nats.restart());
    let after = publishing.await.expect("task").expect("confirmed once the server is back");
    assert!(after.sequence > before.sequence, "{after:?}");
    let again = sdk.publish_record(&record(2)).await.expect("publish again");
    assert!(again.duplicate, "the retried event was stored once");
}
