//! The adapter's mirror of the `KH_SCHEMAS` bucket: which event types (schema subjects) and
//! versions exist, so the adapter can refuse an event of an unknown type when it is published
//! instead of letting it be dead-lettered later, and — for file imports — check a payload
//! against its schema while the row's line number is still known.
//!
//! The registry owns the bucket; its key layout is mirrored here (the adapter does not depend
//! on the registry crate): `s.<subject>.v.<version>` holds one version as JSON with at least
//! `schema` (the canonical schema text) and `deleted` (soft delete). Other keys
//! (`compat.…`, `meta.…`) are ignored. A KV watch keeps the mirror fresh; on a miss the mirror
//! first catches up with the bucket's last revision, so a schema registered a moment ago is
//! never refused.
//!
//! The local check is the validator's own (draft 2020-12, formats asserted including Kakehashi's
//! `my-number`, `corporate-number` and `local-government-code`, `$ref`s resolved from the bucket only) and its messages
//! are masked: they never quote a payload value.

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use kakehashi_proto::{formats, subjects};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Base of every registered schema's `$id`: `<BASE><subject>/<version>` (mirrors the registry).
const SCHEMA_URI_BASE: &str = "https://kakehashi.invalid/schemas/";

/// How long a lookup that missed waits for the mirror to reach the bucket's last revision.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

/// Parses `s.<subject>.v.<version>`.
pub fn parse_version_key(key: &str) -> Option<(&str, u32)> {
    let rest = key.strip_prefix("s.")?;
    let (subject, version) = rest.rsplit_once(".v.")?;
    (!subject.is_empty()).then_some(())?;
    Some((subject, version.parse().ok()?))
}

fn parse_schema_uri(uri: &str) -> Option<(&str, u32)> {
    let rest = uri.strip_prefix(SCHEMA_URI_BASE)?;
    let rest = rest.split('#').next()?;
    let (subject, version) = rest.split_once('/')?;
    Some((subject, version.parse().ok()?))
}

/// The part of a stored version the adapter needs.
#[derive(Debug, Deserialize)]
struct StoredVersion {
    #[serde(default)]
    schema: String,
    #[serde(default)]
    deleted: bool,
}

/// Why an event's schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// No live version of the subject (never registered, or every version deleted).
    #[error("no schema is registered for {subject}")]
    UnknownSubject {
        /// The schema subject (normally the event type).
        subject: String,
    },
    /// The pinned version does not exist.
    #[error("{subject} has no version {version}")]
    UnknownVersion {
        /// The schema subject.
        subject: String,
        /// The pinned version.
        version: u32,
    },
    /// The stored schema does not compile (e.g. a `$ref` to a missing schema).
    #[error("schema {subject} version {version} is unusable: {message}")]
    Unusable {
        /// The schema subject.
        subject: String,
        /// The version.
        version: u32,
        /// What is wrong.
        message: String,
    },
}

impl SchemaError {
    /// Stable reason code (the validator's dead-letter reason for the same case).
    pub fn reason(&self) -> &'static str {
        "unknown_type"
    }
}

type Versions = BTreeMap<String, BTreeMap<u32, Arc<StoredVersion>>>;

/// Where versions come from: the whole bucket followed by a watch (services), or single keys
/// read on demand with JetStream direct gets (departments, whose account may only read the
/// schema bucket that way: no consumer, no stream API).
enum Source {
    Mirror(jetstream::Context),
    Direct(async_nats::Client),
}

struct Inner {
    source: Source,
    versions: RwLock<Versions>,
    /// Revision (stream sequence) of the last bucket entry applied.
    applied: AtomicU64,
    applied_changed: tokio::sync::Notify,
    validators: Mutex<HashMap<(String, u32), Arc<jsonschema::Validator>>>,
    /// Dropped with the last handle: tells the watch task to stop (and release its watch).
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A live, shared view of the registered schema subjects and versions.
#[derive(Clone)]
pub struct SchemaIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SchemaIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaIndex").field("applied", &self.inner.applied.load(Ordering::Relaxed)).finish()
    }
}

