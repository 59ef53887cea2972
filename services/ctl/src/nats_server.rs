//! For `kakehashi dev`: use the nats-server at the configured URL, or start one (JetStream,
//! store under the data dir) when none answers there.

use crate::error::CtlError;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
