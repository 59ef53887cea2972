//! Writing files that hold secrets (credentials, tokens, keys): created readable by their owner
//! only (0600 on Unix), written to a temporary file and renamed, so a reader never sees half a
//! file and a crash never leaves one.

use std::io::Write as _;
use std::path::Path;

/// Writes `text` to `path` atomically; `private` = mode 0600 on Unix.
pub fn write(path: &Path, text: &[u8], private: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
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
    f.write_all(text).and_then(|_| f.sync_all())?;
    std::fs::rename(&tmp, path)
}
