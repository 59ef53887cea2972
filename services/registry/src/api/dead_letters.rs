//! `DeadLetters`: dead letters listed and redriven through the API, scoped by the caller — a
//! department sees (and may redrive) the letters of events it published, administrators all.
//! The raw bytes leave the registry with My Numbers overwritten: the letters keep what was
//! received (for a byte-exact redrive), people looking at them need not see identifiers.

use crate::pii::{PiiPaths, Step};
use crate::redrive::{self, RedriveError, Redriven, Stored};
use crate::store::SchemaStore;
use async_nats::jetstream::{self, consumer};
use kakehashi_proto::v1::dead_letters_server::DeadLetters;
use kakehashi_proto::v1::*;
use kakehashi_runtime::audit::{AuditRecord, AuditWriter};
use kakehashi_runtime::identity::{Identities, Scope};
use prost::Message as _;
use tonic::{Request, Response, Status};

/// Letters per page when the request says 0, and the most a page may hold.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Most letters one redrive request names.
const MAX_REDRIVE: usize = 1000;
/// Annotated values shorter than this are not searched for in the raw bytes (they would mask
/// unrelated bytes); the 12-digit rule still covers them.
const MIN_MASKED_VALUE: usize = 4;
/// Bytes of a list response besides its letters: `next_page_token` (a `u64` in decimal) and
/// `truncated`, each with its field key and length.
const RESPONSE_OVERHEAD: usize = 24;

/// The DeadLetters service.
#[derive(Clone)]
pub struct DeadLettersService {
    js: jetstream::Context,
    identities: Identities,
    store: SchemaStore,
    audit: AuditWriter,
    /// Most KH_DLQ messages one list request reads.
    max_scan: usize,
    /// Most bytes of one list response (`limits.max_list_response_bytes`).
    max_response_bytes: usize,
}

impl DeadLettersService {
    /// New service; `max_scan` bounds the messages one list request reads. A list response
    /// holds at most the default `limits.max_list_response_bytes` until
    /// [`Self::with_max_response_bytes`] sets it.
    pub fn new(
        js: jetstream::Context,
        identities: Identities,
        store: SchemaStore,
        audit: AuditWriter,
        max_scan: usize,
    ) -> Self {
        let max_response_bytes = crate::config::Limits::default().max_list_response_bytes;
        Self { js, identities, store, audit, max_scan, max_response_bytes }
    }

    /// The most bytes one list response holds (`limits.max_list_response_bytes`): a page ends
    /// before the letter that would exceed it (see [`PageBudget`]).
    pub fn with_max_response_bytes(mut self, max_response_bytes: usize) -> Self {
        self.max_response_bytes = max_response_bytes;
        self
    }

    /// The letter as the API shows it: raw bytes and texts masked, the envelope decoded.
    fn present(&self, s: Stored) -> StoredDeadLetter {
        let redrivable = redrive::is_redrivable(&s.letter);
        let mut letter = s.letter;
        let masked = mask_raw(&self.store, &mut letter.raw);
        letter.message = kakehashi_proto::ident::mask_my_number_like_str(&letter.message);
        for v in &mut letter.violations {
            v.message = kakehashi_proto::ident::mask_my_number_like_str(&v.message);
        }
        let event = Event::decode(letter.raw.as_slice()).ok();
        StoredDeadLetter { id: s.seq, letter: Some(letter), raw_masked: masked, event, redrivable }
    }
}

