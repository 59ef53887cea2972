//! Whole-pipeline tests. Fixtures: `tests/fixtures/` (see its README for sources).

mod conformance;
mod failures;
mod props;
mod round_trip;

use crate::{Dose, Holder, VaccinationRecord, VaccineCode, CVX_SYSTEM};

/// Reads a fixture file.
fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A two-dose record for a resident with a Latin passport name.
fn record() -> VaccinationRecord {
    VaccinationRecord {
        holder: Holder::new("Yamada", vec!["Hanako".into()], time::macros::date!(1985 - 03 - 14)),
        doses: vec![
            Dose::new(
                VaccineCode { system: CVX_SYSTEM.into(), code: "208".into() },
                time::macros::date!(2021 - 06 - 01),
                Some("FA5765".into()),
                Some("Shibuya City Vaccination Center".into()),
            ),
            Dose::new(
                // A local (national) code system, as Japanese records carry.
                VaccineCode { system: "urn:oid:1.2.392.200119.4.403.1".into(), code: "2".into() },
                time::macros::date!(2021 - 06 - 22),
                Some("FC3661".into()),
                Some("Shibuya City Vaccination Center".into()),
            ),
        ],
    }
}

const ISSUER: &str = "https://issuer.kakehashi.example.jp";
const NOW: i64 = 1_764_633_600; // 2025-12-02T00:00:00Z
