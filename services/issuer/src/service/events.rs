//! The payloads the issuer reads and writes (schemas in `schemas/health.vaccination.*`), typed.
//! Inputs are read leniently (members the issuer does not need are ignored, the registry has
//! validated them already); outputs are written exactly as the schemas describe. A record of the
//! protobuf subject `health.vaccination.recorded.pb` published as proto3 JSON is read here too
//! (its lowerCamelCase names are aliases); as protobuf bytes, by [`super::recorded_pb`].

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};

/// `health.vaccination.recorded`.
pub const RECORDED: &str = "health.vaccination.recorded";
/// `health.vaccination.certificate.requested`.
pub const REQUESTED: &str = "health.vaccination.certificate.requested";
/// `health.vaccination.certificate.issued` (published with schema version [`ISSUED_VERSION`]).
pub const ISSUED: &str = "health.vaccination.certificate.issued";
/// The version of the issued schema the issuer writes (2: holder, request id, SMART Health Card).
pub const ISSUED_VERSION: u32 = 2;
/// `health.vaccination.certificate.refused`.
pub const REFUSED: &str = "health.vaccination.certificate.refused";

/// The person as delivered to the issuer: `my_number` is its pseudonym.
#[derive(Debug, Clone, Deserialize)]
pub struct DeliveredPerson {
    /// The per-department pseudonym of the My Number.
    #[serde(alias = "myNumber")]
    pub my_number: String,
    /// Birth date, YYYY-MM-DD.
    #[serde(default, alias = "birthDate")]
    pub birth_date: Option<String>,
}

/// A delivered `health.vaccination.recorded` payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Recorded {
    /// The vaccinated person.
    pub person: DeliveredPerson,
    /// The vaccination.
    pub vaccination: Vaccination,
    /// The municipality keeping the record.
    #[serde(alias = "municipalityCode")]
    pub municipality_code: String,
}

/// One vaccination, as recorded and as listed on a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vaccination {
    /// YYYY-MM-DD.
    pub date: String,
    /// Vaccine name as the municipality records it.
    pub vaccine: String,
    /// Dose number in the series. The schemas bound it only from below (`minimum: 1`), so it is
    /// read as wide as a JSON integer goes here (see [`json_integer`]): a valid record is never
    /// refused for its dose number.
    #[serde(deserialize_with = "json_integer", alias = "doseNumber")]
    pub dose_number: u64,
    /// Lot number (proto3 JSON leaves an empty one out).
    #[serde(default, alias = "lotNumber")]
    pub lot_number: String,
}

/// Reads a JSON Schema `integer` that is bounded only from below: any non-negative integer below
/// 2^64, including one written with a zero fraction (`2.0`, `1e3`), which JSON Schema counts as
/// an integer and the registry therefore accepts, and one in quotes (`"2"`), as proto3 JSON
/// allows for every integer field (the protobuf subject's record; a JSON Schema `integer` is
/// never a string, so the registry refuses that form there). Only what no `u64` can hold is an
/// error.
fn json_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Integer;
    impl Visitor<'_> for Integer {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative integer below 2^64")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exact as an f64, and every integral f64 below it fits a u64 exactly.
            const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
            if v.fract() == 0.0 && (0.0..TWO_POW_64).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            // The quoted text is read as the number it spells, by the same rules.
            let n: serde_json::Number = v
                .parse()
                .ok()
                .filter(|_| v.trim() == v)
                .ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))?;
            match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Ok(u),
                (None, Some(i), _) => self.visit_i64(i),
                (None, None, Some(f)) => self.visit_f64(f),
                (None, None, None) => Err(E::invalid_value(Unexpected::Str(v), &self)),
            }
        }
    }
    // `any`: serde_json hands a string to `visit_str` only then (`deserialize_u64` refuses it).
    deserializer.deserialize_any(Integer)
}

/// A delivered `health.vaccination.certificate.requested` payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Requested {
    /// The applicant.
    pub person: DeliveredPerson,
    /// Passport details.
    pub passport: Passport,
    /// `overseas` or `domestic`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// Passport details of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passport {
    /// Family name, Latin letters.
    pub family_name: String,
    /// Given names, Latin letters.
    pub given_names: Vec<String>,
    /// Passport number.
    pub number: String,
}

/// The holder on an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Family name, Latin letters.
    pub family_name: String,
    /// Given names, Latin letters.
    pub given_names: Vec<String>,
    /// YYYY-MM-DD.
    pub birth_date: String,
}

/// Where the card is and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRef {
    /// `iss`.
    pub issuer: String,
    /// Signing key id.
    pub kid: String,
    /// Revocation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// The compact JWS.
    pub jws: String,
}

/// A `health.vaccination.certificate.issued` (version 2) payload as the issuer writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Derived from the request id.
    pub certificate_id: String,
    /// The request's event id.
    pub request_id: String,
    /// Passport name and birth date.
    pub holder: Holder,
    /// `overseas` or `domestic`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Always `digital`.
    pub medium: String,
    /// Passport number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passport_number: Option<String>,
    /// YYYY-MM-DD.
    pub issued_on: String,
    /// The municipality of the most recent record (the certificate is issued in its name).
    pub issuer_municipality_code: String,
    /// The doses, oldest first.
    pub vaccinations: Vec<Vaccination>,
    /// The SMART Health Card.
    pub smart_health_card: CardRef,
}

