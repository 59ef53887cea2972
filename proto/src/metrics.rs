//! Prometheus metrics: a small registry of counters, gauges and histograms, rendered in the
//! text exposition format 0.0.4, and a minimal HTTP/1.1 endpoint ([`serve`]) to scrape it.
//!
//! Hand-written on purpose: the whole thing is a few atomics, a sorted list of series per family
//! and a formatter, and every service of ours needs exactly this much.
//!
//! Layout:
//! - [`Registry`]: the metric families of one process; cheap to clone (an `Arc` inside).
//! - [`CounterVec`] / [`Counter`], [`GaugeVec`] / [`Gauge`], [`HistogramVec`] / [`Histogram`]:
//!   a family and one series of it. [`Registry::gauge_fn`] registers a gauge computed at scrape
//!   time instead.
//! - [`serve`]: `GET /metrics` and `GET /healthz` over a listener the caller has bound.
//!
//! # Usage
//!
//! Register families once at start-up (names are constants of our code), keep the handles,
//! and on the hot path keep the per-series handle too when the label values are known:
//! [`Counter::inc`] is then a single atomic add. [`CounterVec::with`] takes a read lock and
//! does a binary search, without allocating once the series exists.
//!
//! ```
//! use kakehashi_proto::metrics::{Registry, DEFAULT_LATENCY_BUCKETS};
//!
//! let registry = Registry::new();
//! let published = registry.counter(
//!     "kh_events_published_total",
//!     "Events accepted on ingress.",
//!     &["department", "event_type"],
//! );
//! let latency = registry.histogram(
//!     "kh_publish_seconds",
//!     "Time from receipt to acknowledgement.",
//!     &[],
//!     DEFAULT_LATENCY_BUCKETS,
//! );
//!
//! // Label values come from data: any string is fine, nothing here can panic.
//! published.with(&["tax", "income.filed"]).inc();
//! latency.with(&[]).observe(0.003);
//!
//! let text = registry.render();
//! assert!(text.contains(
//!     r#"kh_events_published_total{department="tax",event_type="income.filed"} 1"#
//! ));
//! ```
//!
//! Serving it, with the listener bound by the caller (tests bind `127.0.0.1:0`):
//!
//! ```no_run
//! # async fn run(registry: kakehashi_proto::metrics::Registry) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9464").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! kakehashi_proto::metrics::serve(registry, listener, shutdown).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Names and label values
//!
//! Metric names must match `[a-zA-Z_:][a-zA-Z0-9_:]*` and label names
//! `[a-zA-Z_][a-zA-Z0-9_]*` (not starting with `__`, as the format reserves those). They are
//! checked at registration, which **panics** on a bad one. That is acceptable only because every
//! name in our code is a compile-time constant, so a bad name fails the first test that touches
//! it; never build a metric or label name from data.
//!
//! Label *values* do come from data (department ids, event types) and never cause a panic:
//! they are escaped on output (backslash, double quote, newline), and a call with the wrong
//! number of values is folded into the overflow series (below) with a logged error.
//!
//! # Bounded cardinality
//!
//! Each family holds at most [`Registry::series_limit`] distinct label sets
//! ([`DEFAULT_SERIES_LIMIT`] unless set with [`Registry::with_series_limit`]). Once a family is
//! full, every *new* label set is folded into one extra series whose label values are all
//! [`OVERFLOW_LABEL_VALUE`] (`_overflow`), and a warning is logged once per family. Existing
//! series keep counting normally. So a flood of distinct event types costs at most
//! `limit + 1` series per family, never unbounded memory. What the overflow series means:
//! - counters and histograms: the sum of everything folded into it;
//! - [`GaugeVec`]: one shared cell, so the last [`Gauge::set`] among the folded series wins;
//! - [`Registry::gauge_fn`]: the sum of the folded values (for lag: the total lag of the
//!   subscriptions that did not fit).

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Distinct label sets a family holds, by default, before new ones fold into `_overflow`.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;

/// The label value of the series that absorbs label sets beyond the limit.
pub const OVERFLOW_LABEL_VALUE: &str = "_overflow";

/// Histogram bounds, in seconds, for request and processing latencies (5 ms to 10 s).
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `Content-Type` of a scrape response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// The metric families of one process. Clones share the same families.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    /// Cap on distinct label sets per family; see the module doc.
    series_limit: usize,
    /// Families by name: a `BTreeMap` so rendering is sorted by name for free.
    families: Mutex<BTreeMap<String, Arc<Family>>>,
}

/// One registered family: what its HELP and TYPE lines say, and where its series live.
struct Family {
    name: String,
    help: String,
    label_names: Arc<[String]>,
    kind: Kind,
}

enum Kind {
    Counter(Arc<SeriesSet<AtomicU64>>),
    /// Cells hold `f64` bits.
    Gauge(Arc<SeriesSet<AtomicU64>>),
    GaugeFn(Box<GaugeCallback>),
    Histogram {
        set: Arc<SeriesSet<HistogramCell>>,
        bounds: Arc<[f64]>,
    },
}

