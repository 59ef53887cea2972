//! Benchmark of the hot path: the ingress validator and `Delivery.Subscribe`, each against a raw
//! NATS JetStream baseline measured in the same run, on the same nats-server.
//!
//! Run it in release mode (it is not a test, and exits at once unless cargo passes `--bench`):
//!
//! ```sh
//! cargo bench -p kakehashi-tests --bench hot_path
//! ```
//!
//! Environment: `KH_BENCH_EVENTS` (throughput runs, default 50000), `KH_BENCH_LATENCY_EVENTS`
//! (paced run, default 2000), `KH_BENCH_LATENCY_RATE` (events/s of the paced run, default 500),
//! `KH_BENCH_LATENCY_KEYS` (record keys of the paced run through the bus, default 1: every
//! event in one partition, validated after the one before),
//! `KH_BENCH_TELEMETRY=1` (install the registry binary's log subscriber, `info`, so the
//! per-event spans are live as in production; logs go to stderr), `KH_BENCH_IDLE_SECS`
//! (length of each idle measurement, default 3), `KH_BENCH_AUDIT_LINGER_MS` (the registry's
//! `topology.audit_linger_ms`, default the shipped one: before/after runs of one build),
//! `KH_BENCH_KEYS` (record keys the throughput runs' events are spread over, default 1000).
//!
//! What is measured, per phase, ours first named, the raw baseline second:
//! - **1 Validator**: N vaccination events (the catalogue's valid example, prost `Event`, with
//!   `Nats-Msg-Id`) are stored in `KH_INGRESS` before any validator runs; then a registry with
//!   the validator is started and the rate is taken between the first and the last event
//!   appearing in `KH_EVENTS`. Raw: the same N envelopes in a work-queue copy stream, relayed
//!   to another stream by a pull consumer (batch 256, one batch unacked at most, publishes
//!   pipelined, each message acked after its publish is confirmed), measured the same way.
//! - **2a Delivery of a backlog**: the N validated events drained through `Delivery.Subscribe`
//!   (max_in_flight 1024, acks sent in batches) until the consumer has no ack pending. Raw: a
//!   pull consumer draining and acking the relay's N output messages.
//! - **2b End to end**: N fresh events published (pipelined, 1024 unconfirmed at most) to
//!   `kh.in.…` and received through Subscribe, validated and pseudonymised on the way. Raw: the
//!   same publishes straight into the delivery stream, received by the pull consumer.
//! - **2c Latency**: a paced run, publish → received, p50/p99/max, for both; ours also split at
//!   the validator's publish to `kh.ev.…` (seen by a plain subscription on its own connection).
//! - **3 Memory**: peak RSS (VmHWM) of this process — bench client and in-process registry, not
//!   nats-server, which is a child process reported apart — per phase (the peak is reset
//!   through `/proc/<pid>/clear_refs` before each phase) and over the run.
//! - **4 Idle**: CPU of this process and of nats-server while nothing is published, with the
//!   Subscribe stream open and then closed.
//! - **5 Audit records**: N records shaped like `KH_AUDIT`'s published pipelined to a stream
//!   configured like it, to one subject per event (as the registry does) and to one subject,
//!   with `Nats-Msg-Id`, and to one subject per event without it: what each record costs
//!   nats-server.

