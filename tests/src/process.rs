//! The registry as a separate OS process (the `kh-registry` binary of this crate), so a test can
//! SIGKILL it mid-stream and start it again. The child binds `127.0.0.1:0` and reports the port
//! on stdout; its logs go to a file that is printed when the test fails.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Registry settings for fault tests: a killed instance's unacked ingress messages come back
/// after 3 s (not the default 30), and subscriptions default to a 5 s ack wait.
pub const FAST_RECOVERY_TOML: &str = "\
[validator]
ack_wait_secs = 3

[delivery]
default_ack_wait_secs = 5
";

/// A registry child process.
pub struct RegistryProcess {
    child: Option<Child>,
    addr: SocketAddr,
    nats_url: String,
    /// The registry identity's credentials file.
    credentials: PathBuf,
    instance: String,
    /// Holds the config file and one log file per start.
    dir: tempfile::TempDir,
    /// Starts so far (names the log files).
    starts: u32,
}

impl RegistryProcess {
    /// Starts a registry on `nats` with [`FAST_RECOVERY_TOML`], waits until it serves.
    pub async fn start(nats: &crate::NatsServer) -> Self {
        Self::start_with(nats, "registry-proc", FAST_RECOVERY_TOML).await
    }

    /// Starts a registry named `instance` with `toml` as its config file.
    pub async fn start_with(nats: &crate::NatsServer, instance: &str, toml: &str) -> Self {
        let credentials =
            nats.generated().service(kakehashi_ctl::nats_config::permissions::Service::Registry);
        Self::start_on(&nats.url(), credentials, instance, toml).await
    }

    /// Starts a registry named `instance` with `toml` as its config file, connected to
    /// `nats_url` (`KAKEHASHI_NATS_URL`) with the credentials file `credentials`: for a bus
    /// that is not a [`crate::NatsServer`], such as a node of a [`crate::NatsCluster`].
    pub async fn start_on(nats_url: &str, credentials: PathBuf, instance: &str, toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("registry.toml"), toml).expect("write config");
        let mut p = Self {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            nats_url: nats_url.to_string(),
            credentials,
            instance: instance.to_string(),
            dir,
            starts: 0,
        };
        p.spawn().await;
        p
    }

    /// `http://<addr>` for gRPC clients (changes on every start).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGKILLs the process (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it if running, then starts it again with the same config (on a new port).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The last `lines` lines of every start's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} start {n} ({} log lines) ---\n", self.instance, all.len()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("registry-{start}.log"))
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let mut child = Command::new(registry_bin())
            .env("KAKEHASHI_CONFIG", self.dir.path().join("registry.toml"))
            .env("KAKEHASHI_NATS_URL", &self.nats_url)
            .env("KAKEHASHI_NATS_CREDENTIALS", &self.credentials)
            .env("KAKEHASHI_INSTANCE", format!("{}#{}", self.instance, self.starts))
            .env("RUST_LOG", std::env::var("KH_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", registry_bin().display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        std::thread::spawn(move || {
            // Reads the LISTENING line, then drains stdout until the child exits.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("LISTENING ").and_then(|a| a.trim().parse().ok()) {
                    let _ = tx.send(addr);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(addr) = rx.try_recv() {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("kh-registry exited at start ({status}):\n{}", self.log_tail(40));
            }
            assert!(Instant::now() < deadline, "kh-registry printed no LISTENING line within 20s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.child = Some(child);
        self.addr = addr;
        crate::services::wait_serving(addr).await;
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.kill();
        for n in 1..=self.starts {
            keep_log(&self.log_path(n), &format!("{}-{n}.log", self.instance));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// Copies a log file into the directory named by `KH_TEST_KEEP_LOGS` (when set) as `name`, so
/// the logs of a failed fault run can be read after its temporary directories are gone.
pub(crate) fn keep_log(from: &std::path::Path, name: &str) {
    let Some(dir) = std::env::var_os("KH_TEST_KEEP_LOGS") else { return };
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::copy(from, dir.join(name)).map(drop))
    {
        eprintln!("keeping {} in {}: {e}", from.display(), dir.display());
    }
}

/// The `kh-registry` binary: `KH_REGISTRY_BIN` when set, else next to the test executable's
/// `deps/` directory, where cargo puts the binaries of this crate before running its tests
/// (`CARGO_BIN_EXE_*` is only set for the test crates themselves, not for this library).
pub fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KH_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") { dir.parent().expect("target dir") } else { dir };
    dir.join(format!("kh-registry{}", std::env::consts::EXE_SUFFIX))
}
