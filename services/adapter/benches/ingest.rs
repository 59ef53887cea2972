//! Legacy file ingestion benchmark: a 1,000,000-row CP932 export imported through the real
//! NATS sink, against the raw JetStream baseline on the same server.
//!
//! ```sh
//! cargo bench -p kakehashi-adapter --bench ingest            # 1,000,000 rows
//! KH_BENCH_ROWS=100000 cargo bench -p kakehashi-adapter --bench ingest
//! ```
//!
//! Knobs (environment): `KH_BENCH_ROWS` (1000000), `KH_BENCH_WINDOW` (256 publishes in
//! flight), `KH_BENCH_VALIDATE` (`0` skips the local schema check), `KH_BENCH_CHECKPOINT_EVERY`
//! (1000 rows). Results for the record are in `docs/BENCHMARKS.md`.
//!
//! It generates the file in a temp dir (streamed, never held in memory), starts its own
//! `nats-server -js` (free port, temp store), puts the vaccination schemas into `KH_SCHEMAS`
//! the way the registry stores them, and imports the file with the demo mapping
//! (`deploy/demo/vaccination-city-shibuya.toml`): CP932 decoding, era dates, width folding,
//! deterministic ids, local schema validation (My Number check digits), protobuf envelopes,
//! 256 publishes in flight, checkpoints every 1,000 rows. It reports rows/s and peak RSS
//! (`VmHWM`, reset after the file is generated), then publishes the same number of pre-built
//! messages of the same size straight to JetStream with the same pipelining (256 in flight,
//! acks awaited in order) and reports the ratio. No registry runs: events stay in `KH_INGRESS`.

use bytes::Bytes;
use kakehashi_adapter::import;
use kakehashi_adapter::legacy::{
    self, EventSink, IngestJob, IngestLimits, MappedEvent, Mapping, Outcome, SinkError,
};
use kakehashi_adapter::schemas::SchemaIndex;
use kakehashi_adapter::sdk::Bus;
use kakehashi_proto::ident::my_number_check_digit;
use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE: &str = "city-shibuya";
const WINDOW: usize = 256;

