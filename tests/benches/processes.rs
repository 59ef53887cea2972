//! Benchmark of the release binaries as separate OS processes (issue 16): `kakehashi-registry`
//! and `kakehashi-adapter`, each its own process beside the harness's nats-server (pinned,
//! accounts and nkeys, each service under its own least-privilege identity), against a raw
//! JetStream baseline measured in the same run on the same server; then a long run for memory.
//!
//! Run it in release mode (it is not a test, and exits at once unless cargo passes `--bench`):
//!
//! ```sh
//! cargo bench -p kakehashi-tests --bench processes
//! ```
//!
//! Build the binaries first, into the same target directory (the bench finds them next to its
//! own executable and refuses them when a source file of theirs is newer):
//!
//! ```sh
//! cargo build --release --locked -p kakehashi-registry -p kakehashi-adapter
//! ```
//!
//! It starts `<target>/release/kakehashi-registry` and `…/kakehashi-adapter` as deployed:
//! configuration file and `KAKEHASHI_*` variables, bearer tokens on gRPC (one for `mhlw`, the
//! reader, on the registry; one for `city-shibuya`, the publisher, on the adapter), logs at
//! `warn` (the hop spans stay live, as in production), no OTLP export. `KH_BENCH_REGISTRY_BIN`
//! and `KH_BENCH_ADAPTER_BIN` name other binaries.
//!
//! Environment: `KH_BENCH_EVENTS` (each throughput row, default 50000), `KH_BENCH_LATENCY_EVENTS`
//! (each paced run, default 5000), `KH_BENCH_LATENCY_RATE` (events/s of the paced runs, default
//! 1000), `KH_BENCH_WARMUP` (unmeasured events through each path first, default 2000),
//! `KH_BENCH_MEMORY_EVENTS` (the memory run, default 1000000; 0 skips it), `KH_BENCH_MEMORY_AHEAD`
//! (how far the memory run's publisher may get ahead of delivery, default 20000),
//! `KH_BENCH_STREAM_MAX_GB` (`max_bytes` set on `KH_AUDIT`, `KH_EVENTS` and the raw stream so the
//! disk cannot fill, default 16; oldest messages go first when reached),
//! `KH_BENCH_AUDIT_LINGER_MS` (both services' `topology.audit_linger_ms`; default the shipped
//! one), `KH_BENCH_DEDUP_WINDOW_SECS` (the duplicate window of `KH_INGRESS`, `KH_EVENTS` and the
//! raw streams, set before anything is published; default the shipped 2 h: nats-server keeps
//! every message id for the window, so over a shorter run its memory grows with the ids),
//! `KH_BENCH_REGISTRY_TOML` (more of the registry's configuration file, appended as given, e.g.
//! `[trace_index]` with `cache_mb = 8`; not a `[topology]` section when the linger is set),
//! `KH_BENCH_KEYS` (record keys the events are spread over, default 1000).
//!
//! The catalogue, the policy (`city-shibuya` → `mhlw` for vaccination records) and the
//! subscription are set up as in `hot_path` (an in-process registry with the validator off,
//! stopped before the processes start); `mhlw` receives the record with its pseudonym of the
//! My Number, never the number (checked on every delivery of the throughput rows).
//!
//! Rows, each against the raw baseline of the same run:
//! - **a. End to end, direct**: N events published pipelined (1,024 unconfirmed at most) to
//!   `kh.in.…` as the SDK does (`kakehashi_adapter::envelope::to_message`: prost `Event`,
//!   `Nats-Msg-Id` = event id, record keys over 1,000 keys), validated by the registry process,
//!   received through `Delivery.Subscribe` (max_in_flight 1024, acks in batches of up to 256)
//!   until the subscription's consumer has nothing pending or unacked.
//! - **b. End to end through the adapter**: the same N events sent on one `PublishStream` to the
//!   adapter process (window 256, its default), which publishes them to `kh.in.…`; received
//!   and acked as in a.
//! - **Raw** (measured right before a and again right before b): the same envelopes published
//!   the same way straight into a stream configured like `KH_EVENTS`, read by a pull consumer
//!   (max_ack_pending 1024) that acks each message: what JetStream alone does for one
//!   publish → stored → delivered → acked.
//! - **a'. Raw through two stores**: the same envelopes published into a work-queue stream
//!   (`RAW_IN`), relayed by a pull consumer in the bench process (batches of 256, publishes
//!   pipelined, each message acked once its publish is confirmed: the validator's shape without
//!   its checks) into the delivery-like stream, then read as raw. What any design that stores
//!   an event twice starts from; the relay's CPU is in the bench client's column.
//! - **a'''. Raw, stored once after a request**: each envelope sent as a core NATS request
//!   (1,024 outstanding at most) to a relay in the bench process that stores it into the
//!   delivery-like stream and answers once the store is confirmed; read as raw. The shape of a
//!   bus that validates before its first store, without the checks: what such a redesign could
//!   reach at best. Its relay's CPU is in the bench client's column too.
//! - **c. Latency**: L events at a fixed rate, publish (or send on the stream) → received, for
//!   raw, raw through two stores, raw stored once after a request, a and b.
//! - **d. CPU µs per event** of each process over each throughput row, from `/proc/<pid>/stat`
//!   (bench client, registry, adapter, nats-server), and the busy CPU of everything else on the
//!   machine over the same interval (`/proc/stat`), since the machine may be shared.
//! - **Memory**: M events end to end as in a, the publisher held at most 20,000 events ahead
//!   of delivery (steady flow, not a growing ingress backlog); RSS of the registry, nats-server, the adapter
//!   (idle in this run) and the bench at the start, at 10 evenly spaced points (every M/10
//!   received), and 5 s after the last ack; peaks (VmHWM) over the whole run; store size on disk.

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kakehashi_ctl::nats_config::permissions::Service;
use kakehashi_proto::subjects;
use kakehashi_proto::v1::{
    delivery_client::DeliveryClient, publisher_client::PublisherClient, subscribe_request, AckDeliveries,
    Event, EventDelivery, OpenSubscription, SubscribeRequest,
};
use kakehashi_tests::bench::{
    backlog_keys, child_pid, connect, cores, cpu_ticks, create_raw_streams, env_usize, example_payload,
    keyed, latency_ms, new_event, paced, raw_consumer, setup_registry, status_kb, wait_acked, PUBLISH_WINDOW,
    RAW_IN, RAW_OUT, READER, SOURCE, TYPE,
};
use kakehashi_tests::{bus, NatsServer};
use prost::Message as _;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SUBSCRIPTION: &str = "bench";
/// Subscribe's max_in_flight, and the raw consumer's max_ack_pending.
const IN_FLIGHT: usize = 1024;
/// Most delivery ids in one Subscribe ack.
const ACK_BATCH: usize = 256;
/// Generous bound on any one wait, so a stall fails loudly instead of hanging.
const PHASE_LIMIT: Duration = Duration::from_secs(1800);
/// Points of the memory run.
const MEMORY_POINTS: usize = 10;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("processes is a benchmark: run `cargo bench -p kakehashi-tests --bench processes`");
        return;
    }
    let binaries = release_binaries();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(binaries));
}

