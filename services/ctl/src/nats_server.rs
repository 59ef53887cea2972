//! For `kakehashi dev`: use the nats-server at the configured URL, or start one (JetStream,
//! store under the data dir) when none answers there.

use crate::error::CtlError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server version `deploy/scripts/ensure-tools.sh` installs.
pub const PINNED_VERSION: &str = "2.15.1";
/// The oldest nats-server the bus runs on (accounts with service imports, 2.10+ consumer
/// create subjects, priority groups).
pub const MIN_VERSION: (u32, u32) = (2, 12);

/// The nats-server to run: `KAKEHASHI_NATS_SERVER`, else the one `ensure-tools.sh` installed
/// (`${KAKEHASHI_TOOLS:-~/.cache/kakehashi}/nats-server-<version>/nats-server`).
pub fn binary() -> Result<PathBuf, CtlError> {
    if let Some(p) = std::env::var_os("KAKEHASHI_NATS_SERVER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let tools = match std::env::var_os("KAKEHASHI_TOOLS").filter(|p| !p.is_empty()) {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kakehashi"),
    };
    let bin = tools.join(format!("nats-server-{PINNED_VERSION}")).join("nats-server");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(CtlError::Dev(format!(
            "nats-server {PINNED_VERSION} not found at {}; run `bash deploy/scripts/ensure-tools.sh`",
            bin.display()
        )))
    }
}

/// Refuses a nats-server older than [`MIN_VERSION`], naming the version it found.
pub fn check_version(bin: &Path) -> Result<String, CtlError> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| CtlError::Dev(format!("cannot run {}: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = text.rsplit('v').next().unwrap_or("").to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        return Err(CtlError::Dev(format!(
            "{} is nats-server {version:?}; Kakehashi needs {}.{} or later (run `bash deploy/scripts/ensure-tools.sh`)",
            bin.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        )));
    }
    Ok(version)
}

/// A nats-server this process started; killed on drop.
pub struct OwnedNats(Child);

impl Drop for OwnedNats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host_port(url: &str) -> Result<(String, u16), CtlError> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "4222"));
    let port =
        port.trim_end_matches('/').parse().map_err(|_| CtlError::Usage(format!("bad NATS URL {url}")))?;
    Ok((host.to_string(), port))
}

fn answers(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(mut addrs) = (host, port).to_socket_addrs() else { return false };
    addrs.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

/// Returns None when a server already answers at `url`, else starts one and waits for it.
pub fn ensure(url: &str, data_dir: &Path) -> Result<Option<OwnedNats>, CtlError> {
    let (host, port) = host_port(url)?;
    if answers(&host, port) {
        return Ok(None);
    }
    let store = data_dir.join("nats");
    std::fs::create_dir_all(&store).map_err(|source| CtlError::Read { path: store.clone(), source })?;
    let log = data_dir.join("nats-server.log");
    let child = Command::new("nats-server")
        .args(["-js", "-a", &host, "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            CtlError::Dev(format!("cannot start nats-server (apt-get install -y nats-server): {e}"))
        })?;
    let owned = OwnedNats(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !answers(&host, port) {
        if Instant::now() > deadline {
            return Err(CtlError::Dev(format!("nats-server did not start; see {}", log.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(owned))
}
