//! Benchmark of `Flows.TraceEvent` (what `kakehashi trace <id>` calls) on a large audit trail:
//! issue 16 asks for an answer in < 200 ms on a trail of 10 million hops.
//!
//! Run it in release mode (it is not a test, and exits at once unless cargo passes `--bench`):
//!
//! ```sh
//! TMPDIR=/var/tmp cargo bench -p kakehashi-tests --bench trace_lookup
//! ```
//!
//! (nats-server's store is a temporary directory: `TMPDIR` says where; 10 million hops take
//! about 3 GB.)
//!
//! Environment: `KH_BENCH_HOPS` (hops in the trail, default 10000000), `KH_BENCH_LOOKUPS`
//! (timed `TraceEvent` calls, default 200), `KH_BENCH_CTL_RUNS` (timed `kakehashi trace`
//! processes, default 20), `KH_CTL_BIN` (the `kakehashi` binary; default: next to this
//! bench's `deps/` directory, where `cargo build --release -p kakehashi-ctl` puts it).
//!
//! What it does:
//! 1. Starts nats-server (the harness's, with the generated accounts) and a registry in this
//!    process (which creates `KH_AUDIT` as it does in production).
//! 2. Fills `KH_AUDIT` with the trail of `hops / 3` events, each validated, delivered to one
//!    subscription and acked, written as the registry's audit task writes it: per event a
//!    `validated` record under `kh.audit.<event id>` naming its `KH_EVENTS` sequence (1, 2, …),
//!    and its delivery hops in batch records of 256 hops under `kh.audit.s.<seq / 1024>` —
//!    for every 256 consecutive sequences (never across a 1,024 bucket), the validated
//!    records, then one batch of their `delivered` hops, then one of their `acked` hops — all
//!    one actor's hash chain (sealed with `AuditRecord::seal`, `seq`/`prev_hash` linked).
//!    Published as the `admin` NATS identity, pipelined (1,024 unconfirmed at most).
//! 3. Times `TraceEvent` over gRPC (the test registry enforces no tokens, so the caller sees
//!    every department's hops, as an administrator does), checking each answer is exactly
//!    validated, delivered, acked. The events looked up are drawn at random from strata
//!    spanning the trail (the very first and last events included) and split into four
//!    samples, so each measurement reads events no other one touched: `TraceEvent` on the
//!    registry as the harness (and the service binary) starts it; `TraceEvent` on a second
//!    registry whose gRPC listener has TCP_NODELAY; the registry's two reads made from the
//!    bench's own connection, step by step, to tell what the time is made of; and
//!    `kakehashi trace <id>` as a process. A health check on the same gRPC connection gives
//!    the bare round trip.
//! 4. Prints markdown tables on stdout (progress on stderr).

