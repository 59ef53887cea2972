//! A `nats-server -js` child process owned by one test, secured exactly as a deployment is:
//! its accounts section and every identity's credentials come from `kakehashi nats config`
//! (the same code operators run), so every test runs the services under their
//! least-privilege identities and nothing connects anonymously.

use kakehashi_ctl::nats_config::{self, permissions::Service, Generated, Plan};
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Departments every test server knows (each gets its own account and credentials).
pub const TEST_DEPARTMENTS: &[&str] = &[
    "city-shibuya",
    "city-sapporo",
    "city-x",
    "mhlw",
    "nta",
    "digital-agency",
    "dept-a",
    "dept-b",
    "dept-c",
];

/// Whether a test server requires TLS, and client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    None,
    Server,
    Mutual,
}

/// A running (or killed) nats-server with its own store directory.
pub struct NatsServer {
    child: Option<Child>,
    /// What the configuration was generated from (re-run for rotations).
    plan: Plan,
    store: tempfile::TempDir,
    port: u16,
    auth: Generated,
    /// Set by tests that provoke refusals; otherwise any permission violation in the server's
    /// log fails the test when the server is dropped: the services must run every scenario
    /// within their least-privilege identities.
    violations_expected: AtomicBool,
}

impl NatsServer {
    /// Starts a server on a port the OS picks with [`TEST_DEPARTMENTS`]; panics with a clear
    /// message if it cannot.
    pub fn start() -> Self {
        Self::start_with_departments(TEST_DEPARTMENTS)
    }

    /// Starts a server whose generated configuration knows `departments`.
    pub fn start_with_departments(departments: &[&str]) -> Self {
        Self::start_configured(departments, Tls::None)
    }

    /// Starts a server that also requires TLS, with a CA and certificate generated for
    /// `127.0.0.1` by `kakehashi nats config --tls-name`; every identity's settings trust it.
    pub fn start_tls() -> Self {
        Self::start_configured(TEST_DEPARTMENTS, Tls::Server)
    }

    /// Starts a server that requires TLS and a client certificate from its CA
    /// (`--tls-verify-clients`); every identity's settings carry its certificate.
    pub fn start_mutual_tls() -> Self {
        Self::start_configured(TEST_DEPARTMENTS, Tls::Mutual)
    }

    fn start_configured(departments: &[&str], tls: Tls) -> Self {
        let store = tempfile::tempdir().expect("temp store dir");
        let plan = Plan {
            departments: departments.iter().map(|d| d.to_string()).collect(),
            out: store.path().join("auth"),
            tls_names: if tls == Tls::None {
                Vec::new()
            } else {
                vec!["127.0.0.1".into(), "localhost".into()]
            },
            tls_verify_clients: tls == Tls::Mutual,
            ..Plan::default()
        };
        let auth = nats_config::generate(&plan).expect("generate the NATS configuration");
        // nats-server resolves an include relative to the including file.
        let mut conf = String::from("include \"auth/auth.conf\"\n");
        if tls != Tls::None {
            conf.push_str("include \"auth/tls.conf\"\n");
        }
        std::fs::write(store.path().join("server.conf"), conf).expect("write server.conf");
        let (child, port) = spawn(store.path(), None).expect("a first start never reports a taken port");
        Self { child: Some(child), plan, store, port, auth, violations_expected: AtomicBool::new(false) }
    }

