//! Benchmark of validation scaled out over registry instances (issue 11): the validation rate
//! of 1, 2 and 3 registry processes on one partitioned `KH_INGRESS`, against a raw NATS relay
//! measured in the same run, and the failover time after a registry is SIGKILLed.
//!
//! Run it in release mode (it is not a test, and exits at once unless cargo passes `--bench`):
//!
//! ```sh
//! export CARGO_TARGET_DIR=/var/tmp/kakehashi-target   # optional: any target dir works
//! cargo bench -p kakehashi-tests --bench scale_out
//! ```
//!
//! `cargo bench` builds the crate's `kh-registry` binary in release next to the bench
//! executable (`<target>/release/kh-registry`), where the harness finds it; `KH_REGISTRY_BIN`
//! overrides the path. The registry processes log at `info` (as in production) unless
//! `KH_TEST_LOG` says otherwise; their takeover and hand-over lines are counted in the output.
//!
//! Environment: `KH_BENCH_EVENTS` (backlog per scale run, default 60000), `KH_BENCH_INSTANCES`
//! (largest instance count, default 3), `KH_BENCH_FAILOVER_RATE` (events/s of the failover
//! run, default 1000), `KH_BENCH_KILLS` (SIGKILLs in the failover run, default 5),
//! `KH_BENCH_PHASES` (`scale`, `failover` or both, comma-separated; default both).
//!
//! What is measured:
//! - **Scale, k = 1, 2, 3** (a fresh nats-server each): N vaccination events over 1,000 record
//!   keys are stored in `KH_INGRESS` (6 partitions) while no validator runs, then k registry
//!   processes are started at once. Rate = events between 20 % and 90 % of N over the interval
//!   between the `KH_EVENTS` store times of those two messages (start-up and the first
//!   hand-overs excluded); total = start of the processes to the last event stored. Per
//!   instance: `validated` audit records and the partitions they came from. Raw, same server:
//!   the same N envelopes relayed by one pull consumer from a work-queue stream into another.
//!   Every event must be in `KH_EVENTS` once, in publish order per key.
//! - **Failover**: 2 registry processes, a paced publisher over 1,000 keys; every 10 s the
//!   instance that validated most in the last second is SIGKILLed and restarted 5 s later.
//!   Per kill: the partitions it held (those its events came from in the last second before
//!   the kill), and for each of them the time from the kill to the next event of that
//!   partition stored in `KH_EVENTS` (failover), the silence in that partition around the kill,
//!   the time until every event is again stored within 250 ms of its publish (recovered), and
//!   the worst publish → stored delay. The partition of each key is read from where
//!   nats-server stored it (`kh.ip.<partition>.…`), not recomputed.

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use futures::StreamExt;
use kakehashi_proto::subjects;
use kakehashi_proto::v1::Event;
use kakehashi_runtime::audit::AuditRecord;
use kakehashi_tests::bench::{
    child_pid, connect, cores, cpu_ticks, create_raw_streams, env_count, example_payload, keyed, new_event,
    publish_pipelined, relay, setup_registry, KEYS, RAW_IN, RAW_OUT,
};
use kakehashi_tests::{bus, NatsServer, RegistryProcess};
use prost::Message as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Registry config of every instance: the defaults (6 partitions, batch 256, failover 1.5 s).
const REGISTRY_TOML: &str = "";
/// Generous bound on any one wait, so a stall fails loudly instead of hanging.
const PHASE_LIMIT: Duration = Duration::from_secs(600);
/// Failover run: time before the first kill, between a kill and the restart, and between the
/// restart and the next kill.
const WARM_UP: Duration = Duration::from_secs(6);
const DOWN_FOR: Duration = Duration::from_secs(5);
const UP_FOR: Duration = Duration::from_secs(5);
/// An event stored within this of its publish counts as on time (recovered).
const ON_TIME: Duration = Duration::from_millis(250);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("scale_out is a benchmark: run `cargo bench -p kakehashi-tests --bench scale_out`");
        return;
    }
    if std::env::var_os("KH_TEST_LOG").is_none() {
        // Read by the harness when it spawns a registry: production's level, so the takeover
        // and hand-over lines are in the logs (set before any thread starts).
        std::env::set_var("KH_TEST_LOG", "info");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let n = env_count("KH_BENCH_EVENTS", 60_000);
    let max_k = env_count("KH_BENCH_INSTANCES", 3);
    let rate = env_count("KH_BENCH_FAILOVER_RATE", 1_000);
    let kills = env_count("KH_BENCH_KILLS", 5);
    let phases = std::env::var("KH_BENCH_PHASES").unwrap_or_else(|_| "scale,failover".into());
    let payload = example_payload();
    let load_start = loadavg();
    eprintln!(
        "scale_out: registry {}, {} cores, load average at start {load_start}",
        kakehashi_tests::process::registry_bin().display(),
        cores()
    );
    assert!(
        kakehashi_tests::process::registry_bin().exists(),
        "no kh-registry binary at {} (cargo bench builds it; or set KH_REGISTRY_BIN)",
        kakehashi_tests::process::registry_bin().display()
    );

    let mut scale = Vec::new();
    if phases.contains("scale") {
        for k in 1..=max_k {
            scale.push(scale_run(k, n, &payload).await);
        }
    }
    let failover =
        if phases.contains("failover") { Some(failover_run(rate, kills, &payload).await) } else { None };

    println!();
    println!(
        "scale_out: {n} events per scale run over {KEYS} keys, 6 ingress partitions, envelope {} bytes; {} cores shared by nats-server, this bench and every registry process",
        new_event(&payload).encode_to_vec().len(),
        cores()
    );
    println!("load average at start {load_start}, at end {}", loadavg());
    if !scale.is_empty() {
        print_scale(&scale);
    }
    if let Some(f) = failover {
        print_failover(&f, rate);
    }
}

