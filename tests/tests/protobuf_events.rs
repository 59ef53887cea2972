//! Protobuf events end to end: protobuf schemas registered over gRPC (with an import of another
//! registered subject), the same vaccination event published once as protobuf bytes and once as
//! canonical proto3 JSON and received by a protobuf reader and a JSON reader, each with its own
//! pseudonym of the My Number (the same for both forms), invalid payloads (bad bytes, an unknown
//! field, a wrong JSON type, a bad check digit, in either form) dead-lettered as
//! `schema_violation` with the field path and the raw bytes, and `.proto` sources that do not
//! compile refused with `INVALID_ARGUMENT` and a location. A proto3 JSON payload naming a field
//! twice (by its two spellings) is dead-lettered, not delivered.

use kakehashi_proto::v1::schema_registry_client::SchemaRegistryClient;
use kakehashi_proto::v1::*;
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::path::PathBuf;
use std::time::Duration;
use tonic::Code;

const TYPE: &str = "health.vaccination.recorded";
const SUBJECT: &str = "health.vaccination.recorded.pb";
const PERSON: &str = "common.person.pb";
/// The My Number in `valid-mr-second-dose.binpb`.
const MY_NUMBER: &[u8] = b"161803398872";
const WAIT: Duration = Duration::from_secs(20);

