//! Offline verification: a card as `shc:/…`, a compact JWS, a `.smart-health-card` file or a
//! PNG of its QR code, checked against the issuer's JWK Set (and revocation lists, if given).
//! Every way a card can fail is its own [`VerifyError`] variant.

use std::collections::HashMap;

use serde::Serialize;

use super::fhir::{record_from_bundle, VaccinationRecord};
use super::jws::{inflate_raw, CompactJws};
use super::keys::Jwks;
use super::numeric::{self, NumericError, SHC_PREFIX};
use super::payload::{parse_payload, PayloadError};
use super::qr::{self, QrError};
use super::revocation::RevocationList;

/// Why a card is not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// The input (text, file or QR content) is not a SMART Health Card at all.
    #[error("not a SMART Health Card: {0}")]
    NotShc(String),
    /// `shc:/` followed by data that is not a valid numeric encoding.
    #[error("invalid shc:/ data: {0}")]
    BadNumeric(NumericError),
    /// The input looks like an image but cannot be read (only PNG is supported).
    #[error("unreadable image: {0}")]
    BadImage(String),
    /// A readable image without a readable QR code.
    #[error("no readable QR code in the image")]
    NoQrInImage,
    /// The JWS, its payload or its FHIR Bundle is not of the required form.
    #[error("malformed health card: {0}")]
    Malformed(String),
    /// A signature algorithm other than ES256.
    #[error("unsupported signature algorithm {0:?}: SMART Health Cards use ES256")]
    UnsupportedAlgorithm(String),
    /// The payload is not marked as raw DEFLATE (`zip: DEF`).
    #[error("payload compression {0:?} is not DEF")]
    NotCompressed(Option<String>),
    /// The signing key is not in the issuer's JWK Set.
    #[error("signing key {0:?} is not in the issuer's key set (wrong issuer or unknown key)")]
    UnknownKid(String),
    /// The signature does not verify: the card was altered, or signed by another key.
    #[error("bad signature: the card was altered or not signed by the key it names")]
    BadSignature,
    /// `iss` is not an https URL.
    #[error("issuer {0:?} is not an https URL")]
    IssuerNotHttps(String),
    /// `iss` is not the issuer the verifier was told to expect.
    #[error("issued by {found:?}, expected {expected:?}")]
    WrongIssuer {
        /// The card's `iss`.
        found: String,
        /// [`VerifyOptions::expected_issuer`].
        expected: String,
    },
    /// `nbf` is in the future (beyond the allowed clock skew).
    #[error("not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The card's `nbf`, whole seconds.
        nbf: i64,
        /// The verification time.
        now: i64,
    },
    /// `exp` has passed (beyond the allowed clock skew).
    #[error("expired at {exp} (now {now})")]
    Expired {
        /// The card's `exp`, whole seconds.
        exp: i64,
        /// The verification time.
        now: i64,
    },
    /// The issuer's revocation list for the signing key lists this card's `rid`.
    #[error("revoked by the issuer (rid {rid})")]
    Revoked {
        /// The card's `rid`.
        rid: String,
    },
    /// The revocation list is older than the key's `crlVersion` says it should be.
    #[error("revocation list for key {kid} has ctr {have}, the key set says {need}")]
    StaleRevocationList {
        /// The key.
        kid: String,
        /// The list's `ctr`.
        have: u64,
        /// The key's `crlVersion`.
        need: u64,
    },
}

impl From<NumericError> for VerifyError {
    fn from(e: NumericError) -> Self {
        match e {
            NumericError::NotShc => VerifyError::NotShc("the text does not start with shc:/".into()),
            other => VerifyError::BadNumeric(other),
        }
    }
}

impl From<PayloadError> for VerifyError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::Malformed(m) => VerifyError::Malformed(m),
            PayloadError::IssuerNotHttps(iss) => VerifyError::IssuerNotHttps(iss),
        }
    }
}

/// How strict verification is about time and issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Verification time in seconds since the epoch; `None` means the system clock.
    pub now: Option<i64>,
    /// Allowed clock difference between issuer and verifier, seconds.
    pub clock_skew_secs: i64,
    /// If set, `iss` must equal this (the issuer whose JWK Set was given).
    pub expected_issuer: Option<String>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self { now: None, clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS, expected_issuer: None }
    }
}

/// Default clock-skew allowance: five minutes, as common for signed tokens.
pub const DEFAULT_CLOCK_SKEW_SECS: i64 = 300;