// ---- Scale runs ----------------------------------------------------------------------------

/// One scale run's figures.
struct ScaleResult {
    k: usize,
    ours: f64,
    raw: f64,
    /// Processes started → last event stored.
    total: Duration,
    /// Processes started → first event stored.
    first: Duration,
    raw_total: Duration,
    /// Per instance: validated events, and events per partition.
    spread: BTreeMap<String, (usize, BTreeMap<u32, usize>)>,
    /// Per instance: takeovers ("validator pinned") and hand-overs from its log.
    log_counts: BTreeMap<String, (usize, usize)>,
    cpu: Cpu,
    problems: Vec<String>,
}

async fn scale_run(k: usize, n: usize, payload: &[u8]) -> ScaleResult {
    eprintln!("scale k={k}: fresh nats-server");
    let nats = NatsServer::start();
    let nats_pid = child_pid("nats-server");
    let setup = setup_registry(&nats).await;
    let js = connect(&nats).await;
    let mut problems = Vec::new();

    // Raw baseline on this server.
    create_raw_streams(&js).await;
    eprintln!("scale k={k} raw: pre-publishing {n} to {RAW_IN}");
    publish_pipelined(&js, (0..n).map(|i| ("kh.rawin.x".to_string(), keyed(payload, i).1))).await;
    let t0 = now_ns();
    let relay = tokio::spawn(relay(js.clone()));
    bus::wait_stream_len(&js, RAW_OUT, n as u64, PHASE_LIMIT).await;
    relay.abort();
    let (raw, raw_last) = fill_rate(&js, RAW_OUT, n).await;
    let raw_total = ns_to_dur(raw_last - t0);

    // Ours: the backlog, stored while no validator runs.
    eprintln!("scale k={k} ours: pre-publishing {n} to KH_INGRESS (validator not running)");
    let ids: Vec<String> = {
        let events: Vec<(String, Event)> = (0..n).map(|i| keyed(payload, i)).collect();
        let ids = events.iter().map(|(_, e)| e.id.clone()).collect();
        publish_pipelined(&js, events.into_iter()).await;
        ids
    };
    assert_eq!(bus::stream_len(&js, bus::INGRESS).await, n as u64, "KH_INGRESS holds the backlog");
    let partition_of = partitions_of_keys(&js).await;
    setup.stop().await;

    eprintln!("scale k={k} ours: starting {k} registry processes at once");
    let cpu0 = CpuMark::take(nats_pid, &[]);
    let t0 = now_ns();
    let names: Vec<String> = (1..=k).map(|i| format!("scale-{i}")).collect();
    let registries: Vec<RegistryProcess> = futures::future::join_all(
        names.iter().map(|name| RegistryProcess::start_with(&nats, name, REGISTRY_TOML)),
    )
    .await;
    let pids: Vec<u32> = registries.iter().filter_map(RegistryProcess::pid).collect();
    bus::wait_stream_len(&js, bus::EVENTS, n as u64, PHASE_LIMIT).await;
    let cpu = cpu0.since(nats_pid, &pids);
    let (ours, last) = fill_rate(&js, bus::EVENTS, n).await;
    let total = ns_to_dur(last - t0);

    // What is stored: every event once, in order per key, nothing dead-lettered.
    let stored = read_stream(&js, bus::EVENTS).await;
    let first = ns_to_dur(stored.first().map_or(t0, |s| s.stored_ns) - t0);
    problems.extend(check_complete_and_ordered(&ids, &stored));
    let dead = bus::stream_len(&js, bus::DLQ).await;
    if dead > 0 {
        problems.push(format!("{dead} events dead-lettered"));
    }

    // Who validated what.
    let audit = wait_validated(&js, n).await;
    let key_of: HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i % KEYS)).collect();
    let mut spread: BTreeMap<String, (usize, BTreeMap<u32, usize>)> = BTreeMap::new();
    for (id, actor) in &audit {
        let entry = spread.entry(actor.clone()).or_default();
        entry.0 += 1;
        if let Some(p) = key_of.get(id.as_str()).and_then(|key| partition_of.get(key)) {
            *entry.1.entry(*p).or_insert(0) += 1;
        }
    }
    if audit.len() != n {
        problems.push(format!("{} of {n} events have a validated audit record", audit.len()));
    }
    let log_counts = names.iter().zip(&registries).map(|(name, r)| (name.clone(), log_counts(r))).collect();
    print_logs(&format!("k={k}"), &registries);
    for p in &problems {
        eprintln!("FAILED scale k={k}: {p}");
    }
    drop(registries);
    drop(nats);
    ScaleResult { k, ours, raw, total, first, raw_total, spread, log_counts, cpu, problems }
}