use async_nats::jetstream::{self, consumer};
use kakehashi_proto::subjects;
use kakehashi_proto::v1::{flows_client::FlowsClient, TraceEventRequest};
use kakehashi_runtime::audit::{now_us, AuditRecord, BatchedHop, BATCH_HOP, GENESIS};
use kakehashi_tests::bench::{
    child_pid, connect, cores, env_count, publish_bytes_pipelined, status_kb, READER, SOURCE, TYPE,
};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Hops per event: validated, delivered, acked.
const HOPS_PER_EVENT: usize = 3;
/// Most hops in one batch record (the registry's default `audit_batch_hops`).
const BATCH_HOPS: u64 = 256;
/// The actor of the chain (a registry instance).
const ACTOR: &str = "registry-bench";
/// The reader's subscription (consumer name), as delivery records it.
const SUBSCRIPTION: &str = "sub_mhlw_doses";
/// Microseconds between consecutive events of the trail, and from validation to delivery and
/// to the ack.
const EVENT_GAP_US: i64 = 100;
const DELIVERED_AFTER_US: i64 = 2_000;
const ACKED_AFTER_US: i64 = 9_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("trace_lookup is a benchmark: run `cargo bench -p kakehashi-tests --bench trace_lookup`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run() {
    let hops = env_count("KH_BENCH_HOPS", 10_000_000);
    let lookups = env_count("KH_BENCH_LOOKUPS", 200);
    let ctl_runs = env_count("KH_BENCH_CTL_RUNS", 20);
    let events = hops.div_ceil(HOPS_PER_EVENT) as u64;
    let load_start = loadavg();
    eprintln!(
        "trace_lookup: {hops} hops = {events} events × {HOPS_PER_EVENT}; {lookups} lookups; {} cores; load {load_start}; store under {}",
        cores(),
        std::env::temp_dir().display()
    );

    let nats = NatsServer::start();
    let nats_pid = child_pid("nats-server");
    let registry = Registry::start(registry_config(&nats)).await;
    let js = connect(&nats).await;
    js.get_stream(subjects::STREAM_AUDIT).await.expect("the registry created KH_AUDIT");

    // ---- Fill ----------------------------------------------------------------------------
    // Four samples of events, each spread at random over the whole trail, each read for the
    // first time by its own measurement: TraceEvent on the registry as the harness starts it,
    // on a registry whose gRPC sockets have TCP_NODELAY, the registry's reads made from here,
    // and `kakehashi trace`.
    let sizes = [lookups, lookups, lookups, ctl_runs];
    let wanted = lookup_indices(events, sizes.iter().sum(), seed());
    let mut trail = Trail::new(events, wanted);
    let fill_start = Instant::now();
    publish_bytes_pipelined(&js, &mut trail).await;
    let fill = fill_start.elapsed();
    let records = trail.chain.seq;
    let info =
        js.get_stream(subjects::STREAM_AUDIT).await.expect("KH_AUDIT").info().await.expect("info").clone();
    let nats_rss_mb = nats_pid.map_or(0, |p| status_kb(Some(p), "VmRSS:")) / 1024;
    eprintln!(
        "filled in {:.1} s: {} messages, {:.2} GB, {} subjects; nats-server RSS {nats_rss_mb} MB",
        fill.as_secs_f64(),
        info.state.messages,
        info.state.bytes as f64 / 1e9,
        info.state.subjects_count
    );
    let all: Vec<(u64, String)> =
        trail.wanted.into_iter().map(|(i, id)| (i, id.expect("every wanted event was written"))).collect();
    let mut all = shuffled(all, seed()).into_iter();
    let mut sample = |n: usize| -> Vec<(u64, String)> { all.by_ref().take(n).collect() };
    let (lookups, lookups_nodelay, lookups_reads, lookups_ctl) =
        (sample(sizes[0]), sample(sizes[1]), sample(sizes[2]), sample(sizes[3]));
    let nodelay = NoDelayRegistry::start(&nats).await;
    // Let the store settle (nats-server flushes its last blocks) before timing reads.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // ---- TraceEvent over gRPC -------------------------------------------------------------
    let channel = tonic::transport::Channel::from_shared(registry.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect registry");
    let mut flows = FlowsClient::new(channel.clone());
    // The gRPC round trip alone, on the same connection: a health check.
    let mut health = HealthClient::new(channel);
    let mut health_t = Vec::new();
    for _ in 0..lookups.len() {
        let t = Instant::now();
        health.check(HealthCheckRequest { service: String::new() }).await.expect("health");
        health_t.push(t.elapsed());
    }
    let first = Instant::now();
    check_trace(&mut flows, &lookups[0].1).await;
    let first_call = first.elapsed();
    let grpc = time_traces(&mut flows, &lookups).await;
    eprintln!("{} TraceEvent calls answered", grpc.len());
    let mut lingering = vec![("after TraceEvent", settle_consumers(&js).await)];
    let mut flows_nodelay = FlowsClient::connect(format!("http://{}", nodelay.addr)).await.expect("connect");
    check_trace(&mut flows_nodelay, &lookups[0].1).await;
    let grpc_nodelay = time_traces(&mut flows_nodelay, &lookups_nodelay).await;
    eprintln!("{} TraceEvent calls answered with TCP_NODELAY", grpc_nodelay.len());
    lingering.push(("after TraceEvent with TCP_NODELAY", settle_consumers(&js).await));

    // ---- The registry's reads, from here ---------------------------------------------------
    let mut own_t = ReadTimes::default();
    let mut batch_t = ReadTimes::default();
    let mut reads_t = Vec::new();
    for (i, id) in &lookups_reads {
        let t = Instant::now();
        let own = read(&js, &subjects::audit(id), |_| true, &mut own_t).await;
        assert_eq!(own.len(), 1, "{id}: one validated record");
        let batched = read(&js, &subjects::audit_hops(i + 1), |h| h.event_id == *id, &mut batch_t).await;
        assert_eq!(batched.len(), 2, "{id}: delivered and acked");
        reads_t.push(t.elapsed());
    }
    lingering.push(("after the reads from the bench", settle_consumers(&js).await));

    // ---- kakehashi trace as a process ------------------------------------------------------
    let ctl = ctl_bin();
    let ctl_rows = if ctl.exists() {
        let mut version = Vec::new();
        for _ in 0..ctl_runs.min(5) {
            version.push(run_ctl(&ctl, &["--version"], None).await);
        }
        let mut trace = Vec::new();
        for (_, id) in &lookups_ctl {
            trace.push(
                run_ctl(&ctl, &["--registry", &registry.endpoint(), "--json", "trace", id], Some(id)).await,
            );
        }
        Some((version, trace))
    } else {
        eprintln!(
            "no kakehashi binary at {} (cargo build --release -p kakehashi-ctl, or set KH_CTL_BIN): process runs skipped",
            ctl.display()
        );
        None
    };
    let load_end = loadavg();
    let nats_rss_end_mb = nats_pid.map_or(0, |p| status_kb(Some(p), "VmRSS:")) / 1024;

    // ---- Report ------------------------------------------------------------------------
    println!();
    println!("Trail: load average {load_start} at start, {load_end} at end; {} cores", cores());
    println!();
    println!("| trail | value |");
    println!("|---|---|");
    println!("| hops | {} |", events as usize * HOPS_PER_EVENT);
    println!("| events (validated, delivered, acked) | {events} |");
    println!(
        "| records written | {records} ({events} validated + {} batch records of ≤ {BATCH_HOPS} hops) |",
        records - events
    );
    println!("| KH_AUDIT messages | {} |", info.state.messages);
    println!("| KH_AUDIT bytes | {:.2} GB |", info.state.bytes as f64 / 1e9);
    println!("| KH_AUDIT subjects | {} |", info.state.subjects_count);
    println!("| fill time | {:.1} s |", fill.as_secs_f64());
    println!(
        "| fill rate | {:.0} hops/s, {:.0} records/s |",
        hops_of(events) / fill.as_secs_f64(),
        records as f64 / fill.as_secs_f64()
    );
    println!("| nats-server RSS after fill / at end | {nats_rss_mb} MB / {nats_rss_end_mb} MB |");
    for (when, (n, gone)) in &lingering {
        println!("| KH_AUDIT consumers {when} | {n}, gone after {:.0} s |", gone.as_secs_f64());
    }
    println!();
    println!("| measured | n | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let all: Vec<Duration> = grpc.iter().map(|(_, d)| *d).collect();
    row("TraceEvent (gRPC), all", &all);
    for (name, lo, hi) in [
        ("oldest third", 0, events / 3),
        ("middle third", events / 3, 2 * events / 3),
        ("newest third", 2 * events / 3, events),
    ] {
        let part: Vec<Duration> =
            grpc.iter().filter(|(i, _)| (lo..hi).contains(i)).map(|(_, d)| *d).collect();
        row(&format!("TraceEvent (gRPC), {name}"), &part);
    }
    row("TraceEvent (gRPC), first call (not in the above)", &[first_call]);
    let nodelay_all: Vec<Duration> = grpc_nodelay.iter().map(|(_, d)| *d).collect();
    row("TraceEvent (gRPC), registry with TCP_NODELAY (other events)", &nodelay_all);
    row("gRPC health check, same connection (round trip alone)", &health_t);
    row("the registry's two reads, made from the bench (other events)", &reads_t);
    row("· `kh.audit.<id>`: KH_AUDIT lookup + info", &own_t.info);
    row("· `kh.audit.<id>`: ordered consumer created", &own_t.create);
    row("· `kh.audit.<id>`: its 1 record received", &own_t.messages);
    row("· `kh.audit.s.<seq/1024>`: KH_AUDIT lookup + info", &batch_t.info);
    row("· `kh.audit.s.<seq/1024>`: ordered consumer created", &batch_t.create);
    row("· `kh.audit.s.<seq/1024>`: its 8 records received + unpacked", &batch_t.messages);
    match &ctl_rows {
        Some((version, trace)) => {
            row("`kakehashi --version` (process start)", version);
            row("`kakehashi --json trace <id>` (process)", trace);
        }
        None => println!("| `kakehashi trace` (process) | skipped: no binary | | | | |"),
    }
    let p99 = percentile(&all, 0.99);
    println!();
    println!(
        "TraceEvent p99 {:.1} ms, max {:.1} ms: the < 200 ms target {}",
        ms(p99),
        ms(percentile(&all, 1.0)),
        if percentile(&all, 1.0) < Duration::from_millis(200) {
            "holds for every lookup"
        } else {
            "is missed"
        }
    );
    drop(nodelay);
    drop(registry);
    drop(nats);
}

fn hops_of(events: u64) -> f64 {
    (events as usize * HOPS_PER_EVENT) as f64
}

/// Calls TraceEvent and checks the answer is the event's validated, delivered and acked hops.
async fn check_trace(flows: &mut FlowsClient<tonic::transport::Channel>, id: &str) {
    let r =
        flows.trace_event(TraceEventRequest { event_id: id.to_string() }).await.expect("trace").into_inner();
    let names: Vec<&str> = r.hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(names, ["validated", "delivered", "acked"], "hops of {id}");
    assert_eq!(r.hops[2].subscription, SUBSCRIPTION);
}

/// Where the time of one read goes.
#[derive(Default)]
struct ReadTimes {
    /// `get_stream` + `info`.
    info: Vec<Duration>,
    /// The ordered consumer created.
    create: Vec<Duration>,
    /// Its messages received, parsed and unpacked.
    messages: Vec<Duration>,
}

/// The hops under `filter` that `keep` accepts, read as the registry reads them
/// (`kakehashi_runtime::streams::read_each`: stream info, an ordered consumer from the first
/// message, read until none is pending), each step timed.
async fn read(
    js: &jetstream::Context,
    filter: &str,
    keep: impl Fn(&AuditRecord) -> bool,
    times: &mut ReadTimes,
) -> Vec<AuditRecord> {
    use futures::StreamExt;
    let t = Instant::now();
    let mut stream = js.get_stream(subjects::STREAM_AUDIT).await.expect("KH_AUDIT");
    stream.info().await.expect("info");
    times.info.push(t.elapsed());
    let t = Instant::now();
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    times.create.push(t.elapsed());
    let t = Instant::now();
    let mut messages = ordered.messages().await.expect("read");
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        let r: AuditRecord = serde_json::from_slice(&m.payload).expect("a well-formed record");
        out.extend(r.into_hops().into_iter().filter(|h| keep(h)));
        if m.info().map(|i| i.pending).unwrap_or(0) == 0 {
            break;
        }
    }
    times.messages.push(t.elapsed());
    out
}

/// KH_AUDIT's consumer count now, and how long its ephemeral (ordered) consumers took to
/// expire (each read leaves one behind until its inactivity threshold; the account's limit on
/// consumers would refuse the next phase's reads otherwise). Waits 60 s at most.
async fn settle_consumers(js: &jetstream::Context) -> (usize, Duration) {
    let count = || async {
        let mut s = js.get_stream(subjects::STREAM_AUDIT).await.expect("KH_AUDIT");
        s.info().await.expect("info").state.consumer_count
    };
    let now = count().await;
    let t = Instant::now();
    while count().await > 0 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (now, t.elapsed())
}

/// Times TraceEvent for each event, checking each answer.
async fn time_traces(
    flows: &mut FlowsClient<tonic::transport::Channel>,
    events: &[(u64, String)],
) -> Vec<(u64, Duration)> {
    let mut out = Vec::with_capacity(events.len());
    for (i, id) in events {
        let t = Instant::now();
        check_trace(flows, id).await;
        out.push((*i, t.elapsed()));
    }
    out
}

/// A second registry in this process whose gRPC listener has TCP_NODELAY set (Linux hands it
/// down to the accepted connections); the harness's registry, like the service's binary,
/// accepts through `TcpIncoming::from(listener)`, which leaves Nagle's algorithm on.
struct NoDelayRegistry {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl NoDelayRegistry {
    async fn start(nats: &NatsServer) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_nodelay(true).expect("TCP_NODELAY");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let listener = socket.listen(128).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut config = registry_config(nats);
        config.instance = "registry-nodelay".into();
        config.validator.enabled = false;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = kakehashi_registry::run(config, listener, shutdown).await {
                panic!("registry failed: {e}");
            }
        });
        kakehashi_tests::services::wait_serving(addr).await;
        Self { addr, stop: Some(stop) }
    }
}

