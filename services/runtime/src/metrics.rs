//! Prometheus metrics over the `prometheus-client` crate (the Prometheus project's own Rust
//! client): our [`Registry`] keeps the few rules every service relies on (shared registration,
//! names checked up front, bounded cardinality, gauges computed at scrape time) and hands
//! storage and encoding to `prometheus-client`; [`serve`] exposes it over hyper.
//!
//! Layout:
//! - [`Registry`]: the metric families of one process; cheap to clone (an `Arc` inside).
//! - [`CounterVec`] / [`Counter`], [`GaugeVec`] / [`Gauge`], [`HistogramVec`] / [`Histogram`]:
//!   thin adapters over a `prometheus_client` [`Family`] and one series of it.
//!   [`Registry::gauge_fn`] registers a gauge computed at scrape time instead (a
//!   `prometheus_client` [`Collector`] writing `ConstGauge`s).
//! - [`serve`]: `GET /metrics` and `GET /healthz` over a listener the caller has bound, behind
//!   a bearer token ([`ScrapeToken`]) unless the listener is on loopback ([`ScrapeAccess`]).
//!
//! # Usage
//!
//! Register families once at start-up (names are constants of our code), keep the handles,
//! and on the hot path keep the per-series handle too when the label values are known:
//! [`Counter::inc`] is then a single atomic add. [`CounterVec::with`] copies the label values
//! into a key (one allocation per value) and takes a read lock for a hash lookup.
//!
//! ```
//! use kakehashi_runtime::metrics::{Registry, DEFAULT_LATENCY_BUCKETS};
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
//! let text = registry.render().expect("rendering into a String");
//! assert!(text.contains(
//!     r#"kh_events_published_total{department="tax",event_type="income.filed"} 1"#
//! ));
//! ```
//!
//! Serving it, with the listener bound by the caller (tests bind `127.0.0.1:0`):
//!
//! ```no_run
//! # async fn run(registry: kakehashi_runtime::metrics::Registry) -> Result<(), Box<dyn std::error::Error>> {
//! use kakehashi_runtime::metrics::{ScrapeAccess, ScrapeToken};
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9464").await?;
//! // Off loopback a token is required: `check` refuses the address without one.
//! let token = ScrapeToken::from_file(std::path::Path::new("/etc/kakehashi/metrics-token"))?;
//! let access = ScrapeAccess::check(listener.local_addr()?, Some(token))?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! kakehashi_runtime::metrics::serve(registry, listener, access, shutdown).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Exposition
//!
//! [`Registry::render`] is the Prometheus text format 0.0.4 (`prometheus_client`'s
//! `prometheus_text` encoder), as before: counters are declared and sampled as `…_total`
//! (`# TYPE x_total counter`), histogram bounds are written as Go writes them (`le="1"`).
//! Families are sorted by name; the series of a family come in no particular order.
//! OpenMetrics is not offered: the crate's OpenMetrics encoder writes `le="1.0"` (new series
//! for Prometheus 2.x, breaking `histogram_quantile` across the switch) and, on the collector
//! path, does not escape HELP text; Prometheus falls back to 0.0.4 on its own.
//!
//! # Names and label values
//!
//! Metric names must match `[a-zA-Z_:][a-zA-Z0-9_:]*` and label names
//! `[a-zA-Z_][a-zA-Z0-9_]*` (not starting with `__`, as the format reserves those); counter
//! names must end in `_total`. They are checked at registration, which **panics** on a bad one.
//! That is acceptable only because every name in our code is a compile-time constant, so a bad
//! name fails the first test that touches it; never build a metric or label name from data.
//!
//! Label *values* do come from data (department ids, event types) and never cause a panic:
//! the encoder escapes them (backslash, double quote, newline), and a call with the wrong
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
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::http_server::{serve_http1, ConnectionLimits};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE as CONTENT_TYPE_HEADER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

/// Distinct label sets a family holds, by default, before new ones fold into `_overflow`.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;

/// The label value of the series that absorbs label sets beyond the limit.
pub const OVERFLOW_LABEL_VALUE: &str = "_overflow";