/// The bytes a letter adds to a list response (the repeated field's key and length included).
fn listed_len(letter: &StoredDeadLetter) -> usize {
    let len = letter.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// A list page filled within its byte budget (`limits.max_list_response_bytes`): letters are
/// taken while the response stays within it, and the page ends before the first that would
/// not fit — its `next_page_token` then starts there. The first letter is always taken, however
/// large, so paging always moves on (a client's decoding limit must allow one letter alone:
/// about twice `topology.max_message_bytes`, the raw bytes and the event decoded from them).
#[derive(Debug)]
struct PageBudget {
    max_bytes: usize,
    used: usize,
    taken: usize,
}

impl PageBudget {
    fn new(max_bytes: usize) -> Self {
        Self { max_bytes, used: RESPONSE_OVERHEAD, taken: 0 }
    }

    /// Takes a letter adding `len` bytes to the response if it fits (the first always does);
    /// whether it was taken.
    fn take(&mut self, len: usize) -> bool {
        let used = self.used.saturating_add(len);
        if self.taken > 0 && used > self.max_bytes {
            return false;
        }
        self.used = used;
        self.taken += 1;
        true
    }
}

/// Whether a department may see this letter.
fn visible(scope: &Scope, letter: &DeadLetter) -> bool {
    match scope {
        Scope::All => true,
        Scope::Department(d) => letter.source == *d,
    }
}

fn status(e: RedriveError) -> Status {
    match e {
        RedriveError::NotFound(seq) => Status::not_found(format!("no dead letter #{seq}")),
        other => Status::unavailable(other.to_string()),
    }
}

/// Seconds of 0001-01-01T00:00:00Z, the earliest a protobuf `Timestamp` may hold (its range
/// is well inside what microseconds in an `i64` can hold).
const MIN_SECONDS: i64 = -62_135_596_800;
/// Seconds of 9999-12-31T23:59:59Z, the latest a protobuf `Timestamp` may hold.
const MAX_SECONDS: i64 = 253_402_300_799;

/// A timestamp in microseconds since the epoch; `None` when it is not a valid `Timestamp`
/// (seconds out of range, nanos outside `0..1_000_000_000`).
fn timestamp_micros(t: &prost_types::Timestamp) -> Option<i64> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds.checked_mul(1_000_000)?.checked_add(i64::from(t.nanos) / 1000)
}

/// A request's optional timestamp `field` in microseconds, refused naming the field when it is
/// not a valid `Timestamp` (callers send anything; none of it may overflow).
fn request_micros(t: &Option<prost_types::Timestamp>, field: &str) -> Result<Option<i64>, Status> {
    let Some(t) = t else { return Ok(None) };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!("{field}.nanos must be in 0..1000000000")));
    }
    timestamp_micros(t).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{field}.seconds is out of range (0001-01-01 to 9999-12-31: {MIN_SECONDS}..={MAX_SECONDS})"
        ))
    })
}