impl Drop for NoDelayRegistry {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The `kakehashi` binary: `KH_CTL_BIN`, else next to this bench's `deps/` directory.
fn ctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KH_CTL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") { dir.parent().expect("target dir") } else { dir };
    dir.join(format!("kakehashi{}", std::env::consts::EXE_SUFFIX))
}

/// Runs the CLI once and returns how long the process took; with `id`, checks its JSON answer
/// holds the event's acked hop.
async fn run_ctl(bin: &Path, args: &[&str], id: Option<&str>) -> Duration {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KAKEHASHI_") {
            cmd.env_remove(k);
        }
    }
    let t = Instant::now();
    let out = cmd.output().await.expect("run kakehashi");
    let took = t.elapsed();
    assert!(out.status.success(), "kakehashi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    if let Some(id) = id {
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
        assert_eq!(json["event_id"], id);
        let hops: Vec<&str> =
            json["hops"].as_array().expect("hops").iter().filter_map(|h| h["hop"].as_str()).collect();
        assert_eq!(hops, ["validated", "delivered", "acked"], "kakehashi trace {id}");
    }
    took
}

// ---- The trail --------------------------------------------------------------------------

/// One actor's hash chain, linked as the registry's audit task links it.
struct Chain {
    chain: String,
    seq: u64,
    prev: String,
    prev_time: i64,
}

