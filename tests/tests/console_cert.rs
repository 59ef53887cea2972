//! Logging in to the web console with a client certificate, end to end: a real nats-server, a
//! registry with TLS, a client CA, tokens and `delegates = ["kakehashi-console"]`, and the
//! console over HTTPS with the same client CA and its own client certificate for the registry.
//! Certificates are made at run time (`kakehashi_ctl::pki`); nothing is committed.
//!
//! A Rust HTTPS client (hyper over tokio-rustls, a new connection per request) presents a
//! department's certificate, logs in with it and sees its own dead letters and subscriptions,
//! not another department's (it tries, by URL and by a forged redrive); its redrive is audited
//! as done by it *via* the console. The session is bound to the certificate: its cookie over a
//! connection without that certificate ends it. Without a certificate only the token form is
//! offered (and still works); a certificate of another CA gets no connection. On the registry
//! itself, the delegation header is refused from anyone but the delegate, and the delegate
//! alone has no rights.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kakehashi_console::config::{ConsoleConfig, ConsoleTls};
use kakehashi_ctl::pki::{Ca, Issued};
use kakehashi_proto::v1::*;
use kakehashi_runtime::identity::ON_BEHALF_OF;
use kakehashi_runtime::tls::GrpcTls;
use kakehashi_tests::console::Console;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const ADMIN: &str = "digital-agency";
const SHIBUYA: &str = "city-shibuya";
const MINATO: &str = "city-minato";
const DELEGATE: &str = "kakehashi-console";
/// No schema is registered for it: the validator dead-letters every event of this type.
const UNKNOWN: &str = "health.unregistered.recorded";

/// An HTTPS client of the console trusting `ca`, presenting `identity` when given.
struct Browser {
    tls: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
}

struct Page {
    status: u16,
    location: String,
    cookie: Option<String>,
    body: String,
}

impl Browser {
    fn new(ca: &Ca, identity: Option<&Issued>, addr: std::net::SocketAddr) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(ca.certificate().cert_der.clone()))
            .expect("CA root");
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots);
        let tls = match identity {
            Some(id) => {
                use rustls::pki_types::pem::PemObject as _;
                let cert = rustls::pki_types::CertificateDer::from(id.cert_der.clone());
                let key =
                    rustls::pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key");
                builder.with_client_auth_cert(vec![cert], key).expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        Self { tls: Arc::new(tls), addr }
    }

    /// One request on a new connection; `Err` when the connection or the request fails.
    async fn request(&self, method: &str, path: &str, cookie: &str, form: &str) -> Result<Page, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/x-www-form-urlencoded");
        if !cookie.is_empty() {
            request = request.header("cookie", cookie);
        }
        let request = request.body(Full::new(Bytes::from(form.to_string()))).expect("request");
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let location = header("location").unwrap_or_default();
        let cookie = header("set-cookie").and_then(|c| c.split(';').next().map(str::to_string));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Page { status, location, cookie, body: String::from_utf8_lossy(&body).into_owned() })
    }

    async fn get(&self, path: &str, cookie: &str) -> Page {
        self.request("GET", path, cookie, "").await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn post(&self, path: &str, cookie: &str, form: &str) -> Page {
        self.request("POST", path, cookie, form).await.unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// The login page: its pre-login cookie and CSRF token, and the page.
    async fn login_page(&self) -> (String, String, Page) {
        let page = self.get("/login", "").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let cookie = page.cookie.clone().expect("a pre-login session cookie");
        (cookie, csrf_of(&page.body), page)
    }

    /// Logs in with the certificate; the session cookie.
    async fn certificate_login(&self, department: &str) -> String {
        let (cookie, csrf, page) = self.login_page().await;
        assert!(
            page.body.contains("id=\"certificate-login\""),
            "the certificate login is offered: {}",
            page.body
        );
        assert!(
            page.body.contains(&format!("<b id=\"certificate-department\">{department}</b>")),
            "{}",
            page.body
        );
        let done = self.post("/login/certificate", &cookie, &format!("csrf={csrf}")).await;
        assert_eq!((done.status, done.location.as_str()), (303, "/flows"), "{}", done.body);
        let session = done.cookie.expect("a new session cookie");
        assert_ne!(session, cookie, "a login gets a new session id");
        let flows = self.get("/flows", &session).await;
        assert_eq!(flows.status, 200, "{}", flows.body);
        assert!(flows.body.contains(department), "the page names the department logged in");
        session
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_string()
}

fn grpc_tls(ca: &Ca, identity: Option<&Issued>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.certificate().cert_pem));
    match identity {
        Some(c) => tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem)),
        None => tls,
    }
}

