//! `kakehashi-registry`: reads configuration (`--config FILE` or `KAKEHASHI_CONFIG`, then
//! `KAKEHASHI_*` variables) and runs the registry until Ctrl-C or SIGTERM.

use kakehashi_registry::config::RegistryConfig;
use std::process::ExitCode;

/// The allocator: glibc's malloc/free were about a third of the registry's hot-path CPU
/// (docs/BENCHMARKS.md, "change 4").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = match kakehashi_runtime::telemetry::init("kakehashi-registry", "info") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kakehashi-registry: {e}");
            return ExitCode::from(2);
        }
    };
    let file = kakehashi_runtime::settings::config_path();
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
    match kakehashi_registry::run(config, listener, kakehashi_runtime::settings::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-registry: {e}");
            ExitCode::from(1)
        }
    }
}
