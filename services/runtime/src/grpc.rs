//! What every Kakehashi gRPC server serves besides its own services: server reflection (v1 and
//! v1alpha, advertising only the services that server really serves) for stock tools; the
//! largest message its services decode; and its observability: a `SERVER` span per call
//! ([`server_span`]) and requests counted by method and status code ([`Counted`]).

use crate::metrics::{CounterVec, Registry};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::{http, Body, Bytes, Service};
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
                "gRPC calls by method (/package.Service/Method) and their final status code (a stream's from its trailers; CANCELLED when the caller left before it ended).",
                &["method", "code"],
            ),
        }
    }

    /// `service`, its calls counted.
    pub fn wrap<S>(&self, service: S) -> Counted<S> {
        Counted { inner: service, requests: self.requests.clone() }
    }
}

/// A gRPC service whose calls are counted by method and final status code, the code also
/// recorded on the call's [`server_span`]. The code is the response head's when it carries one (a
/// call refused before it started), else the trailers' once the response body ends (a unary
/// call's, or a stream's however long it ran); a call whose caller left before that counts as
/// `CANCELLED`. The span stays open until then, so it covers the whole call. An unknown method
/// counts as `unknown`, so callers cannot add series.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    requests: CounterVec,
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
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
            let call = Call { span: tracing::Span::current(), requests, method, ended: false };
            match response.await {
                Ok(r) => match grpc_status(r.headers()) {
                    Some(code) => {
                        call.end(code);
                        Ok(r)
                    }
                    None => Ok(r.map(|body| tonic::body::Body::new(Ending { body, call: Some(call) }))),
                },
                Err(e) => {
                    call.end(tonic::Code::Internal);
                    Err(e)
                }
            }
        })
    }
}

/// The `grpc-status` in a response head or trailers.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from(code))
}

/// One call, until its final status is known; dropped before, it ends `CANCELLED` (the caller
/// left, or the connection broke, before the answer or its end was sent).
struct Call {
    span: tracing::Span,
    requests: CounterVec,
    method: String,
    ended: bool,
}

impl Call {
    /// Counts the call with its final `code` and records it on its span.
    fn end(mut self, code: tonic::Code) {
        self.finish(code);
    }

    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let method = if code == tonic::Code::Unimplemented { "unknown" } else { self.method.as_str() };
        self.requests.with(&[method, code_name(code)]).inc();
        record_status(&self.span, code);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body whose trailers end its call ([`Counted`]).
struct Ending {
    body: tonic::body::Body,
    /// None once ended.
    call: Option<Call>,
}

impl Body for Ending {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(tonic::Code::Unknown))
            }
            Poll::Ready(Some(Err(status))) => Some(status.code()),
            // Ended without trailers, which gRPC always sends.
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            if let Some(call) = self.call.take() {
                call.end(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        // A body over before it was read (never polled: no trailers) is no cancelled call.
        if self.body.is_end_stream() {
            if let Some(call) = self.call.take() {
                call.end(tonic::Code::Unknown);
            }
        }
    }
}

/// Records `code` on the call's [`server_span`] (tonic polls the call's future inside it) as the
/// gRPC conventions ask: `rpc.grpc.status_code`, and status ERROR for the codes they count as
/// server errors.
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
    use http_body_util::BodyExt;

    /// A service answering every call with `head` (its `grpc-status`, if any) and a body of one
    /// message then trailers with `trailer` (none: the body ends without trailers).
    #[derive(Clone)]
    struct Answers {
        head: Option<&'static str>,
        trailer: Option<&'static str>,
    }

    impl Service<http::Request<()>> for Answers {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut frames = vec![Ok::<_, tonic::Status>(hyper::body::Frame::data(Bytes::from_static(b"m")))];
            if let Some(code) = self.trailer {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static(code));
                frames.push(Ok(hyper::body::Frame::trailers(trailers)));
            }
            let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
            let mut response = http::Response::new(tonic::body::Body::new(body));
            if let Some(code) = self.head {
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
            }
            std::future::ready(Ok(response))
        }
    }

    /// Calls `answers` through [`Counted`], reading the body to its end unless `leave` (then
    /// dropping it unread), and returns the codes the call was counted with, and how often.
    async fn counted(answers: Answers, leave: bool) -> Vec<(String, u64)> {
        let registry = Registry::new();
        let metrics = GrpcMetrics::new(&registry);
        let mut service = metrics.wrap(answers);
        let request = http::Request::builder().uri("/p.S/M").body(()).expect("request");
        let response = service.call(request).await.expect("answered");
        if leave {
            drop(response);
        } else {
            let _ = response.into_body().collect().await;
        }
        ["OK", "INTERNAL", "OUT_OF_RANGE", "CANCELLED", "UNKNOWN"]
            .into_iter()
            .map(|code| (code.to_string(), metrics.requests.with(&["/p.S/M", code]).get()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    #[tokio::test]
    async fn a_call_is_counted_with_its_final_status_from_the_head_or_the_trailers() {
        let once = |code: &str| vec![(code.to_string(), 1)];
        assert_eq!(counted(Answers { head: Some("11"), trailer: None }, false).await, once("OUT_OF_RANGE"));
        assert_eq!(counted(Answers { head: None, trailer: Some("0") }, false).await, once("OK"));
        // A stream that fails after it started: its status comes in the trailers.
        assert_eq!(counted(Answers { head: None, trailer: Some("13") }, false).await, once("INTERNAL"));
        assert_eq!(counted(Answers { head: None, trailer: None }, false).await, once("UNKNOWN"));
        // The caller left before the end.
        assert_eq!(counted(Answers { head: None, trailer: Some("0") }, true).await, once("CANCELLED"));
    }

    #[test]
    fn the_decoding_limit_is_the_bound_unless_a_configured_limit_needs_more() {
        assert_eq!(max_decoding_bytes(DEFAULT_MAX_REQUEST_BYTES, 512 * 1024), DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(max_decoding_bytes(1024, 512 * 1024), 512 * 1024 + REQUEST_MARGIN_BYTES);
        assert_eq!(max_decoding_bytes(0, usize::MAX), usize::MAX, "no overflow");
    }
}
