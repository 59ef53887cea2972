//! The trace index: `KH_AUDIT` keeps one subject however many events pass (nats-server keeps
//! state per distinct subject for the whole retention), every event is still traced with all
//! its hops, an index file survives a restart, a registry with an empty index rebuilds it from
//! the stream, and one stopped at any point of a rebuild lets go of its file.

use kakehashi_proto::subjects;
use kakehashi_proto::v1::{flows_client::FlowsClient, TraceEventRequest};
use kakehashi_registry::config::RegistryConfig;
use kakehashi_registry::trace_index::{Store, TraceIndexConfig};
use kakehashi_runtime::audit::{AuditRecord, BatchedHop, BATCH_HOP};
use kakehashi_tests::bus::{self, Flow, Subscriber};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use prost::Message;
use std::path::Path;
use std::time::Duration;

const TYPE: &str = "test.index.counted";
const SOURCE: &str = "city-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: "mhlw", subscription: "idx" };
const SOON: Duration = Duration::from_secs(20);

/// Publishes `n` events on the ingress and has the subscriber receive and ack each; their ids.
async fn deliver(nats: &NatsServer, subscriber: &mut Subscriber, from: usize, n: usize) -> Vec<String> {
    let js = bus::jetstream(nats).await;
    let mut ids = Vec::new();
    for i in from..from + n {
        let event = bus::event(SOURCE, TYPE, i);
        bus::publish_ingress(&js, &event).await;
        ids.push(event.id);
    }
    for _ in 0..n {
        subscriber.expect_and_ack("a delivery", SOON).await;
    }
    ids
}

/// The hop names of `id`'s trace on `registry`, once it shows the ack.
async fn traced(registry: &Registry, id: &str) -> Vec<String> {
    traced_up_to(registry, id, "acked").await
}

/// The hop names of `id`'s trace on `registry`, once it shows a hop named `last`.
async fn traced_up_to(registry: &Registry, id: &str, last: &str) -> Vec<String> {
    let flows = FlowsClient::connect(registry.endpoint()).await.expect("connect");
    wait::until(&format!("{id} traced up to its {last} hop"), SOON, || {
        let mut flows = flows.clone();
        let id = id.to_string();
        async move {
            let hops = flows.trace_event(TraceEventRequest { event_id: id }).await.ok()?.into_inner().hops;
            let names: Vec<String> = hops.into_iter().map(|h| h.hop).collect();
            names.iter().any(|h| h == last).then_some(names)
        }
    })
    .await
}

/// A registry configuration whose trace index is the file at `path`.
fn with_index_file(nats: &NatsServer, path: &Path) -> RegistryConfig {
    RegistryConfig {
        trace_index: TraceIndexConfig { path: Some(path.to_path_buf()), ..Default::default() },
        ..registry_config(nats)
    }
}

fn assert_whole(names: &[String]) {
    assert_eq!(names, ["validated", "delivered", "acked"], "the event's hops, in order");
}

#[tokio::test]
async fn the_audit_trail_keeps_one_subject_however_many_events_and_traces_each() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 64).await;
    let ids = deliver(&nats, &mut subscriber, 0, 300).await;
    for id in [&ids[0], &ids[150], &ids[299]] {
        assert_whole(&traced(&registry, id).await);
    }
    let js = bus::jetstream(&nats).await;
    let mut audit = js.get_stream("KH_AUDIT").await.expect("KH_AUDIT");
    let info = audit.info().await.expect("info").clone();
    // Before the index, every event added a subject (`kh.audit.<event id>`): 300 here.
    assert_eq!(info.state.subjects_count, 1, "distinct subjects in KH_AUDIT after 300 events: {info:?}");
    assert!(info.state.messages > 0);
}

#[tokio::test]
async fn an_index_file_survives_a_restart_and_an_empty_index_is_rebuilt_from_the_stream() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace-index.redb");
    let with_file = || with_index_file(&nats, &path);
    let registry = Registry::start(with_file()).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 16).await;
    let before = deliver(&nats, &mut subscriber, 0, 20).await;
    assert_whole(&traced(&registry, &before[0]).await);
    drop(subscriber);
    registry.stop().await;

    // What the stopped registry left on disk: its progress and the event's records.
    {
        let store = Store::open(Some(&path), 1 << 20).expect("the index file opens");
        assert!(store.applied().expect("progress") > 0, "progress was kept");
        assert!(!store.lookup(&before[0]).expect("lookup").is_empty(), "the event's records were kept");
    }

    // Restarted on the same file: it goes on from there (events from before and after).
    let registry = Registry::start(with_file()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 16).await;
    let after = deliver(&nats, &mut subscriber, 20, 20).await;
    assert_whole(&traced(&registry, &before[19]).await);
    assert_whole(&traced(&registry, &after[19]).await);

    // A second instance, its index in a temporary file, reads the whole trail at its start.
    let second =
        Registry::start(RegistryConfig { instance: "registry-second".into(), ..registry_config(&nats) })
            .await;
    assert_whole(&traced(&second, &before[0]).await);
    assert_whole(&traced(&second, &after[19]).await);
    // An id nobody published is unknown, not an error of the index.
    let mut flows = FlowsClient::connect(second.endpoint()).await.expect("connect");
    let unknown = kakehashi_proto::ids::new_event_id();
    let err = flows.trace_event(TraceEventRequest { event_id: unknown }).await.expect_err("unknown id");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}

