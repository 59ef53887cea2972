//! A `nats-server -js` child process owned by one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or killed) nats-server with its own store directory.
pub struct NatsServer {
    child: Option<Child>,
    store: tempfile::TempDir,
    port: u16,
}

impl NatsServer {
    /// Starts a server on a port the OS picks; panics with a clear message if it cannot.
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("temp store dir");
        let (child, port) = spawn(store.path(), None);
        Self { child: Some(child), store, port }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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
            let (child, port) = spawn(self.store.path(), Some(self.port));
            if port == self.port {
                self.child = Some(child);
                return;
            }
            assert!(Instant::now() < deadline, "nats-server did not come back on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns nats-server and learns its port from the ports file it writes.
fn spawn(store: &Path, port: Option<u16>) -> (Child, u16) {
    let ports_dir = store.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).expect("ports dir");
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store.join("js"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed (apt-get install -y nats-server)");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(p) = read_port(&ports_dir) {
            if wait_connectable(p) {
                return (child, p);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            if port.is_some() {
                return (child, 0);
            }
            panic!("nats-server exited at start: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nats-server did not start within 15s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_port(dir: &PathBuf) -> Option<u16> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

fn wait_connectable(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}
