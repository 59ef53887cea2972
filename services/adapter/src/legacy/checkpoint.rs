//! Checkpoints: where an interrupted import resumes, and for which exact file.
//!
//! A checkpoint names the input file by path, size, modification time and a SHA-256 of its
//! first 64 KiB; if any of these differ the file is not the one checkpointed and the import
//! starts over (safe, because event ids are deterministic and the bus drops repeats).
//! Checkpoints are written to a temporary file and renamed over the old one, so a crash leaves
//! either the old or the new checkpoint, never a torn one.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::ids::sha256_hex;
use super::records::Position;

/// How much of the file's start is hashed to recognise it.
const HEAD_BYTES: u64 = 64 * 1024;

/// The checkpoint file's format version, bumped on incompatible changes.
const FORMAT: u32 = 1;

/// What identifies an input file's content cheaply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time as nanoseconds since the Unix epoch, where the platform has one.
    pub mtime_unix_nanos: Option<u64>,
    /// SHA-256 (hex) of the first 64 KiB.
    pub head_sha256: String,
}

impl FileIdentity {
    /// Reads the identity of an open file and rewinds it.
    pub fn of(file: &mut File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let mtime_unix_nanos = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        let mut head = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        Read::by_ref(file).take(HEAD_BYTES).read_to_end(&mut head)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Self { size: meta.len(), mtime_unix_nanos, head_sha256: sha256_hex(&head) })
    }
}

/// The saved state of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file.
    pub format: u32,
    /// The input file's path (canonical where possible).
    pub input: String,
    /// The mapping's event type: a checkpoint of another mapping over the same file is not ours.
    pub event_type: String,
    /// The input file this checkpoint belongs to.
    pub file: FileIdentity,
    /// Where the first unprocessed record starts (after the last published or rejected one).
    pub resume: Position,
    /// Whether the whole file was processed.
    pub complete: bool,
    /// Length of the reject file when the checkpoint was taken; a resume cuts the reject file
    /// back to it. Absent in checkpoints written before it was recorded.
    #[serde(default)]
    pub rejects_len: Option<u64>,
}

/// A checkpoint file that exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file is not a checkpoint of this format; delete it to start over.
    #[error("checkpoint {path} is unreadable ({reason}); delete it to start the import over")]
    Corrupt { path: PathBuf, reason: String },
}

impl Checkpoint {
    /// A checkpoint for `input` at `resume`.
    pub fn new(input: String, event_type: String, file: FileIdentity, resume: Position) -> Self {
        Self { format: FORMAT, input, event_type, file, resume, complete: false, rejects_len: None }
    }

    /// Loads a checkpoint; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, CheckpointError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path: path.to_path_buf(), source }),
        };
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.to_path_buf(), reason };
        let checkpoint: Self = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if checkpoint.format != FORMAT {
            return Err(corrupt(format!("format {} is not {FORMAT}", checkpoint.format)));
        }
        Ok(Some(checkpoint))
    }

    /// Whether this checkpoint was taken over the same file with the same event type.
    pub fn matches(&self, input: &str, event_type: &str, file: &FileIdentity) -> bool {
        self.input == input && self.event_type == event_type && &self.file == file
    }

    /// Writes the checkpoint atomically: temp file in the same directory, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io_err = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let json = serde_json::to_vec_pretty(self).map_err(|e| io_err(io::Error::other(e)))?;
        let mut file = File::create(&tmp).map_err(io_err)?;
        file.write_all(&json).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io_err)?;
        // Make the rename itself durable; not every platform can open a directory, so this
        // is best effort.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

