//! Kakehashi web console: server-rendered pages (flows, traces, dead letters, schemas,
//! subscriptions) over the registry's gRPC APIs.
//!
//! The console holds no privilege of its own. A person logs in with the bearer token of their
//! department (the same one the gRPC APIs accept), or with their client certificate when the
//! console has a client CA; the session stays on the server and every page is a registry call
//! as that department — with the token, or for a certificate login through the console's own
//! certificate as a *delegate* the registry trusts to name a department and nothing more — so a
//! department sees exactly what the registry lets that identity see, and access control lives in
//! one place.
//!
//! Layout:
//! - [`config`]: the typed configuration.
//! - [`session`]: sessions, cookies and CSRF tokens.
//! - [`registry`]: the gRPC clients, called as the logged-in department.
//! - [`html`]: escaping (with My Number masking), layout, formatting.
//! - [`pages`]: one module per page.
//! - [`diff`]: the side-by-side schema diff.
//!
//! [`run`] is the whole service; `main.rs` only reads configuration.

pub mod config;
pub mod diff;
pub mod html;
pub mod pages;
pub mod registry;
pub mod session;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use config::ConsoleConfig;
use kakehashi_runtime::http_server::{serve_http1, ConnectionLimits};
use session::{Login, Session, Sessions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// A browser that stops talking must not hold a connection for ever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Nor a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (a browser opens about six); more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Request line and headers (cookies included) before 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Why the console could not run.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The registry endpoint is unusable.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] kakehashi_runtime::tls::TlsError),
    /// rustls refused the certificate and key.
    #[error("TLS with certificate {cert}: {message}")]
    TlsConfig {
        /// Certificate file.
        cert: String,
        /// What rustls said.
        message: String,
    },
}

/// What every page handler shares.
pub struct App {
    /// Settings.
    pub config: ConsoleConfig,
    /// The registry, called as the logged-in department.
    pub registry: registry::Registry,
    /// Sessions of this process.
    pub sessions: Sessions,
    /// Whether the console is served over TLS (cookies are then `Secure`).
    pub tls: bool,
    /// Whether people may log in with a client certificate (a client CA and the console's own
    /// registry identity are configured).
    pub client_certs: bool,
}

/// A logged-in request: its session id, the session and its login.
pub struct Ctx {
    /// Session id (the cookie).
    pub id: String,
    /// The session (CSRF token).
    pub session: Session,
    /// Who is logged in.
    pub login: Login,
}

impl Ctx {
    /// The navigation bar's view of the login.
    pub fn who(&self) -> Option<(&str, bool, &str)> {
        Some((&self.login.department, self.login.admin, &self.session.csrf))
    }
}

/// A page that could not be shown.
#[derive(Debug)]
pub enum PageError {
    /// The registry refused or failed.
    Status(tonic::Status),
    /// The request is malformed.
    BadRequest(String),
    /// A POST without this session's CSRF token, or from another origin.
    Forbidden(&'static str),
}

impl From<tonic::Status> for PageError {
    fn from(s: tonic::Status) -> Self {
        PageError::Status(s)
    }
}

/// Headers every page carries: no scripts at all, no framing, nothing cached, no referrer to
/// other sites (page URLs hold event ids).
fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// An HTML response with the security headers.
pub fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    secure_headers(r.headers_mut());
    r
}

/// A 303 redirect (after a POST, or to the login page).
pub fn redirect(to: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}