impl SchemaIndex {
    /// Loads the bucket's current versions, then follows changes in a background task that
    /// ends with the last handle (or the connection). The bucket must exist
    /// (`topology::ensure`).
    pub async fn open(js: &jetstream::Context) -> Result<Self, String> {
        let store = js
            .get_key_value(subjects::BUCKET_SCHEMAS)
            .await
            .map_err(|e| format!("opening bucket {}: {e}", subjects::BUCKET_SCHEMAS))?;
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| format!("watching {}: {e}", subjects::BUCKET_SCHEMAS))?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let inner = Arc::new(Inner {
            source: Source::Mirror(js.clone()),
            versions: RwLock::new(BTreeMap::new()),
            applied: AtomicU64::new(0),
            applied_changed: tokio::sync::Notify::new(),
            validators: Mutex::new(HashMap::new()),
            _stop: stop,
        });
        // An empty bucket yields nothing to the watch, so only wait when there is history.
        if inner.last_revision().await? > 0 {
            let loaded = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(Ok(entry)) = watch.next().await {
                    inner.apply(&entry);
                    if entry.delta == 0 {
                        break;
                    }
                }
            })
            .await;
            loaded.map_err(|_| format!("timed out loading {}", subjects::BUCKET_SCHEMAS))?;
        }
        // The task holds the index weakly: it ends when the last handle is dropped.
        let follower = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    entry = watch.next() => match (entry, follower.upgrade()) {
                        (Some(Ok(entry)), Some(inner)) => inner.apply(&entry),
                        (Some(Err(e)), Some(_)) => tracing::warn!(error = %e, "KH_SCHEMAS watch error"),
                        _ => return,
                    },
                }
            }
        });
        Ok(Self { inner })
    }

    /// An index that reads versions on demand with direct gets of single bucket keys
    /// (`$JS.API.DIRECT.GET.KV_KH_SCHEMAS.>`), the only read a department's NATS identity
    /// is granted. A subject's versions are read once, at its first use; `$ref`s are read
    /// before a validator is compiled.
    pub fn open_direct(client: async_nats::Client) -> Self {
        let (stop, _) = tokio::sync::oneshot::channel();
        Self {
            inner: Arc::new(Inner {
                source: Source::Direct(client),
                versions: RwLock::new(BTreeMap::new()),
                applied: AtomicU64::new(0),
                applied_changed: tokio::sync::Notify::new(),
                validators: Mutex::new(HashMap::new()),
                _stop: stop,
            }),
        }
    }

    /// The version an event with `schema_version` (0 = latest) would be validated against,
    /// catching up with the bucket before answering that it does not exist.
    pub async fn resolve(&self, subject: &str, version: u32) -> Result<u32, SchemaError> {
        if let Ok(v) = self.inner.lookup(subject, version) {
            return Ok(v);
        }
        match &self.inner.source {
            Source::Mirror(_) => self.inner.catch_up().await,
            Source::Direct(client) => self.inner.fetch_subject(client, subject).await,
        }
        self.inner.lookup(subject, version)
    }

    /// Checks a payload against the schema the validator would use. `Ok(())` when valid;
    /// otherwise one value-free message per failing location (at most `max`).
    pub async fn validate(
        &self,
        subject: &str,
        version: u32,
        payload: &Value,
        max: usize,
    ) -> Result<Result<(), Vec<String>>, SchemaError> {
        let version = self.resolve(subject, version).await?;
        if let Source::Direct(client) = &self.inner.source {
            self.inner.fetch_references(client, subject, version).await;
        }
        let validator = self.inner.validator(subject, version)?;
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .take(max.max(1))
            .map(|e| {
                let at = e.instance_path().to_string();
                // `masked` replaces the instance value with a placeholder in every message.
                format!("{}: {}", if at.is_empty() { "/" } else { &at }, e.masked())
            })
            .collect();
        Ok(if errors.is_empty() { Ok(()) } else { Err(errors) })
    }
}