    /// Runs `kakehashi nats config` again on this server's configuration with `rotate` and
    /// `retire` (identity names), then makes the server reload it (SIGHUP), as an operator would.
    pub fn regenerate_and_reload(&self, rotate: &[&str], retire: &[&str]) {
        let plan = Plan {
            rotate: rotate.iter().map(|s| s.to_string()).collect(),
            retire: retire.iter().map(|s| s.to_string()).collect(),
            ..self.plan.clone()
        };
        nats_config::generate(&plan).expect("generate again");
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill -HUP");
        assert!(status.success(), "nats-server reload signal failed");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The generated configuration (credentials files, accounts section).
    pub fn generated(&self) -> &Generated {
        &self.auth
    }

    /// Connection settings of a service identity (trusting the server's CA under TLS, with
    /// its client certificate under mutual TLS).
    pub fn service_auth(&self, service: Service) -> NatsAuthConfig {
        self.identity_auth(service.name(), self.auth.service(service))
    }

    /// Connection settings of a department's identity, like [`Self::service_auth`].
    pub fn department_auth(&self, id: &str) -> NatsAuthConfig {
        self.identity_auth(&nats_config::department_identity(id), self.auth.department(id))
    }

    fn identity_auth(&self, identity: &str, credentials: PathBuf) -> NatsAuthConfig {
        let tls = self.auth.tls.as_ref();
        let client = tls.and_then(|t| t.client_cert(identity));
        NatsAuthConfig {
            credentials: Some(credentials),
            ca_file: tls.map(|t| t.ca_file.clone()),
            cert_file: client.as_ref().map(|c| c.0.clone()),
            key_file: client.map(|c| c.1),
        }
    }

    /// The credentials file of a department.
    pub fn department_creds(&self, id: &str) -> PathBuf {
        self.auth.department(id)
    }

    /// A client connected as `service`.
    pub async fn client_as(&self, service: Service) -> async_nats::Client {
        self.service_auth(service)
            .options(&format!("test-{}", service.name()))
            .expect("credentials")
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {}: {e}", service.name()))
    }

    /// A client with the break-glass `admin` identity, for tests that inspect streams.
    pub async fn admin(&self) -> async_nats::Client {
        self.client_as(Service::Admin).await
    }

    /// JetStream as the `admin` identity.
    pub async fn admin_js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.admin().await)
    }

    /// Kills the server with SIGKILL (file storage survives).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port was ours a moment ago; retry briefly in case the OS holds it.
            if let Some((child, _)) = spawn(self.store.path(), Some(self.port)) {
                self.child = Some(child);
                return;
            }
            assert!(Instant::now() < deadline, "nats-server did not come back on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl NatsServer {
    /// This test provokes permission violations on purpose (negative tests).
    pub fn expect_violations(&self) {
        self.violations_expected.store(true, Ordering::Relaxed);
    }

    /// The server's log lines about refused authentication or permissions.
    pub fn violations(&self) -> Vec<String> {
        violations_in(&self.store.path().join("nats-server.log"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let violations = self.violations();
        self.kill();
        check_violations(&violations, self.violations_expected.load(Ordering::Relaxed));
    }
}

/// The lines of a nats-server log about refused authentication or permissions.
pub(crate) fn violations_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Violation") || l.contains("Authentication") || l.contains("authorization"))
        .map(str::to_string)
        .collect()
}

/// On drop of a server: prints what it refused when the test failed anyway, otherwise fails the
/// test on any permission violation it did not expect.
pub(crate) fn check_violations(violations: &[String], expected: bool) {
    if std::thread::panicking() {
        // What the server refused is usually why a test failed.
        for line in violations.iter().take(40) {
            eprintln!("nats-server: {line}");
        }
    } else if !expected {
        // nats-server logs "Publish Violation" / "Subscription Violation" lines.
        let refused: Vec<&String> = violations.iter().filter(|l| l.contains(" Violation - ")).collect();
        assert!(refused.is_empty(), "a service identity was refused by NATS:\n{refused:#?}");
    }
}

/// Spawns the single-server configuration of `store` (JetStream stored in `store/js`).
fn spawn(store: &Path, port: Option<u16>) -> Option<(Child, u16)> {
    let mut args = vec![OsString::from("-js"), OsString::from("-sd"), store.join("js").into_os_string()];
    // Go's pprof (`KH_NATS_PROFILE_PORT`), for memory investigations in benches only: it has no
    // authentication, so it is never on by default, and it listens on the server's address,
    // loopback.
    if let Some(p) = std::env::var_os("KH_NATS_PROFILE_PORT") {
        args.extend([OsString::from("--profile"), p]);
    }
    spawn_server(store, &store.join("server.conf"), port, &args).map(|(child, ports)| (child, ports.client))
}

/// The listeners a nats-server reported in its ports file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Client port.
    pub client: u16,
    /// Cluster (route) port, when the configuration has a cluster block.
    pub cluster: Option<u16>,
    /// Monitoring (HTTP) port, when the configuration enables it.
    pub monitoring: Option<u16>,
}

/// Spawns nats-server with `conf` on loopback, its client port `port` (the OS picks when `None`)
/// and `args`, logging to `<dir>/nats-server.log` (appended), and learns its ports from the
/// ports file it writes into `<dir>/ports`. Returns `None` when a server asked for a fixed port
/// exited at start (the port is still held: the caller retries); panics on any other failure.
pub(crate) fn spawn_server(
    dir: &Path,
    conf: &Path,
    port: Option<u16>,
    args: &[OsString],
) -> Option<(Child, Ports)> {
    spawn_binary(&server_binary(), dir, conf, port, args)
}

/// [`spawn_server`] with another nats-server binary `bin` (say, one older than the bus needs).
pub fn spawn_binary(
    bin: &Path,
    dir: &Path,
    conf: &Path,
    port: Option<u16>,
    args: &[OsString],
) -> Option<(Child, Ports)> {
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).expect("ports dir");
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .args(["-a", "127.0.0.1", "-p", &port_arg])
        .args(args)
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .arg("-l")
        .arg(dir.join("nats-server.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed (bash deploy/scripts/ensure-tools.sh)");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(p) = read_ports(&ports_dir) {
            if wait_connectable(p.client) {
                return Some((child, p));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            if port.is_some() {
                return None;
            }
            panic!("nats-server exited at start: {status} (log: {})", dir.join("nats-server.log").display());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nats-server did not start within 15s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pinned nats-server, checked once per test binary against the minimum version the bus
/// needs ([`kakehashi_ctl::nats_server::MIN_VERSION`]).
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = kakehashi_ctl::nats_server::binary().unwrap_or_else(|e| panic!("{e}"));
        kakehashi_ctl::nats_server::check_version(&bin).unwrap_or_else(|e| panic!("{e}"));
        bin
    })
    .clone()
}

/// The ports file is written once every listener is up (all keys at once).
fn read_ports(dir: &Path) -> Option<Ports> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port_of = |key: &str| -> Option<u16> {
        let url = json.get(key)?.get(0)?.as_str()?;
        url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
    };
    Some(Ports { client: port_of("nats")?, cluster: port_of("cluster"), monitoring: port_of("monitoring") })
}

fn wait_connectable(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}
