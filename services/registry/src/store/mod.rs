//! The schema store: versions of every subject in the `KH_SCHEMAS` KV bucket, with an in-memory
//! cache kept fresh by a KV watch (so every registry instance answers the same), compiled
//! validators cached per version, and compare-and-set writes so concurrent registrations on any
//! number of instances never lose or double a version.
//!
//! Bursts: within one instance registrations are serialized (a fair FIFO lock around the
//! "allocate id + create version" section), so an instance never contends with itself; across
//! instances the compare-and-set remains, and a lost race is retried after a jittered, growing
//! backoff until [`CAS_RETRY_BUDGET`] has passed, rather than a fixed number of immediate retries.

mod compile;
mod error;
pub mod record;

pub use compile::DRAFT_2020_12;
pub use error::StoreError;

use crate::compat::{self, Mode};
use async_nats::jetstream::kv;
use compile::VersionIndex;
use futures::StreamExt;
use record::{
    compat_key, external_refs, parse_version_key, schema_uri, version_key, ProtoFile, ProtoImport,
    ProtobufSchema, SchemaRecord, SchemaType, GLOBAL_COMPAT_KEY, NEXT_ID_KEY,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How long one registration keeps retrying compare-and-set conflicts with other instances (on
/// the id counter or the version key) before answering `ABORTED`. Fixed, not configurable: with
/// registrations serialized per instance only other instances contend, and each conflict means
/// another instance made progress, so this is ample for bursts of hundreds across a few instances.
const CAS_RETRY_BUDGET: Duration = Duration::from_secs(15);
/// How long a registration waits for its turn behind the instance's other registrations (the
/// server-side queue) before answering `ABORTED`.
const REGISTER_QUEUE_WAIT: Duration = Duration::from_secs(60);
/// First and largest pause between compare-and-set retries; each pause is uniformly random in
/// `[0, bound]` ("full jitter"), the bound doubling per conflict up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Shared handle to the schema store.
#[derive(Clone)]
pub struct SchemaStore {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    /// All versions, by (subject, version); also read by the `$ref` retriever.
    index: VersionIndex,
    /// Compatibility overrides by subject ("" is the global default).
    compat: RwLock<HashMap<String, Mode>>,
    /// Latest live version per subject, kept by `insert`/`remove` so the hot path looks it up
    /// without allocating.
    latest: RwLock<HashMap<String, u32>>,
    /// Compiled validators by subject then version; versions are immutable, so entries never
    /// go stale (a permanent delete drops its entry).
    validators: Mutex<PerVersion<jsonschema::Validator>>,
    /// Where each version's payloads hold personal identifiers.
    pii: Mutex<PerVersion<crate::pii::PiiPaths>>,
    /// Loaded protobuf versions (descriptors decoded once), like `validators`.
    protos: Mutex<PerVersion<crate::protobuf::ProtoSchema>>,
    /// Validator cache hits and misses, for metrics.
    cache_hits: std::sync::atomic::AtomicU64,
    cache_misses: std::sync::atomic::AtomicU64,
    /// Serializes this instance's registrations (tokio's mutex is fair: a FIFO queue).
    register_lock: tokio::sync::Mutex<()>,
    default_mode: Mode,
    max_schema_bytes: usize,
    max_cached_validators: usize,
}

/// A protobuf schema offered for registration or a compatibility check.
#[derive(Debug, Clone, Default)]
pub struct ProtoRequest {
    /// The `.proto` files (at least one).
    pub files: Vec<ProtoFile>,
    /// Fully-qualified name of the payload message.
    pub message: String,
    /// Registered protobuf versions whose files these import.
    pub references: Vec<(String, u32)>,
    /// Whether payloads may carry undeclared fields.
    pub allow_unknown_fields: bool,
}

/// A payload schema of either type, as the validator uses it.
#[derive(Clone)]
pub enum PayloadSchema {
    /// A compiled JSON Schema.
    Json(Arc<jsonschema::Validator>),
    /// A protobuf payload message.
    Protobuf(Arc<crate::protobuf::ProtoSchema>),
}

/// A schema checked and ready to be stored.
struct Pending {
    schema_type: SchemaType,
    canonical: String,
    references: Vec<String>,
    /// The JSON Schema document (JSON only).
    json: Option<Value>,
    /// The compiled payload message and what is stored (PROTOBUF only).
    protobuf: Option<(prost_reflect::MessageDescriptor, ProtobufSchema)>,
}

/// Outcome of a registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The stored (or already existing) version.
    pub record: Arc<SchemaRecord>,
    /// False when an identical schema already existed.
    pub created: bool,
    /// Accepted but worth a look (unknown formats, kept as annotations).
    pub warnings: Vec<String>,
}

impl SchemaStore {
    /// Opens the store: loads every version and starts the watch that keeps the cache fresh.
    pub async fn open(
        kv: kv::Store,
        default_mode: Mode,
        max_schema_bytes: usize,
        max_cached_validators: usize,
    ) -> Result<Self, StoreError> {
        let inner = Arc::new(Inner {
            kv,
            index: Arc::new(RwLock::new(BTreeMap::new())),
            compat: RwLock::new(HashMap::new()),
            latest: RwLock::new(HashMap::new()),
            validators: Mutex::new(HashMap::new()),
            pii: Mutex::new(HashMap::new()),
            protos: Mutex::new(HashMap::new()),
            cache_hits: Default::default(),
            cache_misses: Default::default(),
            register_lock: tokio::sync::Mutex::new(()),
            default_mode,
            max_schema_bytes,
            max_cached_validators,
        });
        let mut watch =
            inner.kv.watch_with_history(">").await.map_err(|e| StoreError::Storage(format!("watch: {e}")))?;
        let pending =
            inner.kv.status().await.map_err(|e| StoreError::Storage(format!("status: {e}")))?.values();
        // Catch up with history before serving, so a fresh instance never answers "not found"
        // for a schema that exists.
        if pending > 0 {
            let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(entry) = watch.next().await {
                    let entry = entry.map_err(|e| StoreError::Storage(format!("watch: {e}")))?;
                    let done = entry.delta == 0;
                    inner.apply(&entry);
                    if done {
                        break;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await;
            caught_up.map_err(|_| StoreError::Storage("timed out loading schemas".into()))??;
        }
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Some(inner) = weak.upgrade() else { break };
                match entry {
                    Ok(entry) => inner.apply(&entry),
                    Err(e) => tracing::warn!(error = %e, "schema watch error"),
                }
            }
        });
        Ok(Self { inner })
    }

    /// Registers `text` under `subject`; identical content returns the existing version.
    pub async fn register(&self, subject: &str, text: &str) -> Result<Registered, StoreError> {
        let inner = &self.inner;
        if !kakehashi_proto::ident::is_valid_event_type(subject) {
            return Err(StoreError::InvalidSubject(subject.to_string()));
        }
        let schema = json_candidate(text, inner.max_schema_bytes)?;
        if !schema.is_object() {
            return Err(StoreError::InvalidSchema("a schema must be a JSON object".into()));
        }
        let references = self.check_references(&schema)?;
        compile::compile(&schema, &inner.index).map_err(StoreError::InvalidSchema)?;
        // A schema whose My Numbers delivery could not all find is refused here, not withheld later.
        let resolver = IndexResolver { index: inner.index.clone() };
        crate::pii::find(&schema, &|uri| compat::RefResolver::resolve(&resolver, uri))
            .map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
        let warnings = unknown_format_warnings(subject, &schema);
        let canonical =
            serde_json::to_string(&schema).map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
        let pending = Pending {
            schema_type: SchemaType::Json,
            canonical,
            references,
            json: Some(schema),
            protobuf: None,
        };
        self.commit(subject, pending, warnings).await
    }

    /// Registers a protobuf schema under `subject`: compiled with protox (imports from the
    /// referenced versions and the well-known types), refused with the compiler's message and
    /// location; identical content returns the existing version.
    pub async fn register_protobuf(
        &self,
        subject: &str,
        request: ProtoRequest,
    ) -> Result<Registered, StoreError> {
        if !kakehashi_proto::ident::is_valid_event_type(subject) {
            return Err(StoreError::InvalidSubject(subject.to_string()));
        }
        let pending = self.prepare_protobuf(request)?;
        self.commit(subject, pending, Vec::new()).await
    }

    /// Checks and compiles a protobuf schema (size, references, sources, message).
    fn prepare_protobuf(&self, request: ProtoRequest) -> Result<Pending, StoreError> {
        use base64::Engine as _;
        let size: usize = request.files.iter().map(|f| f.name.len() + f.source.len()).sum();
        if size > self.inner.max_schema_bytes {
            return Err(StoreError::TooLarge { size, limit: self.inner.max_schema_bytes });
        }
        let mut imports: Vec<ProtoImport> = request
            .references
            .iter()
            .map(|(subject, version)| ProtoImport { subject: subject.clone(), version: *version })
            .collect();
        imports.sort();
        imports.dedup();
        let imported = self.imported_files(&imports)?;
        let compiled = crate::protobuf::compile(&request.files, &imported, &request.message)
            .map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
        let stored = ProtobufSchema {
            files: request.files,
            message: compiled.message.full_name().to_string(),
            imports,
            allow_unknown_fields: request.allow_unknown_fields,
            descriptor_set: base64::engine::general_purpose::STANDARD.encode(&compiled.descriptor_set),
        };
        // What identity is judged on: sources, message, imports and the flag (not the
        // descriptor bytes, which a newer compiler could encode differently).
        let canonical = serde_json::to_string(&serde_json::json!({
            "files": stored.files,
            "message": stored.message,
            "imports": stored.imports,
            "allow_unknown_fields": stored.allow_unknown_fields,
        }))
        .map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
        let references = stored.imports.iter().map(|i| format!("{}/{}", i.subject, i.version)).collect();
        Ok(Pending {
            schema_type: SchemaType::Protobuf,
            canonical,
            references,
            json: None,
            protobuf: Some((compiled.message, stored)),
        })
    }

    /// The files of the imported versions and, transitively, of what they import, by name.
    fn imported_files(&self, imports: &[ProtoImport]) -> Result<BTreeMap<String, String>, StoreError> {
        let mut files = BTreeMap::new();
        let mut todo: Vec<ProtoImport> = imports.to_vec();
        let mut seen = std::collections::HashSet::new();
        while let Some(i) = todo.pop() {
            if !seen.insert(i.clone()) {
                continue;
            }
            let named = format!("{}/{}", i.subject, i.version);
            let record = self.get(&i.subject, i.version).map_err(|_| {
                StoreError::InvalidSchema(format!("reference to {named}, which is not registered"))
            })?;
            if record.deleted {
                return Err(StoreError::InvalidSchema(format!("reference to {named}, which is deleted")));
            }
            let Some(p) = record.protobuf.as_ref().filter(|_| record.schema_type == SchemaType::Protobuf)
            else {
                return Err(StoreError::InvalidSchema(format!(
                    "reference to {named}, which is a JSON Schema (a .proto can import protobuf versions only)"
                )));
            };
            for f in &p.files {
                if let Some(other) = files.insert(f.name.clone(), f.source.clone()) {
                    if other != f.source {
                        return Err(StoreError::InvalidSchema(format!(
                            "two referenced versions define different files named {}",
                            f.name
                        )));
                    }
                }
            }
            todo.extend(p.imports.iter().cloned());
        }
        Ok(files)
    }

    /// Allocates an id and the next version for a checked schema (or returns the identical one).
    async fn commit(
        &self,
        subject: &str,
        pending: Pending,
        warnings: Vec<String>,
    ) -> Result<Registered, StoreError> {
        let inner = &self.inner;
        // One registration at a time per instance; the compile above ran in parallel.
        let _turn = tokio::time::timeout(REGISTER_QUEUE_WAIT, inner.register_lock.lock())
            .await
            .map_err(|_| StoreError::Contention(subject.to_string()))?;
        let mut backoff = Backoff::new();
        // Reserved once and kept across version conflicts, so a lost race does not burn ids.
        let mut id = None;
        loop {
            let versions = self.versions_of(subject);
            if let Some(existing) = versions
                .iter()
                .find(|r| !r.deleted && r.schema_type == pending.schema_type && r.schema == pending.canonical)
            {
                return Ok(Registered { record: existing.clone(), created: false, warnings });
            }
            let next_version = versions.last().map_or(1, |r| r.version + 1);
            if let Some(id) = pending.json.as_ref().and_then(|s| s.get("$id")) {
                let expected = schema_uri(subject, next_version);
                if id.as_str() != Some(expected.as_str()) {
                    return Err(StoreError::InvalidSchema(format!(
                        "$id must be {expected} (the id of the version being registered) or absent"
                    )));
                }
            }
            let mode = self.mode_of(subject).0;
            let live: Vec<Arc<SchemaRecord>> = versions.iter().filter(|r| !r.deleted).cloned().collect();
            let problems = self.problems(mode, &pending, &live);
            if !problems.is_empty() {
                return Err(StoreError::Incompatible {
                    subject: subject.into(),
                    mode: mode.to_string(),
                    problems,
                });
            }
            let id = match id {
                Some(id) => id,
                None => *id.insert(self.next_id(&mut backoff).await?),
            };
            let record = SchemaRecord {
                subject: subject.to_string(),
                version: next_version,
                id,
                schema: pending.canonical.clone(),
                deleted: false,
                registered_at: now_rfc3339(),
                references: pending.references.clone(),
                schema_type: pending.schema_type,
                protobuf: pending.protobuf.as_ref().map(|(_, p)| p.clone()),
            };
            let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Storage(e.to_string()))?;
            match inner.kv.create(version_key(subject, next_version), bytes.into()).await {
                Ok(revision) => {
                    let record = Arc::new(record);
                    inner.insert(record.clone(), revision);
                    return Ok(Registered { record, created: true, warnings });
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Another instance took this version: load it, pause, then retry on top.
                    self.refresh_subject(subject).await?;
                    if !backoff.pause().await {
                        return Err(StoreError::Contention(subject.to_string()));
                    }
                }
                Err(e) => return Err(StoreError::Storage(format!("create version: {e}"))),
            }
        }
    }

    /// Every compatibility problem of a pending schema against the live versions `live`
    /// (oldest first) under `mode`, whichever its type.
    fn problems(
        &self,
        mode: Mode,
        pending: &Pending,
        live: &[Arc<SchemaRecord>],
    ) -> Vec<compat::Incompatibility> {
        if mode == Mode::None {
            return Vec::new();
        }
        let against: &[Arc<SchemaRecord>] =
            if mode.is_transitive() { live } else { live.last().map_or(&[], std::slice::from_ref) };
        // A subject keeps one schema type: readers cannot follow a switch of wire format.
        let switched: Vec<compat::Incompatibility> = against
            .iter()
            .filter(|r| r.schema_type != pending.schema_type)
            .map(|r| compat::Incompatibility {
                pointer: String::new(),
                kind: compat::IncompatibilityKind::SchemaTypeChanged,
                message: format!(
                    "version {} is {} and the new schema is {} (use a new subject, or mode NONE)",
                    r.version,
                    r.schema_type.as_str(),
                    pending.schema_type.as_str()
                ),
                against_version: Some(r.version),
            })
            .collect();
        if !switched.is_empty() {
            return switched;
        }
        match (&pending.json, &pending.protobuf) {
            (Some(schema), _) => {
                let parsed: Vec<(u32, Value)> = live
                    .iter()
                    .filter(|r| r.schema_type == SchemaType::Json)
                    .filter_map(|r| Some((r.version, serde_json::from_str(&r.schema).ok()?)))
                    .collect();
                self.check_against(mode, schema, &parsed)
            }
            (None, Some((message, _))) => {
                let previous: Vec<(u32, prost_reflect::MessageDescriptor)> = live
                    .iter()
                    .filter_map(|r| {
                        let p = r.protobuf.as_ref()?;
                        match crate::protobuf::ProtoSchema::from_record(p) {
                            Ok(loaded) => Some((r.version, loaded.message)),
                            Err(e) => {
                                // Compiled here at registration: only a damaged record gets here.
                                tracing::warn!(subject = %r.subject, version = r.version, error = %e, "stored protobuf version unreadable; not compared");
                                None
                            }
                        }
                    })
                    .collect();
                compat::protobuf::check(mode, message, &previous)
            }
            (None, None) => Vec::new(),
        }
    }

    /// Checks a candidate against the subject (all of the mode's versions, or only `version`).
    pub fn check_compatibility(
        &self,
        subject: &str,
        text: &str,
        version: u32,
    ) -> Result<(Mode, Vec<compat::Incompatibility>), StoreError> {
        let schema = json_candidate(text, self.inner.max_schema_bytes)?;
        let pending = Pending {
            schema_type: SchemaType::Json,
            canonical: String::new(),
            references: Vec::new(),
            json: Some(schema),
            protobuf: None,
        };
        self.check_pending(subject, &pending, version)
    }

    /// [`Self::check_compatibility`] for a protobuf candidate (compiled first).
    pub fn check_protobuf_compatibility(
        &self,
        subject: &str,
        request: ProtoRequest,
        version: u32,
    ) -> Result<(Mode, Vec<compat::Incompatibility>), StoreError> {
        let pending = self.prepare_protobuf(request)?;
        self.check_pending(subject, &pending, version)
    }

    fn check_pending(
        &self,
        subject: &str,
        pending: &Pending,
        version: u32,
    ) -> Result<(Mode, Vec<compat::Incompatibility>), StoreError> {
        let live: Vec<Arc<SchemaRecord>> = self
            .versions_of(subject)
            .into_iter()
            .filter(|r| !r.deleted && (version == 0 || r.version == version))
            .collect();
        if version != 0 && live.is_empty() {
            return Err(StoreError::NotFound(format!("{subject} version {version}")));
        }
        let mode = self.mode_of(subject).0;
        // Asked about one version: the mode's direction applies to it alone.
        let mode = if version == 0 { mode } else { non_transitive(mode) };
        Ok((mode, self.problems(mode, pending, &live)))
    }

    fn check_against(
        &self,
        mode: Mode,
        schema: &Value,
        live: &[(u32, Value)],
    ) -> Vec<compat::Incompatibility> {
        let previous: Vec<(u32, &Value)> = live.iter().map(|(v, s)| (*v, s)).collect();
        compat::check(mode, schema, &previous, &IndexResolver { index: self.inner.index.clone() })
    }

    /// A version (0 = latest live one) of a subject.
    pub fn get(&self, subject: &str, version: u32) -> Result<Arc<SchemaRecord>, StoreError> {
        let versions = self.versions_of(subject);
        let found = if version == 0 {
            versions.iter().rev().find(|r| !r.deleted)
        } else {
            versions.iter().find(|r| r.version == version)
        };
        found.cloned().ok_or_else(|| match version {
            0 => StoreError::NotFound(format!("subject {subject}")),
            v => StoreError::NotFound(format!("{subject} version {v}")),
        })
    }

    /// A version by global id (soft-deleted ones included).
    pub fn get_by_id(&self, id: u64) -> Result<Arc<SchemaRecord>, StoreError> {
        let index = self.inner.read_index();
        index
            .values()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("schema id {id}")))
    }

    /// Subjects with at least one (live, unless asked) version.
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        let index = self.inner.read_index();
        let mut out: Vec<String> =
            index.values().filter(|r| include_deleted || !r.deleted).map(|r| r.subject.clone()).collect();
        out.dedup();
        out
    }

    /// Version numbers of a subject.
    pub fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<u32>, StoreError> {
        let all = self.versions_of(subject);
        if all.is_empty() {
            return Err(StoreError::NotFound(format!("subject {subject}")));
        }
        Ok(all.iter().filter(|r| include_deleted || !r.deleted).map(|r| r.version).collect())
    }

    /// The effective mode of a subject ("" = global) and whether it is inherited.
    pub fn mode_of(&self, subject: &str) -> (Mode, bool) {
        let compat = self.inner.compat.read().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = compat.get(subject).filter(|_| !subject.is_empty()) {
            return (*m, false);
        }
        let global = compat.get("").copied();
        (global.unwrap_or(self.inner.default_mode), !subject.is_empty() || global.is_none())
    }

    /// Sets a subject's mode ("" = the global default).
    pub async fn set_mode(&self, subject: &str, mode: Mode) -> Result<(), StoreError> {
        let key = if subject.is_empty() { GLOBAL_COMPAT_KEY.to_string() } else { compat_key(subject) };
        let revision = self
            .inner
            .kv
            .put(key.clone(), mode.to_string().into_bytes().into())
            .await
            .map_err(|e| StoreError::Storage(format!("put {key}: {e}")))?;
        self.inner.set_compat(&key, Some(mode), revision);
        Ok(())
    }

    /// Soft-deletes a version, or removes it for good (only after a soft delete).
    pub async fn delete(&self, subject: &str, version: u32, permanent: bool) -> Result<(), StoreError> {
        let record = self.get(subject, version)?;
        let target = format!("{subject}/{version}");
        let referrers: Vec<String> = self
            .inner
            .read_index()
            .values()
            .filter(|r| r.references.contains(&target))
            .map(|r| format!("{}/{}", r.subject, r.version))
            .collect();
        if !referrers.is_empty() {
            return Err(StoreError::Referenced { target, referrers });
        }
        let key = version_key(subject, version);
        if permanent {
            if !record.deleted {
                return Err(StoreError::Precondition(format!(
                    "{target} must be soft-deleted before it is deleted permanently"
                )));
            }
            self.inner.kv.purge(&key).await.map_err(|e| StoreError::Storage(format!("purge {key}: {e}")))?;
            self.inner.remove(&key);
            return Ok(());
        }
        if record.deleted {
            return Ok(());
        }
        let updated = SchemaRecord { deleted: true, ..(*record).clone() };
        let bytes = serde_json::to_vec(&updated).map_err(|e| StoreError::Storage(e.to_string()))?;
        let revision = self
            .inner
            .kv
            .put(&key, bytes.into())
            .await
            .map_err(|e| StoreError::Storage(format!("put {key}: {e}")))?;
        self.inner.insert(Arc::new(updated), revision);
        Ok(())
    }

    /// The version `version` stands for (0 = latest live), without allocating.
    fn resolve_version(&self, subject: &str, version: u32) -> Result<u32, StoreError> {
        if version != 0 {
            return Ok(version);
        }
        let latest = self.inner.latest.read().unwrap_or_else(|p| p.into_inner());
        latest.get(subject).copied().ok_or_else(|| StoreError::NotFound(format!("subject {subject}")))
    }

    /// The compiled validator of a version (0 = latest live), compiled once and cached. The
    /// cached case is two map lookups under short locks: no allocation per event.
    pub fn validator(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<(Arc<jsonschema::Validator>, u32), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let v = self.resolve_version(subject, version)?;
        if let Some(found) = cached(&self.inner.validators, subject, v) {
            self.inner.cache_hits.fetch_add(1, Relaxed);
            return Ok((found, v));
        }
        self.inner.cache_misses.fetch_add(1, Relaxed);
        let record = self.get(subject, v)?;
        if record.schema_type != SchemaType::Json {
            return Err(StoreError::InvalidSchema(format!(
                "{subject} version {v} is a {} schema, not a JSON Schema",
                record.schema_type.as_str()
            )));
        }
        let schema: Value =
            serde_json::from_str(&record.schema).map_err(|e| StoreError::Storage(e.to_string()))?;
        let compiled =
            Arc::new(compile::compile(&schema, &self.inner.index).map_err(StoreError::InvalidSchema)?);
        remember(&self.inner.validators, subject, v, compiled.clone(), self.inner.max_cached_validators);
        Ok((compiled, v))
    }

    /// The payload schema of a version (0 = latest live) whatever its type, loaded once and
    /// cached: a JSON Schema validator or a protobuf message.
    pub fn payload_schema(&self, subject: &str, version: u32) -> Result<(PayloadSchema, u32), StoreError> {
        let v = self.resolve_version(subject, version)?;
        if let Some(found) = cached(&self.inner.protos, subject, v) {
            self.inner.cache_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((PayloadSchema::Protobuf(found), v));
        }
        if let Some(found) = cached(&self.inner.validators, subject, v) {
            self.inner.cache_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((PayloadSchema::Json(found), v));
        }
        let record = self.get(subject, v)?;
        match (record.schema_type, record.protobuf.as_ref()) {
            (SchemaType::Protobuf, Some(p)) => {
                self.inner.cache_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let loaded = Arc::new(
                    crate::protobuf::ProtoSchema::from_record(p)
                        .map_err(|e| StoreError::InvalidSchema(e.to_string()))?,
                );
                remember(&self.inner.protos, subject, v, loaded.clone(), self.inner.max_cached_validators);
                Ok((PayloadSchema::Protobuf(loaded), v))
            }
            (SchemaType::Protobuf, None) => {
                Err(StoreError::Storage(format!("{subject} version {v} is PROTOBUF without its sources")))
            }
            (SchemaType::Json, _) => self.validator(subject, v).map(|(j, v)| (PayloadSchema::Json(j), v)),
        }
    }

    /// Whether a version (0 = latest live) is a protobuf schema, without compiling anything
    /// (delivery asks for every event, JSON ones included).
    pub fn is_protobuf(&self, subject: &str, version: u32) -> Result<bool, StoreError> {
        let v = self.resolve_version(subject, version)?;
        if cached(&self.inner.protos, subject, v).is_some() {
            return Ok(true);
        }
        if cached(&self.inner.validators, subject, v).is_some() {
            return Ok(false);
        }
        Ok(self.get(subject, v)?.schema_type == SchemaType::Protobuf)
    }

    /// Validator cache (hits, misses) since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.inner.cache_hits.load(Relaxed), self.inner.cache_misses.load(Relaxed))
    }

    /// Where payloads of a version (0 = latest live) carry personal identifiers, cached.
    pub fn pii_paths(&self, subject: &str, version: u32) -> Result<Arc<crate::pii::PiiPaths>, StoreError> {
        let v = self.resolve_version(subject, version)?;
        if let Some(found) = cached(&self.inner.pii, subject, v) {
            return Ok(found);
        }
        let record = self.get(subject, v)?;
        if record.schema_type != SchemaType::Json {
            // Protobuf My Numbers are found through the descriptors (`payload_schema`), never here.
            return Err(StoreError::InvalidSchema(format!("{subject} version {v} is not a JSON Schema")));
        }
        let schema: Value =
            serde_json::from_str(&record.schema).map_err(|e| StoreError::Storage(e.to_string()))?;
        let resolver = IndexResolver { index: self.inner.index.clone() };
        let paths = crate::pii::find(&schema, &|uri| compat::RefResolver::resolve(&resolver, uri))
            .map_err(|e| StoreError::InvalidSchema(format!("{subject} version {v}: {e}")))?;
        let paths = Arc::new(paths);
        remember(&self.inner.pii, subject, v, paths.clone(), self.inner.max_cached_validators);
        Ok(paths)
    }

    /// Reloads one subject's versions straight from the bucket (used after losing a race).
    pub async fn refresh_subject(&self, subject: &str) -> Result<(), StoreError> {
        let known = self.versions_of(subject).last().map_or(0, |r| r.version);
        // Probe upwards from what we know; versions are dense, so the first gap ends the scan.
        let mut version = known + 1;
        loop {
            let key = version_key(subject, version);
            match self.inner.kv.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => self.inner.apply(&entry),
                Ok(_) => return Ok(()),
                Err(e) => return Err(StoreError::Storage(format!("get {key}: {e}"))),
            }
            version += 1;
        }
    }

    fn versions_of(&self, subject: &str) -> Vec<Arc<SchemaRecord>> {
        let index = self.inner.read_index();
        index
            .range((subject.to_string(), 0)..=(subject.to_string(), u32::MAX))
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn check_references(&self, schema: &Value) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for (subject, version) in external_refs(schema) {
            let record = self.get(&subject, version).map_err(|_| {
                StoreError::InvalidSchema(format!("$ref to {subject}/{version}, which is not registered"))
            })?;
            if record.deleted {
                return Err(StoreError::InvalidSchema(format!(
                    "$ref to {subject}/{version}, which is deleted"
                )));
            }
            out.push(format!("{subject}/{version}"));
        }
        Ok(out)
    }

    /// Takes the next global id from the counter (compare-and-set, retried within `backoff`'s budget).
    async fn next_id(&self, backoff: &mut Backoff) -> Result<u64, StoreError> {
        let kv = &self.inner.kv;
        loop {
            let entry =
                kv.entry(NEXT_ID_KEY).await.map_err(|e| StoreError::Storage(format!("id counter: {e}")))?;
            let result = match entry.filter(|e| e.operation == kv::Operation::Put) {
                None => {
                    kv.create(NEXT_ID_KEY, b"2".to_vec().into()).await.map(|_| 1).map_err(|e| e.to_string())
                }
                Some(e) => {
                    let current: u64 = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| StoreError::Storage("id counter is corrupt".into()))?;
                    kv.update(NEXT_ID_KEY, (current + 1).to_string().into_bytes().into(), e.revision)
                        .await
                        .map(|_| current)
                        .map_err(|e| e.to_string())
                }
            };
            match result {
                Ok(id) => return Ok(id),
                Err(e) => tracing::debug!(error = %e, "schema id counter conflict, retrying"),
            }
            if !backoff.pause().await {
                return Err(StoreError::Contention("schema id counter".into()));
            }
        }
    }
}

