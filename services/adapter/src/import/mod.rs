//! `kakehashi-adapter ingest`: legacy files onto the bus through a declarative mapping.
//!
//! [`run`] is the whole command: load the mapping, decide the department, connect, check that
//! the event type has a schema, then import each input with [`crate::legacy::ingest`] through a
//! [`NatsSink`], with a progress bar and a [`FileReport`] per file. [`import`] does the same
//! over a [`Bus`] the caller already has (the dev bus's demo uses it).
//!
//! Layout: [`sink`] (the NATS sink), [`progress`] (the progress bar and number formatting).

pub mod progress;
pub mod sink;

pub use sink::NatsSink;

use crate::config::AdapterConfig;
use crate::legacy::{self, IngestError, IngestJob, IngestLimits, Mapping, MappingError, Progress, Summary};
use crate::schemas::SchemaError;
use crate::sdk::{Bus, ConnectError, Retry};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `ingest` can be told.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The mapping file (TOML, see `docs/legacy-mapping.md`).
    pub mapping: PathBuf,
    /// The files to import, in order.
    pub inputs: Vec<PathBuf>,
    /// The department importing (its identity); defaults to the mapping's `source`.
    pub source: Option<String>,
    /// Checkpoint file (one input only); default `<input>.checkpoint.json`.
    pub checkpoint: Option<PathBuf>,
    /// Reject file (one input only); default `<input>.rejects.csv`.
    pub rejects: Option<PathBuf>,
    /// Unconfirmed publishes in flight.
    pub window: usize,
    /// Retry policy for publishes; when it gives up the import stops with a checkpoint.
    pub retry: Retry,
    /// Check payloads against their schema before sending (rejects with line numbers).
    pub validate: bool,
    /// Row limits, checkpoint and progress intervals.
    pub limits: IngestLimits,
}

impl ImportOptions {
    /// Defaults: window 256, standard retries, validation on, default limits.
    pub fn new(mapping: impl Into<PathBuf>, inputs: Vec<PathBuf>) -> Self {
        Self {
            mapping: mapping.into(),
            inputs,
            source: None,
            checkpoint: None,
            rejects: None,
            window: 256,
            retry: Retry::default(),
            validate: true,
            limits: IngestLimits::default(),
        }
    }

