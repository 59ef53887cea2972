//! A small run-time PKI for development, tests and generated deployments: a CA, server
//! certificates for DNS names and IP addresses, and client certificates for an identity (a
//! department: CommonName = its id plus the URI SAN `urn:kakehashi:department:<id>`). Keys are
//! ECDSA P-256, made with ring. Nothing here is ever committed: certificates are generated
//! where they are used and written as PEM files, private keys readable by their owner only.

use kakehashi_runtime::tls::DEPARTMENT_URI_PREFIX;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// How long a generated CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a generated server or client certificate is valid.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// Clocks of the machines involved may disagree a little.
const BACKDATE: Duration = Duration::hours(1);

/// What went wrong making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot make {what}: {source}")]
    Generate {
        /// Which certificate or key.
        what: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A name is not usable in a certificate.
    #[error("invalid {what} {name:?}: {message}")]
    InvalidName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
    /// A PEM file could not be written or read.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// `write` or `read`.
        action: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn generate(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Generate { what, source }
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in debug output or logs.
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `<dir>/<name>.pem` (certificate) and `<dir>/<name>-key.pem` (key, mode 0600);
    /// returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        write_pem(&cert, &self.cert_pem, false)?;
        write_pem(&key, &self.key_pem, true)?;
        Ok((cert, key))
    }
}

/// A certificate authority that can issue server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    issued: Issued,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("issued", &self.issued).finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, how_long: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + how_long;
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn ia5(what: &'static str, name: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(name).map_err(|e| PkiError::InvalidName {
        what,
        name: name.to_string(),
        message: e.to_string(),
    })
}

fn ca_params(common_name_: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(common_name_);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    /// The CA written earlier (its certificate and key, PEM) under `CN=<common_name>`, to issue
    /// more certificates: the issuer name and key identifier come out the same.
    pub fn load(common_name_: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(generate("CA key (reading it)"))?;
        let issued =
            Issued { cert_pem: cert_pem.to_string(), cert_der: Vec::new(), key_pem: key_pem.to_string() };
        Ok(Self { issuer: Issuer::new(ca_params(common_name_), key), issued })
    }

    /// A new self-signed CA whose subject is `CN=<common_name>`.
    pub fn generate(common_name_: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(generate("CA key"))?;
        let mut params = ca_params(common_name_);
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(generate(format!("CA {common_name_}")))?;
        let issued =
            Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() };
        Ok(Self { issuer: Issuer::new(params, key), issued })
    }

    /// The CA certificate (and key), e.g. to write it or to trust it.
    pub fn certificate(&self) -> &Issued {
        &self.issued
    }

    fn issue(&self, what: String, mut params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(generate(format!("key of {what}")))?;
        validity(&mut params, LEAF_VALIDITY);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate(what))?;
        Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
    }

    /// A server certificate for `names`: DNS names or IP addresses (at least one); the first is
    /// also the CommonName.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, PkiError> {
        let first = names.first().ok_or_else(|| PkiError::InvalidName {
            what: "server name",
            name: String::new(),
            message: "a server certificate needs at least one DNS name or IP address".into(),
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(first);
        for name in names {
            params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5("server DNS name", name)?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(format!("server certificate for {}", names.join(", ")), params)
    }

    /// A client certificate for any identity: CommonName `name`, plus the given URI SANs.
    pub fn issue_client(&self, name: &str, uris: &[String]) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        for uri in uris {
            params.subject_alt_names.push(SanType::URI(ia5("URI SAN", uri)?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(format!("client certificate for {name}"), params)
    }

    /// A department's client certificate: CommonName = the department id and the URI SAN
    /// `urn:kakehashi:department:<id>`, which the gRPC servers read as the caller's department.
    pub fn issue_department(&self, department: &str) -> Result<Issued, PkiError> {
        if !kakehashi_proto::ident::is_valid_department_id(department) {
            return Err(PkiError::InvalidName {
                what: "department id",
                name: department.to_string(),
                message: "a department id is [a-z0-9-]+".into(),
            });
        }
        self.issue_client(department, &[format!("{DEPARTMENT_URI_PREFIX}{department}")])
    }
}

/// Writes a PEM file; a private one is created readable by its owner only (0600 on Unix).
pub fn write_pem(path: &Path, pem: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { action: "write", path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    kakehashi_runtime::private_files::write_atomic(path, pem.as_bytes(), private).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn department_certificates_name_their_department() {
        let ca = Ca::generate("kakehashi test CA").expect("ca");
        let mhlw = ca.issue_department("mhlw").expect("client");
        assert_eq!(kakehashi_runtime::tls::department_of(&mhlw.cert_der).expect("department"), "mhlw");
        // Without the URI SAN the CommonName decides.
        let plain = ca.issue_client("city-shibuya", &[]).expect("client");
        assert_eq!(kakehashi_runtime::tls::department_of(&plain.cert_der).expect("cn"), "city-shibuya");
        let odd = ca.issue_client("Not A Department", &[]).expect("client");
        assert!(kakehashi_runtime::tls::department_of(&odd.cert_der).is_err());
        assert!(ca.issue_department("Bad_Id").is_err());
        assert!(ca.issue_server(&[]).is_err());
        ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).expect("server");
    }
}
