//! The ingress validator. `KH_INGRESS` is partitioned by a stream subject transform on the
//! key bucket of each event (`kh.in.<source>._<bucket>.<type>` is stored as
//! `kh.ip.<partition>.…`), so every event of one (source, type, record key) lands in one
//! partition. Each partition has a durable pull consumer (`validator-<n>`) in a priority group
//! with a pinned client: every registry instance pulls on every partition, NATS hands each
//! partition's messages to one of them at a time and moves the pin to another within
//! `failover_ms` when that one stops pulling (crash, network partition); the instances spread
//! the partitions between them ([`share`]). Each batch is checked in order; accepted events are
//! republished to `kh.ev.<type>` as binary-mode CloudEvents (`ce-` headers, the payload bytes
//! untouched as the body) with `Nats-Msg-Id` = event id, rejected ones go
//! to `kh.dlq.<source>.<type>`; the events of a record that repeats within a batch are published
//! as one JetStream fast batch that refuses gaps (none stored after one missing, so a publish
//! lost in transit never lets a later event of its record be stored first), everything else
//! pipelined beside it, and the
//! ingress message is acked only once its publish is confirmed, so a crash anywhere loses
//! nothing and duplicates nothing.
//!
//! Order per key across a takeover is kept by construction, not by timing: `KH_INGRESS` is a
//! work queue, so every message still in it is unvalidated or unacked. A new pin holder starts
//! at the partition consumer's ack floor and handles every message of the partition still in
//! the stream in sequence order, reading the ones the previous holder had in flight (and that
//! NATS would only redeliver after the ack wait) straight from the stream before anything
//! newer. Those come back later as redeliveries; their outcome is already stored, so they are
//! only acked.

mod check;
mod publish;
pub mod reason;
pub mod share;

pub(crate) use check::check_size;
pub use check::{check_payload, CheckLimits, PayloadRejected};
pub(crate) use publish::MAX_BATCH;

use crate::dead_letter;
use crate::store::SchemaStore;
use async_nats::header::HeaderName;
use async_nats::jetstream::{self, consumer, stream::Stream, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use kakehashi_proto::subjects::{self, HEADER_SCHEMA_VERSION};
use kakehashi_runtime::audit::AuditRecord;
use kakehashi_runtime::telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Durable name of the single validator consumer of versions before partitioning (removed).
const UNPARTITIONED_CONSUMER: &str = "validator";

/// How long `KH_EVENTS` may refuse a message as "duplicate message id is in process" before the
/// validator logs it as an error: a copy still being stored is stored within milliseconds; one
/// a stream leader lost when it stepped down keeps the partition waiting until the duplicate
/// window ends or the leader changes (docs/operations.md).
const ID_IN_PROCESS_ALERT: Duration = Duration::from_secs(30);

/// The partition consumer's metadata key under which an instance that resets the consumer
/// records the highest stream sequence delivered before: a reset restarts delivery counts, so
/// messages up to it may come again as first deliveries although a dead holder may have
/// published their outcomes (see `process_batch` on fast batches).
const SUSPECT_UNTIL: &str = "kakehashi_suspect_until";

/// Durable name prefix of the partition consumers (`validator-0`, `validator-1`, …).
pub const CONSUMER_PREFIX: &str = "validator-";
/// The consumers' priority group, in which one instance at a time is pinned.
pub const GROUP: &str = "validators";

/// Durable name of partition `n`'s consumer.
pub fn consumer_name(partition: u32) -> String {
    format!("{CONSUMER_PREFIX}{partition}")
}

/// One partition of `KH_INGRESS` and its consumer.
struct Partition {
    index: u32,
    consumer: String,
    filter: String,
}

/// Failure to set up or run the validator (per-message problems are dead letters, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    /// The consumer could not be created or read.
    #[error("validator consumer: {0}")]
    Consumer(String),
}

/// Settings of the validator loop.
#[derive(Clone)]
pub struct ValidatorSettings {
    /// Messages per pull batch.
    pub batch: usize,
    /// Ack wait of the consumer.
    pub ack_wait: Duration,
    /// Check limits.
    pub limits: CheckLimits,
    /// Name in dead letters and logs.
    pub actor: String,
    /// How long the pinned instance may go without pulling before NATS pins another
    /// (the consumer's `priority_timeout`: the failover time after a crash).
    pub failover: Duration,
    /// Where the validator's hops are recorded.
    pub audit: kakehashi_runtime::audit::AuditWriter,
    /// Counters and latencies.
    pub metrics: crate::metrics::RegistryMetrics,
    /// Partitions of `KH_INGRESS` (`topology.ingress_partitions`).
    pub partitions: u32,
    /// Where instances announce themselves to spread the partitions (`KH_CONFIG`).
    pub config: async_nats::jetstream::kv::Store,
}

