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
    let mut out = Vec::new();
    let truncated = read_each(js, stream, filter, start, max, idle, |seq, payload| {
        // Copied: a kept payload would hold on to the connection's read buffer.
        out.push((seq, bytes::Bytes::copy_from_slice(payload)));
        true
    })
    .await?;
    Ok((out, truncated))
}

/// Like [`read`], handing each message to `each` (stream sequence, payload) as it arrives
/// instead of keeping them all, until `each` returns false; returns whether `max` stopped the
/// read early.
pub async fn read_each(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: consumer::DeliverPolicy,
    max: usize,
    idle: Duration,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> Result<bool, String> {
    let mut handle = js.get_stream(stream).await.map_err(|e| format!("{stream}: {e}"))?;
    let info = handle.info().await.map_err(|e| format!("{stream}: {e}"))?;
    if info.state.messages == 0 {
        return Ok(false);
    }
    // Named, so that it can be deleted once read: left to expire, every read would hold a
    // consumer on the server for 30 s, and a burst of reads (traces) would reach the server's
    // consumer limit.
    let inbox = js.client().new_inbox();
    let name = format!("read-{}", inbox.rsplit('.').next().unwrap_or_default());
    let ordered = handle
        .create_consumer(consumer::pull::OrderedConfig {
            name: Some(name.clone()),
            filter_subject: filter.to_string(),
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{stream} consumer: {e}"))?;
    let mut messages = ordered.messages().await.map_err(|e| format!("{stream} read: {e}"))?;
    let mut read = 0;
    let mut truncated = false;
    loop {
        if read >= max {
            truncated = true;
            break;
        }
        let Ok(Some(Ok(m))) = tokio::time::timeout(idle, messages.next()).await else { break };
        let (seq, pending) = m.info().map(|i| (i.stream_sequence, i.pending)).unwrap_or((0, 0));
        read += 1;
        if !each(seq, &m.payload) || pending == 0 {
            break;
        }
    }
    drop(messages);
    // Best effort: one the client recreated after a gap is named `<name>_<n>` and expires.
    if let Err(e) = handle.delete_consumer(&name).await {
        tracing::debug!(error = %e, consumer = %name, "read consumer not deleted; it expires");
    }
    Ok(truncated)
}
