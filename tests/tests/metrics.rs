//! The registry's Prometheus endpoint over a real socket: counts of validated, dead-lettered,
//! delivered and acked events, latency histograms, schema cache hits and subscription lag.

use kakehashi_proto::v1::*;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TYPE: &str = "metrics.check.done";

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
    let (registry, metrics) = Registry::start_with_metrics(registry_config(&nats.url())).await;
    let channel = Channel::from_shared(registry.endpoint()).expect("url").connect().await.expect("connect");
    let schema = r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}"#;
    schema_registry_client::SchemaRegistryClient::new(channel.clone())
        .register_schema(RegisterSchemaRequest { subject: TYPE.into(), schema: schema.into() })
        .await
        .expect("schema");
    policies_client::PoliciesClient::new(channel.clone())
        .put_policy(Policy {
            type_pattern: TYPE.into(),
            producers: vec!["city-x".into()],
            readers: vec!["mhlw".into()],
            raw_pii_readers: vec![],
        })
        .await
        .expect("policy");
    subscriptions_client::SubscriptionsClient::new(channel.clone())
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                department: "mhlw".into(),
                name: "m".into(),
                type_pattern: TYPE.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("subscription");

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    for data in [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":"x"}"#, r#"{"n":3}"#, r#"{"n":4}"#] {
        let event = Event {
            id: kakehashi_proto::ids::new_event_id(),
            source: "city-x".into(),
            r#type: TYPE.into(),
            data: data.as_bytes().to_vec(),
            ..Default::default()
        };
        js.publish(kakehashi_proto::subjects::ingress("city-x", TYPE), event.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    // Ack three of the four valid events; one stays unacked (lag).
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let open = OpenSubscription { subscription: "m".into(), department: "mhlw".into(), max_in_flight: 8 };
    tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) }).await.expect("open");
    let mut stream = delivery_client::DeliveryClient::new(channel)
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        ids.push(d.delivery_id);
    }
    tx.send(SubscribeRequest {
        request: Some(subscribe_request::Request::Ack(AckDeliveries { delivery_ids: ids[..3].to_vec() })),
    })
    .await
    .expect("ack");

    let sub = "sub_mhlw_m";
    let text = wait::until("metrics to show acks and lag", Duration::from_secs(20), || async move {
        let t = scrape(metrics).await;
        let acked = sample(&t, &format!("kakehashi_events_acked_total{{subscription=\"{sub}\"}}"));
        let lag = sample(
            &t,
            &format!("kakehashi_subscription_lag_events{{subscription=\"{sub}\",state=\"unacked\"}}"),
        );
        (acked == Some(3.0) && lag == Some(1.0)).then_some(t)
    })
    .await;
    assert_eq!(sample(&text, &format!("kakehashi_events_validated_total{{type=\"{TYPE}\"}}")), Some(4.0));
    assert_eq!(sample(&text, "kakehashi_events_dead_lettered_total{reason=\"schema_violation\"}"), Some(1.0));
    assert_eq!(
        sample(&text, &format!("kakehashi_events_delivered_total{{subscription=\"{sub}\"}}")),
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
