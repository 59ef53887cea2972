//! `Delivery.Subscribe`: streams a subscription's events to a department. The server keeps at
//! most the client's in-flight limit unacked on one stream; acks and nacks map to JetStream
//! acks and naks; an event delivered more than the subscription's maximum is dead-lettered as
//! `delivery_exhausted` and terminated once the dead letter is stored (one `KH_DLQ` refuses as
//! too large is logged and the event kept in `KH_EVENTS`, tried again a minute later). When the
//! client goes away its unacked deliveries are nacked at once, so a reconnecting subscriber gets
//! them without waiting for the ack wait.

use crate::dead_letter;
use crate::metrics::RegistryMetrics;
use crate::policy::Policies;
use crate::store::SchemaStore;
use crate::subscriptions::{SubscriptionRecord, Subscriptions};
use crate::validator::reason::Reason;
use async_nats::jetstream::{self, consumer, message::Acker, AckKind};
use futures::{Stream, StreamExt};
use kakehashi_proto::cloudevents::binary::{envelope_bytes, from_events_message};
use kakehashi_proto::subjects;
use kakehashi_proto::v1::{subscribe_request, EventDelivery, SubscribeRequest};
use kakehashi_runtime::audit::{AuditRecord, AuditWriter};
use kakehashi_runtime::identity::Identities;
use kakehashi_runtime::metrics::{Counter, Histogram};
use kakehashi_runtime::telemetry;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Lifetime of one pull request of a Subscribe stream. Short, because a stream opened after a
/// crash waits this long for the dead instance's pull requests to expire before it resets the
/// consumer (a dead request would otherwise take redeliveries and lose them until their ack
/// wait, out of order).
const PULL_EXPIRY: Duration = Duration::from_millis(2_730);

/// The Delivery service.
#[derive(Clone)]
pub struct DeliveryService {
    js: jetstream::Context,
    identities: Identities,
    subscriptions: Subscriptions,
    privacy: Privacy,
    audit: AuditWriter,
    metrics: RegistryMetrics,
    default_in_flight: u32,
    max_in_flight: u32,
    actor: String,
    claims: crate::stream_claims::StreamClaims,
}

/// What delivery needs to keep readers to what they may see.
#[derive(Clone)]
pub struct Privacy {
    /// Schemas, for where personal identifiers are.
    pub store: SchemaStore,
    /// Who may read what, and who gets raw identifiers.
    pub policies: Policies,
    /// Pseudonym key.
    pub secret: Arc<[u8]>,
}

impl DeliveryService {
    /// New service; the audit writer's actor also signs dead letters.
    pub fn new(
        js: jetstream::Context,
        identities: Identities,
        subscriptions: Subscriptions,
        privacy: Privacy,
        audit: AuditWriter,
        metrics: RegistryMetrics,
        in_flight: (u32, u32),
    ) -> Self {
        let actor = audit.actor().to_string();
        let (default_in_flight, max_in_flight) = in_flight;
        Self {
            js,
            identities,
            subscriptions,
            privacy,
            audit,
            metrics,
            default_in_flight,
            max_in_flight,
            actor,
            claims: Default::default(),
        }
    }
}

type DeliveryStream = Pin<Box<dyn Stream<Item = Result<EventDelivery, Status>> + Send>>;

