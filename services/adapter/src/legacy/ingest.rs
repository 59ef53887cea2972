//! The import driver: file → records → mapped events → sink, with rejects and checkpoints.
//!
//! [`ingest`] streams the file record by record in constant memory, maps each record, hands
//! the event to an [`EventSink`] (the adapter's NATS publisher, or a `Vec` in tests), writes
//! rows that fail into a reject file, and saves a checkpoint every
//! [`IngestLimits::checkpoint_every`] rows and at the end.
//!
//! # Pipelined sinks and checkpoints
//!
//! A sink may keep many events in flight (the NATS sink keeps a window of unconfirmed
//! publishes): [`EventSink::send`] returns before the bus has confirmed the event, and the
//! outcomes come back later, in the order the events were sent. The driver therefore keeps
//! every row it has read but not yet *settled* in a queue — an event awaiting its outcome, or a
//! reject waiting behind such an event — and settles rows strictly in file order. The
//! checkpoint only ever names the position after the last settled row, so it never moves past
//! an event whose publish was not confirmed, and reject lines are written in file order.
//!
//! Delivery is at-least-once: a crash after a publish but before the next checkpoint
//! re-publishes those records on resume. Their event ids are deterministic
//! ([`super::ids::event_id`]), so the bus's deduplication drops the repeats — as it does when
//! the same file is imported twice. The checkpoint also records the reject file's length, and a
//! resume cuts the reject file back to it, so rows rejected after the last checkpoint are not
//! listed twice.
//!
//! File reads are ordinary blocking reads of a buffered file between awaits. They are short
//! (64 KiB at a time), but an async caller with strict latency needs may prefer to run the
//! import on its own task or runtime thread.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::checkpoint::{Checkpoint, CheckpointError, CheckpointWriter, FileIdentity};
use super::ids::event_id;
use super::mapping::{Mapping, MappingError};
use super::records::{Position, ReaderOptions, RecordReader, RowError};

mod rejects;

use rejects::Rejects;

/// One event ready to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedEvent {
    /// Deterministic id (see [`event_id`]); used as the bus's dedup id.
    pub id: String,
    /// The mapping's event type.
    pub event_type: String,
    /// Schema version to pin, if the mapping names one.
    pub schema_version: Option<u32>,
    /// The record key (the event's subject).
    pub key: String,
    /// The payload as JSON bytes.
    pub payload_json: Vec<u8>,
    /// Line of the source record, for diagnostics.
    pub line: u64,
    /// Byte offset of the source record.
    pub byte_offset: u64,
}

/// What became of one event, reported in the order the events were sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bus stored the event. `duplicate` when it already held an event with this id (a
    /// re-import, or a resume after a crash), so nothing new will be delivered.
    Published {
        /// The bus reported the event id as already seen.
        duplicate: bool,
    },
    /// The bus (or the sink, checking on its behalf) refused this event; the row is rejected
    /// and the import goes on. The reason must not contain personal data.
    Refused {
        /// Stable reason code and a value-free message, e.g. `payload_too_large: …`.
        reason: String,
    },
}

/// Why a sink cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The oldest unsettled event could not be published (the bus is unavailable, retries
    /// ran out). Events sent after it are abandoned; the import stops with a checkpoint just
    /// before that event's row, so a restart publishes it and everything after it again.
    #[error("sink unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where events go. Implement with `async fn` in the impl.
///
/// Outcomes are pushed onto `settled` **in the order the events were sent**, each exactly
/// once. A synchronous sink pushes the outcome of the event it was just given; a pipelining
/// sink pushes whatever earlier events have settled by now and may push nothing. The driver
/// processes `settled` even when the call returns an error, so a sink pushes the outcomes it
/// knows before reporting that the next event failed.
pub trait EventSink {
    /// Starts publishing `event`. May return before the bus confirmed it; a sink with a window
    /// of unconfirmed events waits here while the window is full.
    fn send(
        &mut self,
        event: MappedEvent,
        settled: &mut Vec<Outcome>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Waits until every event sent so far has settled, pushing their outcomes.
    fn flush(&mut self, settled: &mut Vec<Outcome>) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A progress report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input settled (published or rejected), counted from the start of the file.
    pub bytes_done: u64,
    /// Size of the input.
    pub bytes_total: u64,
    /// Rows published in this run (duplicates included).
    pub rows_ok: u64,
    /// Rows rejected in this run.
    pub rows_rejected: u64,
}

/// Every limit of an import, explicit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Largest row in bytes; a larger one stops the import (its end cannot be trusted).
    pub max_row_bytes: usize,
    /// Most fields in one row; more makes the row a reject.
    pub max_fields: usize,
    /// Rows between checkpoints; each costs an fsync (on a background thread).
    pub checkpoint_every: u64,
    /// Rows between progress reports.
    pub progress_every: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_row_bytes: 1024 * 1024, max_fields: 1024, checkpoint_every: 1000, progress_every: 1000 }
    }
}

