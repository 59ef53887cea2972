//! The `Publisher` gRPC service: `Publish` answers with the stream sequence (or the original's,
//! for a duplicate); `PublishStream` pipelines publishes with a bounded window of unconfirmed
//! ones (back-pressure) and answers every event in order, errors included, without breaking.
//!
//! Every event is checked before it reaches the bus, and a refusal names a stable reason:
//! the caller's identity (`unauthenticated`, `permission_denied`, `invalid_source`), the
//! envelope (`invalid_type`, `invalid_id`, `unsupported_content_type`), the payload
//! (`payload_not_json`, `payload_too_large`) and the type (`unknown_type`: no schema is
//! registered for it, learnt from the `KH_SCHEMAS` bucket). `Publish` returns the refusal as a
//! gRPC status with an `ErrorInfo` detail carrying the reason; `PublishStream` puts it in that
//! event's ack and goes on with the next event.

use crate::envelope::{self, EnvelopeError};
use crate::schemas::SchemaIndex;
use async_nats::jetstream;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use kakehashi_proto::subjects::{HEADER_TRACEPARENT, HEADER_TRACESTATE};
use kakehashi_proto::v1::publisher_server::Publisher;
use kakehashi_proto::v1::{Event, PublishAck, PublishCloudEventRequest, PublishError};
use kakehashi_runtime::audit::{AuditRecord, AuditWriter};
use kakehashi_runtime::identity::Identities;
use kakehashi_runtime::metrics::{CounterVec, Registry};
use kakehashi_runtime::telemetry;
use prost::Message as _;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument;

/// Domain of the `ErrorInfo` details of refusals.
const ERROR_DOMAIN: &str = "kakehashi.v1.Publisher";

/// The Publisher service.
#[derive(Clone)]
pub struct PublisherService {
    js: jetstream::Context,
    identities: Identities,
    /// Where `published` hops are recorded.
    audit: AuditWriter,
    /// Accepted events by source and type; duplicates.
    published: CounterVec,
    duplicates: CounterVec,
    /// Registered schema subjects, to refuse events of unknown types at once.
    schemas: SchemaIndex,
    max_payload_bytes: usize,
    /// Largest encoded event `KH_INGRESS` takes (its limit less [`HEADER_ALLOWANCE`]).
    max_event_bytes: usize,
    window: usize,
    /// Deepest nesting of a CloudEvents JSON document (`max_json_depth`).
    max_json_depth: usize,
}

/// The adapter's limits, from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `Event.data` (`max_payload_bytes`).
    pub max_payload_bytes: usize,
    /// `KH_INGRESS`'s message limit.
    pub ingress_max_message_bytes: usize,
    /// Unconfirmed publishes per `PublishStream` (`stream_window`).
    pub window: usize,
    /// Deepest nesting of a CloudEvents JSON document (`max_json_depth`).
    pub max_json_depth: usize,
}

/// Why one event was not published: a gRPC code, a stable reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// gRPC status code.
    pub code: Code,
    /// Stable reason code.
    pub reason: &'static str,
    /// Human-readable explanation; never a payload value.
    pub message: String,
}

impl Refusal {
    fn from_identity(status: &Status) -> Self {
        let reason = match status.code() {
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            _ => "invalid_source",
        };
        Self { code: status.code(), reason, message: status.message().to_string() }
    }

    fn from_envelope(e: &EnvelopeError) -> Self {
        let code = match e {
            EnvelopeError::PayloadTooLarge { .. } => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        };
        Self { code, reason: e.reason(), message: e.to_string() }
    }

    /// As a gRPC status with an `ErrorInfo` detail naming the reason.
    pub fn to_status(&self) -> Status {
        let details =
            ErrorDetails::with_error_info(self.reason, ERROR_DOMAIN, HashMap::<String, String>::new());
        Status::with_error_details(self.code, self.message.clone(), details)
    }

