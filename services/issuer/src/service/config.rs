//! The issuer service's configuration: defaults that work next to `kakehashi dev`, a TOML file
//! (`--config FILE` or `KAKEHASHI_CONFIG`), then `KAKEHASHI_*` environment variables. Every key
//! is shown with its default in `deploy/config/issuer.toml`.

use kakehashi_runtime::settings;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read.
    #[error(transparent)]
    Load(#[from] settings::ConfigError),
    /// A setting with a value the issuer cannot work with.
    #[error("setting {key}: {message}")]
    Invalid {
        /// The key (`issuer_url`, …).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The issuer's department id on the bus (デジタル庁 接種証明書): its gRPC token, its
/// subscriptions, the `source` of what it publishes, and the key of its My Number pseudonyms.
pub const DEFAULT_DEPARTMENT: &str = "digital-agency-issuer";

/// Everything the issuer service can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// Department id (`KAKEHASHI_ISSUER_DEPARTMENT`).
    pub department: String,
    /// The registry's gRPC endpoint: subscriptions and delivery (`KAKEHASHI_REGISTRY`).
    pub registry_url: String,
    /// The adapter's gRPC endpoint: publishing (`KAKEHASHI_ADAPTER`).
    pub adapter_url: String,
    /// The department's bearer token (`KAKEHASHI_TOKEN`). Prefer `token_file`.
    pub token: Option<Secret>,
    /// A gRPC token file of `department = "token"` lines (`kakehashi grpc tokens`); the line of
    /// `department` is used (`KAKEHASHI_TOKEN_FILE`). Neither set = no token (a bus in
    /// development mode).
    pub token_file: Option<PathBuf>,
    /// TLS towards `https://` registry and adapter endpoints.
    pub grpc_tls: Option<GrpcClientTls>,
    /// The issuer's own directory: state, keys, secrets, certificates, cards
    /// (`KAKEHASHI_ISSUER_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Signing keys (PEM or private JWK files), sorted by file name: the last signs, all are
    /// published. Default `<data_dir>/keys`; a key is generated there on first start.
    pub key_dir: Option<PathBuf>,
    /// Where each issued card is written as `<certificate_id>.png`, `.svg` and
    /// `.smart-health-card` (`KAKEHASHI_ISSUER_OUTPUT_DIR`). Default `<data_dir>/cards`.
    pub output_dir: Option<PathBuf>,
    /// HTTPS listen address of `/.well-known/jwks.json` and `/.well-known/crl/<kid>.json`
    /// (`KAKEHASHI_ISSUER_HTTPS_ADDR`).
    pub https_addr: SocketAddr,
    /// The cards' `iss`: the https URL under which verifiers find `/.well-known/jwks.json`,
    /// without a trailing slash (`KAKEHASHI_ISSUER_URL`). Default `https://<https_addr>`.
    pub issuer_url: Option<String>,
    /// Certificate and key of the HTTPS endpoint; none = a development certificate generated in
    /// `<data_dir>/tls/` (its CA in `ca.pem`) for `tls_hostnames`.
    pub https_tls: Option<HttpsTls>,
    /// DNS names and IP addresses of the generated development certificate.
    pub tls_hostnames: Vec<String>,
    /// Names of the issuer's two durable subscriptions.
    pub subscriptions: SubscriptionNames,
    /// A request for a person with no records yet is held this long (milliseconds) for records
    /// arriving on the other subscription, then refused `no_vaccination_records`.
    pub refuse_after_ms: u64,
    /// Deliveries in flight per subscription.
    pub max_in_flight: u32,
    /// Pixels per QR module in the PNG and SVG written.
    pub qr_module_px: u32,
}

/// A secret string: never shown by `Debug` (so never in a log line).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Client TLS for gRPC.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcClientTls {
    /// CA of the registry and adapter certificates (PEM); none = system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mutual TLS: identifies the department), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// Server certificate of the HTTPS endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsTls {
    /// PEM certificate chain (`KAKEHASHI_ISSUER_TLS_CERT`).
    pub cert_file: PathBuf,
    /// PEM private key (`KAKEHASHI_ISSUER_TLS_KEY`).
    pub key_file: PathBuf,
}

/// The issuer's subscription names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionNames {
    /// On `health.vaccination.recorded`.
    pub records: String,
    /// On `health.vaccination.certificate.requested`.
    pub requests: String,
}

impl Default for SubscriptionNames {
    fn default() -> Self {
        Self { records: "issuer-records".into(), requests: "issuer-requests".into() }
    }
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            department: DEFAULT_DEPARTMENT.into(),
            registry_url: "http://127.0.0.1:50051".into(),
            adapter_url: "http://127.0.0.1:50052".into(),
            token: None,
            token_file: None,
            grpc_tls: None,
            data_dir: PathBuf::from("issuer-data"),
            key_dir: None,
            output_dir: None,
            https_addr: SocketAddr::from(([127, 0, 0, 1], 50443)),
            issuer_url: None,
            https_tls: None,
            tls_hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            subscriptions: SubscriptionNames::default(),
            refuse_after_ms: 2000,
            max_in_flight: 16,
            qr_module_px: 4,
        }
    }
}

