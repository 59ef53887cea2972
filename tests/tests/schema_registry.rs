//! The SchemaRegistry API against a real NATS: versions, identical re-registration, bad input
//! codes, references, soft and permanent deletion, and concurrent registration on two
//! instances without lost or doubled versions.

use kakehashi_proto::v1::schema_registry_client::SchemaRegistryClient;
use kakehashi_proto::v1::*;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{wait, NatsServer, Registry};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Code;

const BASE: &str = "https://kakehashi.invalid/schemas/";

fn object_schema(props: serde_json::Value) -> String {
    json!({"type": "object", "properties": props}).to_string()
}

async fn client(r: &Registry) -> SchemaRegistryClient<tonic::transport::Channel> {
    SchemaRegistryClient::connect(r.endpoint()).await.expect("connect")
}

async fn register(
    c: &mut SchemaRegistryClient<tonic::transport::Channel>,
    subject: &str,
    schema: String,
) -> Result<RegisterSchemaResponse, tonic::Status> {
    c.register_schema(RegisterSchemaRequest { subject: subject.into(), schema, ..Default::default() })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn identical_schema_returns_existing_version_and_new_content_gets_next() {
    let nats = NatsServer::start();
    let r = Registry::start(registry_config(&nats)).await;
    let mut c = client(&r).await;
    c.set_compatibility(SetCompatibilityRequest {
        subject: "a.b".into(),
        mode: CompatibilityMode::None as i32,
    })
    .await
    .expect("compat none");
    let v1 = register(&mut c, "a.b", object_schema(json!({"x": {"type": "string"}}))).await.expect("v1");
    // Same content, different key order and whitespace.
    let again =
        register(&mut c, "a.b", r#"{ "properties": {"x": {"type":"string"}}, "type": "object" }"#.into())
            .await
            .expect("again");
    assert_eq!((again.version, again.id, again.created), (v1.version, v1.id, false));
    let v2 = register(&mut c, "a.b", object_schema(json!({"y": {"type": "string"}}))).await.expect("v2");
    assert_eq!(v2.version, 2);
    assert_ne!(v2.id, v1.id);
    let got =
        c.get_schema(GetSchemaRequest { id: v1.id, ..Default::default() }).await.expect("by id").into_inner();
    assert_eq!((got.subject.as_str(), got.version), ("a.b", 1));
}

#[tokio::test]
async fn bad_input_gets_precise_codes_and_leaves_nothing_behind() {
    let nats = NatsServer::start();
    let mut cfg = registry_config(&nats);
    cfg.limits.max_schema_bytes = 2048;
    let r = Registry::start(cfg).await;
    let mut c = client(&r).await;
    let not_json = register(&mut c, "a.b", "{not json".into()).await.expect_err("not json");
    assert_eq!(not_json.code(), Code::InvalidArgument);
    assert!(not_json.message().contains("not JSON"), "{}", not_json.message());
    let meta = register(&mut c, "a.b", json!({"type": "strnig"}).to_string()).await.expect_err("meta-schema");
    assert_eq!(meta.code(), Code::InvalidArgument);
    let big = register(&mut c, "a.b", object_schema(json!({"x": {"description": "x".repeat(4096)}})))
        .await
        .expect_err("too large");
    assert_eq!(big.code(), Code::ResourceExhausted);
    let bad_subject = register(&mut c, "Not A Subject", object_schema(json!({}))).await.expect_err("subject");
    assert_eq!(bad_subject.code(), Code::InvalidArgument);
    let missing = c
        .get_schema(GetSchemaRequest { subject: "a.b".into(), ..Default::default() })
        .await
        .expect_err("nothing");
    assert_eq!(missing.code(), Code::NotFound);
    let subjects = c.list_subjects(ListSubjectsRequest::default()).await.expect("list").into_inner().subjects;
    assert!(subjects.is_empty(), "half-written state left: {subjects:?}");
    let no_version = c
        .get_schema(GetSchemaRequest { subject: "a.b".into(), version: 7, ..Default::default() })
        .await
        .expect_err("no version");
    assert_eq!(no_version.code(), Code::NotFound);
}

#[tokio::test]
async fn references_must_exist_and_block_deletion_and_soft_delete_keeps_version_readable() {
    let nats = NatsServer::start();
    let r = Registry::start(registry_config(&nats)).await;
    let mut c = client(&r).await;
    let dangling = json!({"type": "object", "properties": {"p": {"$ref": format!("{BASE}common.person/1")}}});
    let err = register(&mut c, "x.event", dangling.to_string()).await.expect_err("dangling ref");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("common.person/1"), "{}", err.message());

    register(&mut c, "common.person", json!({"type": "object", "required": ["name"]}).to_string())
        .await
        .expect("person");
    register(&mut c, "x.event", dangling.to_string()).await.expect("now resolvable");
    let check = c
        .validate_payload(ValidatePayloadRequest {
            subject: "x.event".into(),
            version: 0,
            payload: br#"{"p": {}}"#.to_vec(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(!check.valid, "the referenced schema is enforced");
    assert_eq!(check.violations[0].pointer, "/p");

    let refused = c
        .delete_schema_version(DeleteSchemaVersionRequest {
            subject: "common.person".into(),
            version: 1,
            permanent: false,
        })
        .await
        .expect_err("referenced");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    c.delete_schema_version(DeleteSchemaVersionRequest {
        subject: "x.event".into(),
        version: 1,
        permanent: false,
    })
    .await
    .expect("soft delete");
    let soft = c
        .get_schema(GetSchemaRequest { subject: "x.event".into(), version: 1, ..Default::default() })
        .await
        .expect("still readable")
        .into_inner();
    assert!(soft.deleted);
    let latest = c.get_schema(GetSchemaRequest { subject: "x.event".into(), ..Default::default() }).await;
    assert_eq!(latest.expect_err("no live version").code(), Code::NotFound);
    c.delete_schema_version(DeleteSchemaVersionRequest {
        subject: "x.event".into(),
        version: 1,
        permanent: true,
    })
    .await
    .expect("permanent delete");
    let gone =
        c.get_schema(GetSchemaRequest { subject: "x.event".into(), version: 1, ..Default::default() }).await;
    assert_eq!(gone.expect_err("gone").code(), Code::NotFound);
    // Nothing references common.person any more.
    c.delete_schema_version(DeleteSchemaVersionRequest {
        subject: "common.person".into(),
        version: 1,
        permanent: false,
    })
    .await
    .expect("now deletable");
}

#[tokio::test]
async fn concurrent_registration_on_two_instances_loses_and_doubles_nothing() {
    let nats = NatsServer::start();
    let a = Registry::start(registry_config(&nats)).await;
    let b = Registry::start(registry_config(&nats)).await;
    let mut admin = client(&a).await;
    admin
        .set_compatibility(SetCompatibilityRequest {
            subject: String::new(),
            mode: CompatibilityMode::None as i32,
        })
        .await
        .expect("global none");
    let mut tasks = Vec::new();
    for i in 0..24u32 {
        let endpoint = if i % 2 == 0 { a.endpoint() } else { b.endpoint() };
        tasks.push(tokio::spawn(async move {
            let mut c = SchemaRegistryClient::connect(endpoint).await.expect("connect");
            let schema = object_schema(json!({format!("field{i}"): {"type": "integer"}}));
            // A caller may be told to retry under heavy contention (ABORTED); it must succeed eventually.
            loop {
                match register(&mut c, "race.subject", schema.clone()).await {
                    Ok(r) => return (i, r.version, r.id),
                    Err(s) if s.code() == Code::Aborted => continue,
                    Err(s) => panic!("registration {i} failed: {s}"),
                }
            }
        }));
    }
    let mut versions = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for t in tasks {
        let (_, v, id) = t.await.expect("task");
        assert!(versions.insert(v), "version {v} handed out twice");
        assert!(ids.insert(id), "id {id} handed out twice");
    }
    assert_eq!(versions, (1..=24).collect::<BTreeSet<u32>>(), "versions are dense: none lost");
    // Both instances agree on the subject's versions.
    let mut cb = client(&b).await;
    let listed = wait::until("instance b sees all 24 versions", Duration::from_secs(5), || {
        let mut cb = cb.clone();
        async move {
            let v = cb
                .list_versions(ListVersionsRequest { subject: "race.subject".into(), include_deleted: false })
                .await
                .ok()?
                .into_inner()
                .versions;
            (v.len() == 24).then_some(v)
        }
    })
    .await;
    assert_eq!(listed, (1..=24).collect::<Vec<u32>>());
    let via_a = admin
        .list_versions(ListVersionsRequest { subject: "race.subject".into(), include_deleted: false })
        .await
        .expect("a")
        .into_inner()
        .versions;
    assert_eq!(via_a, listed);
    drop(cb.list_subjects(ListSubjectsRequest::default()).await);
}

#[tokio::test]
async fn schema_registered_on_one_instance_validates_on_another_within_a_second() {
    let nats = NatsServer::start();
    let a = Registry::start(registry_config(&nats)).await;
    let b = Registry::start(registry_config(&nats)).await;
    let mut ca = client(&a).await;
    register(&mut ca, "sync.check", json!({"type": "object", "required": ["n"]}).to_string())
        .await
        .expect("register");
    let cb = client(&b).await;
    wait::until("instance b validates with the new schema", Duration::from_secs(1), || {
        let mut cb = cb.clone();
        async move {
            let r = cb
                .validate_payload(ValidatePayloadRequest {
                    subject: "sync.check".into(),
                    version: 0,
                    payload: b"{}".to_vec(),
                })
                .await
                .ok()?
                .into_inner();
            (!r.valid).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn compatibility_modes_apply_per_subject_and_report_every_problem_with_pointers() {
    let nats = NatsServer::start();
    let r = Registry::start(registry_config(&nats)).await;
    let mut c = client(&r).await;
    let closed = |props: serde_json::Value, required: serde_json::Value| {
        json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
            .to_string()
    };
    // v1: a closed model with one required field.
    register(&mut c, "compat.case", closed(json!({"a": {"type": "string"}}), json!(["a"])))
        .await
        .expect("v1");
    let mode = c
        .get_compatibility(GetCompatibilityRequest { subject: "compat.case".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (mode.mode, mode.inherited),
        (CompatibilityMode::Backward as i32, true),
        "BACKWARD by default"
    );

    // Adding a required field and narrowing a type breaks BACKWARD: both problems reported.
    let breaking = closed(json!({"a": {"type": "integer"}, "b": {"type": "string"}}), json!(["a", "b"]));
    let check = c
        .check_compatibility(CheckCompatibilityRequest {
            subject: "compat.case".into(),
            schema: breaking.clone(),
            version: 0,
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!check.compatible);
    let pointers: Vec<&str> = check.incompatibilities.iter().map(|i| i.pointer.as_str()).collect();
    assert!(pointers.iter().any(|p| p.starts_with("/properties/a")), "{pointers:?}");
    assert!(check.incompatibilities.len() >= 2, "{:?}", check.incompatibilities);
    assert!(check.incompatibilities.iter().all(|i| i.against_version == 1 && !i.message.is_empty()));
    let refused =
        register(&mut c, "compat.case", breaking.clone()).await.expect_err("refused under BACKWARD");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // An optional field added to a closed model is backward compatible...
    let v2 = closed(json!({"a": {"type": "string"}, "c": {"type": "string"}}), json!(["a"]));
    register(&mut c, "compat.case", v2).await.expect("v2 under BACKWARD");
    // ...but not forward compatible: switch the subject to FORWARD and the same kind of change is refused.
    c.set_compatibility(SetCompatibilityRequest {
        subject: "compat.case".into(),
        mode: CompatibilityMode::Forward as i32,
    })
    .await
    .expect("set FORWARD");
    let v3 = closed(
        json!({"a": {"type": "string"}, "c": {"type": "string"}, "d": {"type": "string"}}),
        json!(["a"]),
    );
    let err = register(&mut c, "compat.case", v3).await.expect_err("refused under FORWARD");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Transitive modes check every live version, not only the latest.
    c.set_compatibility(SetCompatibilityRequest {
        subject: "compat.t".into(),
        mode: CompatibilityMode::None as i32,
    })
    .await
    .expect("NONE");
    register(
        &mut c,
        "compat.t",
        json!({"type": "object", "properties": {"x": {"type": "integer"}}}).to_string(),
    )
    .await
    .expect("t1");
    register(
        &mut c,
        "compat.t",
        json!({"type": "object", "properties": {"x": {"type": "string"}}}).to_string(),
    )
    .await
    .expect("t2");
    let candidate =
        json!({"type": "object", "properties": {"x": {"type": "string", "maxLength": 100}}}).to_string();
    c.set_compatibility(SetCompatibilityRequest {
        subject: "compat.t".into(),
        mode: CompatibilityMode::Forward as i32,
    })
    .await
    .expect("FORWARD");
    let plain = c
        .check_compatibility(CheckCompatibilityRequest {
            subject: "compat.t".into(),
            schema: candidate.clone(),
            version: 0,
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    assert!(plain.compatible, "against the latest only: {:?}", plain.incompatibilities);
    c.set_compatibility(SetCompatibilityRequest {
        subject: "compat.t".into(),
        mode: CompatibilityMode::ForwardTransitive as i32,
    })
    .await
    .expect("FORWARD_TRANSITIVE");
    let transitive = c
        .check_compatibility(CheckCompatibilityRequest {
            subject: "compat.t".into(),
            schema: candidate,
            version: 0,
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!transitive.compatible, "version 1 (integer) is checked too");
    assert!(transitive.incompatibilities.iter().any(|i| i.against_version == 1));
}

#[tokio::test]
async fn formats_are_asserted_including_japanese_identifiers() {
    let nats = NatsServer::start();
    let r = Registry::start(registry_config(&nats)).await;
    let mut c = client(&r).await;
    let schema = json!({"type": "object", "properties": {
        "d": {"type": "string", "format": "date"}, "t": {"type": "string", "format": "date-time"},
        "e": {"type": "string", "format": "email"}, "u": {"type": "string", "format": "uri"},
        "m": {"type": "string", "format": "my-number"}, "c": {"type": "string", "format": "corporate-number"}}});
    register(&mut c, "formats.check", schema.to_string()).await.expect("register");
    let validate = |payload: serde_json::Value| {
        let mut c = c.clone();
        async move {
            c.validate_payload(ValidatePayloadRequest {
                subject: "formats.check".into(),
                version: 0,
                payload: payload.to_string().into_bytes(),
            })
            .await
            .expect("validate")
            .into_inner()
        }
    };
    let good = validate(
        json!({"d": "2024-02-29", "t": "2026-11-27T10:02:00+09:00", "e": "kakari@city.shibuya.tokyo.jp",
        "u": "https://www.digital.go.jp/", "m": "123456789018", "c": "7000012050002"}),
    )
    .await;
    assert!(good.valid, "{:?}", good.violations);
    for (field, bad) in [
        ("d", "2023-02-29"),
        ("t", "2026-11-27 10:02"),
        ("e", "not-an-email"),
        ("u", "no scheme"),
        ("m", "123456789012"),
        ("c", "8000012050002"),
    ] {
        let r = validate(json!({ field: bad })).await;
        assert!(!r.valid, "{field}={bad} should fail");
        assert_eq!(r.violations[0].pointer, format!("/{field}"));
        assert!(
            !r.violations[0].message.contains(bad),
            "the value is never quoted: {}",
            r.violations[0].message
        );
    }
}

#[tokio::test]
async fn every_draft_2020_12_format_registers_and_idn_formats_are_asserted() {
    let nats = NatsServer::start();
    let r = Registry::start(registry_config(&nats)).await;
    let mut c = client(&r).await;
    let formats = [
        "date-time",
        "date",
        "time",
        "duration",
        "email",
        "idn-email",
        "hostname",
        "idn-hostname",
        "ipv4",
        "ipv6",
        "uri",
        "uri-reference",
        "iri",
        "iri-reference",
        "uuid",
        "uri-template",
        "json-pointer",
        "relative-json-pointer",
        "regex",
    ];
    let props: serde_json::Map<String, serde_json::Value> =
        formats.iter().map(|f| (f.to_string(), json!({"type": "string", "format": f}))).collect();
    let done = register(&mut c, "formats.standard", object_schema(props.into())).await.expect("register");
    assert!(done.warnings.is_empty(), "every 2020-12 format is known: {:?}", done.warnings);
    let validate = |payload: serde_json::Value| {
        let mut c = c.clone();
        async move {
            c.validate_payload(ValidatePayloadRequest {
                subject: "formats.standard".into(),
                version: 0,
                payload: payload.to_string().into_bytes(),
            })
            .await
            .expect("validate")
            .into_inner()
        }
    };
    let good =
        validate(json!({"idn-email": "職員@市役所.example.jp", "idn-hostname": "市役所.example.jp"})).await;
    assert!(good.valid, "{:?}", good.violations);
    for (field, bad) in [("idn-email", "職員@@市役所"), ("idn-hostname", "-市役所-.jp")] {
        let r = validate(json!({ field: bad })).await;
        assert!(!r.valid, "{field}={bad} should fail");
        assert_eq!(r.violations[0].pointer, format!("/{field}"));
    }
}

#[tokio::test]
async fn unknown_format_is_an_annotation_reported_as_a_warning() {
    let nats = NatsServer::start();
    let r = Registry::start(registry_config(&nats)).await;
    let mut c = client(&r).await;
    let schema = json!({"type": "object", "properties": {
        "x": {"type": "string", "format": "x-unknown"},
        "m": {"type": "string", "format": "my-number"},
        "typo": {"type": "string", "format": "my-numbr"},
        // Data, not schemas: never reported.
        "k": {"const": {"format": "x-in-const"}}}});
    let done = register(&mut c, "formats.unknown", schema.to_string()).await.expect("accepted");
    assert_eq!(done.version, 1);
    // One warning per unknown format, naming it and where it is; never "Unknown format".
    let mut warnings = done.warnings.clone();
    warnings.sort();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("\"my-numbr\"") && warnings[0].contains("/properties/typo/format"));
    assert!(warnings[1].contains("\"x-unknown\"") && warnings[1].contains("/properties/x/format"));
    let again = register(&mut c, "formats.unknown", schema.to_string()).await.expect("again");
    assert_eq!((again.created, again.warnings.len()), (false, 2), "re-registering warns again");
    let check = c
        .validate_payload(ValidatePayloadRequest {
            subject: "formats.unknown".into(),
            version: 0,
            payload: json!({"x": "anything at all", "m": "123456789012"}).to_string().into_bytes(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(!check.valid, "the custom format is still asserted");
    assert_eq!(check.violations.len(), 1, "{:?}", check.violations);
    assert_eq!(check.violations[0].pointer, "/m", "the unknown format is not asserted");
}
