//! The issuer's HTTPS endpoint, where verifiers fetch what they need to check a card offline:
//!
//! - `GET /.well-known/jwks.json`: the JWK Set (every key, newest signing; `crlVersion` each);
//! - `GET /.well-known/crl/<kid>.json`: the revocation list of one key.
//!
//! Every answer carries `Access-Control-Allow-Origin: *` (the spec requires CORS so that web
//! verifiers can fetch keys), and `OPTIONS` pre-flights are answered. HTTP/1.1 over rustls
//! (hyper's server connection, one task per connection, all ended with the server).
//!
//! Also a minimal HTTPS GET client ([`fetch`]) over the same crates, for the demo and tests.

use super::keys::{KeyStore, KeyStoreError};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// The JWK Set path.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The prefix of the revocation list paths (`<prefix><kid>.json`).
pub const CRL_PREFIX: &str = "/.well-known/crl/";

/// Longest a client may take for the TLS handshake and one connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    // Keys and revocations must be seen soon after they change.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    r
}

fn not_found() -> Response<Full<Bytes>> {
    respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n")
}

/// One request: the routing table.
pub fn route(keys: &KeyStore, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method == Method::OPTIONS {
        let mut r = respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        return r;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "GET only\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return r;
    }
    let json = "application/json";
    let failed = |e: KeyStoreError| {
        tracing::error!(error = %e, "cannot serve key material");
        respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "internal error\n")
    };
    if path == JWKS_PATH {
        return match keys.jwks_json() {
            Ok(body) => respond(StatusCode::OK, json, body),
            Err(e) => failed(e),
        };
    }
    if let Some(kid) = path.strip_prefix(CRL_PREFIX).and_then(|p| p.strip_suffix(".json")) {
        return match keys.revocation_list(kid) {
            Ok(list) => respond(StatusCode::OK, json, list.to_json()),
            Err(KeyStoreError::UnknownKid(_)) => not_found(),
            Err(e) => failed(e),
        };
    }
    not_found()
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    keys: Arc<KeyStore>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Dropping the set (server stopped or its task aborted) ends every connection.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let keys = keys.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = route(&keys, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// An HTTPS GET that failed.
#[derive(Debug, thiserror::Error)]
#[error("GET {url}: {message}")]
pub struct FetchError {
    /// The URL.
    pub url: String,
    /// What went wrong.
    pub message: String,
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl FetchResponse {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET url` over HTTPS, trusting only the CA certificates in `ca_pem` (e.g. the issuer's
/// development CA), with an `Origin` header as a browser would send.
pub async fn fetch(url: &str, ca_pem: &[u8]) -> Result<FetchResponse, FetchError> {
    let err = |message: String| FetchError { url: url.to_string(), message };
    let rest = url.strip_prefix("https://").ok_or_else(|| err("not an https URL".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| err(format!("bad port {p:?}")))?)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let config = super::tls::client_config(ca_pem).map_err(|e| err(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| err(format!("bad host {host:?}: {e}")))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| err(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| err(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| err(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ORIGIN, "https://verifier.invalid")
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| err(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = response.into_body().collect().await.map_err(|e| err(e.to_string()))?.to_bytes().to_vec();
        driver.abort();
        Ok(FetchResponse { status, headers, body })
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.map_err(|_| err("timed out".into()))?
}
