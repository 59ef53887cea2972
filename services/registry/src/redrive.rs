//! Reading dead letters from `KH_DLQ` and putting them back on ingress ("redrive"): the
//! `DeadLetters` API, which the console and the CLI's `dlq replay` call, so every redrive is
//! done, deduplicated and audited by the registry under its own identity.

use async_nats::jetstream::{self, consumer};
use kakehashi_proto::subjects::STREAM_DLQ;
use kakehashi_proto::v1::DeadLetter;
use prost::Message as _;
use std::time::Duration;

/// Why dead letters could not be read or redriven.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// JetStream refused or failed a call.
    #[error("KH_DLQ: {0}")]
    Nats(String),
    /// No message at that sequence (expired, or never there).
    #[error("KH_DLQ #{0}: no such dead letter")]
    NotFound(u64),
    /// The message is not a `DeadLetter`.
    #[error("KH_DLQ #{seq} is not a DeadLetter: {source}")]
    Decode {
        /// Stream sequence.
        seq: u64,
        /// Cause.
        #[source]
        source: prost::DecodeError,
    },
}

/// A dead letter with its place in the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    /// KH_DLQ sequence.
    pub seq: u64,
    /// The record.
    pub letter: DeadLetter,
}

/// `kh.dlq.<source>.<type>` with `*` / `>` for an empty source / type.
pub fn filter(source: &str, event_type: &str) -> String {
    format!(
        "kh.dlq.{}.{}",
        if source.is_empty() { "*" } else { source },
        if event_type.is_empty() { ">" } else { event_type }
    )
}

/// Reads dead letters on `filter` from `start`, oldest first, handing each to `each` until it
/// returns false or `max` messages were read; returns whether `max` stopped the read. Messages
/// that are not dead letters are skipped (logged).
pub async fn scan(
    js: &jetstream::Context,
    filter: &str,
    start: consumer::DeliverPolicy,
    max: usize,
    mut each: impl FnMut(Stored) -> bool,
) -> Result<bool, RedriveError> {
    // Nothing pending on the filter: the server sends nothing, so a short idle ends the scan.
    let idle = Duration::from_millis(500);
    kakehashi_runtime::streams::read_each(js, STREAM_DLQ, filter, start, max, idle, |seq, payload| {
        match DeadLetter::decode(payload) {
            Ok(letter) => each(Stored { seq, letter }),
            Err(e) => {
                tracing::warn!(seq, error = %e, "KH_DLQ message is not a DeadLetter");
                true
            }
        }
    })
    .await
    .map_err(RedriveError::Nats)
}

/// Every dead letter on `filter`, oldest first (at most `max`).
pub async fn read_all(
    js: &jetstream::Context,
    filter: &str,
    max: usize,
) -> Result<Vec<Stored>, RedriveError> {
    let mut out = Vec::new();
    scan(js, filter, consumer::DeliverPolicy::All, max, |s| {
        out.push(s);
        true
    })
    .await?;
    Ok(out)
}

/// The dead letter at `seq`.
pub async fn get(js: &jetstream::Context, seq: u64) -> Result<Stored, RedriveError> {
    let stream = js.get_stream(STREAM_DLQ).await.map_err(|e| RedriveError::Nats(e.to_string()))?;
    let m = stream.get_raw_message(seq).await.map_err(|e| {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
        match e.kind() {
            Kind::NoMessageFound => RedriveError::NotFound(seq),
            Kind::JetStream(j) if j.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND => {
                RedriveError::NotFound(seq)
            }
            _ => RedriveError::Nats(format!("#{seq}: {e}")),
        }
    })?;
    let letter =
        DeadLetter::decode(m.payload.as_ref()).map_err(|source| RedriveError::Decode { seq, source })?;
    Ok(Stored { seq, letter })
}

/// Whether a letter can go back to ingress: only rejections at ingress can (a
/// `delivery_exhausted` letter was validated and delivered to other readers already).
pub fn is_redrivable(letter: &DeadLetter) -> bool {
    letter.original_subject.starts_with("kh.in.")
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Published back to its ingress subject.
    Published,
    /// Already redriven before (the stream deduplicated it).
    Duplicate,
    /// Not redrivable (why).
    Skipped(&'static str),
}

/// Publishes the letter's raw bytes back to its ingress subject. A redrive id per dead letter
/// (`replay-dlq-<seq>`) makes a second redrive of the same letter a no-op, while the event's
/// own id (already seen by ingress) would swallow the first.
pub async fn redrive(js: &jetstream::Context, s: &Stored) -> Result<Redriven, RedriveError> {
    if !is_redrivable(&s.letter) {
        return Ok(Redriven::Skipped(
            "only ingress rejections are redriven (this one was already validated and delivered to others)",
        ));
    }
    let publish = jetstream::message::PublishMessage::build()
        .payload(s.letter.raw.clone().into())
        .message_id(format!("replay-dlq-{}", s.seq));
    let ack = js
        .send_publish(s.letter.original_subject.clone(), publish)
        .await
        .map_err(|e| RedriveError::Nats(e.to_string()))?
        .await
        .map_err(|e| RedriveError::Nats(e.to_string()))?;
    Ok(if ack.duplicate { Redriven::Duplicate } else { Redriven::Published })
}