impl App {
    /// The logged-in context of a request, or the redirect to the login page (boxed: a
    /// response is large next to the context).
    pub fn ctx(&self, headers: &HeaderMap) -> Result<Ctx, Box<Response>> {
        let id = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::cookie_id)
            .map(str::to_string);
        let Some(id) = id else { return Err(Box::new(redirect("/login"))) };
        match self.sessions.get(&id) {
            Some(session) => match session.login.clone() {
                Some(login) => Ok(Ctx { id, session, login }),
                None => Err(Box::new(redirect("/login"))),
            },
            None => Err(Box::new(redirect("/login?expired=1"))),
        }
    }

    /// The error page for `e`; a token the registry no longer accepts ends the session.
    pub fn error_page(&self, ctx: &Ctx, e: PageError) -> Response {
        let (status, title, message) = match e {
            PageError::Status(s) => match s.code() {
                tonic::Code::Unauthenticated => {
                    self.sessions.end(&ctx.id);
                    return redirect("/login?expired=1");
                }
                tonic::Code::PermissionDenied => {
                    (StatusCode::FORBIDDEN, "Not permitted", s.message().to_string())
                }
                tonic::Code::NotFound => (StatusCode::NOT_FOUND, "Not found", s.message().to_string()),
                tonic::Code::InvalidArgument => {
                    (StatusCode::BAD_REQUEST, "Bad request", s.message().to_string())
                }
                // The registry never answers OUT_OF_RANGE itself: this is the transport's
                // decoding limit, which the console sets (`max_registry_response_bytes`).
                tonic::Code::OutOfRange => (
                    StatusCode::BAD_GATEWAY,
                    "Registry answer too large",
                    format!(
                        "the registry's answer is larger than this console reads (max_registry_response_bytes = {} bytes): narrow the filters, or raise max_registry_response_bytes to at least the registry's limits.max_list_response_bytes and twice its topology.max_message_bytes",
                        self.config.max_registry_response_bytes
                    ),
                ),
                _ => (
                    StatusCode::BAD_GATEWAY,
                    "Registry unavailable",
                    format!("{}: {}", s.code(), s.message()),
                ),
            },
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Refused", m.to_string()),
        };
        let body = format!("<p class=\"err\" id=\"error\">{}</p>", html::esc(&message));
        html_response(status, html::page(title, html::Nav::None, ctx.who(), &body))
    }

    /// Refuses a POST that lacks this session's CSRF token or comes from another origin.
    pub fn check_post(
        &self,
        ctx: &Ctx,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<(), PageError> {
        check_origin(headers)?;
        let sent = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        if session::same_secret(sent, &ctx.session.csrf) {
            Ok(())
        } else {
            Err(PageError::Forbidden(
                "the form is stale or was not sent by this console (CSRF check): reload the page",
            ))
        }
    }
}

/// A cross-origin POST is refused when the browser says where it comes from (SameSite=Strict
/// cookies and the CSRF token already stop it; this is a third layer): `Sec-Fetch-Site` when
/// sent, and an `Origin` naming another host. A `null` or absent origin decides nothing.
pub fn check_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let refused = Err(PageError::Forbidden("cross-origin form submission refused"));
    if matches!(get("sec-fetch-site"), Some("cross-site" | "same-site")) {
        return refused;
    }
    match (get("origin"), get("host")) {
        (None | Some("null"), _) => Ok(()),
        (Some(o), Some(h)) if o.split_once("://").map(|(_, rest)| rest) == Some(h) => Ok(()),
        _ => refused,
    }
}

/// A POST body within `max_form_bytes` (the router's [`DefaultBodyLimit`]); a larger one is
/// answered by the console's own 413 page, not axum's plain-text one.
pub struct FormBody(pub Bytes);

impl FromRequest<Arc<App>> for FormBody {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, app: &Arc<App>) -> Result<Self, Response> {
        match Bytes::from_request(request, app).await {
            Ok(body) => Ok(FormBody(body)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(form_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                &format!(
                    "the form is larger than this console accepts (max_form_bytes = {} bytes)",
                    app.config.max_form_bytes
                ),
            )),
            Err(e) => Err(form_error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("the form could not be read: {e}"),
            )),
        }
    }
}