fn print_scale(results: &[ScaleResult]) {
    let base = results.first().map_or(f64::NAN, |r| r.ours);
    println!();
    println!("### Validation rate by instances (backlog, rate between 20 % and 90 % of N)");
    println!();
    println!("| instances | kakehashi ev/s | raw relay ev/s | ours/raw | vs 1 instance | first event s | all stored s | raw all s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.0} | {:.0} | {:.3}x | {:.2}x | {:.2} | {:.2} | {:.2} |",
            r.k,
            r.ours,
            r.raw,
            r.ours / r.raw,
            r.ours / base,
            r.first.as_secs_f64(),
            r.total.as_secs_f64(),
            r.raw_total.as_secs_f64()
        );
    }
    println!();
    println!("| instances | validated per instance (partitions: events) | takeovers / hand-overs per instance (log) |");
    println!("|---|---|---|");
    for r in results {
        let spread: Vec<String> = r
            .spread
            .iter()
            .map(|(actor, (count, parts))| {
                let parts: Vec<String> = parts.iter().map(|(p, c)| format!("p{p}: {c}")).collect();
                format!("{actor} {count} ({})", parts.join(", "))
            })
            .collect();
        let logs: Vec<String> =
            r.log_counts.iter().map(|(name, (pins, gives))| format!("{name} {pins} / {gives}")).collect();
        println!("| {} | {} | {} |", r.k, spread.join("; "), logs.join("; "));
    }
    println!();
    println!("| instances | wall s | CPU s: registries | nats-server | bench | other processes | machine busy (of {} cores) |", cores());
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let c = &r.cpu;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} % |",
            r.k,
            c.wall,
            c.registries,
            c.nats,
            c.bench,
            c.others,
            c.machine_busy * 100.0
        );
    }
    for r in results {
        for p in &r.problems {
            println!("FAILED scale k={}: {p}", r.k);
        }
        if r.problems.is_empty() {
            println!("k={}: every event stored once, in publish order per key, none dead-lettered", r.k);
        }
    }
}

// ---- Failover ------------------------------------------------------------------------------

/// One SIGKILL and what followed.
struct Kill {
    victim: String,
    kill_ns: i128,
    restart_ns: i128,
    /// Partitions the victim held, with (failover, longest silence until the restart) each.
    held: BTreeMap<u32, (Duration, Duration)>,
    /// Kill → every event stored within [`ON_TIME`] of its publish again.
    recovered: Option<Duration>,
    /// Worst publish → stored delay of an event stored between the kill and the restart.
    worst_delay: Duration,
    /// Worst publish → stored delay between the restart and the next kill (hand-overs).
    worst_after_restart: Duration,
}

