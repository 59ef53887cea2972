//! What the benchmarks (`tests/benches/`) share: the workload (the catalogue's vaccination
//! example from `city-shibuya`, spread over [`KEYS`] record keys), the setup registry, the
//! bench's NATS connection, pipelined publishing, the raw NATS baseline (copies of
//! `KH_INGRESS` and `KH_EVENTS` and a relay between them shaped like the validator), and CPU
//! and process readings from `/proc`.

use crate::services::registry_config;
use crate::{bus, NatsServer, Registry};
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kakehashi_proto::subjects;
use kakehashi_proto::v1::Event;
use prost::Message as _;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Event type of the workload.
pub const TYPE: &str = "health.vaccination.recorded";
/// The publishing department.
pub const SOURCE: &str = "city-shibuya";
/// The reading department.
pub const READER: &str = "mhlw";
/// Record keys the events are spread over.
pub const KEYS: usize = 1000;
/// The validator's batch (registry default), used by the raw relay too.
pub const BATCH: usize = 256;
/// Unconfirmed publishes a publisher keeps in flight.
pub const PUBLISH_WINDOW: usize = 1024;
/// Raw baseline streams, on `kh.rawin.>` and `kh.rawev.>` (the `admin` identity may publish
/// `kh.>` only).
pub const RAW_IN: &str = "RAW_IN";
pub const RAW_OUT: &str = "RAW_OUT";

// ---- Events --------------------------------------------------------------------------------

/// The catalogue's valid vaccination example (`valid-mr-second-dose.json`).
pub fn example_payload() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/health.vaccination.recorded/examples/valid-mr-second-dose.json");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Record keys of the throughput runs: `KH_BENCH_KEYS`, default [`KEYS`]. Each key's bucket
/// is a token of its stored ingress subject, so this also sets how many subjects the
/// partitions' filtered consumers match among.
pub fn backlog_keys() -> usize {
    static KEYS_SET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEYS_SET.get_or_init(|| env_usize("KH_BENCH_KEYS", KEYS).max(1))
}

/// Event `i`, with record key `resident-<i mod backlog_keys()>`, and its ingress subject.
pub fn keyed(payload: &[u8], i: usize) -> (String, Event) {
    let mut e = new_event(payload);
    e.subject = format!("resident-{}", i % backlog_keys());
    (subjects::ingress(SOURCE, TYPE, &e.subject), e)
}

/// A vaccination event as an adapter would publish it: fresh id, time now.
pub fn new_event(payload: &[u8]) -> Event {
    let mut e = Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: SOURCE.into(),
        r#type: TYPE.into(),
        data_content_type: "application/json".into(),
        data: payload.to_vec(),
        ..Default::default()
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut time = e.time.take().unwrap_or_default();
    time.seconds = now.as_secs() as i64;
    time.nanos = now.subsec_nanos() as i32;
    e.time = Some(time);
    e
}

// ---- Setup ---------------------------------------------------------------------------------

/// A registry in this process with the validator off, holding the catalogue and the policy
/// ([`SOURCE`] → [`READER`] for [`TYPE`]), so ingress can be filled before any validator runs.
pub async fn setup_registry(nats: &NatsServer) -> Registry {
    let mut config = registry_config(nats);
    config.validator.enabled = false;
    config.instance = "registry-setup".into();
    let setup = Registry::start(config).await;
    let conn = crate::services::cli_conn(&setup.endpoint(), "", nats);
    let mut schemas = kakehashi_ctl::clients::registry(&conn).await.expect("connect registry");
    let catalogue = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    kakehashi_ctl::commands::schema::load(&mut schemas, &catalogue, true).await.expect("catalogue loads");
    bus::put_policy(&setup.endpoint(), TYPE, &[SOURCE], &[READER]).await;
    setup
}

// ---- NATS ----------------------------------------------------------------------------------

/// The bench's connection, as the break-glass identity (publishes for the department and
/// reads every stream; its permission checks cost the server no more than a service
/// identity's), with a 30 s publish-ack timeout.
pub async fn connect(nats: &NatsServer) -> jetstream::Context {
    let client = nats.admin().await;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(30));
    js
}

/// Copies of KH_INGRESS and KH_EVENTS for the baseline: same storage, retention, dedup window.
pub async fn create_raw_streams(js: &jetstream::Context) {
    let base = |name: &str, subject: &str| stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(2 * 3600),
        max_message_size: 1024 * 1024,
        ..Default::default()
    };
    js.create_stream(stream::Config {
        retention: stream::RetentionPolicy::WorkQueue,
        ..base(RAW_IN, "kh.rawin.>")
    })
    .await
    .expect("RAW_IN");
    js.create_stream(stream::Config {
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..base(RAW_OUT, "kh.rawev.>")
    })
    .await
    .expect("RAW_OUT");
}