/// The producer policy the validator consults.
pub type ProducerPolicy = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Runs until `shutdown` turns true: one task per partition pulls in its priority group and
/// validates while pinned.
pub async fn run(
    js: jetstream::Context,
    store: SchemaStore,
    policy: ProducerPolicy,
    settings: ValidatorSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ValidatorError> {
    // Set-up calls can fail while a cluster elects leaders: they are retried, never fatal (a
    // validator that gave up here would leave its partitions to the others silently).
    let mut setup = shutdown.clone();
    let stream = loop {
        match js.get_stream(subjects::STREAM_INGRESS).await {
            Ok(stream) => break stream,
            Err(e) => {
                tracing::warn!(error = %e, "validator: KH_INGRESS not reachable; retrying");
                if pause(&mut setup).await {
                    return Ok(());
                }
            }
        }
    };
    let dead_letter_limit = loop {
        match dead_letter_limit(&js).await {
            Ok(limit) => break limit,
            Err(e) => {
                tracing::warn!(error = %e, "validator: KH_DLQ not reachable; retrying");
                if pause(&mut setup).await {
                    return Ok(());
                }
            }
        }
    };
    if let Err(e) = retire_consumers(&stream, settings.partitions).await {
        tracing::warn!(error = %e, "validator: retired consumers not deleted (retried at the next start)");
    }
    let share = share::Share::new(settings.partitions);
    // KV keys take `[-/_=.a-zA-Z0-9]` only (instance names such as `registry@host:pid` do not).
    let actor: String = settings
        .actor
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_=".contains(c) { c } else { '_' })
        .collect();
    let id = format!("{actor}-{}", uuid::Uuid::now_v7().simple());
    let announcing = tokio::spawn(share.clone().announce(settings.config.clone(), id, shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..settings.partitions {
        let partition =
            Partition { index, consumer: consumer_name(index), filter: subjects::partition_filter(index) };
        let (js, stream, store, policy, settings, share, mut shutdown) = (
            js.clone(),
            stream.clone(),
            store.clone(),
            policy.clone(),
            settings.clone(),
            share.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            let consumer = loop {
                match ensure_consumer(&stream, &partition, &settings).await {
                    Ok(consumer) => break consumer,
                    Err(e) => {
                        tracing::warn!(error = %e, partition = partition.index, "validator consumer not ready; retrying");
                        if pause(&mut shutdown).await {
                            return;
                        }
                    }
                }
            };
            let p = Pinned {
                js: &js,
                stream: &stream,
                partition: &partition,
                store: &store,
                policy: &policy,
                settings: &settings,
                share: &share,
                dead_letter_limit,
            };
            while !*shutdown.borrow() {
                if let Err(e) = p.validate(&consumer, &mut shutdown).await {
                    tracing::warn!(error = %e, partition = partition.index, "validator pull failed; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let _ = announcing.await;
    Ok(())
}

/// The largest dead letter the validator (and delivery) can store, headers included: `KH_DLQ`'s
/// `max_message_size` (or, without one, the server's `max_payload`), and never more than the
/// server's `max_payload`.
pub(crate) async fn dead_letter_limit(js: &jetstream::Context) -> Result<usize, ValidatorError> {
    kakehashi_runtime::topology::message_limit(js, subjects::STREAM_DLQ)
        .await
        .map(|(_, effective)| effective)
        .map_err(|e| ValidatorError::Consumer(e.to_string()))
}

/// Waits a second before a set-up call is tried again; true when shutting down instead.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => *shutdown.borrow(),
    }
}

/// Deletes the consumers no partition reads any more: the single consumer of versions before
/// partitioning and those of partitions beyond the count (`KH_INGRESS` is empty whenever the
/// partitioning changes, `topology::ensure_ingress_partitions`).
async fn retire_consumers(stream: &Stream, partitions: u32) -> Result<(), ValidatorError> {
    let mut names = stream.consumer_names();
    let mut retired = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| ValidatorError::Consumer(format!("listing consumers: {e}")))?;
        let beyond = name
            .strip_prefix(CONSUMER_PREFIX)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= partitions);
        if name == UNPARTITIONED_CONSUMER || beyond {
            retired.push(name);
        }
    }
    for name in retired {
        tracing::warn!(consumer = %name, "deleting a validator consumer no partition reads any more");
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::warn!(consumer = %name, error = %e, "could not delete it (another instance may have)");
        }
    }
    Ok(())
}

/// The partition's consumer, created when missing.
async fn ensure_consumer(
    stream: &Stream,
    partition: &Partition,
    settings: &ValidatorSettings,
) -> Result<consumer::PullConsumer, ValidatorError> {
    let config = consumer::pull::Config {
        durable_name: Some(partition.consumer.clone()),
        filter_subject: partition.filter.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: -1,
        // Room beyond what one holder keeps in flight, so a new holder is never blocked by its
        // predecessor's unacked messages (it reads those from the stream instead).
        max_ack_pending: (settings.batch * 4) as i64,
        priority_groups: vec![GROUP.to_string()],
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_timeout: settings.failover,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&partition.consumer, config)
        .await
        .map_err(|e| ValidatorError::Consumer(format!("{}: {e}", partition.consumer)))
}

/// One ingress message to validate: delivered by the consumer (acked when done) or read from
/// the stream at a takeover (acked when NATS redelivers it).
struct Ingress {
    subject: async_nats::Subject,
    payload: bytes::Bytes,
    headers: Option<HeaderMap>,
    seq: u64,
    published: Option<time::OffsetDateTime>,
    delivered: Option<jetstream::Message>,
    /// Delivered for the first time, and not as one a consumer reset handed out again
    /// ([`SUSPECT_UNTIL`]): no earlier attempt can have published its outcome, so it may go in
    /// a fast batch (see [`process_batch`]).
    first_delivery: bool,
}

impl Ingress {
    fn delivered(mut m: jetstream::Message, d: &Delivery) -> Self {
        Self {
            // Shared, not copied; the headers are taken (acking needs only the reply subject).
            subject: m.subject.clone(),
            payload: m.payload.clone(),
            headers: m.message.headers.take(),
            seq: d.seq,
            published: d.published,
            delivered: Some(m),
            first_delivery: d.count == 1,
        }
    }
}

/// What a delivered message's `$JS.ACK` reply subject says, parsed once: sorting a chunk by
/// sequence re-parsed it at every comparison (≈ 16 parses per event in a chunk of 256).
#[derive(Debug, Clone, Copy, Default)]
struct Delivery {
    /// Stream sequence.
    seq: u64,
    /// Consumer (delivery) sequence.
    consumer_seq: u64,
    /// How many times it has been delivered.
    count: i64,
    /// When it was stored.
    published: Option<time::OffsetDateTime>,
}

impl Delivery {
    /// Read off `m`'s reply subject (zeros when it is not a JetStream delivery).
    fn of(m: &jetstream::Message) -> Self {
        m.info()
            .map(|i| Self {
                seq: i.stream_sequence,
                consumer_seq: i.consumer_sequence,
                count: i.delivered,
                published: Some(i.published),
            })
            .unwrap_or_default()
    }
}

/// Where this instance stands in the stream while it is pinned.
struct Tenure {
    /// `Nats-Pin-Id` of the messages being received (a change = a new tenure).
    pin: Option<String>,
    /// Highest stream sequence whose outcome this tenure has handled (or the ack floor).
    last: u64,
    /// Whether a tenure has started since the pull began.
    started: bool,
    /// Consumer (delivery) sequence of the last message handled in this tenure when it was a
    /// first delivery to this instance: see [`Tenure::follows_directly`].
    first_delivery: Option<u64>,
    /// Stream sequences up to this one may have been published by an earlier holder although
    /// delivered for the first time (the consumer was reset: [`SUSPECT_UNTIL`]).
    suspect_until: u64,
}

impl Tenure {
    /// Whether a first delivery with consumer sequence `delivery` came straight after the last
    /// message this tenure handled, itself a first delivery to this instance. Then no message of
    /// the partition can lie unhandled between the two in the stream: NATS hands out new
    /// messages in stream order, nothing was delivered to anyone in between (the consumer's
    /// delivery sequence did not jump), and what a previous holder took precedes the earlier
    /// first delivery, so the gap read at the start of the tenure covered it. Only then is the
    /// stream gap between them (other partitions' messages) not read back: a read per message
    /// was a JetStream API round trip on every event of a partitioned `KH_INGRESS`.
    fn follows_directly(&self, delivery: u64, delivered: i64) -> bool {
        delivered == 1 && self.first_delivery.is_some_and(|d| d + 1 == delivery)
    }
}

/// What one partition's task works with.
struct Pinned<'a> {
    js: &'a jetstream::Context,
    stream: &'a Stream,
    partition: &'a Partition,
    store: &'a SchemaStore,
    policy: &'a ProducerPolicy,
    settings: &'a ValidatorSettings,
    share: &'a share::Share,
    /// The largest dead letter `KH_DLQ` stores ([`dead_letter_limit`]).
    dead_letter_limit: usize,
}

impl Pinned<'_> {
    /// Pulls in the partition's priority group and validates whatever NATS hands this
    /// instance; returns (to be called again) after handing the partition to another instance.
    async fn validate(
        &self,
        consumer: &consumer::PullConsumer,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ValidatorError> {
        let (settings, stream, partition) = (self.settings, self.stream, self.partition);
        // Two thirds of the failover time: the pinned instance re-pulls well before its pin
        // lapses (a pull expiring exactly at `priority_timeout` let the pin move between live
        // instances at idle moments), and a dead server is noticed as quickly.
        let pull_expiry = (settings.failover * 2 / 3).max(Duration::from_millis(300));
        let messages = consumer
            .stream()
            .group(GROUP)
            .max_messages_per_batch(settings.batch)
            .expires(pull_expiry)
            .heartbeat(pull_expiry / 2)
            .messages()
            .await
            .map_err(|e| ValidatorError::Consumer(e.to_string()))?;
        let mut chunks = messages.ready_chunks(settings.batch);
        let mut confirmations = publish::Confirmations::new(self.js.client());
        let mut tenure =
            Tenure { pin: None, last: 0, started: false, first_delivery: None, suspect_until: 0 };
        let idle_every = settings.failover.max(Duration::from_millis(500));
        let mut idle = tokio::time::interval(idle_every);
        let mut stalled = Stalled::default();
        loop {
            let chunk = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = idle.tick() => {
                    stalled.check(stream, partition, settings).await;
                    self.share.forget(partition.index, Some(idle_every * 2));
                    continue;
                }
                c = chunks.next() => c,
            };
            stalled.received = true;
            let Some(chunk) = chunk else { return Ok(()) };
            let mut delivered = Vec::with_capacity(chunk.len());
            for m in chunk {
                match m {
                    Ok(m) => delivered.push((Delivery::of(&m), m)),
                    Err(e) => return Err(ValidatorError::Consumer(format!("ingress pull: {e}"))),
                }
            }
            let Some((_, first)) = delivered.first() else { continue };
            self.share.busy(partition.index);
            let pin = first
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_PIN_ID))
                .map(|v| v.to_string());
            if !tenure.started || pin != tenure.pin {
                let info = stream
                    .consumer_info(&partition.consumer)
                    .await
                    .map_err(|e| ValidatorError::Consumer(format!("consumer info: {e}")))?;
                tenure = Tenure {
                    pin,
                    last: info.ack_floor.stream_sequence,
                    started: true,
                    first_delivery: None,
                    suspect_until: suspect_until(&info.config.metadata),
                };
                settings.metrics.validator_takeovers.with(&[]).inc();
                tracing::info!(actor = %settings.actor, partition = partition.index, ack_floor = tenure.last, "validator pinned: validating from the ack floor");
            }
            delivered.sort_by_key(|(d, _)| d.seq);
            let mut work = Vec::with_capacity(delivered.len());
            let mut handled = Vec::new();
            // Per-chunk trace (debug): what arrived, what was only acked, what was read from
            // the stream; enough to follow one ingress sequence through a failover.
            let (mut acked_only, mut gaps) = (Vec::new(), Vec::new());
            let received: Vec<(u64, i64)> = delivered.iter().map(|(d, _)| (d.seq, d.count)).collect();
            for (d, m) in delivered {
                let (seq, delivery, count) = (d.seq, d.consumer_seq, d.count);
                let follows = tenure.follows_directly(delivery, count);
                tenure.first_delivery = None;
                if seq <= tenure.last {
                    // Handled in this tenure already (read from the stream at the takeover, or
                    // its ack was lost), or a redelivery of a message of this very chunk: acked
                    // only once this chunk's outcomes are confirmed. Acked at once, such a
                    // redelivery removed the message from the work queue while its outcome was
                    // still unpublished, lost if the process died in between.
                    acked_only.push(seq);
                    handled.push(m);
                    continue;
                }
                if seq > tenure.last + 1 && !follows {
                    let before = work.len();
                    read_gap(stream, &partition.filter, tenure.last + 1, seq, &mut work).await?;
                    gaps.push((
                        tenure.last + 1,
                        seq,
                        work[before..].iter().map(|i| i.seq).collect::<Vec<_>>(),
                    ));
                }
                tenure.last = seq;
                tenure.first_delivery = (count == 1 && delivery > 0).then_some(delivery);
                let mut ingress = Ingress::delivered(m, &d);
                ingress.first_delivery &= seq > tenure.suspect_until;
                work.push(ingress);
            }
            tracing::debug!(actor = %settings.actor, partition = partition.index, pin = ?tenure.pin, last = tenure.last, ?received, ?acked_only, ?gaps, "validator chunk");
            let limit = self.dead_letter_limit;
            // A takeover's gap read can make `work` longer than one batch may be: in
            // slices, each confirmed before the next, so order is kept across them too.
            while !work.is_empty() {
                let rest = work.split_off(work.len().min(MAX_BATCH));
                process_batch(&mut confirmations, self.store, self.policy, settings, work, limit, shutdown)
                    .await;
                work = rest;
                if *shutdown.borrow() {
                    // Possibly unconfirmed: the redeliveries stay unacked too.
                    return Ok(());
                }
            }
            for m in handled {
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "ingress ack failed; it will be redelivered");
                }
            }
            if self.share.should_release(partition.index) {
                return self.release(chunks, shutdown).await;
            }
        }
    }

    /// Hands this partition to another instance: stops pulling (whatever the client still
    /// buffers is read from the stream by the next holder, as after a crash), unpins, and
    /// stays away long enough for a waiting instance to be pinned.
    async fn release<S>(&self, pulls: S, shutdown: &mut watch::Receiver<bool>) -> Result<(), ValidatorError> {
        let partition = self.partition;
        drop(pulls);
        self.share.forget(partition.index, None);
        tracing::info!(actor = %self.settings.actor, partition = partition.index, instances = self.share.live(), "over this instance's share of partitions: handing one over");
        if let Err(e) = self.stream.unpin_consumer(&partition.consumer, GROUP).await {
            tracing::debug!(error = %e, "unpin failed; the pin lapses after failover_ms instead");
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(self.settings.failover) => {}
        }
        Ok(())
    }
}