/// Rows read but not settled that the driver holds before it makes the sink flush. Only rows
/// rejected behind a slow event accumulate (the sink's window bounds the events), so this
/// bounds memory when a long run of bad rows follows an unconfirmed publish.
const MAX_UNSETTLED_ROWS: usize = 16 * 1024;

/// What to import and where to keep state.
#[derive(Clone, Debug)]
pub struct IngestJob {
    /// The legacy file.
    pub input: PathBuf,
    /// The caller's department (its authenticated identity); must match the mapping's
    /// `source` when the mapping names one. Part of every event id.
    pub source: String,
    /// Checkpoint file; resumed from when it matches the input, replaced as the import runs.
    pub checkpoint: PathBuf,
    /// Reject file (CSV: file, line, column, reason).
    pub rejects: PathBuf,
    /// Limits.
    pub limits: IngestLimits,
}

/// The outcome of an import run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Rows settled in this run (published + duplicates + rejected).
    pub rows_total: u64,
    /// Rows published in this run that the bus did not have yet.
    pub published: u64,
    /// Rows published in this run that the bus already had (same event id): a re-import or
    /// the repeat of a row published before a crash.
    pub duplicates: u64,
    /// Rows rejected in this run.
    pub rejected: u64,
    /// The line this run resumed from, if it resumed from a checkpoint.
    pub resumed_from_line: Option<u64>,
    /// Whether the checkpoint said the file was already completely imported (nothing was done).
    pub already_complete: bool,
    /// Wall-clock duration of this run.
    pub elapsed: Duration,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The mapping names a different source than the caller.
    #[error("mapping is for source {mapping:?}, not {caller:?}")]
    SourceMismatch { mapping: String, caller: String },
    /// The mapping does not fit the file (e.g. a column missing from the header).
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// Opening or reading a file failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The checkpoint file cannot be used or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Reading the input cannot continue (I/O error, oversized row); a checkpoint was saved.
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: RowError },
    /// The sink is unavailable; a checkpoint was saved just before this line.
    #[error("publishing line {line} (after {published} events this run): {source}")]
    Sink { line: u64, published: u64, source: SinkError },
}

/// A row read but not yet settled.
struct Unsettled {
    /// Where the next row starts: the resume position once this row is settled.
    after: Position,
    state: RowState,
}

enum RowState {
    /// Its event was handed to the sink; the outcome is pending.
    Sent { line: u64 },
    /// Rejected by the reader or the mapping; written to the reject file when its turn comes.
    Rejected { line: Option<u64>, column: String, reason: String },
}

/// The state of one run: the queue of unsettled rows, the reject file, the checkpoint.
struct Run<'a> {
    job: &'a IngestJob,
    rejects: Rejects,
    checkpoint: Checkpoint,
    /// Periodic checkpoints are written in the background; the last one synchronously.
    writer: CheckpointWriter,
    queue: VecDeque<Unsettled>,
    /// The position after the last settled row (every row before it is settled).
    done: Position,
    /// Rows settled since the last checkpoint.
    unsaved: u64,
    summary: Summary,
}

