//! What every Kakehashi gRPC server serves besides its own services: server reflection (v1 and
//! v1alpha, advertising only the services that server really serves) for stock tools; the
//! largest message its services decode; and its observability: a `SERVER` span per call
//! ([`server_span`]) and requests counted by method and status code ([`Counted`]).

use crate::metrics::{CounterVec, Registry};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic_reflection::server::{v1, v1alpha, Builder, Error};

const HEALTH: &str = "grpc.health.v1.Health";

fn builder(services: &[&str], reflection: &str) -> Builder<'static> {
    let mut b = Builder::configure()
        .register_encoded_file_descriptor_set(kakehashi_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH)
        .with_service_name(reflection);
    for s in services {
        b = b.with_service_name(*s);
    }
    b
}

/// Reflection v1 listing `services` (fully qualified names), health and itself.
pub fn reflection_v1(
    services: &[&str],
) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder(services, "grpc.reflection.v1.ServerReflection").build_v1()
}

/// Reflection v1alpha (what older grpcurl and grpcio clients speak), listing the same.
pub fn reflection_v1alpha(
    services: &[&str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder(services, "grpc.reflection.v1alpha.ServerReflection").build_v1alpha()
}

/// Default of `max_request_bytes`: the largest gRPC message a server reads (16 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Room for the rest of a request (envelope fields, protobuf framing) around its largest field.
pub const REQUEST_MARGIN_BYTES: usize = 64 * 1024;

/// The decoding limit of a server's services: `max_request_bytes`, raised when lower to the
/// largest configured field limit plus [`REQUEST_MARGIN_BYTES`]. Up to it a request reaches the
/// service, whose own limit answers (`RESOURCE_EXHAUSTED` naming its configuration key), never
/// tonic's 4 MiB default; beyond it the transport refuses it unread (`OUT_OF_RANGE`).
pub fn max_decoding_bytes(max_request_bytes: usize, largest_field_limit: usize) -> usize {
    max_request_bytes.max(largest_field_limit.saturating_add(REQUEST_MARGIN_BYTES))
}

/// The `tracing` name of the spans [`server_span`] makes (exported under their `otel.name`).
const SERVER_SPAN: &str = "kakehashi.grpc";

/// The `SERVER` span of one gRPC call (for `Server::trace_fn`), child of the caller's W3C
/// context from the request headers; none for health checks and reflection, which probes and
/// tools call all the time.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    if service.starts_with("grpc.") {
        return tracing::Span::none();
    }
    // The status fields are declared now (tracing drops fields a span was not created with) and
    // filled in by [`Counted`] once the response head is known.
    let span = tracing::info_span!(
        SERVER_SPAN,
        otel.name = %format!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    crate::telemetry::adopt(&span, crate::telemetry::context_from_metadata(&metadata));
    span
}

/// The `kakehashi_grpc_requests_total{method, code}` family, shared by a server's services.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    requests: CounterVec,
}

impl GrpcMetrics {
    /// Registers the family in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            requests: registry.counter(
                "kakehashi_grpc_requests_total",
                "gRPC calls by method (/package.Service/Method) and the status code of the response head.",
                &["method", "code"],
            ),
        }
    }

    /// `service`, its calls counted.
    pub fn wrap<S>(&self, service: S) -> Counted<S> {
        Counted { inner: service, requests: self.requests.clone() }
    }
}

/// A gRPC service whose calls are counted by method and status code, the code also recorded on
/// the call's [`server_span`]. The code is read from the response head: every unary call and every call refused before its stream starts; a stream
/// that fails later counts as it started (`OK`). An unknown method counts as `unknown`, so
/// callers cannot add series.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    requests: CounterVec,
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let requests = self.requests.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Internal,
            };
            let method = if code == tonic::Code::Unimplemented { "unknown" } else { method.as_str() };
            requests.with(&[method, code_name(code)]).inc();
            record_status(&tracing::Span::current(), code);
            response
        })
    }
}

/// Records `code` on the call's [`server_span`] (tonic polls this future inside it) as the
/// gRPC conventions ask: `rpc.grpc.status_code`, and status ERROR for the codes they count as
/// server errors. Only the response head is observable here, as for the metric: a stream that
/// fails after it started has its status in the trailers, sent after the span (which covers the
/// call up to its response head) has closed, so it is recorded as it started (`OK`).
fn record_status(span: &tracing::Span, code: tonic::Code) {
    // Another span current here (a call outside `trace_fn`) is not the call's and is left alone.
    if span.metadata().is_none_or(|m| m.name() != SERVER_SPAN) {
        return;
    }
    span.record("rpc.grpc.status_code", code as i64);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Whether the OpenTelemetry gRPC conventions count `code` as an error of a `SERVER` span.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
}

/// The canonical upper-case name of a status code (`OK`, `INVALID_ARGUMENT`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoding_limit_is_the_bound_unless_a_configured_limit_needs_more() {
        assert_eq!(max_decoding_bytes(DEFAULT_MAX_REQUEST_BYTES, 512 * 1024), DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(max_decoding_bytes(1024, 512 * 1024), 512 * 1024 + REQUEST_MARGIN_BYTES);
        assert_eq!(max_decoding_bytes(0, usize::MAX), usize::MAX, "no overflow");
    }
}
