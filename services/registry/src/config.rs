//! Registry configuration: defaults that work locally, a TOML file, then environment overrides.

use kakehashi_runtime::nats_auth::NatsAuthConfig;
pub use kakehashi_runtime::settings::ConfigError;
use kakehashi_runtime::settings::{self, default_instance};
use kakehashi_runtime::topology::TopologyConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// The development-only pseudonym key (a warning is logged when it is in use).
pub const DEV_PSEUDONYM_SECRET: &str = "kakehashi-development-only-pseudonym-key";

/// Everything the registry service can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// NATS server URL (`KAKEHASHI_NATS_URL`).
    pub nats_url: String,
    /// NATS identity (credentials file) and TLS; the registry's identity is `registry`.
    pub nats_auth: NatsAuthConfig,
    /// gRPC listen address (`KAKEHASHI_GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// Prometheus metrics address (`KAKEHASHI_METRICS_ADDR`); none = no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// File holding the bearer token scrapers must present (`KAKEHASHI_METRICS_TOKEN_FILE`;
    /// written by `kakehashi metrics token`). Required when `metrics_addr` is not a loopback
    /// address: the service refuses to start otherwise.
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// Name of this instance in audit records and dead letters (`KAKEHASHI_INSTANCE`).
    pub instance: String,
    /// Streams and buckets.
    pub topology: TopologyConfig,
    /// Size and count limits.
    pub limits: Limits,
    /// The ingress validator.
    pub validator: ValidatorConfig,
    /// Delivery to subscribers.
    pub delivery: DeliveryConfig,
    /// The index `Flows.TraceEvent` finds an event's audit records with.
    pub trace_index: crate::trace_index::TraceIndexConfig,
    /// Compatibility mode for subjects without an override, until one is set through the API.
    pub default_compatibility: String,
    /// Key of the per-department My Number pseudonyms (`KAKEHASHI_PSEUDONYM_SECRET`). The
    /// default is for development only: set a long random secret anywhere else, the same on
    /// every instance (changing it changes every department's tokens).
    pub pseudonym_secret: String,
    /// A file holding the pseudonym secret (`KAKEHASHI_PSEUDONYM_SECRET_FILE`; surrounding
    /// whitespace ignored), so the secret need not sit in the environment or this file; it wins
    /// over `pseudonym_secret`.
    pub pseudonym_secret_file: Option<std::path::PathBuf>,
    /// Department credentials: token → department id. Empty = development mode, where callers
    /// are not authenticated (never use that outside a laptop).
    pub credentials: std::collections::BTreeMap<String, String>,
    /// A file of `department = "token"` lines added to `credentials`
    /// (`KAKEHASHI_CREDENTIALS_FILE`; written by `kakehashi grpc tokens`), so no token is
    /// written into a configuration file.
    pub credentials_file: Option<std::path::PathBuf>,
    /// Departments that administer the bus: register schemas, manage policies and any
    /// department's subscriptions.
    pub admins: Vec<String>,
    /// Identities (a client certificate's or token's department id, e.g. `kakehashi-console`)
    /// trusted to act for any department they name in `x-kakehashi-on-behalf-of`; they have
    /// no rights of their own (`KAKEHASHI_DELEGATES`, comma-separated). Default: none.
    pub delegates: Vec<String>,
    /// Whether delegates may also act for administrators (`KAKEHASHI_DELEGATES_FOR_ADMINS`).
    /// Default false: a delegate's key is then worth a department's rights, never an
    /// administrator's.
    pub delegates_for_admins: bool,
    /// TLS of the gRPC server (`KAKEHASHI_GRPC_TLS_*`); none = plaintext. With a client CA, a
    /// verified client certificate identifies the department.
    pub grpc_tls: Option<kakehashi_runtime::tls::GrpcTls>,
    /// HTTP/2 limits of the gRPC listener.
    pub grpc_server: kakehashi_runtime::grpc_limits::GrpcServerLimits,
}

