//! The registry's Prometheus endpoint over a real socket: counts of validated, dead-lettered,
//! delivered and acked events, latency histograms, schema cache hits and subscription lag.

use kakehashi_proto::v1::Event;
use kakehashi_tests::bus::Flow;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TYPE: &str = "metrics.check.done";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &["city-x"], reader: "mhlw", subscription: "m" };

async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn metrics_count_every_outcome_and_report_lag() {
    let nats = NatsServer::start();
    let (registry, metrics) = Registry::start_with_metrics(registry_config(&nats)).await;
    let schema = r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}"#;
    FLOW.prepare(&registry.endpoint(), schema).await;

    let js = async_nats::jetstream::new(nats.admin().await);
    for data in [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":"x"}"#, r#"{"n":3}"#, r#"{"n":4}"#] {
        let event = Event {
            id: kakehashi_proto::ids::new_event_id(),
            source: "city-x".into(),
            r#type: TYPE.into(),
            data: data.as_bytes().to_vec(),
            ..Default::default()
        };
        js.publish(
            kakehashi_proto::subjects::ingress("city-x", TYPE, &event.subject),
            event.encode_to_vec().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }

    // Ack three of the four valid events; one stays unacked (lag).
    let mut subscriber = FLOW.open(&registry.endpoint(), 8).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let d = subscriber.expect_next(&format!("valid event {i}"), Duration::from_secs(20)).await;
        ids.push(d.delivery_id);
    }
    subscriber.expect_ack(ids[..3].to_vec()).await;

    let sub = "sub_mhlw_m";
    let text = wait::until("metrics to show acks and lag", Duration::from_secs(20), || async move {
        let t = scrape(metrics).await;
        let acked = sample(
            &t,
            &format!("kakehashi_events_acked_total{{subscription=\"{sub}\",department=\"mhlw\"}}"),
        );
        let lag = sample(
            &t,
            &format!("kakehashi_subscription_lag_events{{subscription=\"{sub}\",state=\"unacked\"}}"),
        );
        (acked == Some(3.0) && lag == Some(1.0)).then_some(t)
    })
    .await;
    assert_eq!(
        sample(&text, &format!("kakehashi_events_validated_total{{source=\"city-x\",type=\"{TYPE}\"}}")),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "kakehashi_events_dead_lettered_total{reason=\"schema_violation\",source=\"city-x\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("kakehashi_events_delivered_total{{subscription=\"{sub}\",department=\"mhlw\"}}")
        ),
        Some(4.0)
    );
    assert_eq!(sample(&text, "kakehashi_publish_to_validated_seconds_count"), Some(4.0));
    assert_eq!(
        sample(&text, &format!("kakehashi_validated_to_acked_seconds_count{{subscription=\"{sub}\"}}")),
        Some(3.0)
    );
    let hits = sample(&text, "kakehashi_schema_cache_lookups_total{result=\"hit\"}").expect("cache hits");
    let misses =
        sample(&text, "kakehashi_schema_cache_lookups_total{result=\"miss\"}").expect("cache misses");
    assert!(hits >= 4.0 && misses >= 1.0, "hits {hits} misses {misses}");
}
