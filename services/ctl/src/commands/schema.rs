//! `kakehashi schema …`.

use crate::catalogue;
use crate::cli::{CompatCommand, Conn, SchemaCommand, SchemaSource};
use crate::clients;
use crate::error::{read, CtlError};
use crate::output::emit;
use kakehashi_proto::v1::*;
use serde_json::json;

fn mode_name(m: i32) -> String {
    CompatibilityMode::try_from(m)
        .map(|m| m.as_str_name().trim_start_matches("COMPATIBILITY_MODE_").to_string())
        .unwrap_or_else(|_| m.to_string())
}

fn parse_mode(s: &str) -> Result<CompatibilityMode, CtlError> {
    CompatibilityMode::from_str_name(&format!("COMPATIBILITY_MODE_{}", s.to_ascii_uppercase()))
        .filter(|m| *m != CompatibilityMode::Unspecified)
        .ok_or_else(|| CtlError::Usage(format!("unknown mode {s}: use NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE")))
}

/// Runs a schema subcommand.
pub async fn run(conn: &Conn, json_mode: bool, cmd: SchemaCommand) -> Result<(), CtlError> {
    let mut c = clients::registry(conn).await?;
    match cmd {
        SchemaCommand::Register { subject, source } => {
            let request = schema_request(&subject, &source)?;
            let r = c.register_schema(request).await?.into_inner();
            emit(
                json_mode,
                json!({"subject": subject, "version": r.version, "id": r.id, "created": r.created, "warnings": r.warnings}),
                || {
                    let mut text = if r.created {
                        format!("registered {subject} version {} (id {})", r.version, r.id)
                    } else {
                        format!("{subject} already has this schema as version {} (id {})", r.version, r.id)
                    };
                    for w in &r.warnings {
                        text.push_str(&format!("\nwarning: {w}"));
                    }
                    text
                },
            );
        }
        SchemaCommand::Get { subject, version, id } => {
            let r = c
                .get_schema(GetSchemaRequest { subject, version, id: id.unwrap_or_default() })
                .await?
                .into_inner();
            if r.schema_type == SchemaType::Protobuf as i32 {
                let files: Vec<serde_json::Value> =
                    r.proto_files.iter().map(|f| json!({"name": f.name, "content": f.content})).collect();
                emit(
                    json_mode,
                    json!({"subject": r.subject, "version": r.version, "id": r.id, "deleted": r.deleted,
                           "references": r.references, "schema_type": "PROTOBUF", "message": r.message_name,
                           "allow_unknown_fields": r.allow_unknown_fields, "files": files}),
                    || {
                        let mut s = format!(
                            "{} version {} (id {}){}: PROTOBUF, payload message {}",
                            r.subject,
                            r.version,
                            r.id,
                            if r.deleted { " [deleted]" } else { "" },
                            r.message_name
                        );
                        for f in &r.proto_files {
                            s.push_str(&format!("\n// ---- {}\n{}", f.name, f.content));
                        }
                        s
                    },
                );
                return Ok(());
            }
            let schema: serde_json::Value =
                serde_json::from_str(&r.schema).unwrap_or(serde_json::Value::Null);
            emit(
                json_mode,
                json!({"subject": r.subject, "version": r.version, "id": r.id, "deleted": r.deleted,
                       "references": r.references, "schema": schema}),
                || {
                    format!(
                        "{} version {} (id {}){}\n{}",
                        r.subject,
                        r.version,
                        r.id,
                        if r.deleted { " [deleted]" } else { "" },
                        serde_json::to_string_pretty(&schema).unwrap_or_default()
                    )
                },
            );
        }
        SchemaCommand::List { include_deleted } => {
            let r = c.list_subjects(ListSubjectsRequest { include_deleted }).await?.into_inner();
            emit(json_mode, json!(r.subjects), || r.subjects.join("\n"));
        }
        SchemaCommand::Versions { subject, include_deleted } => {
            let r = c.list_versions(ListVersionsRequest { subject, include_deleted }).await?.into_inner();
            emit(json_mode, json!(r.versions), || {
                r.versions.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
            });
        }
        SchemaCommand::Check { subject, source, version } => {
            let r = schema_request(&subject, &source)?;
            let r = c
                .check_compatibility(CheckCompatibilityRequest {
                    subject,
                    schema: r.schema,
                    version,
                    schema_type: r.schema_type,
                    proto_files: r.proto_files,
                    message_name: r.message_name,
                    references: r.references,
                    allow_unknown_fields: r.allow_unknown_fields,
                })
                .await?
                .into_inner();
            let problems: Vec<serde_json::Value> = r
                .incompatibilities
                .iter()
                .map(|i| json!({"pointer": i.pointer, "kind": i.kind, "message": i.message, "against_version": i.against_version}))
                .collect();
            emit(
                json_mode,
                json!({"compatible": r.compatible, "mode": mode_name(r.mode), "incompatibilities": problems}),
                || {
                    let mut s = format!(
                        "{} under {}",
                        if r.compatible { "compatible" } else { "INCOMPATIBLE" },
                        mode_name(r.mode)
                    );
                    for i in &r.incompatibilities {
                        s.push_str(&format!(
                            "\n  {} [{}] {} (against version {})",
                            if i.pointer.is_empty() { "/" } else { &i.pointer },
                            i.kind,
                            i.message,
                            i.against_version
                        ));
                    }
                    s
                },
            );
            if !r.compatible {
                return Err(CtlError::Usage("schema is not compatible".into()));
            }
        }
        SchemaCommand::Compat(CompatCommand::Get { subject }) => {
            let r = c
                .get_compatibility(GetCompatibilityRequest { subject: subject.unwrap_or_default() })
                .await?
                .into_inner();
            emit(
                json_mode,
                json!({"subject": r.subject, "mode": mode_name(r.mode), "inherited": r.inherited}),
                || {
                    let whom =
                        if r.subject.is_empty() { "global default".to_string() } else { r.subject.clone() };
                    format!("{whom}: {}{}", mode_name(r.mode), if r.inherited { " (inherited)" } else { "" })
                },
            );
        }
        SchemaCommand::Compat(CompatCommand::Set { mode, subject }) => {
            let mode = parse_mode(&mode)?;
            let r = c
                .set_compatibility(SetCompatibilityRequest {
                    subject: subject.unwrap_or_default(),
                    mode: mode as i32,
                })
                .await?
                .into_inner();
            emit(json_mode, json!({"subject": r.subject, "mode": mode_name(r.mode)}), || {
                format!(
                    "{} set to {}",
                    if r.subject.is_empty() { "global default" } else { &r.subject },
                    mode_name(r.mode)
                )
            });
        }
        SchemaCommand::Validate { subject, file, version } => {
            let payload =
                std::fs::read(&file).map_err(|source| CtlError::Read { path: file.clone(), source })?;
            let r = c
                .validate_payload(ValidatePayloadRequest { subject: subject.clone(), version, payload })
                .await?
                .into_inner();
            let violations: Vec<serde_json::Value> = r
                .violations
                .iter()
                .map(|v| json!({"pointer": v.pointer, "schema_pointer": v.schema_pointer, "message": v.message}))
                .collect();
            emit(
                json_mode,
                json!({"valid": r.valid, "version": r.version, "reason": r.reason, "violations": violations}),
                || {
                    let verdict = match (r.valid, r.reason.is_empty()) {
                        (true, _) => "valid".to_string(),
                        (false, true) => "INVALID".to_string(),
                        (false, false) => format!("INVALID ({})", r.reason),
                    };
                    let mut s = format!("{verdict} against {subject} version {}", r.version);
                    for v in &r.violations {
                        s.push_str(&format!(
                            "\n  {} — {}",
                            if v.pointer.is_empty() { "/" } else { &v.pointer },
                            v.message
                        ));
                    }
                    s
                },
            );
            if !r.valid {
                return Err(CtlError::Usage("payload is not valid".into()));
            }
        }
        SchemaCommand::Delete { subject, version, permanent } => {
            c.delete_schema_version(DeleteSchemaVersionRequest {
                subject: subject.clone(),
                version,
                permanent,
            })
            .await?;
            emit(json_mode, json!({"subject": subject, "version": version, "permanent": permanent}), || {
                format!(
                    "{} {subject} version {version}",
                    if permanent { "permanently deleted" } else { "soft-deleted" }
                )
            });
        }
        SchemaCommand::Load { dir } => load(&mut c, &dir, json_mode).await?,
        SchemaCommand::DeriveJson { subject, version } => {
            let r = c
                .get_schema(GetSchemaRequest { subject: subject.clone(), version, id: 0 })
                .await?
                .into_inner();
            if r.schema_type != SchemaType::Protobuf as i32 {
                return Err(CtlError::Usage(format!(
                    "{subject} version {} is not a protobuf schema",
                    r.version
                )));
            }
            let derived = kakehashi_registry::protobuf::derive::from_descriptor_set(
                &r.descriptor_set,
                &r.message_name,
                r.allow_unknown_fields,
            )
            .map_err(|e| CtlError::Usage(format!("{subject} version {}: {e}", r.version)))?;
            // The schema itself is the output, in either mode.
            println!("{}", serde_json::to_string_pretty(&derived).unwrap_or_default());
        }
    }
    Ok(())
}

