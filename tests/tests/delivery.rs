//! Delivery to subscribers, as a department sees it through `Delivery.Subscribe`: the in-flight
//! window, redelivery after the ack wait and after nacks (with and without delay), dead letters
//! once deliveries are exhausted, catching up after being offline, policy changes without a
//! restart, and each validator rejection dead-lettered with its reason and the exact bytes.

use kakehashi_proto::v1::publisher_client::PublisherClient;
use kakehashi_proto::v1::{Event, Subscription};
use kakehashi_registry::config::RegistryConfig;
use kakehashi_tests::bus::{self, delivered_id, proto_duration, Subscriber};
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
use prost::Message as _;
use std::time::{Duration, Instant};

const TYPE: &str = "test.delivery.counted";
const SOURCE: &str = "city-shibuya";
const READER: &str = "mhlw";
/// Generous bound for something that should happen within a second or two.
const SOON: Duration = Duration::from_secs(15);

/// A server, a registry with `tune` applied to its config, the test schema, and a policy letting
/// `producers` publish and `READER` read `test.>`.
struct Bus {
    nats: NatsServer,
    registry: Registry,
    js: async_nats::jetstream::Context,
}

impl Bus {
    async fn start(producers: &[&str], tune: impl FnOnce(&mut RegistryConfig)) -> Self {
        let nats = NatsServer::start();
        let mut config = registry_config(&nats);
        tune(&mut config);
        let registry = Registry::start(config).await;
        let js = bus::jetstream(&nats).await;
        bus::register_schema(&registry.endpoint(), TYPE, &bus::counter_schema()).await;
        bus::put_policy(&registry.endpoint(), "test.>", producers, &[READER]).await;
        Self { nats, registry, js }
    }

    async fn subscribe(&self, sub: Subscription, max_in_flight: u32) -> Subscriber {
        let name = sub.name.clone();
        bus::create_subscription(&self.registry.endpoint(), sub).await;
        Subscriber::expect_open(&self.registry.endpoint(), READER, &name, max_in_flight).await
    }

    /// Publishes to ingress as an adapter would, in order; returns the events.
    async fn publish(&self, n: usize) -> Vec<Event> {
        let events = bus::events(SOURCE, TYPE, n);
        for e in &events {
            bus::publish_ingress(&self.js, e).await;
        }
        events
    }
}

fn sub_with(name: &str, ack_wait: Duration, max_deliveries: u32) -> Subscription {
    Subscription {
        ack_wait: proto_duration(ack_wait),
        max_deliveries,
        ..bus::subscription(READER, name, TYPE)
    }
}

#[tokio::test]
async fn in_flight_limit_holds_deliveries_back_until_acks_make_room() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    // A long ack wait: nothing may come back on its own while the test holds deliveries.
    let mut sub = bus.subscribe(sub_with("window", Duration::from_secs(60), 5), 3).await;
    let events = bus.publish(10).await;

    let mut got = Vec::new();
    for i in 0..3 {
        got.push(sub.expect_next(&format!("delivery {i} of the first window"), SOON).await);
    }
    sub.expect_nothing_for(Duration::from_millis(1500), "3 are unacked and the window is 3").await;

    sub.ack(vec![got[0].delivery_id]).await;
    got.push(sub.expect_next("one delivery after one ack", SOON).await);
    sub.expect_nothing_for(Duration::from_millis(1000), "one ack makes room for exactly one").await;

    // Ack everything outstanding whenever the window is full; it never holds more than 3.
    let mut acked = 1;
    while got.len() < events.len() {
        if got.len() - acked == 3 {
            sub.ack(got[acked..].iter().map(|d| d.delivery_id).collect()).await;
            acked = got.len();
        }
        got.push(sub.expect_next(&format!("delivery {}", got.len()), SOON).await);
        assert!(got.len() - acked <= 3, "more than 3 unacked deliveries on the stream");
    }
    sub.ack(got[acked..].iter().map(|d| d.delivery_id).collect()).await;
    let ids: Vec<String> = got.iter().map(delivered_id).collect();
    let sent: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, sent, "each event once, in publish order");
    assert!(got.iter().all(|d| d.attempt == 1));
    sub.expect_nothing_for(Duration::from_millis(1000), "all 10 delivered and acked").await;
}

