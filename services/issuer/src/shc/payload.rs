//! The JWS payload of a health card: `iss`, `nbf`, optional `exp`, and the `vc` claim holding
//! the types, `credentialSubject` (FHIR version and Bundle) and the optional revocation id `rid`.

use serde_json::{json, Map, Value};

/// `vc.type` member every health card carries.
pub const VC_TYPE_HEALTH_CARD: &str = "https://smarthealth.cards#health-card";
/// `vc.type` member of an immunization card.
pub const VC_TYPE_IMMUNIZATION: &str = "https://smarthealth.cards#immunization";
/// The FHIR version of the Bundle.
pub const FHIR_VERSION: &str = "4.0.1";

/// A payload that is not a health card, or one whose issuer is not an https URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Missing or wrongly typed members.
    #[error("{0}")]
    Malformed(String),
    /// `iss` is not an https URL.
    #[error("issuer {0:?} is not an https URL")]
    IssuerNotHttps(String),
}

/// The payload as read from a card.
#[derive(Debug, Clone, PartialEq)]
pub struct CardPayload {
    /// Issuer URL.
    pub iss: String,
    /// Not-before, seconds since the epoch (older examples use fractions).
    pub nbf: f64,
    /// Expiry, seconds since the epoch, if any.
    pub exp: Option<f64>,
    /// `vc.type`.
    pub types: Vec<String>,
    /// `vc.rid`, the revocation id, if any.
    pub rid: Option<String>,
    /// `vc.credentialSubject.fhirVersion`.
    pub fhir_version: String,
    /// `vc.credentialSubject.fhirBundle`.
    pub bundle: Value,
}

/// True for `https://host[…]` with a host and without whitespace.
pub fn is_https_url(iss: &str) -> bool {
    iss.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty() && !rest.starts_with('/') && !rest.chars().any(char::is_whitespace)
    })
}

/// Builds the payload: the spec's member set only, so the JSON stays small.
pub fn build_payload(iss: &str, nbf: i64, exp: Option<i64>, rid: Option<&str>, bundle: Value) -> Value {
    let mut vc = Map::new();
    vc.insert("type".into(), json!([VC_TYPE_HEALTH_CARD, VC_TYPE_IMMUNIZATION]));
    vc.insert("credentialSubject".into(), json!({"fhirVersion": FHIR_VERSION, "fhirBundle": bundle}));
    if let Some(rid) = rid {
        vc.insert("rid".into(), json!(rid));
    }
    let mut payload = Map::new();
    payload.insert("iss".into(), json!(iss));
    payload.insert("nbf".into(), json!(nbf));
    if let Some(exp) = exp {
        payload.insert("exp".into(), json!(exp));
    }
    payload.insert("vc".into(), Value::Object(vc));
    Value::Object(payload)
}

/// Parses and checks an inflated payload: JSON object, https `iss`, numeric `nbf` (and `exp`),
/// `vc.type` including the health-card type, `credentialSubject` with `fhirVersion` and a Bundle.
pub fn parse_payload(bytes: &[u8]) -> Result<CardPayload, PayloadError> {
    let bad = |m: &str| PayloadError::Malformed(m.to_string());
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| PayloadError::Malformed(format!("payload is not JSON: {e}")))?;
    let iss = value.get("iss").and_then(Value::as_str).ok_or_else(|| bad("payload has no iss"))?;
    if !is_https_url(iss) {
        return Err(PayloadError::IssuerNotHttps(iss.to_string()));
    }
    let nbf = value.get("nbf").and_then(Value::as_f64).ok_or_else(|| bad("payload has no numeric nbf"))?;
    let exp = match value.get("exp") {
        None => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| bad("payload exp is not a number"))?),
    };
    let vc = value.get("vc").filter(|v| v.is_object()).ok_or_else(|| bad("payload has no vc object"))?;
    let types: Vec<String> = vc
        .get("type")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("vc.type is not an array"))?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    if !types.iter().any(|t| t == VC_TYPE_HEALTH_CARD) {
        return Err(bad("vc.type does not include https://smarthealth.cards#health-card"));
    }
    let rid = match vc.get("rid") {
        None => None,
        Some(Value::String(r)) => Some(r.clone()),
        Some(_) => return Err(bad("vc.rid is not a string")),
    };
    let subject = vc.get("credentialSubject").ok_or_else(|| bad("vc has no credentialSubject"))?;
    let fhir_version = subject
        .get("fhirVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("credentialSubject has no fhirVersion"))?
        .to_string();
    let bundle =
        subject.get("fhirBundle").cloned().ok_or_else(|| bad("credentialSubject has no fhirBundle"))?;
    Ok(CardPayload { iss: iss.to_string(), nbf, exp, types, rid, fhir_version, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse() {
        let p = build_payload(
            "https://issuer.example.jp",
            1_700_000_000,
            Some(1_800_000_000),
            Some("abc"),
            json!({}),
        );
        let text = serde_json::to_vec(&p).expect("json");
        let parsed = parse_payload(&text).expect("parse");
        assert_eq!(parsed.iss, "https://issuer.example.jp");
        assert_eq!(parsed.nbf, 1_700_000_000.0);
        assert_eq!(parsed.exp, Some(1_800_000_000.0));
        assert_eq!(parsed.rid.as_deref(), Some("abc"));
        assert_eq!(parsed.types, vec![VC_TYPE_HEALTH_CARD, VC_TYPE_IMMUNIZATION]);
        assert_eq!(parsed.fhir_version, "4.0.1");
    }

    #[test]
    fn refuses_http_issuer_and_missing_members() {
        let p = build_payload("http://issuer.example.jp", 1, None, None, json!({}));
        let e = parse_payload(&serde_json::to_vec(&p).expect("json")).expect_err("http");
        assert!(matches!(e, PayloadError::IssuerNotHttps(_)));
        let mut p = build_payload("https://i.example", 1, None, None, json!({}));
        p["vc"]["type"] = json!(["https://smarthealth.cards#immunization"]);
        assert!(matches!(
            parse_payload(&serde_json::to_vec(&p).expect("json")),
            Err(PayloadError::Malformed(_))
        ));
        assert!(parse_payload(b"{\"iss\":\"https://x\"}").is_err());
        assert!(parse_payload(b"not json").is_err());
    }

    #[test]
    fn https_url_rule() {
        assert!(is_https_url("https://smarthealth.cards/examples/issuer"));
        assert!(!is_https_url("https://") && !is_https_url("http://a") && !is_https_url("https:///x"));
        assert!(!is_https_url("https://a b"));
    }
}
