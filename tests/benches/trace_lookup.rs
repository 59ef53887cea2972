//! Benchmark of `Flows.TraceEvent` (what `kakehashi trace <id>` calls) on a large audit trail:
//! issue 16 asks for an answer in < 200 ms on a trail of 10 million hops. Every audit record is
//! on one subject (`kh.audit.b`), so the registry finds an event's records through its trace
//! index (an embedded redb file: event id → `KH_AUDIT` sequences); the bench also measures what
//! that index costs: how long it takes to read the trail, its file's size, the memory.
//!
//! Run it in release mode (it is not a test, and exits at once unless cargo passes `--bench`):
//!
//! ```sh
//! cargo build --release -p kakehashi-ctl   # the `kakehashi` binary, for the process rows
//! TMPDIR=/var/tmp cargo bench -p kakehashi-tests --bench trace_lookup
//! ```
//!
//! (nats-server's store and the index files are in temporary directories: `TMPDIR` says where;
//! 10 million hops take about 3 GB of store and a few hundred MB of index per registry.)
//!
//! Environment: `KH_BENCH_HOPS` (hops in the trail, default 10000000), `KH_BENCH_LOOKUPS`
//! (timed `TraceEvent` calls, and events read step by step, default 200 each),
//! `KH_BENCH_CTL_RUNS` (timed `kakehashi trace` processes, default 20), `KH_CTL_BIN` (the
//! `kakehashi` binary; default: next to this bench's `deps/` directory, where
//! `cargo build --release -p kakehashi-ctl` puts it), `KH_BENCH_REBUILD` (0 skips step 5).
//!
//! What it does:
//! 1. Starts nats-server (the harness's, with the generated accounts) and a registry in this
//!    process (which creates `KH_AUDIT` as it does in production) whose trace index is a file
//!    in a temporary directory (`trace_index.path`; cache, `catch_up_ms` and durable commits
//!    as by default: 64 MiB, 2,000 ms, every second), as deployed. It starts before the fill,
//!    so its index reads the trail while it is written.
//! 2. Fills `KH_AUDIT` with the trail of `hops / 3` events, each validated, delivered to one
//!    subscription and acked, written as the registry's audit task writes it when it finds the
//!    hops queued together: every record on `kh.audit.b`; for every 256 consecutive events,
//!    one batch record of their 256 `validated` hops (`events_seq` = the event's `KH_EVENTS`
//!    sequence 1, 2, …, schema version 1), then one of their `delivered` hops, then one of
//!    their `acked` hops — one actor's hash chain (sealed with `AuditRecord::seal`;
//!    `seq`/`prev_hash`/`prev_time_us` linked; a batch's time is its latest hop's). Published
//!    as the `admin` NATS identity, pipelined (1,024 unconfirmed at most). Meanwhile, every
//!    5 s, a `TraceEvent` of an id nobody published samples how far the index has read (an
//!    `UNAVAILABLE` answer says "up to record N of M" after waiting `catch_up_ms`; `NOT_FOUND`
//!    means it had read everything stored when asked).
//! 3. After the fill, calls `TraceEvent` of the trail's last event until it answers with its
//!    three hops: the time from the end of the fill is the index's catch-up. Reports the index
//!    file's size, `KH_AUDIT`'s message blocks (count and mean size, from the store files
//!    nats-server has open), and the RSS of nats-server and of this process: the registry runs
//!    in it, so that covers the registry (its index cache included) plus the bench's own NATS
//!    connection, gRPC client and fill buffers (mimalloc, as the service binary; VmHWM is the
//!    peak).
//! 4. Times lookups of events drawn at random from strata spanning the trail (the very first
//!    and last events included; the last one was also the catch-up probe of step 3), split into
//!    three disjoint samples so each measurement reads events no other one touched:
//!    - `TraceEvent` over gRPC, one call at a time (the test registry enforces no tokens, so
//!      the caller sees every department's hops, as an administrator does), with nats-server's
//!      CPU time and bytes read over these calls (`/proc/<pid>/io`: from the page cache or
//!      the disk);
//!    - what a trace is made of, done from the bench's own NATS connection as the registry
//!      does it: `KH_AUDIT`'s info, the event's three records by sequence (`get_raw_message`;
//!      the first timed apart from the two right after it, which nats-server then has in
//!      memory; the bench knows their sequences: record k of the trail is `KH_AUDIT`'s k-th,
//!      checked), decoded and unpacked; this leaves the index lookup and the gRPC
//!      call as the difference from `TraceEvent`;
//!    - `kakehashi --json trace <id>` as a process.
//!
//!    Every answer must be exactly validated, delivered, acked. A health check on the same gRPC
//!    connection gives the bare round trip.
//! 5. Starts a second registry in this process on a new, empty index file (its validator off)
//!    and times how long it takes to index the whole trail (until its `TraceEvent` of the last
//!    event answers), as a new replica, or one whose index file was lost, does.
//! 6. Prints markdown tables on stdout (progress on stderr).

