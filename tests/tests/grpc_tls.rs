//! TLS and mutual TLS on the registry's and adapter's gRPC servers, with certificates made at
//! run time (`kakehashi_ctl::pki`; nothing secret is committed): plaintext and certificates of
//! another CA are refused, a verified client certificate decides the calling department, and
//! `ListPolicies` shows a department only the policies naming it.

use kakehashi_ctl::pki::{Ca, Issued};
use kakehashi_proto::v1::*;
use kakehashi_runtime::tls::GrpcTls;
use kakehashi_tests::services::{adapter_config, registry_config};
use kakehashi_tests::{Adapter, NatsServer, Registry};
use prost::Message as _;
use std::collections::BTreeSet;
use std::path::PathBuf;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const ADMIN: &str = "digital-agency";
const TYPE: &str = "health.check.done";

/// A CA, the servers' certificate for 127.0.0.1 and localhost, and the files they live in.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_file: PathBuf,
}

fn pki() -> Pki {
    let ca = Ca::generate("kakehashi test CA").expect("CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).expect("server certificate");
    let (server_cert, server_key) = server.write(dir.path(), "server").expect("write server certificate");
    let ca_file = dir.path().join("ca.pem");
    kakehashi_ctl::pki::write_pem(&ca_file, &ca.certificate().cert_pem, false).expect("write CA");
    Pki { ca, dir, server_cert, server_key, ca_file }
}

impl Pki {
    /// The `[grpc_tls]` section: client certificates verified against this CA when `mtls`.
    fn section(&self, mtls: bool, require_client_cert: bool) -> GrpcTls {
        GrpcTls {
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            client_ca_file: mtls.then(|| self.ca_file.clone()),
            require_client_cert,
        }
    }

    fn department(&self, id: &str) -> Issued {
        self.ca.issue_department(id).expect("department certificate")
    }

    /// Client TLS trusting this CA, presenting `cert` when given.
    fn client(&self, cert: Option<&Issued>) -> ClientTlsConfig {
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.certificate().cert_pem));
        match cert {
            Some(c) => tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem)),
            None => tls,
        }
    }
}

async fn tls_channel(endpoint: &str, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(endpoint.to_string()).expect("endpoint").tls_config(tls)?.connect().await
}

/// A health check: the simplest call that reaches a server. Errors of connecting and of the
/// call are one error, since over TLS 1.3 a refused client certificate may only show on the call.
async fn health(endpoint: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let channel = match tls {
        Some(tls) => tls_channel(endpoint, tls).await.map_err(|e| format!("connect: {e:?}"))?,
        None => Endpoint::from_shared(endpoint.to_string())
            .expect("endpoint")
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?,
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s:?}"))
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    r
}

fn policy(pattern: &str, producers: &[&str], readers: &[&str], raw: &[&str]) -> Policy {
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Policy {
        type_pattern: pattern.into(),
        producers: list(producers),
        readers: list(readers),
        raw_pii_readers: list(raw),
    }
}

fn patterns(r: ListPoliciesResponse) -> BTreeSet<String> {
    r.policies.into_iter().map(|p| p.type_pattern).collect()
}

