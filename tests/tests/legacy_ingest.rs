//! Legacy file ingestion end to end, through a real nats-server and the registry: the demo
//! department exports (CP932 with era dates; UTF-8 with BOM) import with the expected counts
//! and every published event validates and is delivered; the reject file names file, line and
//! reason and no row content; importing a file again publishes nothing new; an import killed
//! midway, or stopped by a bus outage, resumes and every record reaches the subscriber exactly
//! once; the three encodings decode the same text (CP932 with NEC and IBM extension
//! characters); era dates convert at every era boundary and impossible dates are rejected.

use kakehashi_adapter::config::AdapterConfig;
use kakehashi_adapter::import::{self, FileReport, ImportOptions, NatsSink};
use kakehashi_adapter::legacy::{
    self, event_id, EventSink, IngestError, IngestJob, IngestLimits, MappedEvent, Mapping, Outcome,
    SinkError, Summary,
};
use kakehashi_adapter::sdk::{Bus, Retry};
use kakehashi_proto::v1::*;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

const SOURCE: &str = "city-shibuya";
const READER: &str = "mhlw";
/// Generous bound for events to flow through the validator to a subscriber.
const FLOW: Duration = Duration::from_secs(30);

/// A bus with the standard catalogue, test schemas and policies letting city-shibuya publish
/// and mhlw read everything used here.
struct TestBus {
    nats: NatsServer,
    registry: Registry,
    dir: tempfile::TempDir,
}

impl TestBus {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let registry = Registry::start(registry_config(&nats)).await;
        let conn = kakehashi_tests::services::cli_conn(&registry.endpoint(), "http://127.0.0.1:1", &nats);
        let mut schemas = kakehashi_ctl::clients::registry(&conn).await.expect("connect registry");
        kakehashi_ctl::commands::schema::load(&mut schemas, &repo().join("schemas"), true)
            .await
            .expect("catalogue");
        for (subject, schema) in test_schemas() {
            schemas
                .register_schema(RegisterSchemaRequest {
                    subject: subject.into(),
                    schema: schema.to_string(),
                    ..Default::default()
                })
                .await
                .expect("test schema");
        }
        let mut policies =
            policies_client::PoliciesClient::connect(registry.endpoint()).await.expect("connect");
        for pattern in ["health.>", "resident.>", "test.>"] {
            policies
                .put_policy(Policy {
                    type_pattern: pattern.into(),
                    producers: vec![SOURCE.into()],
                    readers: vec![READER.into()],
                    raw_pii_readers: vec![READER.into()],
                })
                .await
                .expect("policy");
        }
        Self { nats, registry, dir: tempfile::tempdir().expect("temp dir") }
    }

    fn config(&self) -> AdapterConfig {
        // `ingest` runs as the department itself, with its own NATS identity.
        let nats_auth = kakehashi_runtime::nats_auth::NatsAuthConfig {
            credentials: Some(self.nats.department_creds(SOURCE)),
            ..Default::default()
        };
        AdapterConfig { nats_url: self.nats.url(), nats_auth, ..AdapterConfig::default() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    /// Runs the `ingest` command's code path over one input.
    async fn ingest(&self, mapping: &Path, input: &Path, source: Option<&str>) -> FileReport {
        let options = ImportOptions {
            source: source.map(str::to_string),
            ..ImportOptions::new(mapping, vec![input.to_path_buf()])
        };
        let mut reports = import::run(&self.config(), &options, |_, _| {}).await.expect("import starts");
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.nats.admin().await)
    }

    /// Waits until the validator has handled everything published (`KH_INGRESS`, a work
    /// queue, is empty once every message is acked), then returns how many messages
    /// `KH_EVENTS` and `KH_DLQ` hold.
    async fn settled_counts(&self) -> (u64, u64) {
        let js = self.js().await;
        wait::until("the validator to handle everything in KH_INGRESS", FLOW, || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream("KH_INGRESS").await.ok()?;
                (stream.info().await.ok()?.state.messages == 0).then_some(())
            }
        })
        .await;
        let count = |name: &'static str| {
            let js = js.clone();
            async move { js.get_stream(name).await.expect(name).cached_info().state.messages }
        };
        (count("KH_EVENTS").await, count("KH_DLQ").await)
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn test_schemas() -> Vec<(&'static str, serde_json::Value)> {
    let date = serde_json::json!({"type": "string", "format": "date"});
    vec![
        (
            "test.legacy.person",
            serde_json::json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "required": ["enc", "name", "kana", "born"],
                "properties": {"enc": {"type": "string"}, "name": {"type": "string"},
                    "kana": {"type": "string"}, "born": date}, "additionalProperties": false}),
        ),
        (
            "test.legacy.date",
            serde_json::json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "required": ["case", "date"], "properties": {"case": {"type": "string"}, "date": date}}),
        ),
        (
            "test.legacy.row",
            serde_json::json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "required": ["n"], "properties": {"n": {"type": "integer"}}}),
        ),
    ]
}

