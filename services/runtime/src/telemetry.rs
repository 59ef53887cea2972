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
//!   metadata and `Event.extensions` with the helpers below, so one event is one trace. Only a
//!   valid `traceparent` ([`parse_traceparent`]) is read, with the `tracestate` of the same
//!   carrier ([`TraceContext`]); anything else is no context at all.

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

/// Whether this process exports spans (set by [`init`]): work done only for exported spans
/// (links) is skipped otherwise, off the per-event path.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
    if provider.is_some() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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

/// Why a `traceparent` value is not a valid W3C trace context
/// (<https://www.w3.org/TR/trace-context/#traceparent-header>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// Not `version-traceid-parentid-flags` in lowercase hex of the right lengths.
    #[error("traceparent is not version-traceid-parentid-flags in lowercase hex")]
    Malformed,
    /// Version `ff`, which the specification forbids.
    #[error("traceparent version ff is invalid")]
    ForbiddenVersion,
    /// A trace-id of only zeros.
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    /// A parent-id of only zeros.
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
}

/// A `traceparent` value that passed [`parse_traceparent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent<'a>(&'a str);

impl<'a> Traceparent<'a> {
    /// The whole value, as received.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The trace-id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &'a str {
        &self.0[3..35]
    }

    /// As a remote span context (no tracestate: what a link needs).
    pub fn span_context(&self) -> Option<opentelemetry::trace::SpanContext> {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let trace_id = TraceId::from_hex(self.trace_id()).ok()?;
        let span_id = SpanId::from_hex(self.0.get(36..52)?).ok()?;
        let flags = u8::from_str_radix(self.0.get(53..55)?, 16).ok()?;
        let cx = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default());
        cx.is_valid().then_some(cx)
    }
}

/// Length of a version-00 `traceparent`; later versions may only append `-`-separated fields.
const TRACEPARENT_LEN: usize = 55;

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses a W3C `traceparent`: lowercase hex only, version `ff` refused, non-zero trace-id and
/// parent-id, exactly 55 characters for version `00` (a later version is read by its first four
/// fields, as the specification asks). The one parser of trace context in Kakehashi.
pub fn parse_traceparent(value: &str) -> Result<Traceparent<'_>, TraceparentError> {
    let b = value.as_bytes();
    if b.len() < TRACEPARENT_LEN {
        return Err(TraceparentError::Malformed);
    }
    let (version, trace_id, parent_id, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    let dashes = b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
    if !dashes || ![version, trace_id, parent_id, flags].into_iter().all(is_lower_hex) {
        return Err(TraceparentError::Malformed);
    }
    if version == b"ff" {
        return Err(TraceparentError::ForbiddenVersion);
    }
    // Version 00 is exactly its four fields; a later one may go on, but only after a dash.
    let rest_ok = if version == b"00" {
        b.len() == TRACEPARENT_LEN
    } else {
        b.get(TRACEPARENT_LEN).is_none_or(|&c| c == b'-')
    };
    if !rest_ok {
        return Err(TraceparentError::Malformed);
    }
    if trace_id.iter().all(|&c| c == b'0') {
        return Err(TraceparentError::ZeroTraceId);
    }
    if parent_id.iter().all(|&c| c == b'0') {
        return Err(TraceparentError::ZeroParentId);
    }
    Ok(Traceparent(value))
}

/// A W3C trace context as one pair: a valid `traceparent` and the `tracestate` sent with it.
/// Read only as a pair, so a `tracestate` never travels with another carrier's `traceparent`,
/// and never without a valid one (the specification: an unparsable traceparent voids it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext<'a> {
    /// The validated `traceparent`.
    pub traceparent: Traceparent<'a>,
    /// Its `tracestate`, when the same carrier has a non-empty one.
    pub tracestate: Option<&'a str>,
}

impl<'a> TraceContext<'a> {
    /// The pair one carrier holds (`get` looks a header or key up), when its traceparent is valid.
    pub fn read(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let traceparent = parse_traceparent(get(kakehashi_proto::subjects::HEADER_TRACEPARENT)?).ok()?;
        let tracestate = get(kakehashi_proto::subjects::HEADER_TRACESTATE).filter(|s| !s.is_empty());
        Some(Self { traceparent, tracestate })
    }

    /// The pair in NATS headers.
    pub fn from_headers(headers: &'a HeaderMap) -> Option<Self> {
        Self::read(|k| headers.get(k).map(|v| v.as_str()))
    }

    /// The pair in a string map (`Event.extensions`, or headers written by [`traceparent_of`]).
    pub fn from_map(map: &'a HashMap<String, String>) -> Option<Self> {
        Self::read(|k| map.get(k).map(String::as_str))
    }

    /// The pair in gRPC metadata.
    pub fn from_metadata(metadata: &'a tonic::metadata::MetadataMap) -> Option<Self> {
        Self::read(|k| metadata.get(k).and_then(|v| v.to_str().ok()))
    }

