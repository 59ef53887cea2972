//! `kakehashi`: parses the command line, runs it, and reports any failure in one line.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Quiet by default (the CLI prints its own results); the dev bus's services log warnings.
    let _telemetry = match kakehashi_runtime::telemetry::init("kakehashi", "warn") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kakehashi: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = kakehashi_ctl::cli::Cli::parse();
    match kakehashi_ctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
