//! Logs and traces for every Kakehashi binary, set up in one place.
//!
//! - Logs: `RUST_LOG` filter (default `info`); JSON lines when `KAKEHASHI_LOG_FORMAT=json`, with
//!   the fields of the enclosing spans — every hop span carries `trace_id` and `event_id`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//!   `tracing` spans are exported over OTLP/gRPC through `tracing-opentelemetry`; the standard
//!   `OTEL_*` variables (service name, resource attributes, timeouts) are honoured by the SDK.
//!   Which spans are exported is `KAKEHASHI_TRACE_FILTER` (default `info`: every hop span),
//!   apart from the log filter, so quiet logs do not switch tracing off.
//! - Context: W3C `traceparent`/`tracestate` are read from and written to NATS headers, gRPC
//!   metadata and `Event.extensions` with the helpers below, so one event is one trace.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and shuts the trace exporter down when dropped (end of `main`).
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered now (tests, and before a planned exit).
    pub fn flush(&self) -> Result<(), String> {
        match &self.provider {
            Some(p) => p.force_flush().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Telemetry that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Whether the standard variables ask for OTLP trace export.
pub fn otlp_requested() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v != "none")
}

/// Builds a tracer provider exporting over OTLP/gRPC (must run inside a Tokio runtime).
pub fn otlp_provider(
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    // The SDK's standard batch processor, on its own thread: it exports every
    // `OTEL_BSP_SCHEDULE_DELAY` from start-up. (The async-runtime one skips its first tick, so
    // spans of the first seconds waited two intervals.) The tonic channel is built here, inside
    // the runtime, whose reactor drives its connection while the thread awaits an export.
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Installs logging (and OTLP export when asked) for `service`. Call once, inside the runtime.
/// A second call (tests) leaves the first setup in place.
pub fn init(service: &'static str, default_filter: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("KAKEHASHI_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let provider = if otlp_requested() { Some(otlp_provider(service)?) } else { None };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    // Not the log filter: `RUST_LOG=warn` must not stop the hop spans (all `info`) from being
    // exported, and the exporter's own gRPC spans (debug/trace) must never be.
    let trace_filter =
        EnvFilter::try_from_env("KAKEHASHI_TRACE_FILTER").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel.with_filter(trace_filter))
        .try_init();
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// W3C context carried in NATS headers (falling back to the event's extensions).
pub fn context_from(
    headers: Option<&HeaderMap>,
    extensions: Option<&HashMap<String, String>>,
) -> opentelemetry::Context {
    let p = TraceContextPropagator::new();
    if let Some(h) = headers.filter(|h| h.get(kakehashi_proto::subjects::HEADER_TRACEPARENT).is_some()) {
        return p.extract(&HeaderExtractor(h));
    }
    extensions.map_or_else(opentelemetry::Context::new, |e| p.extract(&MapExtractor(e)))
}

/// W3C context carried in gRPC metadata.
pub fn context_from_metadata(metadata: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// Makes `span` a child of `parent` when `parent` holds a valid remote span.
pub fn adopt(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The W3C headers naming `span` as parent (empty when tracing export is off, in which case
/// callers pass the incoming context through unchanged).
pub fn traceparent_of(span: &tracing::Span) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut out as &mut dyn Injector);
    }
    out
}

/// The trace id of `span` (32 hex digits), or of the incoming `traceparent` when export is off.
pub fn trace_id(span: &tracing::Span, incoming: Option<&String>) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        return sc.trace_id().to_string();
    }
    crate::audit::trace_id_of(incoming)
}