fn catalogue(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn proto_file(subject: &str) -> ProtoFile {
    let content = String::from_utf8(catalogue(&format!("{subject}/1.proto"))).expect("utf-8");
    ProtoFile { name: format!("{subject}/1.proto"), content }
}

fn protobuf_request(
    subject: &str,
    files: Vec<ProtoFile>,
    message: &str,
    refs: &[(&str, u32)],
) -> RegisterSchemaRequest {
    RegisterSchemaRequest {
        subject: subject.into(),
        schema_type: SchemaType::Protobuf as i32,
        proto_files: files,
        message_name: message.into(),
        references: refs
            .iter()
            .map(|(s, v)| SchemaReference { subject: s.to_string(), version: *v })
            .collect(),
        ..Default::default()
    }
}

/// The shared `Person` message, version 1 of its subject.
fn person_request() -> RegisterSchemaRequest {
    protobuf_request(PERSON, vec![proto_file(PERSON)], "kakehashi.catalogue.common.v1.Person", &[])
}

/// The vaccination event, importing `Person` version 1 by reference.
fn event_request() -> RegisterSchemaRequest {
    protobuf_request(
        SUBJECT,
        vec![proto_file(SUBJECT)],
        "kakehashi.catalogue.health.v1.VaccinationRecorded",
        &[(PERSON, 1)],
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `kh1:` pseudonym inside a delivered protobuf payload (4 + 32 characters).
fn pseudonym_in(data: &[u8]) -> String {
    let at = find(data, b"kh1:").unwrap_or_else(|| panic!("no pseudonym in {data:?}"));
    String::from_utf8(data[at..at + 36].to_vec()).expect("ascii")
}

fn protobuf_event(data: Vec<u8>) -> Event {
    Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: "city-shibuya".into(),
        r#type: TYPE.into(),
        schema: SUBJECT.into(),
        data_content_type: "application/protobuf".into(),
        data,
        // Version 2 retired lot_number: these producers still write it, so they pin version 1
        // (against version 2 the field is unknown, which the bus refuses by default).
        schema_version: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn protobuf_events_are_validated_pseudonymised_per_reader_and_dead_lettered_with_the_field() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let endpoint = registry.endpoint();
    let mut c = SchemaRegistryClient::connect(endpoint.clone()).await.expect("connect");

    // Registration: the shared Person first, then the event importing it by reference.
    let person = c.register_schema(person_request()).await.expect("person registers").into_inner();
    assert_eq!((person.version, person.created), (1, true));
    let request = event_request();
    let first = c.register_schema(request.clone()).await.expect("event registers").into_inner();
    let again = c.register_schema(request.clone()).await.expect("identical").into_inner();
    assert_eq!(
        (again.version, again.id, again.created),
        (first.version, first.id, false),
        "identical content: same version"
    );
    let stored = c
        .get_schema(GetSchemaRequest { subject: SUBJECT.into(), version: 0, id: 0 })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored.schema_type, SchemaType::Protobuf as i32);
    assert_eq!(stored.message_name, "kakehashi.catalogue.health.v1.VaccinationRecorded");
    assert_eq!(stored.references, vec![format!("{PERSON}/1")]);
    assert!(!stored.descriptor_set.is_empty());
    // The referenced version cannot be deleted while the event's schema imports it.
    let held = c
        .delete_schema_version(DeleteSchemaVersionRequest {
            subject: PERSON.into(),
            version: 1,
            permanent: false,
        })
        .await
        .expect_err("referenced");
    assert_eq!(held.code(), Code::FailedPrecondition, "{held:?}");

    // The CLI registers .proto files the same way (`schema register --type protobuf`), names
    // them relative to --proto-root, and derives the JSON Schema of a protobuf subject.
    let conn = kakehashi_tests::services::cli_conn(&endpoint, "", &nats);
    let schemas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let register = kakehashi_ctl::cli::SchemaCommand::Register {
        subject: "common.address.pb".into(),
        source: kakehashi_ctl::cli::SchemaSource {
            files: vec![schemas.join("common.address.pb/1.proto")],
            schema_type: "protobuf".into(),
            message: Some("kakehashi.catalogue.common.v1.Address".into()),
            references: vec![],
            proto_root: Some(schemas.clone()),
            allow_unknown_fields: false,
        },
    };
    kakehashi_ctl::commands::schema::run(&conn, true, register).await.expect("CLI registers .proto");
    let address = c
        .get_schema(GetSchemaRequest { subject: "common.address.pb".into(), version: 1, id: 0 })
        .await
        .expect("registered by the CLI")
        .into_inner();
    assert_eq!(address.proto_files[0].name, "common.address.pb/1.proto");
    let derive = kakehashi_ctl::cli::SchemaCommand::DeriveJson { subject: SUBJECT.into(), version: 1 };
    kakehashi_ctl::commands::schema::run(&conn, true, derive).await.expect("derive-json");

    // Compatibility (BACKWARD by default): dropping a field without reserving its number is
    // refused, with the protobuf kind and a path into the candidate; reserving it is fine.
    let drop_lot = |reserve: &str| {
        let mut r = request.clone();
        r.proto_files[0].content = r.proto_files[0].content.replace("  string lot_number = 4;\n", reserve);
        r
    };
    let check = c
        .check_compatibility(CheckCompatibilityRequest {
            subject: SUBJECT.into(),
            schema_type: SchemaType::Protobuf as i32,
            proto_files: drop_lot("").proto_files,
            message_name: request.message_name.clone(),
            references: request.references.clone(),
            ..Default::default()
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!check.compatible);
    let kinds: Vec<(&str, &str)> =
        check.incompatibilities.iter().map(|i| (i.kind.as_str(), i.pointer.as_str())).collect();
    assert_eq!(
        kinds,
        [("FIELD_REMOVED_NOT_RESERVED", "health.vaccination.recorded.pb/1.proto:Vaccination.lot_number")]
    );
    let refused = c.register_schema(drop_lot("")).await.expect_err("incompatible");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let v2 = c.register_schema(drop_lot("  reserved 4;\n")).await.expect("reserved: compatible").into_inner();
    assert_eq!(v2.version, first.version + 1);
    // A subject keeps its schema type.
    let json = RegisterSchemaRequest {
        subject: SUBJECT.into(),
        schema: r#"{"type":"object"}"#.into(),
        ..Default::default()
    };
    let refused = c.register_schema(json).await.expect_err("type switch");
    assert_eq!(refused.code(), Code::FailedPrecondition, "SCHEMA_TYPE_CHANGED: {refused:?}");

    // Bad sources: refused with INVALID_ARGUMENT, the compiler's message and its location.
    let bad = ProtoFile {
        name: "bad.proto".into(),
        content: "syntax = \"proto3\";\nmessage M {\n  string x = ;\n}\n".into(),
    };
    let refused = c
        .register_schema(protobuf_request("test.bad.pb", vec![bad], "M", &[]))
        .await
        .expect_err("bad syntax");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("bad.proto:3:"), "located: {}", refused.message());
    let unknown_import = ProtoFile {
        name: "u.proto".into(),
        content: "syntax = \"proto3\";\nimport \"common.nobody.pb/1.proto\";\nmessage M {}\n".into(),
    };
    let refused = c
        .register_schema(protobuf_request("test.bad.pb", vec![unknown_import], "M", &[]))
        .await
        .expect_err("import");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("u.proto:2:") && refused.message().contains("common.nobody.pb/1.proto"),
        "{}",
        refused.message()
    );
    let refused = c
        .register_schema(protobuf_request(
            "test.bad.pb",
            vec![proto_file(PERSON)],
            "kakehashi.catalogue.common.v1.Nobody",
            &[],
        ))
        .await
        .expect_err("missing message");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("Nobody"), "{}", refused.message());
    let refused = c
        .register_schema(protobuf_request(
            "test.bad.pb",
            vec![proto_file(SUBJECT)],
            "x.Y",
            &[("common.nobody.pb", 1)],
        ))
        .await
        .expect_err("unknown reference");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // Two readers of the type, neither granted raw My Numbers.
    bus::put_policy(&endpoint, "health.>", &["city-shibuya"], &["mhlw", "nta"]).await;
    // mhlw asks for protobuf, nta for canonical proto3 JSON, whatever the publisher sent.
    let mut as_protobuf = bus::subscription("mhlw", "vax", TYPE);
    as_protobuf.content_type = "application/protobuf".into();
    bus::create_subscription(&endpoint, as_protobuf).await;
    let mut as_json = bus::subscription("nta", "vax", TYPE);
    as_json.content_type = "application/json".into();
    bus::create_subscription(&endpoint, as_json).await;
    let flow = |reader| Flow {
        event_type: TYPE,
        policy: "health.>",
        producers: &["city-shibuya"],
        reader,
        subscription: "vax",
    };
    let mut mhlw = flow("mhlw").open(&endpoint, 16).await;
    let mut nta = flow("nta").open(&endpoint, 16).await;

    let js = bus::jetstream(&nats).await;
    let valid = catalogue("health.vaccination.recorded.pb/examples/valid-mr-second-dose.binpb");
    assert!(find(&valid, MY_NUMBER).is_some(), "the example carries the number");
    let event = protobuf_event(valid.clone());
    bus::publish_ingress(&js, &event).await;
    let d = mhlw.expect_and_ack("the protobuf vaccination event", WAIT).await;
    let got = d.event.expect("event");
    assert_eq!(got.id, event.id);
    assert_eq!(got.data_content_type, "application/protobuf");
    assert!(find(&got.data, MY_NUMBER).is_none(), "the My Number never reaches a reader");
    assert!(find(&got.data, "MR (麻しん風しん混合)".as_bytes()).is_some(), "the rest is untouched");
    let mut tokens = vec![pseudonym_in(&got.data)];
    let mhlw_bytes = got.data.clone();
    let d = nta.expect_and_ack("the same event as JSON", WAIT).await;
    let got = d.event.expect("event");
    assert_eq!((got.id.as_str(), got.data_content_type.as_str()), (event.id.as_str(), "application/json"));
    let json: serde_json::Value = serde_json::from_slice(&got.data).expect("canonical proto3 JSON");
    assert_eq!(json["vaccination"]["doseNumber"], 2, "JSON names, numbers: {json}");
    assert_eq!(json["vaccination"]["lotNumber"], "Y123");
    assert_eq!(json["person"]["sex"], "SEX_FEMALE", "enums by name");
    let token = json["person"]["myNumber"].as_str().expect("pseudonym").to_string();
    assert!(token.starts_with("kh1:"), "pseudonymised before transcoding: {token}");
    tokens.push(token);
    assert_ne!(tokens[0], tokens[1], "two departments: unrelated pseudonyms");
    // Same person again: mhlw gets the same token.
    bus::publish_ingress(&js, &protobuf_event(valid.clone())).await;
    let d = mhlw.expect_and_ack("the second event", WAIT).await;
    assert_eq!(pseudonym_in(&d.event.expect("event").data), tokens[0]);
    let d = nta.expect_and_ack("the second event as JSON", WAIT).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&d.event.expect("event").data).expect("json"),
        json
    );

    // The same event published as canonical proto3 JSON: validated against the same message,
    // stored as sent, pseudonymised by the field option, transcoded for the protobuf reader.
    let mut published = json.clone();
    published["person"]["myNumber"] = std::str::from_utf8(MY_NUMBER).expect("ascii").into();
    let mut as_json_event = protobuf_event(serde_json::to_vec_pretty(&published).expect("json"));
    as_json_event.data_content_type = "application/json".into();
    bus::publish_ingress(&js, &as_json_event).await;
    let d = mhlw.expect_and_ack("the JSON-published event as protobuf", WAIT).await;
    let stored = bus::events_in_events_stream(&js).await;
    let stored = stored.iter().find(|e| e.id == as_json_event.id).expect("in KH_EVENTS");
    assert_eq!(stored.data, as_json_event.data, "KH_EVENTS keeps the JSON bytes as published");
    assert_eq!(stored.data_content_type, "application/json");
    let got = d.event.expect("event");
    assert_eq!(
        (got.id.as_str(), got.data_content_type.as_str()),
        (as_json_event.id.as_str(), "application/protobuf")
    );
    assert!(find(&got.data, MY_NUMBER).is_none(), "the My Number never reaches a reader");
    assert_eq!(pseudonym_in(&got.data), tokens[0], "same person, same reader: same token in both forms");
    assert_eq!(got.data, mhlw_bytes, "the same event as the one published in binary");
    let d = nta.expect_and_ack("the JSON-published event as JSON", WAIT).await;
    let got = d.event.expect("event");
    assert_eq!(
        (got.id.as_str(), got.data_content_type.as_str()),
        (as_json_event.id.as_str(), "application/json")
    );
    assert!(find(&got.data, MY_NUMBER).is_none(), "the My Number never reaches a reader");
    let again: serde_json::Value = serde_json::from_slice(&got.data).expect("JSON");
    assert_eq!(again["person"]["myNumber"], tokens[1].as_str(), "same token per reader in both forms");
    assert_eq!(again, json, "the same event as the one published in binary");

    // Invalid payloads: dead-lettered with the reason, the field path and the raw bytes.
    let cases: [(Vec<u8>, &str, &str); 6] = [
        (
            catalogue("health.vaccination.recorded.pb/examples/invalid-truncated.binpb"),
            "application/protobuf",
            "/municipality_code",
        ),
        (
            catalogue("health.vaccination.recorded.pb/examples/invalid-unknown-field.binpb"),
            "application/protobuf",
            "/#99",
        ),
        (
            catalogue("health.vaccination.recorded.pb/examples/invalid-bad-my-number-check-digit.binpb"),
            "application/protobuf",
            "/person/my_number",
        ),
        (br#"{"person": {"name": "x", "nobody": 1}}"#.to_vec(), "application/json", "/person/nobody"),
        (
            br#"{"vaccination": {"doseNumber": "two"}}"#.to_vec(),
            "application/json",
            "/vaccination/doseNumber",
        ),
        (br#"{"person": {"myNumber": "271828182841"}}"#.to_vec(), "application/json", "/person/myNumber"),
    ];
    for (data, content_type, pointer) in cases {
        let mut e = protobuf_event(data);
        e.data_content_type = content_type.into();
        let raw = bus::publish_ingress(&js, &e).await;
        let stored = bus::wait_dead_letter(&js, &e.id, WAIT).await;
        let l = &stored.letter;
        assert_eq!(l.reason, "schema_violation", "{content_type} {pointer}: {l:?}");
        assert_eq!(l.raw, raw, "the exact bytes received are kept");
        assert_eq!(stored.header("Kh-Reason").as_deref(), Some("schema_violation"));
        let pointers: Vec<&str> = l.violations.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&pointer), "{pointer} in {pointers:?} ({})", l.message);
        assert!(find(l.message.as_bytes(), b"271828182841").is_none(), "no payload value in the message");
        assert!(!l.message.contains("two"), "no payload value in the message: {}", l.message);
    }
    mhlw.expect_nothing_for(Duration::from_millis(500), "invalid events are not delivered").await;
    nta.expect_nothing_for(Duration::from_millis(200), "invalid events are not delivered").await;
}

