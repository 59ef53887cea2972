//! `kh-registry`: the registry as a separate OS process for tests that SIGKILL it.
//!
//! Configuration comes the way the real binary reads it (`KAKEHASHI_CONFIG` TOML file, then
//! `KAKEHASHI_*` variables), except the listen address: it binds `127.0.0.1:0` itself and prints
//! `LISTENING <addr>` on stdout, so the test harness learns the port without probing for a free
//! one. Logs and traces are set up as in the real binary (`RUST_LOG`, default `warn`; OTLP export
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).

use kakehashi_registry::config::RegistryConfig;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = match kakehashi_runtime::telemetry::init("kakehashi-registry", "warn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kh-registry: {e}");
            return ExitCode::from(2);
        }
    };
    let file = std::env::var_os("KAKEHASHI_CONFIG").map(PathBuf::from);
    let config = match RegistryConfig::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kh-registry: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kh-registry: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kh-registry: no local address: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "LISTENING {addr}").and_then(|()| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    drop(out);
    // The test ends this process with SIGKILL; no graceful shutdown signal is needed.
    match kakehashi_registry::run(config, listener, std::future::pending()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kh-registry: {e}");
            ExitCode::from(1)
        }
    }
}