/// Histogram bounds, in seconds, for request and processing latencies (5 ms to 10 s).
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `Content-Type` of [`Registry::render`] (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Why the registry could not be encoded (only a failing collector can cause it).
#[derive(Debug, thiserror::Error)]
#[error("encoding the metrics failed")]
pub struct RenderError(#[from] fmt::Error);

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
    /// Families by name, shared with the collector the encoder walks (a `BTreeMap`, so the
    /// exposition is sorted by family name).
    families: Arc<RwLock<BTreeMap<String, Arc<Entry>>>>,
    /// The `prometheus_client` registry holding one collector over `families`.
    encoder: prometheus_client::registry::Registry,
}

/// One registered family: what its HELP and TYPE lines say, and where its series live.
struct Entry {
    /// The exposed name (counters: with `_total`).
    name: String,
    help: String,
    label_names: Arc<[String]>,
    kind: Kind,
}

enum Kind {
    Counter(Arc<Series<prometheus_client::metrics::counter::Counter>>),
    Gauge(Arc<Series<F64Gauge>>),
    GaugeFn(Box<GaugeCallback>),
    Histogram(Arc<Series<prometheus_client::metrics::histogram::Histogram, Buckets>>),
}

/// A gauge holding an `f64` in an `AtomicU64`.
type F64Gauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

type GaugeCallback = dyn Fn() -> Vec<(Vec<String>, f64)> + Send + Sync;

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let families = self.inner.families.read().unwrap_or_else(PoisonError::into_inner);
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
        let families = Arc::new(RwLock::new(BTreeMap::new()));
        let mut encoder = prometheus_client::registry::Registry::default();
        encoder
            .register_collector(Box::new(Families { families: Arc::clone(&families), series_limit: limit }));
        Self { inner: Arc::new(RegistryInner { series_limit: limit, families, encoder }) }
    }

    /// The cap on distinct label sets per family.
    pub fn series_limit(&self) -> usize {
        self.inner.series_limit
    }

    /// Registers a counter family, named `..._total`.
    ///
    /// Registering the same name again with the same help and label names returns a handle to
    /// the same family, so two components may both declare a counter they share.
    ///
    /// # Panics
    /// On an invalid metric or label name, a counter name without `_total`, a duplicate label
    /// name, or a name already taken by a different family (including a histogram's
    /// `_bucket`/`_sum`/`_count`). Names must be constants of the code; see the module doc.
    pub fn counter(&self, name: &str, help: &str, label_names: &[&str]) -> CounterVec {
        // The encoders append `_total` to a counter's family name themselves.
        assert!(
            name.strip_suffix("_total").is_some_and(|base| !base.is_empty()),
            "counter {name}: counter names end in _total"
        );
        let limit = self.inner.series_limit;
        self.register(
            name,
            help,
            label_names,
            |labels| {
                let set = Arc::new(Series::new(name, labels, limit, Default::default()));
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
    /// As [`Registry::counter`] (without the `_total` rule).
    pub fn gauge(&self, name: &str, help: &str, label_names: &[&str]) -> GaugeVec {
        let limit = self.inner.series_limit;
        self.register(
            name,
            help,
            label_names,
            |labels| {
                let set = Arc::new(Series::new(name, labels, limit, Default::default()));
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
    /// As [`Registry::gauge`], and also when `name` is already registered at all (two
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
    /// As [`Registry::gauge`]; also when a label is named `le`, or when `buckets` are not
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
                let set = Arc::new(Series::new(name, labels, limit, Buckets(Arc::clone(&bounds))));
                (Kind::Histogram(Arc::clone(&set)), HistogramVec { set })
            },
            |kind| match kind {
                Kind::Histogram(set) if *set.constructor.0 == *bounds => {
                    Some(HistogramVec { set: Arc::clone(set) })
                }
                _ => None,
            },
        )
    }

    /// The Prometheus text format 0.0.4 of every family (see the module doc), served as
    /// [`CONTENT_TYPE`].
    pub fn render(&self) -> Result<String, RenderError> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.encoder)?;
        Ok(out)
    }

    /// Validates the names, then either returns a handle to a compatible existing family
    /// (`existing` gives one when the kind matches) or builds and inserts a new one.
    fn register<H>(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        build: impl FnOnce(&Arc<[String]>) -> (Kind, H),
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
        let labels: Arc<[String]> = label_names.iter().map(|l| (*l).to_owned()).collect();

        let mut families = self.inner.families.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(family) = families.get(name) {
            let handle = (family.help == help && family.label_names == labels)
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
        let entry = Entry { name: name.to_owned(), help: help.to_owned(), label_names: labels, kind };
        let taken =
            families.values().flat_map(|f| f.sample_names()).find(|n| entry.sample_names().contains(n));
        if let Some(taken) = taken {
            drop(families);
            panic!("metric {name}: sample name {taken} is already used by another family");
        }
        families.insert(name.to_owned(), Arc::new(entry));
        handle
    }
}

// ---------------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------------

/// A counter family; [`CounterVec::with`] picks one series.
#[derive(Clone)]
pub struct CounterVec {
    set: Arc<Series<prometheus_client::metrics::counter::Counter>>,
}

/// One counter series. Cloning is cheap; [`Counter::inc`] is one atomic add.
#[derive(Clone, Debug)]
pub struct Counter {
    inner: prometheus_client::metrics::counter::Counter,
}

impl CounterVec {
    /// The series for these label values (in the order of the family's label names), created
    /// on first use. Folds into `_overflow` past the series limit or on a wrong number of
    /// values; never panics.
    pub fn with(&self, label_values: &[&str]) -> Counter {
        Counter { inner: self.set.get(label_values) }
    }
}

impl fmt::Debug for CounterVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterVec").field("name", &self.set.name).finish_non_exhaustive()
    }
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inner.inc();
    }

    /// Adds `n` (wrapping at `u64::MAX`, which no counter of ours will reach).
    pub fn inc_by(&self, n: u64) {
        self.inner.inc_by(n);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.inner.get()
    }
}

/// A gauge family; [`GaugeVec::with`] picks one series.
#[derive(Clone)]
pub struct GaugeVec {
    set: Arc<Series<F64Gauge>>,
}

/// One gauge series, holding an `f64`.
#[derive(Clone, Debug)]
pub struct Gauge {
    inner: F64Gauge,
}

