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
//! whose resources a call may touch. With neither tokens nor a client CA configured the bus runs
//! in development mode: callers are not authenticated (logged loudly at startup).

use crate::tls::GrpcTls;
use std::collections::{BTreeMap, BTreeSet};
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Status};

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
    tokens: BTreeMap<String, String>,
    admins: BTreeSet<String>,
    client_certs: bool,
}

impl Identities {
    /// From configured `token → department` pairs and the departments allowed to administer the
    /// bus (schemas, policies, any department's subscriptions); no tokens (and no client
    /// certificates, see [`Identities::with_client_certs`]) means development mode.
    pub fn new(tokens: BTreeMap<String, String>, admins: impl IntoIterator<Item = String>) -> Self {
        Self { tokens, admins: admins.into_iter().collect(), client_certs: false }
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

    /// The authenticated department: the verified certificate's, else the bearer token's.
    /// A refusal is logged here, once, with what was claimed (never a token).
    fn caller(&self, c: Credentials<'_>) -> Result<String, Status> {
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
        match self.tokens.get(token) {
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
        if !self.enforced() {
            return Ok(());
        }
        let dept = self.caller(c.into())?;
        if self.admins.contains(&dept) {
            Ok(())
        } else {
            Err(Self::denied(&dept, format!("{dept} is not an administrator of the bus")))
        }
    }

    /// Refuses unless the caller is an authenticated department (anyone in development mode).
    pub fn require_caller<'a>(&self, c: impl Into<Credentials<'a>>) -> Result<(), Status> {
        if self.enforced() {
            self.caller(c.into())?;
        }
        Ok(())
    }

    /// Whose data the caller may read: everything for administrators (and in development
    /// mode), else only its own department's.
    pub fn scope<'a>(&self, c: impl Into<Credentials<'a>>) -> Result<Scope, Status> {
        if !self.enforced() {
            return Ok(Scope::All);
        }
        let dept = self.caller(c.into())?;
        Ok(if self.admins.contains(&dept) { Scope::All } else { Scope::Department(dept) })
    }

    /// The department a request acts for on `department`'s resources: itself, or any
    /// department when the caller is an administrator.
    pub fn acting_for<'a>(&self, c: impl Into<Credentials<'a>>, department: &str) -> Result<String, Status> {
        if !self.enforced() {
            return Ok(department.to_string());
        }
        let dept = self.caller(c.into())?;
        if dept == department || self.admins.contains(&dept) {
            Ok(department.to_string())
        } else {
            Err(Self::denied(&dept, format!("{dept} may not act for {department}")))
        }
    }

    /// The department a request speaks for. In development mode the claimed source is taken
    /// as is; otherwise the credentials decide and a different claimed source is refused.
    pub fn department<'a>(&self, c: impl Into<Credentials<'a>>, claimed: &str) -> Result<String, Status> {
        if !self.enforced() {
            if !kakehashi_proto::ident::is_valid_department_id(claimed) {
                return Err(Status::invalid_argument("source must be a department id ([a-z0-9-]+)"));
            }
            return Ok(claimed.to_string());
        }
        let dept = self.caller(c.into())?;
        if !claimed.is_empty() && claimed != dept {
            return Err(Self::denied(&dept, format!("caller is {dept}; it may not publish as {claimed}")));
        }
        Ok(dept)
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
}