use async_nats::jetstream;
use kakehashi_proto::subjects;
use kakehashi_proto::v1::{flows_client::FlowsClient, TraceEventRequest, TraceEventResponse};
use kakehashi_registry::config::RegistryConfig;
use kakehashi_registry::trace_index::TraceIndexConfig;
use kakehashi_runtime::audit::{now_us, AuditRecord, BatchedHop, BATCH_HOP, GENESIS};
use kakehashi_tests::bench::{
    child_pid, connect, cores, cpu_time, env_count, env_usize, publish_bytes_pipelined, status_kb, READER,
    SOURCE, TYPE,
};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hops per event: validated, delivered, acked.
const HOPS_PER_EVENT: usize = 3;
/// Events per group of batch records, and hops per batch record (the registry's default
/// `audit_batch_hops`).
const BATCH_HOPS: u64 = 256;
/// Batch records per group: the validated, the delivered and the acked hops.
const RECORDS_PER_GROUP: u64 = 3;
/// The actor of the chain (a registry instance).
const ACTOR: &str = "registry-bench";
/// The reader's subscription (consumer name), as delivery records it.
const SUBSCRIPTION: &str = "sub_mhlw_doses";
/// Microseconds between consecutive events of the trail, and from validation to delivery and
/// to the ack.
const EVENT_GAP_US: i64 = 100;
const DELIVERED_AFTER_US: i64 = 2_000;
const ACKED_AFTER_US: i64 = 9_000;
/// How often the index's progress is sampled during the fill.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for an index to read the whole trail.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(3600);

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

/// VmRSS and VmHWM of a process (this one when `pid` is `None`), in MB.
fn memory_mb(pid: Option<u32>) -> (u64, u64) {
    (status_kb(pid, "VmRSS:") / 1024, status_kb(pid, "VmHWM:") / 1024)
}

/// nats-server's message blocks of `KH_AUDIT` (found through the files the server has open):
/// how many, and their mean size in MB.
fn audit_blocks(nats_pid: Option<u32>) -> Option<(usize, f64)> {
    let open = std::fs::read_dir(format!("/proc/{}/fd", nats_pid?)).ok()?;
    let dir = open.flatten().find_map(|fd| {
        let target = std::fs::read_link(fd.path()).ok()?;
        let in_audit = target.to_string_lossy().contains("/KH_AUDIT/msgs/");
        in_audit.then(|| target.parent().map(Path::to_path_buf)).flatten()
    })?;
    let sizes: Vec<u64> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "blk"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect();
    let n = sizes.len();
    (n > 0).then(|| (n, sizes.iter().sum::<u64>() as f64 / n as f64 / 1e6))
}

/// `rchar` and `read_bytes` of `/proc/<pid>/io`: the bytes a process read, and of those the
/// ones fetched from the storage device (not the page cache); zeros when unreadable.
fn io_read(pid: Option<u32>) -> (u64, u64) {
    let Some(io) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/io")).ok()) else {
        return (0, 0);
    };
    let field =
        |name: &str| io.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0);
    (field("rchar:"), field("read_bytes:"))
}

fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