impl GaugeVec {
    /// The series for these label values, created (at 0) on first use. Folds into `_overflow`
    /// past the series limit or on a wrong number of values; never panics.
    pub fn with(&self, label_values: &[&str]) -> Gauge {
        Gauge { inner: self.set.get(label_values) }
    }
}

impl fmt::Debug for GaugeVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GaugeVec").field("name", &self.set.name).finish_non_exhaustive()
    }
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.inner.set(value);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: f64) {
        self.inner.inc_by(delta);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        self.inner.get()
    }
}

/// A histogram family; [`HistogramVec::with`] picks one series.
#[derive(Clone)]
pub struct HistogramVec {
    set: Arc<Series<prometheus_client::metrics::histogram::Histogram, Buckets>>,
}

/// One histogram series.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: prometheus_client::metrics::histogram::Histogram,
}

impl HistogramVec {
    /// The series for these label values, created on first use. Folds into `_overflow` past
    /// the series limit or on a wrong number of values; never panics.
    pub fn with(&self, label_values: &[&str]) -> Histogram {
        Histogram { inner: self.set.get(label_values) }
    }
}

impl fmt::Debug for HistogramVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistogramVec").field("name", &self.set.name).finish_non_exhaustive()
    }
}

impl Histogram {
    /// Records one observation (seconds, for latencies) under the series' short mutex.
    /// NaN and infinite values are dropped, since one would poison `_sum` for good.
    pub fn observe(&self, value: f64) {
        if value.is_finite() {
            self.inner.observe(value);
        }
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }
}

/// Makes the histogram of a new series with the family's bounds.
#[derive(Clone, Debug)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<prometheus_client::metrics::histogram::Histogram> for Buckets {
    fn new_metric(&self) -> prometheus_client::metrics::histogram::Histogram {
        prometheus_client::metrics::histogram::Histogram::new(self.0.iter().copied())
    }
}

/// Makes a default metric (counters, gauges).
#[derive(Clone, Debug, Default)]
struct Fresh;

impl<M: Default> MetricConstructor<M> for Fresh {
    fn new_metric(&self) -> M {
        M::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Series: a `prometheus_client` family plus the cardinality limit
// ---------------------------------------------------------------------------------------------

/// The key of one series: the family's label names (shared) and this series' values. Equality
/// and hashing look at the values only, since the names are the same across a family.
#[derive(Clone, Debug)]
struct LabelSet {
    names: Arc<[String]>,
    values: Box<[String]>,
}

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Eq for LabelSet {}

impl Hash for LabelSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.values.hash(state);
    }
}

impl EncodeLabelSet for LabelSet {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for (name, value) in self.names.iter().zip(self.values.iter()) {
            (name.as_str(), value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// The series of one family, with the limit and the once-only warnings.
struct Series<M, C = Fresh> {
    /// Family name, for log messages.
    name: String,
    label_names: Arc<[String]>,
    /// Distinct label sets allowed before folding.
    limit: usize,
    family: Family<LabelSet, M, C>,
    /// Makes the metric of a new series; kept to compare histogram bounds on re-registration.
    constructor: C,
    /// Series created that count against the limit (all but `_overflow`); its lock serialises
    /// the creation of series, so the count checked against the limit is exact.
    counted: Mutex<usize>,
    /// Whether the "limit reached" warning was logged (once per family).
    warned_limit: AtomicBool,
    /// Whether the "wrong number of label values" error was logged (once per family).
    warned_arity: AtomicBool,
    /// Series already created, by a hash of their label values: lets [`Series::get`] find one
    /// without building an owned key (no allocation on the per-event path). Holds only real
    /// series, never `_overflow` folds, so it is bounded by `limit`.
    index: SeriesIndex<M>,
}

impl<M: Clone, C: MetricConstructor<M> + Clone> Series<M, C> {
    fn new(name: &str, label_names: &Arc<[String]>, limit: usize, constructor: C) -> Self {
        let series = Self {
            name: name.to_owned(),
            label_names: Arc::clone(label_names),
            limit,
            family: Family::new_with_constructor(constructor.clone()),
            constructor,
            counted: Mutex::new(0),
            warned_limit: AtomicBool::new(false),
            warned_arity: AtomicBool::new(false),
            index: RwLock::new(std::collections::HashMap::new()),
        };
        if label_names.is_empty() {
            // The only series exists from the start, so an unlabelled counter scrapes as 0.
            series.get(&[]);
        }
        series
    }

    fn key(&self, values: &[&str]) -> LabelSet {
        LabelSet {
            names: Arc::clone(&self.label_names),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn overflow_key(&self) -> LabelSet {
        LabelSet {
            names: Arc::clone(&self.label_names),
            values: vec![OVERFLOW_LABEL_VALUE.to_owned(); self.label_names.len()].into(),
        }
    }

    fn get(&self, values: &[&str]) -> M {
        if values.len() != self.label_names.len() {
            if !self.warned_arity.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    metric = %self.name,
                    expected = self.label_names.len(),
                    got = values.len(),
                    "wrong number of metric label values; counted under _overflow"
                );
            }
            return self.family.get_or_create_owned(&self.overflow_key());
        }
        let hash = values_hash(values);
        if let Some(metric) = self.indexed(hash, values) {
            return metric;
        }
        let key = self.key(values);
        if let Some(metric) = self.family.get(&key) {
            let metric = metric.clone();
            return self.remember(hash, values, metric);
        }
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(metric) = self.family.get(&key) {
            let metric = metric.clone();
            return self.remember(hash, values, metric);
        }
        // The overflow label set itself (and the single series of an unlabelled family) never
        // counts against the limit.
        let overflow = self.overflow_key();
        if key == overflow {
            return self.family.get_or_create_owned(&overflow);
        }
        if *counted >= self.limit {
            if !self.warned_limit.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    metric = %self.name,
                    limit = self.limit,
                    "metric series limit reached; new label sets are counted under _overflow"
                );
            }
            return self.family.get_or_create_owned(&overflow);
        }
        *counted += 1;
        let metric = self.family.get_or_create_owned(&key);
        self.remember(hash, values, metric)
    }