impl Inner {
    /// Reads one version key with a direct get; `None` when it does not exist (or failed,
    /// which the caller reports as unknown, as the validator would dead-letter it).
    async fn fetch_version(
        client: &async_nats::Client,
        subject: &str,
        version: u32,
    ) -> Option<StoredVersion> {
        let key = format!("s.{subject}.v.{version}");
        let api = format!("$JS.API.DIRECT.GET.KV_{0}.$KV.{0}.{key}", subjects::BUCKET_SCHEMAS);
        let reply = tokio::time::timeout(CATCH_UP_LIMIT, client.request(api, bytes::Bytes::new()))
            .await
            .ok()?
            .ok()?;
        // A missing key answers with a status (404) and no payload; a KV delete marker has a
        // `KV-Operation` header and no payload either.
        if reply.status.is_some() || reply.payload.is_empty() {
            return None;
        }
        serde_json::from_slice(&reply.payload).ok()
    }

    /// Reads a subject's versions 1, 2, … up to the first missing one.
    async fn fetch_subject(&self, client: &async_nats::Client, subject: &str) {
        let mut version = 1;
        while let Some(v) = Self::fetch_version(client, subject, version).await {
            let mut map = self.versions.write().unwrap_or_else(|p| p.into_inner());
            map.entry(subject.to_string()).or_default().insert(version, Arc::new(v));
            drop(map);
            version += 1;
        }
    }

    /// Reads every schema `subject`/`version` references through `$ref`, transitively.
    async fn fetch_references(&self, client: &async_nats::Client, subject: &str, version: u32) {
        let mut pending = vec![(subject.to_string(), version)];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((s, v)) = pending.pop() {
            if !seen.insert((s.clone(), v)) {
                continue;
            }
            let text = match self.schema_text(&s, v) {
                Some(t) => t,
                None => match Self::fetch_version(client, &s, v).await {
                    Some(stored) => {
                        let text = stored.schema.clone();
                        let mut map = self.versions.write().unwrap_or_else(|p| p.into_inner());
                        map.entry(s.clone()).or_default().insert(v, Arc::new(stored));
                        text
                    }
                    None => continue,
                },
            };
            if let Ok(schema) = serde_json::from_str::<Value>(&text) {
                collect_refs(&schema, &mut pending);
            }
        }
    }

