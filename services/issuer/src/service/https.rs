//! The issuer's HTTPS endpoint, where verifiers fetch what they need to check a card offline:
//!
//! - `GET /.well-known/jwks.json`: the JWK Set (every key, newest signing; `crlVersion` each);
//! - `GET /.well-known/crl/<kid>.json`: the revocation list of one key.
//!
//! Every answer carries `Access-Control-Allow-Origin: *` (the spec requires CORS so that web
//! verifiers can fetch keys), and `OPTIONS` pre-flights are answered. HTTP/1.1 over rustls
//! (hyper's server connection, one task per connection, all ended with the server).
//! Verifiers (the CLI, the demo, the tests) fetch with `kakehashi_ctl::https_client`.

use super::keys::{KeyStore, KeyStoreError};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use kakehashi_runtime::http_server::{serve_http1, ConnectionLimits};
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
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Request line and headers before 431 (the paths served are short GETs).
const MAX_REQUEST_HEAD: usize = 16 * 1024;

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
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = route(&keys, req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let limits = ConnectionLimits {
        handshake: HANDSHAKE_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
        max_request_head: MAX_REQUEST_HEAD,
        keep_alive: true,
    };
    serve_http1(listener, Some(acceptor), service, limits, "issuer HTTPS", shutdown).await;
}