// ---- Binaries and processes ----------------------------------------------------------------

struct Binaries {
    registry: PathBuf,
    adapter: PathBuf,
}

/// The release binaries: `<target>/release/kakehashi-{registry,adapter}` next to this bench's
/// `deps/` directory, or `KH_BENCH_REGISTRY_BIN` / `KH_BENCH_ADAPTER_BIN`. They are not built
/// here (a cargo build started from inside `cargo bench` rebuilt dependencies that were fresh);
/// the bench refuses binaries older than any source file they are built from.
fn release_binaries() -> Binaries {
    let exe = std::env::current_exe().expect("current exe");
    // <target>/release/deps/processes-<hash>
    let release = exe.parent().and_then(Path::parent).expect("<target>/release");
    let named = |var: &str, bin: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| release.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX)))
    };
    let b = Binaries {
        registry: named("KH_BENCH_REGISTRY_BIN", "kakehashi-registry"),
        adapter: named("KH_BENCH_ADAPTER_BIN", "kakehashi-adapter"),
    };
    let build = format!(
        "cargo build --release --locked -p kakehashi-registry -p kakehashi-adapter --target-dir {}",
        release.parent().unwrap_or(release).display()
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Each binary against what it is built from: cargo does not relink the adapter for a change
    // of the registry alone, so one set for both refused an adapter that was up to date.
    let newest = |own: &str| {
        ["proto", "services/runtime", own, "Cargo.lock"]
            .iter()
            .map(|d| newest_mtime(&workspace.join(d)))
            .max()
            .flatten()
    };
    for (p, var, own) in [
        (&b.registry, "KH_BENCH_REGISTRY_BIN", "services/registry"),
        (&b.adapter, "KH_BENCH_ADAPTER_BIN", "services/adapter"),
    ] {
        let sources = newest(own);
        let built = std::fs::metadata(p).and_then(|m| m.modified());
        let Ok(built) = built else { panic!("{} is missing: build it first with\n  {build}", p.display()) };
        // A binary named on purpose (an older build, to compare) is taken as it is.
        if let (Some(newest), false) = (sources, std::env::var_os(var).is_some()) {
            assert!(
                built >= newest,
                "{} is older than its sources: rebuild it with\n  {build}\n(or set KH_BENCH_REGISTRY_BIN / KH_BENCH_ADAPTER_BIN)",
                p.display()
            );
        }
    }
    b
}

/// The newest modification time of the files under `path` (skipping `target` directories).
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A service binary running as a child process, stopped (SIGKILL) when dropped.
struct ServiceProcess {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `bin` with `toml` as its configuration file, the NATS identity `identity`, a gRPC
    /// address on a free loopback port; waits until its health service answers SERVING.
    async fn start(name: &'static str, bin: &Path, toml: &str, nats: &NatsServer, identity: Service) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let addr = free_port();
        let mut command = Command::new(bin);
        // Nothing of the bench's own environment that the services read: only what is set here.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("KAKEHASHI_") || k.starts_with("OTEL_") || k == "RUST_LOG" {
                command.env_remove(k.as_ref());
            }
        }
        let child = command
            .env("KAKEHASHI_CONFIG", &config)
            .env("KAKEHASHI_NATS_URL", nats.url())
            .env("KAKEHASHI_NATS_CREDENTIALS", nats.generated().service(identity))
            .env("KAKEHASHI_GRPC_ADDR", addr.to_string())
            .env("KAKEHASHI_ADAPTER_GRPC_ADDR", addr.to_string())
            .env("KAKEHASHI_INSTANCE", name)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut p = Self { name, child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{name} exited at start ({status}):\n{}", p.log());
            }
            if serving(addr).await {
                return p;
            }
            assert!(Instant::now() < deadline, "{name} not serving after 60 s:\n{}", p.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Whether the gRPC health service at `addr` answers SERVING now.
async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let Ok(endpoint) = tonic::transport::Channel::from_shared(format!("http://{addr}")) else { return false };
    let Ok(channel) = endpoint.connect().await else { return false };
    let r = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// A bearer token for the bench's departments.
fn token() -> String {
    format!("bench-{}", kakehashi_proto::ids::new_event_id().replace('-', ""))
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    r
}

// ---- The run -------------------------------------------------------------------------------

/// Where the two-store raw baseline publishes: `RAW_IN`, which the relay empties into `RAW_OUT`.
const RAW_RELAYED: &str = "kh.rawin.x";
/// Where the stored-once-after-a-request baseline sends its requests (core NATS, not a stream).
const RAW_REQUESTED: &str = "kh.rawreq.x";

/// The stored-once baseline's relay: each request stored into `RAW_OUT` (publishes sent in
/// arrival order, pipelined) and answered once its store is confirmed.
async fn request_relay(js: jetstream::Context) {
    let client = js.client();
    let mut requests = client.subscribe(RAW_REQUESTED).await.expect("request relay subscription");
    let out = kakehashi_tests::bench::raw_events_subject();
    while let Some(m) = requests.next().await {
        let Some(reply) = m.reply.clone() else { continue };
        let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
        let mut p = PublishMessage::build().payload(m.payload.clone());
        if let Some(id) = id {
            p = p.message_id(id);
        }
        let confirmation = js.send_publish(out.clone(), p).await.expect("relay publish");
        let client = client.clone();
        tokio::spawn(async move {
            if confirmation.await.is_ok() {
                let _ = client.publish(reply, bytes::Bytes::new()).await;
            }
        });
    }
}

/// Sends `event` as a request to the stored-once relay and panics unless it is answered.
async fn request_stored(client: async_nats::Client, event: Event) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    let request = async_nats::Request::new().payload(event.encode_to_vec().into()).headers(headers);
    client.send_request(RAW_REQUESTED, request).await.expect("request answered");
}

