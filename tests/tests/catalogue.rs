//! The standard catalogue: `kakehashi schema load schemas/` loads every schema into a fresh bus in
//! dependency order, and every example payload validates (or fails) as its file name says.

use kakehashi_proto::v1::schema_registry_client::SchemaRegistryClient;
use kakehashi_proto::v1::{ListSubjectsRequest, ValidatePayloadRequest};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::path::PathBuf;

fn catalogue_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[tokio::test]
async fn catalogue_loads_and_every_example_validates_as_its_name_says() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let conn = kakehashi_tests::services::cli_conn(&registry.endpoint(), "", &nats);
    let mut client = kakehashi_ctl::clients::registry(&conn).await.expect("connect");
    kakehashi_ctl::commands::schema::load(&mut client, &catalogue_dir(), true)
        .await
        .expect("catalogue loads");

    let entries = kakehashi_ctl::catalogue::read(&catalogue_dir()).expect("catalogue");
    let subjects =
        client.list_subjects(ListSubjectsRequest::default()).await.expect("list").into_inner().subjects;
    assert!(subjects.len() >= 13, "subjects: {subjects:?}");
    for e in &entries {
        assert!(subjects.contains(&e.subject), "{} not registered", e.subject);
    }
    let event_types = subjects.iter().filter(|s| !s.starts_with("common.")).count();
    assert!(event_types >= 10, "at least 10 event types, got {event_types}");

    let examples = kakehashi_ctl::catalogue::examples(&catalogue_dir()).expect("examples");
    assert!(examples.len() >= 50, "expected a real set of examples, got {}", examples.len());
    let mut failures = Vec::new();
    let mut c: SchemaRegistryClient<_> = client;
    for ex in &examples {
        let payload = std::fs::read(&ex.path).expect("read example");
        let r = c
            .validate_payload(ValidatePayloadRequest { subject: ex.subject.clone(), version: 0, payload })
            .await
            .expect("validate")
            .into_inner();
        if r.valid != ex.should_validate {
            failures.push(format!("{}: valid={} violations={:?}", ex.path.display(), r.valid, r.violations));
        }
    }
    assert!(failures.is_empty(), "examples that did not behave as named:\n{}", failures.join("\n"));
}