/// Why a request was refused (the schema's `reason` enumeration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// No vaccination record for the person.
    NoVaccinationRecords,
    /// The birth date applied with is not the one in the records.
    BirthDateMismatch,
    /// A name or record that cannot go on a card.
    NotPrintable,
    /// Too many doses for one QR code.
    CardTooLarge,
}

/// A `health.vaccination.certificate.refused` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The request's event id.
    pub request_id: String,
    /// Why.
    pub reason: RefusalReason,
    /// Explanation without personal data.
    pub message: String,
    /// YYYY-MM-DD.
    pub refused_on: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(dose_number: &str) -> serde_json::Result<Recorded> {
        serde_json::from_str(&format!(
            r#"{{"person": {{"my_number": "kh1:0123456789abcdef0123456789abcdef", "name": "x",
                "birth_date": "2019-05-01"}},
              "vaccination": {{"date": "2024-10-15", "vaccine": "MR", "dose_number": {dose_number},
                "lot_number": "Y1"}},
              "municipality_code": "131130"}}"#
        ))
    }

    #[test]
    fn every_dose_number_the_schema_accepts_decodes() {
        // The schema says only `minimum: 1`: 2^32 passed the registry and was lost as a u32.
        for (written, want) in [
            ("1", 1),
            ("4294967296", 4_294_967_296),
            ("18446744073709551615", u64::MAX),
            ("2.0", 2),
            ("1e3", 1000),
            // proto3 JSON's quoted form.
            ("\"2\"", 2),
            ("\"18446744073709551615\"", u64::MAX),
            ("\"1e3\"", 1000),
        ] {
            let r = recorded(written).unwrap_or_else(|e| panic!("dose_number {written}: {e}"));
            assert_eq!(r.vaccination.dose_number, want, "{written}");
        }
        // What no u64 holds is still an error (the worker nacks it into the dead-letter stream).
        for written in ["1.5", "-1", "18446744073709551616", "\"1.5\"", "\"-1\"", "\" 2\"", "\"two\"", "\"\""]
        {
            assert!(recorded(written).is_err(), "dose_number {written} decoded");
        }
    }

    #[test]
    fn a_large_dose_number_is_written_back_as_an_integer() {
        let v = recorded("4294967296").expect("decodes").vaccination;
        let json = serde_json::to_value(&v).expect("serialise");
        assert_eq!(json["dose_number"], serde_json::json!(4_294_967_296_u64));
        let back: Vaccination = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, v);
    }

    #[test]
    fn refusal_reasons_are_the_schema_enumeration() {
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../schemas/health.vaccination.certificate.refused/1.json"
        ))
        .expect("schema");
        let allowed = &schema["properties"]["reason"]["enum"];
        for r in [
            RefusalReason::NoVaccinationRecords,
            RefusalReason::BirthDateMismatch,
            RefusalReason::NotPrintable,
            RefusalReason::CardTooLarge,
        ] {
            let v = serde_json::to_value(r).expect("serialise");
            assert!(allowed.as_array().is_some_and(|a| a.contains(&v)), "{v} not in {allowed}");
        }
    }

    #[test]
    fn a_protobuf_subjects_record_in_proto3_json_reads_as_the_json_form() {
        // As the registry transcodes it for a JSON reader: lowerCamelCase names, enums by name,
        // an empty lot number left out.
        let pb: Recorded = serde_json::from_str(
            r#"{"person": {"myNumber": "kh1:0123456789abcdef0123456789abcdef", "birthDate": "2019-05-01",
                 "sex": "SEX_FEMALE"},
               "vaccination": {"date": "2024-10-15", "vaccine": "MR", "doseNumber": 2},
               "municipalityCode": "131130"}"#,
        )
        .expect("proto3 JSON reads");
        let json = recorded("2").expect("JSON reads");
        assert_eq!(pb.person.my_number, json.person.my_number);
        assert_eq!(pb.person.birth_date, json.person.birth_date);
        assert_eq!(pb.municipality_code, json.municipality_code);
        assert_eq!(pb.vaccination.dose_number, 2);
        assert_eq!(pb.vaccination.lot_number, "", "an empty lot number is left out of proto3 JSON");
    }

    #[test]
    fn a_quoted_dose_number_in_proto3_json_reads_as_the_number() {
        // proto3 JSON readers take any integer field quoted, so the registry passes it.
        let pb: Recorded = serde_json::from_str(
            r#"{"person": {"myNumber": "kh1:0123456789abcdef0123456789abcdef"},
               "vaccination": {"date": "2024-10-15", "vaccine": "MR", "doseNumber": "2"},
               "municipalityCode": "131130"}"#,
        )
        .expect("proto3 JSON with a quoted integer reads");
        assert_eq!(pb.vaccination.dose_number, 2);
    }
}
