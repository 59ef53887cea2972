//! The NATS sink of a file import: each mapped row becomes a `kakehashi.v1.Event` published
//! to `kh.in.<source>._<bucket>.<type>` through a [`Pipeline`] (a window of unconfirmed publishes,
//! confirmations in order, retries with backoff).
//!
//! Before sending, the payload is checked against the schema the registry's validator will use
//! (from `KH_SCHEMAS`), so a row the bus would dead-letter is rejected with its line number
//! instead; the validator stays the authority and checks again.

use crate::legacy::{EventSink, MappedEvent, Outcome, SinkError};
use crate::schemas::SchemaIndex;
use crate::sdk::{Ack, Bus, Pipeline, PublishError};
use kakehashi_proto::v1::Event;

/// Most schema violations quoted in one reject line.
const MAX_VIOLATIONS: usize = 5;

/// Publishes mapped rows to the bus.
pub struct NatsSink {
    pipeline: Pipeline,
    source: String,
    /// Set when payloads are checked against their schema before sending.
    schemas: Option<SchemaIndex>,
}

impl NatsSink {
    /// A sink publishing as `bus`'s department with up to `window` unconfirmed publishes;
    /// with `validate`, payloads are checked against their schema first (needs a bus that
    /// checks types).
    pub fn new(bus: &Bus, window: usize, validate: bool) -> Self {
        let schemas = if validate { bus.schemas().cloned() } else { None };
        Self { pipeline: bus.pipeline(window), source: bus.source().to_string(), schemas }
    }

    fn event(&self, row: MappedEvent) -> Event {
        Event {
            id: row.id,
            source: self.source.clone(),
            r#type: row.event_type,
            subject: row.key,
            data_content_type: "application/json".into(),
            data: row.payload_json,
            schema_version: row.schema_version.unwrap_or(0),
            ..Default::default()
        }
    }
}

/// Checks the payload; `Some((reason, message))` when the validator would refuse it.
async fn check(schemas: Option<&SchemaIndex>, row: &MappedEvent) -> Option<(&'static str, String)> {
    let schemas = schemas?;
    let payload: serde_json::Value = match serde_json::from_slice(&row.payload_json) {
        Ok(v) => v,
        Err(e) => return Some(("payload_not_json", e.to_string())),
    };
    let version = row.schema_version.unwrap_or(0);
    match schemas.validate(&row.event_type, version, &payload, MAX_VIOLATIONS).await {
        Ok(Ok(())) => None,
        Ok(Err(violations)) => Some(("schema_violation", violations.join("; "))),
        Err(e) => Some((e.reason(), e.to_string())),
    }
}

impl NatsSink {
    /// Moves every result already known into `settled`, stopping at an unavailable bus.
    fn drain(&mut self, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        while let Some(result) = self.pipeline.try_next() {
            settled.push(outcome(result)?);
        }
        Ok(())
    }
}

fn outcome(result: Result<Ack, PublishError>) -> Result<Outcome, SinkError> {
    match result {
        Ok(ack) => Ok(Outcome::Published { duplicate: ack.duplicate }),
        Err(PublishError::Refused { reason, message }) => {
            Ok(Outcome::Refused { reason: format!("{reason}: {message}") })
        }
        Err(e @ PublishError::Unavailable { .. }) => Err(SinkError::Unavailable(Box::new(e))),
    }
}

impl EventSink for NatsSink {
    async fn send(&mut self, row: MappedEvent, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        match check(self.schemas.as_ref(), &row).await {
            Some((reason, message)) => self.pipeline.refuse(row.id, reason, message),
            None => {
                let event = self.event(row);
                self.pipeline.send(event).await;
            }
        }
        self.drain(settled)
    }

    async fn flush(&mut self, settled: &mut Vec<Outcome>) -> Result<(), SinkError> {
        while let Some(result) = self.pipeline.next().await {
            settled.push(outcome(result)?);
        }
        Ok(())
    }
}