#[tonic::async_trait]
impl kakehashi_proto::v1::delivery_server::Delivery for DeliveryService {
    type SubscribeStream = DeliveryStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (metadata, extensions, mut requests) = request.into_parts();
        let open = match requests.message().await? {
            Some(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) }) => open,
            _ => return Err(Status::invalid_argument("the first request must be `open`")),
        };
        // The reader is whoever the credentials say, never just the field.
        self.identities.acting_for((&metadata, &extensions), &open.department)?;
        let sub = self.subscriptions.get(&open.department, &open.subscription).ok_or_else(|| {
            Status::not_found(format!("subscription {}.{} not found", open.department, open.subscription))
        })?;
        let in_flight = match open.max_in_flight {
            0 => self.default_in_flight,
            n => n.min(self.max_in_flight),
        } as usize;
        let consumer_name = sub.consumer_name();
        let claim = self.claims.claim(&consumer_name, crate::stream_claims::CLAIM_WAIT).await.ok_or_else(|| {
            Status::failed_precondition(format!(
                "subscription {}.{} already has an open Subscribe stream on this registry: one stream reads a subscription at a time (order per key)",
                open.department, open.subscription
            ))
        })?;
        let consumer: consumer::PullConsumer = self
            .js
            .get_consumer_from_stream(&consumer_name, subjects::STREAM_EVENTS)
            .await
            .map_err(|e| Status::unavailable(format!("subscription consumer: {e}")))?;
        // Order per key through any failover: what an earlier stream (maybe on a crashed
        // instance) left unacked is handed out again now, before anything newer, instead of
        // after its ack wait. The reset restarts NATS's delivery counts; the repeat marks
        // below still flag those events.
        // The consumer's last delivery sequence as this stream starts: a delivery NATS makes
        // to anyone else from now on (a dead stream's pull request) shows as a jump.
        let mut last_delivery = consumer.cached_info().delivered.consumer_sequence;
        if consumer.cached_info().num_ack_pending > 0 {
            if consumer.cached_info().num_waiting > 0 {
                tokio::time::sleep(PULL_EXPIRY + Duration::from_millis(100)).await;
            }
            let stream = self
                .js
                .get_stream(subjects::STREAM_EVENTS)
                .await
                .map_err(|e| Status::unavailable(format!("KH_EVENTS: {e}")))?;
            let reset = stream
                .reset_consumer(&consumer_name, None)
                .await
                .map_err(|e| Status::unavailable(format!("subscription consumer reset: {e}")))?;
            // A reset restarts the consumer's delivery sequence.
            last_delivery = reset.info.delivered.consumer_sequence;
        }
        let marks = crate::repeats::RepeatMarks::open(self.subscriptions.bucket().clone(), &consumer_name)
            .await
            .map_err(|e| Status::unavailable(format!("repeat marks: {e}")))?;
        let (tx, rx) = mpsc::channel(in_flight.max(1));
        let session = Session {
            js: self.js.clone(),
            consumer_name: consumer_name.clone(),
            delivered: self.metrics.delivered.with(&[&consumer_name, &sub.department]),
            acked: self.metrics.acked.with(&[&consumer_name, &sub.department]),
            sub,
            privacy: self.privacy.clone(),
            audit: self.audit.clone(),
            latency: self.metrics.validated_to_acked.with(&[&consumer_name]),
            dead_lettered: self.metrics.dead_lettered.clone(),
            actor: self.actor.clone(),
            in_flight,
            dead_letter_limit: Default::default(),
            tx,
            _claim: claim,
        };
        tokio::spawn(session.run(consumer, requests, marks, last_delivery));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A delivery the client has not acked yet.
struct InFlight {
    acker: Acker,
    /// The `delivered` audit record, the base of the ack/nack records.
    record: AuditRecord,
    /// The delivery's span: the subscriber's ack or nack is its child.
    span: tracing::Span,
    /// When the validator stored the event (KH_EVENTS server time).
    validated_at: Option<time::OffsetDateTime>,
    /// Every delivery id this event was handed out under on this stream (redeliveries add one).
    delivery_ids: Vec<u64>,
}

/// The deliveries a client holds, by stream sequence. A redelivery of an event the client
/// still holds replaces the earlier delivery in the window (so it occupies one slot), and an
/// ack or nack of any of its delivery ids settles it.
#[derive(Default)]
struct Window {
    by_seq: HashMap<u64, InFlight>,
    ids: HashMap<u64, u64>,
}

impl Window {
    fn len(&self) -> usize {
        self.by_seq.len()
    }

    fn insert(&mut self, delivery_id: u64, seq: u64, mut f: InFlight) {
        if let Some(old) = self.by_seq.remove(&seq) {
            f.delivery_ids = old.delivery_ids;
        }
        f.delivery_ids.push(delivery_id);
        self.ids.insert(delivery_id, seq);
        self.by_seq.insert(seq, f);
    }

    fn take(&mut self, delivery_id: u64) -> Option<InFlight> {
        let seq = self.ids.remove(&delivery_id)?;
        let f = self.by_seq.remove(&seq)?;
        for id in &f.delivery_ids {
            self.ids.remove(id);
        }
        Some(f)
    }

