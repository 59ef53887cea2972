//! The JetStream streams and KV buckets of the bus, created idempotently by every process at
//! start, so any service can come up first on an empty server.

use async_nats::jetstream::{self, kv, stream};
use kakehashi_proto::subjects::{
    self, AUDIT_ALL, BUCKET_CONFIG, BUCKET_SCHEMAS, DLQ_ALL, EVENTS_ALL, INGRESS_STREAM, STREAM_AUDIT,
    STREAM_DLQ, STREAM_EVENTS, STREAM_INGRESS,
};
use serde::Deserialize;
use std::time::Duration;

/// Sizes and retention of the bus's streams; the same values must be used by every process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// Stream replicas: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// How long validated events are kept, so offline departments catch up.
    pub events_max_age_secs: u64,
    /// How long dead letters are kept.
    pub dlq_max_age_secs: u64,
    /// How long audit records are kept.
    pub audit_max_age_secs: u64,
    /// How often each process anchors its audit chain head in `KH_CONFIG`, in milliseconds:
    /// records newer than the last anchoring can be deleted undetected.
    pub audit_anchor_ms: u64,
    /// Audit records a process holds waiting to be written; when full, hops wait (no record
    /// is dropped).
    pub audit_queue: usize,
    /// Most hops one batch record of `KH_AUDIT` holds (hops queued together, or arriving within
    /// `audit_linger_ms` of the first, are written as one record). A batch is also closed before
    /// its JSON could reach half of `max_message_bytes`.
    pub audit_batch_hops: usize,
    /// How long the audit task waits for more hops to join a record once it holds one, in
    /// milliseconds (0: never waits). At a low rate every hop would otherwise be a record of
    /// its own, a JetStream publish and an index transaction in every registry; the wait delays
    /// only the trail, never an event.
    pub audit_linger_ms: u64,
    /// Dedup window of `Nats-Msg-Id`; must exceed the longest ack wait and publish retry span.
    pub dedup_window_secs: u64,
    /// Largest message any stream accepts, in bytes (envelope included); at most the NATS
    /// server's `max_payload` (checked at start). `KH_INGRESS` accepts [`DEAD_LETTER_ROOM`]
    /// less ([`TopologyConfig::ingress_max_message_bytes`]).
    pub max_message_bytes: i32,
    /// `KH_AUDIT` refuses message deletes and purges (JetStream `deny_delete`/`deny_purge`,
    /// which no later update can lift); records leave only by retention. Off only in tests
    /// that play an attacker with access to the server's disk.
    pub audit_append_only: bool,
    /// Partitions of `KH_INGRESS` (a stream subject transform by key bucket): one validator
    /// consumer each, spread over the registry instances. Changed only while `KH_INGRESS` is
    /// empty (`docs/operations.md`).
    pub ingress_partitions: u32,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age_secs: 7 * 24 * 3600,
            dlq_max_age_secs: 30 * 24 * 3600,
            audit_max_age_secs: 30 * 24 * 3600,
            audit_anchor_ms: 1000,
            audit_queue: 4096,
            audit_batch_hops: 256,
            audit_linger_ms: 5,
            dedup_window_secs: 2 * 3600,
            max_message_bytes: 1024 * 1024,
            audit_append_only: true,
            ingress_partitions: 6,
        }
    }
}

/// Bytes by which `KH_INGRESS`'s limit is under `max_message_bytes` (16 KiB): room for what a
/// dead letter carries around the raw bytes of the largest ingress message (reason, message,
/// subjects, ids, actor, timestamp, headers; `dead_letter::build_within` shortens the message
/// and leaves out field violations to stay within it), so that dead letter fits in `KH_DLQ`,
/// and for the CloudEvents headers of a valid event's `KH_EVENTS` message.
pub const DEAD_LETTER_ROOM: i32 = 16 * 1024;