/// The registry runs in this process: it allocates as the shipped binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use kakehashi_proto::v1::{
    delivery_client::DeliveryClient, subscribe_request, AckDeliveries, Event, EventDelivery,
    OpenSubscription, SubscribeRequest,
};
use kakehashi_proto::{cloudevents, subjects};
use kakehashi_tests::bench::{
    child_pid, connect, cores, cpu_time, create_raw_streams, env_count, env_usize, example_payload, keyed,
    latency_ms, new_event, paced, publish_bytes_pipelined, publish_pipelined, raw_consumer, relay,
    setup_registry, status_kb, wait_acked, RAW_IN, RAW_OUT, READER, SOURCE, TYPE,
};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{bus, NatsServer, Registry};
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SUBSCRIPTION: &str = "bench";
/// Subscribe's max_in_flight, and the raw consumer's max_ack_pending.
const IN_FLIGHT: usize = 1024;
/// Most delivery ids in one Subscribe ack.
const ACK_BATCH: usize = 256;
/// Generous bound on any one phase, so a stall fails loudly instead of hanging.
const PHASE_LIMIT: Duration = Duration::from_secs(900);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("hot_path is a benchmark: run `cargo bench -p kakehashi-tests --bench hot_path`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

/// One row of the results table.
struct Row {
    phase: &'static str,
    ours: f64,
    raw: f64,
    unit: &'static str,
}

/// CPU and memory of one phase.
struct Usage {
    phase: &'static str,
    events: usize,
    wall: Duration,
    self_cpu: Duration,
    nats_cpu: Duration,
    self_hwm_kb: u64,
    nats_hwm_kb: u64,
}

async fn run() {
    let n = env_count("KH_BENCH_EVENTS", 50_000);
    let lat_n = env_count("KH_BENCH_LATENCY_EVENTS", 2_000);
    let lat_rate = env_count("KH_BENCH_LATENCY_RATE", 500);
    let latency_keys = env_usize("KH_BENCH_LATENCY_KEYS", 1);
    let telemetry = (std::env::var("KH_BENCH_TELEMETRY").is_ok_and(|v| v == "1"))
        .then(|| kakehashi_runtime::telemetry::init("kakehashi-bench", "info").expect("telemetry"));

    let payload = example_payload();
    let sample = new_event(&payload).encode_to_vec();
    eprintln!(
        "hot_path: {n} events per throughput run; payload {} bytes, envelope {} bytes; latency run {lat_n} at {lat_rate}/s",
        payload.len(),
        sample.len()
    );

    let nats = NatsServer::start();
    let nats_pid = child_pid("nats-server");
    let base_rss_kb = status_kb(None, "VmRSS:");
    let resets = reset_hwm(None);

    // Setup through a registry whose validator is off, so ingress can be filled before
    // validation starts.
    let setup = setup_registry(&nats).await;
    let mut sub = bus::subscription(READER, SUBSCRIPTION, TYPE);
    sub.ack_wait = bus::proto_duration(Duration::from_secs(30));
    bus::create_subscription(&setup.endpoint(), sub).await;

    // Connections: "publisher" plays the adapter; "service" plays the registry for the raw
    // baseline (relay and consumer share one connection, as validator and delivery do).
    let publisher = connect(&nats).await;
    let service = connect(&nats).await;
    create_raw_streams(&service).await;
    let raw_consumer = raw_consumer(&service, IN_FLIGHT).await;

    let mut rows = Vec::new();
    let mut usage = Vec::new();

    // ---- 1. Validator vs raw relay -------------------------------------------------------
    eprintln!("phase 1 raw: pre-publishing {n} to {RAW_IN}");
    publish_pipelined(&publisher, (0..n).map(|_| ("kh.rawin.x".to_string(), new_event(&payload)))).await;
    let probe = Probe::start(nats_pid);
    let watch = tokio::spawn(watch_fill(service.clone(), RAW_OUT, n as u64));
    let relay = tokio::spawn(relay(service.clone()));
    let raw_fill = watch.await.expect("watch task");
    relay.abort();
    usage.push(probe.stop("1 raw", n));

    eprintln!("phase 1 ours: pre-publishing {n} to KH_INGRESS (validator not running)");
    // The backlogs spread over 1,000 record keys (all partitions); latency probes are keyless
    // unless `KH_BENCH_LATENCY_KEYS` says otherwise.
    publish_pipelined(&publisher, (0..n).map(|i| keyed(&payload, i))).await;
    assert_eq!(bus::stream_len(&publisher, bus::INGRESS).await, n as u64, "KH_INGRESS holds the backlog");
    setup.stop().await;
    let probe = Probe::start(nats_pid);
    let watch = tokio::spawn(watch_fill(publisher.clone(), bus::EVENTS, n as u64));
    let mut config = registry_config(&nats);
    config.instance = "registry-bench".into();
    config.topology.audit_linger_ms =
        env_usize("KH_BENCH_AUDIT_LINGER_MS", config.topology.audit_linger_ms as usize) as u64;
    let registry = Registry::start(config).await;
    // Marks where a profiler attached to this process sees only the validator at work.
    eprintln!("phase 1 ours: validator started");
    let ours_fill = watch.await.expect("watch task");
    usage.push(probe.stop("1 ours", n));
    assert_eq!(bus::stream_len(&publisher, bus::DLQ).await, 0, "every benchmark event is valid");
    rows.push(Row {
        phase: "1 validator: ingress -> events (events/s)",
        ours: ours_fill.rate(),
        raw: raw_fill.rate(),
        unit: "ev/s",
    });

    // ---- 2a. Delivery of the backlog -----------------------------------------------------
    eprintln!("phase 2a raw: draining {n} from {RAW_OUT}");
    let mut raw_sub = RawSubscriber::start(raw_consumer);
    let probe = Probe::start(nats_pid);
    let t = Instant::now();
    raw_sub.take(n, |_, _| {}).await;
    wait_acked(&service, RAW_OUT, "drain", PHASE_LIMIT).await;
    let raw_drain = n as f64 / t.elapsed().as_secs_f64();
    usage.push(probe.stop("2a raw", n));

    eprintln!("phase 2a ours: draining {n} through Delivery.Subscribe");
    let probe = Probe::start(nats_pid);
    let t = Instant::now();
    let mut ours_sub = Subscriber::open(&registry.endpoint()).await;
    let mut pseudonymised = 0usize;
    let drained = ours_sub
        .take(n, |d, _| {
            let data = d.event.as_ref().map(|e| e.data.as_slice()).unwrap_or_default();
            if std::str::from_utf8(data).is_ok_and(|s| s.contains("\"kh1:")) {
                pseudonymised += 1;
            }
        })
        .await;
    let consumer_name = format!("sub_{READER}_{SUBSCRIPTION}");
    wait_acked(&publisher, bus::EVENTS, &consumer_name, PHASE_LIMIT).await;
    let ours_drain = n as f64 / t.elapsed().as_secs_f64();
    usage.push(probe.stop("2a ours", n));
    assert_eq!(pseudonymised, n, "every delivery carries the reader's pseudonym, not the My Number");
    rows.push(Row {
        phase: "2a delivery: backlog -> subscriber, acked (events/s)",
        ours: ours_drain,
        raw: raw_drain,
        unit: "ev/s",
    });

    // ---- 2b. End to end ------------------------------------------------------------------
    eprintln!("phase 2b raw: publish {n} -> pull consumer");
    let raw_subject = kakehashi_tests::bench::raw_events_subject();
    let probe = Probe::start(nats_pid);
    let t = Instant::now();
    let p = {
        let (js, payload, subject) = (publisher.clone(), payload.clone(), raw_subject.clone());
        tokio::spawn(async move {
            publish_pipelined(&js, (0..n).map(|_| (subject.clone(), new_event(&payload)))).await
        })
    };
    raw_sub.take(n, |_, _| {}).await;
    wait_acked(&service, RAW_OUT, "drain", PHASE_LIMIT).await;
    let raw_e2e = n as f64 / t.elapsed().as_secs_f64();
    p.await.expect("publisher");
    usage.push(probe.stop("2b raw", n));

    eprintln!("phase 2b ours: publish {n} -> validator -> Subscribe");
    let probe = Probe::start(nats_pid);
    let t = Instant::now();
    let p = {
        let (js, payload) = (publisher.clone(), payload.clone());
        tokio::spawn(async move { publish_pipelined(&js, (0..n).map(|i| keyed(&payload, i))).await })
    };
    let e2e = ours_sub.take(n, |_, _| {}).await;
    wait_acked(&publisher, bus::EVENTS, &consumer_name, PHASE_LIMIT).await;
    let ours_e2e = n as f64 / t.elapsed().as_secs_f64();
    p.await.expect("publisher");
    usage.push(probe.stop("2b ours", n));
    rows.push(Row {
        phase: "2b end to end: publish -> received, acked (events/s)",
        ours: ours_e2e,
        raw: raw_e2e,
        unit: "ev/s",
    });

    // ---- 2c. Latency at a fixed rate -----------------------------------------------------
    eprintln!("phase 2c: {lat_n} events at {lat_rate}/s, raw then ours");
    let probe = Probe::start(nats_pid);
    let raw_lat = {
        let sent = Arc::new(Mutex::new(HashMap::with_capacity(lat_n)));
        let (payload, subject) = (payload.clone(), raw_subject.clone());
        let p = tokio::spawn(paced(
            publisher.clone(),
            move |_| new_event(&payload),
            move |_| subject.clone(),
            lat_n,
            lat_rate,
            sent.clone(),
        ));
        let mut lat = Vec::with_capacity(lat_n);
        raw_sub.take(lat_n, |id, at| lat.push(latency_ms(&sent, id, at))).await;
        p.await.expect("paced publisher");
        Percentiles::of(lat)
    };
    usage.push(probe.stop("2c raw", lat_n));
    let probe = Probe::start(nats_pid);
    // Where an event is when the validator has published it: a plain NATS subscription on the
    // validated subjects (on its own connection) notes when each event id passes there.
    let validated = Arc::new(Mutex::new(HashMap::with_capacity(lat_n)));
    let watcher = {
        let validated = validated.clone();
        let mut seen =
            connect(&nats).await.client().subscribe(subjects::events(TYPE)).await.expect("watch KH_EVENTS");
        tokio::spawn(async move {
            while let Some(m) = seen.next().await {
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(cloudevents::binary::ID))
                    .map(|v| v.as_str().to_string());
                if let Some(id) = id {
                    validated.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
                }
            }
        })
    };
    let mut split = (Vec::with_capacity(lat_n), Vec::with_capacity(lat_n));
    let ours_lat = {
        let sent = Arc::new(Mutex::new(HashMap::with_capacity(lat_n)));
        let payload = payload.clone();
        let p = tokio::spawn(paced(
            publisher.clone(),
            // One record key (one partition, each event validated after the one before), or
            // `KH_BENCH_LATENCY_KEYS` keys spread over the partitions.
            move |i| match latency_keys {
                0 | 1 => new_event(&payload),
                k => keyed(&payload, i % k).1,
            },
            |e| subjects::ingress(SOURCE, TYPE, &e.subject),
            lat_n,
            lat_rate,
            sent.clone(),
        ));
        let mut lat = Vec::with_capacity(lat_n);
        ours_sub
            .take(lat_n, |d, at| {
                let id = d.event.as_ref().map(|e| e.id.as_str()).unwrap_or_default();
                lat.push(latency_ms(&sent, id, at));
                if let Some(v) = validated.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied() {
                    split.0.push(latency_ms(&sent, id, v));
                    split.1.push(at.saturating_duration_since(v).as_secs_f64() * 1e3);
                }
            })
            .await;
        p.await.expect("paced publisher");
        Percentiles::of(lat)
    };
    usage.push(probe.stop("2c ours", lat_n));
    watcher.abort();
    let seen = split.0.len();
    let (to_validated, to_received) = (Percentiles::of(split.0), Percentiles::of(split.1));
    let split_line = format!(
        "2c ours, split at the validator's publish ({seen} of {lat_n} seen there): publish -> validated p50 {:.2} / p99 {:.2} ms; validated -> received p50 {:.2} / p99 {:.2} ms",
        to_validated.p50, to_validated.p99, to_received.p50, to_received.p99
    );
    for (phase, ours, raw) in [
        ("2c latency p50 publish -> received (ms)", ours_lat.p50, raw_lat.p50),
        ("2c latency p99 publish -> received (ms)", ours_lat.p99, raw_lat.p99),
        ("2c latency max publish -> received (ms)", ours_lat.max, raw_lat.max),
    ] {
        rows.push(Row { phase, ours, raw, unit: "ms" });
    }

    // ---- 4. Idle cost of an open Subscribe stream ----------------------------------------
    // Nothing is published: what the registry and nats-server spend per second while one
    // subscriber waits (raw subscriber and validator stay open throughout, as their baseline).
    let idle = Duration::from_secs(env_count("KH_BENCH_IDLE_SECS", 3) as u64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_open = Idle::measure(nats_pid, idle).await;
    drop(ours_sub);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_closed = Idle::measure(nats_pid, idle).await;

    // ---- 3. Memory and the record --------------------------------------------------------
    let audit_records = bus::stream_len(&publisher, subjects::STREAM_AUDIT).await;
    let events_stored = bus::stream_len(&publisher, bus::EVENTS).await;
    let self_hwm = run_peak_kb(None);
    let self_rss = status_kb(None, "VmRSS:");
    let nats_rss = nats_pid.map(|p| status_kb(Some(p), "VmRSS:"));
    let nats_hwm = nats_pid.map(|p| run_peak_kb(Some(p)));

    // ---- 5. What an audit record costs nats-server ---------------------------------------
    // Records shaped like KH_AUDIT's (same encoding, file stream, 30-day limit), published
    // pipelined: to one subject per event as KH_AUDIT does, to one subject, each with
    // Nats-Msg-Id, and to one subject per event without it (as the writer now publishes).
    let audit_unique = audit_like(&publisher, nats_pid, n, true, true).await;
    let audit_single = audit_like(&publisher, nats_pid, n, false, true).await;
    let audit_no_id = audit_like(&publisher, nats_pid, n, true, false).await;

    println!();
    println!(
        "hot_path: {n} events/run, envelope {} bytes (payload {} bytes), latency run {lat_n} at {lat_rate}/s",
        sample.len(),
        payload.len()
    );
    println!(
        "cores: {}, telemetry subscriber: {}, per-phase peak RSS reset via clear_refs: {}",
        cores(),
        telemetry.is_some(),
        if resets { "yes" } else { "no (per-phase peaks are cumulative)" }
    );
    println!();
    println!("| {:<54} | {:>12} | {:>12} | {:>11} |", "measure", "kakehashi", "raw NATS", "ours/raw");
    println!("|{:-<56}|{:->14}|{:->14}|{:->13}|", "", "", "", "");
    for r in &rows {
        let ratio = if r.raw > 0.0 { r.ours / r.raw } else { f64::NAN };
        let prec = if r.unit == "ms" { 2 } else { 0 };
        println!("| {:<54} | {:>12.prec$} | {:>12.prec$} | {:>10.3}x |", r.phase, r.ours, r.raw, ratio);
    }
    println!();
    println!(
        "| {:<16} | {:>7} | {:>14} | {:>14} | {:>12} | {:>12} |",
        "phase", "wall s", "bench CPU us/ev", "nats CPU us/ev", "bench HWM MB", "nats HWM MB"
    );
    println!("|{:-<18}|{:->9}|{:->16}|{:->16}|{:->14}|{:->14}|", "", "", "", "", "", "");
    for u in &usage {
        println!(
            "| {:<16} | {:>7.2} | {:>14.1} | {:>14.1} | {:>12.1} | {:>12.1} |",
            u.phase,
            u.wall.as_secs_f64(),
            u.self_cpu.as_secs_f64() * 1e6 / u.events as f64,
            u.nats_cpu.as_secs_f64() * 1e6 / u.events as f64,
            u.self_hwm_kb as f64 / 1024.0,
            u.nats_hwm_kb as f64 / 1024.0,
        );
    }
    println!();
    println!("bench process (client + in-process registry; nats-server NOT included): peak RSS over the run {:.1} MB, VmRSS now {:.1} MB, VmRSS at start {:.1} MB", self_hwm as f64 / 1024.0, self_rss as f64 / 1024.0, base_rss_kb as f64 / 1024.0);
    match (nats_pid, nats_rss, nats_hwm) {
        (Some(pid), Some(rss), Some(hwm)) => println!(
            "nats-server (child pid {pid}): VmRSS now {:.1} MB, peak RSS over the run {:.1} MB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        _ => println!("nats-server: pid not found among this process's children; its RSS is not reported"),
    }
    println!("KH_EVENTS {events_stored} events, KH_AUDIT {audit_records} audit records ({:.2} per delivered event)", audit_records as f64 / (2 * n + lat_n) as f64);
    println!("redeliveries seen by the subscriber: drain {}, e2e {}", drained.redeliveries, e2e.redeliveries);
    println!("{split_line}");
    println!("phase 1 fill marks: ours first seen at {} of {n}, raw at {} of {n}", ours_fill.c0, raw_fill.c0);

    println!(
        "idle CPU (% of one core) with one Subscribe stream open: bench {:.1}%, nats-server {:.1}%; after it closed: bench {:.1}%, nats-server {:.1}%",
        idle_open.self_pct, idle_open.nats_pct, idle_closed.self_pct, idle_closed.nats_pct
    );
    for (what, a) in [
        ("one subject per event, Nats-Msg-Id", &audit_unique),
        ("one subject, Nats-Msg-Id", &audit_single),
        ("one subject per event, no Nats-Msg-Id", &audit_no_id),
    ] {
        println!(
            "audit-shaped records ({} bytes), {what}: {:.0} records/s, nats-server CPU {:.1} us/record, bench CPU {:.1} us/record, nats-server RSS {:+.1} MB",
            a.bytes, a.rate, a.nats_us, a.self_us, a.nats_rss_delta_mb
        );
    }
    registry.stop().await;
    drop(nats);
}

// ---- NATS ----------------------------------------------------------------------------------

/// When a stream was first seen non-empty and when it reached its target.
struct Fill {
    c0: u64,
    first: Instant,
    done: Instant,
    target: u64,
}

impl Fill {
    fn rate(&self) -> f64 {
        (self.target - self.c0) as f64 / self.done.duration_since(self.first).as_secs_f64()
    }
}

/// Polls a stream's message count every 5 ms until it holds `target` messages.
async fn watch_fill(js: jetstream::Context, name: &'static str, target: u64) -> Fill {
    let mut s = js.get_stream(name).await.expect("stream to watch");
    let limit = Instant::now() + PHASE_LIMIT;
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let now_count = s.info().await.expect("stream info").state.messages;
        let now = Instant::now();
        if now_count > 0 && first.is_none() {
            first = Some((now, now_count));
        }
        if now_count >= target {
            let (first, c0) = first.unwrap_or((now, 0));
            return Fill { c0, first, done: now, target };
        }
        assert!(now < limit, "{name} holds {now_count} of {target} after {PHASE_LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- Subscribers ---------------------------------------------------------------------------

/// What a subscriber saw in one `take`.
struct Taken {
    redeliveries: usize,
}

/// A `Delivery.Subscribe` stream read by a task; acks go out in batches of what has arrived.
struct Subscriber {
    requests: mpsc::Sender<SubscribeRequest>,
    deliveries: mpsc::UnboundedReceiver<(EventDelivery, Instant)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn open(endpoint: &str) -> Self {
        let mut client = DeliveryClient::connect(endpoint.to_string()).await.expect("connect registry");
        let (requests, rx) = mpsc::channel(1024);
        let open = OpenSubscription {
            subscription: SUBSCRIPTION.into(),
            department: READER.into(),
            max_in_flight: IN_FLIGHT as u32,
        };
        requests
            .send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) })
            .await
            .expect("open");
        let mut stream = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("Subscribe")
            .into_inner();
        let (tx, deliveries) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(d)) = stream.message().await {
                if tx.send((d, Instant::now())).is_err() {
                    return;
                }
            }
        });
        Self { requests, deliveries, reader }
    }

    /// Receives `n` distinct events, acking as it goes; `seen` gets each delivery.
    async fn take(&mut self, n: usize, mut seen: impl FnMut(&EventDelivery, Instant)) -> Taken {
        let mut ids: HashSet<String> = HashSet::with_capacity(n);
        let mut redeliveries = 0;
        let limit = Instant::now() + PHASE_LIMIT;
        let mut acks = Vec::with_capacity(ACK_BATCH);
        while ids.len() < n {
            let left = limit.saturating_duration_since(Instant::now());
            let first = tokio::time::timeout(left, self.deliveries.recv())
                .await
                .unwrap_or_else(|_| panic!("Subscribe: {} of {n} received after {PHASE_LIMIT:?}", ids.len()))
                .expect("the registry ended the Subscribe stream");
            let mut next = Some(first);
            while let Some((d, at)) = next.take() {
                if d.attempt > 1 {
                    redeliveries += 1;
                }
                seen(&d, at);
                if let Some(e) = &d.event {
                    ids.insert(e.id.clone());
                }
                acks.push(d.delivery_id);
                if acks.len() < ACK_BATCH && ids.len() < n {
                    next = self.deliveries.try_recv().ok();
                }
            }
            let delivery_ids = std::mem::replace(&mut acks, Vec::with_capacity(ACK_BATCH));
            let ack = subscribe_request::Request::Ack(AckDeliveries { delivery_ids });
            self.requests.send(SubscribeRequest { request: Some(ack) }).await.expect("send ack");
        }
        Taken { redeliveries }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The raw baseline's subscriber: a pull consumer read by a task that acks each message.
struct RawSubscriber {
    received: mpsc::UnboundedReceiver<(String, Instant)>,
    reader: tokio::task::JoinHandle<()>,
}

impl RawSubscriber {
    fn start(consumer: consumer::PullConsumer) -> Self {
        let (tx, received) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut messages =
                consumer.stream().max_messages_per_batch(IN_FLIGHT).messages().await.expect("raw pull");
            while let Some(m) = messages.next().await {
                let m = m.expect("raw message");
                let at = Instant::now();
                // Decoded as a subscriber would (prost), to have the id.
                let id = Event::decode(m.payload.as_ref()).expect("Event").id;
                m.ack().await.expect("raw ack");
                if tx.send((id, at)).is_err() {
                    return;
                }
            }
        });
        Self { received, reader }
    }

    async fn take(&mut self, n: usize, mut seen: impl FnMut(&str, Instant)) {
        let limit = Instant::now() + PHASE_LIMIT;
        let mut ids: HashSet<String> = HashSet::with_capacity(n);
        while ids.len() < n {
            let left = limit.saturating_duration_since(Instant::now());
            let (id, at) = tokio::time::timeout(left, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("raw: {} of {n} received after {PHASE_LIMIT:?}", ids.len()))
                .expect("raw reader ended");
            seen(&id, at);
            ids.insert(id);
        }
    }
}