#[tokio::test]
async fn delivery_not_acked_within_ack_wait_is_redelivered_as_attempt_2() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let mut sub = bus.subscribe(sub_with("slow", Duration::from_secs(1), 5), 10).await;
    let events = bus.publish(1).await;

    let first = sub.expect_next("first delivery", SOON).await;
    let received = Instant::now();
    assert_eq!((delivered_id(&first), first.attempt), (events[0].id.clone(), 1));
    let again = sub.expect_next("redelivery after the 1 s ack wait", SOON).await;
    let waited = received.elapsed();
    assert_eq!(
        (delivered_id(&again), again.attempt),
        (events[0].id.clone(), 2),
        "the first redelivery the subscriber sees, {waited:?} after the first delivery"
    );
    assert_ne!(again.delivery_id, first.delivery_id, "a redelivery gets its own delivery id");
    assert_eq!(again.stream_sequence, first.stream_sequence);
    assert!(waited >= Duration::from_millis(700), "redelivered after {waited:?}, before the ack wait");

    sub.ack(vec![again.delivery_id]).await;
    sub.expect_nothing_for(Duration::from_millis(2500), "acked: no more redeliveries").await;
}

#[tokio::test]
async fn every_attempt_counted_toward_max_deliveries_reaches_the_subscriber() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    const MAX: u32 = 6;
    let mut sub = bus.subscribe(sub_with("attempts", Duration::from_secs(1), MAX), 32).await;
    let event = bus::event(SOURCE, TYPE, 1);
    bus::publish_ingress(&bus.js, &event).await;

    // Never acked: it is redelivered each second until it is dead-lettered after MAX attempts.
    let mut attempts = Vec::new();
    let started = Instant::now();
    while let Some(d) = sub.next_within(Duration::from_secs(8)).await {
        assert_eq!(delivered_id(&d), event.id);
        attempts.push((d.attempt, format!("{:.1}s", started.elapsed().as_secs_f64())));
        if attempts.len() as u32 == MAX {
            break;
        }
    }
    let stored = bus::wait_dead_letter(&bus.js, &event.id, SOON).await;
    assert_eq!(stored.letter.reason, "delivery_exhausted");
    let numbers: Vec<u32> = attempts.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        numbers,
        (1..=MAX).collect::<Vec<_>>(),
        "the subscriber should see attempts 1..={MAX}, each once, before the dead letter; it saw (attempt, time): {attempts:?}"
    );
}

#[tokio::test]
async fn acking_a_redelivery_frees_its_slot_in_the_in_flight_window() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let mut sub = bus.subscribe(sub_with("window-after-redelivery", Duration::from_secs(1), 5), 2).await;
    let first = bus.publish(1).await;
    let d1 = sub.expect_next("first delivery", SOON).await;
    let d2 = sub.expect_next("redelivery after the ack wait", SOON).await;
    assert_eq!((delivered_id(&d2), d2.attempt), (first[0].id.clone(), 2));
    // The client acks the delivery it processed: the event is acked, nothing of it is in flight.
    sub.ack(vec![d2.delivery_id]).await;
    let _ = d1;

    let next = bus.publish(2).await;
    let a = sub.expect_next("the first of two new events (window 2, nothing unacked)", SOON).await;
    let b = sub.next_within(Duration::from_secs(5)).await.unwrap_or_else(|| {
        panic!(
            "only 1 of 2 new events delivered with a window of 2 and 1 delivery unacked: \
             the first delivery of the acked, redelivered event still holds a slot"
        )
    });
    assert_eq!(vec![delivered_id(&a), delivered_id(&b)], vec![next[0].id.clone(), next[1].id.clone()]);
    sub.ack(vec![a.delivery_id, b.delivery_id]).await;
}