/// Explicit limits on what the registry accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest schema document, in bytes.
    pub max_schema_bytes: usize,
    /// Largest event payload (`Event.data`), in bytes; bigger ones are dead-lettered.
    pub max_payload_bytes: usize,
    /// Most field violations reported for one payload.
    pub max_violations: usize,
    /// Deepest nesting of arrays and objects in a JSON payload (`[]` and `{}` are one level);
    /// deeper payloads are dead-lettered. 1 to 126: a larger value is refused at load, as
    /// serde_json's own recursion limit (128) would answer before ours.
    #[serde(deserialize_with = "json_depth")]
    pub max_json_depth: usize,
    /// Most compiled validators kept in memory.
    pub max_cached_validators: usize,
    /// Most audit records one `Flows.FindEvents` scan reads.
    pub max_audit_scan: usize,
    /// Largest gRPC request read, in bytes (raised to the larger of the schema and payload
    /// limits plus 64 KiB if lower); larger ones get `OUT_OF_RANGE` from the transport.
    pub max_request_bytes: usize,
    /// Most bytes of one `DeadLetters.ListDeadLetters` response: a page ends before the letter
    /// that would exceed it, with `next_page_token` where the next starts (a page always holds
    /// at least one letter, however large). Default 4 MiB less 64 KiB: under the 4 MiB a gRPC
    /// client reads by default.
    pub max_list_response_bytes: usize,
}

/// How the validator pulls from `KH_INGRESS`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Run the validator in this instance.
    pub enabled: bool,
    /// Messages pulled per batch, 1 to 1,000: what one batch holds in memory and in flight
    /// before it is confirmed (the events of a record that repeats within it are one JetStream
    /// fast batch).
    #[serde(deserialize_with = "validator_batch")]
    pub batch: usize,
    /// Ingress messages not acked within this time are redelivered.
    pub ack_wait_secs: u64,
    /// How long the pinned validator may go without pulling before NATS pins another instance
    /// (failover time after a crash), in milliseconds.
    pub failover_ms: u64,
}

/// Defaults and bounds of subscriber delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Ack wait of a subscription that does not set one.
    pub default_ack_wait_secs: u64,
    /// Longest ack wait a subscription may ask for (`INVALID_ARGUMENT` naming this key above).
    pub max_ack_wait_secs: u64,
    /// Max deliveries of a subscription that does not set one.
    pub default_max_deliveries: u32,
    /// In-flight deliveries per stream when the client asks for 0.
    pub default_in_flight: u32,
    /// Upper bound on what a client may ask for.
    pub max_in_flight: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_auth: NatsAuthConfig::default(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: None,
            metrics_token_file: None,
            instance: default_instance("registry"),
            topology: TopologyConfig::default(),
            limits: Limits::default(),
            validator: ValidatorConfig::default(),
            delivery: DeliveryConfig::default(),
            trace_index: Default::default(),
            default_compatibility: "BACKWARD".into(),
            pseudonym_secret: DEV_PSEUDONYM_SECRET.into(),
            pseudonym_secret_file: None,
            credentials: Default::default(),
            credentials_file: None,
            admins: Vec::new(),
            delegates: Vec::new(),
            delegates_for_admins: false,
            grpc_tls: None,
            grpc_server: Default::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_schema_bytes: 256 * 1024,
            max_payload_bytes: 512 * 1024,
            max_violations: 100,
            max_json_depth: 64,
            max_cached_validators: 10_000,
            max_audit_scan: 100_000,
            max_request_bytes: kakehashi_runtime::grpc::DEFAULT_MAX_REQUEST_BYTES,
            max_list_response_bytes: 4 * 1024 * 1024 - 64 * 1024,
        }
    }
}

/// `validator.batch`, refused outside 1 to `MAX_BATCH`.
fn validator_batch<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let batch = usize::deserialize(deserializer)?;
    let most = crate::validator::MAX_BATCH;
    if (1..=most).contains(&batch) {
        return Ok(batch);
    }
    Err(serde::de::Error::custom(format!(
        "validator.batch = {batch} is out of range: it must be 1 to {most} (messages pulled, held and published as one batch)"
    )))
}