impl Inner {
    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<(String, u32), Arc<SchemaRecord>>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watched KV entry to the cache.
    fn apply(&self, entry: &kv::Entry) {
        let deleted = matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge);
        if entry.key == GLOBAL_COMPAT_KEY || entry.key.starts_with("compat.") {
            let mode = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse::<Mode>().ok());
            self.set_compat(&entry.key, if deleted { None } else { mode }, entry.revision);
        } else if parse_version_key(&entry.key).is_some() {
            if deleted {
                self.remove(&entry.key);
            } else {
                match serde_json::from_slice::<SchemaRecord>(&entry.value) {
                    Ok(record) => self.insert(Arc::new(record), entry.revision),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "unreadable schema record skipped")
                    }
                }
            }
        }
    }

    fn insert(&self, record: Arc<SchemaRecord>, _revision: u64) {
        let subject = record.subject.clone();
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        index.insert((subject.clone(), record.version), record);
        self.refresh_latest(&index, &subject);
    }

    fn remove(&self, key: &str) {
        if let Some((subject, version)) = parse_version_key(key) {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            index.remove(&(subject.to_string(), version));
            self.refresh_latest(&index, subject);
            if let Some(m) = self.validators.lock().unwrap_or_else(|p| p.into_inner()).get_mut(subject) {
                m.remove(&version);
            }
            if let Some(m) = self.pii.lock().unwrap_or_else(|p| p.into_inner()).get_mut(subject) {
                m.remove(&version);
            }
            if let Some(m) = self.protos.lock().unwrap_or_else(|p| p.into_inner()).get_mut(subject) {
                m.remove(&version);
            }
        }
    }

    /// Recomputes a subject's latest live version (called with the index write-locked).
    fn refresh_latest(&self, index: &BTreeMap<(String, u32), Arc<SchemaRecord>>, subject: &str) {
        let latest = index
            .range((subject.to_string(), 0)..=(subject.to_string(), u32::MAX))
            .rev()
            .find(|(_, r)| !r.deleted)
            .map(|(_, r)| r.version);
        let mut map = self.latest.write().unwrap_or_else(|p| p.into_inner());
        match latest {
            Some(v) => map.insert(subject.to_string(), v),
            None => map.remove(subject),
        };
    }

    fn set_compat(&self, key: &str, mode: Option<Mode>, _revision: u64) {
        let subject = if key == GLOBAL_COMPAT_KEY { "" } else { key.strip_prefix("compat.").unwrap_or(key) };
        let mut compat = self.compat.write().unwrap_or_else(|p| p.into_inner());
        match mode {
            Some(m) => compat.insert(subject.to_string(), m),
            None => compat.remove(subject),
        };
    }
}

