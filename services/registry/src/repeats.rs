//! Which deliveries a department may have seen already, so that every possible repeat is marked
//! (`attempt > 1`) even when NATS forgot it delivered them: consumer ack state is written in
//! the background, so a nats-server crash can lose the acks and delivery counts of the last
//! moment, and a consumer reset (at every Subscribe open, for order) restarts the counts.
//!
//! Each subscription keeps a high-water mark in `KH_CONFIG` (`delivered.<consumer>`): no event
//! above it has ever been handed to the department. The mark is raised *before* an event above
//! it is sent, by a step ahead (`STEP` stream sequences), so it costs one small write per step,
//! not per event. After a crash, events up to one step past the last one really delivered are
//! marked as possible repeats although they were not sent: over-marking, never under-marking.
//! A stream that ends normally lowers the mark back to what it really delivered, unless another
//! stream has raised it since.

use async_nats::jetstream::kv;

/// How far ahead of the event being sent the mark is raised, in `KH_EVENTS` sequences: the
/// most events a crash can leave marked without having been sent.
pub const STEP: u64 = 256;

/// The repeat marks of one Subscribe stream.
pub struct RepeatMarks {
    kv: kv::Store,
    key: String,
    /// Events up to here may have been delivered before this stream opened.
    seen_before: u64,
    /// Highest sequence this stream has delivered.
    seen_here: u64,
    /// The mark as last written.
    mark: u64,
}

impl RepeatMarks {
    /// Reads the subscription's mark.
    pub async fn open(kv: kv::Store, consumer_name: &str) -> Result<Self, String> {
        let key = format!("delivered.{consumer_name}");
        let mark = read(&kv, &key).await?.map(|(v, _)| v).unwrap_or(0);
        Ok(Self { kv, key, seen_before: mark, seen_here: 0, mark })
    }

    /// Before sending the event at `seq`: whether the department may have seen it already.
    /// Raises the stored mark first when `seq` is above it; an error means the event must not
    /// be sent yet (it would be unmarkable after a crash).
    pub async fn before_delivery(&mut self, seq: u64) -> Result<bool, String> {
        let repeat = seq <= self.seen_before || seq <= self.seen_here;
        if seq > self.mark {
            self.raise(seq.saturating_add(STEP)).await?;
        }
        self.seen_here = self.seen_here.max(seq);
        Ok(repeat)
    }

    /// When the stream ends normally: brings the mark down to what was really delivered, if no
    /// other stream has moved it since (a failure leaves it high, which only over-marks).
    pub async fn release(&mut self) {
        let delivered = self.seen_before.max(self.seen_here);
        if delivered >= self.mark {
            return;
        }
        if let Ok(Some((current, revision))) = read(&self.kv, &self.key).await {
            if current == self.mark
                && self.kv.update(&self.key, delivered.to_string().into(), revision).await.is_ok()
            {
                self.mark = delivered;
            }
        }
    }

    /// Stores `target` unless another stream stored a higher mark (compare-and-set). Only a
    /// lost race is tried again; any other failure (no leader, timeout) is returned as it is.
    async fn raise(&mut self, target: u64) -> Result<(), String> {
        for _ in 0..16 {
            match read(&self.kv, &self.key).await? {
                Some((current, _)) if current >= target => {
                    self.mark = current;
                    return Ok(());
                }
                Some((_, revision)) => {
                    match within(self.kv.update(&self.key, target.to_string().into(), revision))
                        .await
                        .map_err(|e| format!("{}: {e}", self.key))?
                    {
                        Ok(_) => {
                            self.mark = target;
                            return Ok(());
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                        Err(e) => return Err(format!("{}: {e}", self.key)),
                    }
                }
                None => match within(self.kv.create(&self.key, target.to_string().into()))
                    .await
                    .map_err(|e| format!("{}: {e}", self.key))?
                {
                    Ok(_) => {
                        self.mark = target;
                        return Ok(());
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("{}: {e}", self.key)),
                },
            }
        }
        Err(format!("{}: too many concurrent updates", self.key))
    }
}

/// The mark and its revision, read from the bucket's stream leader: a KV get is a direct get
/// that any replica may answer, and a replica still catching up (a node just restarted)
/// answers with an old mark, which would leave repeats unmarked at `open` and make every
/// compare-and-set of `raise` fail.
async fn read(kv: &kv::Store, key: &str) -> Result<Option<(u64, u64)>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", kv.prefix);
    match within(kv.stream.get_last_raw_message_by_subject(&subject))
        .await
        .map_err(|e| format!("{key}: {e}"))?
    {
        Ok(m) => {
            let removed = m.headers.get(KV_OPERATION).is_some_and(|op| op.as_str() != "PUT");
            if removed {
                return Ok(None);
            }
            let v = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            Ok(Some((v, m.sequence)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// How long one mark read or write may take. Shorter than the JetStream request timeout (5 s):
/// while the bucket has no leader every call fails only at its timeout, and a delivery held
/// for its mark should notice the new leader within a second of its election.
const MARK_CALL: std::time::Duration = std::time::Duration::from_secs(1);

/// `call`, unless it takes longer than [`MARK_CALL`].
async fn within<T>(call: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(MARK_CALL, call).await.map_err(|_| format!("no answer within {MARK_CALL:?}"))
}

/// Header in which the KV layer marks a delete or purge (`DEL`, `PURGE`; absent or `PUT` for a
/// value).
const KV_OPERATION: &str = "KV-Operation";