/// Throughput of one row and what each process spent on it.
struct Measured {
    rate: f64,
    cpu: Cpu,
    events: usize,
}

async fn run(binaries: Binaries) {
    let n = env_usize("KH_BENCH_EVENTS", 50_000).max(1);
    let lat_n = env_usize("KH_BENCH_LATENCY_EVENTS", 5_000).max(1);
    let lat_rate = env_usize("KH_BENCH_LATENCY_RATE", 1_000).max(1);
    let warmup = env_usize("KH_BENCH_WARMUP", 2_000);
    let mem_n = env_usize("KH_BENCH_MEMORY_EVENTS", 1_000_000);
    let max_gb = env_usize("KH_BENCH_STREAM_MAX_GB", 16).max(1);
    let mem_ahead = env_usize("KH_BENCH_MEMORY_AHEAD", 20_000).max(1);
    let started = time::OffsetDateTime::now_utc();
    let load_start = loadavg();

    let payload = example_payload();
    let sample = new_event(&payload).encode_to_vec();
    eprintln!(
        "processes: {n} events per throughput row, latency {lat_n} at {lat_rate}/s, memory run {mem_n}; envelope {} bytes; load {load_start}",
        sample.len()
    );

    let nats = NatsServer::start();
    let nats_pid = child_pid("nats-server").expect("nats-server pid");

    // Catalogue, policy and subscription through an in-process registry with the validator off.
    let setup = setup_registry(&nats).await;
    let mut sub = bus::subscription(READER, SUBSCRIPTION, TYPE);
    sub.ack_wait = bus::proto_duration(Duration::from_secs(30));
    bus::create_subscription(&setup.endpoint(), sub).await;
    setup.stop().await;

    let publisher = connect(&nats).await;
    let service = connect(&nats).await;
    create_raw_streams(&service).await;
    let raw_consumer = raw_consumer(&service, IN_FLIGHT).await;
    // The two-store baseline: `RAW_IN` (a work queue) relayed into the delivery-like stream by
    // a pull consumer in this process, as the validator does without its checks.
    let relay = tokio::spawn(kakehashi_tests::bench::relay(service.clone()));
    let request_relay = tokio::spawn(request_relay(service.clone()));
    let limited = limit_streams(&service, max_gb as i64 * 1024 * 1024 * 1024).await;
    if let Some(secs) = std::env::var("KH_BENCH_DEDUP_WINDOW_SECS").ok().and_then(|v| v.parse().ok()) {
        dedup_window(&service, Duration::from_secs(secs)).await;
    }

    let reader_token = token();
    let source_token = token();
    // Before/after runs of one build: the services' audit linger, when given.
    let topology = std::env::var("KH_BENCH_AUDIT_LINGER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(String::new(), |ms| format!("[topology]\naudit_linger_ms = {ms}\n"));
    // More of the registry's configuration for one run, e.g. `[trace_index]` settings.
    let registry_extra = std::env::var("KH_BENCH_REGISTRY_TOML").map_or(String::new(), |t| format!("{t}\n"));
    let registry = ServiceProcess::start(
        "registry-procbench",
        &binaries.registry,
        &format!("[credentials]\n\"{reader_token}\" = \"{READER}\"\n{topology}{registry_extra}"),
        &nats,
        Service::Registry,
    )
    .await;
    let adapter = ServiceProcess::start(
        "adapter-procbench",
        &binaries.adapter,
        &format!("[credentials]\n\"{source_token}\" = \"{SOURCE}\"\n{topology}"),
        &nats,
        Service::Adapter,
    )
    .await;
    let pids = Pids { registry: registry.pid(), adapter: adapter.pid(), nats: nats_pid };
    let rss_start = Rss::now(&pids);

    let mut ours = Subscriber::open(&registry.endpoint(), &reader_token).await;
    let mut raw = RawSubscriber::start(raw_consumer);
    let gateway = PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let consumer_name = format!("sub_{READER}_{SUBSCRIPTION}");
    let raw_subject = kakehashi_tests::bench::raw_events_subject();
    // Its replies come back under `kh.`: the `admin` identity may publish nowhere else that a
    // client's default `_INBOX.` would need.
    let requester = nats
        .service_auth(Service::Admin)
        .options("bench-requester")
        .expect("credentials")
        .custom_inbox_prefix("kh.rawinbox")
        .connect(nats.url())
        .await
        .expect("requester connects");
    let ctx = Ctx {
        publisher: publisher.clone(),
        requester,
        service: service.clone(),
        payload: payload.clone(),
        consumer_name: consumer_name.clone(),
        gateway: gateway.clone(),
        source_token: source_token.clone(),
        pids,
    };

    // ---- Warm-up (not measured) ----------------------------------------------------------
    if warmup > 0 {
        eprintln!("warm-up: {warmup} events through each path");
        ctx.raw_e2e(&mut raw, warmup, &raw_subject).await;
        ctx.raw_e2e(&mut raw, warmup, RAW_RELAYED).await;
        ctx.requested_e2e(&mut raw, warmup).await;
        ctx.direct_e2e(&mut ours, warmup).await;
        ctx.adapter_e2e(&mut ours, warmup).await;
    }

    // ---- a, b: throughput ----------------------------------------------------------------
    eprintln!("row a: raw, raw through two stores, raw stored once after a request, then {n} events published directly");
    let raw_a = ctx.raw_e2e(&mut raw, n, &raw_subject).await;
    let relayed_a = ctx.raw_e2e(&mut raw, n, RAW_RELAYED).await;
    let requested_a = ctx.requested_e2e(&mut raw, n).await;
    let direct = ctx.direct_e2e(&mut ours, n).await;
    eprintln!("row b: raw, then {n} events through the adapter's PublishStream");
    let raw_b = ctx.raw_e2e(&mut raw, n, &raw_subject).await;
    let through_adapter = ctx.adapter_e2e(&mut ours, n).await;

    // ---- c: latency ----------------------------------------------------------------------
    eprintln!("row c: {lat_n} events at {lat_rate}/s each: raw, raw through two stores, raw stored once, direct, adapter");
    let lat_raw = ctx.raw_latency(&mut raw, lat_n, lat_rate, &raw_subject).await;
    let lat_relayed = ctx.raw_latency(&mut raw, lat_n, lat_rate, RAW_RELAYED).await;
    let lat_requested = ctx.requested_latency(&mut raw, lat_n, lat_rate).await;
    let lat_direct = ctx.direct_latency(&mut ours, lat_n, lat_rate).await;
    let lat_adapter = ctx.adapter_latency(&mut ours, lat_n, lat_rate).await;

    let dlq = bus::stream_len(&publisher, bus::DLQ).await;
    assert_eq!(dlq, 0, "every benchmark event is valid");
    let audit_before_memory = bus::stream_len(&publisher, subjects::STREAM_AUDIT).await;
    let events_before_memory = bus::stream_len(&publisher, bus::EVENTS).await;

    // ---- Memory --------------------------------------------------------------------------
    let memory = if mem_n > 0 {
        eprintln!("memory: {mem_n} events end to end (direct); RSS every {}", mem_n / MEMORY_POINTS);
        Some(ctx.memory(&mut ours, mem_n, mem_ahead, nats_pid).await)
    } else {
        None
    };
    let load_end = loadavg();
    let ended = time::OffsetDateTime::now_utc();

    // ---- Report --------------------------------------------------------------------------
    println!();
    println!(
        "processes: {} → {} UTC; load average (1/5/15 min) {load_start} → {load_end}; cores {}",
        hhmmss(started),
        hhmmss(ended),
        cores()
    );
    println!(
        "nats-server {} ({}); registry and adapter: release binaries, separate processes, RUST_LOG=warn",
        publisher.client().server_info().version,
        kakehashi_tests::nats::server_binary().display()
    );
    println!("registry: {}", binaries.registry.display());
    println!("adapter:  {}", binaries.adapter.display());
    println!(
        "N = {n} per throughput row (warm-up {warmup} per path first), latency {lat_n} at {lat_rate}/s, envelope {} bytes (payload {}); stream max_bytes {max_gb} GB on {}",
        sample.len(),
        payload.len(),
        limited.join(", ")
    );
    println!("redeliveries seen by the subscriber: {}", ours.redeliveries);
    println!();
    println!("| measure | kakehashi | raw JetStream (same run) | ours/raw |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| a. end to end, direct publish → Subscribe, acked | {:.0} ev/s | {:.0} ev/s | **{:.2}** |",
        direct.rate,
        raw_a.rate,
        direct.rate / raw_a.rate
    );
    println!(
        "| b. end to end, adapter PublishStream → Subscribe, acked | {:.0} ev/s | {:.0} ev/s | **{:.2}** |",
        through_adapter.rate,
        raw_b.rate,
        through_adapter.rate / raw_b.rate
    );
    println!(
        "| a'. raw through two stores (work queue → relay → stream → consumer), vs raw | {:.0} ev/s | {:.0} ev/s | **{:.2}** |",
        relayed_a.rate,
        raw_a.rate,
        relayed_a.rate / raw_a.rate
    );
    println!(
        "| a''. end to end direct, vs raw through two stores | {:.0} ev/s | {:.0} ev/s | **{:.2}** |",
        direct.rate,
        relayed_a.rate,
        direct.rate / relayed_a.rate
    );
    println!(
        "| a'''. raw stored once after a request (validate-first shape), vs raw | {:.0} ev/s | {:.0} ev/s | **{:.2}** |",
        requested_a.rate,
        raw_a.rate,
        requested_a.rate / raw_a.rate
    );
    let paths = [
        ("direct", &lat_direct),
        ("through the adapter", &lat_adapter),
        ("raw through two stores", &lat_relayed),
        ("raw stored once after a request", &lat_requested),
    ];
    for (path, lat) in paths {
        for (what, ours, raw) in
            [("p50", lat.p50, lat_raw.p50), ("p99", lat.p99, lat_raw.p99), ("max", lat.max, lat_raw.max)]
        {
            println!(
                "| c. latency {what} at {lat_rate} ev/s, {path} | {ours:.2} ms | {raw:.2} ms | {:+.2} ms |",
                ours - raw
            );
        }
    }
    println!();
    println!("d. CPU µs per event, per process (others = busy CPU of the rest of the machine over the same interval, µs per event):");
    println!();
    println!(
        "| row | events | wall s | bench client | registry | adapter | nats-server | total ours | others |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (row, m) in [
        ("a raw", &raw_a),
        ("a' raw two stores", &relayed_a),
        ("a''' raw stored once after a request", &requested_a),
        ("a direct", &direct),
        ("b raw", &raw_b),
        ("b adapter", &through_adapter),
        ("c raw (paced)", &lat_raw.measured),
        ("c raw two stores (paced)", &lat_relayed.measured),
        ("c raw stored once after a request (paced)", &lat_requested.measured),
        ("c direct (paced)", &lat_direct.measured),
        ("c adapter (paced)", &lat_adapter.measured),
    ] {
        let us = |secs: f64| secs * 1e6 / m.events as f64;
        let c = &m.cpu;
        println!(
            "| {row} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            m.events,
            c.wall,
            us(c.bench),
            us(c.registry),
            us(c.adapter),
            us(c.nats),
            us(c.bench + c.registry + c.adapter + c.nats),
            us(c.others)
        );
    }
    println!();
    println!(
        "before the memory run: KH_EVENTS {events_before_memory} messages, KH_AUDIT {audit_before_memory} records, KH_DLQ {dlq}"
    );
    println!(
        "RSS at start (processes up, nothing published): registry {:.1} MB, nats-server {:.1} MB, adapter {:.1} MB, bench {:.1} MB",
        mb(rss_start.registry),
        mb(rss_start.nats),
        mb(rss_start.adapter),
        mb(rss_start.bench)
    );
    if let Some(m) = &memory {
        m.print();
    }
    for p in [&registry, &adapter] {
        let log = p.log();
        let lines: Vec<&str> = log.lines().collect();
        println!();
        println!("{} log (warn): {} lines", p.name, lines.len());
        for l in lines.iter().take(5) {
            println!("    {}", l.chars().take(300).collect::<String>());
        }
    }
    relay.abort();
    request_relay.abort();
    drop(ours);
    drop(raw);
    drop(adapter);
    drop(registry);
    drop(nats);
}

/// What every row needs.
struct Ctx {
    publisher: jetstream::Context,
    /// Sends the stored-once baseline's requests.
    requester: async_nats::Client,
    service: jetstream::Context,
    payload: Vec<u8>,
    consumer_name: String,
    gateway: PublisherClient<tonic::transport::Channel>,
    source_token: String,
    pids: Pids,
}

impl Ctx {
    /// Raw: N envelopes published to `subject` (straight into the delivery-like stream, or into
    /// the work queue the relay empties into it), pulled and acked.
    async fn raw_e2e(&self, raw: &mut RawSubscriber, n: usize, subject: &str) -> Measured {
        let (js, payload, subject) = (self.publisher.clone(), self.payload.clone(), subject.to_string());
        let publish = async move {
            let messages = (0..n).map(move |_| {
                let e = new_event(&payload);
                let m = PublishMessage::build().payload(e.encode_to_vec().into()).message_id(&e.id);
                (subject.clone(), m)
            });
            publish_messages_pipelined(&js, messages).await
        };
        self.raw_row(raw, n, publish).await
    }

    /// One raw throughput row: `publish` (run as its own task) sends N envelopes, which the raw
    /// subscriber receives and acks until its consumer has nothing left.
    async fn raw_row(
        &self,
        raw: &mut RawSubscriber,
        n: usize,
        publish: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Measured {
        let mark = Mark::now(&self.pids);
        let t = Instant::now();
        let p = tokio::spawn(publish);
        raw.take(n, |_, _| {}).await;
        wait_acked(&self.service, RAW_OUT, "drain", PHASE_LIMIT).await;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        p.await.expect("raw publisher");
        Measured { rate, cpu: mark.cpu_since(&self.pids), events: n }
    }

    /// a''': N envelopes as requests to the stored-once relay (at most [`PUBLISH_WINDOW`]
    /// outstanding), pulled and acked as raw.
    async fn requested_e2e(&self, raw: &mut RawSubscriber, n: usize) -> Measured {
        let (client, payload) = (self.requester.clone(), self.payload.clone());
        let publish = async move {
            let window = Arc::new(tokio::sync::Semaphore::new(PUBLISH_WINDOW));
            for _ in 0..n {
                let permit = window.clone().acquire_owned().await.expect("window");
                let (client, event) = (client.clone(), new_event(&payload));
                tokio::spawn(async move {
                    request_stored(client, event).await;
                    drop(permit);
                });
            }
            let _all = window.acquire_many(PUBLISH_WINDOW as u32).await.expect("window");
        };
        self.raw_row(raw, n, publish).await
    }

    /// c for the stored-once baseline: requests at a fixed rate.
    async fn requested_latency(&self, raw: &mut RawSubscriber, n: usize, rate: usize) -> Latency {
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(n)));
        let mark = Mark::now(&self.pids);
        let p = {
            let (client, payload, sent) = (self.requester.clone(), self.payload.clone(), sent.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let gap = Duration::from_secs_f64(1.0 / rate as f64);
                let mut answers = Vec::with_capacity(n);
                for i in 0..n {
                    tokio::time::sleep_until(start + gap * i as u32).await;
                    let event = keyed(&payload, i).1;
                    sent.lock().unwrap_or_else(|p| p.into_inner()).insert(event.id.clone(), Instant::now());
                    answers.push(tokio::spawn(request_stored(client.clone(), event)));
                }
                for a in answers {
                    a.await.expect("request");
                }
            })
        };
        let mut lat = Vec::with_capacity(n);
        raw.take(n, |id, at| lat.push(latency_ms(&sent, id, at))).await;
        p.await.expect("paced requester");
        Latency::of(lat, Measured { rate: 0.0, cpu: mark.cpu_since(&self.pids), events: n })
    }

    /// a: N events published to `kh.in.…` as the SDK does, received through Subscribe.
    async fn direct_e2e(&self, ours: &mut Subscriber, n: usize) -> Measured {
        let mark = Mark::now(&self.pids);
        let t = Instant::now();
        let p = {
            let (js, payload) = (self.publisher.clone(), self.payload.clone());
            tokio::spawn(async move {
                let messages =
                    (0..n).map(move |i| kakehashi_adapter::envelope::to_message(&keyed(&payload, i).1));
                publish_messages_pipelined(&js, messages).await
            })
        };
        let pseudonymised = ours.take(n, |d, _| is_pseudonymised(d)).await;
        wait_acked(&self.publisher, bus::EVENTS, &self.consumer_name, PHASE_LIMIT).await;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        p.await.expect("publisher");
        assert_eq!(pseudonymised, n, "every delivery carries the reader's pseudonym, not the My Number");
        Measured { rate, cpu: mark.cpu_since(&self.pids), events: n }
    }

    /// b: N events sent on one `PublishStream` to the adapter, received through Subscribe.
    async fn adapter_e2e(&self, ours: &mut Subscriber, n: usize) -> Measured {
        let mark = Mark::now(&self.pids);
        let t = Instant::now();
        let (tx, rx) = mpsc::channel::<Event>(PUBLISH_WINDOW);
        let sender = {
            let payload = self.payload.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    let mut e = new_event(&payload);
                    e.subject = format!("resident-{}", i % backlog_keys());
                    if tx.send(e).await.is_err() {
                        panic!("PublishStream request stream closed early");
                    }
                }
            })
        };
        let acks = tokio::spawn(read_acks(self.gateway.clone(), self.source_token.clone(), rx, n));
        let pseudonymised = ours.take(n, |d, _| is_pseudonymised(d)).await;
        wait_acked(&self.publisher, bus::EVENTS, &self.consumer_name, PHASE_LIMIT).await;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        sender.await.expect("sender");
        acks.await.expect("acks");
        assert_eq!(pseudonymised, n, "every delivery carries the reader's pseudonym, not the My Number");
        Measured { rate, cpu: mark.cpu_since(&self.pids), events: n }
    }

    async fn raw_latency(&self, raw: &mut RawSubscriber, n: usize, rate: usize, subject: &str) -> Latency {
        let sent = Arc::new(Mutex::new(HashMap::with_capacity(n)));
        let mark = Mark::now(&self.pids);
        let subject = subject.to_string();
        let payload = self.payload.clone();
        let p = tokio::spawn(paced(
            self.publisher.clone(),
            move |i| keyed(&payload, i).1,
            move |_: &Event| subject.clone(),
            n,
            rate,
            sent.clone(),
        ));
        let mut lat = Vec::with_capacity(n);
        raw.take(n, |id, at| lat.push(latency_ms(&sent, id, at))).await;
        p.await.expect("paced publisher");
        Latency::of(lat, Measured { rate: 0.0, cpu: mark.cpu_since(&self.pids), events: n })
    }

    async fn direct_latency(&self, ours: &mut Subscriber, n: usize, rate: usize) -> Latency {
        let sent = Arc::new(Mutex::new(HashMap::with_capacity(n)));
        let mark = Mark::now(&self.pids);
        let payload = self.payload.clone();
        let p = tokio::spawn(paced(
            self.publisher.clone(),
            move |i| keyed(&payload, i).1,
            |e: &Event| subjects::ingress(&e.source, &e.r#type, &e.subject),
            n,
            rate,
            sent.clone(),
        ));
        let mut lat = Vec::with_capacity(n);
        ours.take(n, |d, at| {
            let id = d.event.as_ref().map(|e| e.id.as_str()).unwrap_or_default();
            lat.push(latency_ms(&sent, id, at));
            true
        })
        .await;
        p.await.expect("paced publisher");
        Latency::of(lat, Measured { rate: 0.0, cpu: mark.cpu_since(&self.pids), events: n })
    }

    async fn adapter_latency(&self, ours: &mut Subscriber, n: usize, rate: usize) -> Latency {
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(n)));
        let mark = Mark::now(&self.pids);
        let (tx, rx) = mpsc::channel::<Event>(PUBLISH_WINDOW);
        let sender = {
            let (payload, sent) = (self.payload.clone(), sent.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let gap = Duration::from_secs_f64(1.0 / rate as f64);
                for i in 0..n {
                    tokio::time::sleep_until(start + gap * i as u32).await;
                    let mut e = new_event(&payload);
                    e.subject = format!("resident-{}", i % backlog_keys());
                    sent.lock().unwrap_or_else(|p| p.into_inner()).insert(e.id.clone(), Instant::now());
                    if tx.send(e).await.is_err() {
                        panic!("PublishStream request stream closed early");
                    }
                }
            })
        };
        let acks = tokio::spawn(read_acks(self.gateway.clone(), self.source_token.clone(), rx, n));
        let mut lat = Vec::with_capacity(n);
        ours.take(n, |d, at| {
            let id = d.event.as_ref().map(|e| e.id.as_str()).unwrap_or_default();
            lat.push(latency_ms(&sent, id, at));
            true
        })
        .await;
        sender.await.expect("sender");
        acks.await.expect("acks");
        Latency::of(lat, Measured { rate: 0.0, cpu: mark.cpu_since(&self.pids), events: n })
    }

    /// M events end to end (direct), RSS sampled every M/10 received.
    async fn memory(&self, ours: &mut Subscriber, m: usize, ahead: usize, nats_pid: u32) -> Memory {
        let store = store_dir(nats_pid);
        let disk_free_start = disk_free_gb(store.as_deref());
        let mut points = vec![Point::now(&self.pids, 0, Duration::ZERO, self.audit_len().await)];
        let mark = Mark::now(&self.pids);
        let t = Instant::now();
        // The publisher stays at most `ahead` events ahead of delivery, so the run measures the
        // bus carrying events rather than a backlog growing in KH_INGRESS.
        let delivered = Arc::new(AtomicUsize::new(0));
        let p = {
            let (js, payload, delivered) = (self.publisher.clone(), self.payload.clone(), delivered.clone());
            tokio::spawn(async move {
                type Confirmation = <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture;
                let mut pending: FuturesUnordered<Confirmation> = FuturesUnordered::new();
                for i in 0..m {
                    while i >= delivered.load(Ordering::Relaxed) + ahead {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if pending.len() >= PUBLISH_WINDOW {
                        if let Some(r) = pending.next().await {
                            r.expect("publish confirmed");
                        }
                    }
                    let (subject, message) = kakehashi_adapter::envelope::to_message(&keyed(&payload, i).1);
                    let confirmation = js.send_publish(subject, message).await.expect("publish sent");
                    pending.push(confirmation.into_future());
                }
                while let Some(r) = pending.next().await {
                    r.expect("publish confirmed");
                }
            })
        };
        let mut received = 0;
        for k in 1..=MEMORY_POINTS {
            let upto = m * k / MEMORY_POINTS;
            ours.take(upto - received, |_, _| {
                delivered.fetch_add(1, Ordering::Relaxed);
                true
            })
            .await;
            received = upto;
            points.push(Point::now(&self.pids, received, t.elapsed(), self.audit_len().await));
            eprintln!("memory: {received} of {m} after {:.0} s", t.elapsed().as_secs_f64());
        }
        wait_acked(&self.publisher, bus::EVENTS, &self.consumer_name, PHASE_LIMIT).await;
        let rate = m as f64 / t.elapsed().as_secs_f64();
        p.await.expect("publisher");
        let cpu = mark.cpu_since(&self.pids);
        tokio::time::sleep(Duration::from_secs(5)).await;
        points.push(Point::now(&self.pids, m, t.elapsed(), self.audit_len().await));
        let peak = Rss::peak(&self.pids);
        let audit = stream_state(&self.publisher, subjects::STREAM_AUDIT).await;
        let events = stream_state(&self.publisher, bus::EVENTS).await;
        Memory {
            events: m,
            ahead,
            measured: Measured { rate, cpu, events: m },
            points,
            peak,
            audit,
            events_stream: events,
            store_gb: store.as_deref().map(|d| dir_bytes(d) as f64 / 1e9),
            disk_free_start,
            disk_free_end: disk_free_gb(store.as_deref()),
        }
    }

    async fn audit_len(&self) -> u64 {
        bus::stream_len(&self.publisher, subjects::STREAM_AUDIT).await
    }
}

