//! `kakehashi-issuer`: the vaccination certificate issuer department.
//!
//! ```text
//! kakehashi-issuer [--config FILE]                          run until Ctrl-C or SIGTERM
//! kakehashi-issuer [--config FILE] new-key                  add a signing key (rotation; signs after a restart)
//! kakehashi-issuer [--config FILE] revoke KID RID [UNTIL]   revoke a rid in KID's list (cards with nbf <= UNTIL)
//! ```
//!
//! Configuration: `--config FILE` or `KAKEHASHI_CONFIG`, then `KAKEHASHI_*` variables
//! (`deploy/config/issuer.toml`). A failure is reported in one line, exit code 1 (2 for usage
//! and configuration).

use kakehashi_issuer::service::{self, config::IssuerConfig, keys};
use std::process::ExitCode;

const NAME: &str = "kakehashi-issuer";

fn usage() -> ExitCode {
    eprintln!("usage: {NAME} [--config FILE] [new-key | revoke KID RID [UNTIL_UNIX_SECONDS]]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--config" {
            it.next();
        } else if a == "-h" || a == "--help" {
            return usage();
        } else {
            args.push(a);
        }
    }
    let file = kakehashi_runtime::settings::config_path();
    let config = match IssuerConfig::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(2);
        }
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["new-key"] => {
            return match keys::generate_key(&config.key_dir()) {
                Ok((path, key)) => {
                    println!(
                        "new signing key {} in {} (signs new cards after a restart)",
                        key.kid(),
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{NAME}: {e}");
                    ExitCode::from(1)
                }
            };
        }
        ["revoke", kid, rid, rest @ ..] if rest.len() <= 1 => {
            let until = match rest.first().map(|t| t.parse::<i64>()) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(_)) => return usage(),
            };
            let result = keys::KeyStore::open(&config.key_dir(), &config.data_dir)
                .and_then(|store| store.revoke(kid, rid, until));
            return match result {
                Ok(list) => {
                    println!("revoked {rid} for key {kid}; list version {}", list.ctr);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{NAME}: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => return usage(),
    }
    let _telemetry = match kakehashi_runtime::telemetry::init(NAME, "info") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(2);
        }
    };
    match service::run(config, kakehashi_runtime::settings::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::from(1)
        }
    }
}
