//! A registry started against a nats-server older than the bus needs refuses to start, with one
//! line that names the version it found and the minimum, before it creates anything on the
//! server. The old server is Debian's `nats-server` 2.9 (unpacked, not installed, by
//! `deploy/scripts/ensure-tools.sh --with-interop-clients`; `KH_TEST_OLD_NATS_SERVER` names
//! another), secured with the same generated accounts as every test server.

use futures::TryStreamExt as _;
use kakehashi_ctl::nats_config::{self, permissions::Service, Plan};
use kakehashi_runtime::topology::{parse_server_version, MIN_SERVER_VERSION};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The old server: `KH_TEST_OLD_NATS_SERVER`, else where ensure-tools.sh unpacks Debian's.
fn old_server() -> PathBuf {
    if let Some(p) = std::env::var_os("KH_TEST_OLD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("KAKEHASHI_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kakehashi"));
    tools.join("nats-server-debian/usr/sbin/nats-server")
}

/// Kills the child on drop, so a failing assertion does not leave the old server running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_registry_refuses_a_nats_server_older_than_the_minimum_before_creating_anything() {
    let bin = old_server();
    assert!(
        bin.exists(),
        "{} is missing: run bash deploy/scripts/ensure-tools.sh --with-interop-clients (or set KH_TEST_OLD_NATS_SERVER)",
        bin.display()
    );
    let version = Command::new(&bin).arg("--version").output().expect("old nats-server --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let found = version.split_whitespace().find_map(parse_server_version).expect("a version");
    assert!(found < MIN_SERVER_VERSION, "{} is {version}: not older than the minimum", bin.display());

    let dir = tempfile::tempdir().expect("temp dir");
    let plan =
        Plan { departments: vec!["city-shibuya".into()], out: dir.path().join("auth"), ..Plan::default() };
    let auth = nats_config::generate(&plan).expect("generate the NATS configuration");
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, "include \"auth/auth.conf\"\n").expect("write server.conf");
    let args = [OsString::from("-js"), OsString::from("-sd"), dir.path().join("js").into_os_string()];
    let (server, ports) = kakehashi_tests::nats::spawn_binary(&bin, dir.path(), &conf, None, &args)
        .expect("old server started");
    let _server = KillOnDrop(server);
    let url = format!("nats://127.0.0.1:{}", ports.client);

    let log = dir.path().join("registry.log");
    let mut registry = Command::new(kakehashi_tests::process::registry_bin())
        .env("KAKEHASHI_NATS_URL", &url)
        .env("KAKEHASHI_NATS_CREDENTIALS", auth.service(Service::Registry))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn kh-registry");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = registry.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = registry.kill();
            panic!(
                "the registry kept running on {version}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "the registry exited successfully on {version}: {stderr}");
    let wanted = format!("older than {}.{}", MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1);
    let line = stderr.lines().find(|l| l.contains(&wanted));
    let line = line.unwrap_or_else(|| panic!("no line saying `{wanted}`:\n{stderr}"));
    assert!(line.contains(&format!("{}.{}.", found.0, found.1)), "the line does not name {version}: {line}");
    assert!(line.contains("ensure-tools.sh"), "the line does not say what to do: {line}");

    // Nothing was created on the old server: no stream, no bucket.
    let admin = kakehashi_runtime::nats_auth::NatsAuthConfig {
        credentials: Some(auth.service(Service::Admin)),
        ..Default::default()
    };
    let admin = admin.options("test-admin").expect("admin credentials").connect(&url).await;
    let admin = admin.expect("admin connects to the old server");
    let js = async_nats::jetstream::new(admin);
    let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    assert!(names.is_empty(), "the registry created streams on a server it refused: {names:?}");
}
