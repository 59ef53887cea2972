//! `Flows`: where did an event go? Answered from the audit trail in `KH_AUDIT`.

use async_nats::jetstream::{self, consumer};
use kakehashi_proto::audit::AuditRecord;
use kakehashi_proto::identity::Identities;
use kakehashi_proto::subjects;
use kakehashi_proto::v1::flows_server::Flows;
use kakehashi_proto::v1::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The Flows service.
#[derive(Clone)]
pub struct FlowsService {
    js: jetstream::Context,
    identities: Identities,
    /// Most audit records one FindEvents scan reads.
    max_scan: usize,
}

impl FlowsService {
    /// New service; tracing is for administrators (operators) when credentials are enforced.
    pub fn new(js: jetstream::Context, identities: Identities, max_scan: usize) -> Self {
        Self { js, identities, max_scan }
    }
}

fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Reads audit records on `filter`, from `start`, at most `max` of them.
pub async fn read_audit(
    js: &jetstream::Context,
    filter: &str,
    start: consumer::DeliverPolicy,
    max: usize,
) -> Result<(Vec<(u64, AuditRecord)>, bool), Status> {
    let mut out = Vec::new();
    let truncated = kakehashi_proto::streams::read_each(
        js,
        subjects::STREAM_AUDIT,
        filter,
        start,
        max,
        Duration::from_millis(500),
        |seq, payload| match serde_json::from_slice::<AuditRecord>(payload) {
            Ok(r) => out.push((seq, r)),
            Err(e) => tracing::warn!(seq, error = %e, "unreadable audit record"),
        },
    )
    .await
    .map_err(Status::unavailable)?;
    kakehashi_proto::audit::drop_repeats(&mut out);
    Ok((out, truncated))
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
        self.identities.require_admin(&request)?;
        let event_id = request.into_inner().event_id;
        if !kakehashi_proto::ids::is_valid_event_id(&event_id) {
            return Err(Status::invalid_argument("event_id must be a UUID or ULID"));
        }
        let (mut records, _) =
            read_audit(&self.js, &subjects::audit(&event_id), consumer::DeliverPolicy::All, self.max_scan)
                .await?;
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
        self.identities.require_admin(&request)?;
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
        for (_, rec) in records {
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
            .filter_map(|id| events.remove(&id))
            .filter(|e| {
                (r.source.is_empty() || e.source == r.source) && (r.r#type.is_empty() || e.r#type == r.r#type)
            })
            .take(limit)
            .collect();
        Ok(Response::new(FindEventsResponse { events: matching, truncated }))
    }
}
