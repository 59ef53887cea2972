//! The audit trail and tracing: a delivered event's hops, a dead-lettered event's reason, the
//! hash chains detecting a tampered record and deleted newest records (against the anchored
//! chain heads), and a dead letter replayed after a schema fix.

use async_nats::jetstream;
use kakehashi_adapter::config::AdapterConfig;
use kakehashi_ctl::cli::Conn;
use kakehashi_proto::v1::{flows_client, publisher_client, Event, Hop, TraceEventRequest};
use kakehashi_registry::config::RegistryConfig;
use kakehashi_runtime::audit::AuditRecord;
use kakehashi_runtime::topology::TopologyConfig;
use kakehashi_tests::bus::{self, Flow, Subscriber};
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
use std::time::Duration;
use tonic::transport::Channel;

const TYPE: &str = "trace.dose.recorded";
const SOURCE: &str = "city-x";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "trace.>", producers: &[SOURCE], reader: "mhlw", subscription: "doses" };

fn schema(minimum: u32) -> String {
    serde_json::json!({"type": "object", "required": ["dose"],
        "properties": {"dose": {"type": "integer", "minimum": minimum}}})
    .to_string()
}

struct Bus {
    nats: NatsServer,
    registry: Registry,
    _adapter: Adapter,
    channel: Channel,
    publisher: publisher_client::PublisherClient<Channel>,
}

async fn bus() -> Bus {
    bus_with(TopologyConfig::default()).await
}

/// A bus whose `KH_AUDIT` accepts deletes: it plays an attacker below NATS (with the server's
/// disk), since through NATS no identity can delete an audit record (see `nats_lanes.rs`).
async fn tamperable_bus() -> Bus {
    bus_with(TopologyConfig { audit_append_only: false, ..Default::default() }).await
}

/// A bus whose two services share `topology` (retention, windows).
async fn bus_with(topology: TopologyConfig) -> Bus {
    let nats = NatsServer::start();
    let registry =
        Registry::start(RegistryConfig { topology: topology.clone(), ..registry_config(&nats) }).await;
    let adapter = Adapter::start(AdapterConfig { topology, ..adapter_config(&nats) }).await;
    let channel = Channel::from_shared(registry.endpoint()).expect("url").connect().await.expect("connect");
    FLOW.prepare(&registry.endpoint(), schema(1)).await;
    let publisher = publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("adapter");
    Bus { nats, registry, _adapter: adapter, channel, publisher }
}

