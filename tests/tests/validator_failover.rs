//! Order per record key survives validator crashes by construction: two registries share the
//! ingress consumer (a pinned priority group) and are SIGKILLed in turn, many times, at points
//! where a full batch, part of a batch or nothing is in flight. The ingress ack wait is long
//! (30 s), so nothing may rely on NATS redelivering the dead holder's messages: the new holder
//! must read them from the stream first. `KH_EVENTS` must hold every event once, in publish
//! order for each key.

use kakehashi_proto::v1::Event;
use kakehashi_tests::bus::{self, Flow, PublishProgress};
use kakehashi_tests::{NatsServer, RegistryProcess};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TYPE: &str = "test.order.counted";
const SOURCE: &str = "city-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: "test.>", producers: &[SOURCE], reader: "mhlw", subscription: "order" };
const EVENTS: usize = 3000;
const KEYS: usize = 25;
/// Small batches so kills land with a full, a partial or no batch in flight; a long ack wait so
/// only the takeover's own reading of the stream can keep order.
const CONFIG: &str = "\
[validator]
batch = 32
ack_wait_secs = 30
failover_ms = 500

[delivery]
default_ack_wait_secs = 5
";

fn keyed_events() -> Vec<Event> {
    (0..EVENTS)
        .map(|n| {
            let mut e = bus::event(SOURCE, TYPE, n);
            e.subject = format!("record-{}", n % KEYS);
            e
        })
        .collect()
}

fn number(e: &Event) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&e.data).expect("JSON payload");
    v["n"].as_u64().expect("n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_killed_at_many_points_keep_order_per_key_in_the_events_stream() {
    let nats = NatsServer::start();
    let mut a = RegistryProcess::start_with(&nats, "order-a", CONFIG).await;
    let mut b = RegistryProcess::start_with(&nats, "order-b", CONFIG).await;
    FLOW.prepare(&a.endpoint(), bus::counter_schema()).await;
    let js = bus::jetstream(&nats).await;

    let events = keyed_events();
    let expected: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let progress = Arc::new(PublishProgress::default());
    let p = progress.clone();
    let publisher_js = js.clone();
    // One at a time: the ingress order is the publish order, which is each key's order.
    let publisher = tokio::spawn(async move {
        bus::publish_all_retrying(&publisher_js, &events, 1, &p, Duration::ZERO).await
    });

    // Kill the two instances in turn at spread points of the flow; each comes back at once.
    let mut kills = 0;
    for (i, at) in [300, 700, 1100, 1500, 1900, 2300, 2700].into_iter().enumerate() {
        kakehashi_tests::wait::until(
            "the flow to reach the next kill point",
            Duration::from_secs(60),
            || async { (progress.confirmed() >= at).then_some(()) },
        )
        .await;
        let victim = if i % 2 == 0 { &mut a } else { &mut b };
        tokio::task::block_in_place(|| victim.kill());
        kills += 1;
        // Sometimes the other instance takes over alone for a while, sometimes both race back.
        if i % 3 != 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        victim.restart().await;
    }
    publisher.await.expect("publisher");

    let started = Instant::now();
    bus::wait_stream_len(&js, bus::EVENTS, EVENTS as u64, Duration::from_secs(25)).await;
    let caught_up = started.elapsed();

    let stored = bus::events_in_events_stream(&js).await;
    let ids: HashSet<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(stored.len(), EVENTS, "each event once in KH_EVENTS");
    assert!(expected.iter().all(|id| ids.contains(id.as_str())), "an event is missing from KH_EVENTS");
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut inversions = Vec::new();
    for e in &stored {
        let n = number(e);
        if let Some(prev) = last.insert(e.subject.as_str(), n) {
            if prev > n {
                inversions.push((e.subject.clone(), prev, n));
            }
        }
    }
    assert!(
        inversions.is_empty(),
        "{} per-key inversions in KH_EVENTS after {kills} kills, e.g. {:?}\n{}\n{}",
        inversions.len(),
        &inversions[..inversions.len().min(5)],
        a.log_tail(20),
        b.log_tail(20)
    );
    println!(
        "validator failover: {kills} kills, {EVENTS} events over {KEYS} keys in order; KH_EVENTS complete {caught_up:?} after the last publish"
    );
}
