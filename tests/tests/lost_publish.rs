//! A validated event's publish lost in transit (what a client's write buffer holds when its
//! connection breaks) must never let a later event of the same record be stored before it:
//! the validator publishes the events of a record that repeats within a batch as one JetStream
//! fast batch that refuses gaps: nats-server stores none of it after a message that is missing
//! or refused. Lost at the batch's start, in its middle and at its end.

use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::lossy_link::LossyLink;
use kakehashi_tests::services::{registry_config, scrape_metrics};
use kakehashi_tests::{NatsServer, Registry};
use std::net::SocketAddr;
use std::time::Duration;

const TYPE: &str = "test.lost.ordered";
const SOURCE: &str = "city-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: "mhlw", subscription: "lost" };
/// Events of one record, waiting in `KH_INGRESS` so the validator takes them as one batch.
const EVENTS: usize = 40;

/// The bus set up with the validator off and the record's events numbered 0.. waiting in
/// `KH_INGRESS`; the registry stopped again.
async fn a_record_waiting_in_ingress(nats: &NatsServer, js: &async_nats::jetstream::Context) {
    let mut config = registry_config(nats);
    config.validator.enabled = false;
    let registry = Registry::start(config).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut events = bus::events(SOURCE, TYPE, EVENTS);
    for e in &mut events {
        e.subject = "record-1".into();
        bus::publish_ingress(js, e).await;
    }
    registry.stop().await;
}

/// The numbers of the record's events in `KH_EVENTS`, in stream order, once all are there.
async fn stored_numbers(js: &async_nats::jetstream::Context) -> Vec<u64> {
    bus::wait_stream_len(js, bus::EVENTS, EVENTS as u64, Duration::from_secs(30)).await;
    bus::events_in_events_stream(js)
        .await
        .iter()
        .map(|e| {
            let data: serde_json::Value = serde_json::from_slice(&e.data).expect("event data");
            data["n"].as_u64().expect("n")
        })
        .collect()
}

/// `kakehashi_validator_batches_refused_total` as the registry's metrics endpoint shows it.
async fn batches_refused(metrics: SocketAddr) -> Option<u64> {
    let scrape = scrape_metrics(metrics).await;
    scrape.lines().find_map(|l| l.strip_prefix("kakehashi_validator_batches_refused_total "))?.parse().ok()
}