/// Watches for messages a dead holder took with it when nothing newer arrives to start a
/// takeover: unacked messages and an ack floor that has not moved for a whole interval while
/// this instance received nothing. The consumer is then reset to its ack floor, so NATS hands
/// them out again at once (to whoever is pinned) instead of after the ack wait.
#[derive(Default)]
struct Stalled {
    floor: Option<u64>,
    received: bool,
}

impl Stalled {
    async fn check(&mut self, stream: &Stream, partition: &Partition, settings: &ValidatorSettings) {
        let received = std::mem::take(&mut self.received);
        let Ok(info) = stream.consumer_info(&partition.consumer).await else { return };
        let floor = info.ack_floor.stream_sequence;
        let stuck = !received && info.num_ack_pending > 0 && self.floor == Some(floor);
        self.floor = Some(floor);
        if stuck {
            // Recorded first: whoever validates what the reset hands out again must not take a
            // message a dead holder may have published for a fresh one. Not recorded, no reset
            // (NATS redelivers after the ack wait instead, counted as a redelivery).
            let mut config = info.config.clone();
            let delivered = info.delivered.stream_sequence.max(suspect_until(&config.metadata));
            config.metadata.insert(SUSPECT_UNTIL.to_string(), delivered.to_string());
            if let Err(e) = stream.update_consumer(config).await {
                tracing::warn!(error = %e, "validator consumer not reset: its delivered sequence could not be recorded");
                self.floor = None;
                return;
            }
            match stream.reset_consumer(&partition.consumer, None).await {
                Ok(r) => {
                    tracing::info!(actor = %settings.actor, partition = partition.index, ack_floor = floor, reset_to = r.reset_seq, "validator consumer stalled on unacked messages; reset to its ack floor")
                }
                Err(e) => tracing::warn!(error = %e, "validator consumer reset failed"),
            }
            self.floor = None;
        }
    }
}

