//! SMART Health Cards: see the crate documentation for the pipeline.

pub mod fhir;
pub mod issue;
pub mod jws;
pub mod keys;
pub mod numeric;
pub mod payload;
pub mod qr;
pub mod revocation;
pub mod verify;

/// base64url without padding, as JOSE and the SMART Health Cards spec use everywhere.
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decoding (no padding, no stray trailing bits).
pub(crate) fn b64url_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text)
}

/// True when `s` is non-empty and uses only the base64url alphabet.
pub(crate) fn is_b64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