/// `limits.max_json_depth`, refused when serde_json's recursion limit would answer before ours.
fn json_depth<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let depth = usize::deserialize(deserializer)?;
    kakehashi_runtime::settings::json_depth("limits.max_json_depth", depth).map_err(serde::de::Error::custom)
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self { enabled: true, batch: 256, ack_wait_secs: 10, failover_ms: 1500 }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            default_ack_wait_secs: 30,
            max_ack_wait_secs: 86_400,
            default_max_deliveries: 5,
            default_in_flight: 64,
            max_in_flight: 4096,
        }
    }
}

impl RegistryConfig {
    /// Defaults, then the file (if given), then `KAKEHASHI_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Self = settings::from_file(file)?;
        settings::env_string("KAKEHASHI_NATS_URL", &mut cfg.nats_url);
        cfg.nats_auth.apply_env();
        settings::merge_token_file(&mut cfg.credentials_file, &mut cfg.credentials)?;
        if let Ok(v) = std::env::var("KAKEHASHI_ADMINS") {
            cfg.admins = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        }
        if let Ok(v) = std::env::var("KAKEHASHI_DELEGATES") {
            cfg.delegates =
                v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        }
        settings::env_parse("KAKEHASHI_DELEGATES_FOR_ADMINS", &mut cfg.delegates_for_admins)?;
        settings::env_parse("KAKEHASHI_GRPC_ADDR", &mut cfg.grpc_addr)?;
        settings::env_string("KAKEHASHI_INSTANCE", &mut cfg.instance);
        if let Ok(v) = std::env::var("KAKEHASHI_TRACE_INDEX_PATH") {
            cfg.trace_index.path = (!v.is_empty()).then(|| v.into());
        }
        if std::env::var("KAKEHASHI_METRICS_ADDR").is_ok() {
            let mut addr = SocketAddr::from(([127, 0, 0, 1], 9464));
            settings::env_parse("KAKEHASHI_METRICS_ADDR", &mut addr)?;
            cfg.metrics_addr = Some(addr);
        }
        if let Ok(v) = std::env::var("KAKEHASHI_METRICS_TOKEN_FILE") {
            cfg.metrics_token_file = Some(v.into());
        }
        kakehashi_runtime::tls::GrpcTls::apply_env(&mut cfg.grpc_tls)?;
        settings::env_string("KAKEHASHI_PSEUDONYM_SECRET", &mut cfg.pseudonym_secret);
        if let Some(v) = std::env::var_os("KAKEHASHI_PSEUDONYM_SECRET_FILE").filter(|v| !v.is_empty()) {
            cfg.pseudonym_secret_file = Some(v.into());
        }
        if let Some(path) = &cfg.pseudonym_secret_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            cfg.pseudonym_secret = text.trim().to_string();
        }
        if cfg.pseudonym_secret.len() < 16 {
            return Err(ConfigError::Env {
                name: "KAKEHASHI_PSEUDONYM_SECRET",
                message: match &cfg.pseudonym_secret_file {
                    Some(path) => {
                        format!("the pseudonym secret in {} must be at least 16 bytes", path.display())
                    }
                    None => "the pseudonym secret must be at least 16 bytes".into(),
                },
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/config/registry.toml");

    /// Every `name:` of a `{:?}` rendering: the field names of the struct and its sections.
    fn field_names(debug: &str) -> Vec<String> {
        let mut names = Vec::new();
        for part in debug.split(['{', ',', '(']) {
            if let Some((name, _)) = part.trim_start().split_once(": ") {
                if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !name.is_empty() {
                    names.push(name.to_string());
                }
            }
        }
        names
    }

    #[test]
    fn the_example_file_shows_every_key_with_its_default() {
        let parsed: RegistryConfig =
            toml::from_str(EXAMPLE).expect("deploy/config/registry.toml parses strictly");
        let default = RegistryConfig::default();
        for (what, ours, theirs) in [
            ("topology", format!("{:?}", parsed.topology), format!("{:?}", default.topology)),
            ("limits", format!("{:?}", parsed.limits), format!("{:?}", default.limits)),
            ("grpc_server", format!("{:?}", parsed.grpc_server), format!("{:?}", default.grpc_server)),
            ("validator", format!("{:?}", parsed.validator), format!("{:?}", default.validator)),
            ("delivery", format!("{:?}", parsed.delivery), format!("{:?}", default.delivery)),
            ("trace_index", format!("{:?}", parsed.trace_index), format!("{:?}", default.trace_index)),
            ("nats_url", parsed.nats_url.clone(), default.nats_url.clone()),
            ("grpc_addr", parsed.grpc_addr.to_string(), default.grpc_addr.to_string()),
            (
                "default_compatibility",
                parsed.default_compatibility.clone(),
                default.default_compatibility.clone(),
            ),
            ("nats_auth", format!("{:?}", parsed.nats_auth), format!("{:?}", default.nats_auth)),
            // The one key the example sets: metrics on loopback (the default is no endpoint).
            ("metrics_addr", format!("{:?}", parsed.metrics_addr), "Some(127.0.0.1:9464)".to_string()),
        ] {
            assert_eq!(ours, theirs, "deploy/config/registry.toml: [{what}] is not the default");
        }
        for name in field_names(&format!("{default:?}")) {
            let shown = EXAMPLE.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{name} =")) || l == format!("[{name}]")
            });
            assert!(shown, "deploy/config/registry.toml does not show the key `{name}`");
        }
    }
}