    /// The indexed series with exactly these label values, if any.
    fn indexed(&self, hash: u64, values: &[&str]) -> Option<M> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let bucket = index.get(&hash)?;
        bucket
            .iter()
            .find(|(known, _)| known.len() == values.len() && known.iter().zip(values).all(|(k, v)| k == v))
            .map(|(_, metric)| metric.clone())
    }

    /// Indexes a real (not folded) series and hands it back.
    fn remember(&self, hash: u64, values: &[&str], metric: M) -> M {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let bucket = index.entry(hash).or_default();
        if !bucket
            .iter()
            .any(|(known, _)| known.len() == values.len() && known.iter().zip(values).all(|(k, v)| k == v))
        {
            bucket.push((values.iter().map(|v| (*v).to_owned()).collect(), metric.clone()));
        }
        metric
    }
}

/// Series by a hash of their label values: the values and the series, per hash.
type SeriesIndex<M> = RwLock<std::collections::HashMap<u64, Vec<(Box<[String]>, M)>>>;

/// A hash of label values (length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ).
fn values_hash(values: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in values {
        h.write_usize(v.len());
        h.write(v.as_bytes());
    }
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// The collector the `prometheus_client` registry encodes: every family, in name order.
struct Families {
    families: Arc<RwLock<BTreeMap<String, Arc<Entry>>>>,
    series_limit: usize,
}

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Families").finish_non_exhaustive()
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Snapshot the list and encode without the lock, so a gauge callback (or a slow
        // scrape) never holds up registration.
        let families: Vec<Arc<Entry>> = {
            let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
            families.values().cloned().collect()
        };
        for entry in families {
            entry.encode(&mut encoder, self.series_limit)?;
        }
        Ok(())
    }
}

impl Entry {
    /// Names of the sample lines this family writes (the family name counts too, since it is
    /// what the TYPE line declares).
    fn sample_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram(_) => ["", "_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect(),
            _ => vec![self.name.clone()],
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder, series_limit: usize) -> Result<(), fmt::Error> {
        match &self.kind {
            Kind::Counter(set) => {
                // Checked at registration; the encoders add the suffix back.
                let base = self.name.strip_suffix("_total").unwrap_or(&self.name);
                set.family.encode(encoder.encode_descriptor(base, &self.help, None, MetricType::Counter)?)
            }
            Kind::Gauge(set) => set.family.encode(encoder.encode_descriptor(
                &self.name,
                &self.help,
                None,
                MetricType::Gauge,
            )?),
            Kind::Histogram(set) => set.family.encode(encoder.encode_descriptor(
                &self.name,
                &self.help,
                None,
                MetricType::Histogram,
            )?),
            Kind::GaugeFn(callback) => {
                let series = self.evaluate(callback, series_limit);
                let mut metric =
                    encoder.encode_descriptor(&self.name, &self.help, None, MetricType::Gauge)?;
                for (values, value) in series {
                    let labels = LabelSet { names: Arc::clone(&self.label_names), values: values.into() };
                    ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
                }
                Ok(())
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
// Access to the endpoint
// ---------------------------------------------------------------------------------------------

/// Shortest scrape token accepted, in bytes (`kakehashi metrics token` writes 64 hex digits).
pub const MIN_TOKEN_BYTES: usize = 32;
/// Longest scrape token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 512;
/// Largest token file read, in bytes (the token plus a trailing newline or comment-free padding).
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// What is wrong with a scrape token or with where the endpoint listens. Messages name the file
/// or the address, never the token.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeAccessError {
    /// The token file could not be read.
    #[error("metrics token file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file does not hold a usable token.
    #[error("metrics token file {path}: {message}")]
    BadToken {
        /// File path.
        path: String,
        /// What is wrong (never the token itself).
        message: String,
    },
    /// The endpoint would serve metrics to a network without a token.
    #[error(
        "metrics_addr {addr} is not a loopback address and no metrics token is configured \
         (metrics_token_file / KAKEHASHI_METRICS_TOKEN_FILE): refusing to serve /metrics \
         unauthenticated"
    )]
    Unauthenticated {
        /// The address the endpoint would listen on.
        addr: std::net::SocketAddr,
    },
}

/// The bearer token a scraper must present (`Authorization: Bearer <token>`). Only its SHA-256
/// is kept; a presented token is hashed and the two digests compared in constant time, so
/// neither the token's bytes nor its length show in response times.
#[derive(Clone)]
pub struct ScrapeToken {
    digest: [u8; 32],
}

impl fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest of a secret is not for logs either.
        f.write_str("ScrapeToken(..)")
    }
}

