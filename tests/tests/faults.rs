//! Nothing is lost when parts of the bus fail mid-stream: thousands of events with known ids go
//! through while a registry is SIGKILLed, a subscriber drops, the NATS server restarts, or one
//! of two registries dies. Every id must reach the subscriber; redeliveries of events that were
//! delivered but not acked are allowed (at least once) and are counted; what `Nats-Msg-Id`
//! dedup covers — the copy in `KH_EVENTS` — must hold each event exactly once.

use kakehashi_proto::v1::Event;
use kakehashi_tests::bus::{self, delivered_id, proto_duration, Flow, PublishProgress, Subscriber};
use kakehashi_tests::collect::{Collector, Tally};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry, RegistryProcess};
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const TYPE: &str = "test.fault.counted";
const SOURCE: &str = "city-shibuya";
const READER: &str = "mhlw";
const SUB: &str = "faults";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: READER, subscription: SUB };
/// Time allowed for all events to arrive after the fault has healed.
const ALL_ARRIVE: Duration = Duration::from_secs(60);

/// Schema, policy and the subscription with `ack_wait`; many deliveries allowed, so nothing is
/// exhausted by the faults.
async fn prepare(endpoint: &str, ack_wait: Duration) {
    FLOW.prepare_with(endpoint, bus::counter_schema(), |sub| {
        sub.ack_wait = proto_duration(ack_wait);
        sub.max_deliveries = 100;
    })
    .await;
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// Publishes `events` in the background, paced so the flow lasts while the test breaks things;
/// every publish is retried with the same `Nats-Msg-Id` until the stream confirms it.
fn publish_in_background(
    js: async_nats::jetstream::Context,
    events: Vec<Event>,
    pace: Duration,
) -> (Arc<PublishProgress>, tokio::task::JoinHandle<()>) {
    let progress = Arc::new(PublishProgress::default());
    let p = progress.clone();
    let task = tokio::spawn(async move { bus::publish_all_retrying(&js, &events, 50, &p, pace).await });
    (progress, task)
}

/// KH_EVENTS holds every event exactly once (dedup by `Nats-Msg-Id`), and nothing else.
async fn assert_events_stream_exact(js: &async_nats::jetstream::Context, expected: &[String]) {
    let stored = bus::event_ids_in_events_stream(js).await;
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for id in &stored {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "KH_EVENTS holds {} events more than once: {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
    let expected_set: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let missing = expected.iter().filter(|id| !seen.contains_key(id.as_str())).count();
    let foreign = seen.keys().filter(|id| !expected_set.contains(**id)).count();
    assert_eq!((missing, foreign), (0, 0), "KH_EVENTS: {missing} events missing, {foreign} unknown ids");
    assert_eq!(stored.len(), expected.len());
}

/// Waits for every id at the subscriber; on timeout, the failure says where the rest are.
async fn all_arrive(
    collector: &Collector,
    expected: &[String],
    js: &async_nats::jetstream::Context,
) -> Tally {
    match collector.try_wait_all(expected, ALL_ARRIVE).await {
        Ok(t) => t,
        Err(e) => panic!("{e}\n{}", bus::diagnose(js).await),
    }
}

/// Every expected id arrived and nothing else did; prints the duplicate count.
fn report(test: &str, tally: &Tally, expected: &[String]) {
    let expected_set: HashSet<String> = expected.iter().cloned().collect();
    assert!(tally.missing(expected).is_empty());
    assert!(tally.unexpected(&expected_set).is_empty(), "the subscriber got events nobody published");
    assert!(
        tally.unmarked_repeats.is_empty(),
        "{test}: {} events delivered again with attempt 1 (silent duplicates), e.g. {:?}",
        tally.unmarked_repeats.len(),
        &tally.unmarked_repeats[..tally.unmarked_repeats.len().min(3)]
    );
    println!("{test}: {} events published; subscriber: {}", expected.len(), tally.summary());
}

/// Pause between groups of 50 publishes: 3,000 events take about 3 s to publish, so a fault
/// injected after the first 1,000 lands while events are still flowing in.
const PACE: Duration = Duration::from_millis(50);

/// Waits until the flow is well under way: 1,000 events published and 200 received, with
/// publishing not finished.
async fn mid_stream(progress: &PublishProgress, collector: &Collector) {
    kakehashi_tests::wait::until("the flow to be under way", ALL_ARRIVE, || async {
        (progress.confirmed() >= 1000 && collector.unique() >= 200).then_some(())
    })
    .await;
    assert!(progress.confirmed() < 2500, "publishing nearly finished before the fault: pace it slower");
}

/// 3,000 events flowing through the bus to a collecting subscriber, while a test breaks things.
struct Flowing {
    js: async_nats::jetstream::Context,
    collector: Collector,
    expected: Vec<String>,
    progress: Arc<PublishProgress>,
    publisher: tokio::task::JoinHandle<()>,
}

impl Flowing {
    /// Prepares the flow through `endpoint` (short ack wait, so deliveries lost with a dead
    /// registry come back quickly), starts a collector there and the paced publisher, and returns
    /// once the flow is well under way: the moment to inject a fault.
    async fn start_mid_stream(nats: &NatsServer, endpoint: &str) -> Self {
        prepare(endpoint, Duration::from_secs(2)).await;
        let js = bus::jetstream(nats).await;
        let collector = Collector::start(endpoint, READER, SUB, 256);

        let events = bus::events(SOURCE, TYPE, 3000);
        let expected = ids(&events);
        let (progress, publisher) = publish_in_background(js.clone(), events, PACE);

        mid_stream(&progress, &collector).await;
        Self { js, collector, expected, progress, publisher }
    }

    /// After the fault: waits for the publisher, then for every event at the subscriber, and
    /// checks that exactly the published events arrived.
    async fn finish(&mut self, test: &str) -> Tally {
        (&mut self.publisher).await.expect("publisher");
        let tally = all_arrive(&self.collector, &self.expected, &self.js).await;
        report(test, &tally, &self.expected);
        tally
    }
}

/// Waits until the work queue is drained: every ingress message was validated and acked.
async fn assert_ingress_drained(js: &async_nats::jetstream::Context) {
    bus::wait_stream_len(js, bus::INGRESS, 0, Duration::from_secs(30)).await;
}

/// After a nats-server SIGKILL, the work queue may keep messages whose ack reached the
/// consumer's state but not the stream's (the two are flushed separately). Such residue is
/// allowed only when nothing is left for the validator (no pending, no unacked) and every
/// residual event is already in KH_EVENTS: processed, not lost.
async fn assert_ingress_drained_or_already_processed(js: &async_nats::jetstream::Context) {
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while bus::stream_len(js, bus::INGRESS).await != 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if drained.is_ok() {
        return;
    }
    let info = bus::consumer_info(js, bus::INGRESS, "validator").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the validator still has work: {}",
        bus::diagnose(js).await
    );
    let stored: std::collections::HashSet<String> =
        bus::event_ids_in_events_stream(js).await.into_iter().collect();
    let mut stream = js.get_stream(bus::INGRESS).await.expect("KH_INGRESS");
    let state = stream.info().await.expect("info").state.clone();
    let mut residue = 0;
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id = kakehashi_proto::v1::Event::decode(m.payload.as_ref()).expect("an Event").id;
            assert!(stored.contains(&id), "ingress residue {id} (seq {seq}) was never validated");
            residue += 1;
        }
    }
    println!("nats restart: {residue} ingress messages acked in the consumer but kept by the stream after the SIGKILL; all already in KH_EVENTS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_sigkilled_mid_stream_and_restarted_loses_nothing() {
    let nats = NatsServer::start();
    let mut registry = RegistryProcess::start(&nats).await;
    let mut flow = Flowing::start_mid_stream(&nats, &registry.endpoint()).await;
    registry.kill();
    let progress = &flow.progress;
    let at_kill = progress.confirmed();
    // Events keep arriving at ingress while no registry runs.
    kakehashi_tests::wait::until("publishes while the registry is down", ALL_ARRIVE, || async {
        (progress.confirmed() >= at_kill + 300).then_some(())
    })
    .await;
    registry.restart().await;
    let at_restart = progress.confirmed();
    flow.collector.reconnect_to(&registry.endpoint());
    println!("registry SIGKILL: killed after {at_kill} publishes, restarted after {at_restart}");

    let tally = flow.finish("registry SIGKILL").await;
    assert!(tally.sessions >= 2, "the subscriber reconnected to the new process");
    assert_events_stream_exact(&flow.js, &flow.expected).await;
    assert_ingress_drained(&flow.js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_dropped_with_unacked_deliveries_gets_them_again_and_everything_else_once() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    // Long ack wait: only the dropped stream may cause a redelivery here.
    prepare(&registry.endpoint(), Duration::from_secs(60)).await;
    let js = bus::jetstream(&nats).await;

    let events = bus::events(SOURCE, TYPE, 3000);
    let expected = ids(&events);
    let (_progress, publisher) = publish_in_background(js.clone(), events, Duration::ZERO);

    // First session: ack the first 1000 deliveries, then hold the next ones unacked until the
    // window (50) is full, and drop the stream.
    const WINDOW: u32 = 50;
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut held: HashSet<String> = HashSet::new();
    {
        let mut s = Subscriber::expect_open(&registry.endpoint(), READER, SUB, WINDOW).await;
        let mut acked = 0usize;
        while held.len() < WINDOW as usize {
            let d = s.expect_next("a delivery in the first session", ALL_ARRIVE).await;
            let id = delivered_id(&d);
            *counts.entry(id.clone()).or_default() += 1;
            if acked < 1000 {
                s.ack(vec![d.delivery_id]).await;
                acked += 1;
            } else {
                held.insert(id);
            }
        }
        // The stream is full, so nothing else is pending on it: once the server has processed
        // our acks, exactly the held deliveries are unacked.
        kakehashi_tests::wait::until("the registry to process the acks", ALL_ARRIVE, || async {
            let info = bus::consumer_info(&js, bus::EVENTS, &format!("sub_{READER}_{SUB}")).await;
            (info.num_ack_pending == WINDOW as usize).then_some(())
        })
        .await;
    } // dropped: stream closed without acking the held ones

    let collector = Collector::start(&registry.endpoint(), READER, SUB, 256);
    let rest: Vec<String> =
        expected.iter().filter(|id| !counts.contains_key(*id) || held.contains(*id)).cloned().collect();
    publisher.await.expect("publisher");
    let second = all_arrive(&collector, &rest, &js).await;
    for (id, n) in &second.counts {
        *counts.entry(id.clone()).or_default() += n;
    }
    let missing: Vec<_> = expected.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} events never arrived", missing.len());
    let duplicated: Vec<(&String, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let not_held: Vec<_> = duplicated.iter().filter(|(id, _)| !held.contains(*id)).collect();
    println!(
        "subscriber drop: {} events; {} held unacked at the drop; {} ids delivered more than once ({} of them not held); second session: {}",
        expected.len(),
        held.len(),
        duplicated.len(),
        not_held.len(),
        second.summary()
    );
    assert!(
        not_held.is_empty(),
        "events acked in the first session were delivered again: {:?}",
        &not_held[..not_held.len().min(5)]
    );
    let not_redelivered: Vec<_> =
        held.iter().filter(|id| counts.get(*id).copied().unwrap_or(0) < 2).collect();
    assert!(
        not_redelivered.is_empty(),
        "{} unacked deliveries were never redelivered",
        not_redelivered.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_mid_stream_loses_nothing_and_stores_each_event_once() {
    let mut nats = NatsServer::start();
    // A child process only so that its logs are shown if the test fails.
    let registry = RegistryProcess::start(&nats).await;
    let mut flow = Flowing::start_mid_stream(&nats, &registry.endpoint()).await;
    tokio::task::block_in_place(|| nats.kill());
    kakehashi_tests::wait::until("a publish to fail while NATS is down", ALL_ARRIVE, || async {
        (flow.progress.failed_attempts() > 0).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| nats.restart());

    flow.finish("nats restart").await;
    println!(
        "nats restart: {} publish attempts failed and were retried; {} retries were already stored (duplicate acks)",
        flow.progress.failed_attempts(),
        flow.progress.duplicates.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_events_stream_exact(&flow.js, &flow.expected).await;
    assert_ingress_drained_or_already_processed(&flow.js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_registries_killed_mid_stream_the_other_carries_on() {
    let nats = NatsServer::start();
    let mut victim =
        RegistryProcess::start_with(&nats, "victim", kakehashi_tests::process::FAST_RECOVERY_TOML).await;
    let survivor =
        RegistryProcess::start_with(&nats, "survivor", kakehashi_tests::process::FAST_RECOVERY_TOML).await;
    // The subscriber starts on the instance that will die.
    let mut flow = Flowing::start_mid_stream(&nats, &victim.endpoint()).await;
    flow.collector.reconnect_to(&survivor.endpoint());
    victim.kill();
    println!("one of two registries killed: killed after {} publishes", flow.progress.confirmed());

    let tally = flow.finish("one of two registries killed").await;
    assert!(tally.sessions >= 2, "the subscriber moved to the survivor");
    assert_events_stream_exact(&flow.js, &flow.expected).await;
    assert_ingress_drained(&flow.js).await;
}