impl TopologyConfig {
    /// Largest message `KH_INGRESS` accepts, headers included: `max_message_bytes` less
    /// [`DEAD_LETTER_ROOM`].
    pub fn ingress_max_message_bytes(&self) -> i32 {
        self.max_message_bytes.saturating_sub(DEAD_LETTER_ROOM)
    }

    /// Refuses limits that could not all hold: a stream limit over the server's `max_payload`
    /// (`server_max_payload`), or too small to leave room for a dead letter's envelope.
    pub fn check_limits(&self, server_max_payload: usize) -> Result<(), TopologyError> {
        let refuse = |m: String| Err(TopologyError::Limits(m));
        if self.max_message_bytes < 4 * DEAD_LETTER_ROOM {
            return refuse(format!(
                "topology.max_message_bytes = {} is under {}: KH_INGRESS takes {DEAD_LETTER_ROOM} bytes less, the room of a dead letter's envelope",
                self.max_message_bytes,
                4 * DEAD_LETTER_ROOM
            ));
        }
        if usize::try_from(self.max_message_bytes).map_or(true, |m| m > server_max_payload) {
            return refuse(format!(
                "topology.max_message_bytes = {} is over the NATS server's max_payload of {server_max_payload} bytes: a dead letter or event the streams accept could not be published (raise max_payload in the server configuration, as deploy/nats/*.conf do, or lower topology.max_message_bytes)",
                self.max_message_bytes
            ));
        }
        Ok(())
    }
}

/// The oldest nats-server the bus runs on: priority groups with pinned clients (2.11),
/// accounts with service imports for JetStream, fast batches (2.14: the validator's order per
/// record across a lost publish), consumer reset (2.14).
pub const MIN_SERVER_VERSION: (u32, u32) = (2, 14);

/// `(major, minor)` of a nats-server version string such as `2.15.1` or `v2.12.0-beta`.
pub fn parse_server_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuses a server older than [`MIN_SERVER_VERSION`] with a clear error, before anything is
/// created on it.
pub fn require_server(client: &async_nats::Client) -> Result<(), TopologyError> {
    let version = client.server_info().version;
    match parse_server_version(&version) {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(TopologyError::ServerTooOld { version }),
    }
}

