//! The issuer's work: read records and requests from its two subscriptions, keep the records,
//! answer each request once.
//!
//! Per delivery, in this order, so that a crash at any point is repaired by the redelivery of
//! an unacked delivery:
//! - record: store it (fsync) → ack.
//! - request: if an answer is stored for its id, publish that answer again (same event id,
//!   same bytes; the bus keeps one copy) → ack. Otherwise decide (card or refusal), store the
//!   answer (fsync), write the card files, publish (retried with the same id while the adapter
//!   is unreachable) → ack.
//!
//! A delivery whose payload the issuer cannot read (see [`decode`]) is nacked with a delay, never
//! acked: the registry redelivers it up to the subscription's max deliveries and then
//! dead-letters it as `delivery_exhausted` with the raw bytes, so no record or request is lost
//! without a trace.
//!
//! The two subscriptions are two streams, so a request can arrive before a record published
//! just ahead of it: a request for a person without records is held (unacked) for
//! `refuse_after_ms`, and answered as soon as a record for the person arrives; only then is it
//! refused.

use super::bus::{Bus, Stream};
use super::config::IssuerConfig;
use super::events::{self, Issued, Recorded, Requested};
use super::issuing::{self, Decision};
use super::keys::KeyStore;
use super::state::{Answer, State, StoredRecord};
use super::{ids, output, ServiceError};
use crate::HealthCard;
use kakehashi_proto::ident::is_pseudonym;
use kakehashi_proto::v1::{Event, EventDelivery};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a delivery the issuer must not or cannot process (a raw My Number, a payload it
/// cannot read) waits before it comes again; after the subscription's max deliveries it is
/// dead-lettered for the operator.
const RETRY_LATER: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the worker settles a delivery it does not process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with: it never comes again.
    Ack,
    /// Comes again after the delay; past the subscription's max deliveries the registry
    /// dead-letters it (`delivery_exhausted`, with the raw bytes).
    Nack(Duration),
}

/// Why a delivery is not processed. Says nothing of the payload's content: serde_json's own
/// messages quote the offending value, which may be personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unprocessable {
    /// The delivery carries no event: there is nothing to process, now or later.
    NoEvent,
    /// The payload does not decode into the issuer's type.
    Undecodable {
        /// What kind of problem (serde_json's category), e.g. "not the expected shape".
        problem: &'static str,
        /// Where in the payload (1-based).
        line: usize,
        /// Where in the payload (1-based).
        column: usize,
    },
}

impl Unprocessable {
    /// The settlement: an undecodable payload is nacked, never acked, so that it ends in the
    /// dead-letter stream rather than being dropped.
    pub fn settle(&self) -> Settle {
        match self {
            Self::NoEvent => Settle::Ack,
            Self::Undecodable { .. } => Settle::Nack(RETRY_LATER),
        }
    }
}

/// A delivery's event and its payload decoded as `T`; or why it is not processed (settle it
/// with [`Unprocessable::settle`]). Pure, so the worker's choice is tested directly.
pub fn decode<T: DeserializeOwned>(event: Option<&Event>) -> Result<(&Event, T), Unprocessable> {
    let event = event.ok_or(Unprocessable::NoEvent)?;
    serde_json::from_slice(&event.data).map(|payload| (event, payload)).map_err(|e| {
        use serde_json::error::Category;
        let problem = match e.classify() {
            Category::Io => "unreadable",
            Category::Syntax => "not JSON",
            Category::Eof => "truncated JSON",
            Category::Data => "not the expected shape",
        };
        Unprocessable::Undecodable { problem, line: e.line(), column: e.column() }
    })
}

/// A delivered vaccination record: as JSON (the JSON Schema subject, or the protobuf subject's
/// proto3 JSON), or as protobuf bytes (`application/protobuf`, the protobuf subject's form).
pub fn decode_record(event: Option<&Event>) -> Result<(&Event, Recorded), Unprocessable> {
    match event {
        Some(e) if kakehashi_proto::PROTOBUF_CONTENT_TYPES.contains(&e.data_content_type.as_str()) => {
            super::recorded_pb::decode(&e.data)
                .map(|r| (e, r))
                .map_err(|problem| Unprocessable::Undecodable { problem, line: 0, column: 0 })
        }
        _ => decode(event),
    }
}