/// The registration a command line's schema stands for.
fn schema_request(subject: &str, source: &SchemaSource) -> Result<RegisterSchemaRequest, CtlError> {
    if source.schema_type == "protobuf" {
        let message_name = source
            .message
            .clone()
            .ok_or_else(|| CtlError::Usage("--type protobuf needs --message <full name>".into()))?;
        return protobuf_request(
            subject,
            &source.files,
            message_name,
            &source.references,
            source.proto_root.as_deref(),
            source.allow_unknown_fields,
        );
    }
    let [file] = source.files.as_slice() else {
        return Err(CtlError::Usage("a JSON Schema is one file".into()));
    };
    Ok(RegisterSchemaRequest { subject: subject.to_string(), schema: read(file)?, ..Default::default() })
}

/// A protobuf registration from `.proto` files on disk; `--ref` values are `subject/version`.
fn protobuf_request(
    subject: &str,
    files: &[std::path::PathBuf],
    message_name: String,
    references: &[String],
    proto_root: Option<&std::path::Path>,
    allow_unknown_fields: bool,
) -> Result<RegisterSchemaRequest, CtlError> {
    let mut proto_files = Vec::new();
    for path in files {
        let name = match proto_root {
            Some(root) => path.strip_prefix(root).map_err(|_| {
                CtlError::Usage(format!("{} is not under --proto-root {}", path.display(), root.display()))
            })?,
            None => std::path::Path::new(path.file_name().unwrap_or(path.as_os_str())),
        };
        // Imports spell names with `/` whatever the platform.
        let name = name.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        proto_files.push(ProtoFile { name, content: read(path)? });
    }
    let references = references
        .iter()
        .map(|r| {
            let (s, v) = r
                .rsplit_once('/')
                .ok_or_else(|| CtlError::Usage(format!("--ref {r}: expected SUBJECT/VERSION")))?;
            let version =
                v.parse().map_err(|_| CtlError::Usage(format!("--ref {r}: the version is not a number")))?;
            Ok(SchemaReference { subject: s.to_string(), version })
        })
        .collect::<Result<Vec<_>, CtlError>>()?;
    Ok(RegisterSchemaRequest {
        subject: subject.to_string(),
        schema_type: SchemaType::Protobuf as i32,
        proto_files,
        message_name,
        references,
        allow_unknown_fields,
        ..Default::default()
    })
}

