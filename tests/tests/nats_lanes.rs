//! No department gets past its own lane on NATS itself: the bypasses of issue 10, each tried
//! without credentials and with a department's own credentials against a nats-server running
//! the configuration `kakehashi nats config` generates, and each refused — while the same
//! department's legitimate publish through the SDK is validated and delivered. Also the known
//! ways around subject permissions inside one account (a consumer whose deliver subject points
//! into a stream, a pull request whose reply subject does), tried by the adapter's identity; a
//! publish onto a department's ingress by the operator's identity; and deletes of audit records
//! by every identity.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kakehashi_adapter::sdk::Bus;
use kakehashi_ctl::nats_config::permissions::Service;
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use kakehashi_tests::bus::{self, Flow, Subscriber};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

const TYPE: &str = "test.lanes.recorded";
const SOURCE: &str = "city-shibuya";
const OTHER: &str = "nta";
const READER: &str = "mhlw";
const FLOW: Flow = Flow {
    event_type: TYPE,
    policy: TYPE,
    producers: &[SOURCE, OTHER],
    reader: READER,
    subscription: "lanes",
};
/// How long a refused operation is given to show any effect.
const SETTLE: Duration = Duration::from_millis(600);

struct Lanes {
    nats: NatsServer,
    registry: Registry,
    admin: jetstream::Context,
}

async fn lanes() -> Lanes {
    let nats = NatsServer::start();
    nats.expect_violations();
    let registry = Registry::start(registry_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let admin = bus::jetstream(&nats).await;
    Lanes { nats, registry, admin }
}

/// A client with `creds` (none = anonymous) and the server errors it is sent.
async fn connect(
    nats: &NatsServer,
    creds: Option<&Path>,
) -> Result<(async_nats::Client, mpsc::UnboundedReceiver<String>), async_nats::ConnectError> {
    let auth = NatsAuthConfig { credentials: creds.map(Path::to_path_buf), ..Default::default() };
    let (tx, rx) = mpsc::unbounded_channel();
    let client = auth
        .options("lanes-test")
        .expect("credentials")
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await?;
    Ok((client, rx))
}

async fn department(nats: &NatsServer, id: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    connect(nats, Some(&nats.department_creds(id))).await.expect("a department connects with its credentials")
}

/// Waits for the server to refuse something on `subject`.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return e;
            }
        }
        String::new()
    })
    .await
    .unwrap_or_default();
    assert!(!got.is_empty(), "no permissions violation reported for {subject}");
}

async fn publish_as_department(nats: &NatsServer, id: &str, n: u64) -> String {
    let sdk =
        Bus::builder(nats.url(), id).credentials(nats.department_creds(id)).connect().await.expect("sdk");
    let ack =
        sdk.publish(bus::event(id, TYPE, n as usize)).await.expect("a department's own publish is confirmed");
    ack.event_id
}

#[tokio::test]
async fn anonymous_and_unknown_identities_cannot_connect() {
    let nats = NatsServer::start();
    nats.expect_violations();
    let err = connect(&nats, None).await.err().map(|e| e.to_string()).expect("anonymous is refused");
    assert!(err.to_lowercase().contains("authorization"), "{err}");

    // A well-formed identity the server was never told about.
    let stranger = NatsServer::start_with_departments(&[SOURCE]);
    let err = connect(&nats, Some(&stranger.department_creds(SOURCE)))
        .await
        .err()
        .map(|e| e.to_string())
        .expect("an unknown nkey is refused");
    assert!(err.to_lowercase().contains("authorization"), "{err}");

    // A department the server knows, connecting with no credentials file: anonymous again.
    let sdk = Bus::builder(nats.url(), SOURCE).check_types(false).topology(None).connect().await;
    let err = sdk.err().map(|e| e.to_string()).expect("the SDK without credentials is refused");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
}