/// What a valid card says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiedCard {
    /// `iss`.
    pub issuer: String,
    /// The key that signed it.
    pub kid: String,
    /// `nbf`, seconds since the epoch.
    pub nbf: f64,
    /// `exp`, if any.
    pub exp: Option<f64>,
    /// `vc.rid`, if any.
    pub rid: Option<String>,
    /// `vc.type`.
    pub types: Vec<String>,
    /// `credentialSubject.fhirVersion`.
    pub fhir_version: String,
    /// The holder and the completed doses.
    pub record: VaccinationRecord,
}

/// Verifies cards against one issuer's JWK Set (or a merged set of trusted issuers' keys).
#[derive(Debug, Clone)]
pub struct Verifier {
    jwks: Jwks,
    revocation: HashMap<String, RevocationList>,
    options: VerifyOptions,
}

/// PNG files start with these eight bytes.
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

impl Verifier {
    /// A verifier trusting the keys in `jwks`, default options, no revocation lists.
    pub fn new(jwks: Jwks) -> Self {
        Self { jwks, revocation: HashMap::new(), options: VerifyOptions::default() }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: VerifyOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds the revocation list of one key (replacing an earlier list for that key).
    pub fn with_revocation_list(mut self, list: RevocationList) -> Self {
        self.revocation.insert(list.kid.clone(), list);
        self
    }

    /// Verifies any supported input: PNG image, `shc:/…` text, compact JWS, or a
    /// `.smart-health-card` JSON file holding exactly one card.
    pub fn verify_input(&self, input: &[u8]) -> Result<VerifiedCard, VerifyError> {
        self.verify_jws(&extract_jws(input)?)
    }

    /// Verifies a `.smart-health-card` file (`{"verifiableCredential":[<jws>]}`) with one card.
    pub fn verify_file_json(&self, json: &str) -> Result<VerifiedCard, VerifyError> {
        self.verify_jws(&jws_from_file_json(json)?)
    }

    /// Verifies the QR code(s) in a PNG image: the first `shc:/` code found.
    pub fn verify_png(&self, png: &[u8]) -> Result<VerifiedCard, VerifyError> {
        self.verify_jws(&jws_from_png(png)?)
    }

    /// Verifies a `shc:/…` string.
    pub fn verify_numeric(&self, shc: &str) -> Result<VerifiedCard, VerifyError> {
        let jws = numeric::decode(shc)?;
        self.verify_jws(&jws)
    }

    /// Verifies a compact JWS: header, key, signature, payload, FHIR Bundle, time, revocation.
    pub fn verify_jws(&self, jws: &str) -> Result<VerifiedCard, VerifyError> {
        let parsed = CompactJws::parse(jws).map_err(VerifyError::Malformed)?;
        match parsed.header_str("alg") {
            Some("ES256") => {}
            other => return Err(VerifyError::UnsupportedAlgorithm(other.unwrap_or("(none)").to_string())),
        }
        match parsed.header_str("zip") {
            Some("DEF") => {}
            other => return Err(VerifyError::NotCompressed(other.map(str::to_string))),
        }
        if parsed.header.get("crit").is_some() {
            // RFC 7515: unknown critical extensions must be refused.
            return Err(VerifyError::Malformed("JWS header has crit extensions".into()));
        }
        let kid =
            parsed.header_str("kid").ok_or_else(|| VerifyError::Malformed("JWS header has no kid".into()))?;
        let key = self.jwks.find(kid).ok_or_else(|| VerifyError::UnknownKid(kid.to_string()))?;
        // The signature covers the compressed payload: check it before inflating anything.
        let valid = key
            .verify(parsed.signing_input.as_bytes(), &parsed.signature)
            .map_err(|e| VerifyError::Malformed(format!("key {kid} in the key set: {e}")))?;
        if !valid {
            return Err(VerifyError::BadSignature);
        }
        let payload = inflate_raw(&parsed.payload).map_err(VerifyError::Malformed)?;
        let payload = parse_payload(&payload)?;
        if let Some(expected) = &self.options.expected_issuer {
            if &payload.iss != expected {
                return Err(VerifyError::WrongIssuer { found: payload.iss, expected: expected.clone() });
            }
        }
        let record = record_from_bundle(&payload.bundle).map_err(|e| VerifyError::Malformed(e.0))?;

        let now = self.options.now.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
        let skew = self.options.clock_skew_secs.max(0);
        let nbf_secs = payload.nbf.floor() as i64;
        if nbf_secs > now.saturating_add(skew) {
            return Err(VerifyError::NotYetValid { nbf: nbf_secs, now });
        }
        if let Some(exp) = payload.exp {
            let exp_secs = exp.floor() as i64;
            if now > exp_secs.saturating_add(skew) {
                return Err(VerifyError::Expired { exp: exp_secs, now });
            }
        }
        if let Some(list) = self.revocation.get(kid) {
            if let Some(need) = key.crl_version {
                if list.ctr < need {
                    return Err(VerifyError::StaleRevocationList {
                        kid: kid.to_string(),
                        have: list.ctr,
                        need,
                    });
                }
            }
            if let Some(rid) = &payload.rid {
                if list.is_revoked(rid, payload.nbf) {
                    return Err(VerifyError::Revoked { rid: rid.clone() });
                }
            }
        }
        Ok(VerifiedCard {
            issuer: payload.iss,
            kid: kid.to_string(),
            nbf: payload.nbf,
            exp: payload.exp,
            rid: payload.rid,
            types: payload.types,
            fhir_version: payload.fhir_version,
            record,
        })
    }
}

/// The compact JWS in any supported input (PNG image, `shc:/…` text, compact JWS, or a
/// `.smart-health-card` JSON file holding exactly one card), nothing checked yet: the sniffing
/// [`Verifier::verify_input`] does.
pub fn extract_jws(input: &[u8]) -> Result<String, VerifyError> {
    if input.starts_with(PNG_MAGIC) {
        return jws_from_png(input);
    }
    let Ok(text) = std::str::from_utf8(input) else {
        return Err(VerifyError::BadImage("not text and not a PNG image (only PNG is supported)".into()));
    };
    let text = text.trim();
    if text.get(..SHC_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(SHC_PREFIX)) {
        return Ok(numeric::decode(text)?);
    }
    if text.starts_with('{') {
        return jws_from_file_json(text);
    }
    if text.split('.').count() == 3 && !text.contains(char::is_whitespace) {
        return Ok(text.to_string());
    }
    Err(VerifyError::NotShc("input is not shc:/ text, a JWS, a health card file or a PNG image".into()))
}

fn jws_from_file_json(json: &str) -> Result<String, VerifyError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| VerifyError::NotShc(format!("not a health card file: {e}")))?;
    let creds = value
        .get("verifiableCredential")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| VerifyError::NotShc("JSON without a verifiableCredential array".into()))?;
    match creds.as_slice() {
        [one] => one
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| VerifyError::Malformed("verifiableCredential entry is not a string".into())),
        other => {
            Err(VerifyError::Malformed(format!("file holds {} cards; expected exactly one", other.len())))
        }
    }
}