/// The console's error page for a form it could not read (no session is looked at).
fn form_error(status: StatusCode, title: &str, message: &str) -> Response {
    let body =
        format!("<p class=\"err\" id=\"error\">{}</p><p><a href=\"/flows\">Back</a></p>", html::esc(message));
    html_response(status, html::page(title, html::Nav::None, None, &body))
}

/// The pairs of a query string or `application/x-www-form-urlencoded` body.
pub fn pairs(input: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(input).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The first value of `key` ("" when absent), trimmed.
pub fn param<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim()).unwrap_or("")
}

/// Ends a certificate session whose request does not come over a connection presenting the
/// certificate it logged in with: a session id alone (a stolen cookie) is not enough to act as
/// a department that logged in by certificate.
async fn bind_certificate_sessions(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::cookie_id)
        .map(str::to_string);
    if let Some(id) = id {
        if let Some(Some(session::Login {
            credential: session::Credential::Certificate(bound),
            department,
            ..
        })) = app.sessions.peek(&id).map(|s| s.login)
        {
            let presented = request
                .extensions()
                .get::<kakehashi_runtime::http_server::PeerCertificates>()
                .and_then(|p| p.leaf());
            if presented != Some(bound.as_slice()) {
                tracing::warn!(
                    department = %department,
                    "console session ended: a request of a certificate login came without that certificate"
                );
                app.sessions.end(&id);
            }
        }
    }
    next.run(request).await
}

/// The router of every page.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { redirect("/flows") }))
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/login/certificate", post(pages::login::certificate))
        .route("/logout", post(pages::login::logout))
        .route("/flows", get(pages::flows::page))
        .route("/trace", get(pages::trace::page))
        .route("/dead-letters", get(pages::dead_letters::list))
        .route("/dead-letters/{id}", get(pages::dead_letters::show))
        .route("/dead-letters/redrive", post(pages::dead_letters::redrive))
        .route("/schemas", get(pages::schemas::list))
        .route("/schemas/{subject}", get(pages::schemas::subject))
        .route("/subscriptions", get(pages::subscriptions::page))
        .fallback(|method: Method| async move {
            let status =
                if method == Method::GET { StatusCode::NOT_FOUND } else { StatusCode::METHOD_NOT_ALLOWED };
            html_response(
                status,
                html::page("Not found", html::Nav::None, None, "<p><a href=\"/flows\">Back</a></p>"),
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), bind_certificate_sessions))
        .layer(DefaultBodyLimit::max(app.config.max_form_bytes))
        .with_state(app)
}

