//! Cards issued by our library, checked by a second implementation: `tests/interop/shc_check.py`
//! verifies the JWS with jwcrypto and the JWK Set only, inflates the payload with zlib and
//! checks the SMART Health Cards structure (required fields, `vc.type`, FHIR resource types,
//! minified resources). The spec's own example passes it too, and a tampered card or another
//! issuer's key set fails it, so the check itself can fail.

use kakehashi_issuer::{
    issue_card, Dose, Holder, IssueOptions, IssuerKey, KeyRing, VaccinationRecord, VaccineCode,
};
use kakehashi_tests::interop;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn record() -> VaccinationRecord {
    let date = |y, m, d| time::Date::from_calendar_date(y, m, d).expect("date");
    let dose = |day, lot: &str| {
        Dose::new(
            VaccineCode { system: kakehashi_issuer::CVX_SYSTEM.into(), code: "208".into() },
            date(2021, time::Month::June, day),
            Some(lot.into()),
            Some("Shibuya City Health Center".into()),
        )
    };
    VaccinationRecord {
        holder: Holder::new("TAKAHASHI", vec!["MISAKI".into()], date(1985, time::Month::May, 1)),
        doses: vec![dose(1, "FA7484"), dose(22, "FC3183")],
    }
}

async fn check(dir: &Path, jws: &str, jwks: &str, numeric: Option<&str>) -> (bool, serde_json::Value) {
    std::fs::write(dir.join("card.jws"), jws).expect("write jws");
    std::fs::write(dir.join("jwks.json"), jwks).expect("write jwks");
    let mut args = vec![
        "--jws".to_string(),
        dir.join("card.jws").display().to_string(),
        "--jwks".into(),
        dir.join("jwks.json").display().to_string(),
    ];
    if let Some(n) = numeric {
        std::fs::write(dir.join("card.txt"), n).expect("write numeric");
        args.extend(["--numeric".to_string(), dir.join("card.txt").display().to_string()]);
    }
    let out = interop::run("shc_check.py", args, LIMIT).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

#[tokio::test]
async fn our_cards_pass_an_independent_jws_and_structure_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old = IssuerKey::generate();
    let mut ring = KeyRing::new(vec![old]).expect("key ring");
    let opts = IssueOptions {
        issuer: "https://issuer.kakehashi.invalid".into(),
        nbf: 1_700_000_000,
        exp: None,
        rid: None,
    };
    let first = issue_card(ring.current(), &record(), &opts).expect("issue");
    let jwks = ring.jwks().to_json();
    let (ok, report) = check(dir.path(), &first.jws, &jwks, Some(&first.numeric)).await;
    assert!(ok, "{report}");
    assert_eq!(report["holder"], "MISAKI TAKAHASHI");
    assert_eq!(report["doses"], 2);

    // After a rotation the new key signs, and both cards pass against the published set.
    ring.rotate(IssuerKey::generate());
    let second = issue_card(ring.current(), &record(), &opts).expect("issue after rotation");
    let jwks = ring.jwks().to_json();
    for card in [&first, &second] {
        let (ok, report) = check(dir.path(), &card.jws, &jwks, None).await;
        assert!(ok, "{report}");
    }

    // The check fails a tampered card and a key set without the signer.
    let mut parts: Vec<String> = second.jws.split('.').map(str::to_string).collect();
    parts[1] = format!("{}A", &parts[1][..parts[1].len() - 1]);
    let (ok, report) = check(dir.path(), &parts.join("."), &jwks, None).await;
    assert!(!ok && report["error"].as_str().is_some_and(|e| e.contains("signature")), "{report}");
    let stranger = KeyRing::new(vec![IssuerKey::generate()]).expect("ring").jwks().to_json();
    let (ok, report) = check(dir.path(), &second.jws, &stranger, None).await;
    assert!(!ok && report["error"].as_str().is_some_and(|e| e.contains("not in the JWK Set")), "{report}");
}

#[tokio::test]
async fn the_independent_check_accepts_the_specifications_own_example() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/issuer/tests/fixtures");
    let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).expect(name);
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, report) = check(
        dir.path(),
        &read("example-00-d-jws.txt"),
        &read("issuer.jwks.public.json"),
        Some(&read("example-00-f-qr-code-numeric-value-0.txt")),
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["holder"], "John B. Anyperson");
}