/// The baseline subscriber's durable consumer on [`RAW_OUT`], at most `in_flight` unacked (created
/// before the relay runs, as the subscription's consumer exists on KH_EVENTS before the
/// validator runs).
pub async fn raw_consumer(js: &jetstream::Context, in_flight: usize) -> consumer::PullConsumer {
    let s = js.get_stream(RAW_OUT).await.expect("RAW_OUT");
    s.create_consumer(consumer::pull::Config {
        durable_name: Some("drain".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: in_flight as i64,
        max_deliver: -1,
        ..Default::default()
    })
    .await
    .expect("drain consumer")
}

/// The subject the raw baseline's events go to: [`TYPE`]'s `kh.ev.…` subject under `kh.rawev.`.
pub fn raw_events_subject() -> String {
    subjects::events(TYPE).replacen("kh.ev.", "kh.rawev.", 1)
}

/// Publishes everything (`Nats-Msg-Id` = event id) with at most [`PUBLISH_WINDOW`]
/// unconfirmed; panics on any failure.
pub async fn publish_pipelined(js: &jetstream::Context, events: impl Iterator<Item = (String, Event)>) {
    publish_bytes_pipelined(js, events.map(|(subject, e)| (subject, e.encode_to_vec(), Some(e.id)))).await
}

/// Publishes (subject, body, Nats-Msg-Id) with at most [`PUBLISH_WINDOW`] unconfirmed; panics
/// on any failure.
pub async fn publish_bytes_pipelined(
    js: &jetstream::Context,
    messages: impl Iterator<Item = (String, Vec<u8>, Option<String>)>,
) {
    type Confirmation = <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture;
    let mut pending: FuturesUnordered<Confirmation> = FuturesUnordered::new();
    for (subject, body, id) in messages {
        if pending.len() >= PUBLISH_WINDOW {
            if let Some(r) = pending.next().await {
                r.expect("publish confirmed");
            }
        }
        let mut m = PublishMessage::build().payload(body.into());
        if let Some(id) = id {
            m = m.message_id(id);
        }
        let f = js.send_publish(subject, m).await.expect("publish sent");
        pending.push(f.into_future());
    }
    while let Some(r) = pending.next().await {
        r.expect("publish confirmed");
    }
}

/// The raw relay from [`RAW_IN`] to [`RAW_OUT`]: the validator's shape without validation,
/// audit or telemetry: a pull consumer with batches of [`BATCH`] (one batch unacked at most),
/// publishes pipelined, each message acked once its publish is confirmed. Runs until aborted.
pub async fn relay(js: jetstream::Context) {
    let s = js.get_stream(RAW_IN).await.expect("RAW_IN");
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("relay".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            max_deliver: -1,
            max_ack_pending: BATCH as i64,
            ..Default::default()
        })
        .await
        .expect("relay consumer");
    let messages = c
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .expect("relay pull");
    let mut chunks = messages.ready_chunks(BATCH);
    let out = raw_events_subject();
    while let Some(chunk) = chunks.next().await {
        let batch: Vec<jetstream::Message> = chunk.into_iter().filter_map(Result::ok).collect();
        let mut confirmations = Vec::with_capacity(batch.len());
        for m in &batch {
            let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
            let mut p = PublishMessage::build().payload(m.payload.clone());
            if let Some(id) = id {
                p = p.message_id(id);
            }
            confirmations.push(js.send_publish(out.clone(), p).await.expect("relay publish"));
        }
        for (m, c) in batch.iter().zip(confirmations) {
            c.await.expect("relay publish confirmed");
            m.ack().await.expect("relay ack");
        }
    }
}

// ---- /proc ---------------------------------------------------------------------------------

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// User + system CPU time of a process (all threads; this process when `pid` is `None`), in
/// jiffies (USER_HZ = 100 on Linux); 0 when unreadable.
pub fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let Ok(stat) = std::fs::read_to_string(path) else { return 0 };
    // Fields after the parenthesised command name: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks(14) + ticks(15)
}

/// [`cpu_ticks`] as a duration.
pub fn cpu_time(pid: Option<u32>) -> Duration {
    Duration::from_millis(cpu_ticks(pid) * 10)
}

/// A field of `/proc/<pid>/status` in kB (this process when `pid` is `None`); 0 when unreadable.
pub fn status_kb(pid: Option<u32>, field: &str) -> u64 {
    let path = pid.map_or("/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The pid of this process's child named `comm` (e.g. `nats-server`).
pub fn child_pid(comm: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (name == comm && ppid == me).then_some(pid)
    })
}

/// A positive count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    Some(env_usize(name, default)).filter(|&n| n > 0).unwrap_or(default)
}

/// A number from the environment variable `name` (0 allowed: "skip"), else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Waits until a consumer has delivered everything and nothing is left unacked (panics after
/// `limit`).
pub async fn wait_acked(js: &jetstream::Context, stream_name: &str, consumer_name: &str, limit: Duration) {
    let s = js.get_stream(stream_name).await.expect("stream");
    let until = std::time::Instant::now() + limit;
    loop {
        let info = s.consumer_info(consumer_name).await.expect("consumer info");
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{consumer_name}: {} unacked after {limit:?}",
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes `n` events, `event(i)`, at `rate` per second to `subject(event)`, noting in `sent`
/// when each went out (its id as key); returns once every publish is confirmed.
pub async fn paced(
    js: jetstream::Context,
    event: impl Fn(usize) -> Event,
    subject: impl Fn(&Event) -> String,
    n: usize,
    rate: usize,
    sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
) {
    let start = tokio::time::Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    // Confirmations are awaited as they come: the client holds at most 5,000 unconfirmed
    // publishes (its `max_ack_inflight`), so collecting them until the end hung longer runs.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let confirming = tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            c.await.expect("publish confirmed");
        }
    });
    for i in 0..n {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let event = event(i);
        let m = PublishMessage::build().payload(event.encode_to_vec().into()).message_id(&event.id);
        sent.lock().unwrap_or_else(|p| p.into_inner()).insert(event.id.clone(), std::time::Instant::now());
        let _ = tx.send(js.send_publish(subject(&event), m).await.expect("publish sent"));
    }
    drop(tx);
    confirming.await.expect("confirmations");
}

/// Milliseconds from when `id` was sent (as [`paced`] noted it) to `at`.
pub fn latency_ms(
    sent: &std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    id: &str,
    at: std::time::Instant,
) -> f64 {
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
    let t = sent.get(id).unwrap_or_else(|| panic!("received {id} that was not sent in this run"));
    at.saturating_duration_since(*t).as_secs_f64() * 1e3
}