impl Drop for RawSubscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// ---- Audit-shaped records -----------------------------------------------------------------

/// What publishing audit-shaped records cost.
struct AuditCost {
    bytes: usize,
    rate: f64,
    nats_us: f64,
    self_us: f64,
    nats_rss_delta_mb: f64,
}

/// Publishes `n` records like the registry's audit writer does (serialised `AuditRecord`) to a
/// fresh stream configured as `KH_AUDIT`, to one subject per event or to one subject, with or
/// without `Nats-Msg-Id` = actor#seq.
async fn audit_like(
    js: &jetstream::Context,
    nats: Option<u32>,
    n: usize,
    per_event: bool,
    with_id: bool,
) -> AuditCost {
    let name = format!("RAW_AUDIT_{}_{}", if per_event { "PER_EVENT" } else { "ONE" }, with_id);
    let prefix = format!("kh.rawaudit.{}.{}", if per_event { "per" } else { "one" }, with_id);
    js.create_stream(stream::Config {
        name,
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(2 * 3600),
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    })
    .await
    .expect("audit-like stream");
    let template = {
        let mut r = kakehashi_runtime::audit::AuditRecord::hop(&new_event(b"{}"), "delivered", "ok");
        r.actor = "registry-bench".into();
        r.department = READER.into();
        r.subscription = format!("sub_{READER}_{SUBSCRIPTION}");
        r.detail = "attempt 1".into();
        r.schema_version = 1;
        r.time_us = kakehashi_runtime::audit::now_us();
        r.prev_hash = "0".repeat(64);
        r.hash = "f".repeat(64);
        r
    };
    let bytes = prost::Message::encoded_len(&template);
    let records: Vec<(String, Vec<u8>, Option<String>)> = (1..=n as u64)
        .map(|seq| {
            let mut r = template.clone();
            r.event_id = kakehashi_proto::ids::new_event_id();
            r.seq = seq;
            let subject =
                if per_event { format!("{prefix}.{}", r.event_id) } else { format!("{prefix}.all") };
            let body = prost::Message::encode_to_vec(&r);
            (subject, body, with_id.then(|| format!("{}#{}", r.actor, r.seq)))
        })
        .collect();
    let rss0 = nats.map_or(0, |p| status_kb(Some(p), "VmRSS:"));
    let probe = Probe::start(nats);
    publish_bytes_pipelined(js, records.into_iter()).await;
    let u = probe.stop("audit-like", n);
    let rss1 = nats.map_or(0, |p| status_kb(Some(p), "VmRSS:"));
    AuditCost {
        bytes,
        rate: n as f64 / u.wall.as_secs_f64(),
        nats_us: u.nats_cpu.as_secs_f64() * 1e6 / n as f64,
        self_us: u.self_cpu.as_secs_f64() * 1e6 / n as f64,
        nats_rss_delta_mb: (rss1 as f64 - rss0 as f64) / 1024.0,
    }
}

