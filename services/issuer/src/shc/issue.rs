//! Issuing: vaccination record + signing key → signed card in every form a holder needs (JWS,
//! `shc:/` string, `.smart-health-card` file, QR code).

use super::fhir::{RecordError, VaccinationRecord};
use super::keys::IssuerKey;
use super::numeric::{self, NumericError};
use super::payload::{build_payload, is_https_url};
use super::qr::{QrError, ShcQr};
use super::{is_b64url, jws, revocation::MAX_RID_LEN};

/// Why a card could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The record is incomplete or not printable on a passport-linked card.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `iss` must be an https URL without a trailing slash.
    #[error("issuer {0:?} must be an https URL without a trailing slash")]
    Issuer(String),
    /// `rid` must be base64url, at most 24 characters.
    #[error("revocation id {0:?} must be base64url, at most 24 characters")]
    Rid(String),
    /// `exp` before `nbf`.
    #[error("exp {exp} is before nbf {nbf}")]
    ExpBeforeNbf {
        /// Not before.
        nbf: i64,
        /// Expiry.
        exp: i64,
    },
    /// Too many doses (or too long names) for one QR code.
    #[error("card too large for a single QR code: {0}")]
    TooLarge(NumericError),
    /// Serialisation or compression failed.
    #[error("encoding the card failed: {0}")]
    Encoding(String),
}

/// Per-card issuing parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueOptions {
    /// The issuer URL (`iss`); verifiers fetch `<iss>/.well-known/jwks.json`.
    pub issuer: String,
    /// Not before, seconds since the epoch (normally the issuing time).
    pub nbf: i64,
    /// Expiry, if the card should have one (vaccination cards usually do not).
    pub exp: Option<i64>,
    /// Revocation id ([`super::revocation::derive_rid`]), if the issuer supports revocation.
    pub rid: Option<String>,
}

/// A signed card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCard {
    /// The compact JWS.
    pub jws: String,
    /// The `shc:/…` numeric form for the QR code.
    pub numeric: String,
}

impl HealthCard {
    /// The QR code for the card.
    pub fn qr(&self) -> Result<ShcQr, QrError> {
        ShcQr::new(&self.numeric)
    }

    /// The `.smart-health-card` file contents: `{"verifiableCredential":[<jws>]}`.
    pub fn to_file_json(&self) -> String {
        serde_json::json!({ "verifiableCredential": [self.jws] }).to_string()
    }
}

/// Builds, signs and encodes a card for `record` with `key`.
pub fn issue_card(
    key: &IssuerKey,
    record: &VaccinationRecord,
    opts: &IssueOptions,
) -> Result<HealthCard, IssueError> {
    record.validate()?;
    if !is_https_url(&opts.issuer) || opts.issuer.ends_with('/') {
        return Err(IssueError::Issuer(opts.issuer.clone()));
    }
    if let Some(rid) = &opts.rid {
        if !is_b64url(rid) || rid.len() > MAX_RID_LEN {
            return Err(IssueError::Rid(rid.clone()));
        }
    }
    if let Some(exp) = opts.exp {
        if exp < opts.nbf {
            return Err(IssueError::ExpBeforeNbf { nbf: opts.nbf, exp });
        }
    }
    let payload = build_payload(&opts.issuer, opts.nbf, opts.exp, opts.rid.as_deref(), record.to_bundle());
    // Minified: serde_json's compact writer emits no insignificant whitespace.
    let payload = serde_json::to_vec(&payload).map_err(|e| IssueError::Encoding(e.to_string()))?;
    let jws = jws::sign_compact(key, &payload).map_err(|e| IssueError::Encoding(e.to_string()))?;
    let numeric = numeric::encode(&jws).map_err(IssueError::TooLarge)?;
    Ok(HealthCard { jws, numeric })
}
