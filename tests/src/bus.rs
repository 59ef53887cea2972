//! Helpers for talking to a running bus the way a department or an operator would: register a
//! schema, put a policy, create and open a subscription (or all three at once for a [`Flow`]),
//! publish events (through NATS directly, with `Nats-Msg-Id`, optionally retrying while the
//! server is away), read dead letters, and look inside the streams.

use crate::{NatsServer, Registry};
use async_nats::jetstream::{self, consumer, publish::PublishAck};
use async_nats::HeaderMap;
use futures::StreamExt;
use kakehashi_proto::v1::{
    delivery_client::DeliveryClient, policies_client::PoliciesClient,
    schema_registry_client::SchemaRegistryClient, subscribe_request,
    subscriptions_client::SubscriptionsClient, AckDeliveries, CreateSubscriptionRequest, DeadLetter, Event,
    EventDelivery, NackDelivery, OpenSubscription, Policy, RegisterSchemaRequest, RegisterSchemaResponse,
    SubscribeRequest, Subscription,
};
use prost::Message as _;
use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// `KH_EVENTS`.
pub const EVENTS: &str = kakehashi_proto::subjects::STREAM_EVENTS;
/// `KH_INGRESS`.
pub const INGRESS: &str = kakehashi_proto::subjects::STREAM_INGRESS;
/// `KH_DLQ`.
pub const DLQ: &str = kakehashi_proto::subjects::STREAM_DLQ;

/// A schema with one required integer `n`: enough to number events and check they all arrive.
pub fn counter_schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer"}, "pad": {"type": "string"}}
    })
}

/// Accepts any object whose `n`, if present, is an integer: for tests where validation is not the point.
pub const LENIENT_SCHEMA: &str = r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#;

/// Registers `schema` (JSON text, or a `serde_json::Value`) under `subject`; returns the answer.
pub async fn register_schema(endpoint: &str, subject: &str, schema: impl Display) -> RegisterSchemaResponse {
    let mut c = SchemaRegistryClient::connect(endpoint.to_string()).await.expect("connect registry");
    c.register_schema(RegisterSchemaRequest {
        subject: subject.into(),
        schema: schema.to_string(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("register {subject}: {e}"))
    .into_inner()
}

/// NATS, a registry with the validator off (so events stay in `KH_INGRESS`) and `event_type` registered.
pub async fn start_ingress_only(event_type: &str) -> (NatsServer, Registry) {
    let nats = NatsServer::start();
    let mut config = crate::services::registry_config(&nats);
    config.validator.enabled = false;
    let registry = Registry::start(config).await;
    register_schema(&registry.endpoint(), event_type, LENIENT_SCHEMA).await;
    (nats, registry)
}

/// Creates or replaces the policy of `pattern`.
pub async fn put_policy(endpoint: &str, pattern: &str, producers: &[&str], readers: &[&str]) {
    let mut c = PoliciesClient::connect(endpoint.to_string()).await.expect("connect registry");
    c.put_policy(Policy {
        type_pattern: pattern.into(),
        producers: producers.iter().map(|s| s.to_string()).collect(),
        readers: readers.iter().map(|s| s.to_string()).collect(),
        raw_pii_readers: vec![],
    })
    .await
    .unwrap_or_else(|e| panic!("put policy {pattern}: {e}"));
}

/// A subscription with server defaults; set `ack_wait`, `max_deliveries`… on the result.
pub fn subscription(department: &str, name: &str, type_pattern: &str) -> Subscription {
    Subscription {
        department: department.into(),
        name: name.into(),
        type_pattern: type_pattern.into(),
        ..Default::default()
    }
}

/// `Some(duration)` in the protobuf form, for `Subscription.ack_wait` and `NackDelivery.delay`.
pub fn proto_duration<T: TryFrom<Duration>>(d: Duration) -> Option<T> {
    Some(T::try_from(d).ok().expect("duration in range"))
}

/// Creates a subscription (must succeed).
pub async fn create_subscription(endpoint: &str, sub: Subscription) -> Subscription {
    let mut c = SubscriptionsClient::connect(endpoint.to_string()).await.expect("connect registry");
    let name = format!("{}.{}", sub.department, sub.name);
    c.create_subscription(CreateSubscriptionRequest { subscription: Some(sub) })
        .await
        .unwrap_or_else(|e| panic!("create subscription {name}: {e}"))
        .into_inner()
}

/// One event type from its producers to a reader's subscription: the setup delivery tests share.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// The event type: subject of the schema and type pattern of the subscription.
    pub event_type: &'a str,
    /// Type pattern of the policy: the type itself or a wildcard over it such as `test.>`.
    pub policy: &'a str,
    /// Departments the policy lets publish.
    pub producers: &'a [&'a str],
    /// The department the policy lets read, and that owns the subscription.
    pub reader: &'a str,
    /// Name of the reader's subscription.
    pub subscription: &'a str,
}

