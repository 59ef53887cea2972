//! Policies and My Number pseudonyms at delivery: a department that may not read a type cannot
//! subscribe to it; readers get per-department pseudonyms (same person, same department: same
//! token; two departments: unrelated tokens); a reader granted raw data gets the number itself.

use kakehashi_proto::v1::*;
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{Adapter, NatsServer, Registry};
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TYPE: &str = "health.vaccination.recorded";
const MY_NUMBER: &str = "161803398872";

fn example() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/health.vaccination.recorded/examples/valid-mr-second-dose.json");
    serde_json::from_slice(&std::fs::read(path).expect("example")).expect("json")
}

async fn subscribe(
    registry: &Registry,
    department: &str,
) -> (tokio::sync::mpsc::Sender<SubscribeRequest>, tonic::Streaming<EventDelivery>) {
    let mut subs =
        subscriptions_client::SubscriptionsClient::connect(registry.endpoint()).await.expect("connect");
    subs.create_subscription(CreateSubscriptionRequest {
        subscription: Some(Subscription {
            department: department.into(),
            name: "vax".into(),
            type_pattern: TYPE.into(),
            ..Default::default()
        }),
    })
    .await
    .expect("subscription");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let open =
        OpenSubscription { subscription: "vax".into(), department: department.into(), max_in_flight: 16 };
    tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) }).await.expect("open");
    let mut client = delivery_client::DeliveryClient::connect(registry.endpoint()).await.expect("connect");
    let stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    (tx, stream)
}

async fn my_numbers(stream: &mut tonic::Streaming<EventDelivery>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("delivery in time")
            .expect("open")
            .expect("delivery");
        let data: serde_json::Value = serde_json::from_slice(&d.event.expect("event").data).expect("json");
        out.push(data["person"]["my_number"].as_str().expect("my_number").to_string());
    }
    out
}

/// A bus (NATS, registry, adapter) with the schema catalogue loaded.
async fn bus_with_catalogue() -> (NatsServer, Registry, Adapter) {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let adapter = Adapter::start(adapter_config(&nats)).await;
    let conn = kakehashi_tests::services::cli_conn(&registry.endpoint(), &adapter.endpoint(), &nats);
    let mut schemas = kakehashi_ctl::clients::registry(&conn).await.expect("connect");
    let catalogue = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    kakehashi_ctl::commands::schema::load(&mut schemas, &catalogue, true).await.expect("catalogue");
    (nats, registry, adapter)
}

#[tokio::test]
async fn readers_get_per_department_pseudonyms_and_unlisted_departments_cannot_subscribe() {
    let (_nats, registry, adapter) = bus_with_catalogue().await;
    let mut policies: policies_client::PoliciesClient<Channel> =
        policies_client::PoliciesClient::connect(registry.endpoint()).await.expect("connect");
    policies
        .put_policy(Policy {
            type_pattern: "health.>".into(),
            producers: vec!["city-shibuya".into()],
            readers: vec!["mhlw".into(), "nta".into(), "city-shibuya".into()],
            raw_pii_readers: vec!["city-shibuya".into()],
        })
        .await
        .expect("policy");

    let mut subs =
        subscriptions_client::SubscriptionsClient::connect(registry.endpoint()).await.expect("connect");
    let refused = subs
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                department: "meti".into(),
                name: "vax".into(),
                type_pattern: TYPE.into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("meti is not a reader");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let (_mhlw_tx, mut mhlw) = subscribe(&registry, "mhlw").await;
    let (_nta_tx, mut nta) = subscribe(&registry, "nta").await;
    let (_city_tx, mut city) = subscribe(&registry, "city-shibuya").await;

    let mut publisher =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("connect");
    let mut second = example();
    second["vaccination"]["dose_number"] = serde_json::json!(3);
    for payload in [example(), second] {
        publisher
            .publish(Event {
                source: "city-shibuya".into(),
                r#type: TYPE.into(),
                data: payload.to_string().into_bytes(),
                ..Default::default()
            })
            .await
            .expect("publish");
    }
    let at_mhlw = my_numbers(&mut mhlw, 2).await;
    let at_nta = my_numbers(&mut nta, 2).await;
    let at_city = my_numbers(&mut city, 2).await;
    assert_eq!(at_mhlw[0], at_mhlw[1], "same person, same department: same token");
    assert_eq!(at_nta[0], at_nta[1]);
    assert_ne!(at_mhlw[0], at_nta[0], "two departments: unrelated tokens");
    for token in at_mhlw.iter().chain(&at_nta) {
        assert!(token.starts_with("kh1:") && !token.contains(MY_NUMBER), "pseudonymised: {token}");
    }
    assert_eq!(at_city, vec![MY_NUMBER.to_string(), MY_NUMBER.to_string()], "raw for the granted reader");
}

