//! `SchemaRegistry`: the store's operations over gRPC.

use crate::compat::Mode;
use crate::store::{record::SchemaRecord, SchemaStore, StoreError};
use crate::validator::{self, CheckLimits};
use kakehashi_proto::identity::Identities;
use kakehashi_proto::v1::schema_registry_server::SchemaRegistry;
use kakehashi_proto::v1::*;
use tonic::{Request, Response, Status};

/// The SchemaRegistry service.
#[derive(Clone)]
pub struct SchemaRegistryService {
    store: SchemaStore,
    identities: Identities,
    /// The validator's own limits, which the dry run applies as the bus does.
    limits: CheckLimits,
}

impl SchemaRegistryService {
    /// New service over a store; writes need an administrator, reads any caller.
    pub fn new(store: SchemaStore, identities: Identities, limits: CheckLimits) -> Self {
        Self { store, identities, limits }
    }
}

fn to_proto(r: &SchemaRecord) -> SchemaVersion {
    SchemaVersion {
        subject: r.subject.clone(),
        version: r.version,
        id: r.id,
        schema: r.schema.clone(),
        deleted: r.deleted,
        registered_at: time::OffsetDateTime::parse(
            &r.registered_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .map(|t| prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }),
        references: r.references.clone(),
    }
}

/// Proto enum ↔ checker mode.
pub fn mode_from_proto(m: i32) -> Result<Mode, Status> {
    Ok(match CompatibilityMode::try_from(m) {
        Ok(CompatibilityMode::None) => Mode::None,
        Ok(CompatibilityMode::Backward) => Mode::Backward,
        Ok(CompatibilityMode::BackwardTransitive) => Mode::BackwardTransitive,
        Ok(CompatibilityMode::Forward) => Mode::Forward,
        Ok(CompatibilityMode::ForwardTransitive) => Mode::ForwardTransitive,
        Ok(CompatibilityMode::Full) => Mode::Full,
        Ok(CompatibilityMode::FullTransitive) => Mode::FullTransitive,
        _ => return Err(Status::invalid_argument("compatibility mode must be set")),
    })
}

/// Checker mode → proto enum.
pub fn mode_to_proto(m: Mode) -> CompatibilityMode {
    match m {
        Mode::None => CompatibilityMode::None,
        Mode::Backward => CompatibilityMode::Backward,
        Mode::BackwardTransitive => CompatibilityMode::BackwardTransitive,
        Mode::Forward => CompatibilityMode::Forward,
        Mode::ForwardTransitive => CompatibilityMode::ForwardTransitive,
        Mode::Full => CompatibilityMode::Full,
        Mode::FullTransitive => CompatibilityMode::FullTransitive,
    }
}

#[tonic::async_trait]
impl SchemaRegistry for SchemaRegistryService {
    async fn register_schema(
        &self,
        request: Request<RegisterSchemaRequest>,
    ) -> Result<Response<RegisterSchemaResponse>, Status> {
        self.identities.require_admin(&request)?;
        let r = request.into_inner();
        let done = self.store.register(&r.subject, &r.schema).await?;
        Ok(Response::new(RegisterSchemaResponse {
            id: done.record.id,
            version: done.record.version,
            created: done.created,
            warnings: done.warnings,
        }))
    }

    async fn get_schema(
        &self,
        request: Request<GetSchemaRequest>,
    ) -> Result<Response<SchemaVersion>, Status> {
        self.identities.require_caller(&request)?;
        let r = request.into_inner();
        let record =
            if r.id != 0 { self.store.get_by_id(r.id)? } else { self.store.get(&r.subject, r.version)? };
        Ok(Response::new(to_proto(&record)))
    }

    async fn list_subjects(
        &self,
        request: Request<ListSubjectsRequest>,
    ) -> Result<Response<ListSubjectsResponse>, Status> {
        self.identities.require_caller(&request)?;
        let subjects = self.store.subjects(request.into_inner().include_deleted);
        Ok(Response::new(ListSubjectsResponse { subjects }))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        self.identities.require_caller(&request)?;
        let r = request.into_inner();
        Ok(Response::new(ListVersionsResponse {
            versions: self.store.versions(&r.subject, r.include_deleted)?,
        }))
    }

    async fn check_compatibility(
        &self,
        request: Request<CheckCompatibilityRequest>,
    ) -> Result<Response<CheckCompatibilityResponse>, Status> {
        self.identities.require_caller(&request)?;
        let r = request.into_inner();
        let (mode, problems) = self.store.check_compatibility(&r.subject, &r.schema, r.version)?;
        Ok(Response::new(CheckCompatibilityResponse {
            compatible: problems.is_empty(),
            mode: mode_to_proto(mode) as i32,
            incompatibilities: problems
                .into_iter()
                .map(|p| Incompatibility {
                    pointer: p.pointer,
                    kind: p.kind.to_string(),
                    message: p.message,
                    against_version: p.against_version.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn set_compatibility(
        &self,
        request: Request<SetCompatibilityRequest>,
    ) -> Result<Response<CompatibilityConfig>, Status> {
        self.identities.require_admin(&request)?;
        let r = request.into_inner();
        let mode = mode_from_proto(r.mode)?;
        if !r.subject.is_empty() && !kakehashi_proto::ident::is_valid_event_type(&r.subject) {
            return Err(StoreError::InvalidSubject(r.subject).into());
        }
        self.store.set_mode(&r.subject, mode).await?;
        Ok(Response::new(CompatibilityConfig {
            subject: r.subject,
            mode: mode_to_proto(mode) as i32,
            inherited: false,
        }))
    }

    async fn get_compatibility(
        &self,
        request: Request<GetCompatibilityRequest>,
    ) -> Result<Response<CompatibilityConfig>, Status> {
        self.identities.require_caller(&request)?;
        let subject = request.into_inner().subject;
        let (mode, inherited) = self.store.mode_of(&subject);
        Ok(Response::new(CompatibilityConfig { subject, mode: mode_to_proto(mode) as i32, inherited }))
    }

    async fn delete_schema_version(
        &self,
        request: Request<DeleteSchemaVersionRequest>,
    ) -> Result<Response<DeleteSchemaVersionResponse>, Status> {
        self.identities.require_admin(&request)?;
        let r = request.into_inner();
        if r.version == 0 {
            return Err(Status::invalid_argument("name the version to delete"));
        }
        self.store.delete(&r.subject, r.version, r.permanent).await?;
        Ok(Response::new(DeleteSchemaVersionResponse {}))
    }

    async fn validate_payload(
        &self,
        request: Request<ValidatePayloadRequest>,
    ) -> Result<Response<ValidatePayloadResponse>, Status> {
        self.identities.require_caller(&request)?;
        let r = request.into_inner();
        let (validator, version) = self.store.validator(&r.subject, r.version)?;
        let (reason, violations) = match validator::check_payload(&r.payload, &validator, self.limits) {
            Ok(()) => (String::new(), Vec::new()),
            // A refusal without field violations (size, not JSON) is reported as one at the
            // root, so a client that lists violations still shows why.
            Err(rejected) if rejected.violations.is_empty() => (
                rejected.reason.code().to_string(),
                vec![FieldViolation {
                    pointer: String::new(),
                    schema_pointer: String::new(),
                    message: rejected.message,
                }],
            ),
            Err(rejected) => (rejected.reason.code().to_string(), rejected.violations),
        };
        Ok(Response::new(ValidatePayloadResponse {
            valid: violations.is_empty(),
            version,
            violations,
            reason,
        }))
    }
}
