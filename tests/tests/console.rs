//! The web console in a real headless browser (Debian's chromium through chromedriver) against
//! a real bus: nats-server, registry and adapter with tokens, the console in-process. Valid and
//! invalid events are published through the adapter; then every page is opened with real data,
//! an administrator redrives a dead letter (after registering the schema it lacked) through the
//! confirmation step and the event reaches the subscriber, and a department's login is refused
//! another department's traces and dead letters — by the links and by URL. No page's HTML holds
//! a published My Number.
//!
//! With `KH_CONSOLE_SCREENSHOTS=1` each page is saved as `docs/console/<page>.png`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kakehashi_console::config::ConsoleConfig;
use kakehashi_proto::v1::*;
use kakehashi_tests::console::Console;
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::webdriver::{docs_screenshot, Browser, Driver};
use kakehashi_tests::{Adapter, NatsServer, Registry};
use std::time::Duration;
use tokio::sync::mpsc;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CHECKUP: &str = "health.checkup.recorded";
const SCREENING: &str = "health.screening.recorded";
/// Every My Number published: none may appear in any page.
const MY_NUMBERS: &[&str] = &["123456789018", "111111111118", "987654321093", "161803398872", "222222222222"];

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    r
}

fn schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["person", "dose"],
        "properties": {
            "person": {"type": "object", "required": ["my_number"], "properties": {
                "my_number": {"type": "string", "pattern": "^[0-9]{12}$", "x-kakehashi-pii": "my-number"},
                "name": {"type": "string"}}},
            "dose": {"type": "integer", "minimum": 1}
        }
    })
}

fn payload(my_number: &str, dose: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"person": {"my_number": my_number, "name": "山田　花子"}, "dose": dose})
        .to_string()
        .into_bytes()
}

async fn register(endpoint: &str, subject: &str, schema: &serde_json::Value) {
    let mut c =
        schema_registry_client::SchemaRegistryClient::connect(endpoint.to_string()).await.expect("registry");
    let request =
        RegisterSchemaRequest { subject: subject.into(), schema: schema.to_string(), ..Default::default() };
    c.register_schema(authed("tok-admin", request))
        .await
        .unwrap_or_else(|e| panic!("register {subject}: {e}"));
}

async fn set_mode(endpoint: &str, subject: &str, mode: CompatibilityMode) {
    let mut c =
        schema_registry_client::SchemaRegistryClient::connect(endpoint.to_string()).await.expect("registry");
    let request = SetCompatibilityRequest { subject: subject.into(), mode: mode as i32 };
    c.set_compatibility(authed("tok-admin", request)).await.expect("set mode");
}

async fn publish(adapter: &str, token: &str, event_type: &str, data: Vec<u8>) -> String {
    let mut c = publisher_client::PublisherClient::connect(adapter.to_string()).await.expect("adapter");
    let event = Event {
        r#type: event_type.into(),
        data_content_type: "application/json".into(),
        data,
        ..Default::default()
    };
    let mut request = authed(token, event);
    // The caller's own W3C trace context: the hops carry its trace id, which the trace page links.
    let traceparent = format!("00-{}-00f067aa0ba902b7-01", TRACE_ID);
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("traceparent"));
    let ack = c.publish(request).await.expect("publish").into_inner();
    assert!(ack.error.is_none(), "publish refused: {:?}", ack.error);
    ack.event_id
}

/// mhlw's subscription, acking everything and reporting event ids.
async fn subscribe(endpoint: &str) -> mpsc::Receiver<String> {
    let mut client = delivery_client::DeliveryClient::connect(endpoint.to_string()).await.expect("registry");
    let (tx, rx) = mpsc::channel(64);
    let open =
        OpenSubscription { subscription: "checkups".into(), department: "mhlw".into(), max_in_flight: 16 };
    tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Open(open)) }).await.expect("open");
    let mut stream = client
        .subscribe(authed("tok-mhlw", tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("subscribe")
        .into_inner();
    let (ids_tx, ids_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok(Some(d)) = stream.message().await {
            let id = d.event.map(|e| e.id).unwrap_or_default();
            let ack = AckDeliveries { delivery_ids: vec![d.delivery_id] };
            let _ = tx.send(SubscribeRequest { request: Some(subscribe_request::Request::Ack(ack)) }).await;
            if ids_tx.send(id).await.is_err() {
                break;
            }
        }
    });
    ids_rx
}