fn is_pseudonymised(d: &EventDelivery) -> bool {
    let data = d.event.as_ref().map(|e| e.data.as_slice()).unwrap_or_default();
    std::str::from_utf8(data).is_ok_and(|s| s.contains("\"kh1:"))
}

/// Opens a `PublishStream` fed by `events` and reads its `n` acks; panics on a refused event or
/// a duplicate (every event is new).
async fn read_acks(
    mut gateway: PublisherClient<tonic::transport::Channel>,
    token: String,
    events: mpsc::Receiver<Event>,
    n: usize,
) {
    let mut acks = gateway
        .publish_stream(with_token(ReceiverStream::new(events), &token))
        .await
        .expect("PublishStream")
        .into_inner();
    let mut got = 0;
    while got < n {
        let ack = acks.message().await.expect("PublishStream ack").expect("PublishStream ended early");
        if let Some(e) = ack.error {
            panic!("adapter refused {}: {} {}", ack.event_id, e.reason, e.message);
        }
        assert!(!ack.duplicate, "{} was a duplicate", ack.event_id);
        got += 1;
    }
}

// ---- NATS ----------------------------------------------------------------------------------

/// Sets `max_bytes` on the streams that grow with the run (as the break-glass identity), so a
/// long run cannot fill the disk; returns the streams it was set on.
async fn limit_streams(js: &jetstream::Context, max_bytes: i64) -> Vec<String> {
    let mut limited = Vec::new();
    for name in [subjects::STREAM_AUDIT, bus::EVENTS, RAW_OUT] {
        let mut config = js.get_stream(name).await.expect("stream").cached_info().config.clone();
        config.max_bytes = max_bytes;
        config.discard = stream::DiscardPolicy::Old;
        match js.update_stream(config).await {
            Ok(_) => limited.push(name.to_string()),
            Err(e) => eprintln!("processes: max_bytes not set on {name}: {e}"),
        }
    }
    limited
}

