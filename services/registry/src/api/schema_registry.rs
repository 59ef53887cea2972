//! `SchemaRegistry`: the store's operations over gRPC.

use crate::compat::Mode;
use crate::store::record::{ProtoFile as StoredFile, SchemaRecord, SchemaType as StoredType};
use crate::store::{PayloadSchema, ProtoRequest, SchemaStore, StoreError};
use crate::validator::{self, CheckLimits};
use kakehashi_proto::v1::schema_registry_server::SchemaRegistry;
use kakehashi_proto::v1::*;
use kakehashi_runtime::identity::Identities;
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
    use base64::Engine as _;
    let registered_at =
        time::OffsetDateTime::parse(&r.registered_at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 });
    let mut out = SchemaVersion {
        subject: r.subject.clone(),
        version: r.version,
        id: r.id,
        schema: r.schema.clone(),
        deleted: r.deleted,
        registered_at,
        references: r.references.clone(),
        schema_type: SchemaType::Json as i32,
        ..Default::default()
    };
    if let (StoredType::Protobuf, Some(p)) = (r.schema_type, &r.protobuf) {
        out.schema_type = SchemaType::Protobuf as i32;
        out.schema = p.files.first().map(|f| f.source.clone()).unwrap_or_default();
        out.proto_files =
            p.files.iter().map(|f| ProtoFile { name: f.name.clone(), content: f.source.clone() }).collect();
        out.message_name = p.message.clone();
        out.allow_unknown_fields = p.allow_unknown_fields;
        out.descriptor_set =
            base64::engine::general_purpose::STANDARD.decode(&p.descriptor_set).unwrap_or_default();
    }
    out
}

/// The protobuf part of a register or check request (`schema` alone = one file "schema.proto").
fn proto_request(
    schema: String,
    files: Vec<ProtoFile>,
    message: String,
    references: Vec<SchemaReference>,
    allow_unknown_fields: bool,
) -> Result<ProtoRequest, Status> {
    if message.is_empty() {
        return Err(Status::invalid_argument("a PROTOBUF schema needs message_name (the payload message)"));
    }
    let mut files: Vec<StoredFile> =
        files.into_iter().map(|f| StoredFile { name: f.name, source: f.content }).collect();
    if files.is_empty() && !schema.is_empty() {
        files.push(StoredFile { name: "schema.proto".into(), source: schema });
    }
    Ok(ProtoRequest {
        files,
        message,
        references: references.into_iter().map(|r| (r.subject, r.version)).collect(),
        allow_unknown_fields,
    })
}

fn is_protobuf(schema_type: i32) -> Result<bool, Status> {
    match SchemaType::try_from(schema_type) {
        Ok(SchemaType::Unspecified | SchemaType::Json) => Ok(false),
        Ok(SchemaType::Protobuf) => Ok(true),
        Err(_) => Err(Status::invalid_argument(format!("unknown schema_type {schema_type}"))),
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
        let done = if is_protobuf(r.schema_type)? {
            let proto =
                proto_request(r.schema, r.proto_files, r.message_name, r.references, r.allow_unknown_fields)?;
            self.store.register_protobuf(&r.subject, proto).await?
        } else {
            self.store.register(&r.subject, &r.schema).await?
        };
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
        let (mode, problems) = if is_protobuf(r.schema_type)? {
            let proto =
                proto_request(r.schema, r.proto_files, r.message_name, r.references, r.allow_unknown_fields)?;
            self.store.check_protobuf_compatibility(&r.subject, proto, r.version)?
        } else {
            self.store.check_compatibility(&r.subject, &r.schema, r.version)?
        };
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
        let (schema, version) = self.store.payload_schema(&r.subject, r.version)?;
        let checked = match &schema {
            PayloadSchema::Json(validator) => validator::check_payload(&r.payload, validator, self.limits),
            PayloadSchema::Protobuf(proto) => {
                crate::protobuf::payload::check_payload(&r.payload, proto, self.limits)
            }
        };
        let (reason, violations) = match checked {
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
