//! Reading a stream with JetStream's batch direct get (ADR-31) alone: no consumer and no other
//! JetStream API. The bus account exports exactly these requests to the operators' account, so
//! an operator reads dead letters, the audit trail and chain heads from outside the bus
//! account: the answers go back into its own account whatever reply subject it names, and it
//! has no consumer whose deliver subject could point into a stream (`docs/security.md`).

use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use std::time::Duration;

/// Messages asked for per request (the server answers at most 1,000 per batch).
const BATCH: usize = 256;

/// One stored message, as a direct get answers it.
#[derive(Debug)]
pub struct Stored<'a> {
    /// Its stream sequence.
    pub seq: u64,
    /// The subject it was stored on.
    pub subject: &'a str,
    /// Its headers as stored (plus the server's `Nats-*` ones).
    pub headers: Option<&'a HeaderMap>,
    /// Its payload.
    pub payload: &'a [u8],
}

/// Why a direct read failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectGetError {
    /// The request could not be sent or its inbox not subscribed.
    #[error("{stream}: {message}")]
    Connection {
        /// The stream read.
        stream: String,
        /// What failed.
        message: String,
    },
    /// No answer in time (no responder: the stream is missing, not exported to this identity,
    /// or does not allow direct gets).
    #[error("{stream}: no answer to a direct get within {timeout:?} (is the stream there, with allow_direct, and exported to this identity?)")]
    Timeout {
        /// The stream read.
        stream: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The server refused the request.
    #[error("{stream}: direct get refused: {status} {description}")]
    Refused {
        /// The stream read.
        stream: String,
        /// The status code.
        status: u16,
        /// The server's description.
        description: String,
    },
    /// An answer without the headers every stored message comes with.
    #[error("{stream}: a direct get answer without {header}")]
    Malformed {
        /// The stream read.
        stream: String,
        /// The header missing or unreadable.
        header: &'static str,
    },
}

/// Reads the messages of `stream` on `filter` (a subject, wildcards allowed) from stream
/// sequence `from`, handing each to `each` in stream order until it returns false, at most
/// `max`; returns whether `max` stopped the read early. `timeout` bounds each wait for an
/// answer.
pub async fn read_each(
    client: &Client,
    stream: &str,
    filter: &str,
    from: u64,
    max: usize,
    timeout: Duration,
    mut each: impl FnMut(Stored<'_>) -> bool,
) -> Result<bool, DirectGetError> {
    let connection = |e: &dyn std::fmt::Display| DirectGetError::Connection {
        stream: stream.to_string(),
        message: e.to_string(),
    };
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| connection(&e))?;
    let api = format!("$JS.API.DIRECT.GET.{stream}");
    let (mut next, mut read) = (from.max(1), 0usize);
    loop {
        let want = BATCH.min(max - read);
        if want == 0 {
            return Ok(true);
        }
        let request = serde_json::json!({"seq": next, "batch": want, "next_by_subj": filter});
        client
            .publish_with_reply(api.clone(), inbox.clone(), request.to_string().into())
            .await
            .map_err(|e| connection(&e))?;
        let asked_from = next;
        // One batch: its messages, then an end-of-batch status saying how many more match.
        let pending = loop {
            let message = match tokio::time::timeout(timeout, answers.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(connection(&"the connection closed")),
                Err(_) => return Err(DirectGetError::Timeout { stream: stream.to_string(), timeout }),
            };
            match message.status.map(|s| s.as_u16()) {
                // End of batch.
                Some(204) => break header_u64(stream, message.headers.as_ref(), "Nats-Num-Pending")?,
                // Nothing (more) on the filter from `next`.
                Some(404) => return Ok(false),
                Some(status) => {
                    return Err(DirectGetError::Refused {
                        stream: stream.to_string(),
                        status,
                        description: message.description.unwrap_or_default(),
                    })
                }
                None => {
                    let headers = message.headers.as_ref();
                    let seq = header_u64(stream, headers, "Nats-Sequence")?;
                    let subject = headers
                        .and_then(|h| h.get("Nats-Subject"))
                        .map(|v| v.as_str())
                        .ok_or_else(|| malformed(stream, "Nats-Subject"))?;
                    read += 1;
                    next = seq + 1;
                    if !each(Stored { seq, subject, headers, payload: &message.payload }) {
                        return Ok(false);
                    }
                }
            }
        };
        // No progress would ask for the same batch forever.
        if pending == 0 || next == asked_from {
            return Ok(false);
        }
    }
}

fn header_u64(stream: &str, headers: Option<&HeaderMap>, name: &'static str) -> Result<u64, DirectGetError> {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| malformed(stream, name))
}

fn malformed(stream: &str, header: &'static str) -> DirectGetError {
    DirectGetError::Malformed { stream: stream.to_string(), header }
}