impl Chain {
    /// Chains `r` to the last link and returns its sealed JSON.
    fn link(&mut self, mut r: AuditRecord) -> Vec<u8> {
        self.seq += 1;
        r.actor = ACTOR.to_string();
        r.chain = self.chain.clone();
        r.seq = self.seq;
        r.prev_hash = std::mem::take(&mut self.prev);
        r.prev_time_us = self.prev_time;
        let body = r.seal().expect("a record serialises");
        self.prev_time = r.time_us;
        self.prev = r.hash;
        body
    }
}

/// The trail's messages (subject, body, no `Nats-Msg-Id`: the writer sets none), generated as
/// they are published; the ids of the `wanted` events are kept.
struct Trail {
    events: u64,
    /// The next KH_EVENTS sequence to write (from 1).
    next_seq: u64,
    start_us: i64,
    chain: Chain,
    queue: VecDeque<(String, Vec<u8>, Option<String>)>,
    /// Event index (sequence − 1) → its id once written.
    wanted: BTreeMap<u64, Option<String>>,
    started: Instant,
    reported: u64,
}

impl Trail {
    fn new(events: u64, wanted: Vec<u64>) -> Self {
        let start_us = now_us() - events as i64 * EVENT_GAP_US - 60_000_000;
        Self {
            events,
            next_seq: 1,
            start_us,
            chain: Chain { chain: now_us().to_string(), seq: 0, prev: GENESIS.to_string(), prev_time: 0 },
            queue: VecDeque::new(),
            wanted: wanted.into_iter().map(|i| (i, None)).collect(),
            started: Instant::now(),
            reported: 0,
        }
    }

