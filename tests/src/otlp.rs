//! A real OTLP/gRPC trace receiver (the `TraceService` of the published OpenTelemetry protos,
//! served by tonic on `127.0.0.1:0`) that keeps every span it receives (kind, status and
//! attributes included), for trace tests.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A received span, reduced to what trace tests check.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    /// Span name.
    pub name: String,
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex ("" for a root).
    pub parent_span_id: String,
    /// Status code as the protos name it (`STATUS_CODE_UNSET`, `STATUS_CODE_OK`, `STATUS_CODE_ERROR`).
    pub status_code: String,
    /// Status message ("" when none).
    pub status_message: String,
    /// Span kind as the protos name it (`SPAN_KIND_SERVER`, `SPAN_KIND_PRODUCER`, …).
    pub kind: String,
    /// Attributes, each value rendered as text (strings as they are).
    pub attributes: BTreeMap<String, String>,
    /// Links, as (trace id, span id) in hex.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The operation a span name starts with: `deliver` of `deliver kh.ev.<type>` (span names
    /// are `{operation} {destination}` in the OpenTelemetry messaging conventions).
    pub fn operation(&self) -> &str {
        self.name.split(' ').next().unwrap_or_default()
    }

    /// The attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An attribute value as text: strings as they are, other values as their debug form.
fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let status = s.status.unwrap_or_default();
                    let code = StatusCode::try_from(status.code).unwrap_or(StatusCode::Unset);
                    let kind = SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified);
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        status_code: code.as_str_name().to_string(),
                        status_message: status.message,
                        kind: kind.as_str_name().to_string(),
                        attributes: s.attributes.iter().map(|kv| (kv.key.clone(), text(kv))).collect(),
                        links: s.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens (use `http://<addr>` as OTEL_EXPORTER_OTLP_ENDPOINT).
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sink = Sink::default();
        let spans = sink.0.clone();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                    let _ = rx.await;
                }),
        );
        Self { addr, spans, _stop: stop }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl OtlpReceiver {
    /// Points this process's standard `OTEL_*` variables at the receiver (export every 100 ms)
    /// and installs telemetry as `service` would. Only for a test binary holding a single test:
    /// the variables and the global subscriber belong to the process, and child processes
    /// started afterwards inherit the variables.
    pub fn install_export(
        &self,
        service: &'static str,
        log_filter: &str,
    ) -> kakehashi_runtime::telemetry::TelemetryGuard {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", self.addr));
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        kakehashi_runtime::telemetry::init(service, log_filter).expect("telemetry")
    }
}
