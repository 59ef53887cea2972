//! TLS of the HTTPS endpoint (rustls over ring): the configured certificate, or a development
//! one generated on first start in `<data_dir>/tls/` — a CA (`ca.pem`, which clients trust; its
//! key is not kept) and a server certificate for `tls_hostnames` (`cert.pem`, `key.pem` 0600).

use kakehashi_runtime::private_files::{create_dir, write_atomic};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

/// TLS material that cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Generating the development certificate.
    #[error("cannot generate the development certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |e| TlsError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// Server certificate and key files: the configured ones, or the development pair (generated
/// if missing).
pub fn server_files(
    configured: Option<(&Path, &Path)>,
    data_dir: &Path,
    hostnames: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let Some((cert, key)) = configured {
        return Ok((cert.to_path_buf(), key.to_path_buf()));
    }
    let dir = data_dir.join("tls");
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    if ca.exists() && cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    create_dir(&dir, true).map_err(file_err(&dir))?;
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "kakehashi-issuer development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, hostnames.first().map(String::as_str).unwrap_or("localhost"));
    for name in hostnames {
        params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                rcgen::string::Ia5String::try_from(name.as_str())
                    .map_err(|e| TlsError::Generate(format!("host name {name:?}: {e}")))?,
            ),
        });
    }
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(825);
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(generate)?;
    write_atomic(&key, leaf_key.serialize_pem().as_bytes(), true).map_err(file_err(&key))?;
    write_atomic(&cert, leaf.pem().as_bytes(), false).map_err(file_err(&cert))?;
    write_atomic(&ca, ca_cert.pem().as_bytes(), false).map_err(file_err(&ca))?;
    tracing::info!(ca = %ca.display(), "generated a development HTTPS certificate");
    Ok((cert, key))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration from PEM files (HTTP/1.1 over ALPN).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File { path: cert.to_path_buf(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::File { path: cert.to_path_buf(), message: "no certificate in it".into() });
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::File { path: key.to_path_buf(), message: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