fn request<T>(message: T, token: Option<&str>, on_behalf_of: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    if let Some(d) = on_behalf_of {
        r.metadata_mut().insert(ON_BEHALF_OF, d.parse().expect("header"));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_logs_in_with_its_certificate_and_sees_only_its_own() {
    let ca = Ca::generate("kakehashi console-cert test CA").expect("CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).expect("server certificate");
    let (server_cert, server_key) = server.write(dir.path(), "server").expect("write server certificate");
    let ca_file = dir.path().join("ca.pem");
    kakehashi_ctl::pki::write_pem(&ca_file, &ca.certificate().cert_pem, false).expect("write CA");
    let console_identity = ca.issue_department(DELEGATE).expect("the console's certificate");
    let (console_cert, console_key) =
        console_identity.write(dir.path(), "console-client").expect("write the console's certificate");
    let issue = |d: &str| ca.issue_department(d).expect("department certificate");
    let (shibuya, minato, admin) = (issue(SHIBUYA), issue(MINATO), issue(ADMIN));

    // The registry: TLS with the client CA (certificates optional, so tokens work too), tokens,
    // and the console's identity as its only delegate.
    let nats = NatsServer::start();
    let mut cfg = registry_config(&nats);
    for (token, dept) in [("tok-admin", ADMIN), ("tok-shibuya", SHIBUYA), ("tok-minato", MINATO)] {
        cfg.credentials.insert(token.into(), dept.into());
    }
    cfg.admins = vec![ADMIN.into()];
    cfg.delegates = vec![DELEGATE.into()];
    cfg.grpc_tls = Some(GrpcTls {
        cert_file: server_cert.clone(),
        key_file: server_key.clone(),
        client_ca_file: Some(ca_file.clone()),
        require_client_cert: false,
    });
    let registry = Registry::start_tls(cfg, grpc_tls(&ca, Some(&admin))).await;
    let channel = |identity: Option<&Issued>| {
        Endpoint::from_shared(registry.tls_endpoint())
            .expect("endpoint")
            .tls_config(grpc_tls(&ca, identity))
            .expect("TLS")
            .connect_lazy()
    };

    // Policies, one subscription per department, and a dead letter each.
    let mut policies = policies_client::PoliciesClient::new(channel(None));
    let policy = Policy {
        type_pattern: "health.>".into(),
        producers: vec![SHIBUYA.into(), MINATO.into()],
        readers: vec![SHIBUYA.into(), MINATO.into()],
        raw_pii_readers: vec![],
    };
    policies.put_policy(request(policy, Some("tok-admin"), None)).await.expect("policy");
    let mut subs = subscriptions_client::SubscriptionsClient::new(channel(None));
    for (token, dept, name) in
        [("tok-shibuya", SHIBUYA, "shibuya-checks"), ("tok-minato", MINATO, "minato-checks")]
    {
        let sub = Subscription {
            department: dept.into(),
            name: name.into(),
            type_pattern: "health.>".into(),
            ..Default::default()
        };
        let create = CreateSubscriptionRequest { subscription: Some(sub) };
        subs.create_subscription(request(create, Some(token), None)).await.expect("subscription");
    }
    let js = kakehashi_tests::bus::jetstream(&nats).await;
    let shibuya_event = kakehashi_tests::bus::event(SHIBUYA, UNKNOWN, 1);
    let minato_event = kakehashi_tests::bus::event(MINATO, UNKNOWN, 2);
    kakehashi_tests::bus::publish_ingress(&js, &shibuya_event).await;
    kakehashi_tests::bus::publish_ingress(&js, &minato_event).await;
    let dlq = dead_letters_client::DeadLettersClient::new(channel(None));
    let letters = kakehashi_tests::wait::until("two dead letters", Duration::from_secs(20), || {
        let mut dlq = dlq.clone();
        async move {
            let r =
                dlq.list_dead_letters(request(ListDeadLettersRequest::default(), Some("tok-admin"), None));
            let l = r.await.ok()?.into_inner().dead_letters;
            (l.len() >= 2).then_some(l)
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
    let (shibuya_letter, minato_letter) = (id_of(&shibuya_event.id), id_of(&minato_event.id));

    // On the registry itself: the delegation header is refused from a department's own
    // certificate and from a token, and the delegate alone has no rights.
    let list = || ListDeadLettersRequest::default();
    let mut as_shibuya = dead_letters_client::DeadLettersClient::new(channel(Some(&shibuya)));
    let forged =
        as_shibuya.list_dead_letters(request(list(), None, Some(MINATO))).await.expect_err("not a delegate");
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
    let mut by_token = dead_letters_client::DeadLettersClient::new(channel(None));
    let forged = by_token
        .list_dead_letters(request(list(), Some("tok-shibuya"), Some(MINATO)))
        .await
        .expect_err("token");
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
    let mut as_console = dead_letters_client::DeadLettersClient::new(channel(Some(&console_identity)));
    let alone =
        as_console.list_dead_letters(request(list(), None, None)).await.expect_err("the delegate alone");
    assert_eq!(alone.code(), Code::PermissionDenied, "{alone:?}");
    let bad =
        as_console.list_dead_letters(request(list(), None, Some("City-Minato"))).await.expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let seen = as_console.list_dead_letters(request(list(), None, Some(MINATO))).await.expect("delegated");
    let seen: Vec<u64> = seen.into_inner().dead_letters.iter().map(|s| s.id).collect();
    assert_eq!(seen, vec![minato_letter], "the delegate sees exactly what minato sees");

    // The console: HTTPS with the client CA, and its own certificate for the registry.
    let console_tls = issue_console_server(&ca, dir.path());
    let config = ConsoleConfig {
        tls: Some(ConsoleTls {
            cert_file: console_tls.0,
            key_file: console_tls.1,
            client_ca_file: Some(ca_file.clone()),
        }),
        registry_ca_file: Some(ca_file.clone()),
        registry_cert_file: Some(console_cert),
        registry_key_file: Some(console_key),
        ..Default::default()
    };
    let console = Console::start(config, &registry.tls_endpoint()).await;
    let as_shibuya = Browser::new(&ca, Some(&shibuya), console.addr);

    // Logged in by certificate, shibuya sees its own dead letter and subscription only.
    let session = as_shibuya.certificate_login(SHIBUYA).await;
    let list = as_shibuya.get("/dead-letters", &session).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains(&shibuya_event.id), "its own dead letter is listed: {}", list.body);
    assert!(!list.body.contains(&minato_event.id), "minato's dead letter is not: {}", list.body);
    let own = as_shibuya.get(&format!("/dead-letters/{shibuya_letter}"), &session).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let other = as_shibuya.get(&format!("/dead-letters/{minato_letter}"), &session).await;
    assert_eq!(other.status, 404, "minato's dead letter by URL: {}", other.body);
    assert!(!other.body.contains(&minato_event.id));
    let other = as_shibuya.get(&format!("/dead-letters?source={MINATO}"), &session).await;
    assert_eq!(other.status, 403, "asking for minato's letters: {}", other.body);
    let trace = as_shibuya.get(&format!("/trace?event_id={}", minato_event.id), &session).await;
    assert_eq!(trace.status, 404, "minato's trace: {}", trace.body);
    let subscriptions = as_shibuya.get("/subscriptions", &session).await;
    assert_eq!(subscriptions.status, 200, "{}", subscriptions.body);
    assert!(subscriptions.body.contains("shibuya-checks"), "{}", subscriptions.body);
    assert!(!subscriptions.body.contains("minato-checks"), "{}", subscriptions.body);

    // A forged redrive of minato's letter finds nothing; its own is redriven, and the audit
    // trail names shibuya acting through the console.
    let csrf = csrf_of(&list.body);
    let forged = as_shibuya
        .post("/dead-letters/redrive", &session, &format!("csrf={csrf}&confirm=yes&id={minato_letter}"))
        .await;
    assert!(forged.body.contains("class=\"err\">not_found<"), "{}", forged.body);
    assert!(!forged.body.contains(">redriven<"), "{}", forged.body);
    let redrive = as_shibuya
        .post("/dead-letters/redrive", &session, &format!("csrf={csrf}&confirm=yes&id={shibuya_letter}"))
        .await;
    assert_eq!(redrive.status, 200, "{}", redrive.body);
    assert!(redrive.body.contains("class=\"ok\">redriven<"), "{}", redrive.body);
    let flows = flows_client::FlowsClient::new(channel(None));
    let hop = kakehashi_tests::wait::until("the redriven hop", Duration::from_secs(20), || {
        let (mut flows, id) = (flows.clone(), shibuya_event.id.clone());
        async move {
            let r = flows.trace_event(request(TraceEventRequest { event_id: id }, Some("tok-admin"), None));
            r.await.ok()?.into_inner().hops.into_iter().find(|h| h.hop == "redriven")
        }
    })
    .await;
    assert!(
        hop.detail.contains(&format!("by {SHIBUYA} via {DELEGATE}")),
        "the audit record names the department and the delegate: {hop:?}"
    );

    // The session is bound to the certificate: its cookie over a connection with minato's
    // certificate (or none) gets the login page, and the session is over for good.
    let as_minato = Browser::new(&ca, Some(&minato), console.addr);
    let stolen = as_minato.get("/dead-letters", &session).await;
    assert_eq!((stolen.status, stolen.location.as_str()), (303, "/login?expired=1"), "{}", stolen.body);
    let again = as_shibuya.get("/dead-letters", &session).await;
    assert_eq!(again.status, 303, "the session ended: {}", again.body);
    let session = as_shibuya.certificate_login(SHIBUYA).await;
    let anonymous = Browser::new(&ca, None, console.addr);
    let stolen = anonymous.get("/flows", &session).await;
    assert_eq!(stolen.status, 303, "without a certificate: {}", stolen.body);

    // Minato, by certificate, sees its own letter and not shibuya's.
    let minato_session = as_minato.certificate_login(MINATO).await;
    let list = as_minato.get("/dead-letters", &minato_session).await;
    assert!(list.body.contains(&minato_event.id) && !list.body.contains(&shibuya_event.id), "{}", list.body);
    // An administrator's certificate: the registry does not let its delegate act for an
    // administrator (`delegates_for_admins` is off by default), so the login is refused and
    // says why; administrators log in with a token (console.rs).
    let as_admin = Browser::new(&ca, Some(&admin), console.addr);
    let (cookie, csrf, page) = as_admin.login_page().await;
    assert!(page.body.contains("id=\"certificate-login\""), "{}", page.body);
    let refused = as_admin.post("/login/certificate", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("an administrator"), "{}", refused.body);
    assert!(refused.cookie.is_none(), "no session for a refused login");

    // Without a certificate: only the token form, and the token login still works.
    let (cookie, csrf, page) = anonymous.login_page().await;
    assert!(page.body.contains("id=\"login-form\""), "{}", page.body);
    assert!(!page.body.contains("certificate-login"), "no certificate, no certificate login: {}", page.body);
    let refused = anonymous.post("/login/certificate", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(refused.status, 401, "a certificate login without a certificate: {}", refused.body);
    let done = anonymous.post("/login", &cookie, &format!("csrf={csrf}&token=tok-minato")).await;
    assert_eq!((done.status, done.location.as_str()), (303, "/flows"), "{}", done.body);
    let token_session = done.cookie.expect("session");
    let list = anonymous.get("/dead-letters", &token_session).await;
    assert!(list.body.contains(&minato_event.id) && !list.body.contains(&shibuya_event.id), "{}", list.body);

    // A certificate for shibuya from another CA gets no connection at all.
    let other_ca = Ca::generate("someone else's CA").expect("other CA");
    let forged = Browser::new(&ca, Some(&other_ca.issue_department(SHIBUYA).expect("forged")), console.addr);
    let refused = forged.request("GET", "/login", "", "").await;
    assert!(refused.is_err(), "a certificate of another CA must be refused: {:?}", refused.map(|p| p.status));
}

/// The console's HTTPS certificate for 127.0.0.1.
fn issue_console_server(ca: &Ca, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let server = ca.issue_server(&["127.0.0.1".into()]).expect("console certificate");
    server.write(dir, "console").expect("write console certificate")
}