struct FailoverResult {
    published: usize,
    /// `validated` audit records: more than `published` when a takeover validated again what
    /// its predecessor had already stored (the stored copy is dropped as a duplicate).
    validated_records: usize,
    kills: Vec<Kill>,
    steady_p50: Duration,
    steady_p99: Duration,
    problems: Vec<String>,
    log_counts: BTreeMap<String, (usize, usize)>,
}

async fn failover_run(rate: usize, kills: usize, payload: &[u8]) -> FailoverResult {
    eprintln!("failover: fresh nats-server, 2 registry processes, {rate} ev/s, {kills} kills");
    let nats = NatsServer::start();
    let setup = setup_registry(&nats).await;
    let js = connect(&nats).await;
    let mut problems = Vec::new();

    // One event per key first, stored before any validator runs, so the server's partition
    // of every key can be read back; they are the first events of the run.
    let first: Vec<(String, Event)> = (0..KEYS).map(|i| keyed(payload, i)).collect();
    let mut ids: Vec<String> = first.iter().map(|(_, e)| e.id.clone()).collect();
    let mut sent_ns: Vec<i128> = vec![now_ns(); KEYS];
    publish_pipelined(&js, first.into_iter()).await;
    let partition_of = partitions_of_keys(&js).await;
    setup.stop().await;

    let tail = AuditTail::start(&js).await;
    let names = ["fo-a", "fo-b"];
    let mut regs =
        futures::future::join_all(names.map(|name| RegistryProcess::start_with(&nats, name, REGISTRY_TOML)))
            .await;

    // The paced publisher runs through the whole schedule.
    let duration = WARM_UP + (DOWN_FOR + UP_FOR) * kills as u32 + Duration::from_secs(2);
    let total = (duration.as_secs_f64() * rate as f64) as usize;
    let publisher = {
        let (js, payload) = (js.clone(), payload.to_vec());
        tokio::spawn(async move { paced(js, payload, KEYS, total, rate).await })
    };

    let mut schedule = Vec::new();
    tokio::time::sleep(WARM_UP).await;
    for j in 0..kills {
        let busiest = tail.busiest(Duration::from_secs(1));
        let victim = names
            .iter()
            .position(|name| busiest.as_deref().is_some_and(|a| a.starts_with(&format!("{name}#"))))
            .unwrap_or(j % names.len());
        let actor = busiest.unwrap_or_else(|| format!("{}#?", names[victim]));
        eprintln!("failover: kill {} ({actor}, validated most in the last second)", j + 1);
        let kill_ns = now_ns();
        regs[victim].kill();
        let dead_ns = now_ns();
        tokio::time::sleep(DOWN_FOR).await;
        let restart_ns = now_ns();
        regs[victim].restart().await;
        tokio::time::sleep(UP_FOR).await;
        schedule.push((actor, kill_ns, dead_ns, restart_ns, now_ns()));
    }
    let (more_ids, more_sent, failed) = publisher.await.expect("publisher task");
    if failed > 0 {
        problems.push(format!("{failed} publishes not confirmed"));
    }
    ids.extend(more_ids);
    sent_ns.extend(more_sent);
    let published = ids.len();
    bus::wait_stream_len(&js, bus::EVENTS, published as u64, PHASE_LIMIT).await;
    let stored = read_stream(&js, bus::EVENTS).await;
    problems.extend(check_complete_and_ordered(&ids, &stored));
    let dead = bus::stream_len(&js, bus::DLQ).await;
    if dead > 0 {
        problems.push(format!("{dead} events dead-lettered"));
    }

    // Per stored event: partition, store time, publish → stored delay, who validated it.
    let index_of: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let audit = wait_validated(&js, published).await;
    let validated_records = read_audit(&js).await.iter().filter(|r| r.hop == "validated").count();
    struct Ev {
        partition: u32,
        stored: i128,
        delay: i128,
        actor: Option<String>,
    }
    let events: Vec<Ev> = stored
        .iter()
        .filter_map(|s| {
            let i = *index_of.get(s.id.as_str())?;
            Some(Ev {
                partition: *partition_of.get(&(i % KEYS))?,
                stored: s.stored_ns,
                delay: s.stored_ns - sent_ns[i],
                actor: audit.get(&s.id).cloned(),
            })
        })
        .collect();
    let steady: Vec<i128> = events
        .iter()
        .filter(|e| schedule.first().is_some_and(|k| e.stored < k.1 && e.stored > k.1 - 3_000_000_000))
        .map(|e| e.delay)
        .collect();
    let (steady_p50, steady_p99) = percentiles(steady);

    let mut kills_out = Vec::new();
    for (victim, kill_ns, dead_ns, restart_ns, next_ns) in schedule {
        // Partitions the victim held: most of their audited events of the last second are its.
        let mut votes: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for e in events.iter().filter(|e| e.stored < kill_ns && e.stored >= kill_ns - 1_000_000_000) {
            if let Some(a) = &e.actor {
                let v = votes.entry(e.partition).or_default();
                if *a == victim {
                    v.0 += 1;
                } else {
                    v.1 += 1;
                }
            }
        }
        let mut held = BTreeMap::new();
        for (&p, &(mine, theirs)) in &votes {
            if mine <= theirs {
                continue;
            }
            let in_p = || events.iter().filter(move |e| e.partition == p);
            let before = in_p().filter(|e| e.stored < kill_ns).map(|e| e.stored).max();
            // After the victim is reaped, plus a margin for its last bytes in the socket.
            let after = in_p().filter(|e| e.stored > dead_ns + 50_000_000).map(|e| e.stored).min();
            if let (Some(before), Some(after)) = (before, after) {
                // The longest silence of the partition from its last event before the kill
                // until the restart (a takeover followed by a stall counts too).
                let mut times: Vec<i128> = in_p()
                    .filter(|e| e.stored >= before && e.stored < restart_ns)
                    .map(|e| e.stored)
                    .collect();
                times.sort_unstable();
                let silence = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0).max(after - before);
                held.insert(p, (ns_to_dur(after - kill_ns), ns_to_dur(silence)));
            } else {
                problems.push(format!("kill of {victim}: partition {p} has no event after the kill"));
            }
        }
        let late = ON_TIME.as_nanos() as i128;
        let down: Vec<&Ev> = events.iter().filter(|e| e.stored >= kill_ns && e.stored < restart_ns).collect();
        let recovered =
            down.iter().filter(|e| e.delay >= late).map(|e| e.stored).max().map(|t| ns_to_dur(t - kill_ns));
        let recovered = match recovered {
            Some(r) if r.as_nanos() as i128 >= restart_ns - kill_ns - late => None,
            Some(r) => Some(r),
            None => Some(Duration::ZERO),
        };
        let worst_delay = ns_to_dur(down.iter().map(|e| e.delay).max().unwrap_or(0));
        let worst_after_restart = ns_to_dur(
            events
                .iter()
                .filter(|e| e.stored >= restart_ns && e.stored < next_ns)
                .map(|e| e.delay)
                .max()
                .unwrap_or(0),
        );
        kills_out.push(Kill {
            victim,
            kill_ns,
            restart_ns,
            held,
            recovered,
            worst_delay,
            worst_after_restart,
        });
    }
    let log_counts = names.iter().zip(&regs).map(|(name, r)| (name.to_string(), log_counts(r))).collect();
    print_logs("failover", &regs);
    for p in &problems {
        eprintln!("FAILED failover: {p}");
    }
    tail.stop();
    regs.clear();
    drop(nats);
    FailoverResult {
        published,
        validated_records,
        kills: kills_out,
        steady_p50,
        steady_p99,
        problems,
        log_counts,
    }
}

