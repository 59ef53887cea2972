//! The issuer department as a service (binary `kakehashi-issuer`; in-process in `kakehashi
//! dev`): a client of the bus like any department, plus an HTTPS endpoint for verifiers.
//!
//! One job per module:
//! - [`config`]: the typed configuration (TOML file + `KAKEHASHI_*` overrides).
//! - [`bus`]: gRPC towards the registry (subscriptions, delivery) and the adapter (publish).
//! - [`events`]: the payloads read and written.
//! - [`state`]: records per pseudonym and the answer to each request, JSON lines, fsync'd.
//! - [`ids`]: certificate and event ids derived from the request id (exactly once).
//! - [`issuing`]: records + passport → card, or a refusal with its reason.
//! - [`keys`]: signing keys (rotation), the rid secret, revocation lists.
//! - [`output`]: each card as PNG, SVG and `.smart-health-card` files.
//! - [`tls`], [`https`]: the JWK Set and revocation lists over HTTPS with CORS.
//! - [`worker`]: the event loop.

pub mod bus;
pub mod config;
pub mod events;
pub mod https;
pub mod ids;
pub mod issuing;
pub mod keys;
pub mod output;
pub mod recorded_pb;
pub mod state;
pub mod tls;
pub mod worker;

use config::IssuerConfig;
use std::future::Future;
use std::sync::Arc;

/// Why the service stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Keys, rid secret or revocation lists.
    #[error("keys: {0}")]
    Keys(#[from] keys::KeyStoreError),
    /// The HTTPS certificate.
    #[error("HTTPS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The state file.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The bus.
    #[error("bus: {0}")]
    Bus(#[from] bus::BusError),
    /// A card's files.
    #[error(transparent)]
    Output(#[from] output::OutputError),
    /// Signing.
    #[error(transparent)]
    Signing(#[from] issuing::SigningError),
    /// The HTTPS listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A bug or a corrupted stored answer.
    #[error("{0}")]
    Internal(String),
}

/// Runs the issuer until `shutdown` completes, its HTTPS endpoint on `config.https_addr`.
pub async fn run(config: IssuerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    let listener = tokio::net::TcpListener::bind(config.https_addr)
        .await
        .map_err(|source| ServiceError::Listen { addr: config.https_addr, source })?;
    run_with_listener(config, listener, shutdown).await
}

/// [`run`] on a listener the caller bound (tests use port 0). Without `issuer_url`, the cards'
/// `iss` is `https://<the listener's address>`.
pub async fn run_with_listener(
    config: IssuerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    config.check()?;
    let addr =
        listener.local_addr().map_err(|source| ServiceError::Listen { addr: config.https_addr, source })?;
    let keys = Arc::new(keys::KeyStore::open(&config.key_dir(), &config.data_dir)?);
    let configured = config.https_tls.as_ref().map(|t| (t.cert_file.as_path(), t.key_file.as_path()));
    let (cert, key) = tls::server_files(configured, &config.data_dir, &config.tls_hostnames)?;
    let tls = tls::server_config(&cert, &key)?;
    let state = state::State::open(&config.state_file())?;
    let bus = bus::Bus::new(&config)?;
    let issuer_url = config.issuer_url_for(addr);
    tracing::info!(
        department = %config.department,
        iss = %issuer_url,
        kid = keys.current().kid(),
        keys = keys.keys().len(),
        https = %addr,
        "issuer starting"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = worker::Worker::new(config, bus, state, keys.clone(), issuer_url, stop_rx.clone());
    let mut https_stop = stop_rx;
    let serve = https::serve(listener, tls, keys, async move {
        let _ = https_stop.wait_for(|s| *s).await;
    });
    let work = async {
        let result = worker.run().await;
        // The worker failing stops the endpoint too: the service is down, not half up.
        let _ = stop_tx.send(true);
        result
    };
    let both = async { tokio::join!(serve, work).1 };
    tokio::pin!(both);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        result = &mut both => result,
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            both.await
        }
    };
    tracing::info!("issuer stopped");
    result
}