async fn publish(bus: &mut Bus, dose: i64) -> String {
    let data = serde_json::json!({"dose": dose}).to_string().into_bytes();
    let mut event = Event { source: SOURCE.into(), r#type: TYPE.into(), data, ..Default::default() };
    event
        .extensions
        .insert("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    bus.publisher.publish(event).await.expect("publish").into_inner().event_id
}

async fn trace_until(bus: &Bus, id: &str, last_hop: &str) -> Vec<Hop> {
    let mut flows = flows_client::FlowsClient::new(bus.channel.clone());
    wait::until(&format!("{id} to reach {last_hop}"), Duration::from_secs(20), || {
        let mut flows = flows.clone();
        let id = id.to_string();
        let last_hop = last_hop.to_string();
        async move {
            let r = flows.trace_event(TraceEventRequest { event_id: id }).await.ok()?.into_inner();
            r.hops.iter().any(|h| h.hop == last_hop).then_some(r.hops)
        }
    })
    .await;
    flows.trace_event(TraceEventRequest { event_id: id.into() }).await.expect("trace").into_inner().hops
}

async fn subscribe(bus: &Bus) -> Subscriber {
    FLOW.open(&bus.registry.endpoint(), 8).await
}

/// Receives the next delivery, acks it and returns its event id.
async fn receive_and_ack(subscriber: &mut Subscriber) -> String {
    subscriber.expect_and_ack("a delivery", Duration::from_secs(20)).await.event.expect("event").id
}

#[tokio::test]
async fn delivered_event_trace_shows_validation_delivery_and_ack_in_order() {
    let mut bus = bus().await;
    let mut subscriber = subscribe(&bus).await;
    let id = publish(&mut bus, 2).await;
    assert_eq!(receive_and_ack(&mut subscriber).await, id);
    let hops = trace_until(&bus, &id, "acked").await;
    let names: Vec<&str> = hops.iter().map(|h| h.hop.as_str()).collect();
    let pos =
        |n: &str| names.iter().position(|h| *h == n).unwrap_or_else(|| panic!("{n} missing in {names:?}"));
    assert!(pos("validated") < pos("delivered") && pos("delivered") < pos("acked"), "{names:?}");
    let validated = &hops[pos("validated")];
    assert_eq!(validated.schema_version, 1);
    assert_eq!(validated.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let acked = &hops[pos("acked")];
    assert_eq!(acked.department, "mhlw");
    assert_eq!(acked.subscription, "sub_mhlw_doses");
    for w in hops.windows(2) {
        assert!(
            w[0].time.as_ref().map(|t| (t.seconds, t.nanos))
                <= w[1].time.as_ref().map(|t| (t.seconds, t.nanos))
        );
    }
    // Tracing leaves no consumer behind (each would live on for 30 s otherwise, and a burst of
    // traces would reach the server's consumer limit): the registry's trace index holds the
    // only one.
    let js = jetstream::new(bus.nats.admin().await);
    let audit = js.get_stream("KH_AUDIT").await.expect("stream").info().await.expect("info").clone();
    assert_eq!(audit.state.consumer_count, 1, "consumers on KH_AUDIT after tracing");
}

#[tokio::test]
async fn dead_lettered_event_trace_names_the_reason_and_replay_after_fix_delivers_it() {
    let mut bus = bus().await;
    let mut subscriber = subscribe(&bus).await;
    let id = publish(&mut bus, 0).await;
    let hops = trace_until(&bus, &id, "dead_lettered").await;
    let dl = hops.iter().find(|h| h.hop == "dead_lettered").expect("dead_lettered hop");
    assert_eq!((dl.outcome.as_str(), dl.detail.as_str()), ("rejected", "schema_violation"));
    assert!(!hops.iter().any(|h| h.hop == "delivered"));

    // Fix: a compatible v2 that accepts dose 0 (a wider minimum is backward compatible).
    let v2 = bus::register_schema(&bus.registry.endpoint(), TYPE, schema(0)).await;
    assert_eq!(v2.version, 2);

    let client = bus.nats.admin().await;
    let js = jetstream::new(client);
    let letters =
        kakehashi_ctl::commands::dlq::read_all(&js, &format!("kh.dlq.{SOURCE}.{TYPE}")).await.expect("dlq");
    let seq = letters.iter().find(|l| l.letter.event_id == id).expect("letter").seq;
    let conn = kakehashi_tests::services::cli_conn(&bus.registry.endpoint(), "", &bus.nats);
    kakehashi_ctl::commands::dlq::run(
        &conn,
        true,
        kakehashi_ctl::cli::DlqCommand::Replay {
            seqs: vec![seq],
            reason: None,
            source: None,
            event_type: None,
            wait: 10,
        },
    )
    .await
    .expect("replay");
    assert_eq!(receive_and_ack(&mut subscriber).await, id, "the replayed event is delivered");
    let hops = trace_until(&bus, &id, "acked").await;
    let validated = hops.iter().find(|h| h.hop == "validated").expect("validated after replay");
    assert_eq!(validated.schema_version, 2);
}

/// Publishes, receives and acks one event per dose.
async fn deliver_doses(bus: &mut Bus, subscriber: &mut Subscriber, doses: std::ops::RangeInclusive<i64>) {
    for dose in doses {
        publish(bus, dose).await;
        receive_and_ack(subscriber).await;
        tokio::time::sleep(kakehashi_tests::tamper::BETWEEN_EVENTS).await;
    }
}

/// JetStream of the bus, for reading the trail and the anchored chain heads.
async fn audit_store(bus: &Bus) -> jetstream::Context {
    jetstream::new(bus.nats.admin().await)
}

/// Every audit record, once `acked` records are stored and every chain's head is anchored up
/// to its newest record (anchoring runs every second).
async fn anchored_records(js: &jetstream::Context, acked: usize) -> Vec<(u64, AuditRecord)> {
    wait::until("the records stored and their chain heads anchored", Duration::from_secs(20), || {
        let js = js.clone();
        async move {
            let heads = kakehashi_ctl::commands::audit::read_heads(&js).await.ok()?;
            let r = kakehashi_ctl::commands::audit::read_all(&js).await.ok()?;
            let all_acked =
                r.iter().flat_map(|(_, r)| r.clone().into_hops()).filter(|h| h.hop == "acked").count()
                    == acked;
            let covered =
                r.iter().all(|(_, rec)| heads.iter().any(|h| h.actor == rec.actor && h.seq >= rec.seq));
            (all_acked && covered).then_some(r)
        }
    })
    .await
}

/// Whether a stored record is, or holds (a batch record), a hop named `hop`.
fn has_hop(r: &AuditRecord, hop: &str) -> bool {
    r.hop == hop || r.hops.iter().any(|h| h.hop == hop)
}

/// The retention `kakehashi audit verify` assumes by default: the shipped `KH_AUDIT` max age.
fn shipped_retention() -> Duration {
    Duration::from_secs(TopologyConfig::default().audit_max_age_secs)
}

/// What `kakehashi` needs to reach this bus.
fn conn(bus: &Bus) -> Conn {
    kakehashi_tests::services::cli_conn(&bus.registry.endpoint(), "", &bus.nats)
}

#[tokio::test]
async fn audit_verify_names_a_tampered_record() {
    let mut bus = tamperable_bus().await;
    let mut subscriber = subscribe(&bus).await;
    deliver_doses(&mut bus, &mut subscriber, 1..=3).await;
    let js = audit_store(&bus).await;
    let records = anchored_records(&js, 3).await;
    assert!(kakehashi_runtime::audit::verify(&records, &[], 0).is_empty(), "intact before tampering");
    let conn = conn(&bus);
    kakehashi_ctl::commands::audit::verify(&conn, true, shipped_retention())
        .await
        .expect("verify passes on an intact trail");

    // Rewrite history: a record holding a "delivered" hop replaced by a copy with it forged.
    let victim = kakehashi_tests::tamper::forge_a_delivered_hop(&js, &records).await;

    let after = kakehashi_ctl::commands::audit::read_all(&js).await.expect("read");
    let broken = kakehashi_runtime::audit::verify(&after, &[], 0);
    assert_eq!(broken.len(), 1, "{broken:?}");
    let chain = kakehashi_runtime::audit::chain_name(&victim.actor, &victim.chain);
    assert_eq!((broken[0].actor.as_str(), broken[0].seq), (chain.as_str(), victim.seq));
    assert!(broken[0].problem.contains("altered"), "{}", broken[0].problem);
    let err = kakehashi_ctl::commands::audit::verify(&conn, true, shipped_retention())
        .await
        .expect_err("verify fails");
    assert!(err.to_string().contains("broken"), "{err}");
}

#[tokio::test]
async fn audit_verify_names_deleted_newest_records_against_the_anchored_head() {
    let mut bus = tamperable_bus().await;
    let mut subscriber = subscribe(&bus).await;
    deliver_doses(&mut bus, &mut subscriber, 1..=2).await;
    let js = audit_store(&bus).await;
    let records = anchored_records(&js, 2).await;
    let conn = conn(&bus);
    kakehashi_ctl::commands::audit::verify(&conn, true, shipped_retention())
        .await
        .expect("verify passes on an intact trail");

    // Delete the newest record of the registry's chain: the chain alone still links up.
    let registry_actor = records.iter().find(|(_, r)| has_hop(r, "acked")).map(|(_, r)| r.actor.clone());
    let (newest_seq, newest) = records
        .iter()
        .filter(|(_, r)| Some(&r.actor) == registry_actor.as_ref())
        .max_by_key(|(_, r)| r.seq)
        .cloned()
        .expect("registry records");
    js.get_stream("KH_AUDIT").await.expect("stream").delete_message(newest_seq).await.expect("delete");
    let after = kakehashi_ctl::commands::audit::read_all(&js).await.expect("read");
    assert!(kakehashi_runtime::audit::verify(&after, &[], 0).is_empty(), "undetectable without the head");
    let heads = kakehashi_ctl::commands::audit::read_heads(&js).await.expect("heads");
    let broken = kakehashi_runtime::audit::verify(&after, &heads, 0);
    assert_eq!(broken.len(), 1, "{broken:?}");
    let chain = kakehashi_runtime::audit::chain_name(&newest.actor, &newest.chain);
    assert_eq!((broken[0].actor.as_str(), broken[0].seq), (chain.as_str(), newest.seq));
    assert!(broken[0].problem.contains("missing at the end"), "{}", broken[0].problem);
    let err = kakehashi_ctl::commands::audit::verify(&conn, true, shipped_retention())
        .await
        .expect_err("verify fails");
    assert!(err.to_string().contains("broken"), "{err}");
}

#[tokio::test]
async fn audit_verify_tells_records_expired_by_retention_from_deleted_ones() {
    // Audit records kept 2 s.
    let topology = TopologyConfig { audit_max_age_secs: 2, ..Default::default() };
    let retention = Duration::from_secs(topology.audit_max_age_secs);
    let mut bus = bus_with(topology).await;
    let mut subscriber = subscribe(&bus).await;
    deliver_doses(&mut bus, &mut subscriber, 1..=2).await;
    let js = audit_store(&bus).await;
    wait::until("the first records to expire", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let r = kakehashi_ctl::commands::audit::read_all(&js).await.ok()?;
            (!r.iter().any(|(_, r)| has_hop(r, "acked"))).then_some(())
        }
    })
    .await;
    // The chains go on after the gap that expiry left.
    deliver_doses(&mut bus, &mut subscriber, 3..=3).await;
    let records = anchored_records(&js, 1).await;
    assert!(records.iter().all(|(_, r)| r.seq > 1), "every chain's beginning expired: {records:?}");
    assert!(
        !kakehashi_runtime::audit::verify(&records, &[], 0).is_empty(),
        "without the retention horizon the expired beginning looks deleted"
    );
    // Told the stream keeps records for 30 days, the verifier cannot excuse the gap ...
    let err = kakehashi_ctl::commands::audit::verify(&conn(&bus), true, shipped_retention())
        .await
        .expect_err("a gap younger than the stated retention");
    assert!(err.to_string().contains("broken chain"), "{err}");
    // ... told the stream's real retention, it does.
    kakehashi_ctl::commands::audit::verify(&conn(&bus), true, retention)
        .await
        .expect("expiry is not tampering");
}

#[tokio::test]
async fn a_registry_restarted_under_the_same_name_starts_a_new_chain_not_a_forgery() {
    let mut bus = bus().await;
    let mut subscriber = subscribe(&bus).await;
    deliver_doses(&mut bus, &mut subscriber, 1..=1).await;
    let js = audit_store(&bus).await;
    anchored_records(&js, 1).await;
    // The same instance name again: in this process the default name (host and pid) repeats,
    // as a configured `instance` or pid 1 in a container would.
    drop(subscriber);
    let Bus { nats, registry, _adapter, publisher, .. } = bus;
    registry.stop().await;
    let registry = Registry::start(registry_config(&nats)).await;
    let channel = Channel::from_shared(registry.endpoint()).expect("url").connect().await.expect("connect");
    let mut bus = Bus { nats, registry, _adapter, channel, publisher };
    let mut subscriber = subscribe(&bus).await;
    deliver_doses(&mut bus, &mut subscriber, 2..=2).await;
    let records = anchored_records(&js, 2).await;
    let instance =
        records.iter().find(|(_, r)| has_hop(r, "acked")).map(|(_, r)| r.actor.clone()).expect("acked");
    let chains: std::collections::BTreeSet<_> =
        records.iter().filter(|(_, r)| r.actor == instance).map(|(_, r)| r.chain.clone()).collect();
    assert_eq!(chains.len(), 2, "two chains of {instance}: {records:?}");
    assert!(
        records.iter().filter(|(_, r)| r.actor == instance && r.seq == 1).count() == 2,
        "both chains begin at record 1"
    );
    kakehashi_ctl::commands::audit::verify(&conn(&bus), true, shipped_retention())
        .await
        .expect("a restart is not tampering");
}

#[tokio::test]
async fn hops_arriving_within_the_linger_share_a_record_and_every_event_keeps_its_hops() {
    // A linger far longer than the ten events below take: without it, each of their 40 hops
    // (published, validated, delivered, acked), recorded one after another, is a record.
    let mut bus = bus_with(TopologyConfig { audit_linger_ms: 2_000, ..Default::default() }).await;
    let mut subscriber = subscribe(&bus).await;
    let js = jetstream::new(bus.nats.admin().await);
    let records = || async {
        js.get_stream("KH_AUDIT").await.expect("stream").info().await.expect("info").state.messages
    };
    let before = records().await;
    let mut ids = Vec::new();
    for dose in 1..=10 {
        let id = publish(&mut bus, dose).await;
        assert_eq!(receive_and_ack(&mut subscriber).await, id);
        ids.push(id);
    }
    for id in &ids {
        let hops = trace_until(&bus, id, "acked").await;
        let names: Vec<&str> = hops.iter().map(|h| h.hop.as_str()).collect();
        assert_eq!(names, ["published", "validated", "delivered", "acked"], "{id}");
    }
    let written = records().await - before;
    // Two writers (adapter, registry), each about one record per linger; a slow machine that
    // spreads the events over a few lingers still stays far below one record per hop.
    assert!(written <= 8, "{written} records for 40 hops");
}
