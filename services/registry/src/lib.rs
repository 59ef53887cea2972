//! Kakehashi registry: the schema store and `SchemaRegistry` API, the ingress validator, and
//! delivery of validated events to subscribing departments.
//!
//! Layout:
//! - [`config`]: the typed configuration.
//! - [`store`]: versioned schemas in `KH_SCHEMAS`, cached, with compiled validators.
//! - [`compat`]: the JSON Schema and protobuf compatibility checkers.
//! - [`protobuf`]: protobuf schemas compiled at registration, protobuf payloads checked.
//! - [`validator`]: `KH_INGRESS` → `KH_EVENTS` | `KH_DLQ`.
//! - [`policy`], [`subscriptions`], [`delivery`]: who may do what, and the Subscribe stream.
//! - [`api`]: the gRPC services.
//! - [`redrive`]: dead letters read from `KH_DLQ` and put back on ingress (API and CLI).
//!
//! [`run`] is the whole service; `main.rs` only reads configuration and calls it, so tests run
//! the real thing in-process on `127.0.0.1:0`.

pub mod api;
pub mod compat;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod metrics;
pub mod pii;
pub mod policy;
pub mod protobuf;
pub mod redrive;
pub mod repeats;
pub mod store;
pub mod stream_claims;
pub mod subscriptions;
pub mod trace_index;
pub mod validation;
pub mod validator;
mod watched;

use config::RegistryConfig;
use kakehashi_proto::v1;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the registry could not run.
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
    /// Streams or buckets could not be set up.
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

/// Runs the registry on `listener` until `shutdown` completes.
pub async fn run(
    config: RegistryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| RunError::Startup(format!("metrics listener {addr}: {e}")))?,
        ),
        None => None,
    };
    run_with(config, listener, metrics_listener, shutdown).await
}