impl Flow<'_> {
    /// Registers `schema`, puts the policy, creates the subscription; returns the registration to check.
    pub async fn prepare(&self, endpoint: &str, schema: impl Display) -> RegisterSchemaResponse {
        self.prepare_with(endpoint, schema, |_| {}).await
    }

    /// [`Flow::prepare`] with `tune` applied to the subscription first (ack wait, max deliveries…).
    pub async fn prepare_with(
        &self,
        endpoint: &str,
        schema: impl Display,
        tune: impl FnOnce(&mut Subscription),
    ) -> RegisterSchemaResponse {
        let registered = register_schema(endpoint, self.event_type, schema).await;
        put_policy(endpoint, self.policy, self.producers, &[self.reader]).await;
        let mut sub = subscription(self.reader, self.subscription, self.event_type);
        tune(&mut sub);
        create_subscription(endpoint, sub).await;
        registered
    }

    /// Opens the reader's subscription (must succeed).
    pub async fn open(&self, endpoint: &str, max_in_flight: u32) -> Subscriber {
        Subscriber::expect_open(endpoint, self.reader, self.subscription, max_in_flight).await
    }
}

/// Why a Subscribe stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// No connection to the registry.
    Connect(tonic::transport::Error),
    /// The registry refused or failed the call.
    Status(tonic::Status),
}

/// One open `Delivery.Subscribe` stream: the request sender and the deliveries.
pub struct Subscriber {
    tx: mpsc::Sender<SubscribeRequest>,
    stream: tonic::Streaming<EventDelivery>,
}

