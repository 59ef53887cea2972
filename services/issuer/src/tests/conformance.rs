//! The specification's own published examples, verified by our code with the official key set.

use super::fixture;
use crate::shc::numeric;
use crate::shc::qr::{decode_png, ShcQr};
use crate::{Jwks, RevocationList, Verifier, VerifyError, VerifyOptions, CVX_SYSTEM};

const EXAMPLE_KID: &str = "3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s";
const EXAMPLE_X5C_KID: &str = "bVKTnRwVq4YU9oLwwShYELnRtKop_MsCAjNklowYemg";

fn official_jwks() -> Jwks {
    Jwks::from_json(&fixture("issuer.jwks.public.json")).expect("official JWKS parses")
}

fn official_verifier() -> Verifier {
    Verifier::new(official_jwks())
}

#[test]
fn kid_computation_reproduces_the_example_keys() {
    let jwks = official_jwks();
    assert_eq!(jwks.keys.len(), 2);
    for (key, expected) in jwks.keys.iter().zip([EXAMPLE_KID, EXAMPLE_X5C_KID]) {
        assert_eq!(key.kid, expected);
        assert_eq!(key.thumbprint(), expected, "RFC 7638 thumbprint of the official key");
    }
}

fn assert_example_00(card: &crate::VerifiedCard) {
    assert_eq!(card.issuer, "https://smarthealth.cards/examples/issuer");
    assert_eq!(card.kid, EXAMPLE_KID);
    assert_eq!(card.exp, None, "example 00 has no exp, so it stays valid");
    assert!(card.types.iter().any(|t| t == "https://smarthealth.cards#immunization"));
    assert_eq!(card.fhir_version, "4.0.1");
    let h = &card.record.holder;
    assert_eq!(
        (h.family.as_str(), h.given.clone(), h.birth_date.as_str()),
        ("Anyperson", vec!["John".to_string(), "B.".to_string()], "1951-01-20")
    );
    let doses = &card.record.doses;
    assert_eq!(doses.len(), 2);
    assert_eq!(doses[0].vaccine.system, CVX_SYSTEM);
    assert_eq!(doses[0].vaccine.code, "207");
    assert_eq!(doses[0].occurrence, "2021-01-01");
    assert_eq!(doses[0].lot_number.as_deref(), Some("0000001"));
    assert_eq!(doses[0].performer.as_deref(), Some("ABC General Hospital"));
    assert_eq!(doses[1].occurrence, "2021-01-29");
    assert_eq!(doses[1].lot_number.as_deref(), Some("0000007"));
}

#[test]
fn official_example_jws_verifies_with_the_real_clock() {
    // Signed in 2021 with no exp: must pass today with the system clock.
    let card =
        official_verifier().verify_jws(&fixture("example-00-d-jws.txt")).expect("official JWS verifies");
    assert_example_00(&card);
    assert!((card.nbf - 1_617_976_270.189).abs() < 1e-6, "fractional nbf read as published");
}

#[test]
fn official_example_numeric_and_file_forms_verify() {
    let v = official_verifier();
    let numeric_form = fixture("example-00-f-qr-code-numeric-value-0.txt");
    assert_example_00(&v.verify_numeric(&numeric_form).expect("numeric verifies"));
    assert_example_00(&v.verify_input(numeric_form.as_bytes()).expect("sniffed numeric verifies"));
    assert_example_00(
        &v.verify_input(fixture("example-00-e-file.smart-health-card").as_bytes()).expect("file verifies"),
    );
    // Our encoder produces exactly the spec's numeric string from the spec's JWS.
    let jws = fixture("example-00-d-jws.txt");
    assert_eq!(numeric::encode(jws.trim()).expect("encode"), numeric_form.trim());
    assert_eq!(numeric::decode(&numeric_form).expect("decode"), jws.trim());
}

#[test]
fn official_example_through_our_qr_png() {
    let numeric_form = fixture("example-00-f-qr-code-numeric-value-0.txt");
    let qr = ShcQr::new(&numeric_form).expect("fits one QR");
    assert!(qr.version() <= 22);
    let png = qr.to_png(4).expect("png");
    assert_eq!(decode_png(&png).expect("decode"), vec![numeric_form.trim().to_string()]);
    assert_example_00(&official_verifier().verify_input(&png).expect("PNG verifies"));
}

#[test]
fn official_revoked_example_is_revoked_by_the_official_list() {
    let jws = fixture("example-03-d-jws.txt");
    // nbf 1668545475.4, exp 1700081475.4: verify at a time inside that window.
    let during = VerifyOptions { now: Some(1_680_000_000), ..VerifyOptions::default() };
    let card =
        official_verifier().with_options(during.clone()).verify_jws(&jws).expect("valid without the list");
    assert_eq!(card.rid.as_deref(), Some("vwAjHdarZuc"));
    assert_eq!(card.record.holder.family, "Revoked");

    let crl = RevocationList::from_json(&fixture("crl-3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s.json"))
        .expect("official list parses");
    let v = official_verifier().with_options(during).with_revocation_list(crl.clone());
    assert_eq!(v.verify_jws(&jws), Err(VerifyError::Revoked { rid: "vwAjHdarZuc".into() }));
    assert_eq!(
        v.verify_numeric(&fixture("example-03-f-qr-code-numeric-value-0.txt")),
        Err(VerifyError::Revoked { rid: "vwAjHdarZuc".into() })
    );
    // The list does not touch example 00 (no rid).
    assert!(v.verify_jws(&fixture("example-00-d-jws.txt")).is_ok());

    // With today's clock the card's exp (2023) has passed.
    let today = official_verifier().with_revocation_list(crl);
    assert!(matches!(today.verify_jws(&jws), Err(VerifyError::Expired { exp: 1_700_081_475, .. })));
}

#[test]
fn official_example_with_a_different_expected_issuer_is_refused() {
    let v = official_verifier().with_options(VerifyOptions {
        expected_issuer: Some("https://issuer.example.jp".into()),
        ..Default::default()
    });
    assert!(matches!(v.verify_jws(&fixture("example-00-d-jws.txt")), Err(VerifyError::WrongIssuer { .. })));
}