    /// Drops an event the server will not deliver again (terminated here).
    fn forget(&mut self, seq: u64) {
        if let Some(f) = self.by_seq.remove(&seq) {
            for id in &f.delivery_ids {
                self.ids.remove(id);
            }
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = InFlight> + '_ {
        self.ids.clear();
        self.by_seq.drain().map(|(_, f)| f)
    }
}

impl InFlight {
    /// The ack/nack record of this delivery (the delivered record, moved, not copied).
    fn into_record(self, hop: &str, outcome: &str, detail: &str) -> AuditRecord {
        AuditRecord {
            hop: hop.to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
            time_us: 0,
            ..self.record
        }
    }
}

/// Why an event is not handed to this reader.
#[derive(Debug)]
enum Withheld {
    /// Policy no longer lets the reader read the type.
    NotPermitted,
    /// The event cannot be made safe to deliver.
    Broken(String),
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Withheld::NotPermitted => f.write_str("reader not permitted"),
            Withheld::Broken(m) => f.write_str(m),
        }
    }
}

/// One client's Subscribe stream.
struct Session {
    js: jetstream::Context,
    sub: SubscriptionRecord,
    /// `sub`'s consumer name, formatted once per stream.
    consumer_name: String,
    privacy: Privacy,
    audit: AuditWriter,
    /// This subscription's counters, looked up once per stream.
    delivered: Counter,
    acked: Counter,
    latency: Histogram,
    /// Dead letters by reason and source (`delivery_exhausted`, undecodable stored events).
    dead_lettered: kakehashi_runtime::metrics::CounterVec,
    actor: String,
    in_flight: usize,
    /// The largest dead letter `KH_DLQ` stores, read at this stream's first dead letter
    /// ([`crate::validator::dead_letter_limit`], the validator's limit).
    dead_letter_limit: tokio::sync::OnceCell<usize>,
    tx: mpsc::Sender<Result<EventDelivery, Status>>,
    /// This stream's hold on its subscription, released when the session ends.
    _claim: crate::stream_claims::Claim,
}

impl Session {
    async fn run(
        self,
        consumer: consumer::PullConsumer,
        mut requests: Streaming<SubscribeRequest>,
        mut marks: crate::repeats::RepeatMarks,
        last_delivery: u64,
    ) {
        let mut unacked = Window::default();
        let mut next_id: u64 = 1;
        // Consumer sequence of the last delivery NATS made (to this stream, or as the stream
        // opened or reset): a jump means deliveries were lost on the way (a node died with them
        // in flight, or NATS handed them to a pull request nobody reads any more). Checked from
        // the first delivery on: an unchecked first delivery after a reset let a delivery lost
        // to a stale pull request come back only after the ack wait, behind newer events.
        let mut last_delivery: Option<u64> = Some(last_delivery);
        'session: loop {
            let want = self.in_flight.saturating_sub(unacked.len());
            if want == 0 {
                // Full: only the client's acks can make room.
                match requests.message().await {
                    Ok(Some(r)) => self.handle(r, &mut unacked).await,
                    _ => break 'session,
                }
                continue;
            }
            // Pull requests live long (acks are handled meanwhile) and not on whole seconds: on
            // nats-server 2.9 a redelivery due exactly as a pull request expires can be lost
            // until the next ack wait, and ack waits are whole seconds.
            let batch = consumer.fetch().max_messages(want).expires(PULL_EXPIRY).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, subscription = %self.sub.name, "fetch failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // async-nats ends a fetch whose server never answers (the consumer leader's node
            // died with the pull request) only 5 s after the request expired: measured as 7.7 s
            // without deliveries after such a kill. Pull again one second after the server
            // went quiet past the expiry instead, so a new leader is asked once there is one;
            // anything the dropped request still took shows as a jump and is reset.
            let quiet = tokio::time::sleep(PULL_EXPIRY + Duration::from_secs(1));
            tokio::pin!(quiet);
            loop {
                tokio::select! {
                    _ = &mut quiet => break,
                    m = batch.next() => match m {
                        Some(Ok(msg)) => {
                            let delivery = msg.info().map(|i| i.consumer_sequence).ok();
                            if let (Some(last), Some(got)) = (last_delivery, delivery) {
                                if got > last + 1 {
                                    // Newer events must not overtake the lost ones: drop this
                                    // batch (so its pull request takes nothing more) and have
                                    // everything unacked handed out again.
                                    drop(batch);
                                    last_delivery = self.reset_after_loss(&consumer, last, got).await;
                                    if last_delivery.is_none() {
                                        // Going on would hand out newer events before the lost
                                        // ones: end the stream instead. The client's next
                                        // Subscribe resets the consumer before delivering.
                                        let status = Status::unavailable(
                                            "deliveries were lost in transit and the subscription could not be reset to keep order; subscribe again",
                                        );
                                        let _ = self.tx.send(Err(status)).await;
                                        break 'session;
                                    }
                                    continue 'session;
                                }
                            }
                            last_delivery = delivery.or(last_delivery);
                            if !self.deliver(msg, &mut next_id, &mut unacked, &mut marks, &mut requests).await {
                                break 'session;
                            }
                            quiet.as_mut().reset(tokio::time::Instant::now() + PULL_EXPIRY + Duration::from_secs(1));
                        }
                        Some(Err(e)) => {
                            // E.g. no responders while the consumer has no leader: pull again
                            // shortly, not in a tight loop (thousands a second were seen).
                            tracing::debug!(error = %e, "fetch batch ended");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                        None => break,
                    },
                    r = requests.message() => match r {
                        Ok(Some(r)) => self.handle(r, &mut unacked).await,
                        _ => break 'session,
                    },
                }
            }
        }
        marks.release().await;
        // The client is gone: hand its unacked events back for redelivery now.
        for f in unacked.drain() {
            let _ = f.acker.ack_with(AckKind::Nak(None)).await;
            self.audit.record(f.into_record("nacked", "error", "subscriber disconnected")).await;
        }
    }

