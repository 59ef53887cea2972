//! The calling department's identity, decided in one place for every RPC of both servers.
//!
//! Two ways in, considered in this order:
//! 1. a **verified client certificate** (mutual TLS, when a client CA is configured): its
//!    `urn:kakehashi:department:<id>` URI SAN, else its subject CommonName, is the department.
//!    [`peer_cert_layer`] reads it once per request and stores the result in the request's
//!    *extensions*, which only the server writes — never in metadata, which a client could forge;
//! 2. a **bearer token**, `authorization: Bearer <token>`, mapped to a department in
//!    configuration.
//!
//! That department — never a field the caller fills in — becomes an event's source and decides
//! whose resources a call may touch.
//!
//! **Delegation**: an identity configured as a *delegate* (the web console, which cannot present
//! a department's client certificate because its key stays in the browser) has no rights of its
//! own; it acts only for the department it names in [`ON_BEHALF_OF`], and then exactly as that
//! department. The header from anyone else is refused (`PERMISSION_DENIED`), never ignored. With neither tokens nor a client CA configured the bus runs
//! in development mode: callers are not authenticated (logged loudly at startup).

use crate::tls::GrpcTls;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Status};

/// The metadata a delegate names the department it acts for with.
pub const ON_BEHALF_OF: &str = "x-kakehashi-on-behalf-of";

/// A gRPC listener off loopback with nobody authenticated (see [`Identities::check_listener`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{service}: gRPC would listen on {addr} without authentication; configure credentials \
     (KAKEHASHI_CREDENTIALS_FILE, written by `kakehashi grpc tokens`) or client certificates \
     (grpc_tls), or listen on a loopback address"
)]
pub struct OpenListenerError {
    /// Which service.
    pub service: &'static str,
    /// Where it would have listened.
    pub addr: std::net::SocketAddr,
}

/// The key a bearer token is looked up by.
fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// An authenticated caller: the department it acts as, and the delegate it acts through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The department whose rights apply.
    pub department: String,
    /// The delegate identity that authenticated and named the department, if any.
    pub via: Option<String>,
}

/// `mhlw`, or `mhlw via kakehashi-console` — what logs and audit records name.
impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.via {
            Some(delegate) => write!(f, "{} via {delegate}", self.department),
            None => f.write_str(&self.department),
        }
    }
}

/// What the verified client certificate of a request said; set by [`peer_cert_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// The certificate names this department.
    Department(String),
    /// The certificate is verified but names no usable department (why).
    Unusable(String),
}

/// The server-wide interceptor function type of [`peer_cert_layer`].
pub type PeerCertInterceptor = fn(Request<()>) -> Result<Request<()>, Status>;

/// A layer for a whole gRPC server that derives [`PeerCert`] from the TLS peer certificate of
/// each request. It never refuses anything itself (health and reflection stay open); the
/// [`Identities`] checks of each RPC decide.
pub fn peer_cert_layer() -> tonic::service::InterceptorLayer<PeerCertInterceptor> {
    tonic::service::InterceptorLayer::new(read_peer_cert as PeerCertInterceptor)
}

fn read_peer_cert(mut request: Request<()>) -> Result<Request<()>, Status> {
    // Only the server writes extensions, but be explicit that nothing upstream decides this.
    request.extensions_mut().remove::<PeerCert>();
    let leaf = request.peer_certs().and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
    if let Some(der) = leaf {
        let found = match crate::tls::department_of(&der) {
            Ok(department) => PeerCert::Department(department),
            Err(e) => PeerCert::Unusable(e.to_string()),
        };
        request.extensions_mut().insert(found);
    }
    Ok(request)
}

/// The parts of a request that say who sent it: metadata (bearer token) and extensions
/// (verified client certificate).
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    metadata: &'a MetadataMap,
    extensions: &'a Extensions,
}