/// A producer may not validate its type's events against another subject of its choosing: a
/// permissive one would let an unchecked payload through, and one without the type's
/// `x-kakehashi-pii` annotations would hand readers the raw My Number. The adapter refuses such
/// an event, and the validator dead-letters it when it is published on NATS directly.
#[tokio::test]
async fn a_producer_cannot_name_another_subjects_schema_to_skip_checks_and_pseudonyms() {
    let (nats, registry, adapter) = bus_with_catalogue().await;
    kakehashi_tests::bus::register_schema(&registry.endpoint(), "open.anything", r#"{"type": "object"}"#)
        .await;
    kakehashi_tests::bus::put_policy(&registry.endpoint(), "health.>", &["city-shibuya"], &["mhlw"]).await;
    let (_mhlw_tx, mut mhlw) = subscribe(&registry, "mhlw").await;

    let forged = Event {
        source: "city-shibuya".into(),
        r#type: TYPE.into(),
        schema: "open.anything".into(),
        data: example().to_string().into_bytes(),
        ..Default::default()
    };
    let mut publisher =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("connect");
    let refused = publisher.publish(forged.clone()).await.expect_err("the adapter refuses it");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("is not a form of type"), "{}", refused.message());

    // On NATS directly (what the department's own credentials allow), then a legitimate event.
    let js = kakehashi_tests::bus::jetstream(&nats).await;
    let forged = Event {
        id: kakehashi_proto::ids::new_event_id(),
        data_content_type: "application/json".into(),
        ..forged
    };
    kakehashi_tests::bus::publish_ingress(&js, &forged).await;
    publisher
        .publish(Event {
            source: "city-shibuya".into(),
            r#type: TYPE.into(),
            data: example().to_string().into_bytes(),
            ..Default::default()
        })
        .await
        .expect("publish");
    let at_mhlw = my_numbers(&mut mhlw, 1).await;
    assert!(at_mhlw[0].starts_with("kh1:"), "the first delivery is the legitimate, pseudonymised event");
    let letters =
        dead_letters_client::DeadLettersClient::connect(registry.endpoint()).await.expect("connect");
    let letter =
        kakehashi_tests::wait::until("the forged event's dead letter", Duration::from_secs(20), || {
            let (mut letters, id) = (letters.clone(), forged.id.clone());
            async move {
                let request = ListDeadLettersRequest { event_id: id, ..Default::default() };
                let listed = letters.list_dead_letters(request).await.ok()?.into_inner();
                listed.dead_letters.into_iter().next().and_then(|l| l.letter)
            }
        })
        .await;
    assert_eq!(letter.reason, "malformed_envelope");
    assert!(letter.message.contains("is not a form of type"), "{}", letter.message);
}

/// A policy entry the registry cannot read grants nothing: it replaces the entry it overwrote
/// (a revocation written by a newer version, or a damaged one) instead of leaving it in force.
#[tokio::test]
async fn an_unreadable_policy_entry_revokes_what_it_replaced() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    kakehashi_tests::bus::put_policy(&registry.endpoint(), "health.>", &["city-shibuya"], &["mhlw"]).await;
    let subs =
        subscriptions_client::SubscriptionsClient::connect(registry.endpoint()).await.expect("connect");
    let create = |name: &str| {
        let mut subs = subs.clone();
        let request = CreateSubscriptionRequest {
            subscription: Some(Subscription {
                department: "mhlw".into(),
                name: name.into(),
                type_pattern: TYPE.into(),
                ..Default::default()
            }),
        };
        async move { subs.create_subscription(request).await }
    };
    create("before").await.expect("mhlw may read health.>");

    let js = kakehashi_tests::bus::jetstream(&nats).await;
    let config = js.get_key_value("KH_CONFIG").await.expect("KH_CONFIG");
    let key: String = "health.>".bytes().map(|b| format!("{b:02x}")).collect();
    config.put(format!("policy.{key}"), "not a policy".into()).await.expect("overwrite");
    kakehashi_tests::wait::until(
        "the unreadable policy to grant nothing",
        Duration::from_secs(10),
        || async {
            let refused = create("after").await.err()?;
            (refused.code() == tonic::Code::PermissionDenied).then_some(())
        },
    )
    .await;
}