/// Settles a delivery that is not processed, with one log line (event id and position only).
async fn settle_unprocessed(s: &Stream, d: &EventDelivery, what: &str, why: &Unprocessable) {
    let event_id = d.event.as_ref().map_or("", |e| e.id.as_str());
    let settle = why.settle();
    match why {
        Unprocessable::NoEvent => {
            tracing::warn!(delivery_id = d.delivery_id, "delivery without an event; acked")
        }
        Unprocessable::Undecodable { problem, line, column } => tracing::error!(
            %event_id,
            attempt = d.attempt,
            problem,
            line,
            column,
            retry = ?settle,
            "payload is not a readable {what}: nacked, to be dead-lettered after the subscription's max deliveries"
        ),
    }
    match settle {
        Settle::Ack => s.ack(d.delivery_id).await,
        Settle::Nack(delay) => s.nack(d.delivery_id, delay).await,
    }
}

struct Pending {
    delivery_id: u64,
    request_id: String,
    request: Requested,
    deadline: Instant,
}

/// The issuer's event loop.
pub struct Worker {
    cfg: IssuerConfig,
    bus: Bus,
    state: State,
    keys: Arc<KeyStore>,
    issuer_url: String,
    output_dir: PathBuf,
    pending: Vec<Pending>,
    stop: watch::Receiver<bool>,
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Worker {
    /// A worker; `stop` turning true ends it.
    pub fn new(
        cfg: IssuerConfig,
        bus: Bus,
        state: State,
        keys: Arc<KeyStore>,
        issuer_url: String,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let output_dir = cfg.output_dir();
        Self { cfg, bus, state, keys, issuer_url, output_dir, pending: Vec::new(), stop }
    }

    /// Runs until stopped; reconnects when a stream ends. Returns an error only for what a
    /// reconnection cannot fix (the state file or the output directory failing).
    pub async fn run(mut self) -> Result<(), ServiceError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            match self.session().await {
                Ok(true) => return Ok(()),
                Ok(false) => backoff = Duration::from_millis(200),
                Err(ServiceError::Bus(e)) => tracing::warn!(error = %e, "bus unavailable; retrying"),
                Err(e) => return Err(e),
            }
            // Held requests come again on the new streams.
            self.pending.clear();
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: both subscriptions open. `Ok(true)` = stopped, `Ok(false)` = a stream
    /// ended (reconnect).
    async fn session(&mut self) -> Result<bool, ServiceError> {
        let names = self.cfg.subscriptions.clone();
        self.bus.ensure_subscription(&names.records, events::RECORDED).await?;
        self.bus.ensure_subscription(&names.requests, events::REQUESTED).await?;
        let mut records = self.bus.open(&names.records, self.cfg.max_in_flight).await?;
        let mut requests = self.bus.open(&names.requests, self.cfg.max_in_flight).await?;
        tracing::info!(
            department = %self.cfg.department,
            records = %names.records,
            requests = %names.requests,
            "subscribed"
        );
        let mut stop = self.stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return Ok(true),
                d = records.stream.message() => match d {
                    Ok(Some(d)) => {
                        self.on_record(&records, d).await?;
                        if !self.flush_pending(&requests).await? {
                            return Ok(true);
                        }
                    }
                    Ok(None) => return Ok(false),
                    Err(status) => {
                        tracing::warn!(%status, "records stream failed");
                        return Ok(false);
                    }
                },
                d = requests.stream.message() => match d {
                    Ok(Some(d)) => {
                        if !self.on_request(&requests, d).await? {
                            return Ok(true);
                        }
                    }
                    Ok(None) => return Ok(false),
                    Err(status) => {
                        tracing::warn!(%status, "requests stream failed");
                        return Ok(false);
                    }
                },
                _ = tick.tick() => {
                    if !self.flush_pending(&requests).await? {
                        return Ok(true);
                    }
                }
            }
        }
    }

    async fn on_record(&mut self, s: &Stream, d: EventDelivery) -> Result<(), ServiceError> {
        if let Some(event) = d.event.as_ref().filter(|e| self.state.has_record(&e.id)) {
            tracing::debug!(event_id = %event.id, "vaccination record stored before");
            s.ack(d.delivery_id).await;
            return Ok(());
        }
        // The registry validated it, yet this issuer may not read it: never acked unread, so it
        // reaches the dead-letter stream (with its bytes) instead of being lost.
        let (event, record): (_, Recorded) = match decode_record(d.event.as_ref()) {
            Ok(decoded) => decoded,
            Err(why) => {
                settle_unprocessed(s, &d, "vaccination record", &why).await;
                return Ok(());
            }
        };
        if !is_pseudonym(&record.person.my_number) {
            tracing::error!(
                event_id = %event.id,
                "a raw My Number was delivered: the issuer must not be a raw_pii_reader; not stored"
            );
            s.nack(d.delivery_id, RETRY_LATER).await;
            return Ok(());
        }
        self.state.add_record(StoredRecord {
            event_id: event.id.clone(),
            pseudonym: record.person.my_number,
            birth_date: record.person.birth_date,
            municipality_code: record.municipality_code,
            vaccination: record.vaccination,
        })?;
        tracing::info!(event_id = %event.id, attempt = d.attempt, "vaccination record stored");
        s.ack(d.delivery_id).await;
        Ok(())
    }

    /// `Ok(false)` when stopped before the answer was published.
    async fn on_request(&mut self, s: &Stream, d: EventDelivery) -> Result<bool, ServiceError> {
        let stored = d.event.as_ref().and_then(|e| self.state.answer(&e.id)).cloned();
        if let Some(answer) = stored {
            let request_id = &answer.request_id;
            tracing::info!(%request_id, attempt = d.attempt, "request answered before: publishing the stored answer again");
            return self.deliver_answer(s, d.delivery_id, &answer).await;
        }
        // Only a request the issuer cannot read goes unanswered, nacked towards the dead-letter
        // stream; a readable one is answered, with a card or a refusal event.
        let (event, request): (_, Requested) = match decode(d.event.as_ref()) {
            Ok(decoded) => decoded,
            Err(why) => {
                settle_unprocessed(s, &d, "certificate request", &why).await;
                return Ok(true);
            }
        };
        let request_id = event.id.clone();
        if !is_pseudonym(&request.person.my_number) {
            tracing::error!(
                %request_id,
                "a raw My Number was delivered: the issuer must not be a raw_pii_reader; not processed"
            );
            s.nack(d.delivery_id, RETRY_LATER).await;
            return Ok(true);
        }
        tracing::info!(%request_id, attempt = d.attempt, "certificate requested");
        let wait = Duration::from_millis(self.cfg.refuse_after_ms);
        if let Some(held) = self.pending.iter_mut().find(|p| p.request_id == request_id) {
            // Redelivered while held (the subscription's ack wait is shorter than the hold):
            // one request, answered once; the newest delivery is the one to ack.
            held.delivery_id = d.delivery_id;
            return Ok(true);
        }
        if self.state.records_of(&request.person.my_number).is_empty() && !wait.is_zero() {
            self.pending.push(Pending {
                delivery_id: d.delivery_id,
                request_id,
                request,
                deadline: Instant::now() + wait,
            });
            return Ok(true);
        }
        self.answer(s, d.delivery_id, &request_id, &request).await
    }

    /// Answers the held requests whose person now has records, or whose wait is over.
    async fn flush_pending(&mut self, s: &Stream) -> Result<bool, ServiceError> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let now = Instant::now();
        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending).into_iter().partition(|p| {
            p.deadline <= now || !self.state.records_of(&p.request.person.my_number).is_empty()
        });
        self.pending = held;
        for p in ready {
            if !self.answer(s, p.delivery_id, &p.request_id, &p.request).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn answer(
        &mut self,
        s: &Stream,
        delivery_id: u64,
        request_id: &str,
        request: &Requested,
    ) -> Result<bool, ServiceError> {
        if let Some(answer) = self.state.answer(request_id).cloned() {
            return self.deliver_answer(s, delivery_id, &answer).await;
        }
        let pseudonym = request.person.my_number.as_str();
        let records: Vec<StoredRecord> = self.state.records_of(pseudonym).into_iter().cloned().collect();
        let refs: Vec<&StoredRecord> = records.iter().collect();
        let now = time::OffsetDateTime::now_utc();
        let decision =
            issuing::decide(request_id, request, pseudonym, &refs, &self.keys, &self.issuer_url, now)?;
        let json = |v: serde_json::Result<serde_json::Value>| {
            v.map_err(|e| ServiceError::Internal(format!("serialising the answer: {e}")))
        };
        let answer = match decision {
            Decision::Issue { payload, .. } => Answer {
                request_id: request_id.to_string(),
                event_id: ids::issued_event_id(request_id),
                event_type: events::ISSUED.into(),
                schema_version: events::ISSUED_VERSION,
                payload: json(serde_json::to_value(&payload))?,
            },
            Decision::Refuse(refused) => {
                tracing::info!(%request_id, reason = ?refused.reason, "request refused");
                Answer {
                    request_id: request_id.to_string(),
                    event_id: ids::refused_event_id(request_id),
                    event_type: events::REFUSED.into(),
                    schema_version: 1,
                    payload: json(serde_json::to_value(&refused))?,
                }
            }
        };
        // Durable before anything leaves the issuer: a restart answers with these bytes.
        self.state.add_answer(answer.clone())?;
        self.deliver_answer(s, delivery_id, &answer).await
    }

    /// Writes the card files (for a card), publishes the answer, acks the request.
    async fn deliver_answer(
        &mut self,
        s: &Stream,
        delivery_id: u64,
        answer: &Answer,
    ) -> Result<bool, ServiceError> {
        if answer.event_type == events::ISSUED {
            let issued: Issued = serde_json::from_value(answer.payload.clone())
                .map_err(|e| ServiceError::Internal(format!("stored answer {}: {e}", answer.event_id)))?;
            let jws = issued.smart_health_card.jws.clone();
            let numeric = crate::shc::numeric::encode(&jws)
                .map_err(|e| ServiceError::Internal(format!("stored card {}: {e}", issued.certificate_id)))?;
            let files = output::write_card(
                &self.output_dir,
                &issued.certificate_id,
                &HealthCard { jws, numeric },
                self.cfg.qr_module_px,
            )?;
            tracing::info!(
                request_id = %answer.request_id,
                certificate_id = %issued.certificate_id,
                png = %files.png.display(),
                "card issued"
            );
        }
        if !self.publish(answer).await {
            return Ok(false);
        }
        s.ack(delivery_id).await;
        Ok(true)
    }

    /// Publishes until the adapter accepts it (the same id every time). `false` = stopped first.
    async fn publish(&mut self, answer: &Answer) -> bool {
        let event = Event {
            id: answer.event_id.clone(),
            r#type: answer.event_type.clone(),
            subject: answer.request_id.clone(),
            data_content_type: "application/json".into(),
            data: answer.payload.to_string().into_bytes(),
            schema_version: answer.schema_version,
            ..Default::default()
        };
        let mut backoff = Duration::from_millis(100);
        let mut stop = self.stop.clone();
        loop {
            match self.bus.publish(event.clone()).await {
                Ok(ack) => {
                    tracing::info!(
                        event_id = %ack.event_id,
                        event_type = %event.r#type,
                        duplicate = ack.duplicate,
                        "answer published"
                    );
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, "publishing failed; retrying with the same event id"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => return false,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");

    fn example(path: &str) -> Vec<u8> {
        let path = format!("{EXAMPLES}/{path}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn event(data: Vec<u8>) -> Event {
        Event { id: "evt-1".into(), data, ..Default::default() }
    }

    /// The valid example record, pseudonymised as the issuer receives it, with `dose_number`
    /// replaced by `dose` (JSON text).
    fn record_json(dose: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&example(
            "health.vaccination.recorded/examples/valid-mr-second-dose.json",
        ))
        .expect("example");
        v["person"]["my_number"] = "kh1:0123456789abcdef0123456789abcdef".into();
        v["vaccination"]["dose_number"] = serde_json::Value::Null;
        v.to_string().replace("null", dose).into_bytes()
    }

    #[test]
    fn a_record_with_dose_number_2_pow_32_is_decoded_not_dropped() {
        let e = event(record_json("4294967296"));
        let (event, record): (_, Recorded) = decode(Some(&e)).expect("a valid record decodes");
        assert_eq!(event.id, "evt-1");
        assert_eq!(record.vaccination.dose_number, 4_294_967_296);
    }

    #[test]
    fn an_undecodable_record_is_nacked_with_a_delay_never_acked() {
        // A protobuf record delivered as published (the issuer reads JSON), and a JSON record whose
        // dose number no u64 holds: both pass the registry, neither can be read here.
        for data in [
            example("health.vaccination.recorded.pb/examples/valid-mr-second-dose.binpb"),
            record_json("18446744073709551616"),
        ] {
            let e = event(data);
            let why = decode::<Recorded>(Some(&e)).map(|_| ()).expect_err("undecodable");
            assert!(matches!(why, Unprocessable::Undecodable { .. }), "{why:?}");
            let settle = why.settle();
            assert_ne!(settle, Settle::Ack, "an unread record must not be acked (it would be lost)");
            assert_eq!(settle, Settle::Nack(RETRY_LATER));
            assert!(!RETRY_LATER.is_zero(), "redelivered later, not in a tight loop");
        }
    }

    #[test]
    fn an_undecodable_request_is_nacked_a_readable_one_is_processed() {
        let valid = example("health.vaccination.certificate.requested/examples/valid-two-given-names.json");
        let readable = event(valid.clone());
        let (_, request): (_, Requested) = decode(Some(&readable)).expect("a valid request decodes");
        assert!(!request.passport.family_name.is_empty());
        // Cut short: the same request the issuer cannot read.
        let truncated = event(valid[..valid.len() / 2].to_vec());
        let why = decode::<Requested>(Some(&truncated)).map(|_| ()).expect_err("undecodable");
        assert_eq!(why.settle(), Settle::Nack(RETRY_LATER));
    }

    #[test]
    fn the_reason_quotes_nothing_of_the_payload() {
        // serde_json's own message would quote the value, here a raw My Number where a date goes.
        let mut v: serde_json::Value = serde_json::from_slice(&example(
            "health.vaccination.recorded/examples/valid-mr-second-dose.json",
        ))
        .expect("example");
        v["vaccination"]["date"] = 161_803_398_872_u64.into();
        let e = event(v.to_string().into_bytes());
        let serde_message =
            serde_json::from_slice::<Recorded>(&e.data).map(|_| ()).expect_err("bad").to_string();
        assert!(serde_message.contains("161803398872"), "the hazard this guards against: {serde_message}");
        let why = decode::<Recorded>(Some(&e)).map(|_| ()).expect_err("undecodable");
        let logged = format!("{why:?}");
        assert!(!logged.contains("161803398872") && !logged.contains("Y123"), "{logged}");
        assert!(
            matches!(why, Unprocessable::Undecodable { problem: "not the expected shape", .. }),
            "{logged}"
        );
    }

    #[test]
    fn a_delivery_without_an_event_is_acked() {
        let why = decode::<Recorded>(None).map(|_| ()).expect_err("nothing to decode");
        assert_eq!((why.clone(), why.settle()), (Unprocessable::NoEvent, Settle::Ack));
    }
}