/// [`run`] with the metrics listener already bound (or none), e.g. on `127.0.0.1:0` in tests.
pub async fn run_with(
    config: RegistryConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // The listener's settings are checked first: a bad value or certificate fails startup
    // before anything connects.
    config.grpc_server.check().map_err(RunError::Config)?;
    let server = config.grpc_server.apply(kakehashi_runtime::tls::server_builder(config.grpc_tls.as_ref())?);
    // So is who may call: off loopback, nobody unauthenticated and no public pseudonym key.
    let identities =
        kakehashi_runtime::identity::Identities::new(config.credentials.clone(), config.admins.clone())
            .with_client_certs(config.grpc_tls.as_ref().is_some_and(|t| t.accepts_client_certs()))
            .with_delegates(config.delegates.clone())
            .with_delegates_for_admins(config.delegates_for_admins);
    let grpc_addr = listener.local_addr().map_err(|e| RunError::Startup(format!("gRPC listener: {e}")))?;
    identities.check_listener("registry", grpc_addr)?;
    if config.pseudonym_secret == config::DEV_PSEUDONYM_SECRET {
        // The key is public (it is in the source): with it anyone can test a My Number against
        // a pseudonym, so it is for a developer's loopback only.
        if !grpc_addr.ip().is_loopback() {
            return Err(RunError::Config(format!(
                "the development pseudonym secret is refused on {grpc_addr}: set \
                 KAKEHASHI_PSEUDONYM_SECRET_FILE (pseudonym_secret_file) or listen on a loopback address"
            )));
        }
        tracing::warn!(
            "using the development pseudonym secret: set KAKEHASHI_PSEUDONYM_SECRET outside development"
        );
    }
    // So is the metrics endpoint's access: off loopback only with a token.
    let metrics_endpoint = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map_err(|e| RunError::Startup(format!("metrics listener: {e}")))?;
            let access = kakehashi_runtime::metrics::ScrapeAccess::configure(
                addr,
                config.metrics_token_file.as_deref(),
            )?;
            Some((l, access))
        }
        None => None,
    };
    let default_mode: compat::Mode = config
        .default_compatibility
        .parse()
        .map_err(|e| RunError::Config(format!("default_compatibility: {e}")))?;
    let client = config
        .nats_auth
        .options(&config.instance)
        .map_err(|e| RunError::Config(e.to_string()))?
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(&config.nats_url)
        .await
        .map_err(|source| RunError::Connect { url: config.nats_url.clone(), source })?;
    let js = async_nats::jetstream::new(client);
    let buckets = kakehashi_runtime::topology::ensure(&js, &config.topology).await?;
    kakehashi_runtime::topology::ensure_ingress_partitions(&js, &config.topology).await?;
    let store = store::SchemaStore::open(
        buckets.schemas,
        default_mode,
        config.limits.max_schema_bytes,
        config.limits.max_cached_validators,
    )
    .await
    .map_err(|e| RunError::Startup(e.to_string()))?;
    let policies =
        policy::Policies::open(buckets.config.clone()).await.map_err(|e| RunError::Startup(e.to_string()))?;
    let subs = subscriptions::Subscriptions::open(js.clone(), buckets.config.clone(), policies.clone())
        .await
        .map_err(|e| RunError::Startup(e.to_string()))?;

    let audit = kakehashi_runtime::audit::AuditWriter::start(
        js.clone(),
        buckets.config.clone(),
        config.instance.clone(),
        &config.topology,
    );
    let metrics = metrics::RegistryMetrics::new();
    kakehashi_runtime::process_metrics::register(&metrics.registry, "registry", js.client(), audit.clone());
    let grpc_metrics = kakehashi_runtime::grpc::GrpcMetrics::new(&metrics.registry);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_metrics = stop_rx.clone();
    let (trace_index, trace_feed) = trace_index::TraceIndex::start(
        js.clone(),
        &config.trace_index,
        Duration::from_secs(config.topology.audit_max_age_secs),
        stop_rx.clone(),
    )
    .map_err(|e| RunError::Startup(e.to_string()))?;
    metrics.watch_lag(
        js.clone(),
        subs.clone(),
        store.clone(),
        trace_index.progress(),
        Duration::from_secs(5),
    );
    // One set of limits for the validator and the dry run, so they cannot disagree.
    let check_limits = validator::CheckLimits {
        max_payload_bytes: config.limits.max_payload_bytes,
        max_violations: config.limits.max_violations,
        max_json_depth: config.limits.max_json_depth,
    };
    let validator_task = if config.validator.enabled {
        let p = policies.clone();
        let policy: validator::ProducerPolicy = Arc::new(move |s: &str, t: &str| p.may_publish(s, t));
        let settings = validator::ValidatorSettings {
            batch: config.validator.batch.max(1),
            ack_wait: Duration::from_secs(config.validator.ack_wait_secs.max(1)),
            limits: check_limits,
            actor: config.instance.clone(),
            failover: Duration::from_millis(config.validator.failover_ms.max(200)),
            audit: audit.clone(),
            metrics: metrics.clone(),
            partitions: config.topology.ingress_partitions,
            config: buckets.config.clone(),
        };
        Some(tokio::spawn(validator::run(js.clone(), store.clone(), policy, settings, stop_rx)))
    } else {
        None
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<v1::schema_registry_server::SchemaRegistryServer<api::schema_registry::SchemaRegistryService>>().await;
    health.set_serving::<v1::delivery_server::DeliveryServer<delivery::DeliveryService>>().await;
    health.set_serving::<v1::subscriptions_server::SubscriptionsServer<api::subscriptions::SubscriptionsService>>().await;
    health.set_serving::<v1::policies_server::PoliciesServer<api::subscriptions::PoliciesService>>().await;
    health.set_serving::<v1::flows_server::FlowsServer<api::flows::FlowsService>>().await;
    health
        .set_serving::<v1::dead_letters_server::DeadLettersServer<api::dead_letters::DeadLettersService>>()
        .await;
    const SERVED: &[&str] = &[
        "kakehashi.v1.SchemaRegistry",
        "kakehashi.v1.Delivery",
        "kakehashi.v1.Subscriptions",
        "kakehashi.v1.Policies",
        "kakehashi.v1.Flows",
        "kakehashi.v1.DeadLetters",
    ];
    let reflection = kakehashi_runtime::grpc::reflection_v1(SERVED)
        .map_err(|e| RunError::Startup(format!("reflection: {e}")))?;
    let reflection_alpha = kakehashi_runtime::grpc::reflection_v1alpha(SERVED)
        .map_err(|e| RunError::Startup(format!("reflection: {e}")))?;

    identities.log_mode("registry", config.grpc_tls.as_ref());
    let registry =
        api::schema_registry::SchemaRegistryService::new(store.clone(), identities.clone(), check_limits);
    let privacy = delivery::Privacy {
        store: store.clone(),
        policies: policies.clone(),
        secret: Arc::from(config.pseudonym_secret.as_bytes()),
    };
    let flows = api::flows::FlowsService::new(
        js.clone(),
        identities.clone(),
        trace_index,
        config.limits.max_audit_scan,
    );
    let dead_letters = api::dead_letters::DeadLettersService::new(
        js.clone(),
        identities.clone(),
        store.clone(),
        audit.clone(),
        config.limits.max_audit_scan,
    )
    .with_max_response_bytes(config.limits.max_list_response_bytes);
    let delivery = delivery::DeliveryService::new(
        js.clone(),
        identities.clone(),
        subs.clone(),
        privacy,
        audit,
        metrics.clone(),
        (config.delivery.default_in_flight, config.delivery.max_in_flight),
    );
    let subscriptions = api::subscriptions::SubscriptionsService::new(
        subs,
        identities.clone(),
        (config.delivery.default_ack_wait_secs, config.delivery.max_ack_wait_secs),
        config.delivery.default_max_deliveries,
    );
    if let Some((metrics_listener, access)) = metrics_endpoint {
        let addr = metrics_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let token = access.requires_token();
        let mut stop = stop_rx_metrics;
        tokio::spawn(kakehashi_runtime::metrics::serve(
            metrics.registry.clone(),
            metrics_listener,
            access,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        tracing::info!(%addr, token, "metrics at http://{addr}/metrics");
    }
    // Above every configured limit, so an oversized schema or payload is answered by the
    // service naming its limit, not by tonic's 4 MiB default.
    let max_decoding = kakehashi_runtime::grpc::max_decoding_bytes(
        config.limits.max_request_bytes,
        config.limits.max_schema_bytes.max(config.limits.max_payload_bytes),
    );
    let dead_letters = grpc_metrics.wrap(
        v1::dead_letters_server::DeadLettersServer::new(dead_letters).max_decoding_message_size(max_decoding),
    );
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), instance = %config.instance, "registry serving");
    // Our services, each call counted by method and status code.
    let schema_registry = grpc_metrics.wrap(
        v1::schema_registry_server::SchemaRegistryServer::new(registry)
            .max_decoding_message_size(max_decoding),
    );
    let delivery = grpc_metrics
        .wrap(v1::delivery_server::DeliveryServer::new(delivery).max_decoding_message_size(max_decoding));
    let subscriptions = grpc_metrics.wrap(
        v1::subscriptions_server::SubscriptionsServer::new(subscriptions)
            .max_decoding_message_size(max_decoding),
    );
    let policies = grpc_metrics.wrap(
        v1::policies_server::PoliciesServer::new(api::subscriptions::PoliciesService::new(
            policies, identities,
        ))
        .max_decoding_message_size(max_decoding),
    );
    let flows =
        grpc_metrics.wrap(v1::flows_server::FlowsServer::new(flows).max_decoding_message_size(max_decoding));
    let served = server
        .trace_fn(kakehashi_runtime::grpc::server_span)
        .layer(kakehashi_runtime::identity::peer_cert_layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(schema_registry)
        .add_service(delivery)
        .add_service(subscriptions)
        .add_service(policies)
        .add_service(flows)
        .add_service(dead_letters)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    let _ = stop_tx.send(true);
    // The index file is released before `run` returns (a registry restarted in the same
    // process opens it again).
    let _ = trace_feed.await;
    if let Some(task) = validator_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "validator stopped with an error"),
            Err(e) => tracing::error!(error = %e, "validator task failed"),
            Ok(Ok(())) => {}
        }
    }
    served?;
    Ok(())
}
