//! The web console in-process on `127.0.0.1:0`, pointed at a registry; stopped on drop.

use kakehashi_console::config::ConsoleConfig;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// A running console.
pub struct Console {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Console {
    /// Starts a console for the registry at `registry_url` (plain HTTP on loopback).
    pub async fn start(mut config: ConsoleConfig, registry_url: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind console");
        let addr = listener.local_addr().expect("console addr");
        config.listen_addr = addr;
        config.registry_url = registry_url.to_string();
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = kakehashi_console::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("console failed: {e}");
            }
        });
        Self { addr, stop: Some(stop) }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