/// Writes checkpoints on a background thread, so the fsyncs of periodic checkpoints do not
/// stall the import (on some disks an fsync takes tens of milliseconds).
///
/// At most one write runs and one waits; a newer checkpoint replaces a waiting one, since it
/// covers more rows. Every checkpoint handed over is valid on its own, so skipping one only
/// means a crash would resume a little earlier (and re-publish rows the bus then drops as
/// duplicates). A failed background write is reported by the next call. Dropping the writer
/// finishes the waiting write first.
pub struct CheckpointWriter {
    path: PathBuf,
    shared: Arc<(Mutex<WriterState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WriterState {
    waiting: Option<Checkpoint>,
    busy: bool,
    closed: bool,
    error: Option<CheckpointError>,
}

impl CheckpointWriter {
    /// A writer of checkpoints to `path`.
    pub fn new(path: &Path) -> Self {
        let shared = Arc::new((Mutex::new(WriterState::default()), Condvar::new()));
        let thread = {
            let shared = shared.clone();
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("kh-checkpoint".into())
                .spawn(move || write_loop(&path, &shared))
                .ok()
        };
        Self { path: path.to_path_buf(), shared, thread }
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a checkpoint to the background thread and returns at once (written at once when
    /// no thread could be started).
    pub fn submit(&self, checkpoint: Checkpoint) -> Result<(), CheckpointError> {
        if self.thread.is_none() {
            return checkpoint.save(&self.path);
        }
        let mut state = self.lock();
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        state.waiting = Some(checkpoint);
        self.shared.1.notify_all();
        Ok(())
    }

    /// Writes a checkpoint now, after any background write in progress; a waiting one is
    /// dropped (this one supersedes it).
    pub fn save_now(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut state = self.lock();
        state.waiting = None;
        while state.busy {
            state = self.shared.1.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let earlier = state.error.take();
        // Written while holding the lock, so no background write can overtake it.
        checkpoint.save(&self.path)?;
        earlier.map_or(Ok(()), Err)
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.shared.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(path: &Path, shared: &(Mutex<WriterState>, Condvar)) {
    let (lock, changed) = shared;
    loop {
        let checkpoint = {
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            while state.waiting.is_none() && !state.closed {
                state = changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            let Some(checkpoint) = state.waiting.take() else { return };
            state.busy = true;
            checkpoint
        };
        let result = checkpoint.save(path);
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        state.busy = false;
        if let Err(e) = result {
            state.error.get_or_insert(e);
        }
        changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_writes_end_with_the_latest_checkpoint() {
        let path = temp_path("writer.json");
        let file = FileIdentity { size: 10, mtime_unix_nanos: None, head_sha256: "ab".into() };
        let at = |line| {
            Checkpoint::new(
                "/in.csv".into(),
                "t.x".into(),
                file.clone(),
                Position { byte_offset: line * 10, line },
            )
        };
        let writer = CheckpointWriter::new(&path);
        for line in 1..50 {
            assert!(writer.submit(at(line)).is_ok());
        }
        drop(writer);
        assert_eq!(
            Checkpoint::load(&path).ok().flatten().map(|c| c.resume.line),
            Some(49),
            "the last one wins"
        );
        let writer = CheckpointWriter::new(&path);
        assert!(writer.submit(at(60)).is_ok());
        assert!(writer.save_now(&at(61)).is_ok());
        drop(writer);
        assert_eq!(
            Checkpoint::load(&path).ok().flatten().map(|c| c.resume.line),
            Some(61),
            "save_now is last"
        );
        let _ = std::fs::remove_file(path);
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kh-ckpt-{}-{name}", std::process::id()))
    }

    #[test]
    fn saved_checkpoint_loads_back_and_leaves_no_temp_file() {
        let path = temp_path("roundtrip.json");
        let file = FileIdentity { size: 10, mtime_unix_nanos: Some(5), head_sha256: "ab".into() };
        let mut ckpt = Checkpoint::new(
            "/in.csv".into(),
            "t.x".into(),
            file.clone(),
            Position { byte_offset: 7, line: 3 },
        );
        ckpt.complete = true;
        assert!(ckpt.save(&path).is_ok());
        assert_eq!(Checkpoint::load(&path).ok().flatten(), Some(ckpt.clone()));
        assert!(!temp_path("roundtrip.json.tmp").exists());
        assert!(ckpt.matches("/in.csv", "t.x", &file));
        assert!(!ckpt.matches("/in.csv", "t.y", &file));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn missing_checkpoint_is_none_and_garbage_is_corrupt() {
        assert!(matches!(Checkpoint::load(&temp_path("absent.json")), Ok(None)));
        let path = temp_path("garbage.json");
        assert!(std::fs::write(&path, b"{not json").is_ok());
        assert!(matches!(Checkpoint::load(&path), Err(CheckpointError::Corrupt { .. })));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn identity_changes_when_the_head_changes() {
        let path = temp_path("ident.csv");
        let ident = |content: &[u8]| {
            std::fs::write(&path, content).ok();
            File::open(&path).and_then(|mut f| FileIdentity::of(&mut f)).ok()
        };
        let a = ident(b"a,b\n1,2\n");
        let b = ident(b"a,b\n1,3\n");
        assert!(a.is_some() && a.as_ref().map(|a| a.head_sha256.clone()) != b.map(|b| b.head_sha256));
        let _ = std::fs::remove_file(path);
    }
}
