//! Third-party clients (Python gRPC, nats-py, jwcrypto) that `deploy/scripts/ensure-tools.sh`
//! installs into a virtualenv of their own, and the scripts under `tests/interop/` they run.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// The interop virtualenv's Python (`${KAKEHASHI_TOOLS:-~/.cache/kakehashi}/python/bin/python`).
pub fn python() -> PathBuf {
    let tools = match std::env::var_os("KAKEHASHI_TOOLS").filter(|p| !p.is_empty()) {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kakehashi"),
    };
    let python = tools.join("python/bin/python");
    assert!(
        python.is_file(),
        "{} not found: the interop clients are installed by `bash deploy/scripts/ensure-tools.sh --with-interop-clients` (the test command, `bash deploy/test.sh`, runs it)",
        python.display()
    );
    python
}

/// `tests/interop/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop").join(name)
}

/// Runs `tests/interop/<name>` with `args` under the interop Python, at most `limit`, off the
/// async runtime; returns its output (the caller checks the status, with stdout and stderr in
/// the message).
pub async fn run(name: &str, args: Vec<String>, limit: Duration) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg(script(name)).args(&args);
    let task = tokio::task::spawn_blocking(move || cmd.output().expect("run the interop Python"));
    tokio::time::timeout(limit, task)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {limit:?}"))
        .expect("interop task")
}

/// Panics with the script's output unless it exited 0.
pub fn expect_success(name: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{name} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
