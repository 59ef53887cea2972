//! `Subscriptions` and `Policies` over gRPC.

use crate::policy::{Policies, PolicyRecord};
use crate::store::now_rfc3339;
use crate::subscriptions::{SubscriptionRecord, Subscriptions};
use kakehashi_proto::v1::policies_server::Policies as PoliciesApi;
use kakehashi_proto::v1::subscriptions_server::Subscriptions as SubscriptionsApi;
use kakehashi_proto::v1::*;
use kakehashi_runtime::identity::{Identities, Scope};
use tonic::{Request, Response, Status};

/// The Subscriptions service.
#[derive(Clone)]
pub struct SubscriptionsService {
    subs: Subscriptions,
    identities: Identities,
    /// Default and most ack wait, seconds.
    ack_wait_secs: (u64, u64),
    default_max_deliveries: u32,
}

impl SubscriptionsService {
    /// New service with the defaults for unset fields and the longest ack wait allowed
    /// (`ack_wait_secs`: default, most); a department manages its own subscriptions, an
    /// administrator anyone's.
    pub fn new(
        subs: Subscriptions,
        identities: Identities,
        ack_wait_secs: (u64, u64),
        default_max_deliveries: u32,
    ) -> Self {
        Self { subs, identities, ack_wait_secs, default_max_deliveries }
    }
}

fn to_proto(r: &SubscriptionRecord) -> Subscription {
    Subscription {
        department: r.department.clone(),
        name: r.name.clone(),
        type_pattern: r.type_pattern.clone(),
        ack_wait: Some(prost_types::Duration { seconds: r.ack_wait_secs as i64, nanos: 0 }),
        max_deliveries: r.max_deliveries,
        created_at: time::OffsetDateTime::parse(
            &r.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .map(|t| prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: 0 }),
        deliver_all: r.deliver_all,
        content_type: r.content_type.clone(),
    }
}

