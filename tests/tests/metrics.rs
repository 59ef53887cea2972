//! The registry's Prometheus endpoint over a real socket: counts of validated, dead-lettered,
//! delivered and acked events, latency histograms, schema cache hits and subscription lag; and
//! who may read it: off loopback only scrapers with the bearer token, and neither service starts
//! there without one.

use kakehashi_proto::v1::Event;
use kakehashi_tests::bus::Flow;
use kakehashi_tests::services::{registry_config, scrape_metrics};
use kakehashi_tests::{wait, NatsServer, Registry};
use prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TYPE: &str = "metrics.check.done";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &["city-x"], reader: "mhlw", subscription: "m" };

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
        let t = scrape_metrics(metrics).await;
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
    // The trace index reads the trail these events left: reported, and caught up.
    wait::until("the trace index reported caught up", Duration::from_secs(20), || async move {
        (sample(&scrape_metrics(metrics).await, "kakehashi_trace_index_behind_records") == Some(0.0))
            .then_some(())
    })
    .await;
}

/// `GET /metrics` from `addr` with an optional `Authorization` header; the whole response.
async fn get_metrics(addr: SocketAddr, authorization: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect metrics");
    let header = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{header}\r\n").as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn metrics_on_every_interface_answer_only_the_bearer_token() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("metrics-token");
    // The token a deployment's setup step writes (`kakehashi metrics token`).
    assert!(kakehashi_ctl::commands::secrets::metrics_token(&token_file).expect("kakehashi metrics token"));
    let token = std::fs::read_to_string(&token_file).expect("read token").trim_end().to_string();
    let mut config = registry_config(&nats);
    config.metrics_token_file = Some(token_file);
    let (registry, metrics) = Registry::start_with_metrics_on(config, "0.0.0.0:0").await;

    let wrong = format!("Bearer {}", token.chars().rev().collect::<String>());
    for (what, authorization, challenge) in [
        ("no token", None, "www-authenticate: Bearer realm=\"kakehashi-metrics\"\r\n"),
        ("wrong token", Some(wrong.as_str()), "error=\"invalid_token\""),
        ("token as basic", Some(&*format!("Basic {token}")), "error=\"invalid_token\""),
    ] {
        let out = get_metrics(metrics, authorization).await;
        assert!(out.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{what}: {out}");
        assert!(out.contains(challenge), "{what}: {out}");
        assert!(!out.contains("kakehashi_"), "{what}: no metric without the token: {out}");
    }
    let out = get_metrics(metrics, Some(&format!("Bearer {token}"))).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("# TYPE kakehashi_nats_connected gauge"), "{out}");
    registry.stop().await;
}

#[tokio::test]
async fn neither_service_serves_metrics_off_loopback_without_a_token() {
    // Refused at start-up, before NATS is even tried (none runs here).
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind metrics");
    let port = metrics.local_addr().expect("addr").port();
    let config = kakehashi_registry::config::RegistryConfig::default();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        kakehashi_registry::run_with(config, grpc, Some(metrics), async {}),
    )
    .await
    .expect("refused at once")
    .expect_err("the registry refuses to start");
    let line = e.to_string();
    assert_eq!(
        line,
        format!(
            "metrics_addr 0.0.0.0:{port} is not a loopback address and no metrics token is configured \
             (metrics_token_file / KAKEHASHI_METRICS_TOKEN_FILE): refusing to serve /metrics \
             unauthenticated"
        )
    );

    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = kakehashi_adapter::config::AdapterConfig {
        metrics_addr: Some("0.0.0.0:9465".parse().expect("addr")),
        ..Default::default()
    };
    let e = tokio::time::timeout(Duration::from_secs(10), kakehashi_adapter::run(config, grpc, async {}))
        .await
        .expect("refused at once")
        .expect_err("the adapter refuses to start");
    assert!(e.to_string().starts_with("metrics_addr 0.0.0.0:9465 is not a loopback address"), "{e}");

    // A token file that is not a usable token is refused too, naming the file, not its content.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("metrics-token");
    std::fs::write(&bad, "guessable\n").expect("write");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = kakehashi_adapter::config::AdapterConfig {
        metrics_addr: Some("0.0.0.0:9465".parse().expect("addr")),
        metrics_token_file: Some(bad.clone()),
        ..Default::default()
    };
    let e = tokio::time::timeout(Duration::from_secs(10), kakehashi_adapter::run(config, grpc, async {}))
        .await
        .expect("refused at once")
        .expect_err("the adapter refuses a bad token file");
    let line = e.to_string();
    assert!(line.contains(&bad.display().to_string()) && !line.contains("guessable"), "{line}");
}