/// Runs the validator's connection through a link that loses the `nth` publish to `kh.ev.`
/// (the `nth` event of the batch) and checks the record's 40 events end up in `KH_EVENTS` in
/// order.
async fn losing_publish(nth: usize) {
    let nats = NatsServer::start();
    let js = bus::jetstream(&nats).await;
    a_record_waiting_in_ingress(&nats, &js).await;

    let events_stream = js.get_stream(bus::EVENTS).await.expect("KH_EVENTS");
    assert!(events_stream.cached_info().config.allow_batch_publish, "KH_EVENTS allows fast batches");
    let port: u16 = nats.url().rsplit(':').next().and_then(|p| p.parse().ok()).expect("NATS port");
    let link = LossyLink::start(port, "kh.ev.", nth).await;
    let mut config = registry_config(&nats);
    config.nats_url = link.url();
    let (registry, metrics) = Registry::start_with_metrics(config).await;

    let stored = stored_numbers(&js).await;
    assert_eq!(link.lost(), 1, "the link lost no publish: the test did not provoke anything");
    let expected: Vec<u64> = (0..EVENTS as u64).collect();
    assert_eq!(stored, expected, "KH_EVENTS holds the record's events out of order");
    // Each event goes in a fast batch once at most: its retries after a publish that reached the
    // server go plainly. A fast batch takes a member JetStream deems a duplicate for stored, also
    // when the copy it remembers is one a stream leader lost (docs/delivery.md), so a retry in a
    // fast batch could be acked unstored.
    let publishes = link.publishes();
    assert!(publishes.iter().all(|p| p.msg_id.is_some()), "every event is published with its message id");
    let mut batched: Vec<&str> =
        publishes.iter().filter(|p| p.reply.ends_with(".$FI")).filter_map(|p| p.msg_id.as_deref()).collect();
    batched.sort_unstable();
    let twice: Vec<&str> = batched.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert!(twice.is_empty(), "{} events were sent in a fast batch again: {twice:?}", twice.len());
    // When the lost publish was a member of a fast batch before its commit (the usual case: the
    // 40 events are one pull), the server refused the batch from there on and the rest was
    // published one event at a time. A lost commit, or (split otherwise by the client's reads)
    // a lone plain publish, is retried after the ack wait: order is then kept all the same. A
    // member's reply subject ends `<n>.<op>.$FI`, op 2 its commit.
    let lost = link.lost_line().unwrap_or_default();
    let reply = lost.split_whitespace().nth(2).unwrap_or_default();
    let op = reply.strip_suffix(".$FI").and_then(|r| r.rsplit('.').next());
    match op {
        Some("2") => {
            // Only a fast batch storing as it goes (the members before stored, answered as
            // duplicates when they are sent again one by one) gets through a lost commit
            // unrefused.
            assert_eq!(
                batches_refused(metrics).await,
                Some(0),
                "a batch whose commit was lost is sent again, not refused"
            );
        }
        Some(_) => {
            assert_eq!(
                batches_refused(metrics).await,
                Some(1),
                "the batch missing a member was refused once"
            );
        }
        None => println!("lost_publish: the lost publish was no fast batch member: {lost:?}"),
    }
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_lost_in_transit_never_lets_a_later_event_of_its_record_be_stored_first() {
    losing_publish(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_first_publish_of_a_batch_leaves_the_rest_unstored_until_it_is_sent_again() {
    // The batch is unknown to the server without its start: every later member is refused.
    losing_publish(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_last_publish_of_a_batch_is_sent_again_after_the_ack_wait() {
    // The commit: no final answer comes, the batch is published again after the wait, the
    // stored ones answered as duplicates.
    losing_publish(EVENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fast_batches_on_kh_events_a_repeated_record_still_arrives_whole_and_in_order() {
    let nats = NatsServer::start();
    let js = bus::jetstream(&nats).await;
    a_record_waiting_in_ingress(&nats, &js).await;
    // A KH_EVENTS as created before fast batches (an update only an administrator may make).
    let mut events_stream = js.get_stream(bus::EVENTS).await.expect("KH_EVENTS");
    let mut stream_config = events_stream.info().await.expect("KH_EVENTS info").config.clone();
    stream_config.allow_batch_publish = false;
    js.update_stream(stream_config).await.expect("turn fast batches off");

    let (registry, metrics) = Registry::start_with_metrics(registry_config(&nats)).await;
    let expected: Vec<u64> = (0..EVENTS as u64).collect();
    assert_eq!(stored_numbers(&js).await, expected, "KH_EVENTS holds the record's events out of order");
    assert!(
        batches_refused(metrics).await.unwrap_or(0) >= 1,
        "the batches were refused (fast batches off) and published one at a time"
    );
    registry.stop().await;
}

/// What a dead holder took, handed out again by the consumer reset the next holder makes when
/// nothing newer arrives, comes as first deliveries (a reset restarts delivery counts). The dead
/// holder may have published those events, and a fast batch would take a copy a stream leader
/// only staged for stored (docs/delivery.md), so they go one by one: all stored, in order, none
/// in a fast batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_dead_holder_took_comes_back_by_a_reset_and_goes_one_by_one() {
    let nats = NatsServer::start();
    let js = bus::jetstream(&nats).await;
    let mut config = registry_config(&nats);
    // Only the reset, not the ack wait, brings the taken messages back within the test.
    config.validator.ack_wait_secs = 120;
    config.validator.failover_ms = 500;
    // A validator creates the partition consumers, then stops before anything waits.
    let registry = Registry::start(config.clone()).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut ingress = js.get_stream(bus::INGRESS).await.expect("KH_INGRESS");
    let consumers = kakehashi_tests::wait::until("the partition consumers", Duration::from_secs(20), || {
        let ingress = ingress.clone();
        async move {
            let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(ingress.consumer_names())
                .await
                .into_iter()
                .flatten()
                .collect();
            (!names.is_empty()).then_some(names)
        }
    })
    .await;
    registry.stop().await;
    let mut events = bus::events(SOURCE, TYPE, EVENTS);
    for e in &mut events {
        e.subject = "record-1".into();
        bus::publish_ingress(&js, e).await;
    }
    // The dead holder: takes the record's events in the validators' group and never acks them.
    let mut partition = None;
    for name in consumers {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            ingress.get_consumer(&name).await.expect("partition consumer");
        if consumer.info().await.expect("consumer info").num_pending == EVENTS as u64 {
            partition = Some((name, consumer));
        }
    }
    let (name, consumer) = partition.expect("the partition holding the record");
    // A pull stream, as pinned-client consumers need; once the stopped validator's pin lapsed.
    let mut taken = consumer
        .stream()
        .group(kakehashi_registry::validator::GROUP)
        .max_messages_per_batch(EVENTS)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("pull as the holder");
    let mut took = 0;
    while took < EVENTS {
        match tokio::time::timeout(Duration::from_secs(20), futures::StreamExt::next(&mut taken)).await {
            Ok(Some(Ok(_))) => took += 1,
            // Refused while another client is still pinned: pulled again.
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    drop(taken);
    assert_eq!(took, EVENTS, "the holder took the record's events");

    // The next holder, through a relay that notes its publishes (and loses none).
    let port: u16 = nats.url().rsplit(':').next().and_then(|p| p.parse().ok()).expect("NATS port");
    let link = LossyLink::start(port, "kh.ev.", 0).await;
    config.nats_url = link.url();
    let registry = Registry::start(config).await;
    let expected: Vec<u64> = (0..EVENTS as u64).collect();
    assert_eq!(stored_numbers(&js).await, expected, "KH_EVENTS holds the record's events out of order");
    let info = ingress.consumer_info(&name).await.expect("consumer info");
    let recorded: u64 = info
        .config
        .metadata
        .get("kakehashi_suspect_until")
        .and_then(|v| v.parse().ok())
        .expect("the reset recorded the sequence delivered before it");
    let last = ingress.info().await.expect("KH_INGRESS info").state.last_sequence;
    assert!(recorded >= last, "recorded {recorded}, the taken events reach {last}");
    let publishes = link.publishes();
    assert_eq!(publishes.len(), EVENTS, "each event published once: {publishes:?}");
    assert!(
        publishes.iter().all(|p| !p.reply.ends_with(".$FI")),
        "events a dead holder took went in a fast batch: {publishes:?}"
    );
    registry.stop().await;
}
