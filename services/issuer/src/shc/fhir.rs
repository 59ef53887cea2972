//! The vaccination record as a FHIR R4 Bundle, minified as the spec's "Health Cards are small"
//! rules require, and the reverse: holder and doses read back out of a card's Bundle.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The FHIR code system of the CDC's CVX vaccine codes.
pub const CVX_SYSTEM: &str = "http://hl7.org/fhir/sid/cvx";

/// The card holder as printed on the passport: Latin letters, FHIR `birthDate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Family name (`Patient.name[0].family`).
    pub family: String,
    /// Given names in order (`Patient.name[0].given`).
    pub given: Vec<String>,
    /// FHIR date: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    pub birth_date: String,
}

impl Holder {
    /// A holder with a full birth date.
    pub fn new(family: impl Into<String>, given: Vec<String>, birth_date: time::Date) -> Self {
        Self { family: family.into(), given, birth_date: fhir_date(birth_date) }
    }
}

/// A vaccine code: a code system URI (CVX or a local system) and the code in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaccineCode {
    /// Code system URI, e.g. [`CVX_SYSTEM`] or a national `urn:oid:…`.
    pub system: String,
    /// The code within `system`.
    pub code: String,
}

/// One administered dose (one `Immunization` with status `completed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dose {
    /// What was given (`vaccineCode.coding[0]`).
    pub vaccine: VaccineCode,
    /// FHIR date or dateTime of administration (`occurrenceDateTime`).
    pub occurrence: String,
    /// Vaccine lot number.
    pub lot_number: Option<String>,
    /// Who administered it (`performer[0].actor.display`).
    pub performer: Option<String>,
}

impl Dose {
    /// A dose administered on `date`.
    pub fn new(
        vaccine: VaccineCode,
        date: time::Date,
        lot_number: Option<String>,
        performer: Option<String>,
    ) -> Self {
        Self { vaccine, occurrence: fhir_date(date), lot_number, performer }
    }
}

/// What a vaccination certificate states: who, and which doses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaccinationRecord {
    /// The person.
    pub holder: Holder,
    /// Doses in the order they are to appear on the card.
    pub doses: Vec<Dose>,
}

/// A record that cannot go on a card, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vaccination record: {0}")]
pub struct RecordError(pub String);

/// A Bundle that does not hold a readable vaccination record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(pub String);

/// `YYYY-MM-DD` for a calendar date.
pub fn fhir_date(date: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

impl VaccinationRecord {
    /// Checks what the spec and a passport-based certificate need before anything is signed.
    pub fn validate(&self) -> Result<(), RecordError> {
        let h = &self.holder;
        if h.family.trim().is_empty() {
            return Err(RecordError("holder family name is empty".into()));
        }
        for name in std::iter::once(&h.family).chain(h.given.iter()) {
            if !is_latin_name(name) {
                return Err(RecordError(format!("name {name:?} is not in Latin letters")));
            }
        }
        if !is_fhir_date(&h.birth_date) {
            return Err(RecordError(format!("birth date {:?} is not a FHIR date", h.birth_date)));
        }
        if self.doses.is_empty() {
            return Err(RecordError("no doses".into()));
        }
        for (i, d) in self.doses.iter().enumerate() {
            if d.vaccine.system.trim().is_empty() || d.vaccine.code.trim().is_empty() {
                return Err(RecordError(format!("dose {i}: vaccine system and code are required")));
            }
            if !is_fhir_date_time(&d.occurrence) {
                return Err(RecordError(format!("dose {i}: date {:?} is not a FHIR dateTime", d.occurrence)));
            }
        }
        Ok(())
    }

    /// The minified FHIR R4 Bundle for this record (call [`Self::validate`] first).
    pub fn to_bundle(&self) -> Value {
        let h = &self.holder;
        // FHIR JSON allows no empty array: a holder without given names has no `given` at all.
        let mut name = json!({"family": h.family});
        if !h.given.is_empty() {
            name["given"] = json!(h.given);
        }
        let mut entries = vec![json!({
            "fullUrl": "resource:0",
            "resource": {
                "resourceType": "Patient",
                "name": [name],
                "birthDate": h.birth_date,
            }
        })];
        for (i, d) in self.doses.iter().enumerate() {
            let mut imm = Map::new();
            imm.insert("resourceType".into(), json!("Immunization"));
            imm.insert("status".into(), json!("completed"));
            imm.insert(
                "vaccineCode".into(),
                json!({"coding": [{"system": d.vaccine.system, "code": d.vaccine.code}]}),
            );
            imm.insert("patient".into(), json!({"reference": "resource:0"}));
            imm.insert("occurrenceDateTime".into(), json!(d.occurrence));
            if let Some(p) = &d.performer {
                imm.insert("performer".into(), json!([{"actor": {"display": p}}]));
            }
            if let Some(lot) = &d.lot_number {
                imm.insert("lotNumber".into(), json!(lot));
            }
            entries.push(json!({"fullUrl": format!("resource:{}", i + 1), "resource": imm}));
        }
        let mut bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": entries});
        minify_bundle(&mut bundle);
        bundle
    }
}

/// Applies the spec's minification rules to any Bundle: no `Resource.id`, no `Resource.meta`
/// (except `meta.security`), no `DomainResource.text`, no `CodeableConcept.text`, no
/// `Coding.display`. `Reference.display` (e.g. the performer) is kept: the rules do not name it.
pub fn minify_bundle(bundle: &mut Value) {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else { return };
    for entry in entries {
        let Some(resource) = entry.get_mut("resource").and_then(Value::as_object_mut) else { continue };
        resource.remove("id");
        resource.remove("text");
        let security = resource.get("meta").and_then(|m| m.get("security")).cloned();
        resource.remove("meta");
        if let Some(security) = security {
            resource.insert("meta".into(), json!({ "security": security }));
        }
        for value in resource.values_mut() {
            strip_codeable_concepts(value);
        }
    }
}

/// A CodeableConcept is recognised by its `coding` array; recursion covers nested ones.
fn strip_codeable_concepts(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::Array(codings)) = obj.get_mut("coding") {
                for coding in codings.iter_mut() {
                    if let Some(c) = coding.as_object_mut() {
                        c.remove("display");
                    }
                }
                obj.remove("text");
            }
            for v in obj.values_mut() {
                strip_codeable_concepts(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_codeable_concepts),
        _ => {}
    }
}