    /// One job per input, with its checkpoint and reject file.
    pub fn jobs(&self, source: &str) -> Result<Vec<IngestJob>, ImportError> {
        if self.inputs.is_empty() {
            return Err(ImportError::Usage("no input file given".into()));
        }
        if self.inputs.len() > 1 && (self.checkpoint.is_some() || self.rejects.is_some()) {
            return Err(ImportError::Usage(
                "--checkpoint and --rejects name one file each, so they need exactly one input; \
                 without them each input gets <input>.checkpoint.json and <input>.rejects.csv"
                    .into(),
            ));
        }
        Ok(self
            .inputs
            .iter()
            .map(|input| IngestJob {
                input: input.clone(),
                source: source.to_string(),
                checkpoint: self.checkpoint.clone().unwrap_or_else(|| with_suffix(input, ".checkpoint.json")),
                rejects: self.rejects.clone().unwrap_or_else(|| with_suffix(input, ".rejects.csv")),
                limits: self.limits,
            })
            .collect())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Why an import could not start (per-file failures are in the [`FileReport`]s).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Wrong or missing arguments.
    #[error("{0}")]
    Usage(String),
    /// The mapping file is unreadable or invalid.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The bus could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The mapping's event type (or pinned version) has no schema in the registry.
    #[error("{0} (register it first, e.g. `kakehashi schema register`)")]
    UnknownType(#[from] SchemaError),
}

/// What happened to one input.
#[derive(Debug)]
pub struct FileReport {
    /// The input, its reject file and checkpoint.
    pub job: IngestJob,
    /// The run's counts, or why it stopped.
    pub outcome: Result<Summary, IngestError>,
}

impl FileReport {
    /// Whether this file stopped because the bus was unavailable (a restart resumes it).
    pub fn bus_unavailable(&self) -> bool {
        matches!(self.outcome, Err(IngestError::Sink { .. }))
    }

    /// The summary printed at the end of an import.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let job = &self.job;
        let _ = writeln!(out, "{}", job.input.display());
        match &self.outcome {
            Ok(s) if s.already_complete => {
                let _ = writeln!(
                    out,
                    "  already imported completely (checkpoint {}); delete the checkpoint to import it again",
                    job.checkpoint.display()
                );
            }
            Ok(s) => {
                let resumed = match s.resumed_from_line {
                    Some(line) => format!("line {line} (checkpoint {})", job.checkpoint.display()),
                    None => "the start".into(),
                };
                let rate = progress::per_second(s.rows_total, s.elapsed);
                let _ = writeln!(out, "  rows        {}", progress::thousands(s.rows_total));
                let _ = writeln!(out, "  published   {}", progress::thousands(s.published));
                let _ = writeln!(
                    out,
                    "  duplicates  {}  (already on the bus)",
                    progress::thousands(s.duplicates)
                );
                let _ = writeln!(
                    out,
                    "  rejected    {}  (reasons in {})",
                    progress::thousands(s.rejected),
                    job.rejects.display()
                );
                let _ = writeln!(out, "  resumed     from {resumed}");
                let _ = writeln!(
                    out,
                    "  rate        {} rows/s  ({:.2} s)",
                    progress::thousands(rate),
                    s.elapsed.as_secs_f64()
                );
            }
            Err(e @ IngestError::Sink { .. }) => {
                let _ = writeln!(out, "  stopped: {e}");
                let _ = writeln!(
                    out,
                    "  checkpoint saved in {}: run the same command again to resume there",
                    job.checkpoint.display()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  failed: {e}");
            }
        }
        out
    }
}

/// The department importing: `--source`, else the mapping's `source`.
pub fn department(source: Option<&str>, mapping: &Mapping) -> Result<String, ImportError> {
    if let (Some(given), Some(named)) = (source, mapping.source.as_deref()) {
        if given != named {
            return Err(ImportError::Usage(format!(
                "the mapping is for department {named}; {given} may not import with it"
            )));
        }
    }
    source.or(mapping.source.as_deref()).map(str::to_string).ok_or_else(|| {
        ImportError::Usage(
            "which department is importing? give --source <department> (or KAKEHASHI_SOURCE), \
             or name it in the mapping's `source`"
                .into(),
        )
    })
}

/// The whole `ingest` command: connects with `config`'s NATS settings and imports every input.
/// `progress` receives each file's progress (e.g. a [`progress::ProgressBar`]).
pub async fn run<P>(
    config: &AdapterConfig,
    options: &ImportOptions,
    progress: P,
) -> Result<Vec<FileReport>, ImportError>
where
    P: FnMut(&IngestJob, Progress),
{
    let mapping = Mapping::load(&options.mapping)?;
    let source = department(options.source.as_deref(), &mapping)?;
    let jobs = options.jobs(&source)?;
    let bus = Bus::builder(&config.nats_url, &source)
        .name(format!("{}-ingest", config.instance))
        .retry(options.retry)
        .max_payload_bytes(config.max_payload_bytes)
        .topology(Some(config.topology.clone()))
        // After the topology: a department's credentials switch it off (it may not create streams).
        .nats_auth(config.nats_auth.clone())
        .connect()
        .await?;
    import(&bus, &mapping, &jobs, options.window, options.validate, progress).await
}

/// Imports `jobs` one after the other through `bus`. Stops early only when the bus is
/// unavailable (that file's report says so; a restart resumes from its checkpoint).
pub async fn import<P>(
    bus: &Bus,
    mapping: &Mapping,
    jobs: &[IngestJob],
    window: usize,
    validate: bool,
    mut progress: P,
) -> Result<Vec<FileReport>, ImportError>
where
    P: FnMut(&IngestJob, Progress),
{
    if let Some(schemas) = bus.schemas() {
        schemas.resolve(&mapping.event_type, mapping.schema_version.unwrap_or(0)).await?;
    }
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut sink = NatsSink::new(bus, window, validate);
        let outcome = legacy::ingest(job, mapping, &mut sink, |p| progress(job, p)).await;
        let report = FileReport { job: job.clone(), outcome };
        let stop = report.bus_unavailable();
        reports.push(report);
        if stop {
            break;
        }
    }
    Ok(reports)
}

/// A retry policy that gives up after `secs` seconds.
pub fn retry_for(secs: u64) -> Retry {
    Retry { give_up_after: Duration::from_secs(secs), ..Retry::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_input_gets_its_own_checkpoint_and_rejects_by_default() {
        let options = ImportOptions::new("m.toml", vec!["a.csv".into(), "dir/b.csv".into()]);
        let jobs = options.jobs("city-shibuya").map_err(|e| e.to_string());
        let paths = jobs.map(|j| {
            j.iter().map(|j| (j.checkpoint.display().to_string(), j.rejects.display().to_string())).collect()
        });
        let expected: Vec<(String, String)> = vec![
            ("a.csv.checkpoint.json".into(), "a.csv.rejects.csv".into()),
            ("dir/b.csv.checkpoint.json".into(), "dir/b.csv.rejects.csv".into()),
        ];
        assert_eq!(paths, Ok(expected));
    }

    #[test]
    fn explicit_checkpoint_needs_a_single_input() {
        let mut options = ImportOptions::new("m.toml", vec!["a.csv".into(), "b.csv".into()]);
        options.checkpoint = Some("c.json".into());
        assert!(matches!(options.jobs("x"), Err(ImportError::Usage(_))));
        options.inputs.pop();
        let jobs = options.jobs("x").map(|j| j[0].checkpoint.clone());
        assert_eq!(jobs.ok(), Some(PathBuf::from("c.json")));
    }

    #[test]
    fn department_comes_from_the_flag_or_the_mapping() {
        let text = |source: &str| {
            format!(
                "event_type = \"a.b\"\n{source}format = \"csv\"\nheader = true\nkey = [\"k\"]\n\
                 [[fields]]\ntarget = \"/k\"\ncolumn = \"k\"\n"
            )
        };
        let named = Mapping::from_toml(&text("source = \"city-shibuya\"\n")).ok();
        let unnamed = Mapping::from_toml(&text("")).ok();
        let (Some(named), Some(unnamed)) = (named, unnamed) else { panic!("mappings should parse") };
        assert_eq!(department(None, &named).ok().as_deref(), Some("city-shibuya"));
        assert_eq!(department(Some("mhlw"), &unnamed).ok().as_deref(), Some("mhlw"));
        assert!(matches!(department(None, &unnamed), Err(ImportError::Usage(_))));
        assert!(matches!(department(Some("mhlw"), &named), Err(ImportError::Usage(_))));
    }
}
