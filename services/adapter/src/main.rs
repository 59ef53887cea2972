//! `kakehashi-adapter`: reads configuration (`--config FILE` or `KAKEHASHI_CONFIG`, then
//! `KAKEHASHI_*` variables) and runs the adapter until Ctrl-C or SIGTERM.

use kakehashi_adapter::config::AdapterConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let file = config_path();
    let config = match AdapterConfig::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kakehashi-adapter: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.grpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kakehashi-adapter: cannot listen on {}: {e}", config.grpc_addr);
            return ExitCode::from(1);
        }
    };
    match kakehashi_adapter::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-adapter: {e}");
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
