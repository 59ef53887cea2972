//! Console configuration: defaults that work locally, a TOML file, then environment overrides
//! (the same order as every Kakehashi service).

use kakehashi_runtime::settings;
pub use kakehashi_runtime::settings::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the console can be told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console listens (`KAKEHASHI_CONSOLE_ADDR`). Without `[tls]` only a loopback
    /// address is accepted: tokens would otherwise cross the network in the clear.
    pub listen_addr: SocketAddr,
    /// The registry's gRPC endpoint, `http://` or `https://` (`KAKEHASHI_REGISTRY`).
    pub registry_url: String,
    /// PEM CA the registry's certificate chains to, for an `https://` registry
    /// (`KAKEHASHI_CA`); none = the system's roots.
    pub registry_ca_file: Option<PathBuf>,
    /// The console's own client certificate (PEM chain) for an `https://` registry
    /// (`KAKEHASHI_CONSOLE_REGISTRY_CERT`), used only for certificate logins: the console then
    /// acts through it as a delegate of the registry (`x-kakehashi-on-behalf-of`).
    pub registry_cert_file: Option<PathBuf>,
    /// Its private key (`KAKEHASHI_CONSOLE_REGISTRY_KEY`).
    pub registry_key_file: Option<PathBuf>,
    /// HTTPS for the console itself (`KAKEHASHI_CONSOLE_TLS_CERT`, `KAKEHASHI_CONSOLE_TLS_KEY`);
    /// none = plain HTTP, on loopback only.
    pub tls: Option<ConsoleTls>,
    /// Sessions end after this long without a request.
    pub session_idle_secs: u64,
    /// Sessions end this long after login, however active.
    pub session_max_secs: u64,
    /// Most sessions held at once (logged-in and login forms); the oldest go first.
    pub max_sessions: usize,
    /// Link of a trace id in a tracing backend, `{trace_id}` replaced, e.g.
    /// `http://127.0.0.1:16686/trace/{trace_id}` (Jaeger); empty = no links
    /// (`KAKEHASHI_CONSOLE_TRACE_URL`).
    pub trace_url_template: String,
    /// Minutes of the audit trail the flow map covers unless the page asks otherwise.
    pub flow_minutes: u32,
    /// Longest wait for one registry call.
    pub registry_timeout_secs: u64,
    /// Largest registry answer read, in bytes; a larger one is answered with the console's own
    /// error page naming this key. At least the registry's `limits.max_list_response_bytes`
    /// and the largest single dead letter as listed (about twice the registry's
    /// `topology.max_message_bytes`: its raw bytes and the event decoded from them).
    pub max_registry_response_bytes: usize,
    /// Largest POST body (login and redrive forms), in bytes; a larger one is answered 413.
    pub max_form_bytes: usize,
}

/// The console's certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleTls {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key: PKCS#8, PKCS#1 or SEC1.
    pub key_file: PathBuf,
    /// CA(s) of people's client certificates (`KAKEHASHI_CONSOLE_TLS_CLIENT_CA`): when set, a
    /// browser may present one (optional) and log in with it.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50080)),
            registry_url: "http://127.0.0.1:50051".into(),
            registry_ca_file: None,
            registry_cert_file: None,
            registry_key_file: None,
            tls: None,
            session_idle_secs: 900,
            session_max_secs: 8 * 3600,
            max_sessions: 10_000,
            trace_url_template: String::new(),
            flow_minutes: 15,
            registry_timeout_secs: 10,
            max_registry_response_bytes: 8 * 1024 * 1024,
            max_form_bytes: 64 * 1024,
        }
    }
}

