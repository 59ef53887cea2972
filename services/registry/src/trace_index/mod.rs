//! The trace index: which `KH_AUDIT` records hold an event's hops. Every registry keeps its
//! own, in an embedded file (a temporary one unless configured), fed by an ordered consumer reading the whole audit
//! stream and rebuildable from it: the stream stays the tamper-evident source, the index only
//! says where to look. It replaces a subject per event, which nats-server kept in memory for
//! the whole audit retention (`docs/architecture.md`, *Audit trail and traces*).

mod feed;
mod store;

pub use store::{IndexError, Indexed, Store};

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where and how the trace index is kept (`[trace_index]` of the registry's configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceIndexConfig {
    /// The index file (`KAKEHASHI_TRACE_INDEX_PATH`); none = an unnamed temporary file in
    /// `TMPDIR`, read again from the whole of `KH_AUDIT` at every start.
    pub path: Option<PathBuf>,
    /// Most memory the index's page cache takes, in MiB.
    pub cache_mb: usize,
    /// How long `TraceEvent` waits for the index to reach the end of `KH_AUDIT` before it
    /// answers `UNAVAILABLE`, in milliseconds.
    pub catch_up_ms: u64,
    /// How often what was indexed is committed to disk, in milliseconds (in between, commits
    /// are not flushed; after a crash the index reads the stream again from the last one).
    pub durable_every_ms: u64,
}

impl Default for TraceIndexConfig {
    fn default() -> Self {
        Self { path: None, cache_mb: 64, catch_up_ms: 2000, durable_every_ms: 1000 }
    }
}

/// Why an event's records could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The index has not read the audit stream up to where it ended when asked.
    #[error(
        "the trace index has read the audit trail up to record {applied} of {target}; try again shortly"
    )]
    Behind { applied: u64, target: u64 },
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] IndexError),
    /// The lookup task failed.
    #[error("trace index lookup failed: {0}")]
    Task(String),
}

/// A registry's trace index: a handle to the store and to how far it has read.
#[derive(Clone)]
pub struct TraceIndex {
    store: Arc<Store>,
    applied: watch::Receiver<u64>,
    catch_up: Duration,
}

impl TraceIndex {
    /// Opens the index and starts feeding it from `KH_AUDIT`, from where it left off; index
    /// tables older than `retention` (the stream's `max_age`) are dropped as they expire. It
    /// stops reading when `stop` turns true; the file is closed once the returned task has
    /// ended and every handle is dropped.
    pub fn start(
        js: async_nats::jetstream::Context,
        config: &TraceIndexConfig,
        retention: Duration,
        stop: watch::Receiver<bool>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), IndexError> {
        if config.path.is_none() {
            tracing::info!(
                "trace index in a temporary file (set trace_index.path to keep it across restarts)"
            );
        }
        let store = Arc::new(Store::open(config.path.as_deref(), config.cache_mb.max(1) << 20)?);
        let (tx, applied) = watch::channel(store.applied().map_err(IndexError::Store)?);
        let durable_every = Duration::from_millis(config.durable_every_ms.max(10));
        let feed = tokio::spawn(feed::run(js, store.clone(), tx, retention, durable_every, stop));
        Ok((Self { store, applied, catch_up: Duration::from_millis(config.catch_up_ms) }, feed))
    }

    /// The last `KH_AUDIT` sequence indexed.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Follows the last `KH_AUDIT` sequence indexed, without holding the index open.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The `KH_AUDIT` sequences of the records naming `event_id`, once the index has read up to
    /// `target` (the stream's last sequence when the question was asked), so a trace shows
    /// every hop stored before it.
    pub async fn records_of(&self, event_id: &str, target: u64) -> Result<Vec<u64>, LookupError> {
        let mut applied = self.applied.clone();
        let reached = matches!(
            tokio::time::timeout(self.catch_up, applied.wait_for(|a| *a >= target)).await,
            Ok(Ok(_))
        );
        if !reached {
            return Err(LookupError::Behind { applied: self.applied(), target });
        }
        let (store, id) = (self.store.clone(), event_id.to_string());
        tokio::task::spawn_blocking(move || store.lookup(&id))
            .await
            .map_err(|e| LookupError::Task(e.to_string()))?
            .map_err(|e| LookupError::Store(IndexError::Store(e)))
    }
}