/// The [`SUSPECT_UNTIL`] sequence recorded in a consumer's `metadata` (0 when none).
fn suspect_until(metadata: &std::collections::HashMap<String, String>) -> u64 {
    metadata.get(SUSPECT_UNTIL).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Reads every message of the partition still in `KH_INGRESS` from `from` up to (not including) `until`: what a
/// previous holder had in flight, to be validated before anything newer.
async fn read_gap(
    stream: &Stream,
    filter: &str,
    from: u64,
    until: u64,
    work: &mut Vec<Ingress>,
) -> Result<(), ValidatorError> {
    let mut next = from;
    while next < until {
        let got = stream.raw_message_builder().sequence(next).next_by_subject(filter).send().await;
        match got {
            Ok(m) if m.sequence < until => {
                next = m.sequence + 1;
                work.push(Ingress {
                    subject: m.subject,
                    payload: m.payload,
                    headers: Some(m.headers),
                    seq: m.sequence,
                    published: Some(m.time),
                    delivered: None,
                    first_delivery: false,
                });
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(ValidatorError::Consumer(format!("reading KH_INGRESS from {next}: {e}"))),
        }
    }
    Ok(())
}

/// Checks a batch, then publishes every outcome pipelined and acks each ingress message once
/// its publish is confirmed. On a failure it publishes again from the first unconfirmed
/// message, in order (dedup drops what was already stored), so a failure never reorders or
/// skips anything; unacked messages are kept alive with progress acks meanwhile. A validated
/// event `KH_EVENTS` refuses as too large is dead-lettered instead (`payload_too_large`); a
/// dead letter refused as too large (which the limits checked at start rule out) is logged as
/// an error, with JetStream's code and description, at each retry of a growing series.
async fn process_batch(
    confirmations: &mut publish::Confirmations,
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    batch: Vec<Ingress>,
    dead_letter_limit: usize,
    shutdown: &watch::Receiver<bool>,
) {
    let mut outgoing: Vec<(String, Outgoing, Option<AuditRecord>, Verdict)> = batch
        .iter()
        .map(|msg| {
            // CONSUMER: receiving and processing one ingress message (republish included), in
            // the OpenTelemetry messaging conventions' terms (docs/architecture.md), named
            // `validate <destination>` with the key bucket a placeholder.
            let published = subjects::published_ingress(&msg.subject);
            let bucketed = subjects::parse_ingress(&msg.subject)
                .filter(|s| s.bucket.is_some())
                .map(|s| subjects::ingress_template(s.source, s.event_type));
            let template: &dyn std::fmt::Display = match &bucketed {
                Some(t) => t,
                None => &published,
            };
            let span = tracing::info_span!(
                "kakehashi.validate",
                otel.name = %format_args!("validate {template}"),
                otel.kind = "consumer",
                messaging.system = "nats",
                messaging.operation.type = "process",
                messaging.operation.name = "validate",
                messaging.destination.name = %published,
                messaging.destination.template = %template,
                messaging.consumer.group.name = %partition_consumer(&msg.subject),
                messaging.message.id = tracing::field::Empty,
                error.type = tracing::field::Empty,
                subject = %msg.subject,
                event_id = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty
            );
            outcome(store, policy, settings, msg, &span, dead_letter_limit)
        })
        .collect();
    let mut done = 0;
    let mut backoff = Duration::from_millis(100);
    // Which messages an earlier round's publish may have brought to a stream leader.
    let mut sent = vec![false; batch.len()];
    // Since when the first message not stored has been refused as "in process", and whether
    // that was logged as an error.
    let mut in_process_since: Option<(tokio::time::Instant, bool)> = None;
    // Refusals of a message as too large, for which the same message will never be stored.
    let mut too_large = 0u32;
    while done < batch.len() {
        // A message per send, from the outcome decided once: a retry must publish exactly what
        // the first attempt did (which may be stored already), never a fresh verdict that
        // schemas or policies changed meanwhile.
        let repeated = repeated_records(&outgoing[done..]);
        let messages: Vec<_> = outgoing[done..]
            .iter()
            .zip(&batch[done..])
            .map(|((subject, out, _, _), ingress)| {
                let (headers, payload) = out.message(&ingress.payload);
                let batched = out.record().is_some_and(|r| repeated.binary_search(&r).is_ok());
                publish::Outbound { subject: subject.clone(), headers, payload, batched }
            })
            .collect();
        // Repeated records' events go as one fast batch (publish.rs) only when no earlier
        // attempt can have published any of them: first deliveries not yet brought to a stream
        // leader. A fast batch counts a member JetStream takes for a duplicate as stored, even
        // when the copy it remembers is a proposal a stream leader lost when it stepped down
        // (nats-server 2.15, docs/delivery.md): such a member would be acked and never stored.
        // Otherwise they go one by one, so each gets its own answer (a plain publish of that
        // member is refused, not taken for a duplicate).
        let mode = round_mode(
            messages
                .iter()
                .zip(&batch[done..])
                .zip(&sent[done..])
                .map(|((m, ingress), sent)| (m.batched, ingress.first_delivery && !sent)),
        );
        let results = confirmations.publish(messages, mode).await;
        for (result, sent) in results.iter().zip(&mut sent[done..]) {
            *sent |= !never_reached_a_stream(result);
        }
        let mut batch_refused = false;
        // In order: the ingress is acked and the hop recorded up to the first message not
        // known to be stored; from there the batch is published again.
        for stored in results {
            let sequence = match stored {
                Ok(sequence) => sequence,
                Err(publish::NotStored::BatchRefused(r)) => {
                    // The rest of the fast batch is not stored: a message of it was lost on
                    // the way or refused, or fast batches are not allowed on KH_EVENTS. Each
                    // is sent again on its own, at once (one stored after all is answered as
                    // a duplicate).
                    tracing::debug!(refusal = %r, "fast batch refused: publishing one by one");
                    settings.metrics.validator_batches_refused.with(&[]).inc();
                    batch_refused = true;
                    break;
                }
                Err(e) if e.is_too_large() => {
                    let ingress = &batch[done];
                    if let Outgoing::Event { event, version, .. } = &outgoing[done].1 {
                        // Valid, but its CloudEvent is over KH_EVENTS's limit: never stored
                        // by a retry, so it is dead-lettered, raw bytes whole, instead.
                        let (headers, body) = outgoing[done].1.message(&ingress.payload);
                        let size = dead_letter::message_len(&headers, body.len());
                        tracing::warn!(event_id = %event.id, ingress_seq = ingress.seq, size, error = %e, "validated event too large for KH_EVENTS: dead-lettered as payload_too_large");
                        let message = format!(
                            "valid, but its KH_EVENTS message (CloudEvents headers and data) is {size} bytes and was refused: {e} (topology.max_message_bytes)"
                        );
                        let trace_id =
                            outgoing[done].2.as_ref().map(|r| r.trace_id.clone()).unwrap_or_default();
                        let details = dead_letter::Details {
                            reason: reason::Reason::PayloadTooLarge,
                            message,
                            violations: Vec::new(),
                            original_subject: &ingress.subject,
                            raw: &ingress.payload,
                            event: Some(event),
                            actor: &settings.actor,
                            subscription: "",
                            schema_version: *version,
                        };
                        let letter = dead_lettered(ingress, details, trace_id, dead_letter_limit);
                        outgoing[done] = letter;
                    } else {
                        too_large += 1;
                        if too_large.is_power_of_two() {
                            tracing::error!(ingress_seq = ingress.seq, subject = %ingress.subject, attempts = too_large, error = %e, "a dead letter is refused as too large: it cannot be stored whole, the message stays in KH_INGRESS and its partition waits; raise KH_DLQ's max_message_size (and the server's max_payload) or see docs/operations.md");
                        }
                    }
                    break;
                }
                Err(e) if e.is_id_in_process() => {
                    let (since, alerted) =
                        *in_process_since.get_or_insert_with(|| (tokio::time::Instant::now(), false));
                    if since.elapsed() >= ID_IN_PROCESS_ALERT && !alerted {
                        tracing::error!(ingress_seq = batch[done].seq, subject = %batch[done].subject, waiting_s = since.elapsed().as_secs(), error = %e, "KH_EVENTS keeps refusing a validated event as a duplicate of a copy it has not stored: its stream leader kept the id of a publish it lost when it stepped down, and this partition waits until the duplicate window ends; step the leader down to go on (nats stream cluster step-down KH_EVENTS, docs/operations.md)");
                        in_process_since = Some((since, true));
                    } else {
                        tracing::debug!(error = %e, "retrying in order");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retrying in order");
                    break;
                }
            };
            tracing::trace!(ingress_seq = batch[done].seq, events_seq = sequence, "stored: ingress acked");
            if let Some(m) = &batch[done].delivered {
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "ingress ack failed; the event will be redelivered and deduplicated");
                }
            }
            count(settings, &batch[done], &outgoing[done].3);
            if let Some(mut record) = outgoing[done].2.take() {
                // Where its delivery hops will be recorded (a repeat is told the sequence of
                // the copy stored first; 0, not known, for a fast batch's member before its
                // last).
                record.events_seq = sequence;
                settings.audit.record(record).await;
            }
            done += 1;
            in_process_since = None;
        }
        if done < batch.len() {
            if *shutdown.borrow() {
                // Unacked messages are handled by whoever is pinned next.
                return;
            }
            for msg in batch[done..].iter().filter_map(|i| i.delivered.as_ref()) {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            if batch_refused {
                continue;
            }
            tokio::time::sleep(backoff).await;
            // At most a second: a `KH_EVENTS` leader elected while this waited 1.6 s and then
            // 3.2 s was used only that much later (1.8 s of a 6.7 s resume after its node died).
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// How a round of `process_batch` publishes, given for each message whether its record repeats
/// in the round and whether it is fresh (a first delivery no earlier round brought to a stream
/// leader): repeated records' events as a fast batch when all of them are fresh, else one by
/// one (no repeated record: pipelined).
fn round_mode(round: impl IntoIterator<Item = (bool, bool)>) -> publish::Mode {
    if round.into_iter().all(|(batched, fresh)| !batched || fresh) {
        publish::Mode::Batched
    } else {
        publish::Mode::OneByOne
    }
}

/// Whether a publish's result shows the message reached no stream: the client did not send it,
/// or no stream listened (503, as between a leader's loss and the next election). No leader
/// can have staged its id, so it may go in a fast batch again.
fn never_reached_a_stream(result: &Result<u64, publish::NotStored>) -> bool {
    match result {
        Err(publish::NotStored::NotSent(_) | publish::NotStored::OverMaxPayload(_)) => true,
        Err(publish::NotStored::Refused(r)) => r.status == Some(503),
        _ => false,
    }
}

/// The records (source, type, key) with two or more validated events among `outgoing`: only
/// their events need the fast batch. An event alone of its record in a batch has no later
/// one of its record to overtake it, and the next batch is sent only once this one is
/// confirmed; published plainly, it gets an acknowledgement of its own naming its `KH_EVENTS`
/// sequence (a fast batch's answer names only its last message's).
fn repeated_records<T, A, V>(outgoing: &[(T, Outgoing, A, V)]) -> Vec<(&str, &str, &str)> {
    let mut records: Vec<_> = outgoing.iter().filter_map(|(_, out, _, _)| out.record()).collect();
    records.sort_unstable();
    let mut repeated: Vec<_> = records.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    repeated.dedup();
    repeated
}

/// What the validator publishes for one ingress message, decided once.
enum Outgoing {
    /// A validated event: its `KH_EVENTS` message is built at each send from the ingress bytes
    /// and these (the same bytes every time), so the usual single send copies no headers.
    Event {
        /// The decoded envelope.
        event: kakehashi_proto::v1::Event,
        /// Schema version it was validated against.
        version: u32,
        /// Trace context headers for the hops downstream.
        trace: Vec<(&'static str, String)>,
    },
    /// A dead letter, as built (rare: copied at each send).
    Ready(HeaderMap, bytes::Bytes),
}

impl Outgoing {
    /// The record a validated event is about (source, type, key; keyless events of a type
    /// count as one record); none for a dead letter, which has no order to keep.
    fn record(&self) -> Option<(&str, &str, &str)> {
        match self {
            Outgoing::Event { event, .. } => Some((&event.source, &event.r#type, &event.subject)),
            Outgoing::Ready(..) => None,
        }
    }

    /// The message to send, headers and payload; `raw` is the ingress payload this outcome was
    /// decided on.
    fn message(&self, raw: &bytes::Bytes) -> (HeaderMap, bytes::Bytes) {
        match self {
            Outgoing::Event { event, version, trace } => {
                // A binary-mode CloudEvent: attributes as `ce-` headers, the body the
                // envelope's `data` sliced out of the ingress bytes (no copy, no
                // re-serialisation).
                let (mut headers, body) =
                    kakehashi_proto::cloudevents::binary::events_message(raw, event, *version);
                // Static names: a `&str` name is validated and copied into a new allocation
                // at every insert.
                headers.insert(HeaderName::from_static(HEADER_SCHEMA_VERSION), version.to_string());
                for (name, value) in trace {
                    headers.insert(HeaderName::from_static(name), value.clone());
                }
                headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
                (headers, body)
            }
            Outgoing::Ready(headers, payload) => (headers.clone(), payload.clone()),
        }
    }
}

/// What became of an ingress message, for the metrics.
enum Verdict {
    /// Valid, of this type.
    Validated(String),
    /// Dead-lettered for this reason.
    DeadLettered(&'static str),
}

/// The durable consumer of the partition a stored ingress subject (`kh.ip.<n>.…`) belongs to.
fn partition_consumer(stored: &str) -> String {
    match stored.strip_prefix(subjects::PARTITIONED_PREFIX).and_then(|s| s.split_once('.')) {
        Some((n, _)) => format!("{CONSUMER_PREFIX}{n}"),
        None => UNPARTITIONED_CONSUMER.to_string(),
    }
}

fn count(settings: &ValidatorSettings, msg: &Ingress, verdict: &Verdict) {
    let m = &settings.metrics;
    // The subject's source is the department NATS let publish there, whatever the envelope says.
    let source = subjects::parse_ingress(&msg.subject).map_or("unknown", |s| s.source);
    match verdict {
        Verdict::Validated(t) => {
            m.validated.with(&[source, t]).inc();
            if let Some(published) = msg.published {
                m.publish_to_validated.with(&[]).observe(crate::metrics::since(published));
            }
        }
        Verdict::DeadLettered(reason) => m.dead_lettered.with(&[reason, source]).inc(),
    }
}

/// The context a validate span continues: the ingress message's own headers (the publishing
/// hop's), else for an event published without them the envelope's; only a valid pair.
fn incoming<'a>(
    msg: &'a Ingress,
    event: Option<&'a kakehashi_proto::v1::Event>,
) -> Option<telemetry::TraceContext<'a>> {
    telemetry::incoming(msg.headers.as_ref(), event.map(|e| &e.extensions))
}

/// The W3C headers of a validated event's `kh.ev.` message: the validate span's (`ours`), so
/// downstream hops become its children; with export off (`ours` empty) the incoming context
/// ([`telemetry::incoming`]: the ingress headers', else the event's own) passed on unchanged.
fn hop_trace(
    ours: &std::collections::HashMap<String, String>,
    incoming: Option<telemetry::TraceContext<'_>>,
) -> Vec<(&'static str, String)> {
    telemetry::TraceContext::from_map(ours)
        .or(incoming)
        .iter()
        .flat_map(telemetry::TraceContext::headers)
        .map(|(h, v)| (h, v.to_string()))
        .collect()
}

/// What to publish for one ingress message.
fn outcome(
    store: &SchemaStore,
    policy: &ProducerPolicy,
    settings: &ValidatorSettings,
    msg: &Ingress,
    span: &tracing::Span,
    dead_letter_limit: usize,
) -> (String, Outgoing, Option<AuditRecord>, Verdict) {
    match check::check(&msg.subject, &msg.payload, store, settings.limits, |s, t| policy(s, t)) {
        Ok(accepted) => {
            let event = &accepted.event;
            span.record("event_id", event.id.as_str());
            span.record("messaging.message.id", event.id.as_str());
            // The publisher's context from the NATS headers, or for an event published without
            // them (straight to NATS) the envelope's own; set before the span is entered, as a
            // started span can no longer change its parent.
            let incoming = incoming(msg, Some(event));
            telemetry::adopt(span, incoming.map_or_else(Default::default, |c| c.otel()));
            telemetry::link_creation(span, incoming.as_ref(), Some(&event.extensions));
            let _guard = span.enter();
            let trace_id = telemetry::trace_id(span, incoming.map(|c| c.traceparent.as_str()));
            span.record("trace_id", trace_id.as_str());
            let trace = hop_trace(&telemetry::traceparent_of(span), incoming);
            tracing::debug!(event_type = %event.r#type, version = accepted.schema_version, "validated");
            let mut record = AuditRecord::hop(event, "validated", "ok");
            record.schema_version = accepted.schema_version;
            record.trace_id = trace_id;
            let verdict = Verdict::Validated(event.r#type.clone());
            let subject = subjects::events(&event.r#type);
            let out = Outgoing::Event { event: accepted.event, version: accepted.schema_version, trace };
            (subject, out, Some(record), verdict)
        }
        Err(rejected) => {
            if let Some(e) = &rejected.event {
                span.record("event_id", e.id.as_str());
                span.record("messaging.message.id", e.id.as_str());
            }
            // A dead-lettered event's trace still shows where it stopped.
            let incoming = incoming(msg, rejected.event.as_ref());
            telemetry::adopt(span, incoming.map_or_else(Default::default, |c| c.otel()));
            telemetry::link_creation(span, incoming.as_ref(), rejected.event.as_ref().map(|e| &e.extensions));
            let _guard = span.enter();
            let trace_id = telemetry::trace_id(span, incoming.map(|c| c.traceparent.as_str()));
            span.record("trace_id", trace_id.as_str());
            tracing::info!(reason = rejected.reason.code(), detail = %rejected.message, "dead-lettered");
            // Status ERROR with the reason, so error filters of trace backends count dead letters
            // (the code first: recording the description after it keeps the description).
            span.record("error.type", rejected.reason.code());
            span.record("otel.status_code", "ERROR");
            span.record(
                "otel.status_description",
                format!("{}: {}", rejected.reason.code(), rejected.message).as_str(),
            );
            let details = dead_letter::Details {
                reason: rejected.reason,
                message: rejected.message,
                violations: rejected.violations,
                original_subject: &msg.subject,
                raw: &msg.payload,
                event: rejected.event.as_ref(),
                actor: &settings.actor,
                subscription: "",
                schema_version: rejected.schema_version,
            };
            dead_lettered(msg, details, trace_id, dead_letter_limit)
        }
    }
}

/// The dead letter of `msg`, within `limit` bytes ([`dead_letter::build_within`]: shortened,
/// never its raw bytes), keyed by ingress sequence so a redelivered message is dead-lettered
/// once, with the audit hop of its event when that has a valid id.
fn dead_lettered(
    msg: &Ingress,
    details: dead_letter::Details<'_>,
    trace_id: String,
    limit: usize,
) -> (String, Outgoing, Option<AuditRecord>, Verdict) {
    let (reason, schema_version) = (details.reason, details.schema_version);
    let record = details.event.filter(|e| kakehashi_proto::ids::is_valid_event_id(&e.id)).map(|e| {
        let mut r = AuditRecord::hop(e, "dead_lettered", "rejected");
        r.detail = reason.code().to_string();
        r.schema_version = schema_version;
        r.trace_id = trace_id;
        r
    });
    let out = match dead_letter::build_within(details, limit) {
        Ok(out) => out,
        Err(too_large) => {
            // Published anyway: its refusals are logged, and the message stays in KH_INGRESS.
            tracing::error!(ingress_seq = msg.seq, subject = %msg.subject, error = %too_large, "cannot dead-letter this KH_INGRESS message with its raw bytes whole");
            too_large.letter
        }
    };
    let mut headers = out.headers;
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("dlq-in-{}", msg.seq).as_str());
    (out.subject, Outgoing::Ready(headers, out.body.into()), record, Verdict::DeadLettered(reason.code()))
}

#[cfg(test)]
mod tests {
    use super::{hop_trace, incoming, repeated_records, Ingress, Outgoing, Tenure};
    use async_nats::HeaderMap;
    use kakehashi_runtime::telemetry;
    use std::collections::HashMap;

    const HEADERS_TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const EVENT_TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ingress(headers: &[(&str, &str)]) -> Ingress {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        Ingress {
            subject: "kh.in.city-x.a.b".into(),
            payload: bytes::Bytes::new(),
            headers: Some(map),
            seq: 1,
            published: None,
            delivered: None,
            first_delivery: true,
        }
    }

    fn event(extensions: &[(&str, &str)]) -> kakehashi_proto::v1::Event {
        kakehashi_proto::v1::Event {
            extensions: extensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    /// With export off (no span context): what goes on to `kh.ev.` and the audit trace id.
    fn passed_on(msg: &Ingress, event: &kakehashi_proto::v1::Event) -> (Vec<(&'static str, String)>, String) {
        let cx = incoming(msg, Some(event));
        let trace_id = telemetry::trace_id(&tracing::Span::none(), cx.map(|c| c.traceparent.as_str()));
        (hop_trace(&HashMap::new(), cx), trace_id)
    }

    #[test]
    fn with_export_off_the_ingress_headers_context_is_passed_on_unchanged() {
        let msg = ingress(&[("traceparent", HEADERS_TP), ("tracestate", "from=headers")]);
        let own = event(&[("traceparent", EVENT_TP), ("tracestate", "from=event")]);
        let expected =
            vec![("traceparent", HEADERS_TP.to_string()), ("tracestate", "from=headers".to_string())];
        assert_eq!(passed_on(&msg, &own), (expected.clone(), "0af7651916cd43dd8448eb211c80319c".into()));
        assert_eq!(passed_on(&msg, &event(&[])), (expected, "0af7651916cd43dd8448eb211c80319c".into()));
    }

    #[test]
    fn with_export_off_an_invalid_ingress_context_falls_back_to_the_events_own_pair() {
        let invalid = "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let msg = ingress(&[("traceparent", invalid), ("tracestate", "from=headers")]);
        let own = event(&[("traceparent", EVENT_TP)]);
        let expected = vec![("traceparent", EVENT_TP.to_string())];
        assert_eq!(passed_on(&msg, &own), (expected, "4bf92f3577b34da6a3ce929d0e0e4736".into()));
        let (trace, trace_id) = passed_on(&msg, &event(&[("traceparent", invalid)]));
        assert!(trace.is_empty() && trace_id.is_empty(), "no valid context anywhere: {trace:?}");
    }

    #[test]
    fn a_validate_span_with_a_context_passes_on_its_own() {
        let ours: HashMap<String, String> = [("traceparent".to_string(), EVENT_TP.to_string())].into();
        let msg = ingress(&[("traceparent", HEADERS_TP), ("tracestate", "from=headers")]);
        let own = event(&[]);
        assert_eq!(hop_trace(&ours, incoming(&msg, Some(&own))), vec![("traceparent", EVENT_TP.to_string())]);
    }

    #[test]
    fn only_a_first_delivery_straight_after_a_first_delivery_skips_the_gap_read() {
        let mut t = Tenure { pin: None, last: 10, started: true, first_delivery: None, suspect_until: 0 };
        // The tenure's first message: no earlier first delivery to follow.
        assert!(!t.follows_directly(5, 1));
        t.first_delivery = Some(5);
        assert!(t.follows_directly(6, 1), "the very next delivery, a first one");
        assert!(!t.follows_directly(7, 1), "a delivery in between went elsewhere or was lost");
        assert!(!t.follows_directly(6, 2), "a redelivery");
        assert!(!t.follows_directly(5, 1), "a reset restarted the delivery sequence");
    }

    #[test]
    fn a_fast_batch_holds_only_fresh_messages() {
        use super::{publish::Mode, round_mode};
        // (record repeats in the round, fresh: a first delivery not yet brought to a stream)
        assert_eq!(round_mode([(true, true), (false, true), (true, true)]), Mode::Batched);
        assert_eq!(
            round_mode([(true, true), (true, false)]),
            Mode::OneByOne,
            "a member sent before or redelivered"
        );
        assert_eq!(
            round_mode([(true, true), (false, false), (true, true)]),
            Mode::Batched,
            "a stale message alone of its record goes plainly beside the batch"
        );
        assert_eq!(
            round_mode([(false, false), (false, true)]),
            Mode::Batched,
            "no record repeats: pipelined"
        );
    }

    #[test]
    fn a_reset_consumers_recorded_sequence_is_read_back_and_nothing_else_counts() {
        use super::{suspect_until, SUSPECT_UNTIL};
        let meta = |v: &str| std::collections::HashMap::from([(SUSPECT_UNTIL.to_string(), v.to_string())]);
        assert_eq!(suspect_until(&meta("4711")), 4711);
        assert_eq!(suspect_until(&meta("not a number")), 0);
        assert_eq!(suspect_until(&std::collections::HashMap::new()), 0);
    }

    #[test]
    fn only_a_message_no_stream_can_have_seen_is_fresh_again() {
        use super::{never_reached_a_stream, publish::NotStored};
        use kakehashi_runtime::pub_acks::Refusal;
        let refused = |status, err_code| {
            Err(NotStored::Refused(Refusal { status, code: None, err_code, description: String::new() }))
        };
        assert!(never_reached_a_stream(&refused(Some(503), None)), "no responders: no stream listened");
        assert!(never_reached_a_stream(&Err(NotStored::NotSent("closed".into()))));
        assert!(!never_reached_a_stream(&Err(NotStored::Unconfirmed)), "may be staged by a leader");
        assert!(!never_reached_a_stream(&refused(None, Some(10158))));
        assert!(!never_reached_a_stream(&Err(NotStored::BatchRefused(Refusal {
            status: None,
            code: Some(400),
            err_code: Some(10208),
            description: String::new()
        }))));
        assert!(!never_reached_a_stream(&Ok(3)));
    }

    #[test]
    fn only_records_with_two_or_more_events_in_a_batch_need_the_fast_batch() {
        let event = |source: &str, key: &str| Outgoing::Event {
            event: kakehashi_proto::v1::Event {
                source: source.into(),
                r#type: "t.a".into(),
                subject: key.into(),
                ..Default::default()
            },
            version: 1,
            trace: Vec::new(),
        };
        let letter = || Outgoing::Ready(HeaderMap::new(), bytes::Bytes::new());
        let outgoing: Vec<((), Outgoing, (), ())> = [
            event("city-a", "k1"),
            event("city-a", "k2"),
            letter(),
            event("city-b", "k1"),
            event("city-a", "k1"),
            event("city-a", ""),
            letter(),
            event("city-a", "k1"),
            event("city-a", ""),
        ]
        .into_iter()
        .map(|o| ((), o, (), ()))
        .collect();
        assert_eq!(repeated_records(&outgoing), vec![("city-a", "t.a", ""), ("city-a", "t.a", "k1")]);
        assert!(repeated_records(&outgoing[..4]).is_empty());
    }
}