    /// The headers of this context (`traceparent`, and `tracestate` when there is one).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &'a str)> {
        [
            Some((kakehashi_proto::subjects::HEADER_TRACEPARENT, self.traceparent.as_str())),
            self.tracestate.map(|s| (kakehashi_proto::subjects::HEADER_TRACESTATE, s)),
        ]
        .into_iter()
        .flatten()
    }

    /// As an OpenTelemetry context with this remote span as parent.
    pub fn otel(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }
}

impl Extractor for TraceContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.headers().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    fn keys(&self) -> Vec<&str> {
        self.headers().map(|(k, _)| k).collect()
    }
}

/// The context a hop continues: the NATS headers' pair when valid, else the event's own
/// (`Event.extensions`) when valid — never one carrier's traceparent with another's tracestate.
pub fn incoming<'a>(
    headers: Option<&'a HeaderMap>,
    extensions: Option<&'a HashMap<String, String>>,
) -> Option<TraceContext<'a>> {
    headers.and_then(TraceContext::from_headers).or_else(|| extensions.and_then(TraceContext::from_map))
}

/// W3C context carried in NATS headers (falling back to the event's extensions); only a valid
/// `traceparent` is taken ([`incoming`]).
pub fn context_from(
    headers: Option<&HeaderMap>,
    extensions: Option<&HashMap<String, String>>,
) -> opentelemetry::Context {
    incoming(headers, extensions).map_or_else(opentelemetry::Context::new, |c| c.otel())
}

/// W3C context carried in gRPC metadata (only a valid `traceparent`).
pub fn context_from_metadata(metadata: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    TraceContext::from_metadata(metadata).map_or_else(opentelemetry::Context::new, |c| c.otel())
}

/// Makes `span` a child of `parent` when `parent` holds a valid remote span.
pub fn adopt(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to an event's creation context (the `traceparent` in its CloudEvents
/// `extensions`), unless that is the span's parent `parent` already: the OpenTelemetry
/// messaging conventions link a message's processing to where the message was created, which a
/// backend can follow when the parent chain does not lead there (a redriven event, a hop that
/// started a trace of its own). Costs nothing while this process exports no spans.
pub fn link_creation(
    span: &tracing::Span,
    parent: Option<&TraceContext<'_>>,
    extensions: Option<&HashMap<String, String>>,
) {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Some(creation) = extensions.and_then(TraceContext::from_map) else { return };
    if parent.is_some_and(|p| p.traceparent.as_str() == creation.traceparent.as_str()) {
        return;
    }
    if let Some(linked) = creation.traceparent.span_context() {
        span.add_link(linked);
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

/// The trace id of `span` (32 hex digits), or of the incoming `traceparent` when export is off
/// ("" when that is not a valid one).
pub fn trace_id<S: AsRef<str> + ?Sized>(span: &tracing::Span, incoming: Option<&S>) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        return sc.trace_id().to_string();
    }
    incoming
        .and_then(|tp| parse_traceparent(tp.as_ref()).ok())
        .map_or_else(String::new, |tp| tp.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_version_00_traceparent_of_lowercase_hex_and_non_zero_ids_is_valid() {
        let tp = parse_traceparent(VALID).expect("valid");
        assert_eq!(tp.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.as_str(), VALID);
        // Flags other than sampled are carried, not judged (only the sampled bit is defined).
        assert!(parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").is_ok());
    }

    #[test]
    fn traceparents_the_specification_calls_invalid_are_refused_with_the_reason() {
        use TraceparentError::*;
        for (value, why) in [
            ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ForbiddenVersion),
            ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", Malformed),
            ("00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01", Malformed),
            ("0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Malformed),
            ("00-00000000000000000000000000000000-b7ad6b7169203331-01", ZeroTraceId),
            ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", ZeroParentId),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", Malformed),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", Malformed),
            ("00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-0100", Malformed),
            ("00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01", Malformed),
            ("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", Malformed),
            ("", Malformed),
        ] {
            assert_eq!(parse_traceparent(value), Err(why), "{value}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields_only_when_more_follow_a_dash() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next";
        assert_eq!(parse_traceparent(later).map(|t| t.trace_id()), Ok("0af7651916cd43dd8448eb211c80319c"));
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_ok());
        assert_eq!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"),
            Err(TraceparentError::Malformed)
        );
    }

    #[test]
    fn a_tracestate_is_read_only_with_a_valid_traceparent_of_the_same_carrier() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let own = map(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")]);
        let cx = TraceContext::from_map(&own).expect("valid pair");
        assert_eq!(cx.tracestate, Some("congo=t61rcWkgMzE"));
        let bad = map(&[
            ("traceparent", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        assert_eq!(TraceContext::from_map(&bad), None, "an invalid traceparent voids its tracestate");
        assert_eq!(TraceContext::from_map(&map(&[("tracestate", "a=b")])), None);

        // Invalid headers fall back to the event's own valid pair, never mixing the two.
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-00000000000000000000000000000000-b7ad6b7169203331-01");
        headers.insert("tracestate", "from=headers");
        let got = incoming(Some(&headers), Some(&own)).expect("the extensions' pair");
        assert_eq!(got, cx);
        assert!(!context_from(Some(&headers), None).span().span_context().is_valid());
        assert!(context_from(Some(&headers), Some(&own)).span().span_context().is_valid());
    }
}