impl ScrapeToken {
    /// A token from its text: [`MIN_TOKEN_BYTES`]..=[`MAX_TOKEN_BYTES`] bytes of RFC 6750's
    /// `b64token` alphabet (letters, digits, `-._~+/`, then `=` padding). The error says what is
    /// wrong without quoting the token.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.len() < MIN_TOKEN_BYTES || token.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "the token is {} bytes; it must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES}",
                token.len()
            ));
        }
        let body = token.trim_end_matches('=');
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)) {
            return Err("the token may hold only letters, digits and -._~+/ (then = padding)".into());
        }
        Ok(Self { digest: Sha256::digest(token.as_bytes()).into() })
    }

    /// The token in `path`: the whole file, without trailing whitespace (a final newline). At
    /// most [`MAX_TOKEN_FILE_BYTES`] are read.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ScrapeAccessError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let read = |source| ScrapeAccessError::Read { path: shown.clone(), source };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(ScrapeAccessError::BadToken {
                path: shown,
                message: format!("larger than {MAX_TOKEN_FILE_BYTES} bytes"),
            });
        }
        Self::new(text.trim_end()).map_err(|message| ScrapeAccessError::BadToken { path: shown, message })
    }

    /// Whether an `Authorization` header value is `Bearer <this token>` (scheme in any case).
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else { return false };
        let Some((scheme, presented)) = value.split_at_checked(7) else { return false };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let presented: [u8; 32] = Sha256::digest(presented.trim_ascii()).into();
        bool::from(presented.ct_eq(&self.digest))
    }
}

/// Who may read the endpoint: anyone who can reach it (a loopback address only), or scrapers
/// presenting the token. Made by [`ScrapeAccess::check`] only, so a server on a network address
/// without a token cannot be built.
#[derive(Debug, Clone)]
pub struct ScrapeAccess {
    token: Option<ScrapeToken>,
}

impl ScrapeAccess {
    /// The access of an endpoint listening on `addr`: with a token, that token on any address;
    /// without one, loopback addresses only, and [`ScrapeAccessError::Unauthenticated`] (one
    /// line naming the address and the setting) for any other.
    pub fn check(addr: std::net::SocketAddr, token: Option<ScrapeToken>) -> Result<Self, ScrapeAccessError> {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(ScrapeAccessError::Unauthenticated { addr });
        }
        Ok(Self { token })
    }

    /// [`ScrapeAccess::check`] with the token read from `token_file` (when one is configured):
    /// what a service does at start-up with its `metrics_addr` and `metrics_token_file`.
    pub fn configure(
        addr: std::net::SocketAddr,
        token_file: Option<&std::path::Path>,
    ) -> Result<Self, ScrapeAccessError> {
        let token = token_file.map(ScrapeToken::from_file).transpose()?;
        Self::check(addr, token)
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP endpoint
// ---------------------------------------------------------------------------------------------

/// Limits of the scrape endpoint (tests shorten the timeout): one request per connection, a
/// whole-connection budget of 5 s from accept to close, 64 connections at once (further ones
/// wait in the listen backlog), 8 KiB of request head. No TLS, so no handshake.
const LIMITS: ConnectionLimits = ConnectionLimits {
    handshake: Duration::from_secs(5),
    connection: Duration::from_secs(5),
    max_connections: 64,
    max_request_head: MAX_REQUEST_HEAD,
    keep_alive: false,
};

/// Bytes hyper buffers for a request head before answering 431 (its minimum).
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves the registry over HTTP/1.1 (hyper) on `listener` until `shutdown` completes.
///
/// - `GET /metrics` → 200 with [`Registry::render`] as `text/plain; version=0.0.4`;
/// - `GET /healthz` → 200 `ok`;
/// - another method on those paths → 405; any other path → 404;
/// - request line and headers over 8 KiB → 431; a malformed request → 400 (hyper's parser);
/// - with a token in `access`, any request without `Authorization: Bearer <token>` → 401 with
///   `WWW-Authenticate: Bearer` (before the path is looked at, so nothing is learnt without it).
///
/// `HEAD` is answered like `GET` without the body. One request per connection
/// (`Connection: close`); each connection runs in its own task and is dropped if not done within
/// 5 seconds; at most 64 are handled at once. Input is never trusted and never causes a panic.
/// The accept loop is the shared [`serve_http1`].
///
/// When `shutdown` completes, no new connections are accepted and the function returns; a
/// scrape still in flight is cut (Prometheus retries at its next interval).
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    access: ScrapeAccess,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(registry, listener, access, LIMITS, shutdown).await;
}

async fn serve_with(
    registry: Registry,
    listener: TcpListener,
    access: ScrapeAccess,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let service = hyper::service::service_fn(move |request| {
        let response = respond(&request, &registry, &access);
        async move { Ok::<_, Infallible>(response) }
    });
    serve_http1(listener, None, service, limits, "metrics", shutdown).await;
}