/// Jittered exponential backoff for compare-and-set retries, bounded by [`CAS_RETRY_BUDGET`].
struct Backoff {
    deadline: tokio::time::Instant,
    bound: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { deadline: tokio::time::Instant::now() + CAS_RETRY_BUDGET, bound: BACKOFF_FIRST }
    }

    /// Sleeps a random time in `[0, bound]` (never past the deadline) and grows the bound;
    /// false once the budget is spent (the caller gives up).
    async fn pause(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        let nanos = u64::try_from(self.bound.as_nanos()).unwrap_or(u64::MAX);
        let pause = Duration::from_nanos(random_u64() % nanos.saturating_add(1));
        tokio::time::sleep_until((now + pause).min(self.deadline)).await;
        self.bound = (self.bound * 2).min(BACKOFF_MAX);
        true
    }
}

/// A JSON Schema offered for registration or a compatibility check, parsed only when within
/// `max_schema_bytes` (parsing is what the limit protects, on every path).
fn json_candidate(text: &str, max_schema_bytes: usize) -> Result<Value, StoreError> {
    if text.len() > max_schema_bytes {
        return Err(StoreError::TooLarge { size: text.len(), limit: max_schema_bytes });
    }
    serde_json::from_str(text).map_err(|e| StoreError::InvalidSchema(format!("not JSON: {e}")))
}

