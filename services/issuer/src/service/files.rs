//! Writing files whole: to a temporary file in the same directory, fsync'd, then renamed, so a
//! reader (or a restart after a crash) never sees half a file. Secrets are created with mode
//! 0600 on Unix before a byte is written.

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