/// mhlw's subscription to one type, acking what it receives.
struct Inbox {
    tx: mpsc::Sender<SubscribeRequest>,
    stream: tonic::Streaming<EventDelivery>,
}

impl Inbox {
    async fn open(registry: &Registry, name: &str, type_pattern: &str) -> Self {
        Self::create(registry, name, type_pattern).await;
        Self::connect(registry, name).await
    }

    /// Creates the durable subscription: it keeps every event from now on, connected or not.
    async fn create(registry: &Registry, name: &str, type_pattern: &str) {
        let mut subs =
            subscriptions_client::SubscriptionsClient::connect(registry.endpoint()).await.expect("connect");
        subs.create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                department: READER.into(),
                name: name.into(),
                type_pattern: type_pattern.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("subscription");
    }

    /// Opens the delivery stream of an existing subscription.
    async fn connect(registry: &Registry, name: &str) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let open =
            OpenSubscription { subscription: name.into(), department: READER.into(), max_in_flight: 256 };
        tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) })
            .await
            .expect("open");
        let mut client =
            delivery_client::DeliveryClient::connect(registry.endpoint()).await.expect("connect");
        let stream = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("subscribe")
            .into_inner();
        Self { tx, stream }
    }

    /// The next `n` events, each acked.
    async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let d = tokio::time::timeout(FLOW, self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} events delivered within {FLOW:?}", out.len()))
                .expect("delivery stream")
                .expect("stream open");
            let ack = AckDeliveries { delivery_ids: vec![d.delivery_id] };
            let _ =
                self.tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Ack(ack)) }).await;
            out.push(d.event.expect("event"));
        }
        out
    }
}

fn summary(report: &FileReport) -> &Summary {
    match &report.outcome {
        Ok(s) => s,
        Err(e) => panic!("import of {} failed: {e}", report.job.input.display()),
    }
}

fn counts(s: &Summary) -> (u64, u64, u64, u64) {
    (s.rows_total, s.published, s.duplicates, s.rejected)
}

/// The reject file's rows as (line, column, reason), checking file and header.
fn rejects(report: &FileReport) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(&report.job.rejects).expect("reject file");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("\u{feff}file,line,column,reason"));
    let input = std::fs::canonicalize(&report.job.input).expect("input").display().to_string();
    lines
        .map(|l| {
            let rest = l.strip_prefix(&format!("{input},")).unwrap_or_else(|| panic!("names the file: {l}"));
            let (line, rest) = rest.split_once(',').expect("line");
            let (column, reason) = rest.split_once(',').expect("column");
            (line.parse().expect("line number"), column.to_string(), reason.trim_matches('"').to_string())
        })
        .collect()
}

