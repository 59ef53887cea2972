//! How every Kakehashi process authenticates to NATS: a credentials file naming its identity,
//! its nkey seed and its reply-inbox prefix (written by `kakehashi nats config`), plus optional
//! TLS. No process connects anonymously unless it is given no credentials at all, and a server
//! rendered by `kakehashi nats config` refuses those.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A NATS identity's credentials file (TOML; a secret, kept `0600`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Identity name, e.g. `registry` or `dept-city-shibuya` (for logs; never a secret).
    pub identity: String,
    /// The nkey seed (`SU…`): proves the identity; the server holds only the public key.
    pub nkey_seed: String,
    /// Prefix of this identity's reply inboxes; the server lets it subscribe to no other.
    pub inbox_prefix: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed.
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish_non_exhaustive()
    }
}

/// How a process connects to NATS beyond the URL: identity and TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsAuthConfig {
    /// Credentials file (`KAKEHASHI_NATS_CREDENTIALS`); none = connect without an identity,
    /// which a secured server refuses.
    pub credentials: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate (`KAKEHASHI_NATS_CA`); set =
    /// TLS required.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (`KAKEHASHI_NATS_CERT`).
    pub cert_file: Option<PathBuf>,
    /// Key of the client certificate (PEM) (`KAKEHASHI_NATS_KEY`).
    pub key_file: Option<PathBuf>,
}

/// Credentials or TLS settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The credentials file is not a Kakehashi credentials file.
    #[error("invalid NATS credentials {path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong (never the seed).
        message: String,
    },
    /// A TLS file is missing.
    #[error("NATS TLS file {path} is not readable: {source}")]
    TlsFile {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A client certificate without its key, or the reverse.
    #[error("NATS client TLS needs both cert_file and key_file")]
    HalfClientCert,
}

impl Credentials {
    /// Reads and checks a credentials file.
    pub fn load(path: &Path) -> Result<Self, NatsAuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| NatsAuthError::Read { path: path.to_path_buf(), source })?;
        // The TOML error could quote the seed line: report only where it failed.
        let creds: Credentials = toml::from_str(&text).map_err(|e| NatsAuthError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a Kakehashi credentials file (at {:?})", e.span()),
        })?;
        if !creds.nkey_seed.starts_with("SU") {
            return Err(NatsAuthError::Invalid {
                path: path.to_path_buf(),
                message: format!("identity {}: nkey_seed is not a user seed", creds.identity),
            });
        }
        if creds.inbox_prefix.is_empty() || creds.inbox_prefix.contains(['*', '>', ' ']) {
            return Err(NatsAuthError::Invalid {
                path: path.to_path_buf(),
                message: format!("identity {}: inbox_prefix must be a plain subject", creds.identity),
            });
        }
        Ok(creds)
    }
}

impl NatsAuthConfig {
    /// Applies `KAKEHASHI_NATS_CREDENTIALS`, `KAKEHASHI_NATS_CA`, `KAKEHASHI_NATS_CERT` and
    /// `KAKEHASHI_NATS_KEY` when set.
    pub fn apply_env(&mut self) {
        let set = |name: &str, target: &mut Option<PathBuf>| {
            if let Some(v) = std::env::var_os(name).filter(|v| !v.is_empty()) {
                *target = Some(PathBuf::from(v));
            }
        };
        set("KAKEHASHI_NATS_CREDENTIALS", &mut self.credentials);
        set("KAKEHASHI_NATS_CA", &mut self.ca_file);
        set("KAKEHASHI_NATS_CERT", &mut self.cert_file);
        set("KAKEHASHI_NATS_KEY", &mut self.key_file);
    }

    /// Connect options carrying the identity and TLS settings, named `name`.
    pub fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, NatsAuthError> {
        // Reconnect quickly (the default backoff grows to seconds): after a node of a cluster
        // dies, the client moves to another one within a second.
        let mut options = async_nats::ConnectOptions::new().name(name).reconnect_delay_callback(|attempts| {
            std::time::Duration::from_millis((attempts as u64 * 100).min(1000))
        });
        if let Some(path) = &self.credentials {
            let creds = Credentials::load(path)?;
            options = options.nkey(creds.nkey_seed).custom_inbox_prefix(creds.inbox_prefix);
        }
        if let Some(ca) = &self.ca_file {
            readable(ca)?;
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                readable(cert)?;
                readable(key)?;
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => return Err(NatsAuthError::HalfClientCert),
        }
        Ok(options)
    }
}

fn readable(path: &Path) -> Result<(), NatsAuthError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| NatsAuthError::TlsFile { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_file_without_a_user_seed_is_refused_without_echoing_it() {
        let dir = tempdir();
        let path = dir.join("bad.creds");
        std::fs::write(
            &path,
            "identity = \"x\"\nnkey_seed = \"SAsecretsecret\"\ninbox_prefix = \"_INBOX.x\"\n",
        )
        .expect("write");
        let err = Credentials::load(&path).expect_err("refused").to_string();
        assert!(err.contains("not a user seed"), "{err}");
        assert!(!err.contains("secretsecret"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_seed() {
        let c = Credentials {
            identity: "registry".into(),
            nkey_seed: "SUsecret".into(),
            inbox_prefix: "_INBOX.registry".into(),
        };
        assert!(!format!("{c:?}").contains("SUsecret"));
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("kh-nats-auth-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }
}
