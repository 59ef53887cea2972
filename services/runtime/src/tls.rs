//! TLS on the gRPC servers: the typed `[grpc_tls]` settings both services share, loading and
//! checking the PEM files they name (a bad file is a startup error naming it, never a panic),
//! and the department a verified client certificate speaks for.
//!
//! A client certificate names its department with a URI SAN `urn:kakehashi:department:<id>`
//! or, without one, with its subject CommonName. Certificates are parsed with `x509-cert`;
//! rustls has already verified the chain against the configured client CA before any of this
//! runs, so only the name is read here.

use crate::settings::ConfigError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// Prefix of the URI SAN that names a department: `urn:kakehashi:department:<id>`.
pub const DEPARTMENT_URI_PREFIX: &str = "urn:kakehashi:department:";

/// Environment variable overriding [`GrpcTls::cert_file`].
pub const ENV_CERT: &str = "KAKEHASHI_GRPC_TLS_CERT";
/// Environment variable overriding [`GrpcTls::key_file`].
pub const ENV_KEY: &str = "KAKEHASHI_GRPC_TLS_KEY";
/// Environment variable overriding [`GrpcTls::client_ca_file`].
pub const ENV_CLIENT_CA: &str = "KAKEHASHI_GRPC_TLS_CLIENT_CA";
/// Environment variable overriding [`GrpcTls::require_client_cert`].
pub const ENV_REQUIRE_CLIENT_CERT: &str = "KAKEHASHI_GRPC_TLS_REQUIRE_CLIENT_CERT";

/// OID of the X.520 CommonName attribute.
const COMMON_NAME: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");

/// A slow or silent client must not hold a handshake slot for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS of a gRPC server (`[grpc_tls]`); when present the server speaks only TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// PEM file with the server certificate chain, leaf first (`KAKEHASHI_GRPC_TLS_CERT`).
    pub cert_file: PathBuf,
    /// PEM file with the server's private key: PKCS#8, PKCS#1 or SEC1 (`KAKEHASHI_GRPC_TLS_KEY`).
    pub key_file: PathBuf,
    /// PEM file with the CA(s) client certificates must chain to (`KAKEHASHI_GRPC_TLS_CLIENT_CA`);
    /// when set, a verified client certificate identifies the calling department.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: refuse connections without a client certificate (default true), or
    /// also let callers in with a bearer token only (`KAKEHASHI_GRPC_TLS_REQUIRE_CLIENT_CERT`).
    #[serde(default = "default_require_client_cert")]
    pub require_client_cert: bool,
}

fn default_require_client_cert() -> bool {
    true
}

/// TLS material that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (server certificate, server key, client CA).
        what: &'static str,
        /// File path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("{what} {path}: {message}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// File path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("TLS with certificate {cert} and key {key}: {source}")]
    Server {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Why a client certificate does not name a department.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    /// The DER is not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
    /// Neither a department URI SAN nor a CommonName.
    #[error("the certificate names no department (no {DEPARTMENT_URI_PREFIX}<id> URI SAN, no CommonName)")]
    NoName,
    /// Two department URI SANs that disagree.
    #[error("the certificate names several departments ({0}, {1})")]
    Ambiguous(String, String),
    /// The name found is not a department id.
    #[error("the certificate's name {0:?} is not a department id ([a-z0-9-]+)")]
    NotADepartment(String),
}

impl GrpcTls {
    /// Applies `KAKEHASHI_GRPC_TLS_*` to an optional `[grpc_tls]` section; with no section, the
    /// certificate and key variables must both be set to turn TLS on.
    pub fn apply_env(section: &mut Option<GrpcTls>) -> Result<(), ConfigError> {
        // An empty variable counts as unset, so compose files can leave the slot in place.
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (cert, key, ca) = (path(ENV_CERT), path(ENV_KEY), path(ENV_CLIENT_CA));
        let require_set = std::env::var_os(ENV_REQUIRE_CLIENT_CERT).is_some();
        if cert.is_none() && key.is_none() && ca.is_none() && !require_set {
            return Ok(());
        }
        let mut tls = match section.take() {
            Some(tls) => tls,
            None => match (&cert, &key) {
                (Some(c), Some(k)) => GrpcTls {
                    cert_file: c.clone(),
                    key_file: k.clone(),
                    client_ca_file: None,
                    require_client_cert: true,
                },
                _ => {
                    return Err(ConfigError::Env {
                        name: if cert.is_none() { ENV_CERT } else { ENV_KEY },
                        message: format!(
                            "gRPC TLS needs both {ENV_CERT} and {ENV_KEY} (or a [grpc_tls] section)"
                        ),
                    })
                }
            },
        };
        if let Some(c) = cert {
            tls.cert_file = c;
        }
        if let Some(k) = key {
            tls.key_file = k;
        }
        if ca.is_some() {
            tls.client_ca_file = ca;
        }
        crate::settings::env_parse(ENV_REQUIRE_CLIENT_CERT, &mut tls.require_client_cert)?;
        *section = Some(tls);
        Ok(())
    }