impl Subscriber {
    /// Opens `department`'s subscription `name` with at most `max_in_flight` unacked deliveries.
    pub async fn open(
        endpoint: &str,
        department: &str,
        name: &str,
        max_in_flight: u32,
    ) -> Result<Self, OpenError> {
        let mut client = DeliveryClient::connect(endpoint.to_string()).await.map_err(OpenError::Connect)?;
        let (tx, rx) = mpsc::channel(64);
        let open =
            OpenSubscription { subscription: name.into(), department: department.into(), max_in_flight };
        tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) })
            .await
            .expect("request channel open");
        let stream = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(OpenError::Status)?
            .into_inner();
        Ok(Self { tx, stream })
    }

    /// Opens, panicking on failure.
    pub async fn expect_open(endpoint: &str, department: &str, name: &str, max_in_flight: u32) -> Self {
        match Self::open(endpoint, department, name, max_in_flight).await {
            Ok(s) => s,
            Err(e) => panic!("open subscription {department}.{name}: {e:?}"),
        }
    }

    /// The next delivery, `Ok(None)` when the server ended the stream.
    pub async fn message(&mut self) -> Result<Option<EventDelivery>, tonic::Status> {
        self.stream.message().await
    }

    /// The next delivery if one comes within `limit`; panics if the stream fails or ends.
    pub async fn next_within(&mut self, limit: Duration) -> Option<EventDelivery> {
        match tokio::time::timeout(limit, self.stream.message()).await {
            Err(_) => None,
            Ok(Ok(Some(d))) => Some(d),
            Ok(Ok(None)) => panic!("the registry ended the Subscribe stream"),
            Ok(Err(status)) => panic!("Subscribe stream failed: {status}"),
        }
    }

    /// The next delivery, which must come within `limit`.
    pub async fn expect_next(&mut self, what: &str, limit: Duration) -> EventDelivery {
        self.next_within(limit)
            .await
            .unwrap_or_else(|| panic!("no delivery within {limit:?}: expected {what}"))
    }

    /// Asserts that nothing is delivered for `window` (an absence can only be observed over a time).
    pub async fn expect_nothing_for(&mut self, window: Duration, why: &str) {
        if let Some(d) = self.next_within(window).await {
            panic!(
                "unexpected delivery ({why}): event {:?} attempt {}",
                d.event.map(|e| e.id).unwrap_or_default(),
                d.attempt
            );
        }
    }

    /// Acks deliveries.
    pub async fn ack(&self, delivery_ids: Vec<u64>) {
        self.send(subscribe_request::Request::Ack(AckDeliveries { delivery_ids })).await;
    }

    /// Acks deliveries, panicking if the request stream has closed (for tests that rely on the ack).
    pub async fn expect_ack(&self, delivery_ids: Vec<u64>) {
        let ack = subscribe_request::Request::Ack(AckDeliveries { delivery_ids });
        self.tx.send(SubscribeRequest { request: Some(ack) }).await.expect("Subscribe request stream open");
    }

    /// The next delivery, which must come within `limit`, acked at once with [`Self::expect_ack`].
    pub async fn expect_and_ack(&mut self, what: &str, limit: Duration) -> EventDelivery {
        let d = self.expect_next(what, limit).await;
        self.expect_ack(vec![d.delivery_id]).await;
        d
    }

    /// Nacks one delivery, to be redelivered no sooner than `delay` (at once when `None`).
    pub async fn nack(&self, delivery_id: u64, delay: Option<Duration>) {
        let delay = delay.and_then(proto_duration);
        self.send(subscribe_request::Request::Nack(NackDelivery { delivery_id, delay })).await;
    }

    async fn send(&self, request: subscribe_request::Request) {
        // The server may already have gone away; the caller finds out from the stream.
        let _ = self.tx.send(SubscribeRequest { request: Some(request) }).await;
    }
}

/// The event id of a delivery.
pub fn delivered_id(d: &EventDelivery) -> String {
    d.event.as_ref().map(|e| e.id.clone()).unwrap_or_default()
}

/// A JetStream context on `nats` as the `admin` identity (tests publish ingress for any
/// department and inspect every stream with it) whose publish acks time out after 2 s (so a
/// publisher notices a server that went away quickly and retries).
pub async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    let client = nats
        .service_auth(kakehashi_ctl::nats_config::permissions::Service::Admin)
        .options("test-admin")
        .expect("admin credentials")
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .expect("connect NATS");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    js
}

/// An event of `event_type` from `source` numbered `n`, with a fresh id.
pub fn event(source: &str, event_type: &str, n: usize) -> Event {
    Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: source.into(),
        r#type: event_type.into(),
        data_content_type: "application/json".into(),
        data: serde_json::json!({ "n": n }).to_string().into_bytes(),
        ..Default::default()
    }
}

/// `n` events numbered `0..n`.
pub fn events(source: &str, event_type: &str, n: usize) -> Vec<Event> {
    (0..n).map(|i| event(source, event_type, i)).collect()
}

/// Publishes raw bytes to a subject through JetStream (with `Nats-Msg-Id` when given) and waits
/// for the stream's ack.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    bytes: Vec<u8>,
    msg_id: Option<&str>,
) -> PublishAck {
    let mut m = jetstream::message::PublishMessage::build().payload(bytes.into());
    if let Some(id) = msg_id {
        m = m.message_id(id);
    }
    js.send_publish(subject.to_string(), m)
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"))
        .await
        .unwrap_or_else(|e| panic!("publish to {subject} not acked: {e}"))
}