fn print_failover(f: &FailoverResult, rate: usize) {
    println!();
    println!(
        "### Failover: 2 instances, {rate} ev/s over {KEYS} keys, the busiest instance SIGKILLed {} times (restarted {} s later)",
        f.kills.len(),
        DOWN_FOR.as_secs()
    );
    println!();
    println!(
        "steady publish -> stored delay before the first kill: p50 {:.1} ms, p99 {:.1} ms; {} events published",
        ms(f.steady_p50),
        ms(f.steady_p99),
        f.published
    );
    println!(
        "validated audit records: {} for {} events ({} validated again after a takeover)",
        f.validated_records,
        f.published,
        f.validated_records.saturating_sub(f.published)
    );
    println!();
    println!("| kill | victim | partitions held | failover s (kill -> next event of each held partition; max) | longest silence of a held partition until the restart s | recovered s (all on time <{} ms) | worst delay s | worst delay after restart s |", ON_TIME.as_millis());
    println!("|---|---|---|---|---:|---:|---:|---:|");
    let mut failovers = Vec::new();
    for (j, k) in f.kills.iter().enumerate() {
        let each: Vec<String> =
            k.held.iter().map(|(p, (fo, _))| format!("p{p} {:.2}", fo.as_secs_f64())).collect();
        let max_fo = k.held.values().map(|v| v.0).max();
        let max_silence = k.held.values().map(|v| v.1).max().unwrap_or_default();
        if let Some(m) = max_fo {
            failovers.push(m);
        }
        println!(
            "| {} | {} | {} | {} ; max {} | {:.2} | {} | {:.2} | {:.2} |",
            j + 1,
            k.victim,
            k.held.len(),
            each.join(", "),
            max_fo.map_or("-".into(), |m| format!("{:.2}", m.as_secs_f64())),
            max_silence.as_secs_f64(),
            k.recovered.map_or(
                format!("> {:.1}", ns_to_dur(k.restart_ns - k.kill_ns).as_secs_f64()),
                |r| format!("{:.2}", r.as_secs_f64())
            ),
            k.worst_delay.as_secs_f64(),
            k.worst_after_restart.as_secs_f64(),
        );
    }
    failovers.sort();
    if let (Some(min), Some(max)) = (failovers.first(), failovers.last()) {
        let median = failovers[failovers.len() / 2];
        println!();
        println!(
            "failover over {} kills (max over the victim's partitions): min {:.2} s, median {:.2} s, max {:.2} s (target <= 2 s: {})",
            failovers.len(),
            min.as_secs_f64(),
            median.as_secs_f64(),
            max.as_secs_f64(),
            if max.as_secs_f64() <= 2.0 { "met" } else { "NOT met" }
        );
    }
    let logs: Vec<String> = f
        .log_counts
        .iter()
        .map(|(name, (pins, gives))| format!("{name} {pins} takeovers / {gives} hand-overs"))
        .collect();
    println!("registry logs, all starts: {}", logs.join("; "));
    for p in &f.problems {
        println!("FAILED failover: {p}");
    }
    if f.problems.is_empty() {
        println!("failover: every event stored once, in publish order per key, none dead-lettered");
    }
}