#[tokio::test]
async fn nack_with_delay_waits_that_long_and_nack_without_delay_redelivers_at_once() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    // Ack wait far beyond the test: every redelivery here is caused by a nack.
    let mut sub = bus.subscribe(sub_with("retry", Duration::from_secs(60), 10), 10).await;
    let events = bus.publish(1).await;

    let first = sub.expect_next("first delivery", SOON).await;
    let delay = Duration::from_secs(2);
    let nacked = Instant::now();
    sub.nack(first.delivery_id, Some(delay)).await;
    let second = sub.expect_next("redelivery after the nack delay", SOON).await;
    let waited = nacked.elapsed();
    assert_eq!((delivered_id(&second), second.attempt), (events[0].id.clone(), 2));
    assert!(waited >= delay.mul_f64(0.8), "nacked with a {delay:?} delay, redelivered after {waited:?}");

    let nacked = Instant::now();
    sub.nack(second.delivery_id, None).await;
    let third = sub.expect_next("prompt redelivery after a plain nack", SOON).await;
    let waited = nacked.elapsed();
    assert_eq!((delivered_id(&third), third.attempt), (events[0].id.clone(), 3));
    assert!(waited < Duration::from_secs(2), "plain nack redelivered only after {waited:?}");

    sub.ack(vec![third.delivery_id]).await;
    sub.expect_nothing_for(Duration::from_millis(1000), "acked").await;
}

