//! The gRPC listener's HTTP/2 limits are ours (`[grpc_server]`), not the library's defaults: a
//! client connection holds at most `max_concurrent_streams` calls open, and a call beyond it
//! waits until one of them ends.

use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::time::Duration;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn check() -> HealthCheckRequest {
    HealthCheckRequest { service: String::new() }
}

/// Whether a second call on the connection is served while a Watch stream holds a call open.
async fn second_call_served_while_a_stream_is_open(registry: &Registry) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(registry.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut first = HealthClient::new(channel.clone());
    first.check(check()).await.expect("one call is served");
    let watch = first.watch(check()).await.expect("watch").into_inner();
    let mut second = HealthClient::new(channel);
    let served = tokio::time::timeout(Duration::from_secs(2), second.check(check())).await.is_ok();
    drop(watch);
    // Once the stream has ended the connection serves calls again.
    tokio::time::timeout(Duration::from_secs(10), second.check(check()))
        .await
        .expect("a call is served once the stream ended")
        .expect("check");
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_max_concurrent_streams_calls_open() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    assert!(
        second_call_served_while_a_stream_is_open(&registry).await,
        "with the default limit (256) a second call is served beside an open stream"
    );
    registry.stop().await;

    let mut config = registry_config(&nats);
    config.grpc_server.max_concurrent_streams = 1;
    let registry = Registry::start(config).await;
    assert!(
        !second_call_served_while_a_stream_is_open(&registry).await,
        "with max_concurrent_streams = 1 a second call was served while a stream was open"
    );
    registry.stop().await;
}
