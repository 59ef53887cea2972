//! The decision on one request: a card from the person's records and the passport details, or
//! a refusal with its reason. Pure apart from the clock and the key, so it is tested directly.

use super::events::{CardRef, Holder, Issued, RefusalReason, Refused, Requested, Vaccination};
use super::keys::KeyStore;
use super::state::StoredRecord;
use crate::{
    issue_card, Dose, HealthCard, IssueError, IssueOptions, VaccinationRecord, VaccineCode, CVX_SYSTEM,
};

/// The code system of vaccines the issuer has no CVX code for: the municipality's own name.
pub const LOCAL_VACCINE_SYSTEM: &str = "urn:kakehashi:vaccine-name";

/// The CVX code of a vaccine as Japanese municipalities name it, where one is known.
pub fn vaccine_code(name: &str) -> VaccineCode {
    let n = name.to_lowercase();
    let cvx = if n.contains("新型コロナ") || n.contains("covid") || n.contains("sars-cov-2") {
        Some("213") // SARS-COV-2 (COVID-19) vaccine, unspecified formulation
    } else if n.contains("麻しん風しん") || is_mr(&n) {
        Some("04") // M/R: measles and rubella virus vaccine
    } else if n.contains("インフルエンザ") || n.contains("influenza") {
        Some("88") // influenza virus vaccine, unspecified formulation
    } else if n.contains("日本脳炎") {
        Some("129") // Japanese encephalitis vaccine, unspecified formulation
    } else {
        None
    };
    match cvx {
        Some(code) => VaccineCode { system: CVX_SYSTEM.into(), code: code.into() },
        None => VaccineCode { system: LOCAL_VACCINE_SYSTEM.into(), code: name.into() },
    }
}

/// Whether a lower-cased vaccine name is the MR vaccine by its abbreviation: "mr" as a word of
/// its own ("MR", "MR (麻しん風しん混合)", "MRワクチン"), never the start of a longer word such as
/// "mRNA", which names no disease and must not be signed as measles–rubella.
fn is_mr(lower: &str) -> bool {
    lower.strip_prefix("mr").is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
}

/// What the issuer answers.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A card.
    Issue {
        /// The event payload.
        payload: Box<Issued>,
        /// The card.
        card: HealthCard,
    },
    /// No card.
    Refuse(Refused),
}

/// Signing failed for a reason that is not the request's (a broken key): not answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the card: {0}")]
pub struct SigningError(pub String);

fn date(now: time::OffsetDateTime) -> String {
    crate::shc::fhir::fhir_date(now.date())
}