#[tokio::test]
async fn unacked_past_max_deliveries_is_dead_lettered_as_delivery_exhausted_and_not_delivered_again() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let mut sub = bus.subscribe(sub_with("poison", Duration::from_secs(1), 2), 10).await;
    let event = bus::event(SOURCE, TYPE, 7);
    let bytes = bus::publish_ingress(&bus.js, &event).await;

    let mut seen = Vec::new();
    for attempt in 1..=2 {
        let d = sub.expect_next(&format!("attempt {attempt}"), SOON).await;
        seen.push((d.delivery_id, d.stream_sequence, d.attempt));
        assert_eq!(
            (delivered_id(&d), d.attempt),
            (event.id.clone(), attempt),
            "deliveries so far (delivery id, stream sequence, attempt): {seen:?}; KH_EVENTS holds {}",
            bus::stream_len(&bus.js, bus::EVENTS).await
        );
        // Never acked.
    }
    let stored = bus::wait_dead_letter(&bus.js, &event.id, SOON).await;
    let letter = &stored.letter;
    assert_eq!(letter.reason, "delivery_exhausted");
    assert_eq!(stored.header("Kh-Reason").as_deref(), Some("delivery_exhausted"));
    assert_eq!(stored.subject, format!("kh.dlq.{SOURCE}.{TYPE}"));
    assert!(
        letter.subscription.contains(READER) && letter.subscription.contains("poison"),
        "the letter names the subscription: {:?}",
        letter.subscription
    );
    assert_eq!((letter.source.as_str(), letter.r#type.as_str()), (SOURCE, TYPE));
    assert_eq!(letter.raw, bytes, "raw bytes are the event exactly as published");
    assert_eq!(letter.original_subject, format!("kh.ev.{TYPE}"));

    sub.expect_nothing_for(Duration::from_secs(3), "exhausted events are not delivered again").await;
    let letters: Vec<_> =
        bus::dead_letters(&bus.js).await.into_iter().filter(|l| l.letter.event_id == event.id).collect();
    assert_eq!(letters.len(), 1, "one dead letter per exhausted event");
}

/// Sets `KH_DLQ`'s `max_message_size` as an operator would; returns the one it had.
async fn resize_dead_letter_stream(js: &async_nats::jetstream::Context, max_message_size: i32) -> i32 {
    let mut dlq = js.get_stream(bus::DLQ).await.expect("KH_DLQ");
    let mut config = dlq.info().await.expect("KH_DLQ info").config.clone();
    let was = std::mem::replace(&mut config.max_message_size, max_message_size);
    js.update_stream(config).await.expect("resize KH_DLQ");
    was
}

#[tokio::test]
async fn a_dead_letter_refused_as_too_large_keeps_its_event_in_kh_events_without_a_redelivery_loop() {
    // KH_DLQ made smaller than this event's dead letter after the registry started (which checks
    // it): JetStream refuses the letter (err_code 10054) however often it is tried. Once, the
    // event was then redelivered and refused again at every ack wait, forever, without a word.
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let mut sub = bus.subscribe(sub_with("oversized-letter", Duration::from_secs(1), 1), 10).await;
    let consumer = format!("sub_{READER}_oversized-letter");
    let limit = resize_dead_letter_stream(&bus.js, 64).await;
    let event = bus::event(SOURCE, TYPE, 3);
    let bytes = bus::publish_ingress(&bus.js, &event).await;
    let first = sub.expect_next("attempt 1", SOON).await;
    assert_eq!(delivered_id(&first), event.id);
    // Never acked: the delivery past the maximum (1) is the dead letter's first, refused, try.
    wait::until("the delivery past max_deliveries", SOON, || {
        let (js, consumer) = (bus.js.clone(), consumer.clone());
        async move {
            let info = bus::consumer_info(&js, bus::EVENTS, &consumer).await;
            (info.delivered.consumer_sequence >= 2).then_some(())
        }
    })
    .await;
    sub.expect_nothing_for(Duration::from_secs(4), "an exhausted event is not delivered again").await;
    let info = bus::consumer_info(&bus.js, bus::EVENTS, &consumer).await;
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "the refused dead letter is tried again only after a long delay, not at each 1 s ack wait: {info:?}"
    );
    assert_eq!(info.num_ack_pending, 1, "not terminated without its dead letter: {info:?}");
    assert_eq!(bus::stream_len(&bus.js, bus::EVENTS).await, 1, "the event stays in KH_EVENTS");
    assert!(bus::dead_letters(&bus.js).await.is_empty(), "KH_DLQ refuses the letter");

    // The operator raises KH_DLQ's limit again; the subscriber's next stream gets the event
    // back at once and, unacked, it is dead-lettered whole.
    resize_dead_letter_stream(&bus.js, limit).await;
    drop(sub);
    let mut sub = Subscriber::expect_open(&bus.registry.endpoint(), READER, "oversized-letter", 10).await;
    let again = sub.expect_next("the event again on the next stream", Duration::from_secs(30)).await;
    assert_eq!(delivered_id(&again), event.id);
    let stored = bus::wait_dead_letter(&bus.js, &event.id, SOON).await;
    assert_eq!(stored.letter.reason, "delivery_exhausted");
    assert_eq!(stored.letter.raw, bytes, "raw bytes are the event exactly as published");
    let size = kakehashi_registry::dead_letter::message_len(&stored.headers, stored.letter.encoded_len());
    assert!(size <= usize::try_from(limit).expect("a limit"), "{size} bytes in KH_DLQ's {limit}");
    sub.expect_nothing_for(Duration::from_secs(2), "dead-lettered events are not delivered again").await;
}