    async fn last_revision(&self) -> Result<u64, String> {
        let Source::Mirror(js) = &self.source else { return Ok(0) };
        let stream_name = format!("KV_{}", subjects::BUCKET_SCHEMAS);
        let stream = js.get_stream(&stream_name).await.map_err(|e| format!("reading {stream_name}: {e}"))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    fn apply(&self, entry: &kv::Entry) {
        if let Some((subject, version)) = parse_version_key(&entry.key) {
            let mut map = self.versions.write().unwrap_or_else(|p| p.into_inner());
            match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<StoredVersion>(&entry.value) {
                    Ok(v) => {
                        map.entry(subject.to_string()).or_default().insert(version, Arc::new(v));
                    }
                    Err(e) => tracing::warn!(key = %entry.key, error = %e, "unreadable schema entry skipped"),
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    if let Some(versions) = map.get_mut(subject) {
                        versions.remove(&version);
                        if versions.is_empty() {
                            map.remove(subject);
                        }
                    }
                }
            }
            drop(map);
            // A changed version may be referenced by compiled validators: start over.
            self.validators.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        self.applied.fetch_max(entry.revision, Ordering::AcqRel);
        self.applied_changed.notify_waiters();
    }

    fn lookup(&self, subject: &str, version: u32) -> Result<u32, SchemaError> {
        let map = self.versions.read().unwrap_or_else(|p| p.into_inner());
        let versions = map.get(subject);
        let found = match version {
            0 => versions.and_then(|v| v.iter().rev().find(|(_, s)| !s.deleted).map(|(n, _)| *n)),
            v => versions.and_then(|all| all.contains_key(&v).then_some(v)),
        };
        found.ok_or_else(|| match version {
            0 => SchemaError::UnknownSubject { subject: subject.to_string() },
            v => SchemaError::UnknownVersion { subject: subject.to_string(), version: v },
        })
    }

    /// Waits (bounded) until the mirror has applied the bucket's last revision.
    async fn catch_up(&self) {
        let Ok(target) = self.last_revision().await else { return };
        let _ = tokio::time::timeout(CATCH_UP_LIMIT, async {
            loop {
                let notified = self.applied_changed.notified();
                if self.applied.load(Ordering::Acquire) >= target {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    fn schema_text(&self, subject: &str, version: u32) -> Option<String> {
        let map = self.versions.read().unwrap_or_else(|p| p.into_inner());
        map.get(subject).and_then(|v| v.get(&version)).map(|s| s.schema.clone())
    }

    fn validator(&self, subject: &str, version: u32) -> Result<Arc<jsonschema::Validator>, SchemaError> {
        let key = (subject.to_string(), version);
        if let Some(v) = self.validators.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(v.clone());
        }
        let unusable =
            |message: String| SchemaError::Unusable { subject: subject.to_string(), version, message };
        let text = self
            .schema_text(subject, version)
            .ok_or_else(|| SchemaError::UnknownVersion { subject: subject.to_string(), version })?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| unusable(e.to_string()))?;
        let options = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            // As in the registry: unknown formats are annotations (kakehashi_proto::formats).
            .should_ignore_unknown_formats(true);
        let compiled = formats::KAKEHASHI_FORMAT_CHECKS
            .into_iter()
            .fold(options, |o, (name, check)| o.with_format(name, check))
            .with_retriever(BucketRetriever { texts: self.snapshot_texts() })
            .build(&schema)
            .map_err(|e| unusable(e.to_string()))?;
        let compiled = Arc::new(compiled);
        self.validators.lock().unwrap_or_else(|p| p.into_inner()).insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Every stored schema text by (subject, version), for resolving `$ref`s.
    fn snapshot_texts(&self) -> BTreeMap<(String, u32), String> {
        let map = self.versions.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|(subject, versions)| {
                versions.iter().map(move |(v, s)| ((subject.clone(), *v), s.schema.clone()))
            })
            .collect()
    }
}

/// Every registered schema a schema refers to with `$ref`.
fn collect_refs(value: &Value, out: &mut Vec<(String, u32)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(uri)) => {
                        if let Some((s, v)) = parse_schema_uri(uri) {
                            out.push((s.to_string(), v));
                        }
                    }
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Resolves `https://kakehashi.invalid/schemas/<subject>/<version>` from the bucket; never
/// the network.
struct BucketRetriever {
    texts: BTreeMap<(String, u32), String>,
}

impl jsonschema::Retrieve for BucketRetriever {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let (subject, version) =
            parse_schema_uri(uri.as_str()).ok_or_else(|| format!("{uri} is not a registered schema id"))?;
        let text = self
            .texts
            .get(&(subject.to_string(), version))
            .ok_or_else(|| format!("referenced schema {subject}/{version} is not registered"))?;
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_parse_like_the_registry_writes_them() {
        assert_eq!(
            parse_version_key("s.health.vaccination.recorded.v.12"),
            Some(("health.vaccination.recorded", 12))
        );
        assert_eq!(parse_version_key("s.a.v.b.v.3"), Some(("a.v.b", 3)));
        assert_eq!(parse_version_key("compat.health.vaccination.recorded"), None);
        assert_eq!(parse_version_key("meta.next_id"), None);
        assert_eq!(parse_version_key("s.x.v.one"), None);
        assert_eq!(parse_version_key("s..v.1"), None);
    }

    #[test]
    fn schema_uris_parse_with_or_without_fragment() {
        let uri = format!("{SCHEMA_URI_BASE}common.person/1");
        assert_eq!(parse_schema_uri(&uri), Some(("common.person", 1)));
        assert_eq!(parse_schema_uri(&format!("{uri}#/$defs/x")), Some(("common.person", 1)));
        assert_eq!(parse_schema_uri("https://example.com/schemas/a/1"), None);
    }
}