/// Publishes an event straight to `kh.in.<source>.<type>` as an adapter would (`Nats-Msg-Id` =
/// event id); returns the encoded bytes, exactly as stored.
pub async fn publish_ingress(js: &jetstream::Context, event: &Event) -> Vec<u8> {
    let bytes = event.encode_to_vec();
    let subject = kakehashi_proto::subjects::ingress(&event.source, &event.r#type, &event.subject);
    publish_raw(js, &subject, bytes.clone(), Some(&event.id)).await;
    bytes
}

/// Counters of a retrying publisher.
#[derive(Debug, Default)]
pub struct PublishProgress {
    /// Events whose publish the stream confirmed.
    pub confirmed: AtomicUsize,
    /// Attempts that failed and were retried.
    pub failed_attempts: AtomicUsize,
    /// Confirmed publishes the stream reported as duplicates (a retry of a stored one).
    pub duplicates: AtomicUsize,
}

impl PublishProgress {
    /// Confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.confirmed.load(Ordering::SeqCst)
    }

    /// Failed attempts so far.
    pub fn failed_attempts(&self) -> usize {
        self.failed_attempts.load(Ordering::SeqCst)
    }
}

/// Publishes one event to ingress, retrying with the same `Nats-Msg-Id` until the stream
/// confirms it (a publisher that must not lose an event while the server is away).
pub async fn publish_ingress_retrying(js: &jetstream::Context, event: &Event, progress: &PublishProgress) {
    let bytes = event.encode_to_vec();
    let subject = kakehashi_proto::subjects::ingress(&event.source, &event.r#type, &event.subject);
    loop {
        let m =
            jetstream::message::PublishMessage::build().payload(bytes.clone().into()).message_id(&event.id);
        let acked = match js.send_publish(subject.clone(), m).await {
            Ok(confirm) => confirm.await.ok(),
            Err(_) => None,
        };
        if let Some(ack) = acked {
            progress.confirmed.fetch_add(1, Ordering::SeqCst);
            if ack.duplicate {
                progress.duplicates.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        progress.failed_attempts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes all `events` with up to `window` publishes in flight, each retried until confirmed.
/// `pause` is awaited between groups of `window` events, so a test can pace the flow.
pub async fn publish_all_retrying(
    js: &jetstream::Context,
    events: &[Event],
    window: usize,
    progress: &PublishProgress,
    pause: Duration,
) {
    for group in events.chunks(window.max(1)) {
        futures::future::join_all(group.iter().map(|e| publish_ingress_retrying(js, e, progress))).await;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A dead letter as stored in `KH_DLQ`.
#[derive(Debug, Clone)]
pub struct StoredLetter {
    /// `kh.dlq.<source>.<type>`.
    pub subject: String,
    /// Headers (`Kh-Reason`, `Kh-Event-Id`, `Nats-Msg-Id`).
    pub headers: HeaderMap,
    /// The decoded body.
    pub letter: DeadLetter,
}

impl StoredLetter {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_string())
    }
}

/// Every message in `KH_DLQ`, in order.
pub async fn dead_letters(js: &jetstream::Context) -> Vec<StoredLetter> {
    let Ok(mut stream) = js.get_stream(DLQ).await else { return vec![] };
    let Ok(info) = stream.info().await else { return vec![] };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let letter = DeadLetter::decode(m.payload.as_ref()).expect("KH_DLQ holds DeadLetter bodies");
            out.push(StoredLetter { subject: m.subject.to_string(), headers: m.headers, letter });
        }
    }
    out
}

/// Waits until `KH_DLQ` holds a letter for `event_id`, and returns it.
pub async fn wait_dead_letter(js: &jetstream::Context, event_id: &str, limit: Duration) -> StoredLetter {
    crate::wait::until(&format!("a dead letter for event {event_id}"), limit, || async move {
        dead_letters(js).await.into_iter().find(|l| l.letter.event_id == event_id)
    })
    .await
}

/// Messages currently in a stream.
pub async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    s.info().await.unwrap_or_else(|e| panic!("stream {stream} info: {e}")).state.messages
}

/// Waits until a stream holds exactly `n` messages.
pub async fn wait_stream_len(js: &jetstream::Context, stream: &str, n: u64, limit: Duration) {
    crate::wait::until(&format!("{stream} to hold {n} messages"), limit, || async move {
        let mut s = js.get_stream(stream).await.ok()?;
        let now = s.info().await.ok()?.state.messages;
        (now == n).then_some(())
    })
    .await
}

/// The event ids of every message in `KH_EVENTS`, in stream order, read with an ephemeral
/// consumer (nothing is acked or changed).
pub async fn event_ids_in_events_stream(js: &jetstream::Context) -> Vec<String> {
    events_in_events_stream(js).await.into_iter().map(|e| e.id).collect()
}

/// Every event in `KH_EVENTS`, in stream order, read with an ephemeral consumer.
pub async fn events_in_events_stream(js: &jetstream::Context) -> Vec<Event> {
    let n = stream_len(js, EVENTS).await as usize;
    let stream = js.get_stream(EVENTS).await.expect("KH_EVENTS");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer on KH_EVENTS");
    let mut messages =
        consumer.stream().max_messages_per_batch(500).messages().await.expect("read KH_EVENTS");
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("KH_EVENTS read stalled")
            .expect("KH_EVENTS read ended")
            .expect("KH_EVENTS message");
        // Binary-mode CloudEvents (or Event envelopes stored by older validators).
        let event = kakehashi_proto::cloudevents::binary::from_events_message(m.headers.as_ref(), &m.payload);
        events.push(event.expect("KH_EVENTS holds events"));
    }
    events
}

/// Info of a durable consumer.
pub async fn consumer_info(js: &jetstream::Context, stream: &str, consumer: &str) -> consumer::Info {
    let s = js.get_stream(stream).await.unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    s.consumer_info(consumer).await.unwrap_or_else(|e| panic!("consumer {consumer}: {e}"))
}

/// Where the flow stands, for failure messages: messages in each stream and the state of every
/// consumer on `KH_INGRESS` and `KH_EVENTS`.
pub async fn diagnose(js: &jetstream::Context) -> String {
    let mut out = Vec::new();
    for name in [INGRESS, EVENTS, DLQ] {
        let Ok(mut stream) = js.get_stream(name).await else {
            out.push(format!("{name}: unreachable"));
            continue;
        };
        match stream.info().await {
            Ok(info) => out.push(format!(
                "{name}: {} messages (seq {}..={})",
                info.state.messages, info.state.first_sequence, info.state.last_sequence
            )),
            Err(e) => out.push(format!("{name}: {e}")),
        }
        if name == DLQ {
            continue;
        }
        let mut names = stream.consumer_names();
        while let Some(Ok(consumer)) = names.next().await {
            match stream.consumer_info(&consumer).await {
                Ok(i) => out.push(format!(
                    "  consumer {consumer}: pending {}, ack pending {}, redelivered {}, waiting pulls {}, delivered stream seq {}, ack floor stream seq {}",
                    i.num_pending,
                    i.num_ack_pending,
                    i.num_redelivered,
                    i.num_waiting,
                    i.delivered.stream_sequence,
                    i.ack_floor.stream_sequence
                )),
                Err(e) => out.push(format!("  consumer {consumer}: {e}")),
            }
        }
    }
    out.join("\n")
}

/// A `Publish` request of `data` as `event_type` from `source`, sent with the caller's own W3C
/// trace context (`traceparent` = `00-<trace>-<span>-01`) in gRPC metadata.
pub fn traced_publish(
    source: &str,
    event_type: &str,
    data: &[u8],
    trace: &str,
    span: &str,
) -> tonic::Request<Event> {
    let mut request = tonic::Request::new(Event {
        source: source.into(),
        r#type: event_type.into(),
        data: data.to_vec(),
        ..Default::default()
    });
    let traceparent = format!("00-{trace}-{span}-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("a valid traceparent"));
    request
}