impl IssuerConfig {
    /// Defaults, then the file (if given), then `KAKEHASHI_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Self = settings::from_file(file)?;
        settings::env_string("KAKEHASHI_ISSUER_DEPARTMENT", &mut cfg.department);
        settings::env_string("KAKEHASHI_REGISTRY", &mut cfg.registry_url);
        settings::env_string("KAKEHASHI_ADAPTER", &mut cfg.adapter_url);
        if let Ok(v) = std::env::var("KAKEHASHI_TOKEN") {
            cfg.token = Some(v).filter(|t| !t.is_empty()).map(Secret);
        }
        if let Some(v) = std::env::var_os("KAKEHASHI_TOKEN_FILE").filter(|v| !v.is_empty()) {
            cfg.token_file = Some(PathBuf::from(v));
        }
        if let Some(v) = std::env::var_os("KAKEHASHI_ISSUER_DATA_DIR").filter(|v| !v.is_empty()) {
            cfg.data_dir = PathBuf::from(v);
        }
        if let Some(v) = std::env::var_os("KAKEHASHI_ISSUER_OUTPUT_DIR").filter(|v| !v.is_empty()) {
            cfg.output_dir = Some(PathBuf::from(v));
        }
        settings::env_parse("KAKEHASHI_ISSUER_HTTPS_ADDR", &mut cfg.https_addr)?;
        if let Ok(v) = std::env::var("KAKEHASHI_ISSUER_URL") {
            cfg.issuer_url = Some(v).filter(|u| !u.is_empty());
        }
        match (std::env::var_os("KAKEHASHI_ISSUER_TLS_CERT"), std::env::var_os("KAKEHASHI_ISSUER_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                cfg.https_tls = Some(HttpsTls { cert_file: cert.into(), key_file: key.into() })
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid {
                    key: "KAKEHASHI_ISSUER_TLS_CERT",
                    message: "KAKEHASHI_ISSUER_TLS_CERT and KAKEHASHI_ISSUER_TLS_KEY go together".into(),
                })
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks what the types cannot: a valid department id and an https issuer URL.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !kakehashi_proto::ident::is_valid_department_id(&self.department) {
            return Err(ConfigError::Invalid {
                key: "department",
                message: format!("{:?} is not a department id ([a-z0-9-]+)", self.department),
            });
        }
        if let Some(url) = &self.issuer_url {
            if !url.starts_with("https://") || url.ends_with('/') || url.len() <= "https://".len() {
                return Err(ConfigError::Invalid {
                    key: "issuer_url",
                    message: format!("{url:?} must be an https URL without a trailing slash"),
                });
            }
        }
        if self.qr_module_px == 0 || self.qr_module_px > 64 {
            return Err(ConfigError::Invalid { key: "qr_module_px", message: "must be 1..=64".into() });
        }
        Ok(())
    }

    /// The key directory.
    pub fn key_dir(&self) -> PathBuf {
        self.key_dir.clone().unwrap_or_else(|| self.data_dir.join("keys"))
    }

    /// The card output directory.
    pub fn output_dir(&self) -> PathBuf {
        self.output_dir.clone().unwrap_or_else(|| self.data_dir.join("cards"))
    }

    /// The state file (JSON lines).
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.jsonl")
    }

    /// The CA certificate of the generated development HTTPS certificate (what a client trusts).
    pub fn dev_ca_file(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// The `iss` for a server listening on `addr`.
    pub fn issuer_url_for(&self, addr: SocketAddr) -> String {
        self.issuer_url.clone().unwrap_or_else(|| format!("https://{addr}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../deploy/config/issuer.toml");

    #[test]
    fn the_example_file_parses_strictly_and_shows_the_defaults() {
        let parsed: IssuerConfig =
            toml::from_str(EXAMPLE).expect("deploy/config/issuer.toml parses strictly");
        let default = IssuerConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn a_bad_issuer_url_or_department_is_refused() {
        let mut c = IssuerConfig { issuer_url: Some("http://x".into()), ..Default::default() };
        assert!(c.check().is_err());
        c.issuer_url = Some("https://issuer.example/".into());
        assert!(c.check().is_err());
        c.issuer_url = Some("https://issuer.example".into());
        assert!(c.check().is_ok());
        c.department = "Digital Agency".into();
        assert!(c.check().is_err());
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let c = IssuerConfig { token: Some(Secret("s3cr3t-token".into())), ..Default::default() };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
