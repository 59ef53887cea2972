//! Our own cards: issue → every encoding → verify gives back exactly what went in.

use super::{record, ISSUER, NOW};
use crate::shc::jws::{inflate_raw, CompactJws};
use crate::shc::qr::decode_png;
use crate::{
    derive_rid, issue_card, HealthCard, IssueOptions, IssuerKey, Jwks, KeyRing, Verifier, VerifyError,
    VerifyOptions,
};

fn opts() -> IssueOptions {
    IssueOptions { issuer: ISSUER.into(), nbf: NOW, exp: None, rid: None }
}

fn verifier(jwks: Jwks) -> Verifier {
    Verifier::new(jwks).with_options(VerifyOptions { now: Some(NOW + 60), ..Default::default() })
}

fn issue(key: &IssuerKey) -> HealthCard {
    issue_card(key, &record(), &opts()).expect("issue")
}

#[test]
fn build_sign_numeric_png_decode_verify() {
    let key = IssuerKey::generate();
    let card = issue(&key);
    let jwks = KeyRing::new(vec![key.clone()]).expect("ring").jwks();
    let qr = card.qr().expect("qr");
    assert!(qr.version() <= 22);
    let png = qr.to_png(5).expect("png");
    assert!(png.starts_with(b"\x89PNG"));
    // The image decodes back to exactly the numeric string, and verifies to the same record.
    assert_eq!(decode_png(&png).expect("decode"), vec![card.numeric.clone()]);
    let verified = verifier(jwks).verify_input(&png).expect("verify PNG");
    assert_eq!(verified.record, record());
    assert_eq!(verified.issuer, ISSUER);
    assert_eq!(verified.kid, key.kid());
    assert_eq!(verified.nbf, NOW as f64);
    assert_eq!(verified.rid, None);
}

#[test]
fn every_text_form_verifies() {
    let key = IssuerKey::generate();
    let card = issue(&key);
    let v = verifier(KeyRing::new(vec![key]).expect("ring").jwks());
    for input in
        [card.jws.clone(), card.numeric.clone(), card.to_file_json(), format!("  {}\n", card.numeric)]
    {
        assert_eq!(v.verify_input(input.as_bytes()).expect("verify").record, record(), "{input:.40}");
    }
}

#[test]
fn svg_has_a_path_and_the_expected_dimensions() {
    let card = issue(&IssuerKey::generate());
    let qr = card.qr().expect("qr");
    let svg = qr.to_svg(6);
    let side = qr.image_side(6);
    assert_eq!(side as usize, (qr.modules() + 8) * 6);
    assert!(svg.contains("<svg") && svg.contains("<path"), "{svg:.200}");
    assert!(svg.contains(&format!("width=\"{side}\" height=\"{side}\"")), "{svg:.300}");
    assert!(svg.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
    assert!(svg.trim_end().ends_with("</svg>"));
}

#[test]
fn jws_is_spec_shaped() {
    let key = IssuerKey::generate();
    let rid = derive_rid(b"issuer-secret", "pseudonym-123");
    let card = issue_card(
        &key,
        &record(),
        &IssueOptions { rid: Some(rid.clone()), exp: Some(NOW + 86_400), ..opts() },
    )
    .expect("issue");
    let parsed = CompactJws::parse(&card.jws).expect("parse");
    // Header exactly alg/zip/kid.
    assert_eq!(parsed.header, serde_json::json!({"alg": "ES256", "zip": "DEF", "kid": key.kid()}));
    assert_eq!(parsed.signature.len(), 64, "JOSE r||s, not DER");
    let payload_bytes = inflate_raw(&parsed.payload).expect("raw DEFLATE");
    let payload: serde_json::Value = serde_json::from_slice(&payload_bytes).expect("json");
    // Minified: re-serialising compactly gives the same bytes.
    assert_eq!(serde_json::to_vec(&payload).expect("json"), payload_bytes);
    assert_eq!(payload["iss"], ISSUER);
    assert_eq!(payload["nbf"], NOW);
    assert_eq!(payload["exp"], NOW + 86_400);
    assert_eq!(payload["vc"]["rid"], rid.as_str());
    assert_eq!(
        payload["vc"]["type"],
        serde_json::json!([
            "https://smarthealth.cards#health-card",
            "https://smarthealth.cards#immunization"
        ])
    );
    let subject = &payload["vc"]["credentialSubject"];
    assert_eq!(subject["fhirVersion"], "4.0.1");
    let bundle = &subject["fhirBundle"];
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["fullUrl"], format!("resource:{i}"));
        assert!(e["resource"].get("id").is_none() && e["resource"].get("meta").is_none());
    }
    assert_eq!(entries[0]["resource"]["resourceType"], "Patient");
    assert_eq!(entries[0]["resource"]["name"][0]["family"], "Yamada");
    let imm = &entries[2]["resource"];
    assert_eq!(imm["resourceType"], "Immunization");
    assert_eq!(imm["status"], "completed");
    assert_eq!(imm["patient"]["reference"], "resource:0");
    assert_eq!(imm["occurrenceDateTime"], "2021-06-22");
    assert_eq!(imm["lotNumber"], "FC3661");
    assert_eq!(imm["vaccineCode"]["coding"][0]["system"], "urn:oid:1.2.392.200119.4.403.1");
    assert!(imm["vaccineCode"]["coding"][0].get("display").is_none());
    assert_eq!(imm["performer"][0]["actor"]["display"], "Shibuya City Vaccination Center");
    // And it verifies, carrying the rid and exp.
    let verified =
        verifier(KeyRing::new(vec![key]).expect("ring").jwks()).verify_jws(&card.jws).expect("verify");
    assert_eq!(verified.rid, Some(rid));
    assert_eq!(verified.exp, Some((NOW + 86_400) as f64));
}

#[test]
fn rotation_new_cards_use_the_newest_key_and_old_cards_still_verify() {
    let old_key = IssuerKey::generate();
    let mut ring = KeyRing::new(vec![old_key.clone()]).expect("ring");
    let old_card = issue(ring.current());
    let new_key = IssuerKey::generate();
    ring.rotate(new_key.clone());
    let new_card = issue(ring.current());

    let published = ring.jwks();
    let v = verifier(Jwks::from_json(&published.to_json()).expect("served JWKS parses"));
    assert_eq!(v.verify_jws(&old_card.jws).expect("old card").kid, old_key.kid());
    assert_eq!(v.verify_jws(&new_card.jws).expect("new card").kid, new_key.kid());

    // A key set that dropped the old key no longer accepts its cards.
    let only_new = verifier(KeyRing::new(vec![new_key]).expect("ring").jwks());
    assert_eq!(only_new.verify_jws(&old_card.jws), Err(VerifyError::UnknownKid(old_key.kid().to_string())));
}

#[test]
fn issued_kid_is_the_thumbprint_of_the_published_key() {
    let key = IssuerKey::generate();
    let jwk = key.public_jwk();
    assert_eq!(jwk.thumbprint(), key.kid());
    assert_eq!(jwk.kid, key.kid());
    assert_eq!(key.kid().len(), 43, "base64url of 32 bytes");
}