/// A live reader of `KH_AUDIT`'s `validated` records (time, actor), to pick the busiest
/// instance at a kill.
struct AuditTail {
    seen: Arc<Mutex<Vec<(i64, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditTail {
    async fn start(js: &jetstream::Context) -> Self {
        let mut messages = ordered(js, subjects::STREAM_AUDIT, consumer::DeliverPolicy::New).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = messages.next().await {
                    if let Ok(r) = AuditRecord::from_stored(&m.payload) {
                        if r.hop == "validated" {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).push((r.time_us, r.actor));
                        }
                    }
                }
            })
        };
        Self { seen, task }
    }

    /// The actor with the most validated records over the last `window`.
    fn busiest(&self, window: Duration) -> Option<String> {
        let since = (now_ns() / 1000) as i64 - window.as_micros() as i64;
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, a) in seen.iter().rev().take_while(|(t, _)| *t >= since) {
            *counts.entry(a.as_str()).or_insert(0) += 1;
        }
        counts.into_iter().max_by_key(|(_, c)| *c).map(|(a, _)| a.to_string())
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Publishes `total` events numbered from `first` (key = number mod [`KEYS`]) at `rate`/s;
/// returns their ids, publish times and how many were not confirmed.
async fn paced(
    js: jetstream::Context,
    payload: Vec<u8>,
    first: usize,
    total: usize,
    rate: usize,
) -> (Vec<String>, Vec<i128>, usize) {
    let start = tokio::time::Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let confirmer = tokio::spawn(async move {
        let mut failed = 0;
        while let Some(c) = rx.recv().await {
            if c.await.is_err() {
                failed += 1;
            }
        }
        failed
    });
    let mut ids = Vec::with_capacity(total);
    let mut sent = Vec::with_capacity(total);
    let mut unsent = 0;
    for j in 0..total {
        tokio::time::sleep_until(start + gap.mul_f64(j as f64)).await;
        let (subject, e) = keyed(&payload, first + j);
        let m = PublishMessage::build().payload(e.encode_to_vec().into()).message_id(&e.id);
        sent.push(now_ns());
        ids.push(e.id);
        match js.send_publish(subject, m).await {
            Ok(c) => {
                let _ = tx.send(c);
            }
            Err(_) => unsent += 1,
        }
    }
    drop(tx);
    let failed = confirmer.await.unwrap_or(0);
    (ids, sent, failed + unsent)
}

// ---- Shared steps --------------------------------------------------------------------------