/// Decides on request `request_id` for the holder `pseudonym` with the person's `records`.
pub fn decide(
    request_id: &str,
    request: &Requested,
    pseudonym: &str,
    records: &[&StoredRecord],
    keys: &KeyStore,
    issuer_url: &str,
    now: time::OffsetDateTime,
) -> Result<Decision, SigningError> {
    let refuse = |reason, message: &str| {
        Ok(Decision::Refuse(Refused {
            request_id: request_id.to_string(),
            reason,
            message: message.to_string(),
            refused_on: date(now),
        }))
    };
    let Some(latest) = records.last() else {
        return refuse(
            RefusalReason::NoVaccinationRecords,
            "no vaccination record is held for the applicant",
        );
    };
    let birth_date = request.person.birth_date.clone().unwrap_or_default();
    if records.iter().any(|r| r.birth_date.as_ref().is_some_and(|b| *b != birth_date)) {
        return refuse(
            RefusalReason::BirthDateMismatch,
            "the birth date applied with differs from the vaccination records",
        );
    }
    let record = VaccinationRecord {
        holder: crate::Holder {
            family: request.passport.family_name.clone(),
            given: request.passport.given_names.clone(),
            birth_date: birth_date.clone(),
        },
        doses: records
            .iter()
            .map(|r| Dose {
                vaccine: vaccine_code(&r.vaccination.vaccine),
                occurrence: r.vaccination.date.clone(),
                lot_number: Some(r.vaccination.lot_number.clone()),
                performer: Some(format!("Municipality {} (Japan)", r.municipality_code)),
            })
            .collect(),
    };
    let key = keys.current();
    let rid = keys.rid(pseudonym);
    let options = IssueOptions {
        issuer: issuer_url.to_string(),
        nbf: now.unix_timestamp(),
        exp: None,
        rid: Some(rid.clone()),
    };
    let card = match issue_card(key, &record, &options) {
        Ok(card) => card,
        // The library's messages may quote a name: the refusal says only what kind of problem.
        Err(IssueError::Record(_)) => {
            return refuse(
                RefusalReason::NotPrintable,
                "the passport name or a vaccination record cannot be printed on a certificate",
            )
        }
        Err(IssueError::TooLarge(_)) => {
            return refuse(RefusalReason::CardTooLarge, "too many doses for a single QR code")
        }
        Err(e) => return Err(SigningError(e.to_string())),
    };
    let payload = Issued {
        certificate_id: super::ids::certificate_id(request_id),
        request_id: request_id.to_string(),
        holder: Holder {
            family_name: request.passport.family_name.clone(),
            given_names: request.passport.given_names.clone(),
            birth_date,
        },
        use_: request.use_.clone(),
        medium: "digital".into(),
        passport_number: Some(request.passport.number.clone()),
        issued_on: date(now),
        issuer_municipality_code: latest.municipality_code.clone(),
        vaccinations: records.iter().map(|r| r.vaccination.clone()).collect::<Vec<Vaccination>>(),
        smart_health_card: CardRef {
            issuer: issuer_url.to_string(),
            kid: key.kid().to_string(),
            rid: Some(rid),
            jws: card.jws.clone(),
        },
    };
    Ok(Decision::Issue { payload: Box::new(payload), card })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::events::{DeliveredPerson, Passport};
    use crate::{Jwks, Verifier};

    const PSEUDONYM: &str = "kh1:0123456789abcdef0123456789abcdef";

    fn request(family: &str, birth: &str) -> Requested {
        Requested {
            person: DeliveredPerson { my_number: PSEUDONYM.into(), birth_date: Some(birth.into()) },
            passport: Passport {
                family_name: family.into(),
                given_names: vec!["MISAKI".into()],
                number: "TR1234567".into(),
            },
            use_: "overseas".into(),
        }
    }

    fn record(dose: u64, vaccine: &str) -> StoredRecord {
        StoredRecord {
            event_id: format!("e{dose}"),
            pseudonym: PSEUDONYM.into(),
            birth_date: Some("2019-05-01".into()),
            municipality_code: "131130".into(),
            vaccination: Vaccination {
                date: format!("2024-0{dose}-15"),
                vaccine: vaccine.into(),
                dose_number: dose,
                lot_number: format!("Y{dose}"),
            },
        }
    }

    fn keys() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = KeyStore::open(&dir.path().join("keys"), dir.path()).expect("keys");
        (dir, keys)
    }

    #[test]
    fn mr_is_recognised_only_as_a_word_and_mrna_is_not_measles_rubella() {
        for name in ["MR", "mr", "MR (麻しん風しん混合)", "MRワクチン", "MR-II", "麻しん風しん混合ワクチン"]
        {
            assert_eq!(vaccine_code(name).code, "04", "{name}");
        }
        for name in ["mRNA", "mRNA-1273", "MRNA ワクチン", "mr1"] {
            let code = vaccine_code(name);
            assert_eq!((code.system.as_str(), code.code.as_str()), (LOCAL_VACCINE_SYSTEM, name), "{name}");
        }
        assert_eq!(vaccine_code("mRNA 新型コロナウイルスワクチン").code, "213");
    }

    #[test]
    fn records_and_passport_make_a_card_that_verifies() {
        let (_dir, keys) = keys();
        let (r1, r2) = (record(1, "MR (麻しん風しん混合)"), record(2, "新型コロナウイルスワクチン"));
        let now = time::OffsetDateTime::now_utc();
        let d = decide(
            "req-1",
            &request("TAKAHASHI", "2019-05-01"),
            PSEUDONYM,
            &[&r1, &r2],
            &keys,
            "https://issuer.test",
            now,
        )
        .expect("decide");
        let Decision::Issue { payload, card } = d else { panic!("expected a card, got {d:?}") };
        assert_eq!(payload.issuer_municipality_code, "131130");
        assert_eq!(payload.vaccinations.len(), 2);
        assert_eq!(payload.smart_health_card.jws, card.jws);
        let jwks = Jwks::from_json(&keys.jwks_json().expect("jwks")).expect("parse");
        let verified = Verifier::new(jwks).verify_numeric(&card.numeric).expect("verifies");
        assert_eq!(verified.record.holder.family, "TAKAHASHI");
        assert_eq!(verified.record.doses[0].vaccine.code, "04");
        assert_eq!(verified.record.doses[1].vaccine.code, "213");
        assert_eq!(verified.rid.as_deref(), Some(keys.rid(PSEUDONYM).as_str()));
    }

    #[test]
    fn refusals_have_reasons_without_personal_data() {
        let (_dir, keys) = keys();
        let now = time::OffsetDateTime::now_utc();
        let r1 = record(1, "MR");
        let cases: [(Requested, Vec<&StoredRecord>, RefusalReason); 3] = [
            (request("TAKAHASHI", "2019-05-01"), vec![], RefusalReason::NoVaccinationRecords),
            (request("TAKAHASHI", "2001-01-01"), vec![&r1], RefusalReason::BirthDateMismatch),
            (request("髙橋", "2019-05-01"), vec![&r1], RefusalReason::NotPrintable),
        ];
        for (req, records, want) in cases {
            let d = decide("req-2", &req, PSEUDONYM, &records, &keys, "https://issuer.test", now)
                .expect("decide");
            let Decision::Refuse(r) = d else { panic!("expected a refusal for {want:?}") };
            assert_eq!(r.reason, want);
            assert!(!r.message.contains("髙橋") && !r.message.contains("2001"), "{}", r.message);
        }
    }
}
