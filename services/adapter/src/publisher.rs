//! The `Publisher` gRPC service: `Publish` answers with the stream sequence (or the original's,
//! for a duplicate); `PublishStream` pipelines publishes with a bounded window of unconfirmed
//! ones (back-pressure) and answers every event in order, errors included, without breaking.

use crate::envelope::{self, EnvelopeError};
use async_nats::jetstream;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use kakehashi_proto::identity::Identities;
use kakehashi_proto::v1::publisher_server::Publisher;
use kakehashi_proto::v1::{Event, PublishAck, PublishError};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

/// The Publisher service.
#[derive(Clone)]
pub struct PublisherService {
    js: jetstream::Context,
    identities: Identities,
    max_payload_bytes: usize,
    window: usize,
}

impl PublisherService {
    /// New service.
    pub fn new(
        js: jetstream::Context,
        identities: Identities,
        max_payload_bytes: usize,
        window: usize,
    ) -> Self {
        Self { js, identities, max_payload_bytes, window: window.max(1) }
    }
}

impl PublisherService {
    /// Checks one streamed event and starts its publish; refusals become error acks.
    async fn accept(&self, metadata: &tonic::metadata::MetadataMap, mut event: Event) -> AckFuture {
        let source = match self.identities.department(metadata, &event.source) {
            Ok(s) => s,
            Err(status) => {
                let ack = error_ack(event.id, status.code(), "unauthenticated", status.message().to_string());
                return Box::pin(async move { ack });
            }
        };
        adopt_trace_context(metadata, &mut event);
        let id = event.id.clone();
        match envelope::prepare(event, source, self.max_payload_bytes) {
            Ok(event) => start(&self.js, event).await,
            Err(e) => {
                let ack = error_ack(id, envelope_status(e.clone()).code(), e.reason(), e.to_string());
                Box::pin(async move { ack })
            }
        }
    }
}

fn envelope_status(e: EnvelopeError) -> Status {
    match e {
        EnvelopeError::PayloadTooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

/// Copies the caller's W3C trace context from gRPC metadata into the envelope when it has none.
fn adopt_trace_context(metadata: &tonic::metadata::MetadataMap, event: &mut Event) {
    for h in ["traceparent", "tracestate"] {
        if let Some(v) = metadata.get(h).and_then(|v| v.to_str().ok()) {
            event.extensions.entry(h.to_string()).or_insert_with(|| v.to_string());
        }
    }
}

type AckFuture = Pin<Box<dyn Future<Output = PublishAck> + Send>>;

/// Starts one publish; the returned future resolves to its ack (errors as error acks).
async fn start(js: &jetstream::Context, event: Event) -> AckFuture {
    let id = event.id.clone();
    let (subject, msg) = envelope::to_message(&event);
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
                Err(e) => error_ack(id, Code::Unavailable, "bus_unavailable", format!("not confirmed: {e}")),
            }
        }),
        Err(e) => {
            let ack = error_ack(id, Code::Unavailable, "bus_unavailable", format!("publish failed: {e}"));
            Box::pin(async move { ack })
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
        let (metadata, _, mut event) = request.into_parts();
        let source = self.identities.department(&metadata, &event.source)?;
        adopt_trace_context(&metadata, &mut event);
        let event = envelope::prepare(event, source, self.max_payload_bytes).map_err(envelope_status)?;
        let ack = start(&self.js, event).await.await;
        match ack.error {
            Some(e) => Err(Status::unavailable(e.message)),
            None => Ok(Response::new(ack)),
        }
    }

    type PublishStreamStream = Pin<Box<dyn Stream<Item = Result<PublishAck, Status>> + Send>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<Event>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (metadata, _, mut inbound) = request.into_parts();
        let (tx, rx) = mpsc::channel(self.window);
        let this = self.clone();
        tokio::spawn(async move {
            // Acks go out in order as soon as each is confirmed; reading pauses while the window
            // of unconfirmed publishes is full (back-pressure on the client).
            let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            let mut inbound_open = true;
            while inbound_open || !pending.is_empty() {
                tokio::select! {
                    next = inbound.next(), if inbound_open && pending.len() < this.window => {
                        match next {
                            Some(Ok(event)) => pending.push_back(this.accept(&metadata, event).await),
                            _ => inbound_open = false,
                        }
                    }
                    Some(ack) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