/// Sets the duplicate window of every stream an event passes through, ours and raw alike.
async fn dedup_window(js: &jetstream::Context, window: Duration) {
    for name in [subjects::STREAM_INGRESS, bus::EVENTS, RAW_IN, RAW_OUT] {
        let mut config = js.get_stream(name).await.expect("stream").cached_info().config.clone();
        config.duplicate_window = window;
        js.update_stream(config).await.unwrap_or_else(|e| panic!("duplicate window of {name}: {e}"));
    }
    eprintln!("processes: duplicate window {window:?} on KH_INGRESS, KH_EVENTS and the raw streams");
}

/// Publishes everything with at most [`PUBLISH_WINDOW`] unconfirmed; panics on any failure.
async fn publish_messages_pipelined(
    js: &jetstream::Context,
    messages: impl Iterator<Item = (String, PublishMessage)>,
) {
    type Confirmation = <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture;
    let mut pending: FuturesUnordered<Confirmation> = FuturesUnordered::new();
    for (subject, m) in messages {
        if pending.len() >= PUBLISH_WINDOW {
            if let Some(r) = pending.next().await {
                r.expect("publish confirmed");
            }
        }
        let f = js.send_publish(subject, m).await.expect("publish sent");
        pending.push(f.into_future());
    }
    while let Some(r) = pending.next().await {
        r.expect("publish confirmed");
    }
}