#[tokio::test]
async fn plaintext_and_certificates_of_another_ca_are_refused() {
    let pki = pki();
    // A file that is not there fails startup with an error naming it, before NATS is needed.
    let mut broken = registry_config_unreachable();
    broken.grpc_tls =
        Some(GrpcTls { key_file: pki.dir.path().join("missing-key.pem"), ..pki.section(true, true) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let error = kakehashi_registry::run(broken, listener, async {}).await.expect_err("missing key file");
    assert!(error.to_string().contains("missing-key.pem"), "the error names the file: {error}");

    let nats = NatsServer::start();
    let mut cfg = registry_config(&nats);
    cfg.grpc_tls = Some(pki.section(true, true));
    let mhlw = pki.department("mhlw");
    let registry = Registry::start_tls(cfg, pki.client(Some(&mhlw))).await;

    // The right CA and a certificate it issued: served.
    health(&registry.tls_endpoint(), Some(pki.client(Some(&mhlw)))).await.expect("mutual TLS works");
    // (a) Plaintext to a TLS-only server.
    let plaintext = health(&registry.endpoint(), None).await;
    assert!(plaintext.is_err(), "plaintext must be refused: {plaintext:?}");
    // No client certificate where one is required.
    let anonymous = health(&registry.tls_endpoint(), Some(pki.client(None))).await;
    assert!(anonymous.is_err(), "a client without a certificate must be refused: {anonymous:?}");
    // (b) A certificate for the same department from another CA.
    let other_ca = Ca::generate("someone else's CA").expect("other CA");
    let forged = other_ca.issue_department("mhlw").expect("forged certificate");
    let foreign = health(&registry.tls_endpoint(), Some(pki.client(Some(&forged)))).await;
    assert!(foreign.is_err(), "a certificate of another CA must be refused: {foreign:?}");
    // The server keeps serving everyone else.
    health(&registry.tls_endpoint(), Some(pki.client(Some(&mhlw)))).await.expect("still serving");
}

/// A registry config that is never started far enough to connect anywhere.
fn registry_config_unreachable() -> kakehashi_registry::config::RegistryConfig {
    kakehashi_registry::config::RegistryConfig { nats_url: "nats://127.0.0.1:1".into(), ..Default::default() }
}

#[tokio::test]
async fn the_client_certificate_decides_the_department() {
    let pki = pki();
    let nats = NatsServer::start();
    // Certificates only: no tokens anywhere.
    let mut rcfg = registry_config(&nats);
    rcfg.validator.enabled = false; // published events stay in KH_INGRESS, to be read back
    rcfg.admins = vec![ADMIN.into()];
    rcfg.grpc_tls = Some(pki.section(true, true));
    let admin = pki.department(ADMIN);
    let registry = Registry::start_tls(rcfg, pki.client(Some(&admin))).await;

    let admin_channel = tls_channel(&registry.tls_endpoint(), pki.client(Some(&admin))).await.expect("admin");
    schema_registry_client::SchemaRegistryClient::new(admin_channel.clone())
        .register_schema(RegisterSchemaRequest {
            subject: TYPE.into(),
            schema: r#"{"type":"object"}"#.into(),
            ..Default::default()
        })
        .await
        .expect("the admin certificate registers a schema");
    policies_client::PoliciesClient::new(admin_channel)
        .put_policy(policy("health.>", &["city-shibuya"], &["mhlw"], &[]))
        .await
        .expect("the admin certificate puts a policy");

    let shibuya = pki.department("city-shibuya");
    let mut acfg = adapter_config(&nats);
    acfg.grpc_tls = Some(pki.section(true, true));
    let adapter = Adapter::start_tls(acfg, pki.client(Some(&shibuya))).await;
    let channel = tls_channel(&adapter.tls_endpoint(), pki.client(Some(&shibuya))).await.expect("shibuya");
    let mut publisher = publisher_client::PublisherClient::new(channel);
    let event = |source: &str| Event {
        id: kakehashi_proto::ids::new_event_id(),
        source: source.into(),
        r#type: TYPE.into(),
        data: br#"{"ok":true}"#.to_vec(),
        ..Default::default()
    };

    // No source given: the certificate's department becomes the source.
    let ack =
        publisher.publish(event("")).await.expect("publish as the certificate's department").into_inner();
    let js = async_nats::jetstream::new(nats.admin().await);
    let stored = js
        .get_stream("KH_INGRESS")
        .await
        .expect("KH_INGRESS")
        .get_raw_message(ack.sequence)
        .await
        .expect("stored event");
    let stored_event = Event::decode(stored.payload.as_ref()).expect("an Event");
    assert_eq!(stored_event.source, "city-shibuya");
    assert_eq!(
        kakehashi_proto::subjects::published_ingress(&stored.subject),
        kakehashi_proto::subjects::ingress("city-shibuya", TYPE, &stored_event.subject)
    );
    // Claiming another department is refused.
    let spoofed = publisher.publish(event("mhlw")).await.expect_err("publish as mhlw");
    assert_eq!(spoofed.code(), Code::PermissionDenied, "{spoofed:?}");

    // On the registry, mhlw's certificate acts for mhlw only.
    let mhlw = pki.department("mhlw");
    let channel = tls_channel(&registry.tls_endpoint(), pki.client(Some(&mhlw))).await.expect("mhlw");
    let mut subs = subscriptions_client::SubscriptionsClient::new(channel.clone());
    let subscription = |department: &str| CreateSubscriptionRequest {
        subscription: Some(Subscription {
            department: department.into(),
            name: "checks".into(),
            type_pattern: "health.>".into(),
            ..Default::default()
        }),
    };
    let for_nta = subs.create_subscription(subscription("nta")).await.expect_err("mhlw acting for nta");
    assert_eq!(for_nta.code(), Code::PermissionDenied, "{for_nta:?}");
    subs.create_subscription(subscription("mhlw")).await.expect("mhlw's own subscription");
    let all = subs
        .list_subscriptions(ListSubscriptionsRequest { department: String::new() })
        .await
        .expect_err("listing every department's subscriptions");
    assert_eq!(all.code(), Code::PermissionDenied, "{all:?}");
    let not_admin = policies_client::PoliciesClient::new(channel)
        .put_policy(policy("health.>", &["mhlw"], &["mhlw"], &["mhlw"]))
        .await
        .expect_err("mhlw is no administrator");
    assert_eq!(not_admin.code(), Code::PermissionDenied, "{not_admin:?}");
}

#[tokio::test]
async fn list_policies_needs_an_identity_and_shows_a_department_its_own() {
    let pki = pki();
    let nats = NatsServer::start();
    // Client certificates optional: certificates and tokens both identify callers.
    let mut cfg = registry_config(&nats);
    cfg.admins = vec![ADMIN.into()];
    cfg.credentials.insert("tok-nta".into(), "nta".into());
    cfg.grpc_tls = Some(pki.section(true, false));
    let registry = Registry::start_tls(cfg, pki.client(None)).await;
    let admin = pki.department(ADMIN);
    let mut as_admin = policies_client::PoliciesClient::new(
        tls_channel(&registry.tls_endpoint(), pki.client(Some(&admin))).await.expect("admin"),
    );
    for p in [
        policy("health.>", &["city-shibuya"], &["mhlw"], &[]),
        policy("tax.>", &["city-shibuya"], &["nta"], &["nta"]),
        policy("welfare.>", &["city-sapporo"], &["mhlw"], &["mhlw"]),
    ] {
        as_admin.put_policy(p).await.expect("admin puts policies");
    }
    let every: BTreeSet<String> = ["health.>", "tax.>", "welfare.>"].into_iter().map(String::from).collect();
    assert_eq!(
        patterns(as_admin.list_policies(ListPoliciesRequest {}).await.expect("admin").into_inner()),
        every
    );

    // (d) Without any identity: refused.
    let mut anonymous = policies_client::PoliciesClient::new(
        tls_channel(&registry.tls_endpoint(), pki.client(None)).await.expect("TLS without a certificate"),
    );
    let refused = anonymous.list_policies(ListPoliciesRequest {}).await.expect_err("no identity");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // (e) A wrong token: refused.
    let wrong = anonymous
        .list_policies(with_token(ListPoliciesRequest {}, "tok-forged"))
        .await
        .expect_err("bad token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    // A token works where certificates are optional; nta sees only the policy naming it.
    let nta =
        anonymous.list_policies(with_token(ListPoliciesRequest {}, "tok-nta")).await.expect("nta by token");
    assert_eq!(patterns(nta.into_inner()), BTreeSet::from(["tax.>".to_string()]));

    // A department by certificate, through the CLI's own client code (--ca, --cert, --key).
    let mhlw = pki.department("mhlw");
    let (cert, key) = mhlw.write(pki.dir.path(), "mhlw").expect("write mhlw certificate");
    let mut conn = kakehashi_tests::services::cli_conn(&registry.tls_endpoint(), "", &nats);
    conn.ca = Some(pki.ca_file.clone());
    conn.cert = Some(cert);
    conn.key = Some(key);
    let mut as_mhlw =
        kakehashi_ctl::clients::policies(&conn).await.expect("CLI connects with mhlw's certificate");
    let seen = as_mhlw.list_policies(ListPoliciesRequest {}).await.expect("mhlw lists").into_inner();
    assert_eq!(patterns(seen), BTreeSet::from(["health.>".to_string(), "welfare.>".to_string()]));

    // The CLI names a missing file in one line.
    conn.ca = Some(pki.dir.path().join("no-such-ca.pem"));
    let missing = kakehashi_ctl::clients::policies(&conn).await.expect_err("missing CA file");
    assert!(missing.to_string().contains("no-such-ca.pem"), "{missing}");
}