/// The response to one request (hyper leaves out the body of a `HEAD` answer).
fn respond(request: &Request<Incoming>, registry: &Registry, access: &ScrapeAccess) -> Response<Full<Bytes>> {
    if let Some(token) = &access.token {
        let presented = request.headers().get(AUTHORIZATION);
        if !token.admits(presented) {
            let mut response =
                text(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "unauthorized\n".into());
            // RFC 6750: a presented but wrong token is `invalid_token`; none at all, no error code.
            let challenge = if presented.is_some() {
                r#"Bearer realm="kakehashi-metrics", error="invalid_token""#
            } else {
                r#"Bearer realm="kakehashi-metrics""#
            };
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            return response;
        }
    }
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into());
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response =
            text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n".into());
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "text/plain; charset=utf-8", "ok".into());
    }
    match registry.render() {
        Ok(body) => text(StatusCode::OK, CONTENT_TYPE, body),
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "metrics unavailable\n".into(),
            )
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::{JoinHandle, JoinSet};

    /// The 0.0.4 text with the samples of each counter and gauge family sorted, since a
    /// family's series come in hash order (histogram samples keep their order).
    fn render(registry: &Registry) -> String {
        let text = registry.render().expect("render");
        let mut out = String::new();
        for block in text.split_inclusive('\n').collect::<Vec<_>>().chunk_by(|_, b| !b.starts_with("# HELP "))
        {
            let (headers, samples): (Vec<&str>, Vec<&str>) = block.iter().partition(|l| l.starts_with('#'));
            let mut samples = samples;
            if !headers.iter().any(|l| l.ends_with(" histogram\n")) {
                samples.sort_unstable();
            }
            out.extend(headers);
            out.extend(samples);
        }
        out
    }

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
        assert_eq!(render(&registry), expected);
    }

    #[test]
    fn unlabelled_counter_renders_zero_before_first_increment() {
        let registry = Registry::new();
        registry.counter("kh_started_total", "Starts.", &[]);
        assert_eq!(
            render(&registry),
            "# HELP kh_started_total Starts.\n# TYPE kh_started_total counter\nkh_started_total 0\n"
        );
    }

    #[test]
    fn labelled_family_without_series_renders_only_help_and_type() {
        let registry = Registry::new();
        registry.counter("kh_dead_letters_total", "Dead letters.", &["reason"]);
        assert_eq!(
            render(&registry),
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

        let text = render(&registry);
        assert!(text.starts_with(
            "# HELP kh_publish_seconds Publish latency.\n# TYPE kh_publish_seconds histogram\n"
        ));
        let health = r#"kh_publish_seconds_bucket{department="health",le="0.1"} 0
kh_publish_seconds_bucket{department="health",le="0.5"} 1
kh_publish_seconds_bucket{department="health",le="1"} 1
kh_publish_seconds_bucket{department="health",le="+Inf"} 1
kh_publish_seconds_sum{department="health"} 0.25
kh_publish_seconds_count{department="health"} 1
"#;
        let tax = r#"kh_publish_seconds_bucket{department="tax",le="0.1"} 2
kh_publish_seconds_bucket{department="tax",le="0.5"} 3
kh_publish_seconds_bucket{department="tax",le="1"} 4
kh_publish_seconds_bucket{department="tax",le="+Inf"} 5
kh_publish_seconds_sum{department="tax"} 3.15
kh_publish_seconds_count{department="tax"} 5
"#;
        assert!(text.contains(health) && text.contains(tax), "{text}");
        assert_eq!(text.lines().count(), 2 + 12);
    }

    #[test]
    fn histogram_trailing_infinity_bucket_is_implicit() {
        let registry = Registry::new();
        registry.histogram("kh_wait_seconds", "Wait.", &[], &[1.0, f64::INFINITY]).with(&[]).observe(3.0);
        let text = render(&registry);
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
        assert_eq!(render(&registry), expected);
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
kh_consumer_lag{subscription="sub-1"} 7.0
# HELP kh_inflight In flight.
# TYPE kh_inflight gauge
kh_inflight{queue="a"} 1.5
kh_inflight{queue="b"} -Inf
kh_inflight{queue="c"} NaN
"#;
        assert_eq!(render(&registry), expected);

        // The callback's new figures show up on the next scrape, sorted.
        *lag.lock().unwrap_or_else(PoisonError::into_inner) =
            vec![(vec!["sub-2".to_owned()], 1.0), (vec!["sub-1".to_owned()], 0.0)];
        assert!(render(&registry).starts_with(concat!(
            "# HELP kh_consumer_lag Pending messages.\n",
            "# TYPE kh_consumer_lag gauge\n",
            "kh_consumer_lag{subscription=\"sub-1\"} 0.0\n",
            "kh_consumer_lag{subscription=\"sub-2\"} 1.0\n",
            "# HELP kh_inflight",
        )));
    }

    #[test]
    fn panicking_gauge_callback_renders_no_samples_and_other_families_still_render() {
        let registry = Registry::new();
        registry.gauge_fn("kh_broken", "Broken.", &[], || panic!("callback bug"));
        registry.counter("kh_ok_total", "Fine.", &[]).with(&[]).inc();
        assert_eq!(
            render(&registry),
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
        assert_eq!(render(&registry), expected);
    }

    #[test]
    fn a_flood_of_distinct_label_values_stays_bounded() {
        let registry = Registry::with_series_limit(100);
        let events = registry.counter("kh_events_total", "Events.", &["event_type"]);
        for i in 0..10_000 {
            events.with(&[&format!("type.{i}")]).inc();
        }
        let text = render(&registry);
        // 100 distinct series plus the overflow one.
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 101);
        assert!(text.contains("kh_events_total{event_type=\"_overflow\"} 9900\n"), "{text}");
        // The lookup index holds the real series only, not the folded label sets.
        let indexed: usize =
            events.set.index.read().unwrap_or_else(PoisonError::into_inner).values().map(Vec::len).sum();
        assert_eq!(indexed, 100);
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
        let text = render(&registry);
        assert!(
            text.contains("kh_events_total{department=\"_overflow\",event_type=\"_overflow\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("kh_latency_seconds_count{department=\"_overflow\"} 1\n"), "{text}");
        assert!(
            text.contains("kh_lag{subscription=\"_overflow\"} 5.0\nkh_lag{subscription=\"ok\"} 2.0\n"),
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
            render(&registry),
            "# HELP kh_lag Lag.\n# TYPE kh_lag gauge\nkh_lag{subscription=\"_overflow\"} 30.0\nkh_lag{subscription=\"b\"} 3.0\n"
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
        registry.counter("kh_thing_total", "Thing.", &[]);
        registry.gauge("kh_thing_total", "Thing.", &[]);
    }

    #[test]
    #[should_panic(expected = "already used")]
    fn counter_named_like_a_histogram_sample_panics() {
        let registry = Registry::new();
        registry.histogram("kh_latency_seconds", "Latency.", &[], &[1.0]);
        registry.gauge("kh_latency_seconds_count", "Clash.", &[]);
    }

    #[test]
    #[should_panic(expected = "end in _total")]
    fn counter_without_total_suffix_panics() {
        Registry::new().counter("kh_events", "Bad.", &[]);
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
        }
        for t in 0..TASKS {
            assert_eq!(events.with(&[&format!("t{t}")]).get(), PER_TASK);
        }
        let text = render(&registry);
        let expected_sum =
            format!("kh_latency_seconds_sum{{department=\"d0\"}} {:?}\n", per_department as f64 * 0.25);
        assert!(text.contains(&expected_sum), "{text}");
    }

    // ----- HTTP -----

    struct TestServer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    impl TestServer {
        async fn start(registry: Registry, limits: ConnectionLimits) -> Self {
            Self::start_with(registry, limits, None).await
        }

        async fn start_with(
            registry: Registry,
            limits: ConnectionLimits,
            token: Option<ScrapeToken>,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let access = ScrapeAccess::check(addr, token).expect("loopback");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(registry, listener, access, limits, async {
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
        let server = TestServer::start(registry.clone(), LIMITS).await;
        let response = server.get("/metrics").await;
        assert_eq!(status_of(&response), "HTTP/1.1 200 OK");
        assert!(
            response.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
        assert_eq!(body_of(&response), registry.render().expect("render"));
        assert!(body_of(&response).contains("kh_events_total{department=\"tax\"} 4\n"));
        let declared = format!("\r\ncontent-length: {}\r\n", body_of(&response).len());
        assert!(response.contains(&declared), "{response}");
        server.stop().await;
    }

    #[tokio::test]
    async fn healthz_returns_ok_and_query_strings_are_ignored() {
        let server = TestServer::start(sample_registry(), LIMITS).await;
        let health = server.get("/healthz").await;
        assert_eq!(status_of(&health), "HTTP/1.1 200 OK");
        assert_eq!(body_of(&health), "ok");
        let metrics = server.get("/metrics?x=1").await;
        assert_eq!(status_of(&metrics), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn head_request_gets_headers_without_body() {
        let server = TestServer::start(sample_registry(), LIMITS).await;
        let response = server.exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_of(&response), "HTTP/1.0 200 OK");
        assert_eq!(body_of(&response), "");
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_path_returns_404_and_wrong_method_405() {
        let server = TestServer::start(sample_registry(), LIMITS).await;
        assert_eq!(status_of(&server.get("/").await), "HTTP/1.1 404 Not Found");
        assert_eq!(status_of(&server.get("/metrics/extra").await), "HTTP/1.1 404 Not Found");
        let post = server.exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(status_of(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(post.contains("\r\nallow: GET, HEAD\r\n"), "{post}");
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_request_head_gets_431_and_server_keeps_serving() {
        let server = TestServer::start(sample_registry(), LIMITS).await;
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.resize(20 * 1024, b'a');
        let response = server.exchange(&huge).await;
        assert_eq!(status_of(&response), "HTTP/1.1 431 Request Header Fields Too Large");
        assert_eq!(status_of(&server.get("/metrics").await), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn garbage_requests_are_refused_and_server_keeps_serving() {
        let server = TestServer::start(sample_registry(), LIMITS).await;
        let cases: [&[u8]; 7] = [
            b"\x00\xff\xfe garbage\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
        ];
        for raw in cases {
            let response = server.exchange(raw).await;
            // hyper answers a 4xx/5xx (400, 404, 505) or closes without an answer; never metrics.
            let status = status_of(&response);
            assert!(
                status.is_empty() || status.starts_with("HTTP/1.1 4") || status.starts_with("HTTP/1.1 5"),
                "request {:?} got {status:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(status_of(&server.get("/metrics").await), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn request_cut_short_by_the_client_gets_no_metrics() {
        let server = TestServer::start(sample_registry(), LIMITS).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(b"GET /metr").await.expect("write");
        stream.shutdown().await.expect("half-close");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("response within 10 s")
            .expect("read");
        // hyper closes an incomplete request without answering (or with 400).
        let response = String::from_utf8_lossy(&response);
        assert!(matches!(status_of(&response), "" | "HTTP/1.1 400 Bad Request"), "{response}");
        assert_eq!(status_of(&server.get("/metrics").await), "HTTP/1.1 200 OK");
        server.stop().await;
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_the_timeout_and_others_are_served_meanwhile() {
        let limits = ConnectionLimits { connection: Duration::from_millis(300), ..LIMITS };
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
        let server = TestServer::start(sample_registry(), LIMITS).await;
        let addr = server.addr;
        assert_eq!(status_of(&server.get("/healthz").await), "HTTP/1.1 200 OK");
        server.stop().await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
    }

    // ----- Access -----

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn get_with(path: &str, authorization: Option<&str>) -> Vec<u8> {
        let header = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{header}\r\n").into_bytes()
    }

    #[tokio::test]
    async fn with_a_token_only_the_right_bearer_token_reads_metrics() {
        let token = ScrapeToken::new(TOKEN).expect("token");
        let server = TestServer::start_with(sample_registry(), LIMITS, Some(token)).await;
        for (what, authorization, challenge) in [
            ("no token", None, "www-authenticate: Bearer realm=\"kakehashi-metrics\"\r\n"),
            ("wrong token", Some(format!("Bearer {}", TOKEN.replace('0', "1"))), "error=\"invalid_token\""),
            ("token prefix", Some(format!("Bearer {}", &TOKEN[..40])), "error=\"invalid_token\""),
            ("token plus more", Some(format!("Bearer {TOKEN}x")), "error=\"invalid_token\""),
            ("basic scheme", Some(format!("Basic {TOKEN}")), "error=\"invalid_token\""),
            ("empty bearer", Some("Bearer ".to_string()), "error=\"invalid_token\""),
        ] {
            for path in ["/metrics", "/healthz", "/nowhere"] {
                let response = server.exchange(&get_with(path, authorization.as_deref())).await;
                assert_eq!(status_of(&response), "HTTP/1.1 401 Unauthorized", "{what} {path}: {response}");
                assert!(response.contains(challenge), "{what} {path}: {response}");
                assert!(!response.contains("kh_events_total"), "{what} {path}: {response}");
            }
        }
        for authorization in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}")] {
            let response = server.exchange(&get_with("/metrics", Some(&authorization))).await;
            assert_eq!(status_of(&response), "HTTP/1.1 200 OK", "{response}");
            assert!(body_of(&response).contains("kh_events_total"), "{response}");
        }
        let response = server.exchange(&get_with("/healthz", Some(&format!("Bearer {TOKEN}")))).await;
        assert_eq!(status_of(&response), "HTTP/1.1 200 OK", "{response}");
        server.stop().await;
    }

    #[test]
    fn a_network_address_without_a_token_is_refused_in_one_line() {
        let addr: SocketAddr = "0.0.0.0:9464".parse().expect("addr");
        let e = ScrapeAccess::check(addr, None).expect_err("refused");
        let message = e.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("0.0.0.0:9464") && message.contains("metrics_token_file"), "{message}");
        for ok in ["127.0.0.1:9464", "[::1]:9464"] {
            let addr: SocketAddr = ok.parse().expect("addr");
            assert!(!ScrapeAccess::check(addr, None).expect("loopback").requires_token());
        }
        let token = ScrapeToken::new(TOKEN).expect("token");
        assert!(ScrapeAccess::check(addr, Some(token)).expect("with a token").requires_token());
    }

    #[test]
    fn token_files_are_checked_and_never_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).expect("write");
        let token = ScrapeToken::from_file(&path).expect("a token with a final newline");
        assert!(token.admits(Some(&HeaderValue::from_static(
            "Bearer 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        ))));
        assert_eq!(format!("{token:?}"), "ScrapeToken(..)");
        for bad in ["short", "has space in it and is long enough to pass the length", &"x".repeat(513), ""] {
            std::fs::write(&path, bad).expect("write");
            let e = ScrapeToken::from_file(&path).expect_err(bad).to_string();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        std::fs::write(&path, "a".repeat(5000)).expect("write");
        assert!(ScrapeToken::from_file(&path).expect_err("too large").to_string().contains("4096"));
        assert!(ScrapeToken::from_file(&dir.path().join("missing")).is_err());
    }
}