/// Reads holder and completed doses out of a card's Bundle. Immunizations with another status
/// (e.g. `entered-in-error`) are not doses and are left out.
pub fn record_from_bundle(bundle: &Value) -> Result<VaccinationRecord, BundleError> {
    let err = |m: &str| BundleError(m.to_string());
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(err("fhirBundle.resourceType is not Bundle"));
    }
    if bundle.get("type").and_then(Value::as_str) != Some("collection") {
        return Err(err("fhirBundle.type is not collection"));
    }
    let entries =
        bundle.get("entry").and_then(Value::as_array).ok_or_else(|| err("fhirBundle has no entry"))?;
    let mut holder = None;
    let mut doses = Vec::new();
    for entry in entries {
        let resource = entry.get("resource").ok_or_else(|| err("bundle entry without resource"))?;
        match resource.get("resourceType").and_then(Value::as_str) {
            Some("Patient") if holder.is_none() => holder = Some(patient(resource)?),
            Some("Immunization") => {
                if let Some(dose) = immunization(resource)? {
                    doses.push(dose);
                }
            }
            Some(_) => {}
            None => return Err(err("bundle entry resource without resourceType")),
        }
    }
    let holder = holder.ok_or_else(|| err("fhirBundle has no Patient"))?;
    Ok(VaccinationRecord { holder, doses })
}

fn patient(resource: &Value) -> Result<Holder, BundleError> {
    let name = resource
        .get("name")
        .and_then(|n| n.get(0))
        .ok_or_else(|| BundleError("Patient has no name".into()))?;
    let family = name.get("family").and_then(Value::as_str).unwrap_or_default().to_string();
    let given = match name.get("given") {
        None => Vec::new(),
        Some(Value::Array(g)) => g
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| BundleError("Patient.name.given is not a list of strings".into()))?,
        Some(_) => return Err(BundleError("Patient.name.given is not a list".into())),
    };
    let birth_date = resource
        .get("birthDate")
        .and_then(Value::as_str)
        .ok_or_else(|| BundleError("Patient has no birthDate".into()))?
        .to_string();
    Ok(Holder { family, given, birth_date })
}

fn immunization(resource: &Value) -> Result<Option<Dose>, BundleError> {
    let err = |m: &str| BundleError(format!("Immunization: {m}"));
    if resource.get("status").and_then(Value::as_str) != Some("completed") {
        return Ok(None);
    }
    let coding = resource
        .get("vaccineCode")
        .and_then(|c| c.get("coding"))
        .and_then(|c| c.get(0))
        .ok_or_else(|| err("no vaccineCode.coding"))?;
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let vaccine = VaccineCode {
        system: field(coding, "system").ok_or_else(|| err("coding without system"))?,
        code: field(coding, "code").ok_or_else(|| err("coding without code"))?,
    };
    let occurrence = field(resource, "occurrenceDateTime").ok_or_else(|| err("no occurrenceDateTime"))?;
    let performer = resource
        .get("performer")
        .and_then(|p| p.get(0))
        .and_then(|p| p.get("actor"))
        .and_then(|a| field(a, "display"));
    Ok(Some(Dose { vaccine, occurrence, lot_number: field(resource, "lotNumber"), performer }))
}

