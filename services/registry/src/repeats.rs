//! Which deliveries a department may have seen already, so that every possible repeat is marked
//! (`attempt > 1`) even when NATS forgot it delivered them: consumer ack state is written in
//! the background, so a nats-server crash can lose the acks and delivery counts of the last
//! moment, and a consumer reset (at every Subscribe open, for order) restarts the counts.
//!
//! Each subscription keeps a high-water mark in `KH_CONFIG` (`delivered.<consumer>`): no event
//! above it has ever been handed to the department. The mark is raised *before* an event above
//! it is sent, by a step ahead (`STEP` stream sequences), so it costs one small write per step,
//! not per event. After a crash, events up to one and a half steps past the last one really
//! delivered (a step written ahead in the background, below) are marked as possible repeats
//! although they were not sent: over-marking, never under-marking.
//! A stream that ends normally lowers the mark back to what it really delivered, unless another
//! stream opened or raised it since: each stream claims the mark when it opens (the value names
//! its owner, `<mark> <owner>`), a raise keeps the owner, and only the owner whose write is
//! still the last may lower it. Two streams of one subscription on two registries (a client
//! that reopened elsewhere while its old stream was still alive) would otherwise let the older
//! one lower the mark under events the newer one delivered without raising it. Half a step before the mark is reached, the next step is written
//! in the background, so the event that reaches it seldom waits for the write (two round trips
//! to `KH_CONFIG`, once every `STEP` events of a backlog).

use async_nats::jetstream::kv;

/// How far ahead of the event being sent the mark is raised, in `KH_EVENTS` sequences; a crash
/// can leave up to one and a half of it marked without having been sent.
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
    /// This stream's name in the stored value.
    owner: String,
    /// The revision of this stream's own last write, while it is the stored one's (as far as
    /// this stream knows); none once another stream moved the mark.
    written: Option<u64>,
    /// The next step, being written in the background: the mark it stored, and its revision
    /// when this stream wrote it.
    ahead: Option<tokio::task::JoinHandle<Result<Raised, String>>>,
}

impl RepeatMarks {
    /// Reads the subscription's mark and claims it for this stream.
    pub async fn open(kv: kv::Store, consumer_name: &str) -> Result<Self, String> {
        let key = format!("delivered.{consumer_name}");
        let owner = uuid::Uuid::now_v7().simple().to_string();
        for _ in 0..16 {
            let (mark, previous) = match read(&kv, &key).await? {
                Some(stored) => (stored.mark, Some(stored.revision)),
                None => (0, None),
            };
            let value = format!("{mark} {owner}").into();
            let claimed = match previous {
                Some(revision) => within(kv.update(&key, value, revision))
                    .await?
                    .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
                None => within(kv.create(&key, value))
                    .await?
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
            };
            match claimed {
                Ok(revision) => {
                    let written = Some(revision);
                    return Ok(Self {
                        kv,
                        key,
                        seen_before: mark,
                        seen_here: 0,
                        mark,
                        owner,
                        written,
                        ahead: None,
                    });
                }
                // Another stream wrote in between: read again.
                Err((true, _)) => {}
                Err((false, e)) => return Err(format!("{key}: {e}")),
            }
        }
        Err(format!("{key}: too many concurrent updates"))
    }

    /// Before sending the event at `seq`: whether the department may have seen it already.
    /// Raises the stored mark first when `seq` is above it; an error means the event must not
    /// be sent yet (it would be unmarkable after a crash).
    pub async fn before_delivery(&mut self, seq: u64) -> Result<bool, String> {
        let repeat = seq <= self.seen_before || seq <= self.seen_here;
        // Nothing above the stored mark goes out: a step still being written is waited for.
        self.settle_ahead(seq > self.mark).await;
        if seq > self.mark {
            let raised = raise(&self.kv, &self.key, seq.saturating_add(STEP)).await?;
            self.took(raised);
        } else if self.ahead.is_none() && seq.saturating_add(STEP / 2) > self.mark {
            let (kv, key, target) = (self.kv.clone(), self.key.clone(), self.mark.saturating_add(STEP));
            self.ahead = Some(tokio::spawn(async move { raise(&kv, &key, target).await }));
        }
        self.seen_here = self.seen_here.max(seq);
        Ok(repeat)
    }