impl ConsoleConfig {
    /// Defaults, then the file (if given), then `KAKEHASHI_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Self = settings::from_file(file)?;
        settings::env_parse("KAKEHASHI_CONSOLE_ADDR", &mut cfg.listen_addr)?;
        settings::env_string("KAKEHASHI_REGISTRY", &mut cfg.registry_url);
        if let Some(ca) = std::env::var_os("KAKEHASHI_CA").filter(|v| !v.is_empty()) {
            cfg.registry_ca_file = Some(PathBuf::from(ca));
        }
        settings::env_string("KAKEHASHI_CONSOLE_TRACE_URL", &mut cfg.trace_url_template);
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        match (path("KAKEHASHI_CONSOLE_TLS_CERT"), path("KAKEHASHI_CONSOLE_TLS_KEY")) {
            (Some(cert_file), Some(key_file)) => {
                let client_ca_file = cfg.tls.take().and_then(|t| t.client_ca_file);
                cfg.tls = Some(ConsoleTls { cert_file, key_file, client_ca_file })
            }
            (None, None) => {}
            (cert, _) => {
                return Err(ConfigError::Env {
                    name: if cert.is_none() {
                        "KAKEHASHI_CONSOLE_TLS_CERT"
                    } else {
                        "KAKEHASHI_CONSOLE_TLS_KEY"
                    },
                    message: "HTTPS needs both KAKEHASHI_CONSOLE_TLS_CERT and KAKEHASHI_CONSOLE_TLS_KEY"
                        .into(),
                })
            }
        }
        if let Some(ca) = path("KAKEHASHI_CONSOLE_TLS_CLIENT_CA") {
            match &mut cfg.tls {
                Some(tls) => tls.client_ca_file = Some(ca),
                None => {
                    return Err(ConfigError::Env {
                        name: "KAKEHASHI_CONSOLE_TLS_CLIENT_CA",
                        message: "client certificates need HTTPS ([tls] or KAKEHASHI_CONSOLE_TLS_CERT/_KEY)"
                            .into(),
                    })
                }
            }
        }
        if let Some(cert) = path("KAKEHASHI_CONSOLE_REGISTRY_CERT") {
            cfg.registry_cert_file = Some(cert);
        }
        if let Some(key) = path("KAKEHASHI_CONSOLE_REGISTRY_KEY") {
            cfg.registry_key_file = Some(key);
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Refuses settings that would be insecure or useless.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |name: &'static str, message: &str| Err(ConfigError::Env { name, message: message.into() });
        if self.tls.is_none() && !self.listen_addr.ip().is_loopback() {
            return bad(
                "listen_addr",
                "plain HTTP is served on loopback only (tokens would cross the network in the clear): set [tls] or a 127.0.0.1 address",
            );
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://")) {
            return bad("registry_url", "must start with http:// or https://");
        }
        if self.registry_ca_file.is_some() && !self.registry_url.starts_with("https://") {
            return bad("registry_ca_file", "needs an https:// registry_url");
        }
        if self.registry_cert_file.is_some() != self.registry_key_file.is_some() {
            return bad("registry_cert_file", "registry_cert_file and registry_key_file go together");
        }
        if self.registry_cert_file.is_some() && !self.registry_url.starts_with("https://") {
            return bad("registry_cert_file", "a client certificate needs an https:// registry_url");
        }
        let client_certs = self.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        if client_certs != self.registry_cert_file.is_some() {
            return bad(
                "client_ca_file",
                "certificate login needs both [tls] client_ca_file (people's certificates) and \
                 registry_cert_file/registry_key_file (the console's own, a delegate of the registry)",
            );
        }
        if self.session_idle_secs == 0 || self.session_max_secs == 0 || self.max_sessions == 0 {
            return bad("session_idle_secs", "session limits must be above 0");
        }
        if self.max_registry_response_bytes == 0 {
            return bad("max_registry_response_bytes", "must be above 0");
        }
        if self.max_form_bytes == 0 {
            return bad("max_form_bytes", "must be above 0");
        }
        if !self.trace_url_template.is_empty() && !self.trace_url_template.contains("{trace_id}") {
            return bad("trace_url_template", "must contain {trace_id}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/config/console.toml");

    #[test]
    fn the_example_file_is_the_defaults_and_shows_every_key() {
        let parsed: ConsoleConfig =
            toml::from_str(EXAMPLE).expect("deploy/config/console.toml parses strictly");
        assert_eq!(parsed, ConsoleConfig::default(), "deploy/config/console.toml is not the defaults");
        for key in [
            "listen_addr",
            "registry_url",
            "registry_ca_file",
            "registry_cert_file",
            "registry_key_file",
            "[tls]",
            "client_ca_file",
            "cert_file",
            "key_file",
            "session_idle_secs",
            "session_max_secs",
            "max_sessions",
            "trace_url_template",
            "flow_minutes",
            "registry_timeout_secs",
            "max_registry_response_bytes",
            "max_form_bytes",
        ] {
            let shown = EXAMPLE.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} =")) || l == key
            });
            assert!(shown, "deploy/config/console.toml does not show `{key}`");
        }
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let mut c =
            ConsoleConfig { listen_addr: "0.0.0.0:8080".parse().expect("addr"), ..Default::default() };
        assert!(c.check().is_err());
        c.tls =
            Some(ConsoleTls { cert_file: "c.pem".into(), key_file: "k.pem".into(), client_ca_file: None });
        assert!(c.check().is_ok());
        // Certificate login needs the console's own registry certificate, over https.
        c.tls = Some(ConsoleTls {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            client_ca_file: Some("ca.pem".into()),
        });
        assert!(c.check().is_err());
        c.registry_cert_file = Some("console.pem".into());
        c.registry_key_file = Some("console-key.pem".into());
        assert!(c.check().is_err(), "http:// registry");
        c.registry_url = "https://registry:50051".into();
        assert!(c.check().is_ok());
        c.registry_key_file = None;
        assert!(c.check().is_err());
        let bad_template = ConsoleConfig { trace_url_template: "http://x/".into(), ..Default::default() };
        assert!(bad_template.check().is_err());
    }
}
