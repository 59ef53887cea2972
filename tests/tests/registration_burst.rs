//! A registration burst (issue 12, item 3): 200 concurrent `RegisterSchema` calls of distinct
//! schemas on one subject, split across two registry instances, all succeed without the caller
//! retrying; versions come out dense (1..=200) and ids unique.

use kakehashi_proto::v1::schema_registry_client::SchemaRegistryClient;
use kakehashi_proto::v1::*;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const BURST: u32 = 200;
const SUBJECT: &str = "burst.subject";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_registrations_on_two_instances_all_succeed() {
    let nats = NatsServer::start();
    let a = Registry::start(registry_config(&nats)).await;
    let b = Registry::start(registry_config(&nats)).await;
    let mut admin = SchemaRegistryClient::connect(a.endpoint()).await.expect("connect a");
    admin
        .set_compatibility(SetCompatibilityRequest {
            subject: SUBJECT.into(),
            mode: CompatibilityMode::None as i32,
        })
        .await
        .expect("compatibility NONE");
    let ca = SchemaRegistryClient::connect(a.endpoint()).await.expect("connect a");
    let cb = SchemaRegistryClient::connect(b.endpoint()).await.expect("connect b");
    // Instance b learns the override through its KV watch; wait for it before the burst.
    wait::until("instance b sees compatibility NONE", Duration::from_secs(5), || {
        let mut cb = cb.clone();
        async move {
            let mode = cb
                .get_compatibility(GetCompatibilityRequest { subject: SUBJECT.into() })
                .await
                .ok()?
                .into_inner();
            (mode.mode == CompatibilityMode::None as i32).then_some(())
        }
    })
    .await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..BURST)
        .map(|i| {
            let mut c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            tokio::spawn(async move {
                let schema =
                    json!({"type": "object", "properties": {format!("field{i}"): {"type": "integer"}}});
                c.register_schema(RegisterSchemaRequest {
                    subject: SUBJECT.into(),
                    schema: schema.to_string(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("registration {i}: {:?} {}", s.code(), s.message()))
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut versions = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                assert!(r.created, "every schema is distinct, so every registration creates a version");
                assert!(versions.insert(r.version), "version {} handed out twice", r.version);
                assert!(ids.insert(r.id), "id {} handed out twice", r.id);
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{BURST} registrations in {:?}", started.elapsed());
    assert!(failures.is_empty(), "{} of {BURST} failed, e.g. {:?}", failures.len(), failures.first());
    assert_eq!(versions, (1..=BURST).collect::<BTreeSet<u32>>(), "versions are dense");
    assert_eq!(ids.len(), BURST as usize, "ids are unique");
}
