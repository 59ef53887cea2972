//! The CLI's own NATS connection (operator commands), with the identity and CA it was given.

use crate::cli::Conn;
use crate::error::CtlError;
use kakehashi_runtime::nats_auth::NatsAuthConfig;

/// Connects to `conn.nats` as `conn.nats_credentials` (TLS when `conn.nats_ca` is set).
pub async fn connect(conn: &Conn) -> Result<async_nats::Client, CtlError> {
    let auth = NatsAuthConfig {
        credentials: conn.nats_credentials.clone(),
        ca_file: conn.nats_ca.clone(),
        ..Default::default()
    };
    auth.options("kakehashi-cli")
        .map_err(|e| CtlError::Nats(e.to_string()))?
        .connect(&conn.nats)
        .await
        .map_err(|e| CtlError::Nats(format!("{}: {e}", conn.nats)))
}
