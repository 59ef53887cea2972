//! The repeat marks' promise, against a real `KH_CONFIG`-like bucket: the stored mark is at or
//! above every event handed out, whether its step was written in the background or by the event
//! that reached it; a stream that ends normally brings it down to what it delivered, and the
//! next stream marks everything up to there as a possible repeat; a stream another one opened
//! after never brings it down.

use async_nats::jetstream::{self, kv};
use kakehashi_registry::repeats::{RepeatMarks, STEP};
use kakehashi_tests::NatsServer;

const CONSUMER: &str = "sub_mhlw_marks";

async fn stored(kv: &kv::Store) -> u64 {
    let value =
        kv.get(format!("delivered.{CONSUMER}")).await.expect("read the mark").expect("a mark is stored");
    // `<mark> <owner>`: the stream that claimed it.
    let text = std::str::from_utf8(&value).expect("utf-8");
    text.split(' ').next().unwrap_or_default().parse().expect("a number")
}

async fn bucket(nats: &NatsServer) -> kv::Store {
    let js = jetstream::new(nats.admin().await);
    js.create_key_value(kv::Config { bucket: "marks".into(), history: 5, ..Default::default() })
        .await
        .expect("bucket")
}

#[tokio::test]
async fn an_older_stream_ending_never_lowers_the_mark_under_a_newer_streams_deliveries() {
    let nats = NatsServer::start();
    let kv = bucket(&nats).await;
    let mut older = RepeatMarks::open(kv.clone(), CONSUMER).await.expect("open");
    for seq in 1..=1000 {
        older.before_delivery(seq).await.expect("mark stored");
    }
    // The client reopens on another registry while the older stream still runs there: the
    // newer one starts below the stored mark and delivers without raising it.
    let below = stored(&kv).await;
    assert!(below > 1000, "the mark is ahead of the older stream's deliveries");
    let mut newer = RepeatMarks::open(kv.clone(), CONSUMER).await.expect("open");
    for seq in 1001..=below {
        assert!(
            newer.before_delivery(seq).await.expect("mark"),
            "{seq} may have gone out on the older stream"
        );
    }
    // The older stream notices its client is gone, then the newer one ends.
    older.release().await;
    newer.release().await;
    assert!(stored(&kv).await >= below, "the mark must stay above what the newer stream delivered");
    let mut next = RepeatMarks::open(kv, CONSUMER).await.expect("open again");
    for seq in [1001, below] {
        assert!(next.before_delivery(seq).await.expect("mark"), "{seq} was delivered: a possible repeat");
    }
}

#[tokio::test]
async fn the_stored_mark_is_never_below_an_event_handed_out() {
    let nats = NatsServer::start();
    let kv = bucket(&nats).await;
    let mut marks = RepeatMarks::open(kv.clone(), CONSUMER).await.expect("open");
    let last = STEP * 5 + 7;
    for seq in 1..=last {
        assert!(!marks.before_delivery(seq).await.expect("mark stored"), "{seq} is a first delivery");
        // The first delivery raises the mark to 1 + STEP, and each step after adds STEP: the
        // event just past a step is where a step still being written would show. Read only
        // there, so the deliveries in between come as fast as a backlog's.
        if seq % STEP == 2 || seq == last {
            let mark = stored(&kv).await;
            assert!(mark >= seq, "event {seq} handed out with the stored mark at {mark}");
        }
    }
    marks.release().await;
    assert_eq!(stored(&kv).await, last, "a normal end lowers the mark to what was delivered");

    let mut next = RepeatMarks::open(kv, CONSUMER).await.expect("open again");
    assert!(next.before_delivery(last).await.expect("mark"), "delivered before: a possible repeat");
    assert!(!next.before_delivery(last + 1).await.expect("mark"), "never delivered: a first delivery");
}
