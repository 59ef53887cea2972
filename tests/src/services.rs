//! Kakehashi services run in-process on `127.0.0.1:0`, each stopped when its handle drops.

use crate::NatsServer;
use kakehashi_adapter::config::AdapterConfig;
use kakehashi_ctl::nats_config::permissions::Service;
use kakehashi_registry::config::RegistryConfig;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::ClientTlsConfig;

/// A running registry.
pub struct Registry {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A running adapter.
pub struct Adapter {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Registry config pointing at `nats` with the `registry` identity, with test-friendly defaults.
pub fn registry_config(nats: &NatsServer) -> RegistryConfig {
    let mut c = RegistryConfig {
        nats_url: nats.url(),
        nats_auth: nats.service_auth(Service::Registry),
        ..Default::default()
    };
    c.delivery.default_ack_wait_secs = 5;
    c
}

/// The CLI's connection settings for this bus, with the `operator` NATS identity.
pub fn cli_conn(registry: &str, adapter: &str, nats: &NatsServer) -> kakehashi_ctl::cli::Conn {
    let mut conn = kakehashi_ctl::cli::Conn::new(registry, adapter, nats.url());
    conn.nats_credentials = Some(nats.generated().service(Service::Operator));
    conn
}

/// Adapter config pointing at `nats` with the `adapter` identity.
pub fn adapter_config(nats: &NatsServer) -> AdapterConfig {
    AdapterConfig {
        nats_url: nats.url(),
        nats_auth: nats.service_auth(Service::Adapter),
        ..Default::default()
    }
}

impl Registry {
    /// Starts a registry with the given config and waits until it serves.
    pub async fn start(config: RegistryConfig) -> Self {
        Self::start_with_client(config, None).await
    }

    /// Starts a registry whose config has `grpc_tls` set; waits until a client with `client`'s
    /// TLS settings (CA, maybe a client certificate) gets SERVING from it.
    pub async fn start_tls(config: RegistryConfig, client: ClientTlsConfig) -> Self {
        Self::start_with_client(config, Some(client)).await
    }

    async fn start_with_client(config: RegistryConfig, client: Option<ClientTlsConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = kakehashi_registry::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("registry failed: {e}");
            }
        });
        wait_serving_with(addr, client).await;
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// `http://<addr>` for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://<addr>` for gRPC clients of a TLS registry.
    pub fn tls_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Starts a registry that also serves Prometheus metrics on a port the OS picks.
    pub async fn start_with_metrics(config: RegistryConfig) -> (Self, SocketAddr) {
        Self::start_with_metrics_on(config, "127.0.0.1:0").await
    }

    /// Like [`Registry::start_with_metrics`], the metrics listener bound on `bind` (e.g.
    /// `0.0.0.0:0`: every interface, as a deployment does); the address returned is the
    /// loopback one of that port.
    pub async fn start_with_metrics_on(config: RegistryConfig, bind: &str) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = tokio::net::TcpListener::bind(bind).await.expect("bind metrics");
        let metrics_addr =
            SocketAddr::from(([127, 0, 0, 1], metrics.local_addr().expect("metrics addr").port()));
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = kakehashi_registry::run_with(config, listener, Some(metrics), shutdown).await {
                panic!("registry failed: {e}");
            }
        });
        wait_serving(addr).await;
        (Self { addr, stop: Some(stop), task: Some(task) }, metrics_addr)
    }

    /// Stops it gracefully and waits.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Adapter {
    /// Starts an adapter with the given config and waits until it serves.
    pub async fn start(config: AdapterConfig) -> Self {
        Self::start_with_client(config, None).await
    }

    /// Starts an adapter whose config has `grpc_tls` set; waits until a client with `client`'s
    /// TLS settings gets SERVING from it.
    pub async fn start_tls(config: AdapterConfig, client: ClientTlsConfig) -> Self {
        Self::start_with_client(config, Some(client)).await
    }

    async fn start_with_client(config: AdapterConfig, client: Option<ClientTlsConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = kakehashi_adapter::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("adapter failed: {e}");
            }
        });
        wait_serving_with(addr, client).await;
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// `http://<addr>` for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://<addr>` for gRPC clients of a TLS adapter.
    pub fn tls_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.take();
    }
}

/// Waits until the gRPC health service at `addr` answers SERVING.
pub async fn wait_serving(addr: SocketAddr) {
    wait_serving_with(addr, None).await
}

/// Waits until the gRPC health service at `addr` answers SERVING, over TLS with `tls` when given.
pub async fn wait_serving_with(addr: SocketAddr, tls: Option<ClientTlsConfig>) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    crate::wait::until("gRPC health SERVING", std::time::Duration::from_secs(30), || {
        let tls = tls.clone();
        async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = tonic::transport::Channel::from_shared(format!("{scheme}://{addr}")).ok()?;
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls).ok()?;
            }
            let channel = endpoint.connect().await.ok()?;
            let mut client = HealthClient::new(channel);
            let r = client.check(HealthCheckRequest { service: String::new() }).await.ok()?;
            (r.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await
}

/// `GET /metrics` from a metrics listener at `addr` (one without a token); the whole response.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