impl<'a> Credentials<'a> {
    /// From a request taken apart with `into_parts`.
    pub fn new(metadata: &'a MetadataMap, extensions: &'a Extensions) -> Self {
        Self { metadata, extensions }
    }
}

impl<'a, T> From<&'a Request<T>> for Credentials<'a> {
    fn from(request: &'a Request<T>) -> Self {
        Self { metadata: request.metadata(), extensions: request.extensions() }
    }
}

impl<'a> From<(&'a MetadataMap, &'a Extensions)> for Credentials<'a> {
    fn from((metadata, extensions): (&'a MetadataMap, &'a Extensions)) -> Self {
        Self { metadata, extensions }
    }
}

/// Whose data a read may show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: an administrator, or development mode.
    All,
    /// Only what concerns this department.
    Department(String),
}

/// Resolves callers to departments.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    /// Department by SHA-256 of its token: a lookup compares digests, so its timing tells
    /// nothing about how much of a guessed token was right, and no token sits in memory dumps
    /// or `Debug` output.
    tokens: BTreeMap<[u8; 32], String>,
    admins: BTreeSet<String>,
    client_certs: bool,
    delegates: BTreeSet<String>,
    /// Whether a delegate may act for an administrator (off unless configured).
    delegate_admins: bool,
}

impl Identities {
    /// From configured `token → department` pairs and the departments allowed to administer the
    /// bus (schemas, policies, any department's subscriptions); no tokens (and no client
    /// certificates, see [`Identities::with_client_certs`]) means development mode.
    pub fn new(tokens: BTreeMap<String, String>, admins: impl IntoIterator<Item = String>) -> Self {
        Self {
            tokens: tokens.into_iter().map(|(token, dept)| (token_digest(&token), dept)).collect(),
            admins: admins.into_iter().collect(),
            client_certs: false,
            delegates: BTreeSet::new(),
            delegate_admins: false,
        }
    }

    /// Identities (as authenticated by certificate or token) that may act for any department
    /// by naming it in [`ON_BEHALF_OF`], and have no rights of their own.
    pub fn with_delegates(mut self, delegates: impl IntoIterator<Item = String>) -> Self {
        self.delegates = delegates.into_iter().collect();
        self
    }

    /// Also lets delegates act for administrators. Off by default: a delegate's key is then
    /// worth only a department's rights, and administrators use their own token or certificate
    /// with the APIs (or a token in the console).
    pub fn with_delegates_for_admins(mut self, allowed: bool) -> Self {
        self.delegate_admins = allowed;
        self
    }

    /// Also identify callers by their verified client certificate (the server has a client CA).
    pub fn with_client_certs(mut self, accepted: bool) -> Self {
        self.client_certs = accepted;
        self
    }

    /// Whether callers are authenticated (false in development mode).
    pub fn enforced(&self) -> bool {
        !self.tokens.is_empty() || self.client_certs
    }

    /// Refuses development mode on a listener other hosts can reach: without credentials and
    /// a client CA, anyone there could act as any department, or as the administrator.
    /// Unauthenticated gRPC is for a developer's loopback only, as for the metrics endpoint.
    pub fn check_listener(
        &self,
        service: &'static str,
        addr: std::net::SocketAddr,
    ) -> Result<(), OpenListenerError> {
        if self.enforced() || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(OpenListenerError { service, addr })
    }

    /// Logs how callers are identified; development mode is a warning, since anyone may act
    /// as any department then.
    pub fn log_mode(&self, service: &str, tls: Option<&GrpcTls>) {
        let transport = match tls {
            None => "plaintext",
            Some(t) if t.accepts_client_certs() && t.require_client_cert => {
                "TLS, client certificate required"
            }
            Some(t) if t.accepts_client_certs() => "TLS, client certificate optional",
            Some(_) => "TLS",
        };
        if self.enforced() {
            tracing::info!(
                service,
                transport,
                tokens = self.tokens.len(),
                client_certificates = self.client_certs,
                delegates = ?self.delegates,
                "callers are authenticated"
            );
        } else {
            tracing::warn!(
                service,
                transport,
                "DEVELOPMENT MODE: no credentials and no client CA configured, callers are not \
                 authenticated and may act as any department"
            );
        }
    }