#[tokio::test]
async fn deliveries_lost_in_transit_do_not_let_newer_events_overtake_them() {
    // Deliveries NATS made that never reached the stream (a node died with them in flight) are
    // played here by another client pulling from the subscription's consumer and dropping what
    // it gets. The ack wait is long: only noticing the gap can keep the order.
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let mut sub = bus.subscribe(sub_with("lossy", Duration::from_secs(60), 10), 1).await;
    let events = bus.publish(6).await;
    let first = sub.expect_next("event 0", SOON).await;
    assert_eq!(delivered_id(&first), events[0].id);
    bus::wait_stream_len(&bus.js, bus::EVENTS, 6, SOON).await;
    // The stream's window (1) is full, so nothing else is pulled for it: take events 1..=3.
    let consumer: async_nats::jetstream::consumer::PullConsumer = bus
        .js
        .get_consumer_from_stream("sub_mhlw_lossy", bus::EVENTS)
        .await
        .expect("the subscription's consumer");
    let mut stolen = consumer.fetch().max_messages(3).messages().await.expect("fetch");
    let mut lost = 0;
    while let Some(m) = futures::StreamExt::next(&mut stolen).await {
        m.expect("a delivery");
        lost += 1;
    }
    assert_eq!(lost, 3, "three deliveries lost in transit");
    sub.expect_ack(vec![first.delivery_id]).await;
    // Every event not yet delivered to the department now comes in publish order, first
    // delivery unmarked; nothing newer overtakes the lost ones.
    let mut order = Vec::new();
    while order.len() < 5 {
        let Some(d) = sub.next_within(SOON).await else { break };
        let id = delivered_id(&d);
        if !order.contains(&id) && id != events[0].id {
            order.push(id);
        }
        sub.expect_ack(vec![d.delivery_id]).await;
    }
    let want: Vec<String> = events[1..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(order, want, "first deliveries in publish order (events 1..=5)");
}

#[tokio::test]
async fn a_delivery_taken_by_a_stale_pull_before_the_first_one_does_not_let_newer_events_overtake_it() {
    // A pull request nobody will read (a crashed stream's, still waiting on the server) sits in
    // the consumer's queue when a new stream opens on a consumer with nothing unacked (so the
    // stream does not reset it). NATS hands the next event to the stale request first: the
    // very first delivery the new stream sees already follows a lost one. Once, the check for
    // lost deliveries only started from the stream's first delivery and missed exactly this
    // (the old-store cluster scenario: first deliveries at attempt 2-3 after newer events).
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let sub = sub_with("stale", Duration::from_secs(60), 10);
    bus::create_subscription(&bus.registry.endpoint(), sub).await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = bus
        .js
        .get_consumer_from_stream("sub_mhlw_stale", bus::EVENTS)
        .await
        .expect("the subscription's consumer");
    let mut stale = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("a stale pull request");
    let consumer_info = |c: async_nats::jetstream::consumer::PullConsumer| async move {
        let mut c = c;
        c.info().await.ok().cloned()
    };
    wait::until("the stale request to wait on the server", SOON, || {
        let c = consumer.clone();
        async move { consumer_info(c).await.filter(|i| i.num_waiting == 1).map(drop) }
    })
    .await;
    let mut sub = Subscriber::expect_open(&bus.registry.endpoint(), READER, "stale", 10).await;
    wait::until("the stream's pull request to wait behind it", SOON, || {
        let c = consumer.clone();
        async move { consumer_info(c).await.filter(|i| i.num_waiting >= 2).map(drop) }
    })
    .await;
    let events = bus.publish(6).await;
    let taken =
        futures::StreamExt::next(&mut stale).await.expect("the stale request got one").expect("a delivery");
    // KH_EVENTS holds binary-mode CloudEvents (kakehashi_proto::cloudevents).
    let taken =
        kakehashi_proto::cloudevents::binary::from_events_message(taken.headers.as_ref(), &taken.payload)
            .expect("an event")
            .id;
    assert_eq!(taken, events[0].id, "the stale request, first in the queue, takes event 0");
    drop(stale);
    // The ack wait is a minute: only noticing the jump keeps event 0 ahead of the others.
    let mut order = Vec::new();
    while order.len() < events.len() {
        let Some(d) = sub.next_within(SOON).await else { break };
        let id = delivered_id(&d);
        if !order.contains(&id) {
            order.push(id);
        }
        sub.expect_ack(vec![d.delivery_id]).await;
    }
    let want: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(order, want, "first deliveries in publish order, event 0 included (within {SOON:?})");
}

#[tokio::test]
async fn offline_department_catches_up_on_everything_in_publish_order() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let adapter = Adapter::start(adapter_config(&bus.nats)).await;
    bus::create_subscription(&bus.registry.endpoint(), bus::subscription(READER, "catchup", TYPE)).await;

    // Published through the adapter while no Subscribe stream is open.
    let mut publisher = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let mut sent = Vec::new();
    for n in 0..50 {
        let e = Event { id: String::new(), ..bus::event(SOURCE, TYPE, n) };
        sent.push(publisher.publish(e).await.expect("publish").into_inner().event_id);
    }
    bus::wait_stream_len(&bus.js, bus::EVENTS, 50, SOON).await;

    let mut sub = Subscriber::expect_open(&bus.registry.endpoint(), READER, "catchup", 64).await;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d = sub.expect_next(&format!("event {} of 50 after reconnecting", got.len()), SOON).await;
        sub.ack(vec![d.delivery_id]).await;
        got.push(delivered_id(&d));
    }
    assert_eq!(got, sent, "all 50, once each, in publish order");
    sub.expect_nothing_for(Duration::from_millis(1000), "nothing beyond the 50").await;
}

