//! The audit trail checked by a second implementation: `tests/interop/audit_check.py` reads
//! `KH_AUDIT` with nats-py as the `operator` identity, decodes every record with classes
//! generated from `proto/kakehashi/v1/audit.proto` only, recomputes each hash from the
//! protobuf encoding and checks every chain's links. After a real flow it finds every hop of
//! every event, no broken link and the same number of records as our own reader, so our
//! encoding and hash rule are the ones the proto file states; after a record is forged (as in
//! `audit_trace.rs`) it names that record, so the check itself can fail.

use async_nats::jetstream;
use kakehashi_adapter::config::AdapterConfig;
use kakehashi_ctl::nats_config::permissions::Service;
use kakehashi_proto::v1::{publisher_client, Event};
use kakehashi_registry::config::RegistryConfig;
use kakehashi_runtime::audit::{drop_repeats, AuditRecord};
use kakehashi_runtime::topology::TopologyConfig;
use kakehashi_tests::bus::Flow;
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{interop, wait, Adapter, NatsServer, Registry};
use serde_json::Value;
use std::time::Duration;

const TYPE: &str = "interop.audit.recorded";
const SOURCE: &str = "city-x";
const FLOW: Flow = Flow {
    event_type: TYPE,
    policy: "interop.>",
    producers: &[SOURCE],
    reader: "mhlw",
    subscription: "audited",
};
const EVENTS: i64 = 3;
const SOON: Duration = Duration::from_secs(30);
const LIMIT: Duration = Duration::from_secs(120);

/// Runs the check as the `operator` identity; its exit code and its report.
async fn audit_check(nats: &NatsServer) -> (Option<i32>, Value) {
    let creds = nats.generated().service(Service::Operator);
    let args = vec!["--url".to_string(), nats.url(), "--creds".into(), creds.display().to_string()];
    let out = interop::run("audit_check.py", args, LIMIT).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{e} ({}): {stdout}\n--- stderr\n{}", out.status, String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), report)
}

/// Every stored record, once every event's hops up to `acked` are stored: nothing more is
/// written after that, so both readers see the same trail.
async fn settled_records(js: &jetstream::Context, ids: &[String]) -> Vec<(u64, AuditRecord)> {
    wait::until("every event's hops stored", SOON, || {
        let js = js.clone();
        async move {
            let records = kakehashi_ctl::commands::audit::read_all(&js).await.ok()?;
            let hops: Vec<AuditRecord> = records.iter().flat_map(|(_, r)| r.clone().into_hops()).collect();
            let complete = ids.iter().all(|id| {
                ["published", "validated", "delivered", "acked"]
                    .iter()
                    .all(|hop| hops.iter().any(|h| &h.event_id == id && h.hop == *hop))
            });
            complete.then_some(records)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_check_verifies_the_trail_and_names_a_forged_record() {
    // `KH_AUDIT` accepting deletes lets the test play an attacker below NATS, as in
    // `audit_trace.rs`; the records themselves are written as always.
    let topology = TopologyConfig { audit_append_only: false, ..Default::default() };
    let nats = NatsServer::start();
    let registry =
        Registry::start(RegistryConfig { topology: topology.clone(), ..registry_config(&nats) }).await;
    let adapter = Adapter::start(AdapterConfig { topology, ..adapter_config(&nats) }).await;
    FLOW.prepare(&registry.endpoint(), kakehashi_tests::bus::counter_schema()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 8).await;
    let mut publisher =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("adapter");

    let mut ids = Vec::new();
    for n in 0..EVENTS {
        let data = serde_json::json!({"n": n}).to_string().into_bytes();
        let event = Event { source: SOURCE.into(), r#type: TYPE.into(), data, ..Default::default() };
        let id = publisher.publish(event).await.expect("publish").into_inner().event_id;
        let delivered = subscriber.expect_and_ack("a delivery", SOON).await;
        assert_eq!(delivered.event.expect("event").id, id);
        ids.push(id);
        tokio::time::sleep(kakehashi_tests::tamper::BETWEEN_EVENTS).await;
    }
    let js = nats.admin_js().await;
    let mut records = settled_records(&js, &ids).await;
    drop_repeats(&mut records);

    let (code, report) = audit_check(&nats).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["broken"], Value::Array(Vec::new()), "{report}");
    assert_eq!(report["records"].as_u64(), Some(records.len() as u64), "both readers see the same trail");
    for id in &ids {
        let hops: Vec<&str> = report["hops"][id]
            .as_array()
            .unwrap_or_else(|| panic!("no hops of {id} in {report}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let pos = |hop: &str| {
            hops.iter().position(|h| *h == hop).unwrap_or_else(|| panic!("{id}: {hop} missing in {hops:?}"))
        };
        // Each hop is recorded after the one before it happened: time order is causal order.
        assert!(pos("validated") < pos("delivered") && pos("delivered") < pos("acked"), "{id}: {hops:?}");
    }

    // Rewrite history: remove the record holding a "delivered" hop and put back a copy with
    // that hop forged, keeping the old hash (which the next link's prev_hash names).
    let victim = kakehashi_tests::tamper::forge_a_delivered_hop(&js, &records).await;

    let (code, report) = audit_check(&nats).await;
    assert_eq!(code, Some(1), "{report}");
    let broken = report["broken"].as_array().expect("broken list");
    assert!(
        broken.iter().any(|b| b["actor"] == victim.actor.as_str()
            && b["chain"] == victim.chain.as_str()
            && b["seq"].as_u64() == Some(victim.seq)),
        "{} seq {} not named: {report}",
        victim.actor,
        victim.seq
    );
}