    /// The caller: the authenticated identity, or the department a delegate names. A refusal
    /// is logged here, once, with what was claimed (never a token).
    fn caller(&self, c: Credentials<'_>) -> Result<Caller, Status> {
        let identity = self.authenticated(c)?;
        let delegate = self.delegates.contains(&identity);
        let mut named = c.metadata.get_all(ON_BEHALF_OF).iter();
        let (first, second) = (named.next(), named.next());
        match (first, delegate) {
            (None, false) => Ok(Caller { department: identity, via: None }),
            (None, true) => Err(Self::denied(
                &identity,
                format!(
                    "{identity} is a delegate: it has no rights of its own and must name the department it acts for in {ON_BEHALF_OF}"
                ),
            )),
            (Some(_), false) => Err(Self::denied(
                &identity,
                format!("{identity} is not a delegate of this server: {ON_BEHALF_OF} is refused"),
            )),
            (Some(value), true) => {
                let department = value.to_str().unwrap_or_default();
                let refused = |why: String| {
                    tracing::warn!(caller = %identity, reason = %why, "delegated call refused");
                    Err(Status::invalid_argument(why))
                };
                if second.is_some() {
                    return refused(format!("{ON_BEHALF_OF} must name one department"));
                }
                if !kakehashi_proto::ident::is_valid_department_id(department) {
                    return refused(format!("{ON_BEHALF_OF} must be a department id ([a-z0-9-]+)"));
                }
                if self.delegates.contains(department) {
                    return Err(Self::denied(
                        &identity,
                        format!("{identity} may not act for {department}, which is a delegate"),
                    ));
                }
                if self.admins.contains(department) && !self.delegate_admins {
                    return Err(Self::denied(
                        &identity,
                        format!(
                            "{identity} may not act for {department}, an administrator (delegates act for administrators only when the registry sets delegates_for_admins)"
                        ),
                    ));
                }
                tracing::debug!(department, via = %identity, "delegated call");
                Ok(Caller { department: department.to_string(), via: Some(identity) })
            }
        }
    }

    /// Refuses [`ON_BEHALF_OF`] in development mode: nobody is authenticated, so nobody is a
    /// delegate, and the header is never silently ignored.
    fn no_delegation_unauthenticated(c: Credentials<'_>) -> Result<(), Status> {
        if c.metadata.get(ON_BEHALF_OF).is_some() {
            let message = format!(
                "{ON_BEHALF_OF} needs an authenticated delegate; this server does not authenticate callers (development mode)"
            );
            return Err(Self::denied("nobody", message));
        }
        Ok(())
    }

