//! Kakehashi adapter: the `Publisher` gRPC service through which departments put events on the
//! bus, and the building blocks department adapters are made of.
//!
//! Layout:
//! - [`config`]: the typed configuration.
//! - [`envelope`]: defaults, limits and the NATS message of an event.
//! - [`publisher`]: the gRPC service.
//! - [`cloudevent`]: `PublishCloudEvent`'s CloudEvent (JSON or protobuf format) as an `Event`.
//! - [`schemas`]: the adapter's mirror of the registered schema subjects (`KH_SCHEMAS`).
//! - [`sdk`]: the adapter SDK — connect as a department, turn records into events, publish
//!   with retries, pipelined (`docs/adapters.md`).
//! - [`legacy`]: legacy file ingestion — era dates, width folding, CP932, record readers,
//!   mappings, deterministic ids, checkpoints and the import driver (`docs/legacy-mapping.md`).
//! - [`import`]: the `ingest` command — the driver over a NATS sink, progress and summary.
//!
//! [`run`] is the whole service; `main.rs` only parses arguments and calls it (or
//! [`import::run`] for `ingest`).

pub mod cloudevent;
pub mod config;
pub mod envelope;
pub mod import;
pub mod legacy;
pub mod publisher;
pub mod schemas;
pub mod sdk;

use config::AdapterConfig;
use kakehashi_proto::v1;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the adapter could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// NATS unreachable.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// URL tried.
        url: String,
        /// Cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Streams could not be set up.
    #[error(transparent)]
    Topology(#[from] kakehashi_runtime::topology::TopologyError),
    /// Bad configuration value.
    #[error("configuration: {0}")]
    Config(String),
    /// Startup of a component failed.
    #[error("startup: {0}")]
    Startup(String),
    /// The gRPC TLS files could not be used.
    #[error("gRPC TLS: {0}")]
    Tls(#[from] kakehashi_runtime::tls::TlsError),
    /// gRPC would listen off loopback with nobody authenticated.
    #[error(transparent)]
    OpenListener(#[from] kakehashi_runtime::identity::OpenListenerError),
    /// The metrics endpoint's token is unusable, or it would listen off loopback without one.
    #[error(transparent)]
    Metrics(#[from] kakehashi_runtime::metrics::ScrapeAccessError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Connects to NATS with the settings every adapter component uses.
pub async fn connect(
    url: &str,
    auth: &kakehashi_runtime::nats_auth::NatsAuthConfig,
    name: &str,
) -> Result<async_nats::jetstream::Context, RunError> {
    let client = auth
        .options(name)
        .map_err(|e| RunError::Startup(e.to_string()))?
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| RunError::Connect { url: url.to_string(), source })?;
    Ok(async_nats::jetstream::new(client))
}

/// Runs the adapter's gRPC service on `listener` until `shutdown` completes.
pub async fn run(
    config: AdapterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // The listener's settings are checked first: a bad value or certificate fails startup
    // before anything connects.
    config.grpc_server.check().map_err(RunError::Config)?;
    let server = config.grpc_server.apply(kakehashi_runtime::tls::server_builder(config.grpc_tls.as_ref())?);
    // So is who may call: off loopback, nobody unauthenticated.
    let identities = kakehashi_runtime::identity::Identities::new(config.credentials.clone(), Vec::new())
        .with_client_certs(config.grpc_tls.as_ref().is_some_and(|t| t.accepts_client_certs()));
    let grpc_addr = listener.local_addr().map_err(|e| RunError::Startup(format!("gRPC listener: {e}")))?;
    identities.check_listener("adapter", grpc_addr)?;
    // So is the metrics endpoint's access: off loopback only with a token.
    let metrics_access = config
        .metrics_addr
        .map(|addr| {
            kakehashi_runtime::metrics::ScrapeAccess::configure(addr, config.metrics_token_file.as_deref())
        })
        .transpose()?;
    let js = connect(&config.nats_url, &config.nats_auth, &config.instance).await?;
    let buckets = kakehashi_runtime::topology::ensure(&js, &config.topology).await?;
    // Direct reads of single versions: the adapter's identity may create no consumers.
    let schemas = schemas::SchemaIndex::open_direct(js.client());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<v1::publisher_server::PublisherServer<publisher::PublisherService>>().await;
    const SERVED: &[&str] = &["kakehashi.v1.Publisher"];
    let reflection = kakehashi_runtime::grpc::reflection_v1(SERVED)
        .map_err(|e| RunError::Startup(format!("reflection: {e}")))?;
    let reflection_alpha = kakehashi_runtime::grpc::reflection_v1alpha(SERVED)
        .map_err(|e| RunError::Startup(format!("reflection: {e}")))?;
    let audit = kakehashi_runtime::audit::AuditWriter::start(
        js.clone(),
        buckets.config.clone(),
        config.instance.clone(),
        &config.topology,
    );
    let metrics = kakehashi_runtime::metrics::Registry::new();
    kakehashi_runtime::process_metrics::register(&metrics, "adapter", js.client(), audit.clone());
    let grpc_metrics = kakehashi_runtime::grpc::GrpcMetrics::new(&metrics);
    identities.log_mode("adapter", config.grpc_tls.as_ref());
    let service = publisher::PublisherService::new(
        js,
        identities,
        schemas,
        (audit, &metrics),
        publisher::Limits {
            max_payload_bytes: config.max_payload_bytes,
            ingress_max_message_bytes: usize::try_from(config.topology.ingress_max_message_bytes())
                .unwrap_or(0),
            window: config.stream_window,
            max_json_depth: config.max_json_depth,
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let (Some(addr), Some(access)) = (config.metrics_addr, metrics_access) {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::Startup(format!("metrics listener {addr}: {e}")))?;
        let mut stop = stop_rx;
        tokio::spawn(kakehashi_runtime::metrics::serve(metrics, l, access, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    // Above the payload limit, so an oversized event is answered by `Publish` naming
    // `max_payload_bytes`, not by tonic's 4 MiB default.
    let max_decoding =
        kakehashi_runtime::grpc::max_decoding_bytes(config.max_request_bytes, config.max_payload_bytes);
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "adapter serving");
    server
        .trace_fn(kakehashi_runtime::grpc::server_span)
        .layer(kakehashi_runtime::identity::peer_cert_layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(grpc_metrics.wrap(
            v1::publisher_server::PublisherServer::new(service).max_decoding_message_size(max_decoding),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    let _ = stop_tx.send(true);
    Ok(())
}