/// Failure to create or open a stream or bucket.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The server is older than the bus needs.
    #[error("nats-server {version} is older than {}.{}, which Kakehashi needs (install the pinned server: bash deploy/scripts/ensure-tools.sh)", MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1)]
    ServerTooOld {
        /// What the server reported.
        version: String,
    },
    /// A stream could not be created or opened.
    #[error("stream {name}: {source}")]
    Stream {
        /// Stream name.
        name: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The size limits cannot all hold (one line naming the settings).
    #[error("{0}")]
    Limits(String),
    /// The configured partition count is out of range.
    #[error("topology.ingress_partitions = {0}: must be between 1 and {MAX_PARTITIONS}")]
    Partitions(u32),
    /// `KH_INGRESS` is partitioned otherwise and still holds messages: changing it now could
    /// reorder events of one key, so the process refuses to start.
    #[error("KH_INGRESS is partitioned as {current} and holds {messages} messages; refusing to repartition it to {wanted} partitions while it is not empty (stop the publishers, let the registries drain it with the old setting, then restart with the new one: docs/operations.md)")]
    Repartition {
        /// The stream's transform now.
        current: String,
        /// The configured count.
        wanted: u32,
        /// Messages waiting.
        messages: u64,
    },
    /// A KV bucket could not be created or opened.
    #[error("key-value bucket {name}: {source}")]
    Bucket {
        /// Bucket name.
        name: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Handles to the bus's KV buckets.
#[derive(Clone)]
pub struct Buckets {
    /// Schemas.
    pub schemas: kv::Store,
    /// Subscriptions and policies.
    pub config: kv::Store,
}

/// Creates (or opens) every stream and bucket of the bus, on a server recent enough.
pub async fn ensure(js: &jetstream::Context, cfg: &TopologyConfig) -> Result<Buckets, TopologyError> {
    // The server's version is known once connected; the first API call waits for that (a
    // client that retries its first connection returns before it).
    let account = js.query_account().await;
    // An old server may answer in a shape the client cannot read: name the version first.
    require_server(&js.client())?;
    account.map_err(|e| TopologyError::Stream { name: "(account)", source: Box::new(e) })?;
    cfg.check_limits(js.client().server_info().max_payload)?;
    let base = |name: &'static str, subject: &str, max_age: u64| stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        // nats-server refuses a dedup window longer than the retention.
        duplicate_window: Duration::from_secs(match max_age {
            0 => cfg.dedup_window_secs,
            age => cfg.dedup_window_secs.min(age),
        }),
        max_message_size: cfg.max_message_bytes,
        max_age: Duration::from_secs(max_age),
        ..Default::default()
    };
    if !(1..=MAX_PARTITIONS).contains(&cfg.ingress_partitions) {
        return Err(TopologyError::Partitions(cfg.ingress_partitions));
    }
    let ingress = ingress_config(cfg, base(STREAM_INGRESS, INGRESS_STREAM, 0));
    // Direct gets are how the operator's identity, outside the bus account, reads dead letters
    // and the trail (`direct_get`): it may use no other JetStream API there.
    let audit = stream::Config {
        deny_delete: cfg.audit_append_only,
        deny_purge: cfg.audit_append_only,
        allow_direct: true,
        ..base(STREAM_AUDIT, AUDIT_ALL, cfg.audit_max_age_secs)
    };
    let dlq = stream::Config { allow_direct: true, ..base(STREAM_DLQ, DLQ_ALL, cfg.dlq_max_age_secs) };
    // The validator publishes the events of a record that repeats within a batch as one fast
    // batch that refuses gaps (its order guarantee).
    let events = stream::Config {
        allow_batch_publish: true,
        ..base(STREAM_EVENTS, EVENTS_ALL, cfg.events_max_age_secs)
    };
    let configs = [ingress, events, dlq, audit];
    let names = [STREAM_INGRESS, STREAM_EVENTS, STREAM_DLQ, STREAM_AUDIT];
    for (name, config) in names.into_iter().zip(configs) {
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| TopologyError::Stream { name, source: Box::new(e) })?;
        // The settings of a stream that existed already (the services may not update one).
        let existing = &stream.cached_info().config;
        if name == STREAM_EVENTS && !existing.allow_batch_publish {
            // Created before the validator published fast batches: it still works, a batch
            // with a repeated record one confirmed publish at a time, much slower.
            tracing::warn!(
                stream = name,
                "stream does not allow fast batches (nats-server 2.14+), so the registry's validator publishes a batch in which a record repeats one event at a time: as the NATS admin identity, update it with allow_batched (docs/operations.md)"
            );
        }
        if (name == STREAM_AUDIT || name == STREAM_DLQ) && !existing.allow_direct {
            // Created before operators read by direct get.
            tracing::warn!(
                stream = name,
                "stream does not allow direct gets, so `kakehashi dlq` and `kakehashi audit verify` cannot read it: as the NATS admin identity, update it with allow_direct (docs/operations.md)"
            );
        }
        if name == STREAM_AUDIT && cfg.audit_append_only && (!existing.deny_delete || !existing.deny_purge) {
            // Created before this setting existed; only an administrator may change it
            // (services may not update KH_AUDIT), and the change is one-way.
            tracing::warn!(
                stream = name,
                "KH_AUDIT accepts message deletes: as the NATS admin identity, update it with deny_delete and deny_purge (docs/security.md)"
            );
        }
    }
    let schemas = bucket(js, BUCKET_SCHEMAS, cfg.replicas).await?;
    let config = bucket(js, BUCKET_CONFIG, cfg.replicas).await?;
    Ok(Buckets { schemas, config })
}

