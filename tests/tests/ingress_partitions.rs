//! `KH_INGRESS` is partitioned by the key bucket in the ingress subject: every registry instance
//! validates some partitions (spread by the instances themselves, pinned by NATS), the short
//! subject form without a bucket still works, a wrong bucket is refused, and the partition
//! count only changes while `KH_INGRESS` is empty.

use kakehashi_proto::subjects;
use kakehashi_proto::v1::Event;
use kakehashi_runtime::audit::AuditRecord;
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry, RegistryProcess};
use prost::Message as _;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const TYPE: &str = "test.partition.counted";
const SOURCE: &str = "city-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: "mhlw", subscription: "parts" };
const SOON: Duration = Duration::from_secs(20);

fn keyed(n: usize, keys: usize) -> Event {
    let mut e = bus::event(SOURCE, TYPE, n);
    e.subject = format!("resident-{}", n % keys);
    e
}

/// `validated` audit records per validating instance.
async fn validated_by_actor(js: &async_nats::jetstream::Context) -> BTreeMap<String, usize> {
    let stream = js.get_stream(subjects::STREAM_AUDIT).await.expect("KH_AUDIT");
    let mut by_actor = BTreeMap::new();
    let mut seq = 1;
    while let Ok(m) = stream.get_raw_message(seq).await {
        seq = m.sequence + 1;
        let r = AuditRecord::from_stored(&m.payload).expect("audit record");
        for hop in r.into_hops().into_iter().filter(|h| h.hop == "validated") {
            // `<instance>#<start>`: counted per instance.
            let instance = hop.actor.split('#').next().unwrap_or_default().to_string();
            *by_actor.entry(instance).or_insert(0) += 1;
        }
    }
    by_actor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_keep_order_per_key() {
    let nats = NatsServer::start();
    let config = "[validator]\nbatch = 16\nfailover_ms = 500\n";
    let a = RegistryProcess::start_with(&nats, "share-a", config).await;
    let b = RegistryProcess::start_with(&nats, "share-b", config).await;
    FLOW.prepare(&a.endpoint(), bus::counter_schema()).await;
    let js = bus::jetstream(&nats).await;
    // A steady stream over 200 keys for a few seconds: long enough for the instances to hear
    // of each other (announced every second) and hand partitions over.
    let total = 3000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        for &n in chunk {
            bus::publish_ingress(&js, &keyed(n, 200)).await;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    bus::wait_stream_len(&js, bus::EVENTS, total as u64, SOON).await;
    let stored = bus::events_in_events_stream(&js).await;
    assert_eq!(stored.len(), total, "every event validated once");
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in &stored {
        let n: u64 =
            serde_json::from_slice::<serde_json::Value>(&e.data).expect("JSON")["n"].as_u64().expect("n");
        if let Some(prev) = last.insert(e.subject.clone(), n) {
            assert!(prev < n, "key {} out of order: {prev} before {n}", e.subject);
        }
    }
    let by_actor = validated_by_actor(&js).await;
    let (va, vb) =
        (by_actor.get("share-a").copied().unwrap_or(0), by_actor.get("share-b").copied().unwrap_or(0));
    assert!(
        va > 0 && vb > 0,
        "both instances validate a share: {by_actor:?}\n{}\n{}",
        a.log_tail(20),
        b.log_tail(20)
    );
    assert_eq!(va + vb, total, "{by_actor:?}");
}

#[tokio::test]
async fn short_subjects_are_validated_and_a_wrong_key_bucket_is_dead_lettered() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let js = bus::jetstream(&nats).await;

    // The short form `kh.in.<source>.<type>` (no bucket) is partitioned by the type instead.
    let short = keyed(1, 10);
    bus::publish_raw(&js, &format!("kh.in.{SOURCE}.{TYPE}"), short.encode_to_vec(), Some(&short.id)).await;
    bus::wait_stream_len(&js, bus::EVENTS, 1, SOON).await;

    let wrong = keyed(2, 10);
    let right = subjects::key_bucket(SOURCE, TYPE, &wrong.subject);
    let subject = format!("kh.in.{SOURCE}._{}.{TYPE}", (right + 1) % subjects::KEY_BUCKETS);
    bus::publish_raw(&js, &subject, wrong.encode_to_vec(), Some(&wrong.id)).await;
    let letter = bus::wait_dead_letter(&js, &wrong.id, SOON).await;
    assert_eq!(letter.letter.reason, "malformed_envelope");
    assert!(letter.letter.message.contains(&format!("hash to _{right}")), "{}", letter.letter.message);
    assert_eq!(letter.letter.original_subject, subject, "kept as published, for a replay");
    assert_eq!(letter.subject, format!("kh.dlq.{SOURCE}.{TYPE}"));

    // A subject too short to be an event's is refused by the stream itself: nothing waits
    // unread in the work queue.
    let refused = js.publish(format!("kh.in.{SOURCE}.x"), "x".into()).await.expect("sent").await;
    assert!(refused.is_err(), "KH_INGRESS stored a subject without a type");
    registry.stop().await;
}

#[tokio::test]
async fn the_partition_count_changes_only_while_ingress_is_empty() {
    let nats = NatsServer::start();
    let mut idle = registry_config(&nats);
    idle.validator.enabled = false;
    let setup = Registry::start(idle).await;
    FLOW.prepare(&setup.endpoint(), bus::counter_schema()).await;
    let js = bus::jetstream(&nats).await;
    for n in 0..20 {
        bus::publish_ingress(&js, &keyed(n, 7)).await;
    }
    setup.stop().await;

    // Six partitions hold the 20 events: a registry configured for two must not start.
    let mut two = registry_config(&nats);
    two.topology.ingress_partitions = 2;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refused = kakehashi_registry::run_with(two.clone(), listener, None, async {}).await;
    let message = refused.expect_err("repartitioning a non-empty KH_INGRESS").to_string();
    assert!(message.contains("refusing to repartition it to 2 partitions"), "{message}");
    assert!(message.contains("holds 20 messages"), "{message}");

    // Drained with the old count, the change is made, extra consumers go, and events flow.
    let old = Registry::start(registry_config(&nats)).await;
    bus::wait_stream_len(&js, bus::EVENTS, 20, SOON).await;
    wait::until("KH_INGRESS to drain", SOON, || {
        let js = js.clone();
        async move { (bus::stream_len(&js, bus::INGRESS).await == 0).then_some(()) }
    })
    .await;
    old.stop().await;
    let new = Registry::start(two).await;
    let mut stream = js.get_stream(subjects::STREAM_INGRESS).await.expect("KH_INGRESS");
    let transform = stream.info().await.expect("info").config.subject_transform.clone().expect("transform");
    assert!(transform.destination.contains("partition(2,2)"), "{}", transform.destination);
    wait::until("consumers of partitions 2..6 to be deleted", SOON, || {
        let stream = stream.clone();
        async move {
            let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(stream.consumer_names())
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            (names.len() == 2).then_some(())
        }
    })
    .await;
    for n in 20..30 {
        bus::publish_ingress(&js, &keyed(n, 7)).await;
    }
    bus::wait_stream_len(&js, bus::EVENTS, 30, SOON).await;
    new.stop().await;
}