type GaugeCallback = dyn Fn() -> Vec<(Vec<String>, f64)> + Send + Sync;

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let families = self.inner.families.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Registry")
            .field("series_limit", &self.inner.series_limit)
            .field("families", &families.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry with the default cap of [`DEFAULT_SERIES_LIMIT`] label sets per family.
    pub fn new() -> Self {
        Self::with_series_limit(DEFAULT_SERIES_LIMIT)
    }

    /// An empty registry whose families each hold at most `limit` distinct label sets before
    /// folding new ones into the `_overflow` series (`0` folds every labelled series).
    pub fn with_series_limit(limit: usize) -> Self {
        Self { inner: Arc::new(RegistryInner { series_limit: limit, families: Mutex::new(BTreeMap::new()) }) }
    }

    /// The cap on distinct label sets per family.
    pub fn series_limit(&self) -> usize {
        self.inner.series_limit
    }

    /// Registers a counter family (by convention named `..._total`).
    ///
    /// Registering the same name again with the same help and label names returns a handle to
    /// the same family, so two components may both declare a counter they share.
    ///
    /// # Panics
    /// On an invalid metric or label name, a duplicate label name, or a name already taken by
    /// a different family (including a histogram's `_bucket`/`_sum`/`_count`). Names must be
    /// constants of the code; see the module doc.
    pub fn counter(&self, name: &str, help: &str, label_names: &[&str]) -> CounterVec {
        let limit = self.inner.series_limit;
        self.register(
            name,
            help,
            label_names,
            |labels| {
                let set = Arc::new(SeriesSet::new(name, labels.len(), limit, || AtomicU64::new(0)));
                (Kind::Counter(Arc::clone(&set)), CounterVec { set })
            },
            |kind| match kind {
                Kind::Counter(set) => Some(CounterVec { set: Arc::clone(set) }),
                _ => None,
            },
        )
    }

    /// Registers a gauge family whose series are set directly with [`Gauge::set`].
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, label_names: &[&str]) -> GaugeVec {
        let limit = self.inner.series_limit;
        self.register(
            name,
            help,
            label_names,
            |labels| {
                let set =
                    Arc::new(SeriesSet::new(name, labels.len(), limit, || AtomicU64::new(0f64.to_bits())));
                (Kind::Gauge(Arc::clone(&set)), GaugeVec { set })
            },
            |kind| match kind {
                Kind::Gauge(set) => Some(GaugeVec { set: Arc::clone(set) }),
                _ => None,
            },
        )
    }

    /// Registers a gauge family computed at scrape time: `f` returns `(label values, value)`
    /// pairs and is called on every [`Registry::render`].
    ///
    /// `f` runs on the scraping task, so it must be quick and must not block: compute slow
    /// figures (consumer lag) elsewhere, store them, and have `f` read the stored copy. Pairs
    /// with the wrong number of label values, and pairs beyond the series limit, are summed
    /// into the `_overflow` series; when a label set repeats, the last value wins. Should `f`
    /// panic, the family is rendered without samples and an error is logged.
    ///
    /// # Panics
    /// As [`Registry::counter`], and also when `name` is already registered at all (two
    /// callbacks cannot be compared, so there is no sharing).
    pub fn gauge_fn<F>(&self, name: &str, help: &str, label_names: &[&str], f: F)
    where
        F: Fn() -> Vec<(Vec<String>, f64)> + Send + Sync + 'static,
    {
        self.register(name, help, label_names, |_| (Kind::GaugeFn(Box::new(f)), ()), |_| None)
    }

    /// Registers a histogram family with the given bucket upper bounds (seconds, for
    /// latencies; see [`DEFAULT_LATENCY_BUCKETS`]). The `+Inf` bucket is implicit; a trailing
    /// `+Inf` in `buckets` is accepted and ignored.
    ///
    /// # Panics
    /// As [`Registry::counter`]; also when a label is named `le`, or when `buckets` are not
    /// finite and strictly increasing (they are constants of the code too).
    pub fn histogram(&self, name: &str, help: &str, label_names: &[&str], buckets: &[f64]) -> HistogramVec {
        assert!(!label_names.contains(&"le"), "metric {name}: `le` is reserved for histogram buckets");
        let bounds: Arc<[f64]> = match buckets.split_last() {
            Some((last, rest)) if *last == f64::INFINITY => rest.into(),
            _ => buckets.into(),
        };
        assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "metric {name}: histogram buckets must be finite and strictly increasing, got {buckets:?}"
        );
        let limit = self.inner.series_limit;
        self.register(
            name,
            help,
            label_names,
            |labels| {
                let cell_bounds = Arc::clone(&bounds);
                let set = Arc::new(SeriesSet::new(name, labels.len(), limit, move || {
                    HistogramCell::new(Arc::clone(&cell_bounds))
                }));
                let kind = Kind::Histogram { set: Arc::clone(&set), bounds: Arc::clone(&bounds) };
                (kind, HistogramVec { set })
            },
            |kind| match kind {
                Kind::Histogram { set, bounds: existing } if **existing == *bounds => {
                    Some(HistogramVec { set: Arc::clone(set) })
                }
                _ => None,
            },
        )
    }

    /// The exposition text of every family: HELP and TYPE lines, then the samples; families
    /// sorted by name, series sorted by label values, so equal states render equal text.
    pub fn render(&self) -> String {
        // Snapshot the family list and render without the registry lock, so a gauge callback
        // (or a slow scrape) never holds up registration.
        let families: Vec<Arc<Family>> = {
            let families = self.inner.families.lock().unwrap_or_else(PoisonError::into_inner);
            families.values().cloned().collect()
        };
        let mut out = String::new();
        for family in families {
            family.render_into(&mut out, self.inner.series_limit);
        }
        out
    }

    /// Validates the names, then either returns a handle to a compatible existing family
    /// (`existing` gives one when the kind matches) or builds and inserts a new one.
    fn register<H>(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        build: impl FnOnce(&[String]) -> (Kind, H),
        existing: impl Fn(&Kind) -> Option<H>,
    ) -> H {
        assert!(
            is_valid_metric_name(name),
            "invalid metric name {name:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        );
        for (i, label) in label_names.iter().enumerate() {
            assert!(
                is_valid_label_name(label),
                "metric {name}: invalid label name {label:?}: must match [a-zA-Z_][a-zA-Z0-9_]* without a leading __"
            );
            assert!(!label_names[..i].contains(label), "metric {name}: label {label:?} given twice");
        }
        let labels: Vec<String> = label_names.iter().map(|l| (*l).to_owned()).collect();

        let mut families = self.inner.families.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(family) = families.get(name) {
            let handle = (family.help == help && *family.label_names == *labels)
                .then(|| existing(&family.kind))
                .flatten();
            drop(families);
            return match handle {
                Some(handle) => handle,
                None => {
                    panic!("metric {name} registered twice with a different type, help, labels or buckets")
                }
            };
        }
        let (kind, handle) = build(&labels);
        let family =
            Family { name: name.to_owned(), help: help.to_owned(), label_names: labels.into(), kind };
        let taken =
            families.values().flat_map(|f| f.sample_names()).find(|n| family.sample_names().contains(n));
        if let Some(taken) = taken {
            drop(families);
            panic!("metric {name}: sample name {taken} is already used by another family");
        }
        families.insert(name.to_owned(), Arc::new(family));
        handle
    }
}