impl Run<'_> {
    fn io(&self, source: std::io::Error) -> IngestError {
        IngestError::Io { what: "writing", path: self.job.rejects.clone(), source }
    }

    /// Saves a checkpoint at `done`, after flushing the reject file so it covers every row the
    /// checkpoint says was processed. `last` checkpoints (the end, a stop) are on disk when
    /// this returns; periodic ones are written in the background.
    fn save(&mut self, last: bool, complete: bool) -> Result<(), IngestError> {
        self.rejects.flush().map_err(|e| self.io(e))?;
        self.checkpoint.resume = self.done;
        self.checkpoint.complete = complete;
        self.checkpoint.rejects_len = Some(self.rejects.len());
        if last {
            self.writer.save_now(&self.checkpoint)?;
        } else {
            self.writer.submit(self.checkpoint.clone())?;
        }
        self.unsaved = 0;
        Ok(())
    }

    fn settled_one(&mut self, after: Position) -> Result<(), IngestError> {
        self.done = after;
        self.summary.rows_total += 1;
        self.unsaved += 1;
        if self.unsaved >= self.job.limits.checkpoint_every.max(1) {
            self.save(false, false)?;
        }
        Ok(())
    }

    fn reject(&mut self, line: Option<u64>, column: &str, reason: &str) -> Result<(), IngestError> {
        self.rejects.write(line, column, reason).map_err(|e| self.io(e))?;
        self.summary.rejected += 1;
        Ok(())
    }

    /// Writes out the rejects at the front of the queue (they wait only behind events).
    fn settle_leading_rejects(&mut self) -> Result<(), IngestError> {
        while matches!(self.queue.front(), Some(Unsettled { state: RowState::Rejected { .. }, .. })) {
            if let Some(Unsettled { after, state: RowState::Rejected { line, column, reason } }) =
                self.queue.pop_front()
            {
                self.reject(line, &column, &reason)?;
                self.settled_one(after)?;
            }
        }
        Ok(())
    }

    /// Applies outcomes, oldest first, to the events at the front of the queue.
    fn settle(&mut self, outcomes: &mut Vec<Outcome>) -> Result<(), IngestError> {
        for outcome in outcomes.drain(..) {
            self.settle_leading_rejects()?;
            let Some(Unsettled { after, state: RowState::Sent { line } }) = self.queue.pop_front() else {
                // A sink reporting more outcomes than events breaks its contract; the extra
                // outcome concerns no row.
                continue;
            };
            match outcome {
                Outcome::Published { duplicate: false } => self.summary.published += 1,
                Outcome::Published { duplicate: true } => self.summary.duplicates += 1,
                Outcome::Refused { reason } => {
                    self.reject(Some(line), "", &format!("refused by the bus: {reason}"))?;
                }
            }
            self.settled_one(after)?;
        }
        self.settle_leading_rejects()
    }

    /// The line of the oldest event still waiting: the one a sink failure concerns.
    fn first_unsettled_line(&self, fallback: u64) -> u64 {
        self.queue
            .iter()
            .find_map(|u| match u.state {
                RowState::Sent { line } => Some(line),
                RowState::Rejected { .. } => None,
            })
            .unwrap_or(fallback)
    }

    /// Stops after a sink failure: checkpoint just before the failed event.
    fn sink_failed(&mut self, source: SinkError, fallback_line: u64) -> IngestError {
        let line = self.first_unsettled_line(fallback_line);
        if let Err(e) = self.save(true, false) {
            return e;
        }
        IngestError::Sink { line, published: self.summary.published + self.summary.duplicates, source }
    }

    fn progress(&self, bytes_total: u64) -> Progress {
        Progress {
            bytes_done: self.done.byte_offset,
            bytes_total,
            rows_ok: self.summary.published + self.summary.duplicates,
            rows_rejected: self.summary.rejected,
        }
    }
}

/// Waits for the sink to settle everything and applies the outcomes.
async fn flush<S: EventSink>(run: &mut Run<'_>, sink: &mut S, fallback_line: u64) -> Result<(), IngestError> {
    let mut settled = Vec::new();
    let flushed = sink.flush(&mut settled).await;
    run.settle(&mut settled)?;
    match flushed {
        Ok(()) => Ok(()),
        Err(e) => Err(run.sink_failed(e, fallback_line)),
    }
}