/// Latin script only: ASCII letters, Latin-1/Extended-A/B letters, and the separators names use.
fn is_latin_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().all(|c| {
            c.is_ascii_alphabetic()
                || matches!(c, ' ' | '-' | '\'' | '.')
                || (('\u{C0}'..='\u{24F}').contains(&c) && c.is_alphabetic())
        })
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// FHIR `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, with a real calendar date in the last form.
pub fn is_fhir_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y] => digits(y, 4),
        [y, m] => digits(y, 4) && digits(m, 2) && matches!(m.parse::<u8>(), Ok(1..=12)),
        [y, m, d] => {
            digits(y, 4)
                && digits(m, 2)
                && digits(d, 2)
                && time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
        }
        _ => false,
    }
}

/// FHIR `dateTime`: a FHIR date, or a full date with `Thh:mm:ss[.fff]` and a zone.
pub fn is_fhir_date_time(s: &str) -> bool {
    match s.split_once('T') {
        None => is_fhir_date(s),
        Some((date, rest)) => {
            date.len() == 10
                && is_fhir_date(date)
                && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
                && !rest.is_empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> VaccinationRecord {
        VaccinationRecord {
            holder: Holder {
                family: "Yamada".into(),
                given: vec!["Hanako".into()],
                birth_date: "1980-04-01".into(),
            },
            doses: vec![Dose {
                vaccine: VaccineCode { system: CVX_SYSTEM.into(), code: "208".into() },
                occurrence: "2021-06-01".into(),
                lot_number: Some("FA1234".into()),
                performer: Some("Shibuya Clinic".into()),
            }],
        }
    }

    #[test]
    fn a_holder_without_given_names_has_no_empty_given_array() {
        let mut r = record();
        r.holder.given.clear();
        r.validate().expect("a passport may carry no given names");
        let b = r.to_bundle();
        let name = &b["entry"][0]["resource"]["name"][0];
        assert_eq!(name["family"], "Yamada");
        assert!(name.get("given").is_none(), "FHIR JSON has no empty arrays: {name}");
        assert_eq!(record_from_bundle(&b).expect("reads back"), r);
    }

    #[test]
    fn bundle_has_spec_shape_and_reads_back() {
        let r = record();
        r.validate().expect("valid");
        let b = r.to_bundle();
        assert_eq!(b["entry"][0]["fullUrl"], "resource:0");
        assert_eq!(b["entry"][1]["fullUrl"], "resource:1");
        assert_eq!(b["entry"][1]["resource"]["patient"]["reference"], "resource:0");
        assert_eq!(b["entry"][1]["resource"]["performer"][0]["actor"]["display"], "Shibuya Clinic");
        assert_eq!(record_from_bundle(&b).expect("parse"), r);
    }

    #[test]
    fn minify_removes_listed_elements_and_keeps_reference_display() {
        let mut b = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "resource:0",
            "resource": {"resourceType": "Immunization", "id": "x", "text": {"div": "<div/>"},
              "meta": {"versionId": "1", "security": [{"code": "IAL1.2"}]},
              "vaccineCode": {"text": "Moderna", "coding": [{"system": "s", "code": "207", "display": "Moderna"}]},
              "performer": [{"actor": {"display": "ABC"}}]}}]});
        minify_bundle(&mut b);
        let r = &b["entry"][0]["resource"];
        assert!(r.get("id").is_none() && r.get("text").is_none());
        assert_eq!(r["meta"], json!({"security": [{"code": "IAL1.2"}]}));
        assert!(r["vaccineCode"].get("text").is_none());
        assert!(r["vaccineCode"]["coding"][0].get("display").is_none());
        assert_eq!(r["performer"][0]["actor"]["display"], "ABC");
    }

    #[test]
    fn rejects_non_latin_names_and_bad_dates() {
        let mut r = record();
        r.holder.family = "山田".into();
        assert!(r.validate().is_err());
        let mut r = record();
        r.holder.given = vec!["Zoë".into()];
        assert!(r.validate().is_ok());
        let mut r = record();
        r.holder.birth_date = "1980-02-30".into();
        assert!(r.validate().is_err());
        let mut r = record();
        r.doses[0].occurrence = "2021-06-01T10:00:00+09:00".into();
        assert!(r.validate().is_ok());
        r.doses[0].occurrence = "June".into();
        assert!(r.validate().is_err());
        let mut r = record();
        r.doses.clear();
        assert!(r.validate().is_err());
    }

    #[test]
    fn date_forms() {
        assert!(is_fhir_date("1951") && is_fhir_date("1951-01") && is_fhir_date("1951-01-20"));
        assert!(!is_fhir_date("1951-13") && !is_fhir_date("51-01-20") && !is_fhir_date(""));
        let d = time::macros::date!(2021 - 01 - 09);
        assert_eq!(fhir_date(d), "2021-01-09");
    }
}
