//! Vaccination certificates end to end (docs/certificates.md): a municipality's record and a
//! citizen's request go through NATS, the registry and the adapter to the issuer department
//! (`kakehashi_issuer::service`, in-process, over the public gRPC interfaces); its answer comes
//! back through the bus. Checked: the card verifies against the JWK Set fetched over HTTPS from
//! the running issuer (with CORS), a request without records is refused and gets no card, an
//! issuer killed between receiving a request and publishing answers exactly once after a
//! restart, the issuer only ever holds pseudonyms, and a record published in its protobuf form
//! gives the same card as its JSON twin.

use kakehashi_ctl::https_client::Fetcher;
use kakehashi_issuer::service::config::IssuerConfig;
use kakehashi_issuer::service::{ids, ServiceError};
use kakehashi_issuer::{Jwks, RevocationList, Verifier, VerifyOptions};
use kakehashi_proto::v1::*;
use kakehashi_tests::bus::{self, Subscriber};
use kakehashi_tests::services::{adapter_config, cli_conn, registry_config};
use kakehashi_tests::{wait, Adapter, NatsServer, Registry};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ISSUER: &str = "digital-agency-issuer";
const PORTAL: &str = "mynaportal";
const MUNICIPALITY: &str = "city-shibuya";
const RECORDED: &str = "health.vaccination.recorded";
const REQUESTED: &str = "health.vaccination.certificate.requested";
const ISSUED: &str = "health.vaccination.certificate.issued";
const REFUSED: &str = "health.vaccination.certificate.refused";
/// The demo resident's My Number (fictional, valid check digit).
const MY_NUMBER: &str = "161803398872";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(subject: &str, name: &str) -> serde_json::Value {
    let path = repo().join("schemas").join(subject).join("examples").join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("example")).expect("example JSON")
}

/// NATS, registry and adapter with the catalogue and the demo policies loaded.
async fn bus() -> (NatsServer, Registry, Adapter) {
    let nats = NatsServer::start();
    let registry = Registry::start(registry_config(&nats)).await;
    let adapter = Adapter::start(adapter_config(&nats)).await;
    let conn = cli_conn(&registry.endpoint(), &adapter.endpoint(), &nats);
    let mut schemas = kakehashi_ctl::clients::registry(&conn).await.expect("connect registry");
    kakehashi_ctl::commands::schema::load(&mut schemas, &repo().join("schemas"), true)
        .await
        .expect("catalogue");
    kakehashi_ctl::commands::policy::load_file(&conn, &repo().join("deploy/demo/policies.toml"))
        .await
        .expect("demo policies");
    (nats, registry, adapter)
}

/// A running issuer: stopped gracefully with `stop`, or killed with `kill` (task aborted).
struct Issuer {
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    url: String,
    config: IssuerConfig,
}