#[tonic::async_trait]
impl SubscriptionsApi for SubscriptionsService {
    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let s = r.subscription.ok_or_else(|| Status::invalid_argument("subscription is required"))?;
        self.identities.acting_for((&metadata, &extensions), &s.department)?;
        let (default_ack_wait, max_ack_wait) = self.ack_wait_secs;
        let ack_wait_secs = match s.ack_wait {
            Some(d) if d.seconds > 0 => d.seconds.unsigned_abs(),
            _ => default_ack_wait,
        };
        // Ours to refuse: NATS takes the wait in nanoseconds, and a huge one came back as an
        // unclear storage error (or a wrapped value).
        if ack_wait_secs > max_ack_wait {
            return Err(Status::invalid_argument(format!(
                "ack_wait of {ack_wait_secs} s is over the {max_ack_wait} s allowed (delivery.max_ack_wait_secs)"
            )));
        }
        let rec = SubscriptionRecord {
            department: s.department,
            name: s.name,
            type_pattern: s.type_pattern,
            ack_wait_secs,
            max_deliveries: if s.max_deliveries == 0 {
                self.default_max_deliveries
            } else {
                s.max_deliveries
            },
            created_at: now_rfc3339(),
            deliver_all: s.deliver_all,
            content_type: crate::protobuf::reader_content_type(&s.content_type)?.to_string(),
        };
        Ok(Response::new(to_proto(&self.subs.create(rec).await?)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        let department = &request.get_ref().department;
        if department.is_empty() {
            self.identities.require_admin(&request)?;
        } else {
            self.identities.acting_for(&request, department)?;
        }
        let subscriptions = self.subs.list(department).iter().map(to_proto).collect();
        Ok(Response::new(ListSubscriptionsResponse { subscriptions }))
    }

    async fn get_subscription_stats(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<SubscriptionStatsResponse>, Status> {
        let department = &request.get_ref().department;
        // Scoped like ListSubscriptions; a department asking for "all" gets its own.
        let department = match self.identities.scope(&request)? {
            Scope::All => department.clone(),
            Scope::Department(d) if department.is_empty() || *department == d => d,
            Scope::Department(d) => {
                return Err(Status::permission_denied(format!(
                    "{d} may not read {department}'s subscriptions"
                )))
            }
        };
        let js = self.subs.jetstream();
        let stream = js
            .get_stream(kakehashi_proto::subjects::STREAM_EVENTS)
            .await
            .map_err(|e| Status::unavailable(format!("KH_EVENTS: {e}")))?;
        let mut stats = Vec::new();
        for rec in self.subs.list(&department) {
            let mut s = SubscriptionStats {
                department: rec.department.clone(),
                name: rec.name.clone(),
                type_pattern: rec.type_pattern.clone(),
                ..Default::default()
            };
            // A consumer being recreated just now has no info: the row shows zeros.
            if let Ok(info) = stream.consumer_info(&rec.consumer_name()).await {
                s.pending = info.num_pending;
                s.unacked = info.num_ack_pending as u64;
                s.redelivered = info.num_redelivered as u64;
                s.delivered = info.delivered.consumer_sequence;
                s.waiting = info.num_waiting as u64;
                s.last_delivered = info.delivered.last_active.map(timestamp);
                s.last_acked = info.ack_floor.last_active.map(timestamp);
                if s.pending + s.unacked > 0 {
                    s.oldest_unacked_age = oldest_unacked_age(&stream, &info).await;
                }
            }
            stats.push(s);
        }
        Ok(Response::new(SubscriptionStatsResponse { stats }))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        self.identities.acting_for(&request, &request.get_ref().department)?;
        let r = request.into_inner();
        self.subs.delete(&r.department, &r.name).await?;
        Ok(Response::new(DeleteSubscriptionResponse {}))
    }
}

fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// How long the first event past the consumer's ack floor (the oldest one not acked) has been
/// in `KH_EVENTS`.
async fn oldest_unacked_age(
    stream: &async_nats::jetstream::stream::Stream,
    info: &async_nats::jetstream::consumer::Info,
) -> Option<prost_types::Duration> {
    let filter = match info.config.filter_subjects.first() {
        Some(f) => f.clone(),
        None if !info.config.filter_subject.is_empty() => info.config.filter_subject.clone(),
        None => kakehashi_proto::subjects::EVENTS_ALL.to_string(),
    };
    let next = info.ack_floor.stream_sequence + 1;
    let m = stream.raw_message_builder().sequence(next).next_by_subject(filter).send().await.ok()?;
    let age = (time::OffsetDateTime::now_utc() - m.time).max(time::Duration::ZERO);
    Some(prost_types::Duration { seconds: age.whole_seconds(), nanos: age.subsec_nanoseconds() })
}

/// The Policies service.
#[derive(Clone)]
pub struct PoliciesService {
    policies: Policies,
    identities: Identities,
}

impl PoliciesService {
    /// New service; only administrators change policies, a department lists the ones naming it.
    pub fn new(policies: Policies, identities: Identities) -> Self {
        Self { policies, identities }
    }
}

fn policy_to_proto(p: PolicyRecord) -> Policy {
    Policy {
        type_pattern: p.type_pattern,
        producers: p.producers,
        readers: p.readers,
        raw_pii_readers: p.raw_pii_readers,
    }
}

#[tonic::async_trait]
impl PoliciesApi for PoliciesService {
    async fn put_policy(&self, request: Request<Policy>) -> Result<Response<Policy>, Status> {
        self.identities.require_admin(&request)?;
        let p = request.into_inner();
        let stored = self
            .policies
            .put(PolicyRecord {
                type_pattern: p.type_pattern,
                producers: p.producers,
                readers: p.readers,
                raw_pii_readers: p.raw_pii_readers,
            })
            .await?;
        Ok(Response::new(policy_to_proto(stored)))
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        // Policies say who receives raw My Numbers: a department sees only the ones naming it.
        let scope = self.identities.scope(&request)?;
        let policies = self
            .policies
            .list()
            .into_iter()
            .filter(|p| match &scope {
                Scope::All => true,
                Scope::Department(d) => p.names(d),
            })
            .map(policy_to_proto)
            .collect();
        Ok(Response::new(ListPoliciesResponse { policies }))
    }

    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        if !self.identities.enforced() {
            return Ok(Response::new(WhoAmIResponse { department: String::new(), admin: true }));
        }
        let department = self.identities.department(&request, "")?;
        let admin = self.identities.scope(&request)? == Scope::All;
        Ok(Response::new(WhoAmIResponse { department, admin }))
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        self.identities.require_admin(&request)?;
        self.policies.delete(&request.into_inner().type_pattern).await?;
        Ok(Response::new(DeletePolicyResponse {}))
    }
}
