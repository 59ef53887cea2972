use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::*;

/// Drives a future to completion on this thread. The sinks here never wait, so polling
/// with a no-op waker is enough and no async runtime is needed.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// A per-test scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kh-ingest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        Self(dir)
    }

    fn job(&self, limits: IngestLimits) -> IngestJob {
        IngestJob {
            input: self.0.join("input.csv"),
            source: "city-shibuya".into(),
            checkpoint: self.0.join("input.checkpoint.json"),
            rejects: self.0.join("input.rejects.csv"),
            limits,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-memory, synchronous sink that can fail or "crash" after a number of events.
#[derive(Default)]
struct VecSink {
    events: Vec<MappedEvent>,
    unavailable_after: Option<usize>,
    crash_after: Option<usize>,
    refuse_key: Option<String>,
}

impl EventSink for VecSink {
    async fn send(&mut self, event: MappedEvent, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        if self.unavailable_after == Some(self.events.len()) {
            return Err(SinkError::Unavailable("connection lost".into()));
        }
        if self.crash_after == Some(self.events.len()) {
            panic!("simulated kill");
        }
        if self.refuse_key.as_deref() == Some(event.key.as_str()) {
            settled.push(Outcome::Refused { reason: "schema_violation: /vaccination/date".into() });
            return Ok(());
        }
        self.events.push(event);
        settled.push(Outcome::Published { duplicate: false });
        Ok(())
    }

    async fn flush(&mut self, _settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A pipelining sink: keeps up to `window` events unconfirmed and settles the oldest only when
/// the window is full or on flush. Events it "confirms" go to `confirmed`; it can fail the
/// confirmation of the n-th event (0-based) it is given, or crash before settling it.
struct WindowSink {
    window: usize,
    in_flight: VecDeque<MappedEvent>,
    given: usize,
    confirmed: Vec<MappedEvent>,
    fail_at: Option<usize>,
    crash_at: Option<usize>,
    duplicates: bool,
}

impl WindowSink {
    fn new(window: usize) -> Self {
        Self {
            window,
            in_flight: VecDeque::new(),
            given: 0,
            confirmed: Vec::new(),
            fail_at: None,
            crash_at: None,
            duplicates: false,
        }
    }

    fn settle_oldest(&mut self, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        let index = self.confirmed.len();
        if self.crash_at == Some(index) {
            panic!("simulated kill with {} events unconfirmed", self.in_flight.len());
        }
        if self.fail_at == Some(index) {
            return Err(SinkError::Unavailable("no ack".into()));
        }
        if let Some(event) = self.in_flight.pop_front() {
            self.confirmed.push(event);
            settled.push(Outcome::Published { duplicate: self.duplicates });
        }
        Ok(())
    }
}

impl EventSink for WindowSink {
    async fn send(&mut self, event: MappedEvent, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        while self.in_flight.len() >= self.window {
            self.settle_oldest(settled)?;
        }
        self.given += 1;
        self.in_flight.push_back(event);
        Ok(())
    }

    async fn flush(&mut self, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest(settled)?;
        }
        Ok(())
    }
}

const MAPPING: &str = r#"
event_type = "health.vaccination.recorded"
source = "city-shibuya"
format = "csv"
encoding = "auto"
header = true
key = ["宛名番号", "接種回数"]

[[fields]]
target = "/person/my_number"
column = "個人番号"
pii = true

[[fields]]
target = "/person/name"
column = "氏名"
transforms = ["trim"]

[[fields]]
target = "/vaccination/date"
column = "接種日"
type = "date"

[[fields]]
target = "/vaccination/dose_number"
column = "接種回数"
type = "integer"
"#;

const MY_NUMBER_PREFIX: &str = "98765432";

/// A CP932, CRLF export: 10 rows, of which row 4 lacks a column and row 7 has a date that
/// does not exist. Returns the bytes.
fn export(rows: usize) -> Vec<u8> {
    let mut text = String::from("個人番号,氏名,接種日,接種回数,宛名番号\r\n");
    for i in 1..=rows {
        let number = format!("{MY_NUMBER_PREFIX}{i:04}");
        let line = match i {
            4 => format!("{number},髙橋　花子,令和6年10月{i}日,１\r\n"),
            7 => format!("{number},山﨑　次郎,平成31年5月1日,１,B{i:03}\r\n"),
            _ => format!("{number},\"山田, 太郎{i}\",令和6年10月{i}日,１,A{i:03}\r\n"),
        };
        text.push_str(&line);
    }
    let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&text);
    assert!(!unmappable);
    bytes.into_owned()
}

fn mapping() -> Mapping {
    match Mapping::from_toml(MAPPING) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

fn run(job: &IngestJob, sink: &mut VecSink) -> Result<Summary, IngestError> {
    block_on(ingest(job, &mapping(), sink, |_| {}))
}

fn full_run(name: &str) -> Vec<MappedEvent> {
    let dir = Scratch::new(name);
    let job = dir.job(IngestLimits::default());
    std::fs::write(&job.input, export(10)).ok();
    let mut sink = VecSink::default();
    assert!(run(&job, &mut sink).is_ok());
    sink.events
}

fn ids(events: &[MappedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn good_rows_are_published_and_bad_rows_rejected_without_their_content() {
    let dir = Scratch::new("publish");
    let job = dir.job(IngestLimits::default());
    std::fs::write(&job.input, export(10)).ok();
    let mut sink = VecSink::default();
    let summary = run(&job, &mut sink).map_err(|e| e.to_string());
    let counts = summary.map(|s| (s.rows_total, s.published, s.rejected, s.resumed_from_line));
    assert_eq!(counts, Ok((10, 8, 2, None)));
    let first = &sink.events[0];
    assert_eq!(
        (first.line, first.key.as_str(), first.event_type.as_str()),
        (2, "A001|1", "health.vaccination.recorded")
    );
    let payload: serde_json::Value = serde_json::from_slice(&first.payload_json).unwrap_or_default();
    assert_eq!(payload["person"]["name"], "山田, 太郎1");
    assert_eq!(payload["vaccination"]["date"], "2024-10-01");

    let rejects = std::fs::read_to_string(&job.rejects).unwrap_or_default();
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(lines.len(), 3, "{rejects}");
    assert!(lines[0].ends_with("file,line,column,reason"));
    assert!(lines[1].contains(",5,,\"line 5: 4 columns, expected 5\""), "{rejects}");
    assert!(lines[2].contains(",8,接種日,/vaccination/date: not a valid date: 平成 runs from"), "{rejects}");
    for content in [MY_NUMBER_PREFIX, "髙橋", "山﨑", "平成31年5月1日", "B007"] {
        assert!(!rejects.contains(content), "{content} copied into rejects: {rejects}");
    }
}

#[test]
fn reimporting_the_same_file_yields_identical_ids() {
    let a = full_run("again-a");
    let b = full_run("again-b");
    assert_eq!(a.len(), 8);
    assert_eq!(ids(&a), ids(&b));
}

#[test]
fn completed_import_is_not_repeated_but_a_changed_file_starts_over() {
    let dir = Scratch::new("complete");
    let job = dir.job(IngestLimits::default());
    std::fs::write(&job.input, export(10)).ok();
    assert!(run(&job, &mut VecSink::default()).is_ok());
    let mut again = VecSink::default();
    let summary = run(&job, &mut again).map(|s| (s.rows_total, s.resumed_from_line));
    assert_eq!(summary.map_err(|e| e.to_string()), Ok((0, Some(12))));

    std::fs::write(&job.input, export(11)).ok();
    let mut changed = VecSink::default();
    let summary = run(&job, &mut changed).map(|s| (s.published, s.resumed_from_line));
    assert_eq!(summary.map_err(|e| e.to_string()), Ok((9, None)));
    // Records already imported keep their ids, so the bus drops them as duplicates.
    assert_eq!(ids(&changed.events[..8]), ids(&full_run("complete-ref")));
}

#[test]
fn resume_after_sink_failure_publishes_exactly_the_remaining_records() {
    let all = full_run("resume-ref");
    let dir = Scratch::new("resume");
    let job = dir.job(IngestLimits { checkpoint_every: 100, ..IngestLimits::default() });
    std::fs::write(&job.input, export(10)).ok();

    let mut first = VecSink { unavailable_after: Some(5), ..VecSink::default() };
    match run(&job, &mut first) {
        // The sixth good record is on line 9 (line 5 and 8 are rejects).
        Err(IngestError::Sink { line: 9, published: 5, .. }) => {}
        other => panic!("expected a sink failure at line 9, got {other:?}"),
    }
    let mut second = VecSink::default();
    let summary = run(&job, &mut second).map_err(|e| e.to_string());
    let counts = summary.map(|s| (s.published, s.rejected, s.resumed_from_line));
    assert_eq!(counts, Ok((3, 0, Some(9))));
    assert_eq!(second.events.first().map(|e| e.line), Some(9));
    let combined: Vec<MappedEvent> = first.events.into_iter().chain(second.events).collect();
    assert_eq!(combined, all);
    // The rows rejected before the failure are in the reject file once.
    let rejects = std::fs::read_to_string(&job.rejects).unwrap_or_default();
    assert_eq!(rejects.lines().count(), 3, "{rejects}");
}

#[test]
fn kill_between_checkpoints_republishes_only_ids_already_seen() {
    let all = full_run("kill-ref");
    let dir = Scratch::new("kill");
    let job = dir.job(IngestLimits { checkpoint_every: 2, ..IngestLimits::default() });
    std::fs::write(&job.input, export(10)).ok();

    let mut first = VecSink { crash_after: Some(4), ..VecSink::default() };
    let crashed = catch_unwind(AssertUnwindSafe(|| run(&job, &mut first)));
    assert!(crashed.is_err(), "the sink should have panicked");
    assert_eq!(first.events.len(), 4);

    let mut second = VecSink::default();
    let summary = run(&job, &mut second).map_err(|e| e.to_string());
    // Rows 1-4 (lines 2-5) were checkpointed; line 6 was published but not checkpointed.
    assert_eq!(summary.map(|s| s.resumed_from_line), Ok(Some(6)));
    assert_eq!(second.events.first().map(|e| e.id.clone()), first.events.last().map(|e| e.id.clone()));
    let mut seen: Vec<&str> = ids(&first.events);
    seen.extend(ids(&second.events));
    seen.sort_unstable();
    seen.dedup();
    let mut expected = ids(&all);
    expected.sort_unstable();
    assert_eq!(seen, expected, "after dedup, exactly the full import");
}

#[test]
fn refused_event_is_rejected_and_the_import_goes_on() {
    let dir = Scratch::new("refused");
    let job = dir.job(IngestLimits::default());
    std::fs::write(&job.input, export(10)).ok();
    let mut sink = VecSink { refuse_key: Some("A002|1".into()), ..VecSink::default() };
    let summary = run(&job, &mut sink).map(|s| (s.published, s.rejected));
    assert_eq!(summary.map_err(|e| e.to_string()), Ok((7, 3)));
    let rejects = std::fs::read_to_string(&job.rejects).unwrap_or_default();
    assert!(rejects.contains(",3,,refused by the bus: schema_violation"), "{rejects}");
}

#[test]
fn progress_is_reported_and_ends_at_the_file_size() {
    let dir = Scratch::new("progress");
    let job = dir.job(IngestLimits { progress_every: 3, ..IngestLimits::default() });
    let bytes = export(10);
    std::fs::write(&job.input, &bytes).ok();
    let mut reports = Vec::new();
    let result = block_on(ingest(&job, &mapping(), &mut VecSink::default(), |p| reports.push(p)));
    assert!(result.is_ok());
    assert_eq!(reports.len(), 5, "the start, every 3 rows of 10, and the end");
    assert_eq!((reports[0].rows_ok, reports[0].rows_rejected), (0, 0), "the start, after the header");
    assert!(reports.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    let last = reports.last().copied();
    let total = bytes.len() as u64;
    assert_eq!(last, Some(Progress { bytes_done: total, bytes_total: total, rows_ok: 8, rows_rejected: 2 }));
}

#[test]
fn caller_with_another_source_is_refused() {
    let dir = Scratch::new("source");
    let mut job = dir.job(IngestLimits::default());
    job.source = "city-minato".into();
    std::fs::write(&job.input, export(1)).ok();
    assert!(matches!(run(&job, &mut VecSink::default()), Err(IngestError::SourceMismatch { .. })));
}

#[test]
fn mapping_column_missing_from_header_stops_before_publishing() {
    let dir = Scratch::new("header");
    let job = dir.job(IngestLimits::default());
    std::fs::write(&job.input, b"a,b\r\n1,2\r\n").ok();
    let mut sink = VecSink::default();
    assert!(matches!(run(&job, &mut sink), Err(IngestError::Mapping(_))));
    assert!(sink.events.is_empty());
}

#[test]
fn import_future_is_send_so_the_adapter_can_spawn_it() {
    fn assert_send<T: Send>(_: T) {}
    let dir = Scratch::new("send");
    let job = dir.job(IngestLimits::default());
    let m = mapping();
    let mut sink = VecSink::default();
    // Never polled: this only has to compile.
    assert_send(ingest(&job, &m, &mut sink, |_| {}));
}

fn rejects_lines(job: &IngestJob) -> Vec<String> {
    let text = std::fs::read_to_string(&job.rejects).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn pipelined_sink_kill_leaves_the_checkpoint_before_the_first_unconfirmed_event() {
    let all = full_run("window-kill-ref");
    let dir = Scratch::new("window-kill");
    let job = dir.job(IngestLimits { checkpoint_every: 1, ..IngestLimits::default() });
    std::fs::write(&job.input, export(10)).ok();

    // Window of 3: when the kill comes, lines 2-4 are confirmed, lines 6, 7 and 9 are sent
    // but unconfirmed, and the rejects of lines 5 and 8 are read.
    let mut first = WindowSink { crash_at: Some(3), ..WindowSink::new(3) };
    let crashed = catch_unwind(AssertUnwindSafe(|| block_on(ingest(&job, &mapping(), &mut first, |_| {}))));
    assert!(crashed.is_err(), "the sink should have panicked");
    assert_eq!(first.confirmed.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(first.given, 6, "events were in flight past the checkpoint");

    let mut second = VecSink::default();
    let summary = run(&job, &mut second).map_err(|e| e.to_string());
    // The reject on line 5 settled after line 4's confirmation; line 6 was never confirmed.
    let counts = summary.map(|s| (s.resumed_from_line, s.published, s.rejected));
    assert_eq!(counts, Ok((Some(6), 5, 1)));
    let combined: Vec<MappedEvent> = first.confirmed.into_iter().chain(second.events).collect();
    assert_eq!(combined, all, "every record confirmed exactly once, in order");
    let rejects = rejects_lines(&job);
    assert_eq!(rejects.len(), 3, "header and each reject once: {rejects:?}");
    assert!(rejects[1].contains(",5,,") && rejects[2].contains(",8,"), "{rejects:?}");
}

#[test]
fn pipelined_sink_failure_checkpoints_just_before_the_failed_event() {
    let all = full_run("window-fail-ref");
    let dir = Scratch::new("window-fail");
    let job = dir.job(IngestLimits { checkpoint_every: 100, ..IngestLimits::default() });
    std::fs::write(&job.input, export(10)).ok();

    // The third event (line 4) is never confirmed; lines 6, 7 and 9 were sent after it.
    let mut first = WindowSink { fail_at: Some(2), ..WindowSink::new(4) };
    match block_on(ingest(&job, &mapping(), &mut first, |_| {})) {
        Err(IngestError::Sink { line: 4, published: 2, .. }) => {}
        other => panic!("expected a sink failure at line 4, got {other:?}"),
    }
    let mut second = VecSink::default();
    let summary = run(&job, &mut second).map_err(|e| e.to_string());
    let counts = summary.map(|s| (s.resumed_from_line, s.published, s.rejected));
    assert_eq!(counts, Ok((Some(4), 6, 2)));
    let combined: Vec<MappedEvent> = first.confirmed.into_iter().chain(second.events).collect();
    assert_eq!(combined, all);
    assert_eq!(rejects_lines(&job).len(), 3);
}

#[test]
fn pipelined_sink_settles_rejects_in_file_order_and_counts_duplicates() {
    let dir = Scratch::new("window-dup");
    let job = dir.job(IngestLimits { checkpoint_every: 3, ..IngestLimits::default() });
    std::fs::write(&job.input, export(10)).ok();
    let mut sink = WindowSink { duplicates: true, ..WindowSink::new(256) };
    let summary = block_on(ingest(&job, &mapping(), &mut sink, |_| {})).map_err(|e| e.to_string());
    let counts = summary.map(|s| (s.rows_total, s.published, s.duplicates, s.rejected));
    assert_eq!(counts, Ok((10, 0, 8, 2)));
    let rejects = rejects_lines(&job);
    assert!(rejects[1].contains(",5,,") && rejects[2].contains(",8,"), "{rejects:?}");
    let saved = Checkpoint::load(&job.checkpoint).ok().flatten();
    assert_eq!(saved.map(|c| (c.complete, c.resume.line)), Some((true, 12)));
}

#[test]
fn utf8_row_in_a_cp932_export_is_rejected_as_mixed_encoding_not_published() {
    let dir = Scratch::new("mixed-encoding");
    let job = dir.job(IngestLimits::default());
    let mut bytes = export(3);
    // Line 5: a row typed in UTF-8 whose bytes are also valid CP932 (`菴占陸縲蛛･`).
    bytes.extend_from_slice(format!("{MY_NUMBER_PREFIX}0004,佐藤　健,2024-10-04,1,A004\r\n").as_bytes());
    std::fs::write(&job.input, bytes).ok();
    let mut sink = VecSink::default();
    let summary = run(&job, &mut sink).map_err(|e| e.to_string());
    let counts = summary.map(|s| (s.rows_total, s.published, s.rejected));
    assert_eq!(counts, Ok((4, 3, 1)));
    assert!(sink.events.iter().all(|e| e.line != 5), "the UTF-8 row was published");
    let rejects = rejects_lines(&job);
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(rejects[1].contains(",5,,mixed_encoding: line 5: "), "{rejects:?}");
    for content in [MY_NUMBER_PREFIX, "佐藤", "菴占"] {
        assert!(!rejects[1].contains(content), "{content} copied into rejects: {rejects:?}");
    }
}

#[test]
fn user_defined_character_in_a_name_is_rejected_naming_the_column_not_published() {
    let dir = Scratch::new("gaiji");
    let job = dir.job(IngestLimits::default());
    let mut bytes = export(3);
    // Line 5: a name with the CP932 外字 0xF0 0x40, which decodes to U+E000.
    let cp932 = |s: &str| encoding_rs::SHIFT_JIS.encode(s).0.into_owned();
    bytes.extend(cp932(&format!("{MY_NUMBER_PREFIX}0004,山田")));
    bytes.extend_from_slice(&[0xF0, 0x40]);
    bytes.extend(cp932("太郎,令和6年10月4日,１,A004\r\n"));
    std::fs::write(&job.input, bytes).ok();
    let mut sink = VecSink::default();
    let summary = run(&job, &mut sink).map_err(|e| e.to_string());
    assert_eq!(summary.map(|s| (s.rows_total, s.published, s.rejected)), Ok((4, 3, 1)));
    assert!(sink.events.iter().all(|e| e.line != 5), "the row with 外字 was published");
    let rejects = rejects_lines(&job);
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(rejects[1].contains(",5,氏名,\"line 5: column 氏名: user-defined character"), "{rejects:?}");
    for content in [MY_NUMBER_PREFIX, "山田", "太郎", "\u{E000}"] {
        assert!(!rejects[1].contains(content), "{content} copied into rejects: {rejects:?}");
    }
}
