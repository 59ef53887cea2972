//! Durable subscriptions: a record in `KH_CONFIG` (`sub.<department>.<name>`) plus a durable pull
//! consumer `sub_<department>_<name>` on `KH_EVENTS` filtered on `kh.ev.<pattern>`. The consumer
//! is what keeps a department's position while it is offline.

use crate::policy::Policies;
use crate::watched::WatchedMap;
use async_nats::jetstream::{self, consumer, kv};
use kakehashi_proto::ident::is_valid_department_id;
use kakehashi_proto::subjects::{self, is_valid_pattern};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A stored subscription.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Reading department.
    pub department: String,
    /// Name, unique per department.
    pub name: String,
    /// Event type pattern.
    pub type_pattern: String,
    /// Ack wait in seconds.
    pub ack_wait_secs: u64,
    /// Deliveries before `delivery_exhausted`.
    pub max_deliveries: u32,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Start from all retained events rather than only new ones.
    pub deliver_all: bool,
    /// Form of protobuf-typed payloads for this reader ("" = as published); records written
    /// before the option existed have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_type: String,
}

impl SubscriptionRecord {
    /// The JetStream durable consumer name (`_` never occurs in ids, so this is unambiguous).
    pub fn consumer_name(&self) -> String {
        consumer_name(&self.department, &self.name)
    }
}

/// Consumer name of a subscription.
pub fn consumer_name(department: &str, name: &str) -> String {
    format!("sub_{department}_{name}")
}

/// Subscription failures.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// Bad names or pattern.
    #[error("invalid subscription: {0}")]
    Invalid(String),
    /// Policy does not let the department read the pattern.
    #[error("department {department} may not read {pattern}")]
    NotPermitted {
        /// Department.
        department: String,
        /// Pattern.
        pattern: String,
    },
    /// Already exists with other settings.
    #[error("subscription {0} already exists with different settings")]
    Conflict(String),
    /// No such subscription.
    #[error("subscription {0} not found")]
    NotFound(String),
    /// NATS failure.
    #[error("subscription storage: {0}")]
    Storage(String),
}

/// Subscription management.
#[derive(Clone)]
pub struct Subscriptions {
    js: jetstream::Context,
    kv: kv::Store,
    map: WatchedMap<SubscriptionRecord>,
    policies: Policies,
}

impl Subscriptions {
    /// The JetStream context the consumers live in (for their statistics).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The `KH_CONFIG` bucket the subscriptions live in (delivery keeps its repeat marks there).
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// Opens the subscription mirror.
    pub async fn open(
        js: jetstream::Context,
        kv: kv::Store,
        policies: Policies,
    ) -> Result<Self, SubscriptionError> {
        let map = WatchedMap::open(&kv, "sub").await.map_err(SubscriptionError::Storage)?;
        Ok(Self { js, kv, map, policies })
    }

    /// Creates a subscription (idempotent when the settings are the same).
    pub async fn create(&self, mut rec: SubscriptionRecord) -> Result<SubscriptionRecord, SubscriptionError> {
        if !is_valid_department_id(&rec.department) {
            return Err(SubscriptionError::Invalid(format!("bad department id {:?}", rec.department)));
        }
        if !is_valid_department_id(&rec.name) {
            return Err(SubscriptionError::Invalid(format!("bad name {:?} (use [a-z0-9-]+)", rec.name)));
        }
        if !is_valid_pattern(&rec.type_pattern) {
            return Err(SubscriptionError::Invalid(format!("bad type pattern {:?}", rec.type_pattern)));
        }
        if !self.policies.may_read_pattern(&rec.department, &rec.type_pattern) {
            return Err(SubscriptionError::NotPermitted {
                department: rec.department.clone(),
                pattern: rec.type_pattern.clone(),
            });
        }
        let key = format!("{}.{}", rec.department, rec.name);
        if let Some(existing) = self.map.get(&key) {
            rec.created_at = existing.created_at.clone();
            if *existing != rec {
                return Err(SubscriptionError::Conflict(key));
            }
            return Ok(rec);
        }
        let stream = self
            .js
            .get_stream(subjects::STREAM_EVENTS)
            .await
            .map_err(|e| SubscriptionError::Storage(e.to_string()))?;
        stream
            .get_or_create_consumer(
                &rec.consumer_name(),
                consumer::pull::Config {
                    durable_name: Some(rec.consumer_name()),
                    filter_subject: subjects::events_filter(&rec.type_pattern),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(rec.ack_wait_secs),
                    // Delivery counts attempts itself and dead-letters past max_deliveries.
                    max_deliver: -1,
                    max_ack_pending: 20_000,
                    deliver_policy: if rec.deliver_all {
                        consumer::DeliverPolicy::All
                    } else {
                        consumer::DeliverPolicy::New
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| SubscriptionError::Storage(format!("consumer: {e}")))?;
        let bytes = serde_json::to_vec(&rec).map_err(|e| SubscriptionError::Storage(e.to_string()))?;
        self.kv
            .put(format!("sub.{key}"), bytes.into())
            .await
            .map_err(|e| SubscriptionError::Storage(e.to_string()))?;
        self.map.insert(&key, rec.clone());
        Ok(rec)
    }

    /// One subscription.
    pub fn get(&self, department: &str, name: &str) -> Option<SubscriptionRecord> {
        self.map.get(&format!("{department}.{name}")).map(|r| (*r).clone())
    }

    /// Subscriptions of a department ("" = all).
    pub fn list(&self, department: &str) -> Vec<SubscriptionRecord> {
        self.map
            .values()
            .iter()
            .filter(|r| department.is_empty() || r.department == department)
            .map(|r| (**r).clone())
            .collect()
    }

    /// Deletes a subscription and its consumer.
    pub async fn delete(&self, department: &str, name: &str) -> Result<(), SubscriptionError> {
        let key = format!("{department}.{name}");
        if self.map.get(&key).is_none() {
            return Err(SubscriptionError::NotFound(key));
        }
        if let Ok(stream) = self.js.get_stream(subjects::STREAM_EVENTS).await {
            // A missing consumer is fine: deletion is what was asked.
            let _ = stream.delete_consumer(&consumer_name(department, name)).await;
        }
        self.kv.delete(format!("sub.{key}")).await.map_err(|e| SubscriptionError::Storage(e.to_string()))?;
        // A subscription created again under this name starts with no deliveries behind it.
        let _ = self.kv.delete(format!("delivered.{}", consumer_name(department, name))).await;
        self.map.remove(&key);
        Ok(())
    }
}