/// Most ingress partitions (each is a consumer and a validator task per instance).
pub const MAX_PARTITIONS: u32 = 256;

/// `KH_INGRESS`: a work queue whose messages are stored under `kh.ip.<partition>.…`, smaller
/// than the other streams' by [`DEAD_LETTER_ROOM`].
fn ingress_config(cfg: &TopologyConfig, base: stream::Config) -> stream::Config {
    let (source, destination) = subjects::ingress_transform(cfg.ingress_partitions);
    stream::Config {
        retention: stream::RetentionPolicy::WorkQueue,
        subject_transform: Some(stream::SubjectTransform { source, destination }),
        max_message_size: cfg.ingress_max_message_bytes(),
        ..base
    }
}

/// Brings `KH_INGRESS` to the configured partitioning and size limit (the registry calls this
/// after [`ensure`]): unchanged when it already is, the size updated whenever it differs, the
/// partitioning updated while the stream is empty and refused with
/// [`TopologyError::Repartition`] otherwise, since messages of one key would then sit in two
/// partitions and could be validated out of order. Then checks that a dead letter of the
/// largest message `KH_INGRESS` accepts fits in `KH_DLQ` ([`check_dead_letter_room`]).
pub async fn ensure_ingress_partitions(
    js: &jetstream::Context,
    cfg: &TopologyConfig,
) -> Result<(), TopologyError> {
    let name = STREAM_INGRESS;
    let err = |e: &dyn std::fmt::Display| TopologyError::Stream { name, source: e.to_string().into() };
    let mut stream = js.get_stream(name).await.map_err(|e| err(&e))?;
    let info = stream.info().await.map_err(|e| err(&e))?.clone();
    let wanted = ingress_config(cfg, info.config.clone());
    let same = |a: &Option<stream::SubjectTransform>, b: &Option<stream::SubjectTransform>| match (a, b) {
        (Some(a), Some(b)) => a.source == b.source && a.destination == b.destination,
        (None, None) => true,
        _ => false,
    };
    let subjects_wanted = vec![INGRESS_STREAM.to_string()];
    let partitioned = same(&info.config.subject_transform, &wanted.subject_transform)
        && info.config.subjects == subjects_wanted;
    let sized = info.config.max_message_size == wanted.max_message_size;
    if !partitioned {
        let current = match &info.config.subject_transform {
            Some(t) => format!("{} -> {}", t.source, t.destination),
            None => "unpartitioned".to_string(),
        };
        if info.state.messages > 0 {
            return Err(TopologyError::Repartition {
                current,
                wanted: cfg.ingress_partitions,
                messages: info.state.messages,
            });
        }
        js.update_stream(stream::Config { subjects: subjects_wanted, ..wanted })
            .await
            .map_err(|e| err(&e))?;
        tracing::warn!(from = %current, partitions = cfg.ingress_partitions, "KH_INGRESS was empty: repartitioned");
    } else if !sized {
        // A size limit reorders nothing: changed whatever the stream holds. Messages stored
        // under a larger limit before stay; should one's dead letter not fit, the validator
        // says so and keeps it (docs/operations.md).
        let (from, to) = (info.config.max_message_size, wanted.max_message_size);
        js.update_stream(wanted).await.map_err(|e| err(&e))?;
        tracing::warn!(
            from,
            to,
            messages = info.state.messages,
            "KH_INGRESS max_message_size set to topology.max_message_bytes less the dead-letter room"
        );
    }
    check_dead_letter_room(js).await
}