#[tokio::test]
async fn an_index_left_by_an_older_build_is_rebuilt() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace-index.redb");
    let registry = Registry::start(with_index_file(&nats, &path)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 16).await;
    let ids = deliver(&nats, &mut subscriber, 0, 10).await;
    assert_whole(&traced(&registry, &ids[9]).await);
    drop(subscriber);
    registry.stop().await;

    // What older builds leave, each read to the stream's end (their progress) but holding
    // nothing this build reads:
    // - before 2026-12-03, after running beside upgraded writers: none of the protobuf records
    //   indexed, and no build noted;
    // - build 2: its multimap tables keyed by the id string, which this build does not read.
    for older in [None, Some(2u64)] {
        {
            let db = redb::Database::open(&path).expect("the index file opens");
            let txn = db.begin_write().expect("write");
            let tables: Vec<String> = redb::ReadableDatabase::begin_read(&db)
                .expect("read")
                .list_tables()
                .expect("tables")
                .map(|h| redb::TableHandle::name(&h).to_string())
                .filter(|name| name.starts_with("hops."))
                .collect();
            for name in &tables {
                txn.delete_table(redb::TableDefinition::<(u128, u64), ()>::new(name)).expect("drop");
            }
            {
                let mut meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).expect("meta");
                match older {
                    None => {
                        meta.remove("reads").expect("remove");
                    }
                    Some(build) => {
                        meta.insert("reads", build).expect("build");
                        let mut old = txn
                            .open_multimap_table(redb::MultimapTableDefinition::<&str, u64>::new("ids.20000"))
                            .expect("build 2's table");
                        old.insert(ids[0].as_str(), 1).expect("old entry");
                    }
                }
            }
            txn.commit().expect("commit");
        }
        {
            let store = Store::open(Some(&path), 1 << 20).expect("the index file opens");
            assert!(store.applied().expect("progress") > 0);
            assert!(store.lookup(&ids[0]).expect("lookup").is_empty(), "the old index lacks the records");
        }

        // The upgraded registry reads the stream again from its start instead of going on.
        let registry = Registry::start(with_index_file(&nats, &path)).await;
        assert_whole(&traced(&registry, &ids[0]).await);
        assert_whole(&traced(&registry, &ids[9]).await);
        registry.stop().await;
    }
}

#[tokio::test]
async fn a_registry_stopped_at_any_point_of_a_rebuild_releases_its_index_file() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace-index.redb");
    let with_file = || with_index_file(&nats, &path);
    // A first start creates the streams; then a trail that takes a while to index: batch
    // records of 128 hops each, written straight to the audit subject.
    Registry::start(registry_config(&nats)).await.stop().await;
    let js = bus::jetstream(&nats).await;
    let now = kakehashi_runtime::audit::now_us();
    let mut ids = Vec::new();
    for _ in 0..400 {
        let hops: Vec<BatchedHop> = (0..128)
            .map(|_| BatchedHop {
                event_id: kakehashi_proto::ids::new_event_id(),
                hop: "delivered".into(),
                time_us: now,
                outcome: "ok".into(),
                ..Default::default()
            })
            .collect();
        ids.push(hops[0].event_id.clone());
        let record = AuditRecord { hop: BATCH_HOP.into(), time_us: now, hops, ..Default::default() };
        // Half the records as JSON, as written before 2026-12-03: a trail spanning the upgrade.
        let body = if ids.len() % 2 == 0 {
            serde_json::to_vec(&record).expect("json")
        } else {
            record.encode_to_vec()
        };
        js.publish(subjects::AUDIT_RECORDS, body.into()).await.expect("publish").await.expect("stored");
    }

    // Stopped at several points of reading it, each restart on the same file opens it at once
    // (an index call left running on a blocking thread held it open after the stop).
    for pause_ms in [0, 10, 50, 150, 400] {
        let registry = Registry::start(with_file()).await;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        registry.stop().await;
        let store = Store::open(Some(&path), 1 << 20).unwrap_or_else(|e| {
            panic!("the index file is free right after a stop {pause_ms} ms into the rebuild: {e}")
        });
        drop(store);
    }
    // And the index so built and restarted answers for the first and the last record.
    let registry = Registry::start(with_file()).await;
    for id in [&ids[0], &ids[399]] {
        assert_eq!(traced_up_to(&registry, id, "delivered").await, ["delivered"]);
    }
}
