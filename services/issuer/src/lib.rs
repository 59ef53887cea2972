#![warn(missing_docs)]
//! Kakehashi issuer: SMART Health Cards (<https://spec.smarthealth.cards>) for vaccination
//! certificates: build, sign, encode as `shc:/` and QR, and verify offline.
//!
//! The card pipeline, one module per step:
//! - [`shc::fhir`]: the vaccination record → minified FHIR R4 Bundle, and back.
//! - [`shc::payload`]: the JWS payload (`iss`, `nbf`, `exp`, `vc`) and its checks.
//! - [`shc::jws`]: compact JWS with `alg: ES256`, `zip: DEF` (raw DEFLATE).
//! - [`shc::keys`]: P-256 keys, RFC 7638 `kid`, JWK Sets, rotation.
//! - [`shc::numeric`]: the `shc:/` numeric form (single QR only).
//! - [`shc::qr`]: QR rendering (PNG, SVG) and QR decoding from PNG.
//! - [`shc::revocation`]: `rid` derivation and revocation lists per `kid`.
//! - [`shc::issue`]: record + key → signed card.
//! - [`shc::verify`]: any input form + JWKS → verified holder and doses, or a typed error.
//!
//! [`service`] is the issuer department built on it (binary `kakehashi-issuer`): see
//! `docs/certificates.md`.

pub mod service;
pub mod shc;

pub use shc::fhir::{Dose, Holder, VaccinationRecord, VaccineCode, CVX_SYSTEM};
pub use shc::issue::{issue_card, HealthCard, IssueError, IssueOptions};
pub use shc::keys::{IssuerKey, Jwk, Jwks, KeyError, KeyRing};
pub use shc::numeric::{NumericError, MAX_SINGLE_QR_JWS_LEN};
pub use shc::qr::{QrError, ShcQr};
pub use shc::revocation::{derive_rid, RevocationError, RevocationList};
pub use shc::verify::{VerifiedCard, Verifier, VerifyError, VerifyOptions};

// Cross-module tests (conformance with the spec's examples, round trips, failure classes) live
// in src/tests so the crate's whole test suite stays inside its own source tree.
#[cfg(test)]
mod tests;
