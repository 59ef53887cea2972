//! Revocation as the spec defines it: a card carries `vc.rid`, and the issuer publishes per `kid`
//! a list `{"kid":…,"method":"rid","ctr":N,"rids":["<rid>[.<timestamp>]",…]}` at
//! `<iss>/.well-known/crl/<kid>.json`.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{b64url_encode, is_b64url};

/// The spec's maximum `rid` length.
pub const MAX_RID_LEN: usize = 24;

/// The revocation id for a holder: base64url of the first 64 bits of HMAC-SHA-256 over the
/// holder identifier (here the issuer's per-department pseudonym) with a per-issuer secret. The
/// HMAC keeps the rid stable for one person without revealing who it is.
pub fn derive_rid(secret: &[u8], holder_id: &str) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map(|mut m| {
        m.update(holder_id.as_bytes());
        m.finalize().into_bytes()
    });
    match mac {
        Ok(tag) => b64url_encode(&tag[..8]),
        Err(_) => String::new(),
    }
}

/// A revocation list that does not follow the spec's form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// Not JSON of the right shape.
    #[error("revocation list is not valid JSON: {0}")]
    Json(String),
    /// A `method` other than `rid`.
    #[error("unsupported revocation method {0:?} (only \"rid\")")]
    Method(String),
    /// An entry that is not `<base64url rid, ≤24 chars>[.<unix seconds>]`.
    #[error("invalid revocation entry {0:?}")]
    Entry(String),
}

/// One key's revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The key whose cards this list revokes.
    pub kid: String,
    /// Always `rid`.
    pub method: String,
    /// Counter, increased on every change (matches the key's `crlVersion`).
    pub ctr: u64,
    /// Revoked ids, optionally `.timestamp`: then only cards with `nbf` up to it are revoked.
    pub rids: Vec<String>,
}

/// A parsed list entry.
fn parse_entry(entry: &str) -> Result<(&str, Option<i64>), RevocationError> {
    let bad = || RevocationError::Entry(entry.to_string());
    let (rid, ts) = match entry.split_once('.') {
        None => (entry, None),
        Some((rid, ts)) => {
            if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (rid, Some(ts.parse::<i64>().map_err(|_| bad())?))
        }
    };
    if !is_b64url(rid) || rid.len() > MAX_RID_LEN {
        return Err(bad());
    }
    Ok((rid, ts))
}

impl RevocationList {
    /// An empty list for `kid`.
    pub fn new(kid: impl Into<String>) -> Self {
        Self { kid: kid.into(), method: "rid".into(), ctr: 0, rids: Vec::new() }
    }

    /// Parses and checks a published list.
    pub fn from_json(json: &str) -> Result<Self, RevocationError> {
        let list: Self = serde_json::from_str(json).map_err(|e| RevocationError::Json(e.to_string()))?;
        if list.method != "rid" {
            return Err(RevocationError::Method(list.method));
        }
        for entry in &list.rids {
            parse_entry(entry)?;
        }
        Ok(list)
    }

    /// The list as JSON, for publishing.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Revokes `rid`: all its cards, or with `issued_until` only cards whose `nbf` is at or
    /// before that time (e.g. a reissued card stays valid). Increases `ctr`.
    pub fn revoke(&mut self, rid: &str, issued_until: Option<i64>) -> Result<(), RevocationError> {
        let entry = match issued_until {
            Some(ts) => format!("{rid}.{ts}"),
            None => rid.to_string(),
        };
        parse_entry(&entry)?;
        self.rids.push(entry);
        self.ctr += 1;
        Ok(())
    }

    /// Whether a card with this `rid` and `nbf` is revoked. The timestamp has second resolution,
    /// so `nbf` is compared by its whole second (the spec's own revoked example has `nbf` with a
    /// fraction of the same second as the list's timestamp).
    pub fn is_revoked(&self, rid: &str, nbf: f64) -> bool {
        self.rids.iter().filter_map(|e| parse_entry(e).ok()).any(|(r, ts)| {
            r == rid
                && match ts {
                    None => true,
                    Some(ts) => nbf.floor() <= ts as f64,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rid_is_64_bits_base64url_and_keyed() {
        let a = derive_rid(b"secret-1", "pseudonym-A");
        assert_eq!(a.len(), 11, "8 bytes → 11 base64url chars");
        assert!(is_b64url(&a));
        assert_eq!(a, derive_rid(b"secret-1", "pseudonym-A"));
        assert_ne!(a, derive_rid(b"secret-2", "pseudonym-A"));
        assert_ne!(a, derive_rid(b"secret-1", "pseudonym-B"));
    }

    #[test]
    fn rid_matches_hmac_sha256_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" →
        // 5bdcc146bf60754e…; the first 8 bytes base64url-encoded.
        assert_eq!(
            derive_rid(b"Jefe", "what do ya want for nothing?"),
            b64url_encode(&[0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e])
        );
    }

    #[test]
    fn timestamped_entries_revoke_only_older_cards() {
        let mut list = RevocationList::new("kid");
        list.revoke("AAAAAAAAAAA", None).expect("ok");
        list.revoke("BBBBBBBBBBB", Some(1000)).expect("ok");
        assert_eq!(list.ctr, 2);
        assert!(list.is_revoked("AAAAAAAAAAA", 5.0e9));
        assert!(list.is_revoked("BBBBBBBBBBB", 999.0));
        assert!(list.is_revoked("BBBBBBBBBBB", 1000.4));
        assert!(!list.is_revoked("BBBBBBBBBBB", 1001.0));
        assert!(!list.is_revoked("CCCCCCCCCCC", 1.0));
        let back = RevocationList::from_json(&list.to_json()).expect("parse");
        assert_eq!(back, list);
    }

    #[test]
    fn malformed_lists_are_refused() {
        let bad_method = r#"{"kid":"k","method":"hash-fhir","ctr":1,"rids":[]}"#;
        assert!(matches!(RevocationList::from_json(bad_method), Err(RevocationError::Method(_))));
        let bad_entry = r#"{"kid":"k","method":"rid","ctr":1,"rids":["a+b"]}"#;
        assert!(matches!(RevocationList::from_json(bad_entry), Err(RevocationError::Entry(_))));
        let too_long = format!(r#"{{"kid":"k","method":"rid","ctr":1,"rids":["{}"]}}"#, "a".repeat(25));
        assert!(RevocationList::from_json(&too_long).is_err());
        let bad_ts = r#"{"kid":"k","method":"rid","ctr":1,"rids":["abc.12x"]}"#;
        assert!(RevocationList::from_json(bad_ts).is_err());
        assert!(RevocationList::from_json("[]").is_err());
    }
}
