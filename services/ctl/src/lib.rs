//! The `kakehashi` command line, as a library so tests can drive the same code.
//!
//! Layout: [`cli`] (arguments), [`commands`] (one module per subcommand group), [`catalogue`]
//! (schema folders on disk), [`clients`] (gRPC connections), [`output`] (text or JSON),
//! [`error`] (one-line errors), [`pki`] (run-time CA and certificates).

pub mod catalogue;
pub mod cli;
pub mod clients;
pub mod commands;
pub mod error;
pub mod grpc_tokens;
pub mod https_client;
pub mod nats_client;
pub mod nats_config;
pub mod nats_server;
pub mod output;
pub mod pki;

/// Runs a parsed command line.
pub async fn run(cli: cli::Cli) -> Result<(), error::CtlError> {
    use cli::Command;
    match cli.command {
        Command::Dev(a) => commands::dev::run(&cli.conn, a).await,
        Command::Schema(c) => commands::schema::run(&cli.conn, cli.json, c).await,
        Command::Policy(c) => commands::policy::run(&cli.conn, cli.json, c).await,
        Command::Sub(c) => commands::sub::run(&cli.conn, cli.json, c).await,
        Command::Dlq(c) => commands::dlq::run(&cli.conn, cli.json, c).await,
        Command::Publish(a) => commands::publish::run(&cli.conn, cli.json, a).await,
        Command::Trace(a) => commands::trace::run(&cli.conn, cli.json, a).await,
        Command::Audit(cli::AuditCommand::Verify { max_age_secs }) => {
            commands::audit::verify(&cli.conn, cli.json, std::time::Duration::from_secs(max_age_secs)).await
        }
        Command::Nats(cli::NatsCommand::Config(a)) => commands::nats::config(cli.json, a),
        Command::Cert(c) => commands::cert::run(&cli.conn, cli.json, c).await,
        Command::Metrics(cli::MetricsCommand::Token(a)) => {
            let written = commands::secrets::metrics_token(&a.out)?;
            output::emit(cli.json, serde_json::json!({ "file": a.out, "written": written }), || {
                let what = if written { "holds a new" } else { "already holds a" };
                format!(
                    "{} {what} metrics scrape token (a secret: services and scraper only)",
                    a.out.display()
                )
            });
            Ok(())
        }
        Command::Tls(cli::TlsCommand::Server(a)) => {
            let (cert, written) = commands::secrets::server_certificate(&a.out, &a.file, &a.names)?;
            output::emit(cli.json, serde_json::json!({ "certificate": cert, "written": written }), || {
                let what = if written { "written" } else { "kept" };
                format!("{} {what} (CA: {})", cert.display(), a.out.join("ca.pem").display())
            });
            Ok(())
        }
        Command::Grpc(cli::GrpcCommand::Tokens(a)) => {
            let departments = a.departments.iter().map(|d| d.trim().to_string()).collect();
            let tokens = grpc_tokens::ensure(&a.out, &departments)?;
            output::emit(
                cli.json,
                serde_json::json!({ "file": a.out, "departments": tokens.keys().collect::<Vec<_>>() }),
                || {
                    format!("{} holds a token for {} departments (secrets: hand each department only its own line)", a.out.display(), tokens.len())
                },
            );
            Ok(())
        }
    }
}