async fn expect_delivered(ids: &mut mpsc::Receiver<String>, wanted: &str, limit: Duration) {
    let found = tokio::time::timeout(limit, async {
        while let Some(id) = ids.recv().await {
            if id == wanted {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "event {wanted} was not delivered to mhlw within {limit:?}");
}

/// The page's HTML, checked for raw My Numbers; saved as a screenshot when asked.
async fn page(b: &Browser, shot: Option<&str>) -> String {
    let html = b.source().await;
    for n in MY_NUMBERS {
        assert!(!html.contains(n), "a raw My Number is in the page {}:\n{html}", b.url().await);
    }
    if let Some(name) = shot.filter(|_| std::env::var("KH_CONSOLE_SCREENSHOTS").is_ok_and(|v| v == "1")) {
        b.screenshot(&docs_screenshot(name)).await;
    }
    html
}

/// Clicks `css` (submitting its form) and waits for the next page, known by `marker`.
async fn submit(b: &Browser, css: &str, marker: &str, shot: Option<&str>) -> String {
    b.click(&b.expect(css).await).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !b.source().await.contains(marker) {
        if tokio::time::Instant::now() > deadline {
            panic!("no page with {marker} after clicking {css}: {}\n{}", b.url().await, b.source().await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page(b, shot).await
}

async fn open(b: &Browser, console: &Console, path: &str, shot: Option<&str>) -> String {
    b.goto(&console.url(path)).await;
    page(b, shot).await
}

async fn login(b: &Browser, console: &Console, token: &str, shot: Option<&str>) {
    open(b, console, "/login", shot).await;
    let field = b.expect("#token").await;
    b.type_text(&field, token).await;
    submit(b, "#login", "id=\"who\"", None).await;
    assert!(b.url().await.ends_with("/flows"), "the flow page after login");
}

async fn logout(b: &Browser) {
    submit(b, "#logout", "id=\"login-form\"", None).await;
}

/// A POST to the console outside the browser, with the browser's session cookie.
async fn post(console: &Console, path: &str, cookie: &str, form: &str) -> (u16, String) {
    let (status, _, body) = http(console, "POST", path, cookie, form).await;
    (status, body)
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_in_a_real_browser_with_access_by_department() {
    let nats = NatsServer::start();
    let mut cfg = registry_config(&nats);
    for (token, dept) in [
        ("tok-admin", "digital-agency"),
        ("tok-shibuya", "city-shibuya"),
        ("tok-minato", "city-minato"),
        ("tok-mhlw", "mhlw"),
    ] {
        cfg.credentials.insert(token.into(), dept.into());
    }
    cfg.admins = vec!["digital-agency".into()];
    let mut acfg = adapter_config(&nats);
    acfg.credentials = cfg.credentials.clone();
    let registry = Registry::start(cfg).await;
    let adapter = Adapter::start(acfg).await;
    let (reg, ad) = (registry.endpoint(), adapter.endpoint());

    register(&reg, CHECKUP, &schema()).await;
    let mut policies = policies_client::PoliciesClient::connect(reg.clone()).await.expect("registry");
    let policy = Policy {
        type_pattern: "health.>".into(),
        producers: vec!["city-shibuya".into(), "city-minato".into()],
        readers: vec!["mhlw".into()],
        raw_pii_readers: vec![],
    };
    policies.put_policy(authed("tok-admin", policy)).await.expect("policy");
    let mut subs = subscriptions_client::SubscriptionsClient::connect(reg.clone()).await.expect("registry");
    let sub = Subscription {
        department: "mhlw".into(),
        name: "checkups".into(),
        type_pattern: "health.>".into(),
        ..Default::default()
    };
    subs.create_subscription(authed("tok-mhlw", CreateSubscriptionRequest { subscription: Some(sub) }))
        .await
        .expect("subscription");
    let mut delivered = subscribe(&reg).await;

    let shibuya_ok = publish(&ad, "tok-shibuya", CHECKUP, payload("123456789018", 1.into())).await;
    let shibuya_bad = publish(&ad, "tok-shibuya", CHECKUP, payload("111111111118", 0.into())).await;
    // The adapter refuses a type without a schema up front, so this one goes to ingress the
    // way a department's own NATS client would send it; the validator dead-letters it.
    let js = kakehashi_tests::bus::jetstream(&nats).await;
    let unknown = Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: "city-shibuya".into(),
        r#type: SCREENING.into(),
        data_content_type: "application/json".into(),
        data: payload("987654321093", 1.into()),
        ..Default::default()
    };
    kakehashi_tests::bus::publish_ingress(&js, &unknown).await;
    let shibuya_unknown = unknown.id.clone();
    let minato_ok = publish(&ad, "tok-minato", CHECKUP, payload("161803398872", 2.into())).await;
    let minato_bad = publish(&ad, "tok-minato", CHECKUP, payload("222222222222", "two".into())).await;
    expect_delivered(&mut delivered, &shibuya_ok, Duration::from_secs(20)).await;
    expect_delivered(&mut delivered, &minato_ok, Duration::from_secs(20)).await;

    // The dead letters' ids, from the API as the administrator.
    let mut dlq = dead_letters_client::DeadLettersClient::connect(reg.clone()).await.expect("registry");
    let letters = kakehashi_tests::wait::until("three dead letters", Duration::from_secs(20), || {
        let mut dlq = dlq.clone();
        async move {
            let r =
                dlq.list_dead_letters(authed("tok-admin", ListDeadLettersRequest::default())).await.ok()?;
            let l = r.into_inner().dead_letters;
            (l.len() >= 3).then_some(l)
        }
    })
    .await;
    let id_of = |event: &str| {
        letters
            .iter()
            .find(|s| s.letter.as_ref().is_some_and(|l| l.event_id == event))
            .map(|s| s.id)
            .unwrap_or_else(|| panic!("no dead letter for {event}"))
    };
    let (bad_id, unknown_id, minato_bad_id) =
        (id_of(&shibuya_bad), id_of(&shibuya_unknown), id_of(&minato_bad));
    // The API already masks: the stored letter has the raw number, the answer does not.
    for s in &letters {
        let raw = &s.letter.as_ref().expect("letter").raw;
        assert!(MY_NUMBERS.iter().all(|n| !raw.windows(12).any(|w| w == n.as_bytes())), "unmasked raw bytes");
        assert!(s.raw_masked);
    }
    let flows = flows_client::FlowsClient::connect(reg.clone()).await.expect("registry");
    kakehashi_tests::wait::until("the valid event's acked hop", Duration::from_secs(20), || {
        let (mut flows, id) = (flows.clone(), shibuya_ok.clone());
        async move {
            let r = flows.trace_event(authed("tok-admin", TraceEventRequest { event_id: id })).await.ok()?;
            r.into_inner().hops.iter().any(|h| h.hop == "acked").then_some(())
        }
    })
    .await;

    // A second, breaking version of the subject (allowed only with the mode set to NONE for a
    // moment), so the diff has verdicts to show.
    set_mode(&reg, CHECKUP, CompatibilityMode::None).await;
    let mut v2 = schema();
    v2["properties"]["dose"] = serde_json::json!({"type": "string"});
    v2["properties"]["clinic"] = serde_json::json!({"type": "string"});
    v2["properties"]["note"] = serde_json::json!({"type": "string"});
    v2["required"] = serde_json::json!(["person", "dose", "clinic"]);
    register(&reg, CHECKUP, &v2).await;
    set_mode(&reg, CHECKUP, CompatibilityMode::Backward).await;

    let console = Console::start(
        ConsoleConfig {
            trace_url_template: "http://127.0.0.1:16686/trace/{trace_id}".into(),
            ..Default::default()
        },
        &reg,
    )
    .await;
    let driver = Driver::start().await;
    let b = driver.browser(1400, 1000).await;

    // Not logged in: every page leads to the login form.
    let html = open(&b, &console, "/dead-letters", None).await;
    assert!(b.url().await.contains("/login") && html.contains("id=\"login-form\""), "{html}");
    let bad_login = b.expect("#token").await;
    b.type_text(&bad_login, "not-a-token").await;
    submit(&b, "#login", "does not accept this token", None).await;

    // --- The administrator.
    login(&b, &console, "tok-admin", Some("login")).await;
    let html = page(&b, Some("flows")).await;
    assert!(html.contains("digital-agency (administrator)"), "{html}");
    assert!(html.contains("id=\"flow-map\""), "{html}");
    for name in ["city-shibuya", "city-minato", "mhlw", CHECKUP, SCREENING] {
        assert!(html.contains(name), "the flow map shows {name}");
    }
    // A live view: rates per minute on the edges, and the page reloads itself.
    assert!(html.contains("/min: "), "rates on the flow map:\n{html}");
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"30\">"), "the flow page reloads:\n{html}");

    let html = open(&b, &console, &format!("/trace?event_id={shibuya_ok}"), Some("trace")).await;
    for hop in ["published", "validated", "delivered", "acked"] {
        assert!(html.contains(&format!("<td>{hop}</td>")), "hop {hop} on the trace:\n{html}");
    }
    assert!(html.contains("id=\"timeline\""));
    let link = format!("http://127.0.0.1:16686/trace/{TRACE_ID}");
    assert!(html.contains(&link), "trace ids link to the tracing backend:\n{html}");
    let html = open(&b, &console, "/trace?source=city-shibuya&type=&since=15m", Some("trace-find")).await;
    assert!(
        html.contains(&shibuya_ok) && html.contains(&shibuya_bad) && !html.contains(&minato_ok),
        "{html}"
    );

    let html = open(&b, &console, "/dead-letters", Some("dead-letters")).await;
    for id in [&shibuya_bad, &shibuya_unknown, &minato_bad] {
        assert!(html.contains(id.as_str()), "dead letter of {id} listed");
    }
    let html = open(&b, &console, &format!("/dead-letters/{bad_id}"), Some("dead-letter")).await;
    assert!(
        html.contains("schema_violation") && html.contains("/dose"),
        "violation with its pointer:\n{html}"
    );
    assert!(html.contains("id=\"raw-escaped\"") && html.contains("id=\"raw-hex\""));
    assert!(html.contains("************"), "the My Number is shown masked");

    let html = open(&b, &console, "/schemas", Some("schemas")).await;
    assert!(html.contains(CHECKUP) && html.contains("BACKWARD"), "{html}");
    let html = open(&b, &console, &format!("/schemas/{CHECKUP}?a=1&b=2"), Some("schema-diff")).await;
    assert!(html.contains("NOT compatible"), "{html}");
    assert!(html.contains("/properties/dose/type") && html.contains("breaking"), "{html}");
    // Dropping the minimum loosens the schema: the check names nothing there.
    assert!(html.contains("/properties/dose/minimum") && html.contains("class=\"ok\">compatible"), "{html}");

    let html = open(&b, &console, "/subscriptions", Some("subscriptions")).await;
    assert!(html.contains("checkups") && html.contains("mhlw"), "{html}");

    // Several at once from the list: the confirmation names each (cancelled here).
    open(&b, &console, "/dead-letters", None).await;
    b.click(&b.expect(&format!("#select-{bad_id}")).await).await;
    b.click(&b.expect(&format!("#select-{minato_bad_id}")).await).await;
    let html = submit(&b, "#redrive-selected", "id=\"confirm-list\"", None).await;
    assert!(
        html.contains(&shibuya_bad) && html.contains(&minato_bad) && !html.contains(&shibuya_unknown),
        "{html}"
    );
    assert!(html.contains("Redrive these 2 dead letter(s)"), "{html}");

    // Redrive: fix the cause (the schema the event lacked), then redrive with confirmation.
    register(&reg, SCREENING, &schema()).await;
    open(&b, &console, &format!("/dead-letters/{unknown_id}"), None).await;
    let html = submit(&b, "#redrive", "id=\"confirm-list\"", Some("redrive-confirm")).await;
    assert!(html.contains(&shibuya_unknown), "{html}");
    let html = submit(&b, "#confirm-redrive", "id=\"redrive-outcomes\"", Some("redrive-done")).await;
    assert!(html.contains(">redriven<"), "{html}");
    expect_delivered(&mut delivered, &shibuya_unknown, Duration::from_secs(20)).await;
    kakehashi_tests::wait::until(
        "the redriven hop naming the administrator",
        Duration::from_secs(20),
        || {
            let (mut flows, id) = (flows.clone(), shibuya_unknown.clone());
            async move {
                let r =
                    flows.trace_event(authed("tok-admin", TraceEventRequest { event_id: id })).await.ok()?;
                r.into_inner()
                    .hops
                    .iter()
                    .any(|h| h.hop == "redriven" && h.detail.contains("by digital-agency"))
                    .then_some(())
            }
        },
    )
    .await;
    // Redriving it again is deduplicated, not published twice.
    let again = dlq
        .redrive_dead_letters(authed("tok-admin", RedriveDeadLettersRequest { ids: vec![unknown_id] }))
        .await
        .expect("redrive again")
        .into_inner();
    assert_eq!(again.outcomes[0].outcome, "duplicate");
    logout(&b).await;

    // --- A department: only its own.
    login(&b, &console, "tok-minato", None).await;
    let html = page(&b, None).await;
    assert!(html.contains("city-minato") && !html.contains("city-shibuya"), "minato's flows only:\n{html}");
    let html = open(&b, &console, "/dead-letters", Some("department-dead-letters")).await;
    assert!(html.contains(&minato_bad), "its own dead letter");
    assert!(!html.contains(&shibuya_bad) && !html.contains(&shibuya_unknown), "not shibuya's:\n{html}");
    let html = open(&b, &console, &format!("/dead-letters/{bad_id}"), None).await;
    assert!(
        html.contains("id=\"error\"") && !html.contains(&shibuya_bad),
        "shibuya's letter by URL:\n{html}"
    );
    let html = open(&b, &console, &format!("/dead-letters/{minato_bad_id}"), None).await;
    assert!(html.contains(&minato_bad) && html.contains("id=\"redrive\""), "its own letter by URL");
    let html = open(&b, &console, "/dead-letters?source=city-shibuya", None).await;
    assert!(html.contains("Not permitted"), "{html}");
    for other in [&shibuya_ok, &shibuya_bad] {
        let html = open(&b, &console, &format!("/trace?event_id={other}"), None).await;
        assert!(
            html.contains("Not found") && !html.contains("<td>validated</td>"),
            "shibuya's trace:\n{html}"
        );
    }
    let html = open(&b, &console, &format!("/trace?event_id={minato_ok}"), None).await;
    assert!(
        html.contains("<td>validated</td>") && !html.contains("<td>acked</td>"),
        "its own hops, not mhlw's:\n{html}"
    );
    let html = open(&b, &console, "/trace?source=&type=&since=15m", None).await;
    assert!(html.contains(&minato_ok) && !html.contains(&shibuya_ok), "{html}");
    let html = open(&b, &console, "/subscriptions", None).await;
    assert!(html.contains("No subscriptions") && !html.contains("checkups"), "{html}");

    // Forged POSTs with minato's session: no CSRF token is refused; with it, shibuya's letter
    // is "not found" for minato.
    let cookie = b.cookie(kakehashi_console::session::COOKIE).await.expect("session cookie");
    let cookie =
        format!("{}={}", kakehashi_console::session::COOKIE, cookie["value"].as_str().unwrap_or_default());
    let (status, _) =
        post(&console, "/dead-letters/redrive", &cookie, &format!("id={bad_id}&confirm=yes")).await;
    assert_eq!(status, 403, "a POST without the CSRF token");
    let csrf = csrf_of(&html);
    let (status, body) =
        post(&console, "/dead-letters/redrive", &cookie, &format!("csrf={csrf}&id={bad_id}&confirm=yes"))
            .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not_found") && !body.contains(">redriven<"), "{body}");
    logout(&b).await;
    // After logout the old cookie is worthless.
    let (status, _) = post(&console, "/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(status, 303, "redirected to the login page");
    b.quit().await;
}

/// With a certificate the console speaks only HTTPS and its session cookie is `Secure`; without
/// one it refuses to listen anywhere but loopback.
#[tokio::test]
async fn https_with_a_certificate_and_plain_http_only_on_loopback() {
    use kakehashi_ctl::pki::Ca;
    use tokio_rustls::rustls;
    let ca = Ca::generate("kakehashi console test CA").expect("CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ca.issue_server(&["127.0.0.1".into()]).expect("server certificate");
    let (cert_file, key_file) = server.write(dir.path(), "console").expect("write certificate");
    let config = ConsoleConfig {
        tls: Some(kakehashi_console::config::ConsoleTls { cert_file, key_file, client_ca_file: None }),
        // Never called: the login form needs no registry.
        registry_url: "http://127.0.0.1:9".into(),
        ..Default::default()
    };
    let console = Console::start(config, "http://127.0.0.1:9").await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.certificate().cert_der.clone())).expect("CA root");
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(console.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the console");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http");
    tokio::spawn(conn);
    let request = hyper::Request::get("/login")
        .header("host", console.addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.ends_with("; Secure"),
        "{cookie}"
    );

    // Plain HTTP to the HTTPS port gets no page.
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), async {
        let stream = tokio::net::TcpStream::connect(console.addr).await.expect("console");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http");
        tokio::spawn(conn);
        let request = hyper::Request::get("/login")
            .header("host", console.addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        match sender.send_request(request).await {
            Ok(r) => (r.status().as_u16(), ()),
            Err(_) => (0, ()),
        }
    })
    .await
    .unwrap_or((0, ()));
    assert_eq!(status, 0, "plain HTTP is not answered on the HTTPS listener");

    // No certificate and a non-loopback address: refused before listening.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open = ConsoleConfig { listen_addr: "0.0.0.0:50080".parse().expect("addr"), ..Default::default() };
    let refused = kakehashi_console::run(open, listener, async {}).await;
    assert!(refused.is_err(), "plain HTTP on a non-loopback address must be refused");
}

/// A plain HTTP request to the console: status, the session cookie it sets (`name=value`) and
/// the body.
async fn http(
    console: &Console,
    method: &str,
    path: &str,
    cookie: &str,
    form: &str,
) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(console.addr).await.expect("console");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("http");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", console.addr.to_string())
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, set, String::from_utf8_lossy(&body).into_owned())
}

/// Logs in over plain HTTP; the session cookie.
async fn http_login(console: &Console, token: &str) -> String {
    let (status, cookie, html) = http(console, "GET", "/login", "", "").await;
    assert_eq!(status, 200, "{html}");
    let form = format!("csrf={}&token={token}", csrf_of(&html));
    let (status, session, body) = http(console, "POST", "/login", &cookie, &form).await;
    assert_eq!(status, 303, "{body}");
    assert!(!session.is_empty(), "a session cookie");
    session
}

/// Dead letters of about 1 MiB each (listed with their raw bytes and the decoded event: about
/// 2 MiB) fill more than the 4 MiB a gRPC client reads by default: the registry pages them
/// within `limits.max_list_response_bytes`, and the console lists, pages and confirms them; a
/// console reading less than one letter answers with its own error naming its limit.
#[tokio::test]
async fn dead_letters_of_a_megabyte_are_listed_paged_and_confirmed() {
    let nats = NatsServer::start();
    let mut cfg = registry_config(&nats);
    cfg.credentials.insert("tok-admin".into(), "digital-agency".into());
    cfg.admins = vec!["digital-agency".into()];
    let registry = Registry::start(cfg).await;
    let reg = registry.endpoint();
    let js = kakehashi_tests::bus::jetstream(&nats).await;
    for _ in 0..4 {
        let event = Event {
            id: kakehashi_proto::ids::new_event_id(),
            source: "city-shibuya".into(),
            r#type: SCREENING.into(),
            data_content_type: "application/json".into(),
            data: serde_json::json!({"blob": "x".repeat(900 * 1024)}).to_string().into_bytes(),
            ..Default::default()
        };
        kakehashi_tests::bus::publish_ingress(&js, &event).await;
    }
    // Through the API with a client's default 4 MiB decoding limit: every page fits it.
    let dlq = dead_letters_client::DeadLettersClient::connect(reg.clone()).await.expect("registry");
    let ids = kakehashi_tests::wait::until("four large dead letters", Duration::from_secs(30), || {
        let mut dlq = dlq.clone();
        async move {
            let (mut ids, mut token, mut pages) = (Vec::new(), String::new(), 0);
            loop {
                let request = ListDeadLettersRequest { page_token: token, ..Default::default() };
                let r =
                    dlq.list_dead_letters(authed("tok-admin", request)).await.expect("a page").into_inner();
                pages += 1;
                ids.extend(r.dead_letters.iter().map(|s| s.id));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            (ids.len() == 4).then_some((ids, pages))
        }
    })
    .await;
    let (ids, pages) = ids;
    assert!(pages >= 2, "about 8 MiB of letters come in pages of at most 4 MiB: {pages} page(s)");

    let console = Console::start(ConsoleConfig::default(), &reg).await;
    let cookie = http_login(&console, "tok-admin").await;
    let mut seen: Vec<u64> = Vec::new();
    let mut path = "/dead-letters?source=city-shibuya".to_string();
    let mut csrf = String::new();
    for _ in 0..10 {
        let (status, _, html) = http(&console, "GET", &path, &cookie, "").await;
        assert_eq!(status, 200, "{path}: {html}");
        csrf = csrf_of(&html);
        seen.extend(ids.iter().filter(|id| html.contains(&format!("id=\"letter-{id}\""))));
        let Some(at) = html.find("id=\"next-page\" href=\"") else { break };
        let rest = &html[at + "id=\"next-page\" href=\"".len()..];
        path = rest[..rest.find('"').expect("end of link")].replace("&amp;", "&");
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "every large dead letter listed over the pages: {seen:?} of {ids:?}");

    // The confirmation fetches all four, over as many answers as the budget takes.
    let form: String = ids.iter().map(|id| format!("&id={id}")).collect();
    let (status, _, html) =
        http(&console, "POST", "/dead-letters/redrive", &cookie, &format!("csrf={csrf}{form}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Redrive these 4 dead letter(s)"), "{html}");

    // A console reading less than one letter says so, naming its own limit.
    let small = Console::start(
        ConsoleConfig { max_registry_response_bytes: 1024 * 1024, ..Default::default() },
        &reg,
    )
    .await;
    let cookie = http_login(&small, "tok-admin").await;
    let (status, _, html) = http(&small, "GET", "/dead-letters", &cookie, "").await;
    assert_eq!(status, 502, "{html}");
    assert!(html.contains("max_registry_response_bytes = 1048576"), "{html}");
}
