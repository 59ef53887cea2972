//! `Flows`: where did an event go? Answered from the audit trail in `KH_AUDIT`.

use crate::trace_index::{LookupError, TraceIndex};
use async_nats::jetstream::{self, consumer, stream::RawMessageErrorKind};
use kakehashi_proto::subjects;
use kakehashi_proto::v1::flows_server::Flows;
use kakehashi_proto::v1::*;
use kakehashi_runtime::audit::AuditRecord;
use kakehashi_runtime::identity::{Identities, Scope};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The Flows service.
#[derive(Clone)]
pub struct FlowsService {
    js: jetstream::Context,
    identities: Identities,
    /// Which audit records hold an event's hops.
    index: TraceIndex,
    /// Most audit records one FindEvents scan reads.
    max_scan: usize,
}

impl FlowsService {
    /// New service. Administrators see every hop; a department only the hops that concern it
    /// (it published the event, or read it), as X-Road lets each member query its own
    /// monitoring data.
    pub fn new(js: jetstream::Context, identities: Identities, index: TraceIndex, max_scan: usize) -> Self {
        Self { js, identities, index, max_scan }
    }

    /// Every hop of `event_id`: the records the index names, read by sequence, unpacked and
    /// kept to that event's hops.
    async fn hops_of(&self, event_id: &str) -> Result<Vec<(u64, AuditRecord)>, Status> {
        let stream = self
            .js
            .get_stream(subjects::STREAM_AUDIT)
            .await
            .map_err(|e| Status::unavailable(format!("{}: {e}", subjects::STREAM_AUDIT)))?;
        // Everything stored before the question is in the answer.
        let target = stream.cached_info().state.last_sequence;
        let seqs = self.index.records_of(event_id, target).await.map_err(|e| match e {
            LookupError::Behind { .. } => Status::unavailable(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        let mut out = Vec::new();
        for seq in seqs.into_iter().take(self.max_scan) {
            // From the stream's leader: direct gets need `allow_direct`, which streams created
            // by earlier versions do not have (creating never changes an existing stream).
            let message = match stream.get_raw_message(seq).await {
                Ok(m) => m,
                // Expired (or deleted) since it was indexed: nothing of it to show.
                Err(e) if is_gone(e.kind()) => continue,
                Err(e) => return Err(Status::unavailable(format!("audit record {seq}: {e}"))),
            };
            match AuditRecord::from_stored(&message.payload) {
                Ok(r) => {
                    out.extend(r.into_hops().into_iter().filter(|h| h.event_id == event_id).map(|h| (seq, h)))
                }
                Err(e) => tracing::warn!(seq, error = %e, "unreadable audit record"),
            }
        }
        kakehashi_runtime::audit::drop_repeats(&mut out);
        Ok(out)
    }
}

/// Whether a stream answered that the message asked for is not there.
fn is_gone(kind: RawMessageErrorKind) -> bool {
    match kind {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(e) => e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND,
        _ => false,
    }
}

fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Reads audit records on `filter`, from `start`, at most `max` of them, a batch record
/// unpacked into one record per hop ([`AuditRecord::into_hops`]).
pub async fn read_audit(
    js: &jetstream::Context,
    filter: &str,
    start: consumer::DeliverPolicy,
    max: usize,
) -> Result<(Vec<(u64, AuditRecord)>, bool), Status> {
    let mut out = Vec::new();
    let truncated = kakehashi_runtime::streams::read_each(
        js,
        subjects::STREAM_AUDIT,
        filter,
        start,
        max,
        Duration::from_millis(500),
        |seq, payload| {
            match AuditRecord::from_stored(payload) {
                Ok(r) => out.extend(r.into_hops().into_iter().map(|h| (seq, h))),
                Err(e) => tracing::warn!(seq, error = %e, "unreadable audit record"),
            }
            true
        },
    )
    .await
    .map_err(Status::unavailable)?;
    kakehashi_runtime::audit::drop_repeats(&mut out);
    Ok((out, truncated))
}

/// Whether a hop concerns the caller: every hop for administrators, else the hops naming its
/// department (as publisher, or as reader).
fn concerns(scope: &Scope, r: &AuditRecord) -> bool {
    match scope {
        Scope::All => true,
        Scope::Department(d) => r.department == *d,
    }
}

fn to_hop(r: AuditRecord) -> Hop {
    Hop {
        hop: r.hop,
        actor: r.actor,
        time: Some(timestamp(r.time_us)),
        outcome: r.outcome,
        detail: r.detail,
        trace_id: r.trace_id,
        department: r.department,
        subscription: r.subscription,
        schema_version: r.schema_version,
        r#type: r.event_type,
        chain_seq: r.seq,
    }
}

#[tonic::async_trait]
impl Flows for FlowsService {
    async fn trace_event(
        &self,
        request: Request<TraceEventRequest>,
    ) -> Result<Response<TraceEventResponse>, Status> {
        let scope = self.identities.scope(&request)?;
        let event_id = request.into_inner().event_id;
        if !kakehashi_proto::ids::is_valid_event_id(&event_id) {
            return Err(Status::invalid_argument("event_id must be a UUID or ULID"));
        }
        let mut records = self.hops_of(&event_id).await?;
        // Hops of other departments are left out; an event with none of the caller's hops is
        // answered like an unknown one, so its existence is not revealed either.
        records.retain(|(_, r)| concerns(&scope, r));
        if records.is_empty() {
            return Err(Status::not_found(format!("no audit records for event {event_id}")));
        }
        records.sort_by_key(|(seq, r)| (r.time_us, *seq));
        let hops = records.into_iter().map(|(_, r)| to_hop(r)).collect();
        Ok(Response::new(TraceEventResponse { event_id, hops }))
    }

    async fn find_events(
        &self,
        request: Request<FindEventsRequest>,
    ) -> Result<Response<FindEventsResponse>, Status> {
        let scope = self.identities.scope(&request)?;
        let r = request.into_inner();
        let since = r.since.ok_or_else(|| Status::invalid_argument("since is required"))?;
        let start = time::OffsetDateTime::from_unix_timestamp(since.seconds)
            .map_err(|_| Status::invalid_argument("since is out of range"))?;
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let (records, truncated) = read_audit(
            &self.js,
            subjects::AUDIT_ALL,
            consumer::DeliverPolicy::ByStartTime { start_time: start },
            self.max_scan,
        )
        .await?;
        // Writers append independently (the adapter may record "published" after the validator
        // recorded its verdict), so time, not stream order, says which hop came last.
        let mut records = records;
        records.sort_by_key(|(seq, r)| (r.time_us, *seq));
        // Group by event, in order of first appearance; the publisher's department is the
        // department of the first hop (published or validated).
        let mut order: Vec<String> = Vec::new();
        let mut events: BTreeMap<String, FoundEvent> = BTreeMap::new();
        let mut seen_by_caller: std::collections::BTreeSet<String> = Default::default();
        for (_, rec) in records {
            // The first hop names the publisher whoever asks; later hops count only when they
            // concern the caller (a reader does not learn where other readers got to).
            if events.contains_key(&rec.event_id) && !concerns(&scope, &rec) {
                continue;
            }
            if concerns(&scope, &rec) {
                seen_by_caller.insert(rec.event_id.clone());
            }
            let found = events.entry(rec.event_id.clone()).or_insert_with(|| {
                order.push(rec.event_id.clone());
                FoundEvent {
                    event_id: rec.event_id.clone(),
                    source: rec.department.clone(),
                    r#type: rec.event_type.clone(),
                    first_seen: Some(timestamp(rec.time_us)),
                    ..Default::default()
                }
            });
            found.last_hop = rec.hop;
            found.last_outcome = rec.outcome;
        }
        let matching: Vec<FoundEvent> = order
            .into_iter()
            .filter(|id| seen_by_caller.contains(id))
            .filter_map(|id| events.remove(&id))
            .filter(|e| {
                (r.source.is_empty() || e.source == r.source) && (r.r#type.is_empty() || e.r#type == r.r#type)
            })
            .take(limit)
            .collect();
        Ok(Response::new(FindEventsResponse { events: matching, truncated }))
    }

    async fn summarize_flows(
        &self,
        request: Request<SummarizeFlowsRequest>,
    ) -> Result<Response<SummarizeFlowsResponse>, Status> {
        let scope = self.identities.scope(&request)?;
        let since =
            request.into_inner().since.ok_or_else(|| Status::invalid_argument("since is required"))?;
        let start = time::OffsetDateTime::from_unix_timestamp(since.seconds)
            .map_err(|_| Status::invalid_argument("since is out of range"))?;
        let (mut records, truncated) = read_audit(
            &self.js,
            subjects::AUDIT_ALL,
            consumer::DeliverPolicy::ByStartTime { start_time: start },
            self.max_scan,
        )
        .await?;
        records.sort_by_key(|(seq, r)| (r.time_us, *seq));
        let edges = summarize(records.into_iter().map(|(_, r)| r), &scope);
        Ok(Response::new(SummarizeFlowsResponse { edges, truncated }))
    }
}

/// Distinct events per (publisher, type, reader) edge, from records in time order; the edges
/// the caller publishes or reads on.
pub fn summarize(records: impl IntoIterator<Item = AuditRecord>, scope: &Scope) -> Vec<FlowEdge> {
    use std::collections::{BTreeSet, HashMap};
    #[derive(Default)]
    struct Sets {
        events: BTreeSet<String>,
        errors: BTreeSet<String>,
        acked: BTreeSet<String>,
    }
    // The publisher of each event: the department of its first hop.
    let mut source_of: HashMap<String, (String, String)> = HashMap::new();
    let mut edges: BTreeMap<(String, String, String), Sets> = BTreeMap::new();
    for r in records {
        let (source, event_type) = source_of
            .entry(r.event_id.clone())
            .or_insert_with(|| (r.department.clone(), r.event_type.clone()))
            .clone();
        let reader = match r.hop.as_str() {
            "published" | "validated" | "dead_lettered" | "redriven" => String::new(),
            _ if r.subscription.is_empty() => continue,
            _ => r.department.clone(),
        };
        let e = edges.entry((source, event_type, reader)).or_default();
        match r.hop.as_str() {
            "published" | "validated" | "delivered" => {
                e.events.insert(r.event_id);
            }
            "dead_lettered" | "nacked" | "delivery_exhausted" | "withheld" => {
                e.events.insert(r.event_id.clone());
                e.errors.insert(r.event_id);
            }
            "acked" => {
                e.events.insert(r.event_id.clone());
                e.acked.insert(r.event_id);
            }
            _ => {}
        }
    }
    edges
        .into_iter()
        .filter(|((source, _, reader), _)| match scope {
            Scope::All => true,
            Scope::Department(d) => source == d || reader == d,
        })
        .filter(|(_, s)| !s.events.is_empty())
        .map(|((source, r#type, reader), s)| FlowEdge {
            source,
            r#type,
            reader,
            events: s.events.len() as u64,
            errors: s.errors.len() as u64,
            acked: s.acked.len() as u64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, hop: &str, dept: &str, sub: &str) -> AuditRecord {
        AuditRecord {
            event_id: id.into(),
            hop: hop.into(),
            department: dept.into(),
            subscription: sub.into(),
            event_type: "t.x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn edges_count_distinct_events_and_are_scoped() {
        let records = vec![
            rec("1", "published", "a", ""),
            rec("1", "validated", "a", ""),
            rec("1", "delivered", "b", "sub_b_s"),
            rec("1", "acked", "b", "sub_b_s"),
            rec("2", "published", "a", ""),
            rec("2", "dead_lettered", "a", ""),
            rec("3", "validated", "c", ""),
            rec("3", "delivered", "b", "sub_b_s"),
            rec("3", "nacked", "b", "sub_b_s"),
        ];
        let all = summarize(records.clone(), &Scope::All);
        let find = |edges: &[FlowEdge], s: &str, r: &str| {
            edges.iter().find(|e| e.source == s && e.reader == r).map(|e| (e.events, e.errors, e.acked))
        };
        assert_eq!(find(&all, "a", ""), Some((2, 1, 0)));
        assert_eq!(find(&all, "a", "b"), Some((1, 0, 1)));
        assert_eq!(find(&all, "c", "b"), Some((1, 1, 0)));
        let for_a = summarize(records.clone(), &Scope::Department("a".into()));
        assert_eq!(for_a.len(), 2, "a sees its own edges only");
        let for_c = summarize(records, &Scope::Department("c".into()));
        assert!(for_c.iter().all(|e| e.source == "c"), "c does not see a's edges");
    }
}