#[cfg(test)]
mod json_depth_tests {
    use super::*;

    #[test]
    fn max_json_depth_outside_1_to_126_is_refused_at_load_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("registry.toml");
        for (depth, ok) in [(0, false), (1, true), (126, true), (127, false), (128, false), (10_000, false)] {
            std::fs::write(&config, format!("[limits]\nmax_json_depth = {depth}\n")).expect("write config");
            match RegistryConfig::load(Some(&config)) {
                Ok(loaded) => {
                    assert!(ok, "{depth} is accepted");
                    assert_eq!(loaded.limits.max_json_depth, depth);
                }
                Err(e) => {
                    assert!(!ok, "{depth} is refused: {e}");
                    let e = e.to_string();
                    assert!(e.contains("limits.max_json_depth") && e.contains("1 to 126"), "{e}");
                }
            }
        }
        assert_eq!(RegistryConfig::default().limits.max_json_depth, 64);
    }

    #[test]
    fn a_validator_batch_outside_1_to_1000_is_refused_at_load_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("registry.toml");
        for (batch, ok) in [(0, false), (1, true), (1000, true), (1001, false)] {
            std::fs::write(&config, format!("[validator]\nbatch = {batch}\n")).expect("write config");
            match RegistryConfig::load(Some(&config)) {
                Ok(loaded) => {
                    assert!(ok, "{batch} is accepted");
                    assert_eq!(loaded.validator.batch, batch);
                }
                Err(e) => {
                    assert!(!ok, "{batch} is refused: {e}");
                    let e = e.to_string();
                    assert!(e.contains("validator.batch") && e.contains("1 to 1000"), "{e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod secret_file_tests {
    use super::*;

    #[test]
    fn the_pseudonym_secret_comes_from_its_file_and_a_short_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("pseudonym-secret");
        std::fs::write(&secret, "  0123456789abcdef0123456789abcdef\n").expect("write secret");
        let config = dir.path().join("registry.toml");
        std::fs::write(&config, format!("pseudonym_secret_file = {:?}\n", secret.display().to_string()))
            .expect("write config");
        let loaded = RegistryConfig::load(Some(&config)).expect("loads");
        assert_eq!(loaded.pseudonym_secret, "0123456789abcdef0123456789abcdef");

        std::fs::write(&secret, "short\n").expect("write secret");
        let e = RegistryConfig::load(Some(&config)).expect_err("too short").to_string();
        assert!(e.contains("at least 16 bytes") && e.contains("pseudonym-secret"), "{e}");
        std::fs::remove_file(&secret).expect("rm");
        let e = RegistryConfig::load(Some(&config)).expect_err("missing").to_string();
        assert!(e.contains("pseudonym-secret"), "{e}");
    }
}