// ---------------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------------

/// A counter family; [`CounterVec::with`] picks one series.
#[derive(Clone)]
pub struct CounterVec {
    set: Arc<SeriesSet<AtomicU64>>,
}

/// One counter series. Cloning is cheap; [`Counter::inc`] is one atomic add.
#[derive(Clone, Debug)]
pub struct Counter {
    value: Arc<AtomicU64>,
}

impl CounterVec {
    /// The series for these label values (in the order of the family's label names), created
    /// on first use. Folds into `_overflow` past the series limit or on a wrong number of
    /// values; never panics.
    pub fn with(&self, label_values: &[&str]) -> Counter {
        Counter { value: self.set.get(label_values) }
    }
}

impl fmt::Debug for CounterVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterVec").field("name", &self.set.family).finish_non_exhaustive()
    }
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` (wrapping at `u64::MAX`, which no counter of ours will reach).
    pub fn inc_by(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A gauge family; [`GaugeVec::with`] picks one series.
#[derive(Clone)]
pub struct GaugeVec {
    set: Arc<SeriesSet<AtomicU64>>,
}

/// One gauge series, holding an `f64`.
#[derive(Clone, Debug)]
pub struct Gauge {
    bits: Arc<AtomicU64>,
}

impl GaugeVec {
    /// The series for these label values, created (at 0) on first use. Folds into `_overflow`
    /// past the series limit or on a wrong number of values; never panics.
    pub fn with(&self, label_values: &[&str]) -> Gauge {
        Gauge { bits: self.set.get(label_values) }
    }
}

impl fmt::Debug for GaugeVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GaugeVec").field("name", &self.set.family).finish_non_exhaustive()
    }
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: f64) {
        add_f64(&self.bits, delta);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
}

/// A histogram family; [`HistogramVec::with`] picks one series.
#[derive(Clone)]
pub struct HistogramVec {
    set: Arc<SeriesSet<HistogramCell>>,
}

/// One histogram series.
#[derive(Clone, Debug)]
pub struct Histogram {
    cell: Arc<HistogramCell>,
}

impl HistogramVec {
    /// The series for these label values, created on first use. Folds into `_overflow` past
    /// the series limit or on a wrong number of values; never panics.
    pub fn with(&self, label_values: &[&str]) -> Histogram {
        Histogram { cell: self.set.get(label_values) }
    }
}

impl fmt::Debug for HistogramVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistogramVec").field("name", &self.set.family).finish_non_exhaustive()
    }
}

impl Histogram {
    /// Records one observation (seconds, for latencies): two atomic adds and a CAS on the sum.
    /// NaN and infinite values are dropped, since one would poison `_sum` for good.
    pub fn observe(&self, value: f64) {
        self.cell.observe(value);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.cell.observe(elapsed.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.cell.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Debug)]
struct HistogramCell {
    /// Upper bounds, without `+Inf`; shared by every series of the family.
    bounds: Arc<[f64]>,
    /// Per-bucket (non-cumulative) counts, one more than `bounds` for `+Inf`. Cumulated at
    /// render time, and `_count` is their total, so `_count` always equals the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl HistogramCell {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self { bounds, counts, sum: AtomicU64::new(0f64.to_bits()) }
    }

    fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        // First bound >= value: Prometheus buckets are `le` (less than or equal).
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        add_f64(&self.sum, value);
    }
}

fn add_f64(bits: &AtomicU64, delta: f64) {
    // The closure always returns Some, so this cannot fail.
    let _ = bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some((f64::from_bits(old) + delta).to_bits())
    });
}

// ---------------------------------------------------------------------------------------------
// Series sets
// ---------------------------------------------------------------------------------------------

/// The series of one family, sorted by label values.
struct SeriesSet<T> {
    /// Family name, for log messages.
    family: String,
    /// Number of label names: calls with another number of values go to `_overflow`.
    arity: usize,
    /// Distinct label sets allowed before folding.
    limit: usize,
    /// Makes the cell of a new series.
    new_cell: Box<dyn Fn() -> T + Send + Sync>,
    state: RwLock<SeriesState<T>>,
    /// Whether the "limit reached" warning was logged (once per family).
    warned_limit: AtomicBool,
    /// Whether the "wrong number of label values" error was logged (once per family).
    warned_arity: AtomicBool,
}

struct SeriesState<T> {
    /// Sorted by label values, so lookups are a binary search and rendering is ordered.
    entries: Vec<(Box<[String]>, Arc<T>)>,
    /// Entries counted against the limit: all but the overflow series.
    counted: usize,
}

impl<T> SeriesSet<T> {
    fn new(
        family: &str,
        arity: usize,
        limit: usize,
        new_cell: impl Fn() -> T + Send + Sync + 'static,
    ) -> Self {
        let set = Self {
            family: family.to_owned(),
            arity,
            limit,
            new_cell: Box::new(new_cell),
            state: RwLock::new(SeriesState { entries: Vec::new(), counted: 0 }),
            warned_limit: AtomicBool::new(false),
            warned_arity: AtomicBool::new(false),
        };
        if arity == 0 {
            // The only series exists from the start, so an unlabelled counter scrapes as 0.
            set.get(&[]);
        }
        set
    }

    fn get(&self, values: &[&str]) -> Arc<T> {
        let overflow_key;
        let values = if values.len() == self.arity {
            values
        } else {
            if !self.warned_arity.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    metric = %self.family,
                    expected = self.arity,
                    got = values.len(),
                    "wrong number of metric label values; counted under _overflow"
                );
            }
            overflow_key = vec![OVERFLOW_LABEL_VALUE; self.arity];
            &overflow_key[..]
        };
        {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if let Ok(i) = find(&state.entries, values) {
                return Arc::clone(&state.entries[i].1);
            }
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match find(&state.entries, values) {
            Ok(i) => Arc::clone(&state.entries[i].1),
            Err(at) => {
                // The overflow label set itself (and the single series of an unlabelled
                // family) never counts against the limit.
                let is_overflow = values.iter().all(|v| *v == OVERFLOW_LABEL_VALUE);
                if !is_overflow && state.counted >= self.limit {
                    if !self.warned_limit.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            metric = %self.family,
                            limit = self.limit,
                            "metric series limit reached; new label sets are counted under _overflow"
                        );
                    }
                    return self.overflow_locked(&mut state);
                }
                let cell = Arc::new((self.new_cell)());
                let key = values.iter().map(|v| (*v).to_owned()).collect();
                state.entries.insert(at, (key, Arc::clone(&cell)));
                if !is_overflow {
                    state.counted += 1;
                }
                cell
            }
        }
    }

    fn overflow_locked(&self, state: &mut SeriesState<T>) -> Arc<T> {
        let key = vec![OVERFLOW_LABEL_VALUE; self.arity];
        match find(&state.entries, &key) {
            Ok(i) => Arc::clone(&state.entries[i].1),
            Err(at) => {
                let cell = Arc::new((self.new_cell)());
                let key = key.iter().map(|v| (*v).to_owned()).collect();
                state.entries.insert(at, (key, Arc::clone(&cell)));
                cell
            }
        }
    }
}

fn find<T>(entries: &[(Box<[String]>, Arc<T>)], values: &[&str]) -> Result<usize, usize> {
    entries.binary_search_by(|(key, _)| key.iter().map(String::as_str).cmp(values.iter().copied()))
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

impl Family {
    /// Names of the sample lines this family writes (the family name counts too, since it is
    /// what the TYPE line declares).
    fn sample_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram { .. } => ["", "_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect(),
            _ => vec![self.name.clone()],
        }
    }

    fn render_into(&self, out: &mut String, series_limit: usize) {
        let type_name = match self.kind {
            Kind::Counter(_) => "counter",
            Kind::Gauge(_) | Kind::GaugeFn(_) => "gauge",
            Kind::Histogram { .. } => "histogram",
        };
        out.push_str("# HELP ");
        out.push_str(&self.name);
        out.push(' ');
        push_escaped(out, &self.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(&self.name);
        out.push(' ');
        out.push_str(type_name);
        out.push('\n');

        let labels = &self.label_names;
        match &self.kind {
            Kind::Counter(set) => {
                let state = set.state.read().unwrap_or_else(PoisonError::into_inner);
                for (values, cell) in &state.entries {
                    let value = cell.load(Ordering::Relaxed);
                    push_sample(out, &self.name, "", labels, values, None, |o| push_u64(o, value));
                }
            }
            Kind::Gauge(set) => {
                let state = set.state.read().unwrap_or_else(PoisonError::into_inner);
                for (values, cell) in &state.entries {
                    let value = f64::from_bits(cell.load(Ordering::Relaxed));
                    push_sample(out, &self.name, "", labels, values, None, |o| push_f64(o, value));
                }
            }
            Kind::GaugeFn(callback) => {
                for (values, value) in self.evaluate(callback, series_limit) {
                    push_sample(out, &self.name, "", labels, &values, None, |o| push_f64(o, value));
                }
            }
            Kind::Histogram { set, bounds } => {
                let state = set.state.read().unwrap_or_else(PoisonError::into_inner);
                for (values, cell) in &state.entries {
                    let mut cumulative = 0u64;
                    for (i, count) in cell.counts.iter().enumerate() {
                        cumulative += count.load(Ordering::Relaxed);
                        let le = match bounds.get(i) {
                            Some(bound) => format_f64(*bound),
                            None => "+Inf".to_owned(),
                        };
                        push_sample(out, &self.name, "_bucket", labels, values, Some(&le), |o| {
                            push_u64(o, cumulative)
                        });
                    }
                    let sum = f64::from_bits(cell.sum.load(Ordering::Relaxed));
                    push_sample(out, &self.name, "_sum", labels, values, None, |o| push_f64(o, sum));
                    push_sample(out, &self.name, "_count", labels, values, None, |o| push_u64(o, cumulative));
                }
            }
        }
    }

    /// Calls a gauge callback and applies the rules of [`Registry::gauge_fn`]: sorted, last
    /// value wins on repeats, wrong arity and excess label sets summed into `_overflow`.
    fn evaluate(&self, callback: &GaugeCallback, limit: usize) -> BTreeMap<Vec<String>, f64> {
        let pairs = match catch_unwind(AssertUnwindSafe(callback)) {
            Ok(pairs) => pairs,
            Err(_) => {
                tracing::error!(metric = %self.name, "gauge callback panicked; no samples this scrape");
                return BTreeMap::new();
            }
        };
        let arity = self.label_names.len();
        let overflow_key = vec![OVERFLOW_LABEL_VALUE.to_owned(); arity];
        let mut series = BTreeMap::new();
        let mut counted = 0usize;
        let mut folded = None::<f64>;
        for (values, value) in pairs {
            if values.len() != arity || values == overflow_key {
                *folded.get_or_insert(0.0) += value;
            } else if let Some(slot) = series.get_mut(&values) {
                *slot = value;
            } else if counted < limit {
                series.insert(values, value);
                counted += 1;
            } else {
                *folded.get_or_insert(0.0) += value;
            }
        }
        if let Some(folded) = folded {
            series.insert(overflow_key, folded);
        }
        series
    }
}

/// Writes one sample line: `name{l1="v1",...,le="x"} value`.
fn push_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    label_names: &[String],
    label_values: &[String],
    le: Option<&str>,
    value: impl FnOnce(&mut String),
) {
    out.push_str(name);
    out.push_str(suffix);
    if !label_names.is_empty() || le.is_some() {
        out.push('{');
        let extra = le.map(|le| ("le", le));
        let pairs = label_names.iter().map(String::as_str).zip(label_values.iter().map(String::as_str));
        for (i, (label, value)) in pairs.chain(extra).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            push_escaped(out, value, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    value(out);
    out.push('\n');
}

/// Escapes per the format: backslash and newline always, double quote in label values only.
fn push_escaped(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn push_u64(out: &mut String, value: u64) {
    let _ = write!(out, "{value}");
}

fn push_f64(out: &mut String, value: f64) {
    out.push_str(&format_f64(value));
}

/// Go-style special values (`+Inf`, `-Inf`, `NaN`); otherwise Rust's shortest round-trip form,
/// which never uses an exponent and which Prometheus parses.
fn format_f64(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// HTTP endpoint
// ---------------------------------------------------------------------------------------------

/// Limits of the scrape endpoint. Tests shorten the timeout; [`serve`] uses the defaults.
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    /// Bytes of request line and headers read before answering 431.
    max_request_head: usize,
    /// Whole-connection budget, from accept to close; a connection over it is dropped.
    connection_timeout: Duration,
    /// Connections handled at once; further ones wait in the listen backlog.
    max_connections: usize,
    /// How long, after answering, to read and discard what the client still sends, so that
    /// closing does not reset the connection before the client has read the answer.
    linger: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_request_head: 8 * 1024,
            connection_timeout: Duration::from_secs(5),
            max_connections: 64,
            linger: Duration::from_millis(500),
        }
    }
}

/// Most bytes discarded while lingering before closing anyway.
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// Serves the registry over HTTP/1.1 on `listener` until `shutdown` completes.
///
/// - `GET /metrics` → 200 with [`Registry::render`] as `text/plain; version=0.0.4`;
/// - `GET /healthz` → 200 `ok`;
/// - another method on those paths → 405; any other path → 404;
/// - request line and headers over 8 KiB → 431; a malformed request → 400; a version other
///   than HTTP/1.0 or 1.1 → 505.
///
/// `HEAD` is answered like `GET` without the body. One request per connection
/// (`Connection: close`); each connection runs in its own task and is dropped if not done within
/// 5 seconds; at most 64 are handled at once. Input is never trusted and never causes a panic.
///
/// When `shutdown` completes, no new connections are accepted; the function returns once the
/// connections in flight have finished (each bounded by its timeout).
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(registry, listener, ServerLimits::default(), shutdown).await;
}

async fn serve_with(
    registry: Registry,
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accept = async {
            // Wait for a free slot before accepting, so excess clients queue in the backlog.
            let permit = Arc::clone(&permits).acquire_owned().await;
            (permit, listener.accept().await)
        };
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => log_join(joined),
            (permit, accepted) = accept => {
                let Ok(permit) = permit else { break };
                match accepted {
                    Ok((stream, peer)) => {
                        let registry = registry.clone();
                        connections.spawn(async move {
                            let _permit = permit;
                            let handled = tokio::time::timeout(
                                limits.connection_timeout,
                                handle_connection(stream, &registry, &limits),
                            )
                            .await;
                            match handled {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection failed"),
                                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "metrics endpoint failed to accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    while let Some(joined) = connections.join_next().await {
        log_join(joined);
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "metrics connection task failed");
    }
}

/// How reading the request head ended.
enum Head {
    /// The head is `buf[..len]`, ending with its blank line.
    Complete(usize),
    /// No blank line within the limit.
    TooLarge,
    /// The client closed its side first, after sending this many bytes.
    Closed(usize),
}

async fn handle_connection(
    mut stream: TcpStream,
    registry: &Registry,
    limits: &ServerLimits,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; limits.max_request_head];
    let response = match read_head(&mut stream, &mut buf).await? {
        Head::Complete(len) => respond(&buf[..len], registry),
        Head::TooLarge => {
            Response::text(431, "Request Header Fields Too Large", "request header too large\n")
        }
        Head::Closed(0) => return Ok(()),
        Head::Closed(_) => Response::text(400, "Bad Request", "incomplete request\n"),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    // Lingering close: discard what is still coming (an oversized head, a body) so that
    // closing with unread data does not reset the connection under the client's feet.
    let _ = tokio::time::timeout(limits.linger, async {
        let mut discarded = 0;
        let mut sink = [0u8; 4096];
        while discarded < LINGER_MAX_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
    Ok(())
}

/// Reads until the blank line ending the head, or until `buf` is full.
async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<Head> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(Head::Closed(filled));
        }
        // Only the new bytes (and the three before them) can complete a terminator.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(end) = find_head_end(&buf[from..filled]) {
            return Ok(Head::Complete(from + end));
        }
    }
    Ok(Head::TooLarge)
}

/// End of the first `\r\n\r\n` (or bare `\n\n`, which HTTP allows servers to accept).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 2),
        b"\n\r" if bytes.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// The response to a complete request head, encoded.
fn respond(head: &[u8], registry: &Registry) -> Vec<u8> {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = head[..line_end].strip_suffix(b"\r").unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Response::text(400, "Bad Request", "bad request line\n");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request line\n");
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return match version.strip_prefix("HTTP/") {
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                Response::text(505, "HTTP Version Not Supported", "only HTTP/1.x is supported\n")
            }
            _ => Response::text(400, "Bad Request", "bad request line\n"),
        };
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) || !target.starts_with('/') {
        return Response::text(400, "Bad Request", "bad request line\n");
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let head_only = method == "HEAD";
    let response = match path {
        "/metrics" | "/healthz" if method != "GET" && !head_only => {
            return Response::method_not_allowed();
        }
        "/metrics" => {
            Response { status: 200, reason: "OK", content_type: CONTENT_TYPE, body: registry.render() }
        }
        "/healthz" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; charset=utf-8",
            body: "ok".into(),
        },
        _ => Response {
            status: 404,
            reason: "Not Found",
            content_type: "text/plain; charset=utf-8",
            body: "not found\n".into(),
        },
    };
    response.encode(!head_only, "")
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Vec<u8> {
        Self { status, reason, content_type: "text/plain; charset=utf-8", body: body.to_owned() }
            .encode(true, "")
    }

    fn method_not_allowed() -> Vec<u8> {
        Self {
            status: 405,
            reason: "Method Not Allowed",
            content_type: "text/plain; charset=utf-8",
            body: "method not allowed\n".to_owned(),
        }
        .encode(true, "Allow: GET, HEAD\r\n")
    }

    fn encode(self, with_body: bool, extra_headers: &str) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if with_body {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    // ----- rendering -----

    #[test]
    fn counters_with_labels_render_exact_text_sorted_by_family_and_labels() {
        let registry = Registry::new();
        // Registered out of order: rendering sorts families by name.
        let restarts = registry.counter("kh_restarts_total", "Process starts.", &[]);
        let events = registry.counter("kh_events_total", "Events published.", &["department", "event_type"]);
        events.with(&["tax", "income.filed"]).inc_by(3);
        events.with(&["health", "visit"]).inc();
        events.with(&["health", "checkup"]).inc();
        restarts.with(&[]).inc();

        let expected = r#"# HELP kh_events_total Events published.
# TYPE kh_events_total counter
kh_events_total{department="health",event_type="checkup"} 1
kh_events_total{department="health",event_type="visit"} 1
kh_events_total{department="tax",event_type="income.filed"} 3
# HELP kh_restarts_total Process starts.
# TYPE kh_restarts_total counter
kh_restarts_total 1
"#;
        assert_eq!(registry.render(), expected);
    }

    #[test]
    fn unlabelled_counter_renders_zero_before_first_increment() {
        let registry = Registry::new();
        registry.counter("kh_started_total", "Starts.", &[]);
        assert_eq!(
            registry.render(),
            "# HELP kh_started_total Starts.\n# TYPE kh_started_total counter\nkh_started_total 0\n"
        );
    }

    #[test]
    fn labelled_family_without_series_renders_only_help_and_type() {
        let registry = Registry::new();
        registry.counter("kh_dead_letters_total", "Dead letters.", &["reason"]);
        assert_eq!(
            registry.render(),
            "# HELP kh_dead_letters_total Dead letters.\n# TYPE kh_dead_letters_total counter\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let registry = Registry::new();
        let latency =
            registry.histogram("kh_publish_seconds", "Publish latency.", &["department"], &[0.1, 0.5, 1.0]);
        let tax = latency.with(&["tax"]);
        for v in [0.05, 0.1, 0.3, 0.7, 2.0] {
            tax.observe(v);
        }
        tax.observe(f64::NAN); // dropped
        tax.observe(f64::INFINITY); // dropped
        latency.with(&["health"]).observe_duration(Duration::from_millis(250));

        let expected = r#"# HELP kh_publish_seconds Publish latency.
# TYPE kh_publish_seconds histogram
kh_publish_seconds_bucket{department="health",le="0.1"} 0
kh_publish_seconds_bucket{department="health",le="0.5"} 1
kh_publish_seconds_bucket{department="health",le="1"} 1
kh_publish_seconds_bucket{department="health",le="+Inf"} 1
kh_publish_seconds_sum{department="health"} 0.25
kh_publish_seconds_count{department="health"} 1
kh_publish_seconds_bucket{department="tax",le="0.1"} 2
kh_publish_seconds_bucket{department="tax",le="0.5"} 3
kh_publish_seconds_bucket{department="tax",le="1"} 4
kh_publish_seconds_bucket{department="tax",le="+Inf"} 5
kh_publish_seconds_sum{department="tax"} 3.15
kh_publish_seconds_count{department="tax"} 5
"#;
        assert_eq!(registry.render(), expected);
        assert_eq!(tax.count(), 5);
    }

    #[test]
    fn histogram_trailing_infinity_bucket_is_implicit() {
        let registry = Registry::new();
        registry.histogram("kh_wait_seconds", "Wait.", &[], &[1.0, f64::INFINITY]).with(&[]).observe(3.0);
        let text = registry.render();
        assert!(
            text.contains("kh_wait_seconds_bucket{le=\"1\"} 0\nkh_wait_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("le=\"+Inf\"").count(), 1);
    }

    #[test]
    fn label_values_with_backslash_quote_and_newline_are_escaped() {
        let registry = Registry::new();
        let c = registry.counter("kh_odd_total", "Help with \\ and\nnewline and \"quotes\".", &["v"]);
        c.with(&["a\\b\"c\nd"]).inc();
        let expected = concat!(
            "# HELP kh_odd_total Help with \\\\ and\\nnewline and \"quotes\".\n",
            "# TYPE kh_odd_total counter\n",
            "kh_odd_total{v=\"a\\\\b\\\"c\\nd\"} 1\n",
        );
        assert_eq!(registry.render(), expected);
    }

    #[test]
    fn gauges_render_special_values_and_gauge_fn_is_read_at_scrape_time() {
        let registry = Registry::new();
        let inflight = registry.gauge("kh_inflight", "In flight.", &["queue"]);
        inflight.with(&["a"]).set(2.5);
        inflight.with(&["b"]).set(f64::NEG_INFINITY);
        inflight.with(&["c"]).set(f64::NAN);
        inflight.with(&["a"]).add(-1.0);
        assert_eq!(inflight.with(&["a"]).get(), 1.5);

        let lag = Arc::new(Mutex::new(vec![(vec!["sub-1".to_owned()], 7.0)]));
        let stored = Arc::clone(&lag);
        registry.gauge_fn("kh_consumer_lag", "Pending messages.", &["subscription"], move || {
            stored.lock().unwrap_or_else(PoisonError::into_inner).clone()
        });
        let expected = r#"# HELP kh_consumer_lag Pending messages.
# TYPE kh_consumer_lag gauge
kh_consumer_lag{subscription="sub-1"} 7
# HELP kh_inflight In flight.
# TYPE kh_inflight gauge
kh_inflight{queue="a"} 1.5
kh_inflight{queue="b"} -Inf
kh_inflight{queue="c"} NaN
"#;
        assert_eq!(registry.render(), expected);

        // The callback's new figures show up on the next scrape, sorted.
        *lag.lock().unwrap_or_else(PoisonError::into_inner) =
            vec![(vec!["sub-2".to_owned()], 1.0), (vec!["sub-1".to_owned()], 0.0)];
        assert!(registry.render().starts_with(concat!(
            "# HELP kh_consumer_lag Pending messages.\n",
            "# TYPE kh_consumer_lag gauge\n",
            "kh_consumer_lag{subscription=\"sub-1\"} 0\n",
            "kh_consumer_lag{subscription=\"sub-2\"} 1\n",
            "# HELP kh_inflight",
        )));
    }

    #[test]
    fn panicking_gauge_callback_renders_no_samples_and_other_families_still_render() {
        let registry = Registry::new();
        registry.gauge_fn("kh_broken", "Broken.", &[], || panic!("callback bug"));
        registry.counter("kh_ok_total", "Fine.", &[]).with(&[]).inc();
        assert_eq!(
            registry.render(),
            "# HELP kh_broken Broken.\n# TYPE kh_broken gauge\n# HELP kh_ok_total Fine.\n# TYPE kh_ok_total counter\nkh_ok_total 1\n"
        );
    }

    // ----- cardinality -----

    #[test]
    fn label_sets_beyond_the_limit_fold_into_overflow_series() {
        let registry = Registry::with_series_limit(2);
        let events = registry.counter("kh_events_total", "Events.", &["department", "event_type"]);
        events.with(&["a", "x"]).inc();
        events.with(&["b", "x"]).inc();
        events.with(&["c", "x"]).inc(); // third distinct set: folded
        events.with(&["d", "y"]).inc_by(2); // folded
        events.with(&["a", "x"]).inc(); // existing series keep counting

        let expected = r#"# HELP kh_events_total Events.
# TYPE kh_events_total counter
kh_events_total{department="_overflow",event_type="_overflow"} 3
kh_events_total{department="a",event_type="x"} 2
kh_events_total{department="b",event_type="x"} 1
"#;
        assert_eq!(registry.render(), expected);
    }

    #[test]
    fn a_flood_of_distinct_label_values_stays_bounded() {
        let registry = Registry::with_series_limit(100);
        let events = registry.counter("kh_events_total", "Events.", &["event_type"]);
        for i in 0..10_000 {
            events.with(&[&format!("type.{i}")]).inc();
        }
        let text = registry.render();
        // 100 distinct series plus the overflow one.
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 101);
        assert!(text.contains("kh_events_total{event_type=\"_overflow\"} 9900\n"), "{text}");
    }

    #[test]
    fn wrong_number_of_label_values_folds_into_overflow_without_panicking() {
        let registry = Registry::new();
        let events = registry.counter("kh_events_total", "Events.", &["department", "event_type"]);
        events.with(&["only-one"]).inc();
        events.with(&["a", "b", "c"]).inc();
        let latency = registry.histogram("kh_latency_seconds", "Latency.", &["department"], &[1.0]);
        latency.with(&[]).observe(0.5);
        registry.gauge_fn("kh_lag", "Lag.", &["subscription"], || {
            vec![(vec![], 4.0), (vec!["s".to_owned(), "extra".to_owned()], 1.0), (vec!["ok".to_owned()], 2.0)]
        });
        let text = registry.render();
        assert!(
            text.contains("kh_events_total{department=\"_overflow\",event_type=\"_overflow\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("kh_latency_seconds_count{department=\"_overflow\"} 1\n"), "{text}");
        assert!(
            text.contains("kh_lag{subscription=\"_overflow\"} 5\nkh_lag{subscription=\"ok\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn gauge_fn_beyond_limit_sums_into_overflow_and_repeated_label_set_keeps_last_value() {
        let registry = Registry::with_series_limit(1);
        registry.gauge_fn("kh_lag", "Lag.", &["subscription"], || {
            vec![
                (vec!["b".to_owned()], 1.0),
                (vec!["b".to_owned()], 3.0),
                (vec!["a".to_owned()], 10.0),
                (vec!["c".to_owned()], 20.0),
            ]
        });
        assert_eq!(
            registry.render(),
            "# HELP kh_lag Lag.\n# TYPE kh_lag gauge\nkh_lag{subscription=\"_overflow\"} 30\nkh_lag{subscription=\"b\"} 3\n"
        );
    }

    // ----- registration -----

    #[test]
    fn registering_the_same_counter_twice_shares_its_series() {
        let registry = Registry::new();
        let a = registry.counter("kh_shared_total", "Shared.", &["k"]);
        let b = registry.counter("kh_shared_total", "Shared.", &["k"]);
        a.with(&["v"]).inc();
        b.with(&["v"]).inc();
        assert_eq!(a.with(&["v"]).get(), 2);
    }

    #[test]
    #[should_panic(expected = "invalid metric name")]
    fn metric_name_with_a_dash_panics_at_registration() {
        Registry::new().counter("kh-events_total", "Bad.", &[]);
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn label_name_starting_with_a_digit_panics_at_registration() {
        Registry::new().counter("kh_events_total", "Bad.", &["1department"]);
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn reserved_double_underscore_label_name_panics_at_registration() {
        Registry::new().gauge("kh_g", "Bad.", &["__name"]);
    }

    #[test]
    #[should_panic(expected = "given twice")]
    fn duplicate_label_name_panics_at_registration() {
        Registry::new().counter("kh_events_total", "Bad.", &["a", "a"]);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn same_name_with_another_type_panics() {
        let registry = Registry::new();
        registry.counter("kh_thing", "Thing.", &[]);
        registry.gauge("kh_thing", "Thing.", &[]);
    }

    #[test]
    #[should_panic(expected = "already used")]
    fn counter_named_like_a_histogram_sample_panics() {
        let registry = Registry::new();
        registry.histogram("kh_latency_seconds", "Latency.", &[], &[1.0]);
        registry.counter("kh_latency_seconds_count", "Clash.", &[]);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unsorted_histogram_buckets_panic() {
        Registry::new().histogram("kh_h", "H.", &[], &[1.0, 0.5]);
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn histogram_label_named_le_panics() {
        Registry::new().histogram("kh_h", "H.", &["le"], &[1.0]);
    }

    #[test]
    fn name_rules_follow_the_exposition_format() {
        for ok in ["a", "_a", ":a", "kh:events_total", "A9_"] {
            assert!(is_valid_metric_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é", "a.b"] {
            assert!(!is_valid_metric_name(bad), "{bad}");
        }
        for ok in ["a", "_a", "department", "A9_"] {
            assert!(is_valid_label_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a:b", "__a", "a-b"] {
            assert!(!is_valid_label_name(bad), "{bad}");
        }
    }

    // ----- concurrency -----

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_from_many_tasks_sum_exactly() {
        const TASKS: u64 = 32;
        const PER_TASK: u64 = 5_000;
        let registry = Registry::new();
        let events = registry.counter("kh_events_total", "Events.", &["department"]);
        let latency = registry.histogram("kh_latency_seconds", "Latency.", &["department"], &[0.5]);
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let (events, latency) = (events.clone(), latency.clone());
            tasks.spawn(async move {
                let department = format!("d{}", t % 4);
                let cached = events.with(&[&department]);
                for i in 0..PER_TASK {
                    // Half through the cached handle, half through a lookup each time.
                    if i % 2 == 0 {
                        cached.inc();
                    } else {
                        events.with(&[&department]).inc();
                    }
                    // New series created concurrently with lookups.
                    events.with(&[&format!("t{t}")]).inc();
                    latency.with(&[&department]).observe(0.25);
                    if i % 1_000 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task");
        }
        let per_department = TASKS / 4 * PER_TASK;
        for d in 0..4 {
            let department = format!("d{d}");
            assert_eq!(events.with(&[&department]).get(), per_department);
            assert_eq!(latency.with(&[&department]).count(), per_department);
        }
        for t in 0..TASKS {
            assert_eq!(events.with(&[&format!("t{t}")]).get(), PER_TASK);
        }
        let text = registry.render();
        let expected_sum =
            format!("kh_latency_seconds_sum{{department=\"d0\"}} {}\n", per_department as f64 * 0.25);
        assert!(text.contains(&expected_sum), "{text}");
    }

    // ----- HTTP -----

    struct TestServer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    impl TestServer {
        async fn start(registry: Registry, limits: ServerLimits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(registry, listener, limits, async {
                let _ = stopped.await;
            }));
            Self { addr, stop: Some(stop), task }
        }

        /// Sends `raw`, then reads the whole response (the server closes after one).
        async fn exchange(&self, raw: &[u8]) -> String {
            let mut stream = TcpStream::connect(self.addr).await.expect("connect");
            stream.write_all(raw).await.expect("write request");
            let mut response = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
                .await
                .expect("response within 10 s")
                .expect("read response");
            String::from_utf8_lossy(&response).into_owned()
        }

        async fn get(&self, path: &str) -> String {
            self.exchange(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("server stops within 10 s")
                .expect("server task");
        }
    }

    fn status_of(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    fn body_of(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    fn sample_registry() -> Registry {
        let registry = Registry::new();
        registry.counter("kh_events_total", "Events.", &["department"]).with(&["tax"]).inc_by(4);
        registry
    }

    #[tokio::test]
    async fn get_metrics_returns_200_with_exposition_text() {
        let registry = sample_registry();
        let server = TestServer::start(registry.clone(), ServerLimits::default()).await;
        let response = server.get("/metrics").await;
        assert_eq!(status_of(&response), "HTTP/1.1 200 OK");
        assert!(
            response.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nConnection: close\r\n"), "{response}");
        assert_eq!(body_of(&response), registry.render());
        assert!(body_of(&response).contains("kh_events_total{department=\"tax\"} 4\n"));
        let declared = format!("\r\nContent-Length: {}\r\n", body_of(&response).len());
        assert!(response.contains(&declared), "{response}");
        server.stop().await;
    }

    #[tokio::test]
    async fn healthz_returns_ok_and_query_strings_are_ignored() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        let health = server.get("/healthz").await;
        assert_eq!(status_of(&health), "HTTP/1.1 200 OK");
        assert_eq!(body_of(&health), "ok");
        let metrics = server.get("/metrics?x=1").await;
        assert_eq!(status_of(&metrics), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn head_request_gets_headers_without_body() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        let response = server.exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_of(&response), "HTTP/1.1 200 OK");
        assert_eq!(body_of(&response), "");
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_path_returns_404_and_wrong_method_405() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        assert_eq!(status_of(&server.get("/").await), "HTTP/1.1 404 Not Found");
        assert_eq!(status_of(&server.get("/metrics/extra").await), "HTTP/1.1 404 Not Found");
        let post = server.exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(status_of(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_request_head_gets_431_and_server_keeps_serving() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.resize(20 * 1024, b'a');
        let response = server.exchange(&huge).await;
        assert_eq!(status_of(&response), "HTTP/1.1 431 Request Header Fields Too Large");
        assert_eq!(status_of(&server.get("/metrics").await), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn garbage_requests_get_400_or_505_and_server_keeps_serving() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        let cases: [(&[u8], &str); 7] = [
            (b"\x00\xff\xfe garbage\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"),
            (b"GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"),
        ];
        for (raw, expected) in cases {
            let response = server.exchange(raw).await;
            assert_eq!(status_of(&response), expected, "request {:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(status_of(&server.get("/metrics").await), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn request_cut_short_by_the_client_gets_400() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(b"GET /metr").await.expect("write");
        stream.shutdown().await.expect("half-close");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("response within 10 s")
            .expect("read");
        assert_eq!(status_of(&String::from_utf8_lossy(&response)), "HTTP/1.1 400 Bad Request");
        server.stop().await;
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_the_timeout_and_others_are_served_meanwhile() {
        let limits =
            ServerLimits { connection_timeout: Duration::from_millis(300), ..ServerLimits::default() };
        let server = TestServer::start(sample_registry(), limits).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        silent.write_all(b"GET /metrics HTTP/1.1\r\n").await.expect("write");
        // Another client is served while the silent one holds its connection.
        assert_eq!(status_of(&server.get("/metrics").await), "HTTP/1.1 200 OK");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest))
            .await
            .expect("server closes the silent connection");
        // Closed without an answer (EOF, or a reset since the request was left unread).
        assert!(rest.is_empty() || read.is_err(), "{rest:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_serve_returns() {
        let server = TestServer::start(sample_registry(), ServerLimits::default()).await;
        let addr = server.addr;
        assert_eq!(status_of(&server.get("/healthz").await), "HTTP/1.1 200 OK");
        server.stop().await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
    }
}