/// A random number for jitter (std's per-hasher random keys; not for cryptography).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A cache of per-version values by subject, looked up with a borrowed subject.
type PerVersion<T> = HashMap<String, HashMap<u32, Arc<T>>>;

fn cached<T>(cache: &Mutex<PerVersion<T>>, subject: &str, version: u32) -> Option<Arc<T>> {
    cache.lock().unwrap_or_else(|p| p.into_inner()).get(subject).and_then(|m| m.get(&version)).cloned()
}

fn remember<T>(cache: &Mutex<PerVersion<T>>, subject: &str, version: u32, value: Arc<T>, bound: usize) {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.values().map(HashMap::len).sum::<usize>() >= bound {
        // Simple bound: start over rather than track recency; recompiling is cheap and rare.
        c.clear();
    }
    c.entry(subject.to_string()).or_default().insert(version, value);
}

/// Resolves references for the compatibility checker from the same index.
struct IndexResolver {
    index: VersionIndex,
}

impl compat::RefResolver for IndexResolver {
    fn resolve(&self, uri: &str) -> Option<Value> {
        let (subject, version) = record::parse_schema_uri(uri)?;
        let index = self.index.read().ok()?;
        serde_json::from_str(&index.get(&(subject.to_string(), version))?.schema).ok()
    }
}