/// The partition nats-server stored each key in, read from the first [`KEYS`] messages of
/// `KH_INGRESS` (keys 0..KEYS in order, stored as `kh.ip.<partition>.…`).
async fn partitions_of_keys(js: &jetstream::Context) -> HashMap<usize, u32> {
    let mut stream = js.get_stream(bus::INGRESS).await.expect("KH_INGRESS");
    let first = stream.info().await.expect("KH_INGRESS info").state.first_sequence;
    let mut out = HashMap::with_capacity(KEYS);
    for key in 0..KEYS {
        let m = stream.get_raw_message(first + key as u64).await.expect("KH_INGRESS message");
        let e = Event::decode(m.payload.as_ref()).expect("Event");
        assert_eq!(e.subject, format!("resident-{key}"), "KH_INGRESS starts with keys 0..{KEYS} in order");
        let p = m.subject.split('.').nth(2).and_then(|t| t.parse().ok());
        out.insert(key, p.unwrap_or_else(|| panic!("not a partitioned subject: {}", m.subject)));
    }
    out
}

/// A message as stored.
struct Stored {
    id: String,
    key: String,
    stored_ns: i128,
}

/// Every message of a stream of `Event`s in stream order, with its store time.
async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<Stored> {
    read_all(js, name)
        .await
        .iter()
        .map(|m| {
            let stored_ns = m.info().map(|i| i.published.unix_timestamp_nanos()).expect("message info");
            // KH_EVENTS holds binary-mode CloudEvents (KH_INGRESS, Event envelopes).
            let e = kakehashi_proto::cloudevents::binary::from_events_message(m.headers.as_ref(), &m.payload)
                .expect("an event");
            Stored { id: e.id, key: e.subject, stored_ns }
        })
        .collect()
}

/// An ordered (ephemeral, unacked) consumer's messages from a stream, from `deliver` on.
async fn ordered(
    js: &jetstream::Context,
    name: &str,
    deliver: consumer::DeliverPolicy,
) -> consumer::pull::Ordered {
    let stream = js.get_stream(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = consumer::pull::OrderedConfig { deliver_policy: deliver, ..Default::default() };
    let consumer = stream.create_consumer(config).await.unwrap_or_else(|e| panic!("reader on {name}: {e}"));
    consumer.messages().await.unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// Every message a stream holds now, in stream order.
async fn read_all(js: &jetstream::Context, name: &str) -> Vec<jetstream::Message> {
    let n = bus::stream_len(js, name).await as usize;
    let mut messages = ordered(js, name, consumer::DeliverPolicy::All).await;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("{name} read stalled"))
            .unwrap_or_else(|| panic!("{name} read ended"))
            .unwrap_or_else(|e| panic!("{name} message: {e}"));
        out.push(m);
    }
    out
}

/// Every published id stored exactly once, and per key in publish order.
fn check_complete_and_ordered(ids: &[String], stored: &[Stored]) -> Vec<String> {
    let index_of: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut problems = Vec::new();
    let mut seen = vec![0usize; ids.len()];
    let mut last: HashMap<&str, usize> = HashMap::new();
    let mut inversions = 0;
    let mut unknown = 0;
    for s in stored {
        let Some(&i) = index_of.get(s.id.as_str()) else {
            unknown += 1;
            continue;
        };
        seen[i] += 1;
        if let Some(prev) = last.insert(s.key.as_str(), i) {
            if prev > i {
                inversions += 1;
                if inversions <= 5 {
                    problems.push(format!("key {}: event {i} stored after event {prev}", s.key));
                }
            }
        }
    }
    let missing = seen.iter().filter(|&&c| c == 0).count();
    let twice = seen.iter().filter(|&&c| c > 1).count();
    if missing > 0 {
        problems.push(format!("{missing} events missing from KH_EVENTS"));
    }
    if twice > 0 {
        problems.push(format!("{twice} events stored more than once"));
    }
    if inversions > 0 {
        problems.push(format!("{inversions} per-key order inversions"));
    }
    if unknown > 0 {
        problems.push(format!("{unknown} unknown events in KH_EVENTS"));
    }
    problems
}