    /// Takes in the step written in the background once it is done, or waits for it when
    /// `needed`. A failed one is forgotten: the event that reaches the mark raises it itself
    /// and holds delivery until that succeeds.
    async fn settle_ahead(&mut self, needed: bool) {
        if !needed && !self.ahead.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        if let Some(ahead) = self.ahead.take() {
            if let Ok(Ok(raised)) = ahead.await {
                self.took(raised);
            }
        }
    }

    /// Takes in what a raise stored: the mark, and whether this stream's write is the last.
    fn took(&mut self, (mark, revision): Raised) {
        self.mark = self.mark.max(mark);
        self.written = revision;
    }

    /// When the stream ends normally: brings the mark down to what was really delivered, if
    /// this stream still owns it and no other stream has written it since (a failure, or
    /// another stream, leaves it high, which only over-marks).
    pub async fn release(&mut self) {
        self.settle_ahead(true).await;
        let delivered = self.seen_before.max(self.seen_here);
        let Some(written) = self.written else { return };
        if delivered >= self.mark {
            return;
        }
        if let Ok(Some(stored)) = read(&self.kv, &self.key).await {
            let value = format!("{delivered} {}", self.owner).into();
            if stored.owner == self.owner
                && stored.revision == written
                && self.kv.update(&self.key, value, stored.revision).await.is_ok()
            {
                self.mark = delivered;
            }
        }
    }
}

/// Stores `target` as `key`'s mark, keeping its owner, unless another stream stored a higher
/// one (compare-and-set): the mark stored now, and the revision when this call wrote it. Only a
/// lost race is tried again; any other failure (no leader, timeout) is returned as it is.
async fn raise(kv: &kv::Store, key: &str, target: u64) -> Result<Raised, String> {
    for _ in 0..16 {
        match read(kv, key).await? {
            Some(stored) if stored.mark >= target => return Ok((stored.mark, None)),
            Some(stored) => {
                let value = format!("{target} {}", stored.owner).into();
                match within(kv.update(key, value, stored.revision))
                    .await
                    .map_err(|e| format!("{key}: {e}"))?
                {
                    Ok(revision) => return Ok((target, Some(revision))),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(format!("{key}: {e}")),
                }
            }
            None => match within(kv.create(key, target.to_string().into()))
                .await
                .map_err(|e| format!("{key}: {e}"))?
            {
                // Written without an owner: nobody lowers a mark of a stream that did not open.
                Ok(_) => return Ok((target, None)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{key}: {e}")),
            },
        }
    }
    Err(format!("{key}: too many concurrent updates"))
}

/// What a raise stored: the mark, and its revision when that raise wrote it.
type Raised = (u64, Option<u64>);

/// A stored mark: `<mark> <owner>` (a mark alone, as older builds wrote it, has no owner).
struct Stored {
    mark: u64,
    owner: String,
    revision: u64,
}

/// The mark and its revision, read from the bucket's stream leader: a KV get is a direct get
/// that any replica may answer, and a replica still catching up (a node just restarted)
/// answers with an old mark, which would leave repeats unmarked at `open` and make every
/// compare-and-set of `raise` fail.
async fn read(kv: &kv::Store, key: &str) -> Result<Option<Stored>, String> {
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
            let text = std::str::from_utf8(&m.payload).unwrap_or_default();
            let (mark, owner) = text.split_once(' ').unwrap_or((text, ""));
            Ok(Some(Stored {
                mark: mark.parse().unwrap_or(0),
                owner: owner.to_string(),
                revision: m.sequence,
            }))
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