impl Issuer {
    async fn start(config: IssuerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let c = config.clone();
        let task = tokio::spawn(async move {
            kakehashi_issuer::service::run_with_listener(c, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Self { task, stop: Some(stop), url, config }
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("issuer did not stop cleanly: {other:?}"),
        }
    }

    /// The client a verifier uses, trusting the issuer's development CA.
    fn fetcher(&self) -> Fetcher {
        Fetcher::new(Some(&self.config.dev_ca_file())).expect("the issuer's development CA")
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.config.state_file()).unwrap_or_default()
    }
}

/// An issuer on this bus. A request for a person without records is held `REFUSE_AFTER_MS`
/// (a record published just before it may still be in validation on another partition).
fn issuer_config(data_dir: &Path, registry: &Registry, adapter_url: &str) -> IssuerConfig {
    IssuerConfig {
        registry_url: registry.endpoint(),
        adapter_url: adapter_url.to_string(),
        data_dir: data_dir.to_path_buf(),
        refuse_after_ms: REFUSE_AFTER_MS,
        ..IssuerConfig::default()
    }
}

/// Long enough for any record published before a request to arrive on a loaded machine.
const REFUSE_AFTER_MS: u64 = 10_000;

/// Publishes through the adapter as `source`; returns the event id.
async fn publish(adapter: &str, source: &str, event_type: &str, data: &serde_json::Value) -> String {
    let mut c =
        publisher_client::PublisherClient::connect(adapter.to_string()).await.expect("connect adapter");
    c.publish(Event {
        source: source.into(),
        r#type: event_type.into(),
        data: data.to_string().into_bytes(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("publish {event_type}: {e}"))
    .into_inner()
    .event_id
}

/// The portal's subscription to the issuer's answers of one type.
async fn portal_subscription(registry: &Registry, name: &str, event_type: &str) -> Subscriber {
    bus::create_subscription(&registry.endpoint(), bus::subscription(PORTAL, name, event_type)).await;
    Subscriber::expect_open(&registry.endpoint(), PORTAL, name, 8).await
}

/// The next answer whose `request_id` is `request_id` (others are acked and skipped).
async fn answer_to(sub: &mut Subscriber, request_id: &str) -> Event {
    loop {
        let d = sub.expect_and_ack(&format!("the answer to {request_id}"), Duration::from_secs(30)).await;
        let event = d.event.expect("event");
        let data: serde_json::Value = serde_json::from_slice(&event.data).expect("json");
        if data["request_id"] == request_id {
            return event;
        }
    }
}

fn request_for_demo_resident() -> serde_json::Value {
    example(REQUESTED, "valid-overseas-child.json")
}

fn record(date: &str, vaccine: &str, dose: u32, lot: &str) -> serde_json::Value {
    let mut r = example(RECORDED, "valid-mr-second-dose.json");
    r["vaccination"] =
        serde_json::json!({"date": date, "vaccine": vaccine, "dose_number": dose, "lot_number": lot});
    r
}

#[tokio::test]
async fn a_recorded_vaccination_and_a_request_give_a_card_that_verifies_with_the_jwks_served_over_https() {
    let (nats, registry, adapter) = bus().await;
    let data = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::start(issuer_config(data.path(), &registry, &adapter.endpoint())).await;
    let mut issued = portal_subscription(&registry, "issued", ISSUED).await;

    publish(&adapter.endpoint(), MUNICIPALITY, RECORDED, &example(RECORDED, "valid-mr-second-dose.json"))
        .await;
    // Published right after the record: the issuer must hold it until the record is stored.
    let request_id = publish(&adapter.endpoint(), PORTAL, REQUESTED, &request_for_demo_resident()).await;
    let event = answer_to(&mut issued, &request_id).await;

    assert_eq!(event.id, ids::issued_event_id(&request_id), "the event id derives from the request id");
    assert_eq!(event.source, ISSUER);
    let payload: serde_json::Value = serde_json::from_slice(&event.data).expect("json");
    let certificate_id = ids::certificate_id(&request_id);
    assert_eq!(payload["certificate_id"], certificate_id.as_str());
    assert_eq!(payload["holder"]["family_name"], "TAKAHASHI");
    assert_eq!(payload["passport_number"], "TR1234567");
    assert_eq!(payload["issuer_municipality_code"], "131130");
    assert!(payload.get("person").is_none(), "the issuer states no My Number: {payload}");
    assert_eq!(payload["smart_health_card"]["issuer"], issuer.url.as_str());

    // What a verifier does: fetch the keys and the revocation list from the issuer, over TLS.
    let https = issuer.fetcher();
    let jwks = https.fetch(&format!("{}/.well-known/jwks.json", issuer.url)).await.expect("JWKS over HTTPS");
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.header("access-control-allow-origin"), Some("*"), "CORS on the JWK Set");
    assert!(jwks.header("content-type").is_some_and(|t| t.starts_with("application/json")));
    let jwks = Jwks::from_json(std::str::from_utf8(&jwks.body).expect("utf-8")).expect("a JWK Set");
    let kid = payload["smart_health_card"]["kid"].as_str().expect("kid").to_string();
    let crl = https.fetch(&format!("{}/.well-known/crl/{kid}.json", issuer.url)).await.expect("CRL");
    assert_eq!(crl.status, 200);
    assert_eq!(crl.header("access-control-allow-origin"), Some("*"), "CORS on the revocation list");
    let crl = RevocationList::from_json(std::str::from_utf8(&crl.body).expect("utf-8")).expect("a list");
    let missing = https.fetch(&format!("{}/.well-known/crl/unknown.json", issuer.url)).await.expect("404");
    assert_eq!(missing.status, 404);
    let verifier = Verifier::new(jwks.clone())
        .with_options(VerifyOptions { expected_issuer: Some(issuer.url.clone()), ..Default::default() })
        .with_revocation_list(crl);

    let png_path = issuer.config.output_dir().join(format!("{certificate_id}.png"));
    let card =
        verifier.verify_png(&std::fs::read(&png_path).expect("the PNG written")).expect("the PNG verifies");
    assert_eq!(card.kid, kid);
    assert_eq!(card.record.holder.family, "TAKAHASHI");
    assert_eq!(card.record.holder.given, vec!["MISAKI".to_string()]);
    assert_eq!(card.record.holder.birth_date, "2019-05-01");
    assert_eq!(card.record.doses.len(), 1);
    assert_eq!(card.record.doses[0].occurrence, "2024-10-15");
    assert_eq!(card.record.doses[0].lot_number.as_deref(), Some("Y123"));
    assert_eq!(card.record.doses[0].vaccine.code, "04", "MR → CVX 04");
    let jws = payload["smart_health_card"]["jws"].as_str().expect("jws");
    verifier.verify_jws(jws).expect("the JWS in the event verifies");
    for ext in ["svg", "smart-health-card"] {
        assert!(issuer.config.output_dir().join(format!("{certificate_id}.{ext}")).exists(), "{ext} written");
    }
    // `kakehashi cert verify` on the PNG, as anyone would run it: keys and revocation list
    // fetched from the card's issuer over HTTPS, trusting the issuer's development CA.
    let mut cli =
        kakehashi_ctl::cli::Conn::new("http://127.0.0.1:1", "http://127.0.0.1:1", "nats://127.0.0.1:1");
    cli.ca = Some(issuer.config.dev_ca_file());
    let args = kakehashi_ctl::cli::CertVerifyArgs {
        input: png_path.display().to_string(),
        jwks: None,
        crl: None,
        issuer: Some(issuer.url.clone()),
        now: None,
    };
    kakehashi_ctl::commands::cert::verify(&cli, true, args)
        .await
        .expect("kakehashi cert verify passes on the PNG");
    // A second implementation (jwcrypto, zlib) accepts the issued JWS with the served key set.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("card.jws"), jws).expect("write jws");
    std::fs::write(dir.path().join("jwks.json"), jwks.to_json()).expect("write jwks");
    let arg = |name: &str| dir.path().join(name).display().to_string();
    let args = vec!["--jws".into(), arg("card.jws"), "--jwks".into(), arg("jwks.json")];
    let out = kakehashi_tests::interop::run("shc_check.py", args, Duration::from_secs(60)).await;
    kakehashi_tests::interop::expect_success("shc_check.py", &out);
    // A key that is not the issuer's: the same card fails.
    let other = Jwks { keys: vec![kakehashi_issuer::IssuerKey::generate().public_jwk()] };
    assert!(Verifier::new(other).verify_jws(jws).is_err(), "a card must not verify with another key");

    // The issuer holds pseudonyms only: its own per-department pseudonym of the My Number.
    let state = issuer.state();
    let pseudonym = kakehashi_registry::pii::pseudonym(
        kakehashi_registry::config::DEV_PSEUDONYM_SECRET.as_bytes(),
        ISSUER,
        MY_NUMBER,
    );
    assert!(pseudonym.starts_with("kh1:"));
    assert!(
        state.contains(&format!("\"pseudonym\":\"{pseudonym}\"")),
        "record stored under the pseudonym:\n{state}"
    );
    for line in state.lines().filter(|l| l.contains("\"kind\":\"record\"")) {
        let v: serde_json::Value = serde_json::from_str(line).expect("state line");
        assert!(v["pseudonym"].as_str().is_some_and(|p| p.starts_with("kh1:")), "{line}");
    }
    let mut everything = state.clone();
    for entry in std::fs::read_dir(issuer.config.output_dir()).expect("cards") {
        everything
            .push_str(&String::from_utf8_lossy(&std::fs::read(entry.expect("entry").path()).expect("read")));
    }
    assert!(!everything.contains(MY_NUMBER), "the issuer stored a raw My Number");
    assert!(!everything.contains("髙橋"), "the issuer stored the kanji name it does not need");
    // …and the demo policy does not grant it raw numbers.
    let mut policies = policies_client::PoliciesClient::connect(registry.endpoint()).await.expect("connect");
    let listed = policies.list_policies(ListPoliciesRequest::default()).await.expect("list").into_inner();
    assert!(listed.policies.iter().all(|p| !p.raw_pii_readers.iter().any(|d| d == ISSUER)));

    // A new dose, then a second request: the new card lists both doses.
    publish(
        &adapter.endpoint(),
        MUNICIPALITY,
        RECORDED,
        &record("2025-01-20", "新型コロナウイルスワクチン", 1, "FK0001"),
    )
    .await;
    wait::until("the new dose stored", Duration::from_secs(20), || async {
        issuer.state().contains("FK0001").then_some(())
    })
    .await;
    let second = publish(&adapter.endpoint(), PORTAL, REQUESTED, &request_for_demo_resident()).await;
    let event = answer_to(&mut issued, &second).await;
    let payload: serde_json::Value = serde_json::from_slice(&event.data).expect("json");
    let card = verifier
        .verify_jws(payload["smart_health_card"]["jws"].as_str().expect("jws"))
        .expect("the second card verifies");
    let codes: Vec<&str> = card.record.doses.iter().map(|d| d.vaccine.code.as_str()).collect();
    assert_eq!(codes, vec!["04", "213"], "both doses, oldest first");
    assert_ne!(ids::certificate_id(&second), certificate_id);

    issuer.stop().await;
    drop((nats, registry, adapter));
}

#[tokio::test]
async fn a_record_published_in_its_protobuf_form_gives_the_same_card() {
    // The catalogue's protobuf example, the twin of the JSON one the first test publishes,
    // as a municipality's system would send it: bytes of `health.vaccination.recorded.pb`.
    let bytes = std::fs::read(
        repo().join("schemas/health.vaccination.recorded.pb/examples/valid-mr-second-dose.binpb"),
    )
    .expect("binpb example");
    the_protobuf_subjects_record_gives_the_same_card(bytes, "application/protobuf").await;
}

#[tokio::test]
async fn a_record_in_proto3_json_with_a_quoted_dose_number_gives_the_same_card() {
    // The same record as proto3 JSON, whose readers take an integer field quoted too.
    let mut record = example(RECORDED, "valid-mr-second-dose.json");
    record["vaccination"]["dose_number"] = "2".into();
    the_protobuf_subjects_record_gives_the_same_card(record.to_string().into_bytes(), "application/json")
        .await;
}

/// Publishes `bytes` as a `health.vaccination.recorded.pb` record of the demo resident, requests
/// a certificate, and checks the card is the one the JSON record gives.
async fn the_protobuf_subjects_record_gives_the_same_card(bytes: Vec<u8>, content_type: &str) {
    let (_nats, registry, adapter) = bus().await;
    let data = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::start(issuer_config(data.path(), &registry, &adapter.endpoint())).await;
    let mut issued = portal_subscription(&registry, "issued-pb", ISSUED).await;
    let mut c =
        publisher_client::PublisherClient::connect(adapter.endpoint()).await.expect("connect adapter");
    let ack = c
        .publish(Event {
            source: MUNICIPALITY.into(),
            r#type: RECORDED.into(),
            schema: "health.vaccination.recorded.pb".into(),
            data_content_type: content_type.into(),
            data: bytes,
            ..Default::default()
        })
        .await
        .expect("publish the protobuf record")
        .into_inner();
    assert!(ack.error.is_none(), "accepted: {ack:?}");
    let request_id = publish(&adapter.endpoint(), PORTAL, REQUESTED, &request_for_demo_resident()).await;
    let event = answer_to(&mut issued, &request_id).await;
    let payload: serde_json::Value = serde_json::from_slice(&event.data).expect("json");
    assert_eq!(payload["issuer_municipality_code"], "131130");

    let https = issuer.fetcher();
    let jwks = https.fetch(&format!("{}/.well-known/jwks.json", issuer.url)).await.expect("JWKS over HTTPS");
    let jwks = Jwks::from_json(std::str::from_utf8(&jwks.body).expect("utf-8")).expect("a JWK Set");
    let verifier = Verifier::new(jwks)
        .with_options(VerifyOptions { expected_issuer: Some(issuer.url.clone()), ..Default::default() });
    let card =
        verifier.verify_jws(payload["smart_health_card"]["jws"].as_str().expect("jws")).expect("verifies");
    assert_eq!(card.record.holder.birth_date, "2019-05-01");
    assert_eq!(card.record.doses.len(), 1);
    assert_eq!(card.record.doses[0].occurrence, "2024-10-15");
    assert_eq!(card.record.doses[0].lot_number.as_deref(), Some("Y123"));
    assert_eq!(card.record.doses[0].vaccine.code, "04", "MR → CVX 04");
    issuer.stop().await;
}

#[tokio::test]
async fn a_request_for_a_person_without_records_is_refused_with_a_reason_and_gets_no_card() {
    let (nats, registry, adapter) = bus().await;
    let data = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::start(issuer_config(data.path(), &registry, &adapter.endpoint())).await;
    let mut refused = portal_subscription(&registry, "refused", REFUSED).await;

    // The demo resident has a record; the applicant (another person) has none.
    publish(&adapter.endpoint(), MUNICIPALITY, RECORDED, &example(RECORDED, "valid-mr-second-dose.json"))
        .await;
    let asked = std::time::Instant::now();
    let request_id =
        publish(&adapter.endpoint(), PORTAL, REQUESTED, &example(REQUESTED, "valid-two-given-names.json"))
            .await;
    let event = answer_to(&mut refused, &request_id).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(REFUSE_AFTER_MS),
        "refused before records published earlier had time to arrive"
    );
    assert_eq!(event.id, ids::refused_event_id(&request_id));
    assert_eq!(event.source, ISSUER);
    let payload: serde_json::Value = serde_json::from_slice(&event.data).expect("json");
    assert_eq!(payload["reason"], "no_vaccination_records");
    assert!(payload["message"].as_str().is_some_and(|m| !m.is_empty()));

    // No card anywhere: no issued event, no file.
    let js = bus::jetstream(&nats).await;
    let events = bus::events_in_events_stream(&js).await;
    assert!(events.iter().all(|e| e.r#type != ISSUED), "an issued event for a refused request");
    assert!(events.iter().all(|e| e.id != ids::issued_event_id(&request_id)));
    // Held for REFUSE_AFTER_MS (longer than the subscription's 5 s ack wait here): decided once.
    let answers = issuer.state().lines().filter(|l| l.contains("\"kind\":\"answer\"")).count();
    assert_eq!(answers, 1, "one decision for one request:\n{}", issuer.state());
    let cards = std::fs::read_dir(issuer.config.output_dir()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(cards, 0, "no card file for a refused request");

    issuer.stop().await;
    drop((registry, adapter));
}

#[tokio::test]
async fn an_issuer_killed_between_receiving_a_request_and_publishing_answers_exactly_once_after_restart() {
    let (nats, registry, adapter) = bus().await;
    let data = tempfile::tempdir().expect("tempdir");
    // The issuer's adapter is down: it receives the request, decides, stores the answer and
    // writes the card, then cannot publish (it retries with the same id until killed).
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let first = Issuer::start(issuer_config(data.path(), &registry, &unreachable)).await;
    publish(&adapter.endpoint(), MUNICIPALITY, RECORDED, &example(RECORDED, "valid-mr-second-dose.json"))
        .await;
    let request_id = publish(&adapter.endpoint(), PORTAL, REQUESTED, &request_for_demo_resident()).await;
    let event_id = ids::issued_event_id(&request_id);
    wait::until("the first issuer to store its answer", Duration::from_secs(30), || async {
        first.state().contains(&format!("\"event_id\":\"{event_id}\"")).then_some(())
    })
    .await;
    let png = first.config.output_dir().join(format!("{}.png", ids::certificate_id(&request_id)));
    assert!(png.exists(), "the card was written before publishing");
    let stored_card = std::fs::read(&png).expect("png");
    let js = bus::jetstream(&nats).await;
    assert!(
        bus::event_ids_in_events_stream(&js).await.iter().all(|id| *id != event_id),
        "nothing can have been published yet"
    );
    let first_output = first.config.output_dir();
    first.kill().await;

    // Restarted with the same data directory and a reachable adapter: the unacked request
    // comes again and is answered with the stored card.
    let second = Issuer::start(issuer_config(data.path(), &registry, &adapter.endpoint())).await;
    wait::until("the issued event in KH_EVENTS", Duration::from_secs(60), || {
        let js = js.clone();
        let event_id = event_id.clone();
        async move { bus::event_ids_in_events_stream(&js).await.contains(&event_id).then_some(()) }
    })
    .await;
    assert!(
        std::fs::read(&png).expect("png") == stored_card,
        "the restart must answer with the card stored before the crash, not a new one"
    );
    let stored_file = first_output.join(format!("{}.smart-health-card", ids::certificate_id(&request_id)));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored_file).expect("card file")).expect("card file JSON");
    let published =
        bus::events_in_events_stream(&js).await.into_iter().find(|e| e.id == event_id).expect("event");
    let published: serde_json::Value = serde_json::from_slice(&published.data).expect("json");
    assert_eq!(
        published["smart_health_card"]["jws"], stored["verifiableCredential"][0],
        "the published card is the one decided before the crash"
    );
    second.stop().await;

    // Worse: the state is lost and the requests are replayed to an issuer with a fresh data
    // directory (new subscriptions from the start). Its answer has the same derived id, so
    // the bus drops it as a duplicate.
    let fresh = tempfile::tempdir().expect("tempdir");
    let mut config = issuer_config(fresh.path(), &registry, &adapter.endpoint());
    config.subscriptions.records = "replay-records".into();
    config.subscriptions.requests = "replay-requests".into();
    let third = Issuer::start(config).await;
    wait::until("the replayed request answered", Duration::from_secs(60), || async {
        third.state().contains(&format!("\"event_id\":\"{event_id}\"")).then_some(())
    })
    .await;
    // Its publish is confirmed (acked) before the request is acked; give the validator time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    third.stop().await;

    let events = bus::events_in_events_stream(&js).await;
    let copies = events.iter().filter(|e| e.id == event_id).count();
    assert_eq!(copies, 1, "exactly one issued event for the request");
    let answers = events
        .iter()
        .filter(|e| e.r#type == ISSUED || e.r#type == REFUSED)
        .filter(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.data)
                .is_ok_and(|d| d["request_id"] == request_id.as_str())
        })
        .count();
    assert_eq!(answers, 1, "one answer in all for the request");
    drop((registry, adapter));
}