#[tokio::test]
async fn a_department_reads_no_events_streams_or_other_inboxes_yet_its_own_publish_is_delivered() {
    let l = lanes().await;
    let mut subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    let (snoop, mut errors) = department(&l.nats, OTHER).await;

    // 1. Raw events (with raw My Numbers) on kh.ev.>, and everything else.
    let mut subs = Vec::new();
    for subject in ["kh.ev.>", "kh.>", ">", "_INBOX.>", "_INBOX.registry.>", "$KV.>"] {
        subs.push(snoop.subscribe(subject).await.expect("the client sends the subscription"));
        expect_violation(&mut errors, subject).await;
    }
    // 2. The streams through the JetStream API: the department's account has none.
    let js = jetstream::new(snoop.clone());
    for stream in ["KH_EVENTS", "KH_DLQ", "KH_AUDIT", "KH_INGRESS"] {
        assert!(js.get_stream(stream).await.is_err(), "{OTHER} must not open {stream}");
    }
    assert!(js.get_key_value("KH_CONFIG").await.is_err());
    // Direct gets: schema versions are the one read granted; nothing else is.
    for api in [
        "$JS.API.DIRECT.GET.KH_EVENTS.kh.ev.test.lanes.recorded",
        "$JS.API.DIRECT.GET.KV_KH_CONFIG.$KV.KH_CONFIG.policy.x",
        "$JS.API.DIRECT.GET.KH_AUDIT",
    ] {
        snoop.publish_with_reply(api, "_INBOX.nta.x", "".into()).await.expect("sent");
        snoop.flush().await.expect("flush");
        expect_violation(&mut errors, api).await;
    }
    let schema = snoop
        .request(format!("$JS.API.DIRECT.GET.KV_KH_SCHEMAS.$KV.KH_SCHEMAS.s.{TYPE}.v.1"), "".into())
        .await
        .expect("a department reads a registered schema version");
    assert!(String::from_utf8_lossy(&schema.payload).contains("schema"), "{schema:?}");

    // The department's own legitimate publish, through the SDK, reaches its reader.
    let id = publish_as_department(&l.nats, SOURCE, 1).await;
    let delivered = subscriber.expect_and_ack("the legitimate event", Duration::from_secs(10)).await;
    assert_eq!(bus::delivered_id(&delivered), id);
    for mut s in subs {
        let leaked = tokio::time::timeout(SETTLE, s.next()).await;
        assert!(!matches!(leaked, Ok(Some(_))), "a refused subscription received a message");
    }
}

#[tokio::test]
async fn a_department_can_neither_forge_validated_events_nor_publish_as_another_department() {
    let l = lanes().await;
    let mut subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    let (dept, mut errors) = department(&l.nats, SOURCE).await;
    let forged = bus::event(SOURCE, TYPE, 7);
    let bytes: bytes::Bytes = prost::Message::encode_to_vec(&forged).into();

    // 3. Straight onto the validated stream.
    let ev = kakehashi_proto::subjects::events(TYPE);
    dept.publish(ev.clone(), bytes.clone()).await.expect("sent");
    dept.flush().await.expect("flush");
    expect_violation(&mut errors, &ev).await;
    // 4. Into another department's ingress.
    let other = kakehashi_proto::subjects::ingress(OTHER, TYPE, "");
    let as_other = bus::event(OTHER, TYPE, 8);
    dept.publish(other.clone(), prost::Message::encode_to_vec(&as_other).into()).await.expect("sent");
    dept.flush().await.expect("flush");
    expect_violation(&mut errors, &other).await;
    // Through JetStream, the publish is refused too, so it is never confirmed.
    let mut js = jetstream::new(dept.clone());
    js.set_timeout(Duration::from_secs(1));
    let ack = async { js.publish(other.clone(), bytes.clone()).await?.await };
    assert!(ack.await.is_err(), "a publish as {OTHER} must not be confirmed");

    tokio::time::sleep(SETTLE).await;
    assert_eq!(bus::stream_len(&l.admin, bus::EVENTS).await, 0, "nothing forged reached KH_EVENTS");
    assert_eq!(bus::stream_len(&l.admin, bus::INGRESS).await, 0, "nothing reached KH_INGRESS as {OTHER}");
    subscriber.expect_nothing_for(SETTLE, "no forged event may be delivered").await;
}

