//! The pinned nats-server: where it is, whether it is recent enough, and the dev bus's own
//! secured server (`kakehashi dev`), configured under the data dir and started from the pinned
//! binary — never whatever happens to answer on 4222.

use crate::error::CtlError;
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server version `deploy/scripts/ensure-tools.sh` installs.
pub const PINNED_VERSION: &str = "2.15.1";
/// The oldest nats-server the bus runs on (the services refuse older ones too).
pub const MIN_VERSION: (u32, u32) = kakehashi_runtime::topology::MIN_SERVER_VERSION;

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
    let found = kakehashi_runtime::topology::parse_server_version(&version).unwrap_or((0, 0));
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

/// A nats-server this process started; stopped on drop.
pub struct OwnedNats {
    child: Child,
    bin: PathBuf,
}

impl Drop for OwnedNats {
    fn drop(&mut self) {
        // A clean shutdown first: JetStream writes consumer state (acks) lazily, and a SIGKILL
        // would lose the latest acks, so the next run would see acked deliveries again.
        let term = Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("term={}", self.child.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if term.is_ok_and(|s| s.success()) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The name the dev server announces; with the registry's credentials accepted, it tells an
/// earlier `kakehashi dev` server apart from anything else listening on the port.
pub const DEV_SERVER_NAME: &str = "kakehashi-dev";

/// The dev bus's nats-server: where it listens and whether this process started it.
pub struct DevNats {
    /// `nats://<listen address>`.
    pub url: String,
    /// The server configuration file.
    pub config: PathBuf,
    /// The server log file.
    pub log: PathBuf,
    /// The server this process started (stopped on drop); `None` when an earlier dev server of
    /// the same data dir is reused.
    pub owned: Option<OwnedNats>,
}

/// Writes `<data_dir>/nats-server.conf`: JetStream under the data dir, no monitoring port, and
/// the generated `nats-auth/auth.conf` included (relative: nats-server resolves an include from
/// the including file's directory). `data_dir` must be absolute.
pub fn write_dev_config(listen: SocketAddr, data_dir: &Path) -> Result<PathBuf, CtlError> {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let store = data_dir.join("nats-js");
    let log = data_dir.join("nats-server.log");
    let text = format!(
        "# Written by `kakehashi dev` at every start; edits are overwritten.\n\
         # Authentication is on: every identity is in nats-auth/auth.conf (`kakehashi nats config`),\n\
         # there is no anonymous user.\n\
         server_name: {name}\n\
         listen: {listen}\n\
         max_payload: 2MB\n\
         log_file: {log}\n\
         pid_file: {pid}\n\
         jetstream {{\n  store_dir: {store}\n}}\n\
         include \"nats-auth/auth.conf\"\n",
        name = q(DEV_SERVER_NAME),
        listen = q(&listen.to_string()),
        log = q(&log.to_string_lossy()),
        pid = q(&data_dir.join("nats-server.pid").to_string_lossy()),
        store = q(&store.to_string_lossy()),
    );
    let path = data_dir.join("nats-server.conf");
    std::fs::write(&path, text)
        .map_err(|e| CtlError::Dev(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// Checks that the server at `url` is this data dir's dev server; the error says why not.
async fn probe(url: &str, auth: &NatsAuthConfig) -> Result<(), String> {
    let options = auth.options("kakehashi-dev-probe").map_err(|e| e.to_string())?;
    let client =
        options.connection_timeout(Duration::from_secs(2)).connect(url).await.map_err(|e| e.to_string())?;
    let info = client.server_info();
    // An open server lets any nkey in: only a server that required authentication, accepted
    // the dev registry key and carries the dev name is ours.
    if info.auth_required && info.server_name == DEV_SERVER_NAME {
        Ok(())
    } else {
        Err(format!("it answers as server {:?}, not as a `kakehashi dev` server", info.server_name))
    }
}

/// Starts the pinned nats-server `bin` with `config` listening on `listen`, or reuses the one
/// already there if it accepts `auth` (the dev registry credentials) and is a dev server; fails
/// with one line when something else holds the port.
pub async fn ensure_dev(
    bin: &Path,
    listen: SocketAddr,
    config: &Path,
    data_dir: &Path,
    auth: &NatsAuthConfig,
) -> Result<DevNats, CtlError> {
    let url = format!("nats://{listen}");
    let log = data_dir.join("nats-server.log");
    let connectable =
        |a: &SocketAddr| std::net::TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok();
    if connectable(&listen) {
        return match probe(&url, auth).await {
            Ok(()) => {
                // It may predate departments or keys generated just now: have it re-read them.
                let pid_file = data_dir.join("nats-server.pid");
                let reloaded = Command::new(bin)
                    .arg("--signal")
                    .arg(format!("reload={}", pid_file.display()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if !reloaded.is_ok_and(|s| s.success()) {
                    eprintln!(
                        "kakehashi: could not make the running dev nats-server reload {}; restart it if departments changed",
                        config.display()
                    );
                }
                Ok(DevNats { url, config: config.to_path_buf(), log, owned: None })
            }
            Err(why) => Err(CtlError::Dev(format!(
                "{listen} is taken by another server that is not this data dir's dev nats-server ({why}); \
                 stop it or pick another address with --nats-listen"
            ))),
        };
    }
    // Parse errors come before the log file is opened: keep stderr to report them.
    let stderr_path = data_dir.join("nats-server.stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|source| CtlError::Read { path: stderr_path.clone(), source })?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| CtlError::Dev(format!("cannot start {}: {e}", bin.display())))?;
    let mut owned = OwnedNats { child, bin: bin.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = owned.child.try_wait() {
            let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let first = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            return Err(CtlError::Dev(format!(
                "nats-server exited at start ({status}): {first} (log {})",
                log.display()
            )));
        }
        if connectable(&listen) && probe(&url, auth).await.is_ok() {
            return Ok(DevNats { url, config: config.to_path_buf(), log, owned: Some(owned) });
        }
        if Instant::now() > deadline {
            return Err(CtlError::Dev(format!(
                "nats-server did not accept the dev credentials within 15s; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
