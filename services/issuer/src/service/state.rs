//! The issuer's durable state: one JSON-lines file in its data directory, appended and
//! fsync'd before the delivery that caused the line is acked.
//!
//! Two kinds of line:
//! - `record`: one vaccination of one person, keyed by the issuer's pseudonym of the person's
//!   My Number (`kh1:…`), never the number itself. Only what a card needs is kept: date,
//!   vaccine, dose number, lot, municipality and birth date (not the kanji name).
//! - `answer`: the event published for a request (issued or refused), with its derived id and
//!   exact payload, written *before* it is published: a request redelivered after a crash is
//!   answered with the same bytes under the same id, and the bus keeps one copy.
//!
//! Why a file and not a replay: the issuer is a department like any other, and a department may
//! not read the streams or buckets directly (docs/security.md); a replay through its
//! subscription would also lose every record older than `KH_EVENTS`' retention (7 days), while
//! a certificate may be requested years after the vaccination.

use super::events::Vaccination;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the state file.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A complete line that is not a state entry (a torn last line is dropped, not an error).
    #[error("state file {path}, line {line}: not a state entry: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parser message.
        message: String,
    },
}

/// One vaccination of one person as the issuer keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The `health.vaccination.recorded` event id (redeliveries are recognised by it).
    pub event_id: String,
    /// The issuer's pseudonym of the person's My Number (`kh1:…`).
    pub pseudonym: String,
    /// The person's birth date in the record.
    #[serde(default)]
    pub birth_date: Option<String>,
    /// The municipality keeping the record.
    pub municipality_code: String,
    /// The vaccination.
    pub vaccination: Vaccination,
}

/// The answer to one request, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The request's event id.
    pub request_id: String,
    /// The answer's event id (derived from the request id).
    pub event_id: String,
    /// `health.vaccination.certificate.issued` or `.refused`.
    pub event_type: String,
    /// Schema version the payload is written for.
    pub schema_version: u32,
    /// The payload, exactly as published.
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Record(StoredRecord),
    Answer(Answer),
}

/// The state, in memory and on disk.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    file: std::fs::File,
    records: HashMap<String, Vec<StoredRecord>>,
    record_ids: HashSet<String>,
    answers: HashMap<String, Answer>,
}

impl State {
    /// Opens (or creates) the state file and reads it. A last line without its newline (a crash
    /// while appending it: its delivery was never acked, so it comes again) is cut off.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut state = Self {
            path: path.to_path_buf(),
            file: kakehashi_runtime::private_files::open_private_append(path).map_err(io)?,
            records: HashMap::new(),
            record_ids: HashSet::new(),
            answers: HashMap::new(),
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(path = %path.display(), "dropping a torn last line of the state file");
            state.file.set_len(complete as u64).map_err(io)?;
            state.file.sync_all().map_err(io)?;
        }
        for (i, line) in bytes[..complete].lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&line).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })?;
            state.apply(parsed);
        }
        Ok(state)
    }

    fn apply(&mut self, line: Line) {
        match line {
            Line::Record(r) => {
                if self.record_ids.insert(r.event_id.clone()) {
                    self.records.entry(r.pseudonym.clone()).or_default().push(r);
                }
            }
            Line::Answer(a) => {
                self.answers.insert(a.request_id.clone(), a);
            }
        }
    }

    fn append(&mut self, line: Line) -> Result<(), StateError> {
        let io = |source| StateError::Io { path: self.path.clone(), source };
        let mut text = serde_json::to_string(&line)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(io)?;
        // Durable before the caller acks the delivery or publishes the answer.
        self.file.sync_data().map_err(io)?;
        self.apply(line);
        Ok(())
    }

    /// Whether a record event was stored already.
    pub fn has_record(&self, event_id: &str) -> bool {
        self.record_ids.contains(event_id)
    }

    /// Stores a record (durably); a record event seen before is not stored twice.
    pub fn add_record(&mut self, record: StoredRecord) -> Result<(), StateError> {
        if self.has_record(&record.event_id) {
            return Ok(());
        }
        self.append(Line::Record(record))
    }

    /// A person's vaccinations, oldest first; for the same vaccine and dose number the record
    /// stored last wins (a correction replaces the earlier entry).
    pub fn records_of(&self, pseudonym: &str) -> Vec<&StoredRecord> {
        let mut latest: BTreeMap<(&str, u64), &StoredRecord> = BTreeMap::new();
        for r in self.records.get(pseudonym).into_iter().flatten() {
            latest.insert((r.vaccination.vaccine.as_str(), r.vaccination.dose_number), r);
        }
        let mut out: Vec<_> = latest.into_values().collect();
        out.sort_by(|a, b| {
            (a.vaccination.date.as_str(), a.vaccination.dose_number)
                .cmp(&(b.vaccination.date.as_str(), b.vaccination.dose_number))
        });
        out
    }

    /// The answer stored for a request.
    pub fn answer(&self, request_id: &str) -> Option<&Answer> {
        self.answers.get(request_id)
    }

    /// Stores an answer (durably) before it is published.
    pub fn add_answer(&mut self, answer: Answer) -> Result<(), StateError> {
        self.append(Line::Answer(answer))
    }

    /// Every pseudonym with records (for diagnostics and tests).
    pub fn pseudonyms(&self) -> Vec<&str> {
        self.records.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event_id: &str, dose: u64, date: &str) -> StoredRecord {
        StoredRecord {
            event_id: event_id.into(),
            pseudonym: "kh1:0123456789abcdef0123456789abcdef".into(),
            birth_date: Some("2019-05-01".into()),
            municipality_code: "131130".into(),
            vaccination: Vaccination {
                date: date.into(),
                vaccine: "MR".into(),
                dose_number: dose,
                lot_number: "Y1".into(),
            },
        }
    }

    #[test]
    fn state_survives_reopening_and_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.jsonl");
        {
            let mut s = State::open(&path).expect("open");
            s.add_record(record("e2", 2, "2024-10-15")).expect("add");
            s.add_record(record("e1", 1, "2020-05-01")).expect("add");
            s.add_record(record("e1", 1, "2020-05-01")).expect("add again");
            s.add_answer(Answer {
                request_id: "r1".into(),
                event_id: "a1".into(),
                event_type: "t".into(),
                schema_version: 1,
                payload: serde_json::json!({"x": 1}),
            })
            .expect("answer");
        }
        // A crash in the middle of an append.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"kind\":\"record\",\"event_id\":\"e3\""))
            .expect("torn write");
        let mut s = State::open(&path).expect("reopen");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the state holds passport details");
        }
        let doses: Vec<u64> = s
            .records_of("kh1:0123456789abcdef0123456789abcdef")
            .iter()
            .map(|r| r.vaccination.dose_number)
            .collect();
        assert_eq!(doses, vec![1, 2], "oldest first, no duplicate");
        assert_eq!(s.answer("r1").map(|a| a.event_id.as_str()), Some("a1"));
        s.add_record(record("e3", 3, "2025-01-01")).expect("append after the cut");
        let s = State::open(&path).expect("reopen again");
        assert_eq!(s.records_of("kh1:0123456789abcdef0123456789abcdef").len(), 3);
    }

    #[test]
    fn a_corrupt_complete_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.jsonl");
        std::fs::write(&path, "{\"kind\":\"answer\"}\n").expect("write");
        let err = State::open(&path).expect_err("corrupt");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