/// A nats-server child with its own store, killed on drop.
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    fn start(dir: &Path) -> Self {
        let ports = dir.join("ports");
        std::fs::create_dir_all(&ports).expect("ports dir");
        // Owned by `Nats` at once, so every path (including a panic) kills and reaps it.
        let mut nats = Self { child: spawn_nats(dir, &ports), url: String::new() };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(url) = read_url(&ports) {
                if std::net::TcpStream::connect(url.trim_start_matches("nats://")).is_ok() {
                    nats.url = url;
                    return nats;
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pinned nats-server `deploy/scripts/ensure-tools.sh` installs (or `KAKEHASHI_NATS_SERVER`).
fn nats_binary() -> std::path::PathBuf {
    match std::env::var_os("KAKEHASHI_NATS_SERVER") {
        Some(p) => p.into(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/kakehashi/nats-server-2.15.1/nats-server"),
    }
}

fn spawn_nats(dir: &Path, ports: &Path) -> Child {
    Command::new(nats_binary())
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir.join("js"))
        .arg("--ports_file_dir")
        .arg(ports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed (bash deploy/scripts/ensure-tools.sh)")
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_url(dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok()?;
    Some(json.get("nats")?.get(0)?.as_str()?.to_string())
}

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Writes a vaccination export like the demo's, `rows` rows, in CP932 with CRLF.
fn generate(path: &Path, rows: u64) -> u64 {
    const NAMES: [(&str, &str); 4] = [
        ("山田　太郎", "ﾔﾏﾀﾞ ﾀﾛｳ"),
        ("髙橋　花子", "ﾀｶﾊｼ ﾊﾅｺ"),
        ("山﨑　次郎", "ﾔﾏｻﾞｷ ｼﾞﾛｳ"),
        ("佐藤　健", "ｻﾄｳ ｹﾝ"),
    ];
    const DOSES: [&str; 4] = ["１", "２", "３", "４"];
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create export"));
    let mut write = |text: &str| write_cp932(&mut out, text);
    write("個人番号,宛名番号,氏名,氏名カナ,生年月日,接種日,ワクチン種別,接種回数,ロット番号,自治体コード,更新日時\r\n");
    for i in 0..rows {
        let first11 = format!("{:011}", (i * 7919 + 12_345) % 100_000_000_000);
        let check = my_number_check_digit(&first11).expect("11 digits");
        let (name, kana) = NAMES[(i % 4) as usize];
        let line = format!(
            "{first11}{check},{:08},{name},{kana},昭和{}年{}月{}日,令和6年10月{}日,コミナティ筋注,{},FN{:04},131130,2024/10/31 17:00:00\r\n",
            i,
            2 + i % 60,
            1 + i % 12,
            1 + i % 28,
            1 + i % 28,
            DOSES[(i % 4) as usize],
            i % 10_000,
        );
        write(&line);
    }
    out.flush().expect("flush export");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn write_cp932(out: &mut impl Write, text: &str) {
    let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
    assert!(!unmappable, "{text}");
    out.write_all(&bytes).expect("write export");
}

/// Puts a catalogue schema into `KH_SCHEMAS` with the registry's key layout.
async fn put_schema(js: &async_nats::jetstream::Context, repo: &Path, subject: &str) {
    let kv = js.get_key_value("KH_SCHEMAS").await.expect("KH_SCHEMAS");
    let text =
        std::fs::read_to_string(repo.join("schemas").join(subject).join("1.json")).expect("schema file");
    let record = serde_json::json!({"subject": subject, "version": 1, "id": 1, "schema": text,
        "deleted": false, "registered_at": "2026-01-01T00:00:00Z", "references": []});
    kv.put(format!("s.{subject}.v.1"), record.to_string().into()).await.expect("put schema");
}

/// Average payload size of stored messages, sampled at the start, middle and end.
async fn stored_message_size(js: &async_nats::jetstream::Context, stream: &str, count: u64) -> usize {
    let stream = js.get_stream(stream).await.expect("stream");
    let mut sizes = Vec::new();
    for seq in [1, count / 2, count].into_iter().filter(|s| *s >= 1) {
        if let Ok(m) = stream.get_raw_message(seq).await {
            sizes.push(m.payload.len());
        }
    }
    sizes.iter().sum::<usize>() / sizes.len().max(1)
}

/// Publishes `count` messages of `size` bytes straight to JetStream, `WINDOW` in flight, acks
/// awaited in order; returns the elapsed time.
async fn raw_baseline(js: &async_nats::jetstream::Context, count: u64, size: usize) -> Duration {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(2 * 3600),
        max_message_size: 1024 * 1024,
        ..Default::default()
    })
    .await
    .expect("BENCH_RAW");
    let template = Bytes::from(vec![b'x'; size]);
    let subject = format!("bench.raw.{SOURCE}.health.vaccination.recorded");
    let started = Instant::now();
    let mut pending: VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(WINDOW);
    for i in 0..count {
        if pending.len() >= WINDOW {
            if let Some(ack) = pending.pop_front() {
                ack.await.expect("raw ack");
            }
        }
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(template.clone())
            .message_id(format!("raw-{i:012}"));
        pending.push_back(js.send_publish(subject.clone(), message).await.expect("raw publish"));
    }
    for ack in pending {
        ack.await.expect("raw ack");
    }
    started.elapsed()
}

/// A sink that publishes nothing: measures reading, decoding and mapping alone, optionally
/// with the local schema check the NATS sink does.
struct NullSink {
    schemas: Option<SchemaIndex>,
}

impl EventSink for NullSink {
    async fn send(&mut self, event: MappedEvent, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        if let Some(schemas) = &self.schemas {
            let payload: serde_json::Value = serde_json::from_slice(&event.payload_json).expect("JSON");
            let checked = schemas.validate(&event.event_type, 0, &payload, 5).await.expect("schema");
            assert!(checked.is_ok(), "{checked:?}");
        }
        settled.push(Outcome::Published { duplicate: false });
        Ok(())
    }

    async fn flush(&mut self, _settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Imports `job` into a [`NullSink`]; returns rows per second.
async fn cpu_only(job: &IngestJob, mapping: &Mapping, schemas: Option<SchemaIndex>) -> f64 {
    let job = IngestJob { checkpoint: job.checkpoint.with_extension("null.json"), ..job.clone() };
    let _ = std::fs::remove_file(&job.checkpoint);
    let summary = legacy::ingest(&job, mapping, &mut NullSink { schemas }, |_| {}).await.expect("import");
    per_second(summary.published, summary.elapsed)
}

fn per_second(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("KH_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let checkpoint_every: u64 =
        std::env::var("KH_BENCH_CHECKPOINT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("vaccination-export.csv");

    let started = Instant::now();
    let file_bytes = generate(&input, rows);
    println!(
        "generated {rows} rows, {:.1} MiB CP932 in {:.1} s",
        file_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    let nats = Nats::start(dir.path());
    let bus = Bus::builder(&nats.url, SOURCE).connect().await.expect("connect");
    put_schema(bus.jetstream(), &repo, "common.person").await;
    put_schema(bus.jetstream(), &repo, "health.vaccination.recorded").await;
    let mapping =
        Mapping::load(&repo.join("deploy/demo/vaccination-city-shibuya.toml")).expect("demo mapping");
    let job = IngestJob {
        input: input.clone(),
        source: SOURCE.into(),
        checkpoint: dir.path().join("export.checkpoint.json"),
        rejects: dir.path().join("export.rejects.csv"),
        limits: IngestLimits { progress_every: 10_000, checkpoint_every, ..IngestLimits::default() },
    };

    let mapped = cpu_only(&job, &mapping, None).await;
    let checked = cpu_only(&job, &mapping, bus.schemas().cloned()).await;

    // Peak RSS from here on: the import, not the file generation.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (_, rss_before) = memory();
    let mut samples = Vec::new();
    let mut next_sample = 10;
    let window: usize = std::env::var("KH_BENCH_WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(WINDOW);
    let validate = std::env::var("KH_BENCH_VALIDATE").map(|v| v != "0").unwrap_or(true);
    let reports = import::import(&bus, &mapping, std::slice::from_ref(&job), window, validate, |_, p| {
        let percent = p.bytes_done * 100 / p.bytes_total.max(1);
        if percent >= next_sample {
            samples.push((percent, memory().1));
            next_sample = percent / 10 * 10 + 10;
        }
    })
    .await
    .expect("import");
    let summary = match &reports[0].outcome {
        Ok(s) => s.clone(),
        Err(e) => panic!("import failed: {e}"),
    };
    let (peak, rss_after) = memory();
    assert_eq!(summary.published, rows, "every row published: {}", reports[0].render());
    let ours = per_second(summary.published, summary.elapsed);

    let size = stored_message_size(bus.jetstream(), "KH_INGRESS", rows).await;
    let raw_elapsed = raw_baseline(bus.jetstream(), rows, size).await;
    let raw = per_second(rows, raw_elapsed);

    println!("\n== Legacy file ingestion: {rows} rows ==");
    println!("read + decode + map + ids, no publishing (null sink): {mapped:.0} rows/s");
    println!("the same + local schema check (null sink): {checked:.0} rows/s");
    println!(
        "ingest (CP932 CSV -> mapping{} -> KH_INGRESS): {:.1} s, {:.0} rows/s, {:.1} MiB/s of input",
        if validate { " -> schema check" } else { "" },
        summary.elapsed.as_secs_f64(),
        ours,
        file_bytes as f64 / 1048576.0 / summary.elapsed.as_secs_f64()
    );
    println!(
        "memory: RSS {} MiB before, {} MiB after, peak (VmHWM) {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
    let trace: Vec<String> = samples.iter().map(|(pct, rss)| format!("{pct}%: {} MiB", rss / 1024)).collect();
    println!("RSS during the import: {}", trace.join(", "));
    println!(
        "raw JetStream baseline ({rows} pre-built {size}-byte messages, {WINDOW} in flight): {:.1} s, {:.0} msgs/s",
        raw_elapsed.as_secs_f64(),
        raw
    );
    println!("ratio ours / raw: {:.2}", ours / raw);
}