/// Waits (up to 30 s) for `n` distinct events to have a `validated` audit record; returns the
/// first validating actor of each (an event validated again after a crash keeps its first).
async fn wait_validated(js: &jetstream::Context, n: usize) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    // Records a killed instance had not written yet never come: stop once nothing more arrives.
    let mut before = usize::MAX;
    loop {
        let records = read_audit(js).await;
        let mut first: HashMap<String, (i64, String)> = HashMap::with_capacity(n);
        for r in records.into_iter().filter(|r| r.hop == "validated") {
            let e = first.entry(r.event_id).or_insert((r.time_us, r.actor.clone()));
            if r.time_us < e.0 {
                *e = (r.time_us, r.actor);
            }
        }
        if first.len() >= n || first.len() == before || Instant::now() > deadline {
            return first.into_iter().map(|(id, (_, actor))| (id, actor)).collect();
        }
        before = first.len();
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

async fn read_audit(js: &jetstream::Context) -> Vec<AuditRecord> {
    let messages = read_all(js, subjects::STREAM_AUDIT).await;
    messages.iter().filter_map(|m| AuditRecord::from_stored(&m.payload).ok()).collect()
}

/// Takeovers ("validator pinned") and hand-overs ("handing one over") in a registry's logs.
fn log_counts(r: &RegistryProcess) -> (usize, usize) {
    let logs = r.log_tail(usize::MAX / 2);
    (
        logs.lines().filter(|l| l.contains("validator pinned")).count(),
        logs.lines().filter(|l| l.contains("handing one over")).count(),
    )
}

/// The registries' validator lines (takeovers, hand-overs, resets, warnings) on stderr.
fn print_logs(what: &str, registries: &[RegistryProcess]) {
    for r in registries {
        for l in r.log_tail(usize::MAX / 2).lines() {
            if l.starts_with("---")
                || l.contains("validator")
                || l.contains("handing")
                || l.contains("WARN")
                || l.contains("ERROR")
            {
                eprintln!("[{what}] {l}");
            }
        }
    }
}

// ---- NATS ----------------------------------------------------------------------------------

/// Rate between the 20 % and the 90 % marks of `n` messages, from their store times; and the
/// store time of the last one.
async fn fill_rate(js: &jetstream::Context, name: &str, n: usize) -> (f64, i128) {
    let mut s = js.get_stream(name).await.expect("stream");
    let first = s.info().await.expect("info").state.first_sequence;
    let at = |q: f64| first + ((n as f64 * q).ceil() as u64).saturating_sub(1);
    let time = |seq: u64| {
        let s = s.clone();
        async move { s.get_raw_message(seq).await.expect("stored message").time.unix_timestamp_nanos() }
    };
    let (a, b) = (at(0.2), at(0.9));
    let (ta, tb, last) = (time(a).await, time(b).await, time(at(1.0)).await);
    ((b - a) as f64 / ((tb - ta) as f64 / 1e9), last)
}

// ---- Time, CPU, load -----------------------------------------------------------------------

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128
}

fn ns_to_dur(ns: i128) -> Duration {
    Duration::from_nanos(ns.max(0) as u64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentiles(mut v: Vec<i128>) -> (Duration, Duration) {
    v.sort_unstable();
    let at = |q: f64| v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
    (ns_to_dur(at(0.5)), ns_to_dur(at(0.99)))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Machine-wide busy jiffies (all but idle and iowait) and total jiffies, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds over a measurement.
struct Cpu {
    wall: f64,
    registries: f64,
    nats: f64,
    bench: f64,
    /// Busy CPU of the machine not spent by this bench, nats-server or the registries.
    others: f64,
    /// Busy fraction of all cores.
    machine_busy: f64,
}

struct CpuMark {
    at: Instant,
    bench: u64,
    nats: u64,
    registries: u64,
    machine: (u64, u64),
}

impl CpuMark {
    fn take(nats: Option<u32>, registries: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            bench: cpu_ticks(None),
            nats: nats.map_or(0, |p| cpu_ticks(Some(p))),
            registries: registries.iter().map(|&p| cpu_ticks(Some(p))).sum(),
            machine: machine_ticks(),
        }
    }

    /// CPU since the mark; `registries` are processes started after it (counted from 0).
    fn since(self, nats: Option<u32>, registries: &[u32]) -> Cpu {
        let now = Self::take(nats, registries);
        let s = |t: u64| t as f64 / 100.0;
        let bench = s(now.bench - self.bench);
        let nats = s(now.nats.saturating_sub(self.nats));
        let registries = s(now.registries.saturating_sub(self.registries));
        let busy = s(now.machine.0 - self.machine.0);
        let total = s(now.machine.1 - self.machine.1);
        Cpu {
            wall: now.at.duration_since(self.at).as_secs_f64(),
            registries,
            nats,
            bench,
            others: (busy - bench - nats - registries).max(0.0),
            machine_busy: if total > 0.0 { busy / total } else { f64::NAN },
        }
    }
}