    /// Deliveries `last + 1 .. got` never reached this stream (NATS counts them as delivered
    /// and would resend them only after the ack wait, behind newer events). Resets the
    /// consumer to its ack floor, so everything unacked is delivered again now, in stream
    /// order; what the department may have seen is marked by the repeat marks.
    /// Returns the consumer's delivery sequence after the reset (the reset restarts it), to
    /// check the next delivery against; `None` when the reset failed (the caller then ends the
    /// stream).
    async fn reset_after_loss(&self, consumer: &consumer::PullConsumer, last: u64, got: u64) -> Option<u64> {
        tracing::warn!(subscription = %self.sub.name, last, got, "deliveries lost in transit; resetting the subscription to its ack floor to keep order");
        // A pull request nobody reads (a dead stream's, or one whose interest NATS has not
        // dropped yet) would take the first deliveries after the reset and lose them again:
        // let such requests expire first, as a stream opening after a crash does.
        let mut consumer = consumer.clone();
        if consumer.info().await.is_ok_and(|i| i.num_waiting > 0) {
            tokio::time::sleep(PULL_EXPIRY + Duration::from_millis(100)).await;
        }
        let began = std::time::Instant::now();
        for attempt in 1..=10 {
            let reset = match self.js.get_stream(subjects::STREAM_EVENTS).await {
                Ok(stream) => stream
                    .reset_consumer(&self.consumer_name, None)
                    .await
                    .map(|r| r.info.delivered.consumer_sequence)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match reset {
                Ok(delivered) => {
                    tracing::info!(subscription = %self.sub.name, attempt, took_ms = began.elapsed().as_millis() as u64, "subscription reset to its ack floor");
                    return Some(delivered);
                }
                Err(e) if attempt == 10 => {
                    tracing::error!(subscription = %self.sub.name, error = %e, "subscription reset failed; ending the stream rather than delivering newer events before the lost ones");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        None
    }

    /// Sends one event to the client; false when the client is gone.
    async fn deliver(
        &self,
        msg: jetstream::Message,
        next_id: &mut u64,
        unacked: &mut Window,
        marks: &mut crate::repeats::RepeatMarks,
        requests: &mut Streaming<SubscribeRequest>,
    ) -> bool {
        // The reply subject parsed once for all three.
        let (attempt, seq, validated_at) = msg
            .info()
            .map(|i| (i.delivered.max(1) as u32, i.stream_sequence, Some(i.published)))
            .unwrap_or((1, 0, None));
        let schema_version: u32 = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(subjects::HEADER_SCHEMA_VERSION))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        // A binary-mode CloudEvent, or an Event envelope stored before (kakehashi_proto::cloudevents).
        let event = from_events_message(msg.headers.as_ref(), &msg.payload)
            .map_err(|e| Withheld::Broken(e.to_string()))
            .and_then(|e| self.for_reader(e, schema_version))
            .and_then(|e| {
                // The reader's chosen form (protobuf ↔ canonical JSON), after pseudonymising.
                let (store, wanted) = (&self.privacy.store, &self.sub.content_type);
                crate::protobuf::in_reader_form(store, e, schema_version, wanted).map_err(Withheld::Broken)
            });
        let (msg, acker) = msg.split();
        if let Err(Withheld::NotPermitted) = event {
            // The reader lost its right to this type after subscribing: it must not see it.
            tracing::warn!(subscription = %self.sub.name, "event withheld: the policy no longer lets the reader read it");
            unacked.forget(seq);
            let _ = acker.ack_with(AckKind::Term).await;
            if let Ok(e) = from_events_message(msg.headers.as_ref(), &msg.payload) {
                let mut r = AuditRecord::hop(&e, "withheld", "rejected");
                r.detail = "reader no longer permitted".into();
                r.events_seq = seq;
                r.department = self.sub.department.clone();
                r.subscription = self.consumer_name.clone();
                self.audit.record(r).await;
            }
            return true;
        }
        if attempt > self.sub.max_deliveries || event.is_err() {
            let (reason, message) = match &event {
                Err(e) => (Reason::MalformedEnvelope, e.to_string()),
                Ok(_) => (
                    Reason::DeliveryExhausted,
                    format!("not acked after {} deliveries to {}", self.sub.max_deliveries, self.sub.name),
                ),
            };
            // This hop's span ends the trace with ERROR, as validate's does for its dead letters.
            let event_id = event.as_ref().map_or("", |e| e.id.as_str());
            let span = self.deliver_span(&msg.subject, event_id, attempt);
            let context = event.as_ref().ok().map(|e| &e.extensions);
            telemetry::adopt(&span, telemetry::context_from(msg.headers.as_ref(), context));
            span.record("error.type", reason.code());
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", format!("{}: {message}", reason.code()).as_str());
            let source = event.as_ref().map_or("unknown", |e| e.source.as_str());
            let dead_lettered = self.dead_lettered.with(&[reason.code(), source]);
            let limit = self.dead_letter_limit().await;
            let details = dead_letter::Details {
                reason,
                message,
                violations: Vec::new(),
                original_subject: &msg.subject,
                raw: &envelope_bytes(msg.headers.as_ref(), &msg.payload),
                event: event.as_ref().ok(),
                actor: &self.actor,
                subscription: &self.consumer_name,
                schema_version: 0,
            };
            // Within KH_DLQ's limit, as the validator's (raw bytes never cut). One still over it
            // is published anyway: JetStream has the last word, and its refusal is handled below.
            let (out, oversize) = match dead_letter::build_within(details, limit) {
                Ok(out) => (out, None),
                Err(too_large) => {
                    (too_large.letter, Some(format!("{} bytes over {}", too_large.size, too_large.limit)))
                }
            };
            let publish = jetstream::message::PublishMessage::build()
                .payload(out.body.into())
                .headers(out.headers)
                .message_id(format!("dlq-{}-{seq}", self.consumer_name));
            let stored = match self.js.send_publish(out.subject, publish).await {
                Ok(ack) => ack.await.map(drop),
                Err(e) => Err(e),
            };
            // Terminate only once the dead letter is stored; otherwise it comes back later.
            if let Err(e) = stored {
                // Refusals of this event's dead letter so far (its deliveries past the maximum).
                let refusals =
                    attempt.saturating_sub(if event.is_ok() { self.sub.max_deliveries } else { 0 });
                self.dead_letter_not_stored(&acker, seq, event_id, refusals, &e, oversize).await;
            } else {
                dead_lettered.inc();
                unacked.forget(seq);
                let _ = acker.ack_with(AckKind::Term).await;
                if let Ok(e) = &event {
                    let mut r = AuditRecord::hop(e, "delivery_exhausted", "rejected");
                    r.detail = format!("not acked after {} deliveries", self.sub.max_deliveries);
                    r.events_seq = seq;
                    r.department = self.sub.department.clone();
                    r.subscription = self.consumer_name.clone();
                    self.audit.record(r).await;
                }
            }
            return true;
        }
        let Ok(event) = event else { return true };
        // Every delivery the department may have seen before says so, whatever NATS counted.
        let attempt = match self.mark(seq, &acker, marks, requests, unacked).await {
            Some(true) => attempt.max(2),
            Some(false) => attempt,
            None => {
                let _ = acker.ack_with(AckKind::Nak(None)).await;
                return false;
            }
        };
        let id = *next_id;
        *next_id += 1;
        let span = self.deliver_span(&msg.subject, &event.id, attempt);
        let incoming = telemetry::incoming(msg.headers.as_ref(), Some(&event.extensions));
        if let Some(cx) = &incoming {
            telemetry::adopt(&span, cx.otel());
        }
        telemetry::link_creation(&span, incoming.as_ref(), Some(&event.extensions));
        // The subscriber's own work can join the trace as a child of this delivery (with export
        // off, of the hop before it); the event's own `traceparent` extension stays the
        // publisher's, the context of its creation (CloudEvents distributed tracing).
        let mut hop = telemetry::traceparent_of(&span);
        if hop.is_empty() {
            if let Some(cx) = &incoming {
                hop.extend(cx.headers().map(|(k, v)| (k.to_string(), v.to_string())));
            }
        }
        let mut take = |k: &str| hop.remove(k).unwrap_or_default();
        let (traceparent, tracestate) =
            (take(subjects::HEADER_TRACEPARENT), take(subjects::HEADER_TRACESTATE));
        // The hop's trace: the exported one, else the one passed on (not the event's creation
        // context, which may be absent or another trace).
        let trace_id = telemetry::trace_id(&span, Some(traceparent.as_str()));
        span.record("trace_id", trace_id.as_str());
        let mut record = AuditRecord::hop(&event, "delivered", "ok");
        record.trace_id = trace_id;
        record.department = self.sub.department.clone();
        record.subscription = self.consumer_name.clone();
        record.schema_version = schema_version;
        record.detail = format!("attempt {attempt}");
        record.events_seq = seq;
        let delivery = EventDelivery {
            delivery_id: id,
            event: Some(event),
            attempt,
            stream_sequence: seq,
            traceparent,
            tracestate,
        };
        if self.tx.send(Ok(delivery)).await.is_err() {
            let _ = acker.ack_with(AckKind::Nak(None)).await;
            return false;
        }
        self.delivered.inc();
        self.audit.record(record.clone()).await;
        unacked.insert(id, seq, InFlight { acker, record, span, validated_at, delivery_ids: Vec::new() });
        true
    }

    /// The `deliver` span of one event for this subscription: CONSUMER (`process`) of
    /// `KH_EVENTS` through the subscription's durable consumer (docs/architecture.md).
    fn deliver_span(&self, subject: &str, event_id: &str, attempt: u32) -> tracing::Span {
        tracing::info_span!(
            "kakehashi.deliver",
            otel.name = %format_args!("deliver {subject}"),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "deliver",
            messaging.destination.name = %subject,
            messaging.destination.subscription.name = %self.sub.name,
            messaging.consumer.group.name = %self.consumer_name,
            messaging.message.id = %event_id,
            event_id = %event_id,
            subscription = %self.consumer_name,
            attempt,
            trace_id = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty
        )
    }

    /// The largest dead letter `KH_DLQ` stores, read once per stream; the server's `max_payload`
    /// while `KH_DLQ` cannot be read (read again at the next dead letter).
    async fn dead_letter_limit(&self) -> usize {
        let read =
            self.dead_letter_limit.get_or_try_init(|| crate::validator::dead_letter_limit(&self.js)).await;
        read.copied().unwrap_or_else(|e| {
            tracing::warn!(error = %e, subscription = %self.sub.name, "KH_DLQ's size limit not read; dead letter built within the server's max_payload");
            self.js.client().server_info().max_payload
        })
    }

    /// The dead letter of the event at KH_EVENTS sequence `seq` was not stored (the `refusals`th
    /// time): logged with JetStream's code and description (as an error when it is too large
    /// for `KH_DLQ`, at growing intervals), and the event nacked to be tried again later.
    ///
    /// A letter refused as too large is never terminated: that would leave no trace of the
    /// event's bytes once `KH_EVENTS`'s max age removes it (a letter without its raw bytes,
    /// pointing at the sequence, is not safe for that reason). It stays unacked in `KH_EVENTS`,
    /// tried again every [`TOO_LARGE_RETRY`] (not in a loop at each ack wait), until an operator
    /// raises `KH_DLQ`'s limit; reopening the subscription's stream then retries at once.
    async fn dead_letter_not_stored(
        &self,
        acker: &Acker,
        seq: u64,
        event_id: &str,
        refusals: u32,
        error: &jetstream::context::PublishError,
        oversize: Option<String>,
    ) {
        let ack_wait = Duration::from_secs(self.sub.ack_wait_secs.max(1));
        let subscription = &self.consumer_name;
        let oversize = oversize.unwrap_or_default();
        let too_large = kakehashi_runtime::pub_acks::publish_error_is_too_large(error);
        let retry_in = if too_large { TOO_LARGE_RETRY.max(ack_wait) } else { ack_wait };
        // Logged at the 1st, 2nd, 4th, … refusal: once per event, then at growing intervals.
        if too_large && refusals.is_power_of_two() {
            tracing::error!(events_seq = seq, event_id, %subscription, refusals, ?retry_in, %error, oversize, "dead letter refused as too large for KH_DLQ: the event stays unacked in KH_EVENTS at this sequence (until its max age) and is tried again later; raise KH_DLQ's max_message_size (and the server's max_payload) to store it whole (docs/operations.md)");
        } else if refusals.is_power_of_two() {
            tracing::warn!(events_seq = seq, event_id, %subscription, refusals, ?retry_in, %error, "dead letter not stored; the event is tried again later");
        }
        let _ = acker.ack_with(AckKind::Nak(Some(retry_in))).await;
    }

    /// Raises the repeat mark before the event at `seq` is sent, retrying until it is stored:
    /// `Some(repeat)`, or `None` when the client left meanwhile. Nothing newer goes out while
    /// the mark cannot be stored (`KH_CONFIG` without a leader after its node died): an event
    /// nacked while the stream went on was overtaken by newer events of its key (docs/delivery.md,
    /// "Cluster fault runs"). Client acks are handled and the event kept alive meanwhile.
    async fn mark(
        &self,
        seq: u64,
        acker: &Acker,
        marks: &mut crate::repeats::RepeatMarks,
        requests: &mut Streaming<SubscribeRequest>,
        unacked: &mut Window,
    ) -> Option<bool> {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match marks.before_delivery(seq).await {
                Ok(repeat) => {
                    if warned {
                        tracing::info!(subscription = %self.sub.name, seq, "repeat mark stored; delivery goes on");
                    }
                    return Some(repeat);
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, subscription = %self.sub.name, seq, "repeat mark not stored; holding delivery until it is");
                        warned = true;
                    }
                    let _ = acker.ack_with(AckKind::Progress).await;
                    let pause = tokio::time::sleep(backoff);
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            _ = &mut pause => break,
                            r = requests.message() => match r {
                                Ok(Some(r)) => self.handle(r, unacked).await,
                                _ => return None,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The event as this reader may see it: read permission checked, personal identifiers
    /// pseudonymised unless the policy grants them raw. Fails closed.
    fn for_reader(
        &self,
        mut event: kakehashi_proto::v1::Event,
        schema_version: u32,
    ) -> Result<kakehashi_proto::v1::Event, Withheld> {
        let p = &self.privacy;
        let dept = &self.sub.department;
        if !p.policies.may_read(dept, &event.r#type) {
            return Err(Withheld::NotPermitted);
        }
        if p.policies.raw_pii(dept, &event.r#type) {
            return Ok(event);
        }
        let subject = if event.schema.is_empty() { event.r#type.clone() } else { event.schema.clone() };
        // A protobuf subject's My Numbers (bytes or proto3 JSON) are found through its descriptors.
        use crate::protobuf::Pseudonymised;
        let (data, form) = (&event.data, &event.data_content_type);
        match crate::protobuf::pseudonymise(&p.store, &subject, schema_version, data, form, &p.secret, dept)
            .map_err(Withheld::Broken)?
        {
            Pseudonymised::NotProtobuf => {}
            Pseudonymised::Unchanged => return Ok(event),
            Pseudonymised::Replaced(data) => {
                event.data = data;
                return Ok(event);
            }
        }
        let paths = p
            .store
            .pii_paths(&subject, schema_version)
            .map_err(|e| Withheld::Broken(format!("schema of a delivered event: {e}")))?;
        if paths.is_empty() {
            return Ok(event);
        }
        // Pseudonyms are spliced into the bytes; what passes through is not re-serialised.
        if let Some(data) = crate::pii::apply_bytes(&event.data, &paths, &p.secret, dept)
            .map_err(|e| Withheld::Broken(e.to_string()))?
        {
            event.data = data;
        }
        Ok(event)
    }

    async fn handle(&self, request: SubscribeRequest, unacked: &mut Window) {
        match request.request {
            Some(subscribe_request::Request::Ack(a)) => {
                for id in a.delivery_ids {
                    if let Some(f) = unacked.take(id) {
                        let ack_span = settle_span(&f.span, "ack", &f.record.event_type, &f.record.event_id);
                        // Plain (pipelined) ack: a lost ack means a redelivery, which the
                        // audit trail then shows as another "delivered" hop.
                        match f.acker.ack().instrument(ack_span).await {
                            Ok(()) => {
                                self.acked.inc();
                                if let Some(t) = f.validated_at {
                                    self.latency.observe(crate::metrics::since(t));
                                }
                                self.audit.record(f.into_record("acked", "ok", "")).await
                            }
                            Err(e) => tracing::warn!(error = %e, "ack failed; the event will be redelivered"),
                        }
                    }
                }
            }
            Some(subscribe_request::Request::Nack(n)) => {
                if let Some(f) = unacked.take(n.delivery_id) {
                    let nack_span = settle_span(&f.span, "nack", &f.record.event_type, &f.record.event_id);
                    let delay = n.delay.and_then(|d| Duration::try_from(d).ok());
                    let _ = f.acker.ack_with(AckKind::Nak(delay)).instrument(nack_span).await;
                    let detail = delay.map(|d| format!("redeliver after {d:?}")).unwrap_or_default();
                    self.audit.record(f.into_record("nacked", "error", &detail)).await;
                }
            }
            Some(subscribe_request::Request::Open(_)) | None => {
                let _ = self.tx.send(Err(Status::invalid_argument("`open` may only be sent first"))).await;
            }
        }
    }
}

/// How long an event whose dead letter `KH_DLQ` refuses as too large waits before it is tried
/// again (or the subscription's ack wait, when longer): only an operator can make it fit.
const TOO_LARGE_RETRY: Duration = Duration::from_secs(60);

/// The span of an ack or nack: CLIENT (`settle`: the registry settles the message with
/// JetStream), child of the delivery it settles.
fn settle_span(
    delivery: &tracing::Span,
    operation: &'static str,
    event_type: &str,
    event_id: &str,
) -> tracing::Span {
    // `kh.ev.<type>` (subjects::events) written where it is displayed: no String per ack.
    let destination = format_args!("kh.ev.{event_type}");
    tracing::info_span!(
        parent: delivery,
        "kakehashi.settle",
        otel.name = %format_args!("{operation} {destination}"),
        otel.kind = "client",
        messaging.system = "nats",
        messaging.operation.type = "settle",
        messaging.operation.name = operation,
        messaging.destination.name = %destination,
        messaging.message.id = %event_id,
    )
}