#[tokio::test]
async fn a_department_can_neither_rewrite_policies_nor_delete_consumers_or_messages() {
    let l = lanes().await;
    let id = publish_as_department(&l.nats, SOURCE, 1).await;
    let mut subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    assert_eq!(bus::delivered_id(&subscriber.expect_and_ack("event", Duration::from_secs(10)).await), id);
    let (dept, mut errors) = department(&l.nats, SOURCE).await;

    // 5. Make itself a raw-PII reader by writing the policy bucket.
    let policy_subject = format!("$KV.KH_CONFIG.policy.{}", hex_key(TYPE));
    let forged_policy = serde_json::json!({
        "type_pattern": TYPE, "producers": [SOURCE], "readers": [SOURCE], "raw_pii_readers": [SOURCE]
    });
    dept.publish(policy_subject.clone(), forged_policy.to_string().into()).await.expect("sent");
    dept.flush().await.expect("flush");
    expect_violation(&mut errors, &policy_subject).await;

    // 6. Delete the subscription's consumer, or a stored event, through the JetStream API.
    let consumer_name = "sub_mhlw_lanes";
    for api in [
        format!("$JS.API.CONSUMER.DELETE.KH_EVENTS.{consumer_name}"),
        "$JS.API.STREAM.MSG.DELETE.KH_EVENTS".to_string(),
        "$JS.API.STREAM.PURGE.KH_EVENTS".to_string(),
    ] {
        dept.publish(api.clone(), r#"{"seq":1}"#.into()).await.expect("sent");
        dept.flush().await.expect("flush");
        expect_violation(&mut errors, &api).await;
    }
    tokio::time::sleep(SETTLE).await;
    let consumer = l.admin.get_stream("KH_EVENTS").await.expect("stream").consumer_info(consumer_name).await;
    assert!(consumer.is_ok(), "the subscription's consumer survives");
    assert_eq!(bus::stream_len(&l.admin, bus::EVENTS).await, 1, "the event survives");
    let policies = l.admin.get_key_value("KH_CONFIG").await.expect("bucket");
    let mut keys = policies.keys().await.expect("keys");
    while let Some(Ok(k)) = keys.next().await {
        if k.starts_with("policy.") {
            let v = policies.get(&k).await.expect("get").expect("value");
            assert!(!String::from_utf8_lossy(&v).contains(&format!("\"raw_pii_readers\":[\"{SOURCE}\"]")));
        }
    }
}

/// The registry stores policies under a key derived from the pattern; any key under
/// `policy.` is refused anyway, so the exact encoding does not matter to this test.
fn hex_key(pattern: &str) -> String {
    pattern.replace('.', "_")
}

#[tokio::test]
async fn the_adapter_identity_cannot_inject_into_streams_through_consumers_or_pull_replies() {
    let l = lanes().await;
    let id = publish_as_department(&l.nats, SOURCE, 1).await;
    let mut subscriber: Subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    assert_eq!(bus::delivered_id(&subscriber.expect_and_ack("event", Duration::from_secs(10)).await), id);
    drop(subscriber);
    let (adapter, mut errors) =
        connect(&l.nats, Some(&l.nats.generated().service(Service::Adapter))).await.expect("adapter");
    let js = jetstream::new(adapter.clone());
    let ingress_before = bus::stream_len(&l.admin, bus::INGRESS).await;

    // Inside the bus account too, no identity reads another's replies (JetStream reads of the
    // registry carry event payloads) or the streams' subjects.
    let mut snoops = Vec::new();
    for subject in ["_INBOX.registry.>", "_INBOX.>", "kh.ev.>", "kh.in.>"] {
        snoops.push(adapter.subscribe(subject).await.expect("the client sends the subscription"));
        expect_violation(&mut errors, subject).await;
    }

    // A push consumer on KH_EVENTS delivering into another department's ingress (nats-server
    // does not check a deliver subject against its creator's permissions).
    let created = jetstream::new(adapter.clone())
        .create_consumer_on_stream(
            consumer::push::Config {
                deliver_subject: kakehashi_proto::subjects::ingress(OTHER, TYPE, ""),
                filter_subject: "kh.ev.>".into(),
                ..Default::default()
            },
            "KH_EVENTS",
        )
        .await;
    assert!(created.is_err(), "the adapter must not create consumers on KH_EVENTS");
    expect_violation(&mut errors, "$JS.API.CONSUMER.CREATE.KH_EVENTS").await;

    // A pull request for the subscription's consumer whose reply subject is an ingress subject.
    let next = "$JS.API.CONSUMER.MSG.NEXT.KH_EVENTS.sub_mhlw_lanes";
    adapter
        .publish_with_reply(
            next,
            kakehashi_proto::subjects::ingress(OTHER, TYPE, ""),
            r#"{"batch":10}"#.into(),
        )
        .await
        .expect("sent");
    adapter.flush().await.expect("flush");
    expect_violation(&mut errors, next).await;
    assert!(js.get_stream("KH_EVENTS").await.is_ok(), "stream info is allowed (topology checks)");

    tokio::time::sleep(SETTLE).await;
    assert_eq!(bus::stream_len(&l.admin, bus::INGRESS).await, ingress_before, "nothing was injected");
    let consumers: Vec<_> =
        l.admin.get_stream("KH_EVENTS").await.expect("stream").consumer_names().collect().await;
    assert_eq!(consumers.len(), 1, "only the subscription's consumer exists: {consumers:?}");
}

/// The last sequence `stream` ever stored (a work queue's messages leave once validated; its
/// sequence stays).
async fn last_sequence(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    s.info().await.unwrap_or_else(|e| panic!("stream {stream} info: {e}")).state.last_sequence
}

#[tokio::test]
async fn the_operator_identity_cannot_publish_onto_any_departments_ingress() {
    let l = lanes().await;
    let mut subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    let (operator, mut errors) =
        connect(&l.nats, Some(&l.nats.generated().service(Service::Operator))).await.expect("operator");
    let ingress_before = last_sequence(&l.admin, bus::INGRESS).await;
    let forged = bus::event(OTHER, TYPE, 9);
    let bytes: bytes::Bytes = prost::Message::encode_to_vec(&forged).into();

    // The validator takes the source from the subject: a publish here would be OTHER's event.
    // (Dead letters go back to ingress through the registry's `DeadLetters` API instead.)
    for subject in [format!("kh.in.{OTHER}._0.{TYPE}"), kakehashi_proto::subjects::ingress(OTHER, TYPE, "")] {
        operator.publish(subject.clone(), bytes.clone()).await.expect("sent");
        operator.flush().await.expect("flush");
        expect_violation(&mut errors, &subject).await;
    }
    // Through JetStream, the publish is refused too, so it is never confirmed.
    let mut js = jetstream::new(operator.clone());
    js.set_timeout(Duration::from_secs(1));
    let subject = kakehashi_proto::subjects::ingress(SOURCE, TYPE, "");
    let ack = async { js.publish(subject, bytes.clone()).await?.await };
    assert!(ack.await.is_err(), "the operator's publish onto ingress must not be confirmed");
    // What the operator keeps: reading the dead letters and the audit trail.
    kakehashi_ctl::commands::dlq::read_all(&js, "kh.dlq.>").await.expect("the operator lists dead letters");
    kakehashi_ctl::commands::audit::read_all(&js).await.expect("the operator reads the audit trail");

    tokio::time::sleep(SETTLE).await;
    assert_eq!(last_sequence(&l.admin, bus::INGRESS).await, ingress_before, "nothing reached KH_INGRESS");
    assert_eq!(bus::stream_len(&l.admin, bus::EVENTS).await, 0, "nothing forged reached KH_EVENTS");
    subscriber.expect_nothing_for(SETTLE, "no forged event may be delivered").await;
}

#[tokio::test]
async fn the_operator_reads_by_direct_get_alone_and_no_reply_it_names_reaches_the_bus() {
    let l = lanes().await;
    let id = publish_as_department(&l.nats, SOURCE, 1).await;
    let mut subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    assert_eq!(bus::delivered_id(&subscriber.expect_and_ack("event", Duration::from_secs(10)).await), id);
    let (operator, mut errors) =
        connect(&l.nats, Some(&l.nats.generated().service(Service::Operator))).await.expect("operator");
    let js = jetstream::new(operator.clone());
    let trail =
        kakehashi_tests::wait::until("the operator reads the trail", Duration::from_secs(10), || async {
            let records = kakehashi_ctl::commands::audit::read_all(&js).await.ok()?;
            (!records.is_empty()).then_some(records)
        })
        .await;
    let ingress_before = last_sequence(&l.admin, bus::INGRESS).await;
    let events_before = last_sequence(&l.admin, bus::EVENTS).await;

    // Stored records answered onto another department's ingress and onto KH_EVENTS: inside the
    // bus account this put the trail's bytes there (nats-server checks no reply subject). The
    // answers now land on those subjects in the operator's own account, where nothing listens.
    let get = "$JS.API.DIRECT.GET.KH_AUDIT";
    let batch = format!(r#"{{"seq":1,"batch":{}}}"#, trail.len());
    for reply in [kakehashi_proto::subjects::ingress(OTHER, TYPE, ""), format!("kh.ev.{TYPE}")] {
        operator.publish_with_reply(get, reply, batch.clone().into()).await.expect("sent");
    }
    operator.flush().await.expect("flush");

    // No consumer, so no deliver subject to point anywhere; no other JetStream API either.
    let created = js
        .create_consumer_on_stream(
            consumer::push::Config {
                deliver_subject: kakehashi_proto::subjects::ingress(OTHER, TYPE, ""),
                ..Default::default()
            },
            "KH_DLQ",
        )
        .await;
    assert!(created.is_err(), "the operator must not create consumers");
    expect_violation(&mut errors, "$JS.API.CONSUMER.CREATE.KH_DLQ").await;

    tokio::time::sleep(SETTLE).await;
    assert_eq!(last_sequence(&l.admin, bus::INGRESS).await, ingress_before, "nothing reached KH_INGRESS");
    assert_eq!(last_sequence(&l.admin, bus::EVENTS).await, events_before, "nothing reached KH_EVENTS");
    subscriber.expect_nothing_for(SETTLE, "nothing injected may be delivered").await;
}

#[tokio::test]
async fn no_identity_can_delete_or_purge_audit_records() {
    let l = lanes().await;
    let id = publish_as_department(&l.nats, SOURCE, 1).await;
    let mut subscriber = FLOW.open(&l.registry.endpoint(), 16).await;
    assert_eq!(bus::delivered_id(&subscriber.expect_and_ack("event", Duration::from_secs(10)).await), id);
    // The whole trail of the event (its last hop, the ack, stored), so nothing more arrives.
    kakehashi_tests::wait::until("the ack in the audit trail", Duration::from_secs(10), || async {
        let records = kakehashi_ctl::commands::audit::read_all(&l.admin).await.ok()?;
        records.into_iter().flat_map(|(_, r)| r.into_hops()).any(|h| h.hop == "acked").then_some(())
    })
    .await;
    let before = bus::stream_len(&l.admin, "KH_AUDIT").await;

    for service in [Service::Registry, Service::Adapter, Service::Operator] {
        let (client, mut errors) =
            connect(&l.nats, Some(&l.nats.generated().service(service))).await.expect("service connects");
        for api in [
            "$JS.API.STREAM.MSG.DELETE.KH_AUDIT",
            "$JS.API.STREAM.PURGE.KH_AUDIT",
            "$JS.API.STREAM.DELETE.KH_AUDIT",
        ] {
            client.publish(api, r#"{"seq":1}"#.into()).await.expect("sent");
            client.flush().await.expect("flush");
            expect_violation(&mut errors, api).await;
        }
        // Updating the stream (to lift deny_delete) is refused too.
        let update = "$JS.API.STREAM.UPDATE.KH_AUDIT";
        client.publish(update, "{}".into()).await.expect("sent");
        client.flush().await.expect("flush");
        expect_violation(&mut errors, update).await;
    }
    // Even the administrator: the stream itself refuses deletes and purges, for good.
    let audit = l.admin.get_stream("KH_AUDIT").await.expect("stream");
    let err = audit.delete_message(1).await.expect_err("delete refused").to_string();
    assert!(err.contains("not permitted"), "{err}");
    assert!(audit.purge().await.is_err(), "purge refused");
    let mut config = audit.cached_info().config.clone();
    assert!(config.deny_delete && config.deny_purge, "{config:?}");
    config.deny_delete = false;
    assert!(l.admin.update_stream(config).await.is_err(), "deny_delete cannot be lifted");
    assert_eq!(bus::stream_len(&l.admin, "KH_AUDIT").await, before);
}