/// The rustls server configuration of the console's certificate: the files are first checked
/// the way every Kakehashi TLS listener checks them (`kakehashi_runtime::tls`).
fn tls_config(tls: &config::ConsoleTls) -> Result<Arc<rustls::ServerConfig>, ConsoleError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let checked = kakehashi_runtime::tls::GrpcTls {
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
        client_ca_file: tls.client_ca_file.clone(),
        require_client_cert: false,
    };
    checked.server_config()?;
    let failed =
        |message: String| ConsoleError::TlsConfig { cert: tls.cert_file.display().to_string(), message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| failed(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| failed(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?;
    let builder = match &tls.client_ca_file {
        // A client certificate is optional (the token login stays), but one that is presented
        // must chain to the client CA, or the handshake fails.
        Some(ca_file) => {
            let ca_failed =
                |message: String| ConsoleError::TlsConfig { cert: ca_file.display().to_string(), message };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_failed(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| ca_failed(e.to_string()))?)
                    .map_err(|e| ca_failed(e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| ca_failed(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| failed(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Runs the console on `listener` until `shutdown` completes.
pub async fn run(
    config: ConsoleConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsoleError> {
    config.check()?;
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let identity = match (&config.registry_cert_file, &config.registry_key_file) {
        (Some(cert), Some(key)) => Some(registry::ClientIdentity { cert, key }),
        _ => None,
    };
    let registry = registry::Registry::new(
        &config.registry_url,
        config.registry_ca_file.as_deref(),
        identity,
        Duration::from_secs(config.registry_timeout_secs.max(1)),
        config.max_registry_response_bytes,
    )?;
    let client_certs =
        config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()) && registry.delegates();
    let sessions = Sessions::new(session::Limits {
        idle: Duration::from_secs(config.session_idle_secs),
        max_age: Duration::from_secs(config.session_max_secs),
        max_sessions: config.max_sessions,
    });
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        addr = %local,
        registry = %config.registry_url,
        certificate_login = client_certs,
        "console serving at {scheme}://{local}/"
    );
    let app = Arc::new(App { config, registry, sessions, tls: tls.is_some(), client_certs });
    let router = router(app);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let limits = ConnectionLimits {
        handshake: HANDSHAKE_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
        max_request_head: MAX_REQUEST_HEAD,
        keep_alive: true,
    };
    serve_http1(listener, acceptor, service, limits, "console", shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        assert!(check_origin(&headers(&[("host", "127.0.0.1:1"), ("origin", "http://127.0.0.1:1")])).is_ok());
        assert!(check_origin(&headers(&[("host", "127.0.0.1:1"), ("origin", "null")])).is_ok());
        assert!(
            check_origin(&headers(&[("host", "127.0.0.1:1"), ("origin", "http://evil.example")])).is_err()
        );
        assert!(check_origin(&headers(&[("host", "127.0.0.1:1"), ("sec-fetch-site", "cross-site")])).is_err());
        assert!(check_origin(&headers(&[("host", "127.0.0.1:1"), ("sec-fetch-site", "same-origin")])).is_ok());
    }

    /// The status line and the whole answer of `head` then `body` sent to `addr`.
    async fn exchange(addr: std::net::SocketAddr, head: String, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("head");
        // The console may answer before reading all of a body it refuses.
        let _ = stream.write_all(body).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_form_over_max_form_bytes_gets_the_consoles_own_413_page() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ConsoleConfig {
            listen_addr: addr,
            // Never called: the forms are refused before any registry call.
            registry_url: "http://127.0.0.1:9".into(),
            max_form_bytes: 1024,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(config, listener, async {
            let _ = stopped.await;
        }));
        let head = |path: &str, framing: String| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n{framing}\r\nConnection: close\r\n\r\n"
            )
        };
        let form = |len: usize| format!("csrf={}", "a".repeat(len - 5)).into_bytes();
        for path in ["/login", "/login/certificate", "/logout", "/dead-letters/redrive"] {
            // Declared too large.
            let answer = exchange(addr, head(path, "Content-Length: 1025".into()), &form(1025)).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
            assert!(answer.contains("text/html"), "{path}: {answer}");
            assert!(
                answer.contains("id=\"error\"") && answer.contains("max_form_bytes = 1024 bytes"),
                "{answer}"
            );
            // Found too large while read (no length declared).
            let chunked =
                [format!("{:x}\r\n", 4096).into_bytes(), form(4096), b"\r\n0\r\n\r\n".to_vec()].concat();
            let answer = exchange(addr, head(path, "Transfer-Encoding: chunked".into()), &chunked).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{path} chunked: {answer}");
            assert!(answer.contains("max_form_bytes = 1024 bytes"), "{answer}");
            // At the limit it is read: without a session, the login page.
            let answer = exchange(addr, head(path, "Content-Length: 1024".into()), &form(1024)).await;
            assert!(answer.starts_with("HTTP/1.1 303"), "{path} at the limit: {answer}");
        }
        let _ = stop.send(());
        server.await.expect("console task").expect("console ran");
    }

    #[test]
    fn form_pairs() {
        let p = pairs(b"id=1&id=2&csrf=a%20b&confirm=yes");
        assert_eq!(param(&p, "csrf"), "a b");
        assert_eq!(p.iter().filter(|(k, _)| k == "id").count(), 2);
        assert_eq!(param(&p, "missing"), "");
    }
}