#[tokio::test]
async fn producer_policy_change_takes_effect_without_restart() {
    // Readers are allowed from the start (a subscription needs it); producers are not.
    let bus = Bus::start(&[], |_| {}).await;
    let mut sub = bus.subscribe(bus::subscription(READER, "policy", TYPE), 10).await;

    let refused = bus::event(SOURCE, TYPE, 1);
    let refused_bytes = bus::publish_ingress(&bus.js, &refused).await;
    let stored = bus::wait_dead_letter(&bus.js, &refused.id, SOON).await;
    assert_eq!(stored.letter.reason, "not_permitted");
    assert_eq!(stored.letter.raw, refused_bytes);

    bus::put_policy(&bus.registry.endpoint(), "test.>", &[SOURCE], &[READER]).await;
    let allowed = bus::event(SOURCE, TYPE, 2);
    bus::publish_ingress(&bus.js, &allowed).await;
    let d = sub.expect_next("the event published after the policy change", SOON).await;
    assert_eq!(delivered_id(&d), allowed.id, "the refused event is never delivered");
    sub.ack(vec![d.delivery_id]).await;
}

/// Publishes `bytes` on `subject` and returns the dead letter for `event_id` after checking what
/// every rejection must carry: the reason in body and header, the subject, the bytes exactly.
async fn rejected_with(
    bus: &Bus,
    subject: &str,
    event: &Event,
    reason: &str,
) -> kakehashi_tests::bus::StoredLetter {
    let bytes = event.encode_to_vec();
    bus::publish_raw(&bus.js, subject, bytes.clone(), Some(&event.id)).await;
    let stored = bus::wait_dead_letter(&bus.js, &event.id, SOON).await;
    assert_eq!(stored.letter.reason, reason, "message: {}", stored.letter.message);
    assert_eq!(stored.header("Kh-Reason").as_deref(), Some(reason));
    assert_eq!(stored.letter.raw, bytes, "raw bytes kept byte for byte");
    assert_eq!(stored.letter.original_subject, subject);
    assert!(!stored.letter.message.is_empty());
    stored
}

/// Nothing reaches KH_EVENTS: a rejected event is never delivered to anyone.
async fn assert_no_events(bus: &Bus) {
    assert_eq!(bus::stream_len(&bus.js, bus::EVENTS).await, 0, "a rejected event reached KH_EVENTS");
}

#[tokio::test]
async fn event_claiming_another_source_than_its_subject_is_dead_lettered_source_mismatch() {
    let bus = Bus::start(&["dept-a", "dept-b"], |_| {}).await;
    let event = bus::event("dept-b", TYPE, 1);
    rejected_with(&bus, &format!("kh.in.dept-a.{TYPE}"), &event, "source_mismatch").await;
    assert_no_events(&bus).await;
}