    /// As the error ack of one streamed event.
    pub fn to_ack(&self, event_id: String) -> PublishAck {
        error_ack(event_id, self.code, self.reason, self.message.clone())
    }
}

impl PublisherService {
    /// New service.
    pub fn new(
        js: jetstream::Context,
        identities: Identities,
        schemas: SchemaIndex,
        observe: (AuditWriter, &Registry),
        limits: Limits,
    ) -> Self {
        let (audit, metrics) = observe;
        let Limits { max_payload_bytes, ingress_max_message_bytes, window, max_json_depth } = limits;
        Self {
            js,
            identities,
            audit,
            published: metrics.counter(
                "kakehashi_events_published_total",
                "Events accepted into KH_INGRESS, by source and type.",
                &["source", "type"],
            ),
            duplicates: metrics.counter(
                "kakehashi_events_duplicate_total",
                "Publishes of an id already accepted (dropped by the bus), by source.",
                &["source"],
            ),
            schemas,
            max_payload_bytes,
            max_event_bytes: ingress_max_message_bytes.saturating_sub(HEADER_ALLOWANCE),
            window: window.max(1),
            max_json_depth,
        }
    }

    /// Starts one publish inside a `publish` span (child of the caller's trace context); once
    /// confirmed, the event is counted and its `published` hop recorded.
    async fn start(&self, event: Event) -> AckFuture {
        // PRODUCER (`send`): its context is the creation context the next hops continue from.
        // Named `{operation} {destination}` (OpenTelemetry messaging conventions), the bucket a
        // placeholder: the subject itself names one of 1,024 buckets.
        let template = kakehashi_proto::subjects::ingress_template(&event.source, &event.r#type);
        let span = tracing::info_span!(
            "kakehashi.publish",
            otel.name = %format_args!("publish {template}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name =
                %kakehashi_proto::subjects::ingress(&event.source, &event.r#type, &event.subject),
            messaging.destination.template = %template,
            messaging.message.id = %event.id,
            event_id = %event.id,
            source = %event.source,
            trace_id = tracing::field::Empty
        );
        telemetry::adopt(&span, telemetry::context_from(None, Some(&event.extensions)));
        span.record(
            "trace_id",
            telemetry::trace_id(&span, event.extensions.get(HEADER_TRACEPARENT)).as_str(),
        );
        let trace = telemetry::traceparent_of(&span);
        let mut record = AuditRecord::hop(&event, "published", "ok");
        record.trace_id = telemetry::trace_id(&span, event.extensions.get(HEADER_TRACEPARENT));
        let confirm = start(&self.js, &event, &trace).instrument(span.clone()).await;
        let (audit, published, duplicates) =
            (self.audit.clone(), self.published.clone(), self.duplicates.clone());
        Box::pin(
            async move {
                let ack = confirm.await;
                if ack.error.is_none() {
                    if ack.duplicate {
                        duplicates.with(&[&record.department]).inc();
                    } else {
                        published.with(&[&record.department, &record.event_type]).inc();
                        record.detail = format!("KH_INGRESS #{}", ack.sequence);
                        audit.record(record).await;
                    }
                }
                ack
            }
            .instrument(span),
        )
    }

    /// Everything checked before publishing: identity, envelope, payload, type.
    async fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
        mut event: Event,
    ) -> Result<Event, Refusal> {
        let source = self
            .identities
            .department((metadata, extensions), &event.source)
            .map_err(|s| Refusal::from_identity(&s))?;
        adopt_trace_context(metadata, &mut event);
        let event = envelope::prepare(event, source, self.max_payload_bytes)
            .map_err(|e| Refusal::from_envelope(&e))?;
        // The payload limit leaves room for the envelope, but extensions and ids are the
        // caller's too: the whole event must fit KH_INGRESS, or the stream refuses it.
        let size = event.encoded_len();
        if size > self.max_event_bytes {
            return Err(Refusal {
                code: Code::ResourceExhausted,
                reason: "event_too_large",
                message: format!(
                    "the event is {size} bytes encoded, over the {} KH_INGRESS takes \
                     (topology.max_message_bytes less the dead-letter room and {HEADER_ALLOWANCE} bytes of headers)",
                    self.max_event_bytes
                ),
            });
        }
        let subject = if event.schema.is_empty() { &event.r#type } else { &event.schema };
        if let Err(e) = self.schemas.resolve(subject, event.schema_version).await {
            return Err(Refusal {
                code: Code::FailedPrecondition,
                reason: e.reason(),
                message: e.to_string(),
            });
        }
        Ok(event)
    }

    /// Checks one streamed event and starts its publish; refusals become error acks.
    async fn accept(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
        event: Event,
    ) -> AckFuture {
        let id = event.id.clone();
        match self.check(metadata, extensions, event).await {
            Ok(event) => self.start(event).await,
            Err(refusal) => {
                let ack = refusal.to_ack(id);
                Box::pin(async move { ack })
            }
        }
    }
}

/// Copies the caller's W3C trace context from gRPC metadata into the envelope when it has none.
///
/// The pair goes together and only with a valid `traceparent`: a metadata `tracestate` belongs
/// to the metadata `traceparent`, never to the event's. An event carrying any context of its own
/// keeps it as sent and gets nothing from the metadata, even when its `traceparent` is invalid:
/// the event is not refused for it (it is the caller's attribute), but every reader validates
/// it ([`telemetry::TraceContext`]), so an invalid one is neither a span's parent, nor the
/// ingress message's `traceparent` header, nor an audit trace id.
fn adopt_trace_context(metadata: &tonic::metadata::MetadataMap, event: &mut Event) {
    if event.extensions.contains_key(HEADER_TRACEPARENT) || event.extensions.contains_key(HEADER_TRACESTATE) {
        return;
    }
    if let Some(cx) = telemetry::TraceContext::from_metadata(metadata) {
        event.extensions.extend(cx.headers().map(|(h, v)| (h.to_string(), v.to_string())));
    }
}

type AckFuture = Pin<Box<dyn Future<Output = PublishAck> + Send>>;

/// Starts one publish; the returned future resolves to its ack (errors as error acks).
async fn start(
    js: &jetstream::Context,
    event: &Event,
    trace: &std::collections::HashMap<String, String>,
) -> AckFuture {
    let id = event.id.clone();
    let (subject, msg) = envelope::to_message_traced(event, trace);
    match js.send_publish(subject, msg).await {
        Ok(confirm) => Box::pin(async move {
            match confirm.await {
                Ok(ack) => PublishAck {
                    event_id: id,
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    error: None,
                },
                Err(e) => failed_ack(id, &e, "not confirmed"),
            }
        }),
        Err(e) => {
            let ack = failed_ack(id, &e, "publish failed");
            Box::pin(async move { ack })
        }
    }
}

/// Room left for the NATS headers of an ingress message (`Nats-Msg-Id`, W3C trace context)
/// when the encoded event is checked against `KH_INGRESS`'s limit.
const HEADER_ALLOWANCE: usize = 1024;

/// The error ack of a publish NATS did not store: a refusal of this very message (over a
/// limit, refused by the stream) is final and says so; anything else is worth a retry.
fn failed_ack(event_id: String, e: &jetstream::context::PublishError, what: &str) -> PublishAck {
    match crate::sdk::bus::classify(e) {
        crate::sdk::bus::Failure::Refused(refused) => {
            let code = match refused.reason() {
                "payload_too_large" => Code::ResourceExhausted,
                _ => Code::FailedPrecondition,
            };
            error_ack(event_id, code, refused.reason(), format!("{what}: {refused}"))
        }
        crate::sdk::bus::Failure::Transient => {
            error_ack(event_id, Code::Unavailable, "bus_unavailable", format!("{what}: {e}"))
        }
    }
}

fn error_ack(event_id: String, code: Code, reason: &str, message: String) -> PublishAck {
    PublishAck {
        event_id,
        error: Some(PublishError { code: code as i32, reason: reason.to_string(), message }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(&self, request: Request<Event>) -> Result<Response<PublishAck>, Status> {
        let (metadata, extensions, event) = request.into_parts();
        let event = self.check(&metadata, &extensions, event).await.map_err(|r| r.to_status())?;
        let ack = self.start(event).await.await;
        match ack.error {
            Some(e) => Err(Status::unavailable(e.message)),
            None => Ok(Response::new(ack)),
        }
    }

    async fn publish_cloud_event(
        &self,
        request: Request<PublishCloudEventRequest>,
    ) -> Result<Response<PublishAck>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        // Mapped onto an `Event`, then exactly `Publish`: the source must be the caller.
        let event = crate::cloudevent::to_event(request, self.max_json_depth).map_err(|r| r.to_status())?;
        self.publish(Request::from_parts(metadata, extensions, event)).await
    }

    type PublishStreamStream = Pin<Box<dyn Stream<Item = Result<PublishAck, Status>> + Send>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<Event>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let (tx, rx) = mpsc::channel(self.window);
        let this = self.clone();
        tokio::spawn(async move {
            // Acks go out in order as soon as each is confirmed; reading pauses while the window
            // of unconfirmed publishes is full (back-pressure on the client).
            let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            let mut inbound_open = true;
            // Why the caller's stream broke (a message over the decoding limit, a transport
            // error): the call ends with it once the acks before it are sent, so the caller
            // learns why its later events got none.
            let mut broken: Option<Status> = None;
            while inbound_open || !pending.is_empty() {
                tokio::select! {
                    next = inbound.next(), if inbound_open && pending.len() < this.window => {
                        match next {
                            Some(Ok(event)) => pending.push_back(this.accept(&metadata, &extensions, event).await),
                            Some(Err(status)) => {
                                broken = Some(status);
                                inbound_open = false;
                            }
                            None => inbound_open = false,
                        }
                    }
                    Some(ack) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if let Some(status) = broken {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const OWN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn metadata(pairs: &[(&'static str, &'static str)]) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, tonic::metadata::MetadataValue::from_static(v));
        }
        m
    }

    fn adopted(metadata: &tonic::metadata::MetadataMap, own: &[(&str, &str)]) -> HashMap<String, String> {
        let mut event = Event {
            extensions: own.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        adopt_trace_context(metadata, &mut event);
        event.extensions
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_callers_valid_context_is_adopted_as_a_pair() {
        let m = metadata(&[("traceparent", CALLER), ("tracestate", "congo=t61rcWkgMzE")]);
        assert_eq!(adopted(&m, &[]), map(&[("traceparent", CALLER), ("tracestate", "congo=t61rcWkgMzE")]));
        assert_eq!(adopted(&metadata(&[("traceparent", CALLER)]), &[]), map(&[("traceparent", CALLER)]));
    }

    #[test]
    fn an_events_own_traceparent_never_gets_the_callers_tracestate() {
        let m = metadata(&[("traceparent", CALLER), ("tracestate", "congo=t61rcWkgMzE")]);
        assert_eq!(adopted(&m, &[("traceparent", OWN)]), map(&[("traceparent", OWN)]));
        // Invalid, it stays the caller's attribute, but brings in no other context either.
        let invalid = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(adopted(&m, &[("traceparent", invalid)]), map(&[("traceparent", invalid)]));
    }

    #[test]
    fn an_invalid_caller_traceparent_brings_neither_it_nor_its_tracestate() {
        for invalid in [
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        ] {
            let m = metadata(&[("traceparent", invalid), ("tracestate", "congo=t61rcWkgMzE")]);
            assert_eq!(adopted(&m, &[]), HashMap::new(), "{invalid}");
        }
        assert_eq!(adopted(&metadata(&[("tracestate", "congo=t61rcWkgMzE")]), &[]), HashMap::new());
    }
}
