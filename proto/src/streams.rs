//! Reading a stream for operators (dead letters, audit records) without touching its
//! consumers: an ordered, ephemeral consumer from a start point, until the stream is exhausted.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::time::Duration;

/// Messages read: (stream sequence, payload), and whether `max` stopped the read early.
pub type Read = (Vec<(u64, bytes::Bytes)>, bool);

/// Reads the messages of `stream` on `filter` from `start`, at most `max`. Stops when the
/// server says nothing more is pending, or when nothing arrives for `idle` (an empty filter).
pub async fn read(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: consumer::DeliverPolicy,
    max: usize,
    idle: Duration,
) -> Result<Read, String> {
    let mut handle = js.get_stream(stream).await.map_err(|e| format!("{stream}: {e}"))?;
    let info = handle.info().await.map_err(|e| format!("{stream}: {e}"))?;
    if info.state.messages == 0 {
        return Ok((Vec::new(), false));
    }
    let ordered = handle
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{stream} consumer: {e}"))?;
    let mut messages = ordered.messages().await.map_err(|e| format!("{stream} read: {e}"))?;
    let mut out = Vec::new();
    loop {
        if out.len() >= max {
            return Ok((out, true));
        }
        let Ok(Some(Ok(m))) = tokio::time::timeout(idle, messages.next()).await else { break };
        let (seq, pending) = m.info().map(|i| (i.stream_sequence, i.pending)).unwrap_or((0, 0));
        out.push((seq, m.payload.clone()));
        if pending == 0 {
            break;
        }
    }
    Ok((out, false))
}
