//! `kakehashi-registry`: reads configuration (`--config FILE` or `KAKEHASHI_CONFIG`, then
//! `KAKEHASHI_*` variables) and runs the registry until Ctrl-C or SIGTERM.

use kakehashi_registry::config::RegistryConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = match kakehashi_proto::telemetry::init("kakehashi-registry", "info") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kakehashi-registry: {e}");
            return ExitCode::from(2);
        }
    };
    let file = config_path();
    let config = match RegistryConfig::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kakehashi-registry: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.grpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kakehashi-registry: cannot listen on {}: {e}", config.grpc_addr);
            return ExitCode::from(1);
        }
    };
    match kakehashi_registry::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-registry: {e}");
            ExitCode::from(1)
        }
    }
}

fn config_path() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
    }
    std::env::var_os("KAKEHASHI_CONFIG").map(PathBuf::from)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}