/// Registers a catalogue in dependency order, with a progress line per schema on stderr.
pub async fn load(
    c: &mut schema_registry_client::SchemaRegistryClient<clients::Authed>,
    dir: &std::path::Path,
    json_mode: bool,
) -> Result<(), CtlError> {
    let entries = catalogue::read(dir)?;
    let total = entries.len();
    let mut results = Vec::new();
    let mut failed = 0;
    for (i, e) in entries.iter().enumerate() {
        let request = match &e.protobuf {
            None => RegisterSchemaRequest {
                subject: e.subject.clone(),
                schema: e.text.clone(),
                ..Default::default()
            },
            Some(message) => RegisterSchemaRequest {
                subject: e.subject.clone(),
                schema_type: SchemaType::Protobuf as i32,
                proto_files: vec![ProtoFile {
                    name: catalogue::proto_file_name(&e.subject, e.version),
                    content: e.text.clone(),
                }],
                message_name: message.clone(),
                references: e
                    .refs
                    .iter()
                    .map(|(subject, version)| SchemaReference { subject: subject.clone(), version: *version })
                    .collect(),
                ..Default::default()
            },
        };
        let outcome = c.register_schema(request).await;
        let line = match &outcome {
            Ok(r) if r.get_ref().created && !r.get_ref().warnings.is_empty() => format!(
                "registered as version {} (warning: {})",
                r.get_ref().version,
                r.get_ref().warnings.join("; ")
            ),
            Ok(r) if r.get_ref().created => format!("registered as version {}", r.get_ref().version),
            Ok(r) => format!("unchanged (version {})", r.get_ref().version),
            Err(s) => {
                failed += 1;
                format!("FAILED: {}", CtlError::from(s.clone()))
            }
        };
        eprintln!("[{:>3}/{total}] {}/{} … {line}", i + 1, e.subject, e.version);
        results.push(json!({"subject": e.subject, "file_version": e.version, "outcome": line}));
    }
    emit(json_mode, json!({"loaded": total - failed, "failed": failed, "results": results}), || {
        format!("{} of {total} schemas loaded from {}", total - failed, dir.display())
    });
    if failed > 0 {
        return Err(CtlError::Usage(format!("{failed} schema(s) failed to load")));
    }
    Ok(())
}
