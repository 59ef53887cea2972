//! `kakehashi-console`: reads configuration (`--config FILE` or `KAKEHASHI_CONFIG`, then
//! `KAKEHASHI_*` variables) and serves the web console until Ctrl-C or SIGTERM.

use kakehashi_console::config::ConsoleConfig;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = match kakehashi_runtime::telemetry::init("kakehashi-console", "info") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kakehashi-console: {e}");
            return ExitCode::from(2);
        }
    };
    let file = kakehashi_runtime::settings::config_path();
    let config = match ConsoleConfig::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kakehashi-console: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kakehashi-console: cannot listen on {}: {e}", config.listen_addr);
            return ExitCode::from(1);
        }
    };
    match kakehashi_console::run(config, listener, kakehashi_runtime::settings::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-console: {e}");
            ExitCode::from(1)
        }
    }
}