fn ids(events: &[Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn payload(e: &Event) -> serde_json::Value {
    serde_json::from_slice(&e.data).expect("JSON payload")
}

/// Copies a demo export and its mapping into the test's directory.
fn demo(bus: &TestBus, name: &str) -> (PathBuf, PathBuf) {
    let from = repo().join("deploy/demo");
    let csv = bus
        .write(&format!("{name}.csv"), &std::fs::read(from.join(format!("{name}.csv"))).expect("demo csv"));
    let toml = bus.write(
        &format!("{name}.toml"),
        &std::fs::read(from.join(format!("{name}.toml"))).expect("demo toml"),
    );
    (toml, csv)
}

#[tokio::test]
async fn demo_exports_import_with_expected_counts_and_every_event_is_delivered() {
    let bus = TestBus::start().await;
    let mut vaccinations = Inbox::open(&bus.registry, "vax", "health.vaccination.recorded").await;
    let mut moves = Inbox::open(&bus.registry, "moves", "resident.address.changed").await;

    // CP932, CRLF, era dates, half-width kana; the mapping names the department.
    let (mapping, csv) = demo(&bus, "vaccination-city-shibuya");
    let report = bus.ingest(&mapping, &csv, None).await;
    assert_eq!(counts(summary(&report)), (20, 12, 0, 8), "{}", report.render());
    let rejected = rejects(&report);
    let lines: Vec<u64> = rejected.iter().map(|r| r.0).collect();
    assert_eq!(lines, [8, 13, 14, 15, 16, 17, 18, 19], "{rejected:?}");
    let by_line: BTreeMap<u64, &(u64, String, String)> = rejected.iter().map(|r| (r.0, r)).collect();
    assert_eq!(by_line[&8].1, "ロット番号");
    assert!(by_line[&13].2.contains("平成 runs from 1989-01-08 to 2019-04-30"), "{:?}", by_line[&13]);
    assert_eq!(by_line[&14].2, "/person/birth_date: not a valid date", "personal data: no value, no detail");
    assert!(
        by_line[&16].2.starts_with("refused by the bus: schema_violation: /person/my_number"),
        "{:?}",
        by_line[&16]
    );
    assert!(by_line[&17].2.contains("9 columns, expected 11"), "{:?}", by_line[&17]);
    let text = std::fs::read_to_string(&report.job.rejects).expect("rejects");
    for content in ["614083735766", "松本", "ﾏﾂﾓﾄ", "昭和64年1月8日", "00010016"] {
        assert!(!text.contains(content), "row content {content} in the reject file:\n{text}");
    }

    // UTF-8 with BOM, LF; the department comes from --source.
    let (mapping, csv) = demo(&bus, "resident-registry-export");
    let report = bus.ingest(&mapping, &csv, Some(SOURCE)).await;
    assert_eq!(counts(summary(&report)), (15, 10, 0, 5), "{}", report.render());
    let lines: Vec<u64> = rejects(&report).iter().map(|r| r.0).collect();
    assert_eq!(lines, [7, 8, 9, 12, 15]);

    let delivered = vaccinations.take(12).await;
    assert_eq!(ids(&delivered).len(), 12, "12 distinct events");
    let first = delivered.iter().find(|e| e.subject == "00010001|1").expect("resident 00010001, dose 1");
    let data = payload(first);
    assert_eq!(data["person"]["name_kana"], "ヤマダ タロウ");
    assert_eq!(data["person"]["birth_date"], "1975-04-01");
    assert_eq!(data["vaccination"]["dose_number"], 1);
    assert_eq!(first.source, SOURCE);
    assert_eq!(
        first.id,
        event_id(SOURCE, "health.vaccination.recorded", "00010001|1", "2024/10/31 17:00:00"),
        "the id derives from source, type, key and version"
    );
    let delivered_moves = moves.take(10).await;
    assert_eq!(ids(&delivered_moves).len(), 10);
    let kanda = delivered_moves.iter().find(|e| e.subject == "00020003").expect("resident 00020003");
    assert_eq!(payload(kanda)["new_address"]["prefecture_code"], "13", "full-width digits folded");
    assert_eq!(bus.settled_counts().await, (22, 0), "every published event validated, nothing dead-lettered");
}

#[tokio::test]
async fn importing_the_same_file_again_publishes_nothing_new() {
    let bus = TestBus::start().await;
    let mut inbox = Inbox::open(&bus.registry, "vax", "health.vaccination.recorded").await;
    let (mapping, csv) = demo(&bus, "vaccination-city-shibuya");
    let first = bus.ingest(&mapping, &csv, None).await;
    assert_eq!(counts(summary(&first)).1, 12);

    // A completed import is not repeated while its checkpoint exists…
    let again = bus.ingest(&mapping, &csv, None).await;
    assert!(summary(&again).already_complete);
    // …and without it every event is a duplicate the bus drops.
    std::fs::remove_file(&first.job.checkpoint).expect("remove checkpoint");
    let again = bus.ingest(&mapping, &csv, None).await;
    assert_eq!(counts(summary(&again)), (20, 0, 12, 8), "{}", again.render());
    assert_eq!(rejects(&again).len(), 8, "a fresh run rewrites the reject file");

    let delivered = inbox.take(12).await;
    assert_eq!(ids(&delivered).len(), 12);
    assert_eq!(bus.settled_counts().await, (12, 0), "KH_EVENTS holds each event once");
    let consumer_pending = bus
        .js()
        .await
        .get_stream("KH_EVENTS")
        .await
        .expect("KH_EVENTS")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("sub_mhlw_vax")
        .await
        .expect("subscription consumer")
        .cached_info()
        .num_pending;
    assert_eq!(consumer_pending, 0, "nothing more to deliver");
}

const ROW_MAPPING: &str = r#"
event_type = "test.legacy.row"
format = "csv"
encoding = "utf-8"
header = true
key = ["n"]
version = "v"

[[fields]]
target = "/n"
column = "n"
type = "integer"
"#;

const ROWS: u64 = 1000;

fn rows_csv() -> Vec<u8> {
    let mut text = String::from("n,v\n");
    for n in 1..=ROWS {
        text.push_str(&format!("{n},2024-11-01\n"));
    }
    text.into_bytes()
}

fn row_ids() -> BTreeSet<String> {
    (1..=ROWS).map(|n| event_id(SOURCE, "test.legacy.row", &n.to_string(), "2024-11-01")).collect()
}

/// A sink that stops answering after `limit` events, as if the process had been killed
/// there (the test then drops the import), with publishes still in flight.
struct KilledAfter {
    inner: NatsSink,
    limit: usize,
    sent: usize,
    killed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl EventSink for KilledAfter {
    async fn send(&mut self, event: MappedEvent, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        if self.sent == self.limit {
            if let Some(killed) = self.killed.take() {
                let _ = killed.send(());
            }
            std::future::pending::<()>().await;
        }
        self.sent += 1;
        self.inner.send(event, settled).await
    }

    async fn flush(&mut self, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        self.inner.flush(settled).await
    }
}

fn row_job(bus: &TestBus, input: &Path) -> IngestJob {
    IngestJob {
        input: input.to_path_buf(),
        source: SOURCE.into(),
        checkpoint: bus.path("rows.checkpoint.json"),
        rejects: bus.path("rows.rejects.csv"),
        limits: IngestLimits { checkpoint_every: 100, ..IngestLimits::default() },
    }
}

#[tokio::test]
async fn import_killed_midway_resumes_and_every_record_is_delivered_exactly_once() {
    let bus = TestBus::start().await;
    let mut inbox = Inbox::open(&bus.registry, "rows", "test.legacy.row").await;
    let input = bus.write("rows.csv", &rows_csv());
    let mapping = Mapping::from_toml(ROW_MAPPING).expect("mapping");
    let job = row_job(&bus, &input);
    let connect =
        || Bus::builder(bus.nats.url(), SOURCE).credentials(bus.nats.department_creds(SOURCE)).connect();

    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel();
    let first = connect().await.expect("connect");
    let mut sink =
        KilledAfter { inner: NatsSink::new(&first, 64, true), limit: 437, sent: 0, killed: Some(killed_tx) };
    tokio::select! {
        result = legacy::ingest(&job, &mapping, &mut sink, |_| {}) => panic!("the import should hang at the kill: {result:?}"),
        _ = killed_rx => {}
    }
    drop(sink);
    drop(first);

    let second = connect().await.expect("connect");
    let resumed = legacy::ingest(&job, &mapping, &mut NatsSink::new(&second, 64, true), |_| {})
        .await
        .expect("resumed import");
    let from = resumed.resumed_from_line.expect("resumed from a checkpoint");
    // Checkpoints every 100 rows, none past a publish that was not confirmed; 437 rows sent.
    assert!((2..=438).contains(&from) && (from - 2) % 100 == 0, "resumed from line {from}");
    assert_eq!(resumed.rows_total, ROWS + 2 - from);
    assert_eq!(resumed.published + resumed.duplicates, resumed.rows_total);

    let delivered = inbox.take(ROWS as usize).await;
    let delivered_ids: Vec<String> = delivered.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids(&delivered), row_ids(), "every record delivered");
    assert_eq!(delivered_ids.len(), row_ids().len(), "and none twice");
    assert_eq!(bus.settled_counts().await, (ROWS, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_outage_stops_the_import_with_a_checkpoint_and_a_rerun_completes_it() {
    let mut bus = TestBus::start().await;
    // The subscription exists before the import, so it keeps every event however late the
    // subscriber connects.
    Inbox::create(&bus.registry, "rows", "test.legacy.row").await;
    let input = bus.write("rows.csv", &rows_csv());
    let mapping = Mapping::from_toml(ROW_MAPPING).expect("mapping");
    let job = row_job(&bus, &input);
    let quick = Retry { give_up_after: Duration::from_secs(1), ..Retry::default() };
    let first = Bus::builder(bus.nats.url(), SOURCE)
        .credentials(bus.nats.department_creds(SOURCE))
        .retry(quick)
        .ack_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");

    /// Kills the NATS server when the import reaches `at` events.
    struct Outage<'a> {
        inner: NatsSink,
        at: usize,
        sent: usize,
        nats: &'a mut NatsServer,
    }
    impl EventSink for Outage<'_> {
        async fn send(&mut self, event: MappedEvent, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
            self.sent += 1;
            if self.sent == self.at {
                tokio::task::block_in_place(|| self.nats.kill());
            }
            self.inner.send(event, settled).await
        }
        async fn flush(&mut self, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
            self.inner.flush(settled).await
        }
    }

    let mut sink = Outage { inner: NatsSink::new(&first, 64, true), at: 300, sent: 0, nats: &mut bus.nats };
    let stopped = legacy::ingest(&job, &mapping, &mut sink, |_| {}).await;
    drop(sink);
    let line = match stopped {
        Err(IngestError::Sink { line, .. }) => line,
        other => panic!("expected the import to stop on the outage, got {other:?}"),
    };
    assert!(line <= 301, "stopped at the first unconfirmed row, line {line}");
    drop(first);

    tokio::task::block_in_place(|| bus.nats.restart());
    let second = Bus::builder(bus.nats.url(), SOURCE)
        .credentials(bus.nats.department_creds(SOURCE))
        .connect()
        .await
        .expect("reconnect");
    let resumed =
        legacy::ingest(&job, &mapping, &mut NatsSink::new(&second, 64, true), |_| {}).await.expect("rerun");
    assert_eq!(resumed.resumed_from_line, Some(line), "resumed exactly at the failed row");
    assert_eq!(resumed.rows_total, ROWS + 2 - line);

    let mut inbox = Inbox::connect(&bus.registry, "rows").await;
    let delivered = inbox.take(ROWS as usize).await;
    assert_eq!(ids(&delivered), row_ids());
    assert_eq!(delivered.len(), ROWS as usize, "none twice");
    assert_eq!(bus.settled_counts().await, (ROWS, 0));
}

const PERSON_MAPPING: &str = r#"
event_type = "test.legacy.person"
format = "csv"
encoding = "ENCODING"
header = true
key = ["enc", "id"]

[[fields]]
target = "/enc"
column = "enc"

[[fields]]
target = "/name"
column = "name"

[[fields]]
target = "/kana"
column = "kana"
transforms = ["fullwidth_kana"]

[[fields]]
target = "/born"
column = "born"
type = "date"
"#;

/// The same three people in one encoding; `enc` keeps the files' keys apart.
fn people(enc: &str) -> String {
    format!(
        "enc,id,name,kana,born\r\n{enc},1,山田①㈱,ﾔﾏﾀﾞ,S50.04.01\r\n{enc},2,﨑髙,ｱ,H01.01.08\r\n{enc},3,﨑髙,ｱ,R01.05.01\r\n"
    )
}

/// [`people`] in CP932, bytes spelled out: ①㈱ are NEC row-13 characters; 﨑髙 are written
/// once as NEC-selected IBM extensions (ED95 EEE0) and once as IBM extensions (FAB1 FBFC).
fn people_cp932() -> Vec<u8> {
    let mut b = b"enc,id,name,kana,born\r\nsjis,1,".to_vec();
    b.extend([0x8E, 0x52, 0x93, 0x63, 0x87, 0x40, 0x87, 0x8A]); // 山田①㈱
    b.push(b',');
    b.extend([0xD4, 0xCF, 0xC0, 0xDE]); // ﾔﾏﾀﾞ
    b.extend(b",S50.04.01\r\nsjis,2,");
    b.extend([0xED, 0x95, 0xEE, 0xE0]); // 﨑髙 (NEC-selected IBM extensions)
    b.extend(b",\xB1,H01.01.08\r\nsjis,3,");
    b.extend([0xFA, 0xB1, 0xFB, 0xFC]); // 﨑髙 (IBM extensions)
    b.extend(b",\xB1,R01.05.01\r\n");
    b
}

#[tokio::test]
async fn utf8_utf8_bom_and_cp932_files_decode_to_the_same_text() {
    let bus = TestBus::start().await;
    let mut inbox = Inbox::open(&bus.registry, "people", "test.legacy.person").await;
    let auto = bus.write("auto.toml", PERSON_MAPPING.replace("ENCODING", "auto").as_bytes());
    let sjis = bus.write("sjis.toml", PERSON_MAPPING.replace("ENCODING", "shift_jis").as_bytes());
    let plain = bus.write("utf8.csv", people("utf8").as_bytes());
    let bom = bus.write("bom.csv", &[b"\xEF\xBB\xBF".as_slice(), people("bom").as_bytes()].concat());
    let cp932 = bus.write("cp932.csv", &people_cp932());

    for input in [&plain, &bom, &cp932] {
        let report = bus.ingest(&auto, input, Some(SOURCE)).await;
        assert_eq!(counts(summary(&report)), (3, 3, 0, 0), "{}", report.render());
    }
    // The encoding named instead of detected gives the same records: the same ids.
    std::fs::remove_file(bus.path("cp932.csv.checkpoint.json")).expect("checkpoint");
    let named = bus.ingest(&sjis, &cp932, Some(SOURCE)).await;
    assert_eq!(counts(summary(&named)), (3, 0, 3, 0), "{}", named.render());

    let delivered = inbox.take(9).await;
    let mut by_key: BTreeMap<String, serde_json::Value> =
        delivered.iter().map(|e| (e.subject.clone(), payload(e))).collect();
    assert_eq!(by_key.len(), 9);
    for enc in ["utf8", "bom", "sjis"] {
        let one = by_key.remove(&format!("{enc}|1")).expect("person 1");
        assert_eq!((one["name"].as_str(), one["kana"].as_str()), (Some("山田①㈱"), Some("ヤマダ")), "{enc}");
        assert_eq!(one["born"], "1975-04-01");
        for (id, born) in [("2", "1989-01-08"), ("3", "2019-05-01")] {
            let p = by_key.remove(&format!("{enc}|{id}")).expect("person");
            assert_eq!((p["name"].as_str(), p["kana"].as_str()), (Some("﨑髙"), Some("ア")), "{enc} {id}");
            assert_eq!(p["born"], born);
        }
    }
}

#[tokio::test]
async fn era_dates_convert_at_every_boundary_and_impossible_dates_are_rejected() {
    let bus = TestBus::start().await;
    let mut inbox = Inbox::open(&bus.registry, "dates", "test.legacy.date").await;
    let valid = [
        ("meiji-first-gregorian", "明治6年1月1日", "1873-01-01"),
        ("meiji-last", "明治45年7月29日", "1912-07-29"),
        ("taisho-first", "大正元年7月30日", "1912-07-30"),
        ("taisho-last", "大正15年12月24日", "1926-12-24"),
        ("showa-first", "昭和元年12月25日", "1926-12-25"),
        ("showa-last", "昭和64年1月7日", "1989-01-07"),
        ("heisei-first", "平成元年1月8日", "1989-01-08"),
        ("heisei-last", "平成31年4月30日", "2019-04-30"),
        ("reiwa-first", "令和元年5月1日", "2019-05-01"),
        ("short-meiji", "M45.07.29", "1912-07-29"),
        ("short-taisho", "T01.07.30", "1912-07-30"),
        ("short-showa", "s64/1/7", "1989-01-07"),
        ("short-heisei", "H31.04.30", "2019-04-30"),
        ("short-reiwa", "R01.05.01", "2019-05-01"),
        ("fullwidth", "令和２年２月２９日", "2020-02-29"),
        ("kanji-abbrev", "平31年4月30日", "2019-04-30"),
        ("gregorian", "2024/02/29", "2024-02-29"),
    ];
    let invalid = [
        ("heisei-after", "平成31年5月1日", "平成 runs from 1989-01-08 to 2019-04-30"),
        ("showa-after", "昭和64年1月8日", "昭和 runs from 1926-12-25 to 1989-01-07"),
        ("taisho-after", "大正15年12月25日", "大正 runs from"),
        ("meiji-after", "明治45年7月30日", "明治 runs from"),
        ("reiwa-before", "令和元年4月30日", "令和 starts on 2019-05-01"),
        ("heisei-before", "平成元年1月7日", "平成 runs from"),
        ("meiji-first-lunisolar", "明治元年10月23日", "lunisolar"),
        ("meiji-before", "明治元年10月22日", "明治"),
        ("year-zero", "令和0年5月1日", "year 0"),
        ("not-leap-heisei", "平成5年2月29日", "no such day"),
        ("not-leap-gregorian", "2023-02-29", "no such day"),
    ];
    let mut csv = String::from("case,date\n");
    for (case, text, _) in valid.iter().chain(invalid.iter()) {
        csv.push_str(&format!("{case},{text}\n"));
    }
    let input = bus.write("dates.csv", csv.as_bytes());
    let mapping = bus.write(
        "dates.toml",
        b"event_type = \"test.legacy.date\"\nformat = \"csv\"\nheader = true\nkey = [\"case\"]\n\
          [[fields]]\ntarget = \"/case\"\ncolumn = \"case\"\n\
          [[fields]]\ntarget = \"/date\"\ncolumn = \"date\"\ntype = \"date\"\n",
    );
    let report = bus.ingest(&mapping, &input, Some(SOURCE)).await;
    let total = (valid.len() + invalid.len()) as u64;
    assert_eq!(
        counts(summary(&report)),
        (total, valid.len() as u64, 0, invalid.len() as u64),
        "{}",
        report.render()
    );

    let rejected = rejects(&report);
    for (i, (case, _, reason)) in invalid.iter().enumerate() {
        let line = (valid.len() + i + 2) as u64;
        let row =
            rejected.iter().find(|r| r.0 == line).unwrap_or_else(|| panic!("{case} (line {line}) rejected"));
        assert_eq!(row.1, "date", "{case}");
        assert!(row.2.contains(reason), "{case}: {:?} should say {reason:?}", row.2);
    }

    let delivered = inbox.take(valid.len()).await;
    let dates: BTreeMap<String, String> = delivered
        .iter()
        .map(|e| {
            let p = payload(e);
            (
                p["case"].as_str().unwrap_or_default().to_string(),
                p["date"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> =
        valid.iter().map(|(case, _, iso)| (case.to_string(), iso.to_string())).collect();
    assert_eq!(dates, expected);
}