/// The largest message stream `name` stores, headers included, as it is now: its
/// `max_message_size` as configured, and that capped at the server's `max_payload` (the
/// server's alone when the stream has no limit of its own, -1).
pub async fn message_limit(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<(i32, usize), TopologyError> {
    let err = |e: &dyn std::fmt::Display| TopologyError::Stream { name, source: e.to_string().into() };
    let mut stream = js.get_stream(name).await.map_err(|e| err(&e))?;
    let configured = stream.info().await.map_err(|e| err(&e))?.config.max_message_size;
    let server = js.client().server_info().max_payload;
    let effective = usize::try_from(configured).ok().filter(|&c| c > 0).map_or(server, |c| c.min(server));
    Ok((configured, effective))
}

/// Refuses (with [`TopologyError::Limits`]) streams between which a dead letter could be lost:
/// the largest message `KH_INGRESS` accepts plus [`DEAD_LETTER_ROOM`] must fit in `KH_DLQ`
/// (its dead letter) and in `KH_EVENTS` (the validated event), and under the server's
/// `max_payload`, as the streams are now (they may have been created with other settings).
pub async fn check_dead_letter_room(js: &jetstream::Context) -> Result<(), TopologyError> {
    let server = i64::try_from(js.client().server_info().max_payload).unwrap_or(i64::MAX);
    let mut limits = Vec::new();
    for name in [STREAM_INGRESS, STREAM_DLQ, STREAM_EVENTS] {
        let (configured, effective) = message_limit(js, name).await?;
        limits.push((name, configured, i64::try_from(effective).unwrap_or(i64::MAX)));
    }
    let (_, _, ingress) = limits[0];
    let needed = ingress + i64::from(DEAD_LETTER_ROOM);
    for &(name, configured, effective) in &limits[1..] {
        if effective < needed {
            return Err(TopologyError::Limits(format!(
                "{name} takes messages up to {effective} bytes (its max_message_size {configured}, the server's max_payload {server}), but KH_INGRESS takes up to {ingress} and a dead letter or event of such a message needs {needed} (KH_INGRESS's limit + {DEAD_LETTER_ROOM}): set topology.max_message_bytes to {name}'s limit (KH_INGRESS follows it), or, as the NATS admin identity, raise {name}'s max_message_size (docs/operations.md)"
            )));
        }
    }
    Ok(())
}

/// Opens a KV bucket, creating its backing stream first when missing. The stream is created
/// directly (with the layout `create_key_value` would use) because the client's own
/// `create_key_value` queries account info in a shape the Debian nats-server 2.9 does not send.
async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    replicas: usize,
) -> Result<kv::Store, TopologyError> {
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 5,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| TopologyError::Bucket { name, source: Box::new(e) })?;
    js.get_key_value(name).await.map_err(|e| TopologyError::Bucket { name, source: Box::new(e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert_eq!(parse_server_version("2.15.1"), Some((2, 15)));
        assert_eq!(parse_server_version("v2.12.0-beta.1"), Some((2, 12)));
        assert!(parse_server_version("2.9.10").is_some_and(|v| v < MIN_SERVER_VERSION));
        assert!(parse_server_version("2.10.0").is_some_and(|v| v < MIN_SERVER_VERSION));
        assert!(parse_server_version("2.12.3").is_some_and(|v| v < MIN_SERVER_VERSION));
        assert!(parse_server_version("2.14.0").is_some_and(|v| v >= MIN_SERVER_VERSION));
        assert_eq!(parse_server_version("nonsense"), None);
    }

    #[test]
    fn limits_must_leave_a_dead_letter_room_and_fit_the_server() {
        let cfg = TopologyConfig::default();
        assert_eq!(cfg.ingress_max_message_bytes(), 1024 * 1024 - 16 * 1024);
        assert!(cfg.check_limits(1024 * 1024).is_ok(), "the defaults fit the server's default max_payload");
        let over = cfg.check_limits(512 * 1024).expect_err("over max_payload").to_string();
        assert!(over.contains("topology.max_message_bytes") && over.contains("max_payload"), "{over}");
        let small = TopologyConfig { max_message_bytes: 20 * 1024, ..TopologyConfig::default() };
        let small = small.check_limits(1024 * 1024).expect_err("no room left for KH_INGRESS").to_string();
        assert!(small.contains("topology.max_message_bytes"), "{small}");
    }
}
