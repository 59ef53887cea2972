//! A policy changed through one registry instance reaches every other instance through its KV
//! watch, also after the NATS server restarted under them all: a revoked grant must stop
//! granting everywhere, not only on the instance that wrote it (which applies its own writes
//! at once, without the watch).

use kakehashi_proto::v1::{policies_client::PoliciesClient, ListPoliciesRequest, Policy};
use kakehashi_tests::bus;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use std::time::Duration;

const TYPE: &str = "test.watch.granted";
const SOURCE: &str = "city-shibuya";
/// Long enough for reconnects after a restart (async-nats backs off up to a few seconds).
const SOON: Duration = Duration::from_secs(30);

/// The producers of `TYPE`'s policy as the instance at `endpoint` lists them, if it can answer.
async fn producers_seen_by(endpoint: &str) -> Option<Vec<String>> {
    let mut client = PoliciesClient::connect(endpoint.to_string()).await.ok()?;
    let listed = client.list_policies(ListPoliciesRequest::default()).await.ok()?.into_inner();
    listed.policies.into_iter().find(|p| p.type_pattern == TYPE).map(|p| p.producers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_revoked_after_a_nats_restart_stops_granting_on_the_other_instance() {
    let mut nats = NatsServer::start();
    let js = bus::jetstream(&nats).await;
    // One instance serves the API only; the other validates, knowing policies by its watch.
    let mut api_only = registry_config(&nats);
    api_only.validator.enabled = false;
    let writer = Registry::start(api_only).await;
    let validator = Registry::start(registry_config(&nats)).await;
    bus::register_schema(&writer.endpoint(), TYPE, bus::counter_schema()).await;
    bus::put_policy(&writer.endpoint(), TYPE, &[SOURCE], &[]).await;
    wait::until("the validating instance to see the grant", SOON, || {
        let endpoint = validator.endpoint();
        async move { producers_seen_by(&endpoint).await.filter(|p| p == &[SOURCE]) }
    })
    .await;

    let granted = bus::event(SOURCE, TYPE, 1);
    bus::publish_ingress(&js, &granted).await;
    bus::wait_stream_len(&js, bus::EVENTS, 1, SOON).await;

    tokio::task::block_in_place(|| nats.restart());

    // Revoked through the writer once it is connected again.
    wait::until("the writer to store the revocation", SOON, || {
        let endpoint = writer.endpoint();
        async move {
            let mut client = PoliciesClient::connect(endpoint).await.ok()?;
            let revoked = Policy {
                type_pattern: TYPE.into(),
                producers: vec![],
                readers: vec![],
                raw_pii_readers: vec![],
            };
            client.put_policy(revoked).await.ok().map(|_| ())
        }
    })
    .await;
    // The validating instance learns it by its watch alone.
    wait::until("the validating instance to see the revocation", SOON, || {
        let endpoint = validator.endpoint();
        async move { producers_seen_by(&endpoint).await.filter(|p| p.is_empty()) }
    })
    .await;

    let revoked = bus::event(SOURCE, TYPE, 2);
    wait::until("KH_INGRESS to take the event after the restart", SOON, || {
        let (js, revoked) = (js.clone(), revoked.clone());
        async move {
            let subject =
                kakehashi_proto::subjects::ingress(&revoked.source, &revoked.r#type, &revoked.subject);
            let payload = prost::Message::encode_to_vec(&revoked);
            js.publish(subject, payload.into()).await.ok()?.await.ok().map(|_| ())
        }
    })
    .await;
    let letter = bus::wait_dead_letter(&js, &revoked.id, SOON).await;
    assert_eq!(letter.letter.reason, "not_permitted", "{}", letter.letter.message);
    assert_eq!(bus::stream_len(&js, bus::EVENTS).await, 1, "the revoked producer's event reached KH_EVENTS");
    validator.stop().await;
    writer.stop().await;
}