// ---- Latency percentiles -------------------------------------------------------------------

struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN)
        };
        Self { p50: at(0.50), p99: at(0.99), max: at(1.0) }
    }
}

// ---- /proc ---------------------------------------------------------------------------------

/// Peak RSS (kB) seen before any reset, this process and nats-server: the run's true peaks.
static SELF_PEAK_KB: AtomicU64 = AtomicU64::new(0);
static NATS_PEAK_KB: AtomicU64 = AtomicU64::new(0);

fn peak_of(pid: Option<u32>) -> &'static AtomicU64 {
    if pid.is_some() {
        &NATS_PEAK_KB
    } else {
        &SELF_PEAK_KB
    }
}

/// The run's peak RSS of a process so far (kB): the larger of its VmHWM now and before resets.
fn run_peak_kb(pid: Option<u32>) -> u64 {
    peak_of(pid).load(Ordering::SeqCst).max(status_kb(pid, "VmHWM:"))
}

/// Resets a process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0), after keeping the
/// peak so far for [`run_peak_kb`]; returns whether the kernel accepted the reset.
fn reset_hwm(pid: Option<u32>) -> bool {
    peak_of(pid).fetch_max(status_kb(pid, "VmHWM:"), Ordering::SeqCst);
    let path = pid.map_or("/proc/self/clear_refs".to_string(), |p| format!("/proc/{p}/clear_refs"));
    std::fs::write(path, "5").is_ok()
}