    /// Whether client certificates are verified and identify departments.
    pub fn accepts_client_certs(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// Reads and checks the files, and builds tonic's server TLS settings from them.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read_certificates("server certificate", &self.cert_file)?;
        let key = read("server key", &self.key_file)?;
        if PrivateKeyDer::from_pem_slice(&key).is_err() {
            return Err(TlsError::Invalid {
                what: "server key",
                path: self.key_file.clone(),
                message: "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
            });
        }
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca_file) = &self.client_ca_file {
            let ca = read_certificates("client CA", ca_file)?;
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(!self.require_client_cert);
        }
        Ok(config)
    }

    /// A server builder speaking only TLS with these settings; every file is checked here, so
    /// a service calls this before anything else and fails at startup, not on a connection.
    pub fn server(&self) -> Result<Server, TlsError> {
        Server::builder().tls_config(self.server_config()?).map_err(|source| TlsError::Server {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            source,
        })
    }
}

/// The gRPC server builder for an optional `[grpc_tls]`: plaintext without one.
pub fn server_builder(tls: Option<&GrpcTls>) -> Result<Server, TlsError> {
    match tls {
        Some(tls) => tls.server(),
        None => Ok(Server::builder()),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Reads a PEM file that must hold at least one certificate, each a well-formed X.509 one.
fn read_certificates(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(what, path)?;
    let invalid = |message: String| TlsError::Invalid { what, path: path.to_path_buf(), message };
    let mut count = 0;
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| invalid(format!("unreadable PEM: {e}")))?;
        x509_cert::Certificate::from_der(&der)
            .map_err(|e| invalid(format!("certificate {} is not X.509: {e}", count + 1)))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid("no PEM CERTIFICATE in the file".into()));
    }
    Ok(pem)
}

/// The department a client certificate (DER) names: its `urn:kakehashi:department:<id>` URI
/// SAN, else its subject CommonName; either must be a valid department id.
pub fn department_of(cert_der: &[u8]) -> Result<String, CertIdentityError> {
    let cert =
        x509_cert::Certificate::from_der(cert_der).map_err(|e| CertIdentityError::NotX509(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let mut from_san: Option<String> = None;
    if let Ok(Some((_, san))) = tbs.get::<SubjectAltName>() {
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                if let Some(id) = uri.as_str().strip_prefix(DEPARTMENT_URI_PREFIX) {
                    match &from_san {
                        Some(first) if first != id => {
                            return Err(CertIdentityError::Ambiguous(first.clone(), id.to_string()))
                        }
                        _ => from_san = Some(id.to_string()),
                    }
                }
            }
        }
    }
    let name = match from_san {
        Some(id) => id,
        None => common_name(&tbs.subject).ok_or(CertIdentityError::NoName)?,
    };
    if kakehashi_proto::ident::is_valid_department_id(&name) {
        Ok(name)
    } else {
        Err(CertIdentityError::NotADepartment(name))
    }
}

/// The subject's (last, most specific) CommonName, when it is a string type.
fn common_name(subject: &x509_cert::name::Name) -> Option<String> {
    subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == COMMON_NAME)
        .filter(|atv| matches!(atv.value.tag(), Tag::Utf8String | Tag::PrintableString | Tag::Ia5String))
        .filter_map(|atv| std::str::from_utf8(atv.value.value()).ok().map(str::to_string))
        .next_back()
}