/// Overwrites My Numbers in raw dead-letter bytes: values of fields the event's schema
/// annotates as one (found in the decoded payload, then overwritten wherever they occur in the
/// bytes), then anything else that looks like one. Lengths are kept. Returns whether anything
/// was overwritten.
pub fn mask_raw(store: &SchemaStore, raw: &mut [u8]) -> bool {
    let mut changed = false;
    if let Ok(event) = Event::decode(&*raw) {
        let subject = if event.schema.is_empty() { event.r#type.clone() } else { event.schema.clone() };
        let paths = store.pii_paths(&subject, event.schema_version).ok();
        let data = serde_json::from_slice::<serde_json::Value>(&event.data).ok();
        if let (Some(paths), Some(data)) = (paths, data) {
            let mut values = Vec::new();
            collect(&data, &paths, &mut values);
            for v in values.iter().filter(|v| v.len() >= MIN_MASKED_VALUE) {
                changed |= overwrite_all(raw, v.as_bytes());
            }
        }
    }
    changed | (kakehashi_proto::ident::mask_my_number_like(raw) > 0)
}

/// The strings found at `paths` in `data`.
fn collect(data: &serde_json::Value, paths: &PiiPaths, out: &mut Vec<String>) {
    fn at(node: &serde_json::Value, path: &[Step], out: &mut Vec<String>) {
        match path.split_first() {
            None => {
                if let Some(s) = node.as_str() {
                    out.push(s.to_string());
                }
            }
            Some((Step::Key(k), rest)) => {
                if let Some(child) = node.get(k.as_str()) {
                    at(child, rest, out);
                }
            }
            Some((Step::AnyItem, rest)) => {
                for item in node.as_array().into_iter().flatten() {
                    at(item, rest, out);
                }
            }
            Some((Step::AnyKey, rest)) => {
                for value in node.as_object().into_iter().flat_map(|o| o.values()) {
                    at(value, rest, out);
                }
            }
        }
    }
    for p in paths {
        at(data, p, out);
    }
}

/// Overwrites every occurrence of `needle` in `hay` with `*`; whether there was one.
fn overwrite_all(hay: &mut [u8], needle: &[u8]) -> bool {
    if needle.is_empty() || needle.len() > hay.len() {
        return false;
    }
    let mut found = false;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            hay[i..i + needle.len()].fill(b'*');
            found = true;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

#[tonic::async_trait]
impl DeadLetters for DeadLettersService {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let scope = self.identities.scope(&request)?;
        let r = request.into_inner();
        // A department's source is itself; naming another is refused rather than answered
        // with an empty page, so a mistake is not mistaken for "no dead letters".
        let source = match &scope {
            Scope::All => r.source.clone(),
            Scope::Department(d) if r.source.is_empty() || r.source == *d => d.clone(),
            Scope::Department(d) => {
                return Err(Status::permission_denied(format!("{d} may see only its own dead letters")))
            }
        };
        if !source.is_empty() && !kakehashi_proto::ident::is_valid_department_id(&source) {
            return Err(Status::invalid_argument("source must be a department id"));
        }
        if !r.r#type.is_empty() && !kakehashi_proto::ident::is_valid_event_type(&r.r#type) {
            return Err(Status::invalid_argument("type must be an event type"));
        }
        let (since, until) = (request_micros(&r.since, "since")?, request_micros(&r.until, "until")?);
        let wanted = |l: &DeadLetter| {
            // A stored letter's time is ours; a damaged one sorts as the epoch, as a missing one.
            let at = l.dead_lettered_at.as_ref().and_then(timestamp_micros).unwrap_or(0);
            (r.reason.is_empty() || l.reason == r.reason)
                && (source.is_empty() || l.source == source)
                && (r.r#type.is_empty() || l.r#type == r.r#type)
                && (r.event_id.is_empty() || l.event_id == r.event_id)
                && since.is_none_or(|s| at >= s)
                && until.is_none_or(|u| at < u)
                && visible(&scope, l)
        };
        if !r.ids.is_empty() {
            // Paged by the response budget too: the token is the position in `ids` of the
            // first one not answered yet (ids may repeat, so not the id itself).
            let ids = &r.ids[..r.ids.len().min(MAX_PAGE)];
            let resume = match r.page_token.as_str() {
                "" => 0,
                t => t.parse::<usize>().ok().filter(|i| *i < ids.len()).ok_or_else(|| {
                    Status::invalid_argument("bad page_token (with ids, a position in ids)")
                })?,
            };
            let mut out = Vec::new();
            let mut budget = PageBudget::new(self.max_response_bytes);
            let mut next = String::new();
            for (i, seq) in ids.iter().enumerate().skip(resume) {
                match redrive::get(&self.js, *seq).await {
                    // Another department's letter answers like a missing one: no oracle.
                    Ok(s) if wanted(&s.letter) => {
                        let shown = self.present(s);
                        if !budget.take(listed_len(&shown)) {
                            next = i.to_string();
                            break;
                        }
                        out.push(shown);
                    }
                    Ok(_) | Err(RedriveError::NotFound(_)) | Err(RedriveError::Decode { .. }) => {}
                    Err(e) => return Err(status(e)),
                }
            }
            return Ok(Response::new(ListDeadLettersResponse {
                dead_letters: out,
                next_page_token: next,
                truncated: false,
            }));
        }
        let page = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let start = if !r.page_token.is_empty() {
            let seq: u64 = r.page_token.parse().map_err(|_| Status::invalid_argument("bad page_token"))?;
            consumer::DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) }
        } else if let Some(s) = &r.since {
            let start_time = time::OffsetDateTime::from_unix_timestamp(s.seconds)
                .map_err(|_| Status::invalid_argument("since is out of range"))?;
            consumer::DeliverPolicy::ByStartTime { start_time }
        } else {
            consumer::DeliverPolicy::All
        };
        let mut dead_letters: Vec<StoredDeadLetter> = Vec::new();
        let mut budget = PageBudget::new(self.max_response_bytes);
        let mut next = String::new();
        let truncated =
            redrive::scan(&self.js, &redrive::filter(&source, &r.r#type), start, self.max_scan, |s| {
                if !wanted(&s.letter) {
                    return true;
                }
                if dead_letters.len() == page {
                    // One more match than the page holds: the next page starts there.
                    next = s.seq.to_string();
                    return false;
                }
                let seq = s.seq;
                let shown = self.present(s);
                if !budget.take(listed_len(&shown)) {
                    // Over the response budget: the next page starts with this letter.
                    next = seq.to_string();
                    return false;
                }
                dead_letters.push(shown);
                true
            })
            .await
            .map_err(status)?;
        Ok(Response::new(ListDeadLettersResponse { dead_letters, next_page_token: next, truncated }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<RedriveDeadLettersRequest>,
    ) -> Result<Response<RedriveDeadLettersResponse>, Status> {
        let scope = self.identities.scope(&request)?;
        // Who asked, for the audit record: the authenticated department, and the delegate it
        // came through (`mhlw via kakehashi-console`); nobody is authenticated in development
        // mode, and the record says so.
        let caller = match self.identities.actor(&request)? {
            Some(caller) => caller.to_string(),
            None => "an unauthenticated caller (development mode)".to_string(),
        };
        let ids = request.into_inner().ids;
        if ids.len() > MAX_REDRIVE {
            return Err(Status::invalid_argument(format!("at most {MAX_REDRIVE} ids per request")));
        }
        let mut outcomes = Vec::new();
        for seq in ids {
            let stored = match redrive::get(&self.js, seq).await {
                Ok(s) if visible(&scope, &s.letter) => s,
                Ok(_) | Err(RedriveError::NotFound(_)) | Err(RedriveError::Decode { .. }) => {
                    outcomes.push(RedriveOutcome {
                        id: seq,
                        outcome: "not_found".into(),
                        detail: format!("no dead letter #{seq} visible to the caller"),
                        ..Default::default()
                    });
                    continue;
                }
                Err(e) => return Err(status(e)),
            };
            let event_id = stored.letter.event_id.clone();
            let (outcome, detail) = match redrive::redrive(&self.js, &stored).await.map_err(status)? {
                Redriven::Published => {
                    ("redriven", format!("published again to {}", stored.letter.original_subject))
                }
                Redriven::Duplicate => ("duplicate", "already redriven (deduplicated)".to_string()),
                Redriven::Skipped(why) => ("skipped", why.to_string()),
            };
            if outcome == "redriven" {
                tracing::info!(caller = %caller, seq, event_id = %event_id, "dead letter redriven");
                if kakehashi_proto::ids::is_valid_event_id(&event_id) {
                    self.audit
                        .record(AuditRecord {
                            event_id: event_id.clone(),
                            hop: "redriven".into(),
                            outcome: "ok".into(),
                            detail: format!("by {caller} from KH_DLQ #{seq}"),
                            department: stored.letter.source.clone(),
                            event_type: stored.letter.r#type.clone(),
                            time_us: kakehashi_runtime::audit::now_us(),
                            ..Default::default()
                        })
                        .await;
                }
            }
            outcomes.push(RedriveOutcome { id: seq, event_id, outcome: outcome.into(), detail });
        }
        Ok(Response::new(RedriveDeadLettersResponse { outcomes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timestamps_are_checked_not_overflowed() {
        let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let refused = request_micros(&ts(i64::MAX, 999_999_999), "until").expect_err("i64::MAX seconds");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with("until.seconds"), "{}", refused.message());
        let refused = request_micros(&ts(i64::MIN, 0), "since").expect_err("i64::MIN seconds");
        assert!(refused.message().starts_with("since.seconds"), "{}", refused.message());
        for nanos in [-1, 1_000_000_000, i32::MAX] {
            let refused = request_micros(&ts(0, nanos), "until").expect_err("nanos out of range");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().starts_with("until.nanos"), "{}", refused.message());
        }
        assert_eq!(request_micros(&None, "until").expect("absent"), None);
        assert_eq!(request_micros(&ts(1, 999_999_999), "until").expect("valid"), Some(1_999_999));
        assert_eq!(
            request_micros(&ts(MAX_SECONDS, 999_999_999), "until").expect("last valid"),
            Some(MAX_SECONDS * 1_000_000 + 999_999)
        );
        assert_eq!(timestamp_micros(&prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }), None);
    }

    #[test]
    fn a_page_ends_before_the_letter_over_the_response_budget() {
        let take_all = |max, sizes: &[usize]| {
            let mut b = PageBudget::new(max);
            sizes.iter().take_while(|len| b.take(**len)).count()
        };
        const MIB: usize = 1024 * 1024;
        // Four letters of about 1 MiB (raw bytes and the decoded event: ~2 MiB listed each)
        // fit two to a 4 MiB page (less the margin); the third starts the next page.
        let budget = 4 * MIB - 64 * 1024;
        assert_eq!(take_all(budget, &[2 * MIB - 100_000; 4]), 2);
        assert_eq!(take_all(budget, &[MIB; 4]), 3);
        assert_eq!(take_all(4 * MIB, &[MIB; 4]), 3, "the response's own bytes count too");
        assert_eq!(take_all(budget, &[1000; 10]), 10);
        // A letter alone over the budget still makes a page of one, so paging moves on.
        assert_eq!(take_all(budget, &[5 * MIB, 10]), 1);
        assert_eq!(take_all(0, &[1, 1]), 1);
        // Exactly at the budget fits.
        assert_eq!(take_all(100 + RESPONSE_OVERHEAD, &[60, 40, 1]), 2);
        // A listed letter's bytes are those it adds to the encoded response.
        let letter = StoredDeadLetter {
            id: 7,
            letter: Some(DeadLetter { raw: vec![b'x'; 300], ..Default::default() }),
            ..Default::default()
        };
        let response = ListDeadLettersResponse {
            dead_letters: vec![letter.clone(), letter.clone()],
            next_page_token: u64::MAX.to_string(),
            truncated: true,
        };
        assert_eq!(response.encoded_len(), 2 * listed_len(&letter) + RESPONSE_OVERHEAD);
    }

    #[test]
    fn overwrites_every_occurrence_keeping_length() {
        let mut b = b"abc secret-1 def secret-1".to_vec();
        assert!(overwrite_all(&mut b, b"secret-1"));
        assert_eq!(b, b"abc ******** def ********".to_vec());
        assert!(!overwrite_all(&mut b, b"absent"));
    }

    #[test]
    fn collects_annotated_strings() {
        let data = serde_json::json!({"person": {"my_number": "1234-5678"}, "kids": [{"my_number": "x1"}, {"my_number": 3}]});
        let paths = vec![
            vec![Step::Key("person".into()), Step::Key("my_number".into())],
            vec![Step::Key("kids".into()), Step::AnyItem, Step::Key("my_number".into())],
        ];
        let mut out = Vec::new();
        collect(&data, &paths, &mut out);
        assert_eq!(out, vec!["1234-5678".to_string(), "x1".to_string()]);
    }
}
