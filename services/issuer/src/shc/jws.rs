//! Compact JWS as SMART Health Cards use it: header `{"alg":"ES256","zip":"DEF","kid":…}`,
//! payload = raw DEFLATE (RFC 1951, no zlib header) of the minified JSON, ES256 signature in JOSE
//! form.

use std::io::{Read as _, Write as _};

use flate2::Compression;
use serde_json::Value;

use super::keys::IssuerKey;
use super::{b64url_decode, b64url_encode};

/// Inflated payloads larger than this are refused: a card that fits a QR code inflates to a few
/// kilobytes, and the cap keeps a hostile "DEFLATE bomb" from exhausting memory.
pub const MAX_INFLATED_PAYLOAD: u64 = 1 << 20;

/// Raw DEFLATE at the best compression (smaller QR codes).
pub fn deflate_raw(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data)?;
    enc.finish()
}

/// Raw INFLATE, at most [`MAX_INFLATED_PAYLOAD`] bytes.
pub fn inflate_raw(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .take(MAX_INFLATED_PAYLOAD + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("payload is not raw DEFLATE: {e}"))?;
    if out.len() as u64 > MAX_INFLATED_PAYLOAD {
        return Err(format!("inflated payload exceeds {MAX_INFLATED_PAYLOAD} bytes"));
    }
    Ok(out)
}

/// Signs `payload_json` (already minified) as a compact JWS.
pub fn sign_compact(key: &IssuerKey, payload_json: &[u8]) -> std::io::Result<String> {
    let header = serde_json::json!({"alg": "ES256", "zip": "DEF", "kid": key.kid()});
    let header = b64url_encode(header.to_string().as_bytes());
    let payload = b64url_encode(&deflate_raw(payload_json)?);
    let signing_input = format!("{header}.{payload}");
    let signature = b64url_encode(&key.sign(signing_input.as_bytes()));
    Ok(format!("{signing_input}.{signature}"))
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug, Clone)]
pub struct CompactJws {
    /// The protected header.
    pub header: Value,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: what the signature covers.
    pub signing_input: String,
    /// The (still compressed) payload bytes.
    pub payload: Vec<u8>,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

impl CompactJws {
    /// Splits and base64url-decodes the three parts; the header must be a JSON object.
    pub fn parse(jws: &str) -> Result<Self, String> {
        let jws = jws.trim();
        let mut parts = jws.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("a compact JWS has exactly three dot-separated parts".into());
        };
        let header_bytes = b64url_decode(h).map_err(|_| "JWS header is not base64url".to_string())?;
        let header: Value =
            serde_json::from_slice(&header_bytes).map_err(|e| format!("JWS header is not JSON: {e}"))?;
        if !header.is_object() {
            return Err("JWS header is not a JSON object".into());
        }
        let payload = b64url_decode(p).map_err(|_| "JWS payload is not base64url".to_string())?;
        let signature = b64url_decode(s).map_err(|_| "JWS signature is not base64url".to_string())?;
        Ok(Self { header, signing_input: format!("{h}.{p}"), payload, signature })
    }

    /// A string header member.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_is_raw_and_round_trips() {
        let data = br#"{"iss":"https://example.org","nbf":1}"#.repeat(20);
        let z = deflate_raw(&data).expect("deflate");
        // A zlib stream would start 0x78; raw DEFLATE of this data starts with a block header.
        assert_ne!(z.first(), Some(&0x78));
        assert_eq!(inflate_raw(&z).expect("inflate"), data);
        assert!(inflate_raw(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn inflate_refuses_bombs() {
        let big = vec![b'a'; (MAX_INFLATED_PAYLOAD + 10) as usize];
        let z = deflate_raw(&big).expect("deflate");
        assert!(inflate_raw(&z).expect_err("too big").contains("exceeds"));
    }

    #[test]
    fn parse_rejects_wrong_part_counts_and_non_objects() {
        assert!(CompactJws::parse("a.b").is_err());
        assert!(CompactJws::parse("a.b.c.d").is_err());
        let h = b64url_encode(b"[1]");
        assert!(CompactJws::parse(&format!("{h}.AA.AA")).is_err());
        let key = IssuerKey::generate();
        let jws = sign_compact(&key, b"{}").expect("sign");
        let parsed = CompactJws::parse(&jws).expect("parse");
        assert_eq!(parsed.header_str("kid"), Some(key.kid()));
        assert_eq!(parsed.header_str("zip"), Some("DEF"));
        assert_eq!(parsed.signature.len(), 64);
    }
}