/// Messages and bytes of a stream.
struct StreamState {
    messages: u64,
    bytes: u64,
}

async fn stream_state(js: &jetstream::Context, name: &str) -> StreamState {
    let mut s = js.get_stream(name).await.expect("stream");
    let info = s.info().await.expect("stream info");
    StreamState { messages: info.state.messages, bytes: info.state.bytes }
}

// ---- Subscribers ---------------------------------------------------------------------------

/// A `Delivery.Subscribe` stream read by a task; acks go out in batches of what has arrived.
struct Subscriber {
    requests: mpsc::Sender<SubscribeRequest>,
    deliveries: mpsc::UnboundedReceiver<(EventDelivery, Instant)>,
    reader: tokio::task::JoinHandle<()>,
    redeliveries: usize,
}

impl Subscriber {
    async fn open(endpoint: &str, token: &str) -> Self {
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
            .subscribe(with_token(ReceiverStream::new(rx), token))
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
        Self { requests, deliveries, reader, redeliveries: 0 }
    }

    /// Receives `n` first deliveries (redeliveries are acked and counted, not taken), acking as
    /// it goes; `seen` gets each first delivery; returns how many `seen` said true for.
    async fn take(&mut self, n: usize, mut seen: impl FnMut(&EventDelivery, Instant) -> bool) -> usize {
        let mut taken = 0;
        let mut yes = 0;
        let limit = Instant::now() + PHASE_LIMIT;
        let mut acks = Vec::with_capacity(ACK_BATCH);
        while taken < n {
            let left = limit.saturating_duration_since(Instant::now());
            let first = tokio::time::timeout(left, self.deliveries.recv())
                .await
                .unwrap_or_else(|_| panic!("Subscribe: {taken} of {n} received after {PHASE_LIMIT:?}"))
                .expect("the registry ended the Subscribe stream");
            let mut next = Some(first);
            while let Some((d, at)) = next.take() {
                if d.attempt > 1 {
                    self.redeliveries += 1;
                } else {
                    taken += 1;
                    if seen(&d, at) {
                        yes += 1;
                    }
                }
                acks.push(d.delivery_id);
                if acks.len() < ACK_BATCH && taken < n {
                    next = self.deliveries.try_recv().ok();
                }
            }
            let delivery_ids = std::mem::replace(&mut acks, Vec::with_capacity(ACK_BATCH));
            let ack = subscribe_request::Request::Ack(AckDeliveries { delivery_ids });
            self.requests.send(SubscribeRequest { request: Some(ack) }).await.expect("send ack");
        }
        yes
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The raw baseline's subscriber: a pull consumer read by a task that acks each message.
struct RawSubscriber {
    received: mpsc::UnboundedReceiver<(String, Instant, bool)>,
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
                let first = m.info().map_or(true, |i| i.delivered <= 1);
                // Decoded as a subscriber would (prost), to have the id.
                let id = Event::decode(m.payload.as_ref()).expect("Event").id;
                m.ack().await.expect("raw ack");
                if tx.send((id, at, first)).is_err() {
                    return;
                }
            }
        });
        Self { received, reader }
    }

    async fn take(&mut self, n: usize, mut seen: impl FnMut(&str, Instant)) {
        let limit = Instant::now() + PHASE_LIMIT;
        let mut taken = 0;
        while taken < n {
            let left = limit.saturating_duration_since(Instant::now());
            let (id, at, first) = tokio::time::timeout(left, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("raw: {taken} of {n} received after {PHASE_LIMIT:?}"))
                .expect("raw reader ended");
            if first {
                seen(&id, at);
                taken += 1;
            }
        }
    }
}

