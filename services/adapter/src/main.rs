//! `kakehashi-adapter`: with no command (or `serve`), reads configuration (`--config FILE` or
//! `KAKEHASHI_CONFIG`, then `KAKEHASHI_*` variables) and serves the Publisher gRPC API until
//! Ctrl-C or SIGTERM; `ingest` imports legacy files through a mapping and exits.
//!
//! Exit codes of `ingest`: 0 every file imported (rejected rows included), 1 a file failed
//! (I/O, checkpoint), 2 wrong arguments, mapping or event type, 3 the bus was unavailable
//! (a checkpoint was saved: run the same command again to resume).

use clap::{Parser, Subcommand, ValueEnum};
use kakehashi_adapter::config::AdapterConfig;
use kakehashi_adapter::import::{self, progress::ProgressBar, ImportError, ImportOptions};
use kakehashi_adapter::legacy::{IngestError, IngestLimits};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// The allocator: glibc's malloc/free were about a third of the registry's hot-path CPU
/// (docs/BENCHMARKS.md, "change 4").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kakehashi-adapter",
    version,
    about = "Kakehashi adapter: the Publisher gRPC API, and legacy file import"
)]
struct Cli {
    /// Configuration file (TOML; see deploy/config/adapter.toml).
    #[arg(long, global = true, env = "KAKEHASHI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Publisher gRPC API (the default).
    Serve,
    /// Import legacy files (CSV, fixed width; UTF-8 or Shift_JIS/CP932) as events, through a
    /// mapping (docs/legacy-mapping.md).
    Ingest(IngestArgs),
}

#[derive(clap::Args)]
struct IngestArgs {
    /// The mapping file (TOML).
    #[arg(long)]
    mapping: PathBuf,
    /// The department importing; defaults to the mapping's `source`.
    #[arg(long, env = "KAKEHASHI_SOURCE")]
    source: Option<String>,
    /// Checkpoint file (one input only); default <input>.checkpoint.json.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Reject file (one input only); default <input>.rejects.csv.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Publishes awaiting confirmation at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Seconds to keep retrying an unconfirmed publish before stopping with a checkpoint.
    #[arg(long, default_value_t = 60)]
    retry_for: u64,
    /// Rows between checkpoints (each costs an fsync).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Do not check payloads against their schema before sending (the bus then
    /// dead-letters rows that violate it, instead of the reject file listing them).
    #[arg(long)]
    no_validate: bool,
    /// Progress bar on stderr: auto (when stderr is a terminal), always or never.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// The files to import, in order.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressMode {
    Auto,
    Always,
    Never,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Some(Command::Ingest(_))) { "warn" } else { "info" };
    let _telemetry = match kakehashi_runtime::telemetry::init("kakehashi-adapter", default_level) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kakehashi-adapter: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match AdapterConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kakehashi-adapter: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        None | Some(Command::Serve) => serve(config).await,
        Some(Command::Ingest(args)) => ingest(config, args).await,
    }
}

async fn serve(config: AdapterConfig) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.grpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kakehashi-adapter: cannot listen on {}: {e}", config.grpc_addr);
            return ExitCode::from(1);
        }
    };
    match kakehashi_adapter::run(config, listener, kakehashi_runtime::settings::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-adapter: {e}");
            ExitCode::from(1)
        }
    }
}

async fn ingest(config: AdapterConfig, args: IngestArgs) -> ExitCode {
    let options = ImportOptions {
        source: args.source,
        checkpoint: args.checkpoint,
        rejects: args.rejects,
        window: args.window,
        retry: import::retry_for(args.retry_for),
        validate: !args.no_validate,
        limits: IngestLimits { checkpoint_every: args.checkpoint_every, ..IngestLimits::default() },
        ..ImportOptions::new(args.mapping, args.inputs)
    };
    let show = match args.progress {
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        ProgressMode::Always => true,
        ProgressMode::Never => false,
    };
    // One bar at a time: a new file's bar replaces (and clears) the previous one.
    let mut bar: Option<(PathBuf, ProgressBar)> = None;
    let result = import::run(&config, &options, |job, progress| {
        if bar.as_ref().is_none_or(|(input, _)| *input != job.input) {
            let label = job.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some((_, mut previous)) = bar.take() {
                previous.finish();
            }
            bar = Some((job.input.clone(), ProgressBar::new(label, show)));
        }
        if let Some((_, b)) = bar.as_mut() {
            b.update(progress);
        }
    })
    .await;
    drop(bar);
    let reports = match result {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("kakehashi-adapter ingest: {e}");
            return ExitCode::from(match e {
                ImportError::Connect(_) => 3,
                ImportError::Usage(_) | ImportError::Mapping(_) | ImportError::UnknownType(_) => 2,
            });
        }
    };
    let mut code = 0u8;
    for report in &reports {
        print!("{}", report.render());
        code = code.max(match &report.outcome {
            Ok(_) => 0,
            Err(IngestError::Sink { .. }) => 3,
            Err(IngestError::Mapping(_) | IngestError::SourceMismatch { .. }) => 2,
            Err(_) => 1,
        });
    }
    if reports.len() < options.inputs.len() {
        println!("{} file(s) not started: the bus is unavailable", options.inputs.len() - reports.len());
    }
    ExitCode::from(code)
}