#[tokio::test]
async fn event_of_a_type_without_schema_is_dead_lettered_unknown_type() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let event = bus::event(SOURCE, "test.never.registered", 1);
    let stored =
        rejected_with(&bus, &format!("kh.in.{SOURCE}.test.never.registered"), &event, "unknown_type").await;
    assert_eq!(stored.subject, format!("kh.dlq.{SOURCE}.test.never.registered"));
    assert_no_events(&bus).await;
}

#[tokio::test]
async fn payload_over_the_registry_limit_is_dead_lettered_payload_too_large() {
    let bus = Bus::start(&[SOURCE], |c| c.limits.max_payload_bytes = 256).await;
    let mut event = bus::event(SOURCE, TYPE, 1);
    event.data = serde_json::json!({"n": 1, "pad": "x".repeat(1000)}).to_string().into_bytes();
    let stored = rejected_with(&bus, &format!("kh.in.{SOURCE}.{TYPE}"), &event, "payload_too_large").await;
    assert_eq!(stored.subject, format!("kh.dlq.{SOURCE}.{TYPE}"));
    assert_no_events(&bus).await;

    // The limit is on the payload only: a small event of the same type still goes through.
    let small = bus::event(SOURCE, TYPE, 2);
    bus::publish_ingress(&bus.js, &small).await;
    bus::wait_stream_len(&bus.js, bus::EVENTS, 1, SOON).await;
}

#[tokio::test]
async fn event_from_a_department_no_policy_names_is_dead_lettered_not_permitted() {
    let bus = Bus::start(&[SOURCE], |_| {}).await;
    let event = bus::event("dept-c", TYPE, 1);
    let stored = rejected_with(&bus, &format!("kh.in.dept-c.{TYPE}"), &event, "not_permitted").await;
    assert_eq!(stored.subject, format!("kh.dlq.dept-c.{TYPE}"));
    assert_eq!(stored.letter.source, "dept-c");
    assert_no_events(&bus).await;
    // Waiting for what did happen, not for a time: the permitted department's event arrives.
    let ok = bus::event(SOURCE, TYPE, 2);
    bus::publish_ingress(&bus.js, &ok).await;
    wait::until("the permitted event in KH_EVENTS", SOON, || async {
        (bus::stream_len(&bus.js, bus::EVENTS).await == 1).then_some(())
    })
    .await;
}

/// An ack wait is bounded by the registry's own limit, refused naming the setting: NATS takes it
/// in nanoseconds, and a huge one came back as an unclear storage error.
#[tokio::test]
async fn an_ack_wait_over_the_configured_bound_is_refused_naming_it() {
    let nats = NatsServer::start();
    let mut config = registry_config(&nats);
    config.delivery.max_ack_wait_secs = 600;
    let registry = Registry::start(config).await;
    bus::put_policy(&registry.endpoint(), "test.>", &["city-shibuya"], &["mhlw"]).await;
    let mut client =
        kakehashi_proto::v1::subscriptions_client::SubscriptionsClient::connect(registry.endpoint())
            .await
            .expect("connect registry");
    let sub = |name: &str, secs: u64| Subscription {
        department: "mhlw".into(),
        name: name.into(),
        type_pattern: "test.ackwait.recorded".into(),
        ack_wait: proto_duration(Duration::from_secs(secs)),
        ..Default::default()
    };
    for secs in [601, 1_000_000_000_000] {
        let request =
            kakehashi_proto::v1::CreateSubscriptionRequest { subscription: Some(sub("long", secs)) };
        let refused = client.create_subscription(request).await.expect_err("over the bound");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("delivery.max_ack_wait_secs"), "{}", refused.message());
    }
    let made = bus::create_subscription(&registry.endpoint(), sub("bounded", 600)).await;
    assert_eq!(made.ack_wait.map(|d| d.seconds), Some(600));
}
