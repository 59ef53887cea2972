//! HTTPS GET of small public documents (an issuer's JWK Set and revocation lists): HTTP/1.1 over
//! rustls (ring), the system's roots plus an optional extra CA, https only, no redirects,
//! bounded in size and time by our own limits. `kakehashi cert verify`, the demo and the tests
//! use this one client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::CtlError;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Largest response accepted from an issuer (a JWK Set or a revocation list is a few kB).
pub const MAX_FETCH_BYTES: usize = 1 << 20;
/// Time allowed for one fetch: connecting, TLS, the request and the whole response.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an issuer document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Only https:// is fetched.
    #[error("only https:// URLs are fetched, not {0}")]
    NotHttps(String),
    /// The URL cannot be parsed.
    #[error("bad URL {url}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Connecting, TLS or HTTP failed.
    #[error("{url}: {message}")]
    Failed {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// A status other than 200.
    #[error("{url}: HTTP status {status} (redirects are not followed)")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The response is larger than the limit.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// No complete response in time.
    #[error("{url}: no complete response within {secs} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The time limit.
        secs: u64,
    },
}

/// A response: status, headers (names lowercase) and the bounded body.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Fetched {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// HTTPS GET of small documents (an issuer's JWK Set and revocation lists): HTTP/1.1 over
/// rustls, the system's roots plus an optional extra CA, bounded in size and time.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<ClientConfig>,
    /// Largest response body.
    pub max_bytes: usize,
    /// Time limit per fetch.
    pub timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("max_bytes", &self.max_bytes).field("timeout", &self.timeout).finish()
    }
}

impl Fetcher {
    /// Trusts the system's root certificates and, if given, the CA certificate(s) in the PEM
    /// file `extra_ca`.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, CtlError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_ca {
            let pem =
                std::fs::read(path).map_err(|source| CtlError::Read { path: path.to_path_buf(), source })?;
            let bad = |message: String| CtlError::BadFile { path: path.to_path_buf(), message };
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
                roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        if roots.is_empty() {
            return Err(CtlError::Usage(
                "no trusted root certificates: the system has none; pass --ca FILE (or --jwks FILE to verify offline)"
                    .into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CtlError::Usage(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { tls: Arc::new(tls), max_bytes: MAX_FETCH_BYTES, timeout: FETCH_TIMEOUT })
    }

    /// GETs `url` (https only) and returns the body of a 200 response.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let response = self.fetch(url).await?;
        if response.status != 200 {
            return Err(FetchError::Status { url: url.to_string(), status: response.status });
        }
        Ok(response.body)
    }

    /// GETs `url` (https only) and returns the response whatever its status (the body still
    /// bounded): for callers that look at the status and headers, such as the CORS checks.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(self.timeout, self.fetch_unbounded(url)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout { url: url.to_string(), secs: self.timeout.as_secs() }),
        }
    }

    async fn fetch_unbounded(&self, url: &str) -> Result<Fetched, FetchError> {
        let bad_url =
            |message: &str| FetchError::BadUrl { url: url.to_string(), message: message.to_string() };
        let failed = |what: &str, e: &dyn std::fmt::Display| FetchError::Failed {
            url: url.to_string(),
            message: format!("{what}: {e}"),
        };
        let uri: hyper::Uri =
            url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad_url(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(FetchError::NotHttps(url.to_string()));
        }
        let authority = uri.authority().ok_or_else(|| bad_url("no host"))?.clone();
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();

        let tcp =
            tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| failed("connect", &e))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| bad_url(&e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| failed("TLS", &e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| failed("HTTP", &e))?;
        let driver = tokio::spawn(connection);

        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, concat!("kakehashi/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed("request", &e))?;
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| failed("HTTP", &e))?;
            let status = response.status();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect();
            let too_large = || FetchError::TooLarge { url: url.to_string(), limit: self.max_bytes };
            let declared = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_bytes as u64) {
                return Err(too_large());
            }
            let body = Limited::new(response.into_body(), self.max_bytes).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    too_large()
                } else {
                    failed("reading the response", &e)
                }
            })?;
            Ok(Fetched { status: status.as_u16(), headers, body: body.to_bytes().to_vec() })
        }
        .await;
        driver.abort();
        result
    }
}
