//! NATS over TLS, as `kakehashi nats config --tls-name` sets it up: the services and a
//! department's SDK work end to end through a server that requires TLS, trusting the generated
//! CA; a client without TLS, or trusting another CA, never gets a connection even with valid
//! credentials.

use kakehashi_adapter::sdk::Bus;
use kakehashi_ctl::nats_config::permissions::Service;
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use kakehashi_tests::bus::{self, Flow};
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use std::time::Duration;

const TYPE: &str = "test.tls.recorded";
const SOURCE: &str = "city-shibuya";
const FLOW: Flow =
    Flow { event_type: TYPE, policy: TYPE, producers: &[SOURCE], reader: "mhlw", subscription: "tls" };

fn ca_of(nats: &NatsServer) -> std::path::PathBuf {
    nats.generated().tls.as_ref().expect("a TLS server").ca_file.clone()
}

#[tokio::test]
async fn services_and_a_department_work_end_to_end_over_tls() {
    let nats = NatsServer::start_tls();
    let registry = Registry::start(registry_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 8).await;

    let auth = NatsAuthConfig {
        credentials: Some(nats.department_creds(SOURCE)),
        ca_file: Some(ca_of(&nats)),
        ..Default::default()
    };
    let sdk = Bus::builder(nats.url(), SOURCE).nats_auth(auth).connect().await.expect("department over TLS");
    let ack = sdk.publish(bus::event(SOURCE, TYPE, 1)).await.expect("published");
    let delivered = subscriber.expect_and_ack("the event sent over TLS", Duration::from_secs(10)).await;
    assert_eq!(bus::delivered_id(&delivered), ack.event_id);
}

#[tokio::test]
async fn plaintext_and_another_ca_are_refused_even_with_valid_credentials() {
    let nats = NatsServer::start_tls();
    let creds = Some(nats.generated().service(Service::Registry));

    // No CA configured: the client cannot verify the server's certificate.
    let plain = NatsAuthConfig { credentials: creds.clone(), ..Default::default() };
    let err = plain.options("plain").expect("options").connect(nats.url()).await;
    assert!(err.is_err(), "a client that does not trust the bus CA must not connect");

    // Trusting a different CA.
    let dir = tempfile::tempdir().expect("dir");
    let other = kakehashi_ctl::pki::Ca::generate("someone else").expect("ca");
    let other_ca = dir.path().join("other-ca.pem");
    kakehashi_ctl::pki::write_pem(&other_ca, &other.certificate().cert_pem, false).expect("write");
    let wrong = NatsAuthConfig { credentials: creds.clone(), ca_file: Some(other_ca), ..Default::default() };
    let err = wrong.options("wrong-ca").expect("options").connect(nats.url()).await;
    assert!(err.is_err(), "a client trusting another CA must not connect");

    // A raw TCP client that skips TLS gets the server's INFO demanding it, nothing more.
    use tokio::io::AsyncReadExt as _;
    let addr = nats.url().trim_start_matches("nats://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut info = vec![0u8; 4096];
    let n = tcp.read(&mut info).await.expect("INFO");
    let info = String::from_utf8_lossy(&info[..n]);
    assert!(info.contains("\"tls_required\":true"), "{info}");

    // The right CA and credentials connect.
    let right = NatsAuthConfig { credentials: creds, ca_file: Some(ca_of(&nats)), ..Default::default() };
    right.options("right").expect("options").connect(nats.url()).await.expect("connects over TLS");
}

#[tokio::test]
async fn with_client_verification_a_certificate_from_the_bus_ca_is_required_as_well() {
    let nats = NatsServer::start_mutual_tls();
    let registry = Registry::start(registry_config(&nats)).await;
    FLOW.prepare(&registry.endpoint(), bus::counter_schema()).await;
    let mut subscriber = FLOW.open(&registry.endpoint(), 8).await;
    let sdk = Bus::builder(nats.url(), SOURCE)
        .nats_auth(nats.department_auth(SOURCE))
        .connect()
        .await
        .expect("a department with its certificate");
    let ack = sdk.publish(bus::event(SOURCE, TYPE, 2)).await.expect("published");
    let delivered =
        subscriber.expect_and_ack("the event sent over mutual TLS", Duration::from_secs(10)).await;
    assert_eq!(bus::delivered_id(&delivered), ack.event_id);

    // Valid nkey and the right CA, but no client certificate.
    let no_cert = NatsAuthConfig { cert_file: None, key_file: None, ..nats.department_auth(SOURCE) };
    assert!(no_cert.options("no-cert").expect("options").connect(nats.url()).await.is_err());

    // A client certificate from another CA.
    let dir = tempfile::tempdir().expect("dir");
    let other = kakehashi_ctl::pki::Ca::generate("someone else").expect("ca");
    let (cert, key) =
        other.issue_client("dept-city-shibuya", &[]).expect("cert").write(dir.path(), "c").expect("write");
    let foreign =
        NatsAuthConfig { cert_file: Some(cert), key_file: Some(key), ..nats.department_auth(SOURCE) };
    assert!(foreign.options("foreign").expect("options").connect(nats.url()).await.is_err());
}
