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

#[cfg(test)]
mod tests {
    use super::*;

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
