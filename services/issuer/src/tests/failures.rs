//! One test per way a card can fail verification (or issuing), each with its own error.

use super::{record, ISSUER, NOW};
use crate::shc::b64url_encode;
use crate::shc::jws::deflate_raw;
use crate::shc::numeric::NumericError;
use crate::shc::payload::build_payload;
use crate::shc::qr::render_png;
use crate::{
    issue_card, Dose, HealthCard, IssueError, IssueOptions, IssuerKey, Jwks, KeyRing, RevocationList,
    VaccineCode, Verifier, VerifyError, VerifyOptions, CVX_SYSTEM,
};

fn opts() -> IssueOptions {
    IssueOptions { issuer: ISSUER.into(), nbf: NOW, exp: None, rid: None }
}

fn jwks_of(key: &IssuerKey) -> Jwks {
    KeyRing::new(vec![key.clone()]).expect("ring").jwks()
}

fn verifier_at(key: &IssuerKey, now: i64) -> Verifier {
    Verifier::new(jwks_of(key)).with_options(VerifyOptions { now: Some(now), ..Default::default() })
}

fn issue_with(key: &IssuerKey, o: &IssueOptions) -> HealthCard {
    issue_card(key, &record(), o).expect("issue")
}

/// Signs arbitrary header and payload bytes: for cards that are validly signed but wrong inside.
fn sign_raw(key: &IssuerKey, header: serde_json::Value, payload: &[u8]) -> String {
    let input = format!("{}.{}", b64url_encode(header.to_string().as_bytes()), b64url_encode(payload));
    format!("{input}.{}", b64url_encode(&key.sign(input.as_bytes())))
}

fn header(key: &IssuerKey) -> serde_json::Value {
    serde_json::json!({"alg": "ES256", "zip": "DEF", "kid": key.kid()})
}

#[test]
fn flipped_payload_byte_is_a_bad_signature() {
    let key = IssuerKey::generate();
    let card = issue_with(&key, &opts());
    let v = verifier_at(&key, NOW);
    let first_dot = card.jws.find('.').expect("dot");
    let mut bytes = card.jws.clone().into_bytes();
    // Change one payload character to another base64url character.
    let i = first_dot + 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    assert_eq!(v.verify_jws(&tampered), Err(VerifyError::BadSignature));
    // The same tampering through the shc:/ form.
    let numeric = crate::shc::numeric::encode(&tampered).expect("encode");
    assert_eq!(v.verify_numeric(&numeric), Err(VerifyError::BadSignature));
    // A flipped signature byte too.
    let (input, sig) = card.jws.rsplit_once('.').expect("sig");
    let mut sig = sig.to_string().into_bytes();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{input}.{}", String::from_utf8(sig).expect("ascii"));
    assert_eq!(v.verify_jws(&tampered), Err(VerifyError::BadSignature));
}

#[test]
fn key_not_in_the_jwks_is_unknown_kid() {
    let trusted = IssuerKey::generate();
    let other = IssuerKey::generate();
    let card = issue_with(&other, &opts());
    assert_eq!(
        verifier_at(&trusted, NOW).verify_jws(&card.jws),
        Err(VerifyError::UnknownKid(other.kid().into()))
    );
}

#[test]
fn other_key_claiming_a_trusted_kid_is_a_bad_signature() {
    let trusted = IssuerKey::generate();
    let attacker = IssuerKey::generate();
    let payload =
        serde_json::to_vec(&build_payload(ISSUER, NOW, None, None, record().to_bundle())).expect("json");
    let forged = sign_raw(&attacker, header(&trusted), &deflate_raw(&payload).expect("deflate"));
    assert_eq!(verifier_at(&trusted, NOW).verify_jws(&forged), Err(VerifyError::BadSignature));
}

#[test]
fn nbf_in_the_future_is_not_yet_valid() {
    let key = IssuerKey::generate();
    let card = issue_with(&key, &IssueOptions { nbf: NOW + 3600, ..opts() });
    assert_eq!(
        verifier_at(&key, NOW).verify_jws(&card.jws),
        Err(VerifyError::NotYetValid { nbf: NOW + 3600, now: NOW })
    );
    // Within the clock-skew allowance it passes.
    let card = issue_with(&key, &IssueOptions { nbf: NOW + 60, ..opts() });
    assert!(verifier_at(&key, NOW).verify_jws(&card.jws).is_ok());
}

#[test]
fn past_exp_is_expired() {
    let key = IssuerKey::generate();
    let card = issue_with(&key, &IssueOptions { nbf: NOW - 1000, exp: Some(NOW - 500), ..opts() });
    assert_eq!(
        verifier_at(&key, NOW).verify_jws(&card.jws),
        Err(VerifyError::Expired { exp: NOW - 500, now: NOW })
    );
    let card = issue_with(&key, &IssueOptions { nbf: NOW - 1000, exp: Some(NOW + 500), ..opts() });
    assert!(verifier_at(&key, NOW).verify_jws(&card.jws).is_ok());
}