/// A registry config whose trace index is the file `path` (other index settings default).
fn with_index(nats: &NatsServer, path: &Path) -> RegistryConfig {
    RegistryConfig {
        trace_index: TraceIndexConfig { path: Some(path.to_path_buf()), ..Default::default() },
        ..registry_config(nats)
    }
}

async fn run() {
    let hops = env_count("KH_BENCH_HOPS", 10_000_000);
    let lookups = env_count("KH_BENCH_LOOKUPS", 200);
    let ctl_runs = env_count("KH_BENCH_CTL_RUNS", 20);
    let rebuild = env_usize("KH_BENCH_REBUILD", 1) != 0;
    let events = hops.div_ceil(HOPS_PER_EVENT) as u64;
    let load_start = loadavg();
    eprintln!(
        "trace_lookup: {hops} hops = {events} events × {HOPS_PER_EVENT}; {lookups} lookups; {} cores; load {load_start}; store and index under {}",
        cores(),
        std::env::temp_dir().display()
    );

    let index_dir = tempfile::tempdir().expect("index directory");
    let index_path = index_dir.path().join("trace-index.redb");
    let nats = NatsServer::start();
    let nats_pid = child_pid("nats-server");
    let mem_before = memory_mb(None);
    let registry = Registry::start(with_index(&nats, &index_path)).await;
    let js = connect(&nats).await;
    let audit_stream = js.get_stream(subjects::STREAM_AUDIT).await.expect("the registry created KH_AUDIT");
    // Whatever KH_AUDIT held before the fill (nothing, unless the registry wrote a record).
    let base = audit_stream.cached_info().state.last_sequence;
    let channel = Channel::from_shared(registry.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect registry");
    let mut flows = FlowsClient::new(channel.clone());

    // ---- Fill, the index following ------------------------------------------------------
    // Three samples of events, each spread at random over the whole trail, each read for the
    // first time by its own measurement: TraceEvent over gRPC, the steps of a trace made from
    // here, and `kakehashi trace`.
    let sizes = [lookups, lookups, ctl_runs];
    let wanted = lookup_indices(events, sizes.iter().sum(), seed());
    let mut trail = Trail::new(events, wanted);
    let fill_start = Instant::now();
    let (stop_lag, stop_rx) = tokio::sync::watch::channel(false);
    let lag_task = tokio::spawn(sample_lag(flows.clone(), fill_start, stop_rx));
    publish_bytes_pipelined(&js, &mut trail).await;
    let fill = fill_start.elapsed();
    let fill_end = Instant::now();
    let _ = stop_lag.send(true);
    let lag = lag_task.await.expect("lag sampler");
    let records = trail.chain.seq;
    let last_id = trail.last_id.clone();
    eprintln!("filled in {:.1} s: {records} records; waiting for the index", fill.as_secs_f64());

    // ---- The index catches up -------------------------------------------------------------
    let (catch_up, catch_up_unavailable) =
        until_traced(&mut flows, &last_id, fill_end, "index after the fill").await;
    let index_mb_caught_up = file_mb(&index_path);
    let mem_caught_up = memory_mb(None);
    let info =
        js.get_stream(subjects::STREAM_AUDIT).await.expect("KH_AUDIT").info().await.expect("info").clone();
    assert_eq!(
        info.state.last_sequence,
        base + records,
        "KH_AUDIT holds the trail's records and nothing else since the fill started"
    );
    let nats_rss_mb = nats_pid.map_or(0, |p| status_kb(Some(p), "VmRSS:")) / 1024;
    let blocks = audit_blocks(nats_pid);
    eprintln!(
        "index caught up {:.1} s after the fill ({:.1} MB); KH_AUDIT: {} messages, {:.2} GB, {} subjects; nats-server RSS {nats_rss_mb} MB",
        catch_up.as_secs_f64(),
        index_mb_caught_up,
        info.state.messages,
        info.state.bytes as f64 / 1e9,
        info.state.subjects_count
    );
    let all: Vec<(u64, String)> =
        trail.wanted.into_iter().map(|(i, id)| (i, id.expect("every wanted event was written"))).collect();
    let mut all = shuffled(all, seed()).into_iter();
    let mut sample = |n: usize| -> Vec<(u64, String)> { all.by_ref().take(n).collect() };
    let (lookups, lookups_parts, lookups_ctl) = (sample(sizes[0]), sample(sizes[1]), sample(sizes[2]));
    // Let the store settle (nats-server flushes its last blocks) before timing reads.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // ---- TraceEvent over gRPC -------------------------------------------------------------
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
    // What nats-server did for the timed calls: its CPU time and reads.
    let (nats_cpu, io_before) = (cpu_time(nats_pid), io_read(nats_pid));
    let grpc = time_traces(&mut flows, &lookups).await;
    let nats_cpu = cpu_time(nats_pid).saturating_sub(nats_cpu);
    let nats_io = io_read(nats_pid);
    let nats_io = (nats_io.0.saturating_sub(io_before.0), nats_io.1.saturating_sub(io_before.1));
    eprintln!("{} TraceEvent calls answered", grpc.len());

    // ---- What a trace is made of, from here -----------------------------------------------
    let mut parts = Parts::default();
    for (i, id) in &lookups_parts {
        let group = i / BATCH_HOPS;
        let seq = base + group * RECORDS_PER_GROUP + 1;
        read_parts(&js, [seq, seq + 1, seq + 2], id, &mut parts).await;
    }
    eprintln!("{} traces read step by step", parts.total.len());

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
    let mem_lookups = memory_mb(None);
    let index_mb_lookups = file_mb(&index_path);
    let nats_rss_lookups_mb = nats_pid.map_or(0, |p| status_kb(Some(p), "VmRSS:")) / 1024;
    let consumers = js
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .expect("KH_AUDIT")
        .info()
        .await
        .expect("info")
        .state
        .consumer_count;

    // ---- A second registry indexes the whole trail from scratch -----------------------------
    let rebuilt = if rebuild {
        let path = index_dir.path().join("trace-index-rebuilt.redb");
        let mut config = with_index(&nats, &path);
        config.instance = "registry-rebuild".into();
        config.validator.enabled = false;
        let start = Instant::now();
        let second = Registry::start(config).await;
        let mut flows = FlowsClient::connect(second.endpoint()).await.expect("connect second registry");
        let (took, unavailable) =
            until_traced(&mut flows, &last_id, start, "index rebuilt from KH_AUDIT").await;
        let mb = file_mb(&path);
        let mem = memory_mb(None);
        eprintln!("a new index read the whole trail in {:.1} s ({mb:.1} MB)", took.as_secs_f64());
        drop(flows);
        drop(second);
        Some((took, unavailable, mb, mem))
    } else {
        None
    };
    let load_end = loadavg();
    let nats_rss_end_mb = nats_pid.map_or(0, |p| status_kb(Some(p), "VmRSS:")) / 1024;

    // ---- Report ------------------------------------------------------------------------
    let hops_written = events as usize * HOPS_PER_EVENT;
    println!();
    println!("Trail: load average {load_start} at start, {load_end} at end; {} cores", cores());
    println!();
    println!("| trail | value |");
    println!("|---|---|");
    println!("| hops | {hops_written} |");
    println!("| events (validated, delivered, acked) | {events} |");
    println!(
        "| records written | {records} batch records of ≤ {BATCH_HOPS} hops ({RECORDS_PER_GROUP} per {BATCH_HOPS} events), all on `{}` |",
        subjects::AUDIT_RECORDS
    );
    println!("| KH_AUDIT messages | {} |", info.state.messages);
    println!(
        "| KH_AUDIT bytes | {:.2} GB ({:.1} KB per record) |",
        info.state.bytes as f64 / 1e9,
        info.state.bytes as f64 / info.state.messages.max(1) as f64 / 1e3
    );
    println!("| KH_AUDIT subjects | {} |", info.state.subjects_count);
    match blocks {
        Some((n, mb)) => println!(
            "| KH_AUDIT message blocks in nats-server's store | {n} files, {mb:.1} MB each on average (a read from a block not in the server's memory loads the whole block) |"
        ),
        None => println!("| KH_AUDIT message blocks in nats-server's store | not found |"),
    }
    println!("| KH_AUDIT consumers after the lookups | {consumers} (the trace index's feed) |");
    println!("| fill time | {:.1} s |", fill.as_secs_f64());
    println!(
        "| fill rate | {:.0} hops/s, {:.0} records/s |",
        hops_written as f64 / fill.as_secs_f64(),
        records as f64 / fill.as_secs_f64()
    );
    println!(
        "| nats-server during the {} timed TraceEvent calls | {:.2} s of CPU; read {:.0} MB ({:.0} MB of it from the disk, the rest from the page cache) |",
        grpc.len(),
        nats_cpu.as_secs_f64(),
        nats_io.0 as f64 / 1e6,
        nats_io.1 as f64 / 1e6
    );
    println!(
        "| nats-server RSS after the fill / after the lookups / at end | {nats_rss_mb} MB / {nats_rss_lookups_mb} MB / {nats_rss_end_mb} MB |"
    );
    println!();
    println!("| trace index (redb file, default settings) | value |");
    println!("|---|---|");
    println!(
        "| index lag during the fill (every {} s) | {} |",
        LAG_EVERY.as_secs(),
        lag_summary(&lag, records)
    );
    println!(
        "| caught up after the fill (TraceEvent of the last event answered) | {:.1} s ({catch_up_unavailable} UNAVAILABLE answers first) |",
        catch_up.as_secs_f64()
    );
    let following = fill + catch_up;
    println!(
        "| fill + catch-up (the index reading while the trail was written) | {:.1} s: {:.0} records/s, {:.0} hops/s |",
        following.as_secs_f64(),
        records as f64 / following.as_secs_f64(),
        hops_written as f64 / following.as_secs_f64()
    );
    println!(
        "| index file after catch-up / after the lookups | {index_mb_caught_up:.1} MB / {index_mb_lookups:.1} MB ({:.1} bytes per hop) |",
        index_mb_lookups * 1e6 / hops_written as f64
    );
    match &rebuilt {
        Some((took, unavailable, mb, _)) => {
            println!(
                "| a new index reading the whole trail (second registry, from its start) | {:.1} s: {:.0} records/s, {:.0} hops/s; {mb:.1} MB; {unavailable} UNAVAILABLE answers first |",
                took.as_secs_f64(),
                records as f64 / took.as_secs_f64(),
                hops_written as f64 / took.as_secs_f64()
            );
        }
        None => println!("| a new index reading the whole trail | skipped (KH_BENCH_REBUILD=0) |"),
    }
    println!(
        "| this process's RSS / peak (the registry runs in it, with the bench's NATS connection, gRPC client and fill buffers): before the registry started | {} MB / {} MB |",
        mem_before.0, mem_before.1
    );
    println!("| · after the fill and catch-up | {} MB / {} MB |", mem_caught_up.0, mem_caught_up.1);
    println!("| · after the lookups | {} MB / {} MB |", mem_lookups.0, mem_lookups.1);
    if let Some((_, _, _, mem)) = &rebuilt {
        println!("| · after the second registry's rebuild (both registries) | {} MB / {} MB |", mem.0, mem.1);
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
    row("gRPC health check, same connection (round trip alone)", &health_t);
    row("a trace's reads, made from the bench (other events)", &parts.total);
    row("· KH_AUDIT lookup + info", &parts.info);
    row("· its 3 records by sequence (`get_raw_message`)", &parts.gets);
    row("· · the first of them", &parts.get_first);
    row("· · the other two (the records right after it)", &parts.get_rest);
    row("· the 3 records parsed + unpacked, its 3 hops kept", &parts.parse);
    row("· · one 256-hop batch record parsed + unpacked", &parts.parse_one);
    match &ctl_rows {
        Some((version, trace)) => {
            row("`kakehashi --version` (process start)", version);
            row("`kakehashi --json trace <id>` (process)", trace);
        }
        None => println!("| `kakehashi trace` (process) | skipped: no binary | | | | |"),
    }
    let bytes = &parts.record_bytes;
    if !bytes.is_empty() {
        println!();
        println!(
            "A batch record read by sequence: {:.1} KB on average ({} read).",
            bytes.iter().sum::<usize>() as f64 / bytes.len() as f64 / 1e3,
            bytes.len()
        );
    }
    let p99 = percentile(&all, 0.99);
    let max = percentile(&all, 1.0);
    println!();
    println!(
        "TraceEvent p99 {:.1} ms, max {:.1} ms: the < 200 ms target {}",
        ms(p99),
        ms(max),
        if max < Duration::from_millis(200) {
            "holds for every lookup"
        } else if p99 < Duration::from_millis(200) {
            "holds at p99, not for every lookup"
        } else {
            "is missed at p99"
        }
    );
    drop(flows);
    drop(health);
    drop(registry);
    drop(nats);
    drop(index_dir);
}

// ---- The index's progress -----------------------------------------------------------------

/// (records indexed, records in `KH_AUDIT` when asked) of an `UNAVAILABLE` answer of
/// `TraceEvent`: "the trace index has read the audit trail up to record N of M; …".
fn behind(status: &tonic::Status) -> Option<(u64, u64)> {
    let rest = status.message().split("up to record ").nth(1)?;
    let (applied, rest) = rest.split_once(" of ")?;
    let target = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((applied.parse().ok()?, target.parse().ok()?))
}

/// One sample of the index's progress: seconds since the fill started, and (records indexed,
/// records stored) when it was behind, none when it had read everything stored.
type Lag = (f64, Option<(u64, u64)>);

/// Samples the index's progress every [`LAG_EVERY`] until `stop`, with `TraceEvent` of an id
/// nobody published: behind, the registry waits `catch_up_ms` and answers `UNAVAILABLE` saying
/// how far it has read; caught up, `NOT_FOUND`.
async fn sample_lag(
    mut flows: FlowsClient<Channel>,
    start: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Lag> {
    let unknown = kakehashi_proto::ids::new_event_id();
    let mut out = Vec::new();
    while !*stop.borrow() {
        let r = flows.trace_event(TraceEventRequest { event_id: unknown.clone() }).await;
        let at = start.elapsed().as_secs_f64();
        match r {
            Err(s) if s.code() == tonic::Code::NotFound => out.push((at, None)),
            Err(s) if s.code() == tonic::Code::Unavailable => match behind(&s) {
                Some((applied, target)) => {
                    eprintln!("  fill: {at:.0} s: the index has read {applied} of {target} records");
                    out.push((at, Some((applied, target))));
                }
                None => eprintln!("  fill: {at:.0} s: TraceEvent unavailable: {}", s.message()),
            },
            Err(s) => eprintln!("  fill: {at:.0} s: TraceEvent failed: {s}"),
            Ok(r) => panic!("an id nobody published was traced: {:?}", r.into_inner()),
        }
        tokio::select! {
            _ = tokio::time::sleep(LAG_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
    out
}

fn lag_summary(lag: &[Lag], records: u64) -> String {
    if lag.is_empty() {
        return "no sample (the fill took less than one)".into();
    }
    let caught_up = lag.iter().filter(|(_, b)| b.is_none()).count();
    let worst = lag.iter().filter_map(|(at, b)| b.map(|(a, t)| (t - a, *at, t))).max_by_key(|(l, _, _)| *l);
    let last = match lag.last() {
        Some((at, Some((a, t)))) => format!("; at the last sample ({at:.0} s) {} records behind", t - a),
        Some((at, None)) => format!("; caught up at the last sample ({at:.0} s)"),
        None => String::new(),
    };
    match worst {
        Some((l, at, t)) => format!(
            "{} samples, caught up in {caught_up}; most behind: {l} records at {at:.0} s ({:.0} % of the {t} then stored; the trail has {records}){last}",
            lag.len(),
            l as f64 * 100.0 / t.max(1) as f64
        ),
        None => format!("{} samples, caught up in every one", lag.len()),
    }
}

/// Calls `TraceEvent` of `id` until it answers with the event's three hops (each `UNAVAILABLE`
/// answer — the index still reading — comes after the registry's `catch_up_ms`); returns the
/// time from `since` and how many `UNAVAILABLE` answers came first. Panics on any other error
/// and after [`CATCH_UP_LIMIT`].
async fn until_traced(
    flows: &mut FlowsClient<Channel>,
    id: &str,
    since: Instant,
    what: &str,
) -> (Duration, usize) {
    let mut unavailable = 0;
    let mut told = Instant::now();
    loop {
        match flows.trace_event(TraceEventRequest { event_id: id.to_string() }).await {
            Ok(r) => {
                check_hops(&r.into_inner(), id);
                return (since.elapsed(), unavailable);
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                unavailable += 1;
                if told.elapsed() >= Duration::from_secs(10) || unavailable == 1 {
                    let progress = behind(&s)
                        .map_or_else(|| s.message().to_string(), |(a, t)| format!("{a} of {t} records read"));
                    eprintln!("  {what}: {:.0} s: {progress}", since.elapsed().as_secs_f64());
                    told = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("TraceEvent {id} ({what}): {s}"),
        }
        assert!(since.elapsed() < CATCH_UP_LIMIT, "{what}: not caught up after {CATCH_UP_LIMIT:?}");
    }
}

// ---- Lookups ------------------------------------------------------------------------------

/// Checks a trace is exactly the event's validated, delivered and acked hops.
fn check_hops(r: &TraceEventResponse, id: &str) {
    let names: Vec<&str> = r.hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(names, ["validated", "delivered", "acked"], "hops of {id}");
    assert_eq!(r.hops[2].subscription, SUBSCRIPTION);
}

/// Calls TraceEvent and checks the answer.
async fn check_trace(flows: &mut FlowsClient<Channel>, id: &str) {
    let r =
        flows.trace_event(TraceEventRequest { event_id: id.to_string() }).await.expect("trace").into_inner();
    check_hops(&r, id);
}

/// Times TraceEvent for each event, checking each answer.
async fn time_traces(flows: &mut FlowsClient<Channel>, events: &[(u64, String)]) -> Vec<(u64, Duration)> {
    let mut out = Vec::with_capacity(events.len());
    for (i, id) in events {
        let t = Instant::now();
        check_trace(flows, id).await;
        out.push((*i, t.elapsed()));
    }
    out
}

/// Where the time of a trace's reads goes.
#[derive(Default)]
struct Parts {
    /// `get_stream` (stream info), as `TraceEvent` starts with.
    info: Vec<Duration>,
    /// The event's three records fetched by sequence, one after the other.
    gets: Vec<Duration>,
    /// The first of those fetches (its message block may not be in nats-server's memory).
    get_first: Vec<Duration>,
    /// The other two, which follow it in the stream (in the same block, unless the group
    /// straddles two).
    get_rest: Vec<Duration>,
    /// The three records decoded and unpacked, the event's hops kept.
    parse: Vec<Duration>,
    /// Each record's.
    parse_one: Vec<Duration>,
    /// All of it.
    total: Vec<Duration>,
    /// Each record's size.
    record_bytes: Vec<usize>,
}

/// Reads the event `id`'s records at `seqs` as `TraceEvent` does once the index named them
/// (`FlowsService::hops_of`): `KH_AUDIT`'s info, each record by sequence from the stream's
/// leader, decoded and unpacked, the event's hops kept; each step timed.
async fn read_parts(js: &jetstream::Context, seqs: [u64; 3], id: &str, parts: &mut Parts) {
    let start = Instant::now();
    let stream = js.get_stream(subjects::STREAM_AUDIT).await.expect("KH_AUDIT");
    parts.info.push(start.elapsed());
    let t = Instant::now();
    let mut bodies = Vec::with_capacity(seqs.len());
    for (k, seq) in seqs.into_iter().enumerate() {
        let t = Instant::now();
        let m = stream.get_raw_message(seq).await.expect("an audit record by sequence");
        if k == 0 { &mut parts.get_first } else { &mut parts.get_rest }.push(t.elapsed());
        parts.record_bytes.push(m.payload.len());
        bodies.push(m.payload);
    }
    parts.gets.push(t.elapsed());
    let t = Instant::now();
    let mut hops = Vec::new();
    for body in &bodies {
        let t = Instant::now();
        let r = AuditRecord::from_stored(body).expect("a well-formed record");
        hops.extend(r.into_hops().into_iter().filter(|h| h.event_id == id));
        parts.parse_one.push(t.elapsed());
    }
    parts.parse.push(t.elapsed());
    parts.total.push(start.elapsed());
    let names: Vec<&str> = hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(names, ["validated", "delivered", "acked"], "hops of {id} in KH_AUDIT records {seqs:?}");
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
/// holds the event's hops.
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
    /// Chains `r` to the last link and returns its sealed encoding.
    fn link(&mut self, mut r: AuditRecord) -> Vec<u8> {
        self.seq += 1;
        r.actor = ACTOR.to_string();
        r.chain = self.chain.clone();
        r.seq = self.seq;
        r.prev_hash = std::mem::take(&mut self.prev);
        r.prev_time_us = self.prev_time;
        let body = r.seal();
        self.prev_time = r.time_us;
        self.prev = r.hash;
        body
    }
}

/// The trail's messages (subject, body, no `Nats-Msg-Id`: the writer sets none), generated as
/// they are published; the ids of the `wanted` events and of the last one are kept.
struct Trail {
    events: u64,
    /// The next KH_EVENTS sequence to write (from 1).
    next_seq: u64,
    start_us: i64,
    chain: Chain,
    queue: VecDeque<(String, Vec<u8>, Option<String>)>,
    /// Event index (sequence − 1) → its id once written.
    wanted: BTreeMap<u64, Option<String>>,
    /// The id of the last event written.
    last_id: String,
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
            last_id: String::new(),
            started: Instant::now(),
            reported: 0,
        }
    }

    /// Writes the next (up to) [`BATCH_HOPS`] events: the batch record of their validated
    /// hops, then the one of their delivered hops, then the one of their acked hops.
    fn next_group(&mut self) {
        let first = self.next_seq;
        let end = (first + BATCH_HOPS).min(self.events + 1);
        let n = (end - first) as usize;
        let (mut validated, mut delivered, mut acked) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for seq in first..end {
            let id = kakehashi_proto::ids::new_event_id();
            if let Some(slot) = self.wanted.get_mut(&(seq - 1)) {
                *slot = Some(id.clone());
            }
            let time_us = self.start_us + seq as i64 * EVENT_GAP_US;
            let trace_id =
                format!("{:032x}", (seq as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            let hop = |name: &str, at: i64, department: &str, subscription: &str, detail: &str| BatchedHop {
                event_id: id.clone(),
                hop: name.into(),
                time_us: time_us + at,
                outcome: "ok".into(),
                detail: detail.into(),
                trace_id: trace_id.clone(),
                department: department.into(),
                event_type: TYPE.into(),
                subscription: subscription.into(),
                schema_version: 1,
                events_seq: seq,
            };
            validated.push(hop("validated", 0, SOURCE, "", ""));
            delivered.push(hop("delivered", DELIVERED_AFTER_US, READER, SUBSCRIPTION, "attempt 1"));
            acked.push(hop("acked", ACKED_AFTER_US, READER, SUBSCRIPTION, ""));
            self.last_id = id;
        }
        for hops in [validated, delivered, acked] {
            // As the audit task writes a batch: its time is its latest hop's, no events_seq.
            let batch = AuditRecord {
                hop: BATCH_HOP.into(),
                time_us: hops.iter().map(|h| h.time_us).max().unwrap_or_default(),
                hops,
                ..Default::default()
            };
            let body = self.chain.link(batch);
            self.queue.push_back((subjects::AUDIT_RECORDS.to_string(), body, None));
        }
        self.next_seq = end;
        let done = end - 1;
        if done * 20 / self.events > self.reported || done == self.events {
            self.reported = done * 20 / self.events;
            let s = self.started.elapsed().as_secs_f64();
            eprintln!(
                "  {done} events ({:.0}%) written in {s:.0} s: {:.0} hops/s",
                done as f64 * 100.0 / self.events as f64,
                (done as usize * HOPS_PER_EVENT) as f64 / s
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