impl Drop for RawSubscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// ---- Latency percentiles -------------------------------------------------------------------

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    measured: Measured,
}

impl Latency {
    fn of(mut v: Vec<f64>, measured: Measured) -> Self {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN)
        };
        Self { p50: at(0.50), p99: at(0.99), max: at(1.0), measured }
    }
}

// ---- /proc ---------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Pids {
    registry: u32,
    adapter: u32,
    nats: u32,
}

/// CPU seconds of each process over an interval, and of everything else on the machine.
struct Cpu {
    wall: f64,
    bench: f64,
    registry: f64,
    adapter: f64,
    nats: f64,
    others: f64,
}

/// CPU jiffies at one moment.
struct Mark {
    at: Instant,
    bench: u64,
    registry: u64,
    adapter: u64,
    nats: u64,
    machine_busy: u64,
}

impl Mark {
    fn now(p: &Pids) -> Self {
        Self {
            at: Instant::now(),
            bench: cpu_ticks(None),
            registry: cpu_ticks(Some(p.registry)),
            adapter: cpu_ticks(Some(p.adapter)),
            nats: cpu_ticks(Some(p.nats)),
            machine_busy: machine_busy_ticks(),
        }
    }

    fn cpu_since(&self, p: &Pids) -> Cpu {
        let now = Self::now(p);
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 100.0;
        let ours = [
            now.bench.saturating_sub(self.bench),
            now.registry.saturating_sub(self.registry),
            now.adapter.saturating_sub(self.adapter),
            now.nats.saturating_sub(self.nats),
        ]
        .iter()
        .sum::<u64>();
        Cpu {
            wall: now.at.duration_since(self.at).as_secs_f64(),
            bench: secs(self.bench, now.bench),
            registry: secs(self.registry, now.registry),
            adapter: secs(self.adapter, now.adapter),
            nats: secs(self.nats, now.nats),
            others: now.machine_busy.saturating_sub(self.machine_busy).saturating_sub(ours) as f64 / 100.0,
        }
    }
}