#[test]
fn revoked_by_rid_without_and_with_timestamp() {
    let key = IssuerKey::generate();
    let rid = crate::derive_rid(b"per-issuer secret", "dept-pseudonym-42");
    let card = issue_with(&key, &IssueOptions { rid: Some(rid.clone()), ..opts() });
    let revoked = Err(VerifyError::Revoked { rid: rid.clone() });

    let mut list = RevocationList::new(key.kid());
    list.revoke(&rid, None).expect("revoke");
    assert_eq!(verifier_at(&key, NOW).with_revocation_list(list).verify_jws(&card.jws), revoked);

    // Timestamp at or after nbf: revoked.
    let mut list = RevocationList::new(key.kid());
    list.revoke(&rid, Some(NOW)).expect("revoke");
    assert_eq!(verifier_at(&key, NOW).with_revocation_list(list).verify_jws(&card.jws), revoked);

    // Timestamp before nbf: this card was reissued after the revocation and stays valid.
    let mut list = RevocationList::new(key.kid());
    list.revoke(&rid, Some(NOW - 1)).expect("revoke");
    assert!(verifier_at(&key, NOW).with_revocation_list(list.clone()).verify_jws(&card.jws).is_ok());

    // A list for another key does not apply.
    let mut other = RevocationList::new("another-kid");
    other.revoke(&rid, None).expect("revoke");
    assert!(verifier_at(&key, NOW).with_revocation_list(other).verify_jws(&card.jws).is_ok());
}

#[test]
fn revocation_list_older_than_crl_version_is_stale() {
    let key = IssuerKey::generate();
    let card = issue_with(&key, &opts());
    let mut jwks = jwks_of(&key);
    jwks.keys[0].crl_version = Some(3);
    let mut list = RevocationList::new(key.kid());
    list.revoke("AAAAAAAAAAA", None).expect("revoke");
    let v = Verifier::new(jwks)
        .with_options(VerifyOptions { now: Some(NOW), ..Default::default() })
        .with_revocation_list(list);
    assert_eq!(
        v.verify_jws(&card.jws),
        Err(VerifyError::StaleRevocationList { kid: key.kid().into(), have: 1, need: 3 })
    );
}

#[test]
fn qr_with_hello_is_not_shc() {
    let key = IssuerKey::generate();
    let png = render_png(&qrcode::QrCode::new(b"hello").expect("qr"), 4).expect("png");
    assert!(matches!(verifier_at(&key, NOW).verify_input(&png), Err(VerifyError::NotShc(_))));
}