#[tokio::test]
async fn a_proto3_json_payload_naming_a_field_twice_is_dead_lettered_not_delivered() {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let endpoint = registry.endpoint();
    let mut c = SchemaRegistryClient::connect(endpoint.clone()).await.expect("connect");
    c.register_schema(person_request()).await.expect("person registers");
    c.register_schema(event_request()).await.expect("event registers");
    let flow = Flow {
        event_type: TYPE,
        policy: "health.>",
        producers: &["city-shibuya"],
        reader: "mhlw",
        subscription: "vax",
    };
    bus::put_policy(&endpoint, flow.policy, flow.producers, &[flow.reader]).await;
    bus::create_subscription(&endpoint, bus::subscription(flow.reader, flow.subscription, TYPE)).await;
    let mut mhlw = flow.open(&endpoint, 16).await;
    let js = bus::jetstream(&nats).await;
    let json_event =
        |data: &[u8]| Event { data_content_type: "application/json".into(), ..protobuf_event(data.to_vec()) };

    // Two people's My Numbers in one field, both with correct check digits: accepted before
    // (prost-reflect alone keeps the last spelling), while a reader keeping the first would read
    // the other person. The bus must not pick one for its readers.
    let twice = json_event(
        br#"{"person": {"myNumber": "161803398872", "my_number": "123456789018"}, "municipalityCode": "131130"}"#,
    );
    let raw = bus::publish_ingress(&js, &twice).await;
    let stored = bus::wait_dead_letter(&js, &twice.id, WAIT).await;
    let l = &stored.letter;
    assert_eq!(l.reason, "schema_violation", "{l:?}");
    assert!(l.message.contains("duplicate"), "{}", l.message);
    let pointers: Vec<&str> = l.violations.iter().map(|v| v.pointer.as_str()).collect();
    assert_eq!(pointers, ["/person"], "{}", l.message);
    assert_eq!(l.raw, raw, "the exact bytes received are kept");
    assert!(find(&l.raw, &twice.data).is_some(), "the payload byte for byte");
    for number in [MY_NUMBER, b"123456789018"] {
        assert!(
            find(l.message.as_bytes(), number).is_none(),
            "no payload value in the message: {}",
            l.message
        );
    }

    // The same key next, named once: the first delivery is it.
    let once = json_event(br#"{"person": {"myNumber": "161803398872"}, "municipalityCode": "131130"}"#);
    bus::publish_ingress(&js, &once).await;
    let d = mhlw.expect_and_ack("the event naming the field once", WAIT).await;
    assert_eq!(d.event.expect("event").id, once.id, "the one naming it twice is not delivered");
    mhlw.expect_nothing_for(Duration::from_millis(500), "nothing else is delivered").await;
}