/// The unknown formats of a schema being registered, as warnings (also logged at warn): the
/// schema is accepted and those formats are annotations only.
fn unknown_format_warnings(subject: &str, schema: &Value) -> Vec<String> {
    kakehashi_proto::formats::unknown_formats(schema)
        .into_iter()
        .map(|u| {
            tracing::warn!(
                subject,
                format = %u.name,
                pointer = %u.pointer,
                "unknown format accepted as an annotation (not validated)"
            );
            u.to_string()
        })
        .collect()
}

fn non_transitive(mode: Mode) -> Mode {
    match mode {
        Mode::BackwardTransitive => Mode::Backward,
        Mode::ForwardTransitive => Mode::Forward,
        Mode::FullTransitive => Mode::Full,
        m => m,
    }
}

/// Now as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_candidate_over_max_schema_bytes_is_refused_before_parsing() {
        let text = serde_json::json!({"type": "object", "description": "x".repeat(64)}).to_string();
        match json_candidate(&text, 32) {
            Err(StoreError::TooLarge { size, limit }) => assert_eq!((size, limit), (text.len(), 32)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Not JSON, and over the limit: the size is what is reported (nothing was parsed).
        assert!(matches!(json_candidate("{ not json", 4), Err(StoreError::TooLarge { size: 10, limit: 4 })));
        assert!(matches!(json_candidate("{ not json", 100), Err(StoreError::InvalidSchema(_))));
        assert_eq!(
            json_candidate(&text, text.len()).expect("at the limit"),
            serde_json::from_str::<Value>(&text).expect("json")
        );
    }
}
