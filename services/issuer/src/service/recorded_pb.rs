//! A `health.vaccination.recorded` record delivered in its protobuf form (schema
//! `health.vaccination.recorded.pb`, message `kakehashi.catalogue.health.v1.VaccinationRecorded`,
//! `data_content_type` `application/protobuf`): the fields the issuer reads, by their numbers
//! in `schemas/health.vaccination.recorded.pb/1.proto`. Fields it does not read are skipped, so
//! later versions that add fields still decode.

use super::events::{DeliveredPerson, Recorded, Vaccination};

#[derive(Clone, PartialEq, prost::Message)]
struct VaccinationRecorded {
    #[prost(message, optional, tag = "1")]
    person: Option<Person>,
    #[prost(message, optional, tag = "2")]
    vaccination: Option<VaccinationPb>,
    #[prost(string, tag = "3")]
    municipality_code: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Person {
    /// The reader's pseudonym by the time it is delivered to the issuer.
    #[prost(string, tag = "1")]
    my_number: String,
    #[prost(string, tag = "4")]
    birth_date: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VaccinationPb {
    #[prost(string, tag = "1")]
    date: String,
    #[prost(string, tag = "2")]
    vaccine: String,
    #[prost(uint32, tag = "3")]
    dose_number: u32,
    #[prost(string, tag = "4")]
    lot_number: String,
}

/// The record in `bytes`, or what is wrong with it (never its content: it is personal data).
/// Proto3 has no required fields, so what the certificate needs is checked here: a person
/// with a My Number, a vaccination with date, vaccine and a dose number from 1, and the
/// municipality.
pub fn decode(bytes: &[u8]) -> Result<Recorded, &'static str> {
    let r = <VaccinationRecorded as prost::Message>::decode(bytes)
        .map_err(|_| "not the expected protobuf message")?;
    let person = r.person.ok_or("no person")?;
    let v = r.vaccination.ok_or("no vaccination")?;
    if person.my_number.is_empty() {
        return Err("no My Number");
    }
    if v.date.is_empty() || v.vaccine.is_empty() || v.dose_number == 0 || r.municipality_code.is_empty() {
        return Err("a vaccination without date, vaccine, dose number or municipality");
    }
    Ok(Recorded {
        person: DeliveredPerson {
            my_number: person.my_number,
            birth_date: (!person.birth_date.is_empty()).then_some(person.birth_date),
        },
        vaccination: Vaccination {
            date: v.date,
            vaccine: v.vaccine,
            dose_number: u64::from(v.dose_number),
            lot_number: v.lot_number,
        },
        municipality_code: r.municipality_code,
    })
}

#[cfg(test)]
mod tests {
    use super::decode;

    fn catalogue(name: &str) -> Vec<u8> {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/health.vaccination.recorded.pb/examples/");
        std::fs::read(format!("{path}{name}")).expect("catalogue example")
    }

    #[test]
    fn the_catalogues_protobuf_example_reads_as_its_json_twin() {
        let pb = decode(&catalogue("valid-mr-second-dose.binpb")).expect("decodes");
        let json_path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/health.vaccination.recorded/examples/valid-mr-second-dose.json"
        );
        let json: super::Recorded =
            serde_json::from_slice(&std::fs::read(json_path).expect("json example")).expect("json decodes");
        assert_eq!(pb.person.my_number, json.person.my_number);
        assert_eq!(pb.person.birth_date, json.person.birth_date);
        assert_eq!(pb.vaccination, json.vaccination);
        assert_eq!(pb.municipality_code, json.municipality_code);
    }

    #[test]
    fn a_truncated_or_empty_record_is_refused_without_its_content() {
        assert_eq!(
            decode(&catalogue("invalid-truncated.binpb")).err(),
            Some("not the expected protobuf message")
        );
        assert_eq!(decode(&[]).err(), Some("no person"));
    }
}