/// Imports `job.input` with `mapping`, publishing to `sink` and reporting to `progress`.
pub async fn ingest<S, P>(
    job: &IngestJob,
    mapping: &Mapping,
    sink: &mut S,
    mut progress: P,
) -> Result<Summary, IngestError>
where
    S: EventSink,
    P: FnMut(Progress),
{
    let started = Instant::now();
    if let Some(expected) = mapping.source.as_deref().filter(|s| *s != job.source) {
        return Err(IngestError::SourceMismatch { mapping: expected.into(), caller: job.source.clone() });
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestError::Io { what, path, source }
    };
    let mut file = File::open(&job.input).map_err(io("opening", &job.input))?;
    let identity = FileIdentity::of(&mut file).map_err(io("reading", &job.input))?;
    let input = std::fs::canonicalize(&job.input).unwrap_or_else(|_| job.input.clone()).display().to_string();
    let saved =
        Checkpoint::load(&job.checkpoint)?.filter(|c| c.matches(&input, &mapping.event_type, &identity));
    let resume = saved.as_ref().map(|c| c.resume);
    let mut summary = Summary {
        rows_total: 0,
        published: 0,
        duplicates: 0,
        rejected: 0,
        resumed_from_line: resume.map(|p| p.line),
        already_complete: false,
        elapsed: Duration::ZERO,
    };
    if saved.as_ref().is_some_and(|c| c.complete) {
        // Nothing to do; the reject file of the complete run is left as it is.
        summary.already_complete = true;
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }

    let options = ReaderOptions {
        layout: mapping.layout(),
        encoding: mapping.encoding(),
        header: mapping.header,
        expected_columns: mapping.expected_columns(),
        max_row_bytes: job.limits.max_row_bytes,
        max_fields: job.limits.max_fields,
    };
    let read_err = |source| IngestError::Read { path: job.input.clone(), source };
    let mut reader = RecordReader::open(file, options, resume).map_err(read_err)?;
    let bound = mapping.bind(reader.headers())?;
    let resume_rejects = saved.as_ref().map(|c| c.rejects_len);
    let rejects = Rejects::open(&job.rejects, &input, resume_rejects).map_err(io("writing", &job.rejects))?;
    let bytes_total = identity.size;
    let start = reader.position();
    let mut run = Run {
        job,
        rejects,
        checkpoint: Checkpoint::new(input, mapping.event_type.clone(), identity, start),
        writer: CheckpointWriter::new(&job.checkpoint),
        queue: VecDeque::new(),
        done: start,
        unsaved: 0,
        summary,
    };

    // A first report before any row: where this run starts (a resume starts part-way).
    progress(run.progress(bytes_total));
    let mut settled = Vec::new();
    let mut rows_read = 0u64;
    while let Some(item) = reader.next() {
        rows_read += 1;
        let after = reader.position();
        let rejected = match item {
            Ok(record) => match bound.apply(&record) {
                Ok(mapped) => {
                    let event = MappedEvent {
                        id: event_id(&job.source, &mapping.event_type, &mapped.key, &mapped.version),
                        event_type: mapping.event_type.clone(),
                        schema_version: mapping.schema_version,
                        key: mapped.key,
                        payload_json: mapped.payload.to_string().into_bytes(),
                        line: record.line,
                        byte_offset: record.byte_offset,
                    };
                    run.queue.push_back(Unsettled { after, state: RowState::Sent { line: record.line } });
                    let sent = sink.send(event, &mut settled).await;
                    run.settle(&mut settled)?;
                    if let Err(e) = sent {
                        return Err(run.sink_failed(e, record.line));
                    }
                    None
                }
                Err(e) => Some((Some(record.line), e.column, format!("{}: {}", e.target, e.problem))),
            },
            Err(e) if e.is_fatal() => {
                // Settle what is in flight so the checkpoint ends right before the bad row.
                let line = e.line().unwrap_or(after.line);
                flush(&mut run, sink, line).await?;
                run.save(true, false)?;
                return Err(read_err(e));
            }
            Err(e) => Some((e.line(), e.column().unwrap_or_default().to_owned(), e.to_string())),
        };
        if let Some((line, column, reason)) = rejected {
            run.queue.push_back(Unsettled { after, state: RowState::Rejected { line, column, reason } });
            run.settle_leading_rejects()?;
            if run.queue.len() >= MAX_UNSETTLED_ROWS {
                flush(&mut run, sink, line.unwrap_or(after.line)).await?;
            }
        }
        if rows_read.is_multiple_of(job.limits.progress_every.max(1)) {
            progress(run.progress(bytes_total));
        }
    }
    flush(&mut run, sink, reader.position().line).await?;
    run.save(true, true)?;
    progress(run.progress(bytes_total));
    run.summary.elapsed = started.elapsed();
    Ok(run.summary)
}

#[cfg(test)]
mod tests;
