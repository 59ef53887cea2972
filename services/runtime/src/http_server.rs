//! The accept-and-serve loop of our small HTTP/1 endpoints (the console, the issuer's JWKS and
//! revocation lists, the metrics endpoint): optional TLS, a handshake deadline, a
//! whole-connection deadline, a bounded request head, a cap on connections served at once, and
//! no busy loop when `accept` fails (e.g. out of file descriptors). Over TLS, the client
//! certificate chain the connection presented (verified by the acceptor's configuration) is put
//! in each request's extensions as [`PeerCertificates`].

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The limits of one endpoint, every one explicit.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for the TLS handshake.
    pub handshake: Duration,
    /// Time allowed for the whole connection, so an idle or slow client cannot hold it; also
    /// the deadline for a request head to arrive.
    pub connection: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Bytes buffered for a request head before hyper answers 431 (hyper's minimum is 8 KiB).
    pub max_request_head: usize,
    /// Whether a connection may carry several requests (browsers reuse theirs); `false` = one
    /// request, then `Connection: close`.
    pub keep_alive: bool,
}

/// The client certificate chain (leaf first) of the TLS connection a request came on, as the
/// acceptor's rustls configuration verified it. Only the server sets request extensions, so
/// unlike a header a client cannot forge it; absent when the connection had no certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

impl PeerCertificates {
    /// The client's own certificate (DER).
    pub fn leaf(&self) -> Option<&[u8]> {
        self.0.first().map(|c| c.as_ref())
    }
}

/// `inner`, with the connection's [`PeerCertificates`] set on every request.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Option<PeerCertificates>,
}

impl<S> Service<Request<Incoming>> for WithPeer<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().remove::<PeerCertificates>();
        if let Some(peer) = &self.peer {
            request.extensions_mut().insert(peer.clone());
        }
        self.inner.call(request)
    }
}

/// Serves `service` over HTTP/1 on `listener` (behind TLS when `tls` is given) until `shutdown`
/// completes; every open connection ends with it. `what` names the endpoint in log lines.
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    limits: ConnectionLimits,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(limits.keep_alive)
        .max_buf_size(limits.max_request_head)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.connection);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Dropping the set (server stopped or its task aborted) ends every connection.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accept = async {
            // Wait for a free slot before accepting, so excess clients queue in the backlog.
            let permit = Arc::clone(&permits).acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            _ = &mut shutdown => break,
            a = accept => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(permit) = permit else { break };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, endpoint = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = service.clone();
        let tls = tls.clone();
        let http = http.clone();
        connections.spawn(async move {
            let _permit = permit;
            let served = match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, endpoint = what, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let certs = stream.get_ref().1.peer_certificates().filter(|chain| !chain.is_empty()).map(
                        |chain| {
                            PeerCertificates(Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()))
                        },
                    );
                    let service = WithPeer { inner: service, peer: certs };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::time::timeout(limits.connection, conn).await
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    tokio::time::timeout(limits.connection, conn).await
                }
            };
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, endpoint = what, "connection failed"),
                Err(_) => tracing::debug!(%peer, endpoint = what, "connection timed out"),
            }
        });
    }
}