/// Machine-wide busy jiffies (everything but idle and iowait), from `/proc/stat`.
fn machine_busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0 };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    total.saturating_sub(idle)
}

/// RSS (or peak RSS) of each process, kB.
struct Rss {
    registry: u64,
    nats: u64,
    adapter: u64,
    bench: u64,
}

impl Rss {
    fn read(p: &Pids, field: &str) -> Self {
        Self {
            registry: status_kb(Some(p.registry), field),
            nats: status_kb(Some(p.nats), field),
            adapter: status_kb(Some(p.adapter), field),
            bench: status_kb(None, field),
        }
    }

    fn now(p: &Pids) -> Self {
        Self::read(p, "VmRSS:")
    }

    fn peak(p: &Pids) -> Self {
        Self::read(p, "VmHWM:")
    }
}

/// One sample of the memory run.
struct Point {
    events: usize,
    elapsed: Duration,
    rss: Rss,
    audit_records: u64,
}

impl Point {
    fn now(p: &Pids, events: usize, elapsed: Duration, audit_records: u64) -> Self {
        Self { events, elapsed, rss: Rss::now(p), audit_records }
    }
}

struct Memory {
    events: usize,
    ahead: usize,
    measured: Measured,
    points: Vec<Point>,
    peak: Rss,
    audit: StreamState,
    events_stream: StreamState,
    store_gb: Option<f64>,
    disk_free_start: Option<f64>,
    disk_free_end: Option<f64>,
}

impl Memory {
    fn print(&self) {
        let m = &self.measured;
        let us = |secs: f64| secs * 1e6 / m.events as f64;
        println!();
        println!(
            "Memory run: {} events end to end (direct publish → Subscribe, acked; publisher at most {} ahead) in {:.0} s, {:.0} ev/s; CPU µs/event: bench {:.1}, registry {:.1}, adapter {:.1}, nats-server {:.1}, others {:.1}",
            self.events,
            self.ahead,
            m.cpu.wall,
            m.rate,
            us(m.cpu.bench),
            us(m.cpu.registry),
            us(m.cpu.adapter),
            us(m.cpu.nats),
            us(m.cpu.others)
        );
        println!();
        println!("| point | events delivered | elapsed s | registry RSS MB | nats-server RSS MB | adapter RSS MB | bench RSS MB | KH_AUDIT records |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let last = self.points.len() - 1;
        for (i, p) in self.points.iter().enumerate() {
            let label = match i {
                0 => "start".to_string(),
                i if i == last => "end + 5 s".to_string(),
                i => i.to_string(),
            };
            println!(
                "| {label} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                p.events,
                p.elapsed.as_secs_f64(),
                mb(p.rss.registry),
                mb(p.rss.nats),
                mb(p.rss.adapter),
                mb(p.rss.bench),
                p.audit_records
            );
        }
        println!(
            "| peak (VmHWM, whole run) | | | {:.1} | {:.1} | {:.1} | {:.1} | |",
            mb(self.peak.registry),
            mb(self.peak.nats),
            mb(self.peak.adapter),
            mb(self.peak.bench)
        );
        println!();
        println!(
            "after: KH_AUDIT {} records, {:.2} GB; KH_EVENTS {} messages, {:.2} GB; nats-server store on disk {}; disk free {} → {}",
            self.audit.messages,
            self.audit.bytes as f64 / 1e9,
            self.events_stream.messages,
            self.events_stream.bytes as f64 / 1e9,
            self.store_gb.map_or("?".into(), |g| format!("{g:.2} GB")),
            self.disk_free_start.map_or("?".into(), |g| format!("{g:.1} GB")),
            self.disk_free_end.map_or("?".into(), |g| format!("{g:.1} GB")),
        );
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// nats-server's store directory, from its command line (`-sd <dir>`).
fn store_dir(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"-sd")?;
    Some(PathBuf::from(String::from_utf8_lossy(args.get(i + 1)?).into_owned()))
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Free space (GB) of the file system holding `dir`, from `df`.
fn disk_free_gb(dir: Option<&Path>) -> Option<f64> {
    let out = Command::new("df").args(["-k", "--output=avail"]).arg(dir?).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let kb: f64 = text.lines().nth(1)?.trim().parse().ok()?;
    Some(kb * 1024.0 / 1e9)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn hhmmss(t: time::OffsetDateTime) -> String {
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}