/// CPU use over an idle interval, in % of one core.
struct Idle {
    self_pct: f64,
    nats_pct: f64,
}

impl Idle {
    async fn measure(nats: Option<u32>, over: Duration) -> Self {
        let (s0, n0) = (cpu_time(None), nats.map_or(Duration::ZERO, |p| cpu_time(Some(p))));
        let t = Instant::now();
        tokio::time::sleep(over).await;
        let secs = t.elapsed().as_secs_f64();
        let (s1, n1) = (cpu_time(None), nats.map_or(Duration::ZERO, |p| cpu_time(Some(p))));
        Self {
            self_pct: s1.saturating_sub(s0).as_secs_f64() * 100.0 / secs,
            nats_pct: n1.saturating_sub(n0).as_secs_f64() * 100.0 / secs,
        }
    }
}

/// CPU time and peak RSS over one phase.
struct Probe {
    nats: Option<u32>,
    started: Instant,
    self_cpu: Duration,
    nats_cpu: Duration,
}

impl Probe {
    fn start(nats: Option<u32>) -> Self {
        reset_hwm(None);
        if nats.is_some() {
            reset_hwm(nats);
        }
        Self {
            nats,
            started: Instant::now(),
            self_cpu: cpu_time(None),
            nats_cpu: nats.map_or(Duration::ZERO, |p| cpu_time(Some(p))),
        }
    }

    fn stop(self, phase: &'static str, events: usize) -> Usage {
        Usage {
            phase,
            events,
            wall: self.started.elapsed(),
            self_cpu: cpu_time(None).saturating_sub(self.self_cpu),
            nats_cpu: self.nats.map_or(Duration::ZERO, |p| cpu_time(Some(p))).saturating_sub(self.nats_cpu),
            self_hwm_kb: status_kb(None, "VmHWM:"),
            nats_hwm_kb: self.nats.map_or(0, |p| status_kb(Some(p), "VmHWM:")),
        }
    }
}