fn jws_from_png(png: &[u8]) -> Result<String, VerifyError> {
    let texts = qr::decode_png(png).map_err(|e| match e {
        QrError::NoQrInImage => VerifyError::NoQrInImage,
        other => VerifyError::BadImage(other.to_string()),
    })?;
    let shc = texts
        .iter()
        .find(|t| t.trim().get(..SHC_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(SHC_PREFIX)))
        .ok_or_else(|| VerifyError::NotShc("the image's QR code does not hold a shc:/ URI".into()))?;
    Ok(numeric::decode(shc)?)
}

/// What a card claims about its signer, read **without** checking anything: where a verifier
/// that has no key set yet fetches the issuer's keys (`<iss>/.well-known/jwks.json`) and its
/// revocation list (`<iss>/.well-known/crl/<kid>.json`). Nothing here is to be trusted until
/// [`Verifier::verify_jws`] accepts the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedClaims {
    /// The compact JWS the input holds.
    pub jws: String,
    /// The payload's `iss`, as written (not checked to be https).
    pub iss: String,
    /// The header's `kid`.
    pub kid: String,
}

/// Reads `iss` and `kid` from any supported input (see [`extract_jws`]) without verifying the
/// signature: the payload is inflated (with the same size cap) and only `iss` is read from it.
pub fn peek_unverified(input: &[u8]) -> Result<UnverifiedClaims, VerifyError> {
    let jws = extract_jws(input)?;
    let parsed = CompactJws::parse(&jws).map_err(VerifyError::Malformed)?;
    let kid = parsed
        .header_str("kid")
        .ok_or_else(|| VerifyError::Malformed("JWS header has no kid".into()))?
        .to_string();
    let payload = inflate_raw(&parsed.payload).map_err(VerifyError::Malformed)?;
    let payload: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| VerifyError::Malformed(format!("payload is not JSON: {e}")))?;
    let iss = payload
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| VerifyError::Malformed("payload has no iss".into()))?
        .to_string();
    Ok(UnverifiedClaims { jws, iss, kid })
}