    /// The authenticated identity: the verified certificate's, else the bearer token's.
    fn authenticated(&self, c: Credentials<'_>) -> Result<String, Status> {
        let mut certificate_problem = None;
        if self.client_certs {
            match c.extensions.get::<PeerCert>() {
                Some(PeerCert::Department(d)) => return Ok(d.clone()),
                Some(PeerCert::Unusable(why)) => certificate_problem = Some(why.as_str()),
                None => {}
            }
        }
        let token = c
            .metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            let message = match certificate_problem {
                Some(why) => format!("client certificate refused: {why}"),
                None if self.client_certs => {
                    "no client certificate and no `authorization: Bearer <token>`".to_string()
                }
                None => "missing `authorization: Bearer <token>`".to_string(),
            };
            tracing::warn!(claimed = "nobody", reason = %message, "caller refused: unauthenticated");
            return Err(Status::unauthenticated(message));
        };
        match self.tokens.get(&token_digest(token)) {
            Some(dept) => Ok(dept.clone()),
            None => {
                tracing::warn!(claimed = "an unknown bearer token", "caller refused: unauthenticated");
                Err(Status::unauthenticated("unknown token"))
            }
        }
    }

    fn denied(caller: &str, message: String) -> Status {
        tracing::warn!(caller, reason = %message, "caller refused: permission denied");
        Status::permission_denied(message)
    }

    /// Refuses unless the caller is an administrator (anyone in development mode).
    pub fn require_admin<'a>(&self, c: impl Into<Credentials<'a>>) -> Result<(), Status> {
        let c = c.into();
        if !self.enforced() {
            return Self::no_delegation_unauthenticated(c);
        }
        let caller = self.caller(c)?;
        if self.admins.contains(&caller.department) {
            Ok(())
        } else {
            let dept = &caller.department;
            Err(Self::denied(&caller.to_string(), format!("{dept} is not an administrator of the bus")))
        }
    }

    /// Refuses unless the caller is an authenticated department (anyone in development mode).
    pub fn require_caller<'a>(&self, c: impl Into<Credentials<'a>>) -> Result<(), Status> {
        let c = c.into();
        if self.enforced() {
            self.caller(c)?;
            Ok(())
        } else {
            Self::no_delegation_unauthenticated(c)
        }
    }

    /// Who is calling, for logs and audit records: `mhlw`, or `mhlw via kakehashi-console`
    /// for a delegated call; `None` in development mode (nobody is authenticated).
    pub fn actor<'a>(&self, c: impl Into<Credentials<'a>>) -> Result<Option<Caller>, Status> {
        let c = c.into();
        if !self.enforced() {
            Self::no_delegation_unauthenticated(c)?;
            return Ok(None);
        }
        self.caller(c).map(Some)
    }

    /// Whose data the caller may read: everything for administrators (and in development
    /// mode), else only its own department's.
    pub fn scope<'a>(&self, c: impl Into<Credentials<'a>>) -> Result<Scope, Status> {
        let c = c.into();
        if !self.enforced() {
            Self::no_delegation_unauthenticated(c)?;
            return Ok(Scope::All);
        }
        let dept = self.caller(c)?.department;
        Ok(if self.admins.contains(&dept) { Scope::All } else { Scope::Department(dept) })
    }

    /// The department a request acts for on `department`'s resources: itself, or any
    /// department when the caller is an administrator.
    pub fn acting_for<'a>(&self, c: impl Into<Credentials<'a>>, department: &str) -> Result<String, Status> {
        let c = c.into();
        if !self.enforced() {
            Self::no_delegation_unauthenticated(c)?;
            return Ok(department.to_string());
        }
        let caller = self.caller(c)?;
        let dept = &caller.department;
        if dept == department || self.admins.contains(dept) {
            Ok(department.to_string())
        } else {
            Err(Self::denied(&caller.to_string(), format!("{dept} may not act for {department}")))
        }
    }

    /// The department a request speaks for. In development mode the claimed source is taken
    /// as is; otherwise the credentials decide and a different claimed source is refused.
    pub fn department<'a>(&self, c: impl Into<Credentials<'a>>, claimed: &str) -> Result<String, Status> {
        let c = c.into();
        if !self.enforced() {
            Self::no_delegation_unauthenticated(c)?;
            if !kakehashi_proto::ident::is_valid_department_id(claimed) {
                return Err(Status::invalid_argument("source must be a department id ([a-z0-9-]+)"));
            }
            return Ok(claimed.to_string());
        }
        let caller = self.caller(c)?;
        let dept = &caller.department;
        if !claimed.is_empty() && claimed != dept {
            return Err(Self::denied(
                &caller.to_string(),
                format!("caller is {dept}; it may not publish as {claimed}"),
            ));
        }
        Ok(caller.department)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(token: Option<&str>, cert: Option<PeerCert>) -> (MetadataMap, Extensions) {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        let mut e = Extensions::new();
        if let Some(c) = cert {
            e.insert(c);
        }
        (m, e)
    }

    fn ids(client_certs: bool) -> Identities {
        Identities::new([("tok-a".to_string(), "dept-a".to_string())].into(), ["admin".to_string()])
            .with_client_certs(client_certs)
    }

    #[test]
    fn certificate_first_then_token() {
        let (m, e) = creds(Some("tok-a"), Some(PeerCert::Department("dept-b".into())));
        assert_eq!(ids(true).department((&m, &e), "").expect("cert"), "dept-b");
        // Without a client CA configured, a PeerCert (which cannot then exist) is not trusted.
        assert_eq!(ids(false).department((&m, &e), "").expect("token"), "dept-a");
        let (m, e) = creds(Some("tok-a"), Some(PeerCert::Unusable("no name".into())));
        assert_eq!(ids(true).department((&m, &e), "").expect("token fallback"), "dept-a");
    }

    #[test]
    fn refusals() {
        let (m, e) = creds(None, Some(PeerCert::Department("dept-b".into())));
        let denied = ids(true).department((&m, &e), "dept-a").expect_err("other source");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let (m, e) = creds(None, Some(PeerCert::Unusable("no name".into())));
        let refused = ids(true).require_caller((&m, &e)).expect_err("unusable");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let (m, e) = creds(Some("wrong"), None);
        assert_eq!(ids(true).require_caller((&m, &e)).expect_err("bad").code(), tonic::Code::Unauthenticated);
        let cert_only = Identities::default().with_client_certs(true);
        assert!(cert_only.enforced());
        let (m, e) = creds(None, None);
        assert_eq!(cert_only.scope((&m, &e)).expect_err("nobody").code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn tokens_are_held_as_digests_only() {
        let shown = format!("{:?}", ids(false));
        assert!(!shown.contains("tok-a"), "no token in Debug output: {shown}");
        let (m, e) = creds(Some("tok-a"), None);
        assert_eq!(ids(false).department((&m, &e), "").expect("token"), "dept-a");
        let (m, e) = creds(Some("tok-b"), None);
        assert!(ids(false).require_caller((&m, &e)).is_err());
    }

    #[test]
    fn development_mode_is_refused_off_loopback() {
        let any: std::net::SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let host: std::net::SocketAddr = "192.0.2.7:50051".parse().expect("addr");
        let local: std::net::SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        let local6: std::net::SocketAddr = "[::1]:50051".parse().expect("addr");
        let open = Identities::default();
        for addr in [any, host] {
            let e = open.check_listener("registry", addr).expect_err("nobody authenticated off loopback");
            assert!(
                e.to_string().contains(&addr.to_string())
                    && e.to_string().contains("KAKEHASHI_CREDENTIALS_FILE"),
                "{e}"
            );
        }
        for addr in [local, local6] {
            open.check_listener("registry", addr).expect("development mode stays possible on loopback");
        }
        ids(false).check_listener("registry", any).expect("tokens");
        Identities::default()
            .with_client_certs(true)
            .check_listener("adapter", any)
            .expect("client certificates");
    }

    fn with_header(mut m: MetadataMap, value: &str) -> MetadataMap {
        m.append(ON_BEHALF_OF, value.parse().expect("ascii"));
        m
    }

    fn delegating() -> Identities {
        Identities::new(
            [("tok-a".to_string(), "dept-a".to_string()), ("tok-console".to_string(), "console".to_string())]
                .into(),
            ["admin".to_string()],
        )
        .with_client_certs(true)
        .with_delegates(["console".to_string()])
    }

    #[test]
    fn a_delegate_acts_as_the_department_it_names() {
        let ids = delegating();
        let (m, e) = creds(None, Some(PeerCert::Department("console".into())));
        let m = with_header(m, "dept-b");
        assert_eq!(ids.department((&m, &e), "").expect("delegated"), "dept-b");
        assert_eq!(ids.scope((&m, &e)).expect("scope"), Scope::Department("dept-b".into()));
        let actor = ids.actor((&m, &e)).expect("actor").expect("authenticated");
        assert_eq!(actor.to_string(), "dept-b via console");
        // Exactly that department's rights: not another's, not an administrator's.
        let other = ids.acting_for((&m, &e), "dept-c").expect_err("another department");
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert_eq!(ids.require_admin((&m, &e)).expect_err("not admin").code(), tonic::Code::PermissionDenied);
        // Acting for an administrator is refused unless configured, and then it is acting as one.
        let (m, e) = creds(Some("tok-console"), None);
        let m = with_header(m, "admin");
        let status = ids.scope((&m, &e)).expect_err("an administrator, not configured");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("delegates_for_admins"), "{status:?}");
        let ids = ids.with_delegates_for_admins(true);
        assert_eq!(ids.scope((&m, &e)).expect("admin scope"), Scope::All);
    }

    #[test]
    fn a_delegate_without_the_header_has_no_rights() {
        let ids = delegating();
        for (m, e) in
            [creds(None, Some(PeerCert::Department("console".into()))), creds(Some("tok-console"), None)]
        {
            for refused in [
                ids.require_caller((&m, &e)),
                ids.scope((&m, &e)).map(|_| ()),
                ids.department((&m, &e), "").map(|_| ()),
                ids.acting_for((&m, &e), "console").map(|_| ()),
            ] {
                let status = refused.expect_err("a delegate on its own");
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                assert!(status.message().contains(ON_BEHALF_OF), "{status:?}");
            }
        }
        // Even a delegate listed as an administrator.
        let admin_delegate = delegating().with_delegates(["admin".to_string()]);
        let (m, e) = creds(None, Some(PeerCert::Department("admin".into())));
        assert!(admin_delegate.require_admin((&m, &e)).is_err());
    }

    #[test]
    fn the_header_from_anyone_else_is_refused() {
        let ids = delegating();
        for (m, e) in [creds(None, Some(PeerCert::Department("dept-a".into()))), creds(Some("tok-a"), None)] {
            let m = with_header(m, "dept-b");
            let status = ids.scope((&m, &e)).expect_err("not a delegate");
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            let status = ids.department((&m, &e), "dept-a").expect_err("not even for itself");
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        }
        // Unauthenticated with the header: still unauthenticated first.
        let (m, e) = creds(None, None);
        let m = with_header(m, "dept-b");
        assert_eq!(ids.scope((&m, &e)).expect_err("nobody").code(), tonic::Code::Unauthenticated);
        // Development mode has no delegates: the header is refused, not ignored.
        let dev = Identities::default();
        assert_eq!(dev.scope((&m, &e)).expect_err("dev").code(), tonic::Code::PermissionDenied);
        assert_eq!(dev.require_caller((&m, &e)).expect_err("dev").code(), tonic::Code::PermissionDenied);
        let (m, e) = creds(None, None);
        assert_eq!(dev.scope((&m, &e)).expect("dev without the header"), Scope::All);
    }

    #[test]
    fn the_named_department_is_checked() {
        let ids = delegating();
        for bad in ["", "Dept-B", "dept b", "dept.b", "*", "../admin"] {
            let (m, e) = creds(Some("tok-console"), None);
            let m = with_header(m, bad);
            let status = ids.scope((&m, &e)).expect_err(bad);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}: {status:?}");
        }
        // Two departments at once, or another delegate: refused.
        let (m, e) = creds(Some("tok-console"), None);
        let m = with_header(with_header(m, "dept-a"), "dept-b");
        assert_eq!(ids.scope((&m, &e)).expect_err("two").code(), tonic::Code::InvalidArgument);
        let (m, e) = creds(Some("tok-console"), None);
        let m = with_header(m, "console");
        assert_eq!(ids.scope((&m, &e)).expect_err("itself").code(), tonic::Code::PermissionDenied);
    }
}