    /// Writes the events of the next group of sequences: those with the same `seq / 256` (so
    /// never across a 1,024 hop bucket), their validated records, then the batch of their
    /// delivered hops, then the batch of their acked hops.
    fn next_group(&mut self) {
        let first = self.next_seq;
        let end = ((first / BATCH_HOPS + 1) * BATCH_HOPS).min(self.events + 1);
        let mut delivered = Vec::with_capacity((end - first) as usize);
        let mut acked = Vec::with_capacity((end - first) as usize);
        for seq in first..end {
            let id = kakehashi_proto::ids::new_event_id();
            if let Some(slot) = self.wanted.get_mut(&(seq - 1)) {
                *slot = Some(id.clone());
            }
            let time_us = self.start_us + seq as i64 * EVENT_GAP_US;
            let trace_id =
                format!("{:032x}", (seq as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            let validated = AuditRecord {
                event_id: id.clone(),
                hop: "validated".into(),
                time_us,
                outcome: "ok".into(),
                trace_id: trace_id.clone(),
                department: SOURCE.into(),
                event_type: TYPE.into(),
                schema_version: 1,
                events_seq: seq,
                ..Default::default()
            };
            let body = self.chain.link(validated);
            self.queue.push_back((subjects::audit(&id), body, None));
            let hop = |name: &str, at: i64, detail: &str| BatchedHop {
                event_id: id.clone(),
                hop: name.into(),
                time_us: time_us + at,
                outcome: "ok".into(),
                detail: detail.into(),
                trace_id: trace_id.clone(),
                department: READER.into(),
                event_type: TYPE.into(),
                subscription: SUBSCRIPTION.into(),
                schema_version: 1,
                events_seq: seq,
            };
            delivered.push(hop("delivered", DELIVERED_AFTER_US, "attempt 1"));
            acked.push(hop("acked", ACKED_AFTER_US, ""));
        }
        for hops in [delivered, acked] {
            let batch = AuditRecord {
                hop: BATCH_HOP.into(),
                time_us: hops.iter().map(|h| h.time_us).max().unwrap_or_default(),
                events_seq: first,
                hops,
                ..Default::default()
            };
            let body = self.chain.link(batch);
            self.queue.push_back((subjects::audit_hops(first), body, None));
        }
        self.next_seq = end;
        let done = end - 1;
        if done * 20 / self.events > self.reported || done == self.events {
            self.reported = done * 20 / self.events;
            let s = self.started.elapsed().as_secs_f64();
            eprintln!(
                "  {done} events ({:.0}%) written in {s:.0} s: {:.0} hops/s",
                done as f64 * 100.0 / self.events as f64,
                hops_of(done) / s
            );
        }
    }
}

impl Iterator for Trail {
    type Item = (String, Vec<u8>, Option<String>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.queue.is_empty() && self.next_seq <= self.events {
            self.next_group();
        }
        self.queue.pop_front()
    }
}

// ---- Sampling -------------------------------------------------------------------------------

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

/// splitmix64.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` event indices, one at random in each of `n` equal strata of `0..events`, the very first
/// and last events included.
fn lookup_indices(events: u64, n: usize, mut seed: u64) -> Vec<u64> {
    let n = (n as u64).min(events);
    let mut out: Vec<u64> = (0..n)
        .map(|k| {
            let (lo, hi) = (k * events / n, (k + 1) * events / n);
            lo + next_random(&mut seed) % (hi - lo).max(1)
        })
        .collect();
    out[0] = 0;
    out[n as usize - 1] = events - 1;
    out.dedup();
    out
}

/// `v` in random order (Fisher–Yates).
fn shuffled<T>(mut v: Vec<T>, mut seed: u64) -> Vec<T> {
    for i in (1..v.len()).rev() {
        let j = (next_random(&mut seed) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

// ---- Statistics -----------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile (nearest rank) of `v`.
fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn row(name: &str, v: &[Duration]) {
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.9)),
        ms(percentile(v, 0.99)),
        ms(percentile(v, 1.0))
    );
}