#[test]
fn images_without_qr_and_non_images() {
    let key = IssuerKey::generate();
    let v = verifier_at(&key, NOW);
    let mut blank = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut blank, 100, 100);
        enc.set_color(png::ColorType::Rgb);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[200u8; 100 * 100 * 3]).expect("data");
        w.finish().expect("finish");
    }
    assert_eq!(v.verify_input(&blank), Err(VerifyError::NoQrInImage));
    // PNG magic followed by garbage.
    let mut broken = b"\x89PNG\r\n\x1a\n".to_vec();
    broken.extend_from_slice(&[0u8; 64]);
    assert!(matches!(v.verify_input(&broken), Err(VerifyError::BadImage(_))));
    // A JPEG header, and random binary.
    assert!(matches!(v.verify_input(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"), Err(VerifyError::BadImage(_))));
    assert!(matches!(v.verify_png(b"GIF89a"), Err(VerifyError::BadImage(_))));
    // Plain text that is nothing.
    assert!(matches!(v.verify_input(b"hello"), Err(VerifyError::NotShc(_))));
    assert!(matches!(v.verify_numeric("hello"), Err(VerifyError::NotShc(_))));
}

#[test]
fn bad_numeric_forms() {
    let key = IssuerKey::generate();
    let v = verifier_at(&key, NOW);
    assert_eq!(v.verify_input(b"shc:/56762"), Err(VerifyError::BadNumeric(NumericError::OddLength(5))));
    assert_eq!(
        v.verify_input(b"shc:/5699"),
        Err(VerifyError::BadNumeric(NumericError::BadPair { position: 2, value: 99 }))
    );
    assert_eq!(v.verify_input(b"shc:/1/2/5676"), Err(VerifyError::BadNumeric(NumericError::Chunked)));
    assert_eq!(v.verify_input(b"shc:/56x6"), Err(VerifyError::BadNumeric(NumericError::NonDigit(2))));
    // Well-formed digits that do not decode to a JWS.
    assert!(matches!(v.verify_input(b"shc:/5676"), Err(VerifyError::Malformed(_))));
}

#[test]
fn jws_over_the_single_qr_limit_is_refused_at_issue() {
    let key = IssuerKey::generate();
    let mut rec = record();
    // Many doses with long, incompressible lot numbers push the JWS past 1195 characters.
    rec.doses = (0..40)
        .map(|i| {
            Dose::new(
                VaccineCode { system: CVX_SYSTEM.into(), code: format!("{}", 200 + i) },
                time::macros::date!(2021 - 01 - 01),
                Some(format!("LOT{:08x}{:08x}", i * 7_919_u32, i * 104_729_u32)),
                Some(format!("Clinic number {i}")),
            )
        })
        .collect();
    match issue_card(&key, &rec, &opts()) {
        Err(IssueError::TooLarge(NumericError::TooLarge { len, max })) => {
            assert!(len > max);
            assert_eq!(max, 1195);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn header_and_payload_defects_are_typed() {
    let key = IssuerKey::generate();
    let v = verifier_at(&key, NOW);
    let good_payload =
        serde_json::to_vec(&build_payload(ISSUER, NOW, None, None, record().to_bundle())).expect("json");
    let z = deflate_raw(&good_payload).expect("deflate");

    let hs256 = sign_raw(&key, serde_json::json!({"alg": "HS256", "zip": "DEF", "kid": key.kid()}), &z);
    assert_eq!(v.verify_jws(&hs256), Err(VerifyError::UnsupportedAlgorithm("HS256".into())));
    let none = sign_raw(&key, serde_json::json!({"alg": "none", "zip": "DEF", "kid": key.kid()}), &z);
    assert_eq!(v.verify_jws(&none), Err(VerifyError::UnsupportedAlgorithm("none".into())));

    let unzipped = sign_raw(&key, serde_json::json!({"alg": "ES256", "kid": key.kid()}), &good_payload);
    assert_eq!(v.verify_jws(&unzipped), Err(VerifyError::NotCompressed(None)));

    let no_kid = sign_raw(&key, serde_json::json!({"alg": "ES256", "zip": "DEF"}), &z);
    assert!(matches!(v.verify_jws(&no_kid), Err(VerifyError::Malformed(_))));

    let crit = sign_raw(
        &key,
        serde_json::json!({"alg": "ES256", "zip": "DEF", "kid": key.kid(), "crit": ["x"]}),
        &z,
    );
    assert!(matches!(v.verify_jws(&crit), Err(VerifyError::Malformed(_))));

    // Signed, but the payload is not DEFLATE data.
    let not_deflated = sign_raw(&key, header(&key), b"\xff\xfe\xfd not deflate");
    assert!(matches!(v.verify_jws(&not_deflated), Err(VerifyError::Malformed(_))));

    // Signed, DEFLATE, but an http issuer.
    let http =
        serde_json::to_vec(&build_payload("http://issuer.example.jp", NOW, None, None, record().to_bundle()))
            .expect("json");
    let http = sign_raw(&key, header(&key), &deflate_raw(&http).expect("deflate"));
    assert_eq!(v.verify_jws(&http), Err(VerifyError::IssuerNotHttps("http://issuer.example.jp".into())));

    // Signed, but no Patient in the Bundle.
    let mut bundle = record().to_bundle();
    bundle["entry"].as_array_mut().expect("entries").remove(0);
    let no_patient = serde_json::to_vec(&build_payload(ISSUER, NOW, None, None, bundle)).expect("json");
    let no_patient = sign_raw(&key, header(&key), &deflate_raw(&no_patient).expect("deflate"));
    assert!(matches!(v.verify_jws(&no_patient), Err(VerifyError::Malformed(m)) if m.contains("Patient")));

    // Not even a JWS.
    assert!(matches!(v.verify_jws("a.b"), Err(VerifyError::Malformed(_))));
    assert!(matches!(v.verify_jws("!!.??.**"), Err(VerifyError::Malformed(_))));
}

#[test]
fn issuing_refuses_bad_parameters() {
    let key = IssuerKey::generate();
    let http = IssueOptions { issuer: "http://x.example".into(), ..opts() };
    assert!(matches!(issue_card(&key, &record(), &http), Err(IssueError::Issuer(_))));
    let slash = IssueOptions { issuer: format!("{ISSUER}/"), ..opts() };
    assert!(matches!(issue_card(&key, &record(), &slash), Err(IssueError::Issuer(_))));
    let rid = IssueOptions { rid: Some("not base64url!".into()), ..opts() };
    assert!(matches!(issue_card(&key, &record(), &rid), Err(IssueError::Rid(_))));
    let exp = IssueOptions { exp: Some(NOW - 1), ..opts() };
    assert!(matches!(issue_card(&key, &record(), &exp), Err(IssueError::ExpBeforeNbf { .. })));
    let mut kanji = record();
    kanji.holder.family = "山田".into();
    assert!(matches!(issue_card(&key, &kanji, &opts()), Err(IssueError::Record(_))));
}
