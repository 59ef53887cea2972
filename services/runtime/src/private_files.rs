//! Files that hold secrets or personal data (credentials, tokens, keys, the issuer's state):
//! written whole, to a temporary file in the same directory, fsync'd and renamed, so a reader
//! (or a restart after a crash) never sees half a file; private ones are created readable by
//! their owner only (0600, directories 0700 on Unix) before a byte is written.

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` atomically; `private` = readable by the owner only.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(&tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all())?;
    std::fs::rename(&tmp, path)
}

/// Creates a directory (and its parents); `private` = mode 0700 on Unix.
pub fn create_dir(path: &Path, private: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// Opens `path` for appending, created readable by the owner only; a file left by an earlier
/// version with a wider mode is tightened first.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        write_atomic(&path, b"one", true).expect("write");
        write_atomic(&path, b"two", true).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1, "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            let log = dir.path().join("log");
            std::fs::write(&log, b"").expect("a wide file");
            std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            drop(open_private_append(&log).expect("append"));
            assert_eq!(mode(&log), 0o600, "tightened");
        }
    }
}
