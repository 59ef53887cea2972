//! Kakehashi services run in-process on `127.0.0.1:0`, each stopped when its handle drops.

use kakehashi_adapter::config::AdapterConfig;
use kakehashi_registry::config::RegistryConfig;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// Registry config pointing at `nats_url`, with test-friendly defaults.
pub fn registry_config(nats_url: &str) -> RegistryConfig {
    let mut c = RegistryConfig { nats_url: nats_url.to_string(), ..Default::default() };
    c.delivery.default_ack_wait_secs = 5;
    c
}

/// Adapter config pointing at `nats_url`.
pub fn adapter_config(nats_url: &str) -> AdapterConfig {
    AdapterConfig { nats_url: nats_url.to_string(), ..Default::default() }
}

impl Registry {
    /// Starts a registry with the given config and waits until it serves.
    pub async fn start(config: RegistryConfig) -> Self {
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
        wait_serving(addr).await;
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// `http://<addr>` for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a registry that also serves Prometheus metrics on a port the OS picks.
    pub async fn start_with_metrics(config: RegistryConfig) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
        let metrics_addr = metrics.local_addr().expect("metrics addr");
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
        wait_serving(addr).await;
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    /// `http://<addr>` for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    crate::wait::until("gRPC health SERVING", std::time::Duration::from_secs(30), || async move {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
        let mut client = HealthClient::new(channel);
        let r = client.check(HealthCheckRequest { service: String::new() }).await.ok()?;
        (r.into_inner().status == ServingStatus::Serving as i32).then_some(())
    })
    .await
}
