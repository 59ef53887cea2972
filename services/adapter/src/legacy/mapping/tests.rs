use serde_json::json;

use super::*;
use crate::legacy::records::Record;

const VACCINATION: &str = r#"
event_type = "health.vaccination.recorded"
schema_version = 1
source = "city-shibuya"
format = "csv"
encoding = "cp932"
header = true
key = ["宛名番号", "接種回数"]
version = "更新日時"

[[fields]]
target = "/person/my_number"
column = "個人番号"
transforms = ["digits_only"]
pii = true

[[fields]]
target = "/person/name_kana"
column = "氏名カナ"
transforms = ["trim", "fullwidth_kana"]

[[fields]]
target = "/person/birth_date"
column = "生年月日"
type = "date"
pii = true

[[fields]]
target = "/vaccination/date"
column = 4
type = "date"

[[fields]]
target = "/vaccination/dose_number"
column = "接種回数"
type = "integer"

[[fields]]
target = "/vaccination/lot_number"
column = "ロット番号"
transforms = ["trim", "halfwidth", "upper"]
required = false
null_values = ["-", "不明"]

[[fields]]
target = "/municipality_code"
value = 131130
"#;

fn headers() -> Vec<String> {
    ["個人番号", "氏名カナ", "生年月日", "接種日", "接種回数", "ロット番号", "宛名番号", "更新日時"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn record(fields: &[&str]) -> Record {
    Record { line: 7, byte_offset: 100, fields: fields.iter().map(|s| s.to_string()).collect() }
}

fn good_row() -> Vec<&'static str> {
    vec![
        "1234 5678 9018",
        "　ﾔﾏﾀﾞ ﾀﾛｳ　",
        "昭和５０年４月１日",
        "R06.10.01",
        "２",
        " ａｂ１２３ ",
        "A001",
        "2024-10-02",
    ]
}

fn load(toml: &str) -> Mapping {
    match Mapping::from_toml(toml) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

fn mapping() -> Mapping {
    load(VACCINATION)
}

fn apply(m: &Mapping, fields: &[&str]) -> Result<Mapped, FieldError> {
    let headers = headers();
    match m.bind(Some(&headers)) {
        Ok(bound) => bound.apply(&record(fields)),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn csv_row_maps_to_nested_typed_json() {
    let mapped = apply(&mapping(), &good_row()).map_err(|e| e.to_string());
    let mapped = mapped.as_ref().map(|m| (&m.payload, m.key.as_str(), m.version.as_str()));
    let expected = json!({
        "person": {"my_number": "123456789018", "name_kana": "ヤマダ タロウ", "birth_date": "1975-04-01"},
        "vaccination": {"date": "2024-10-01", "dose_number": 2, "lot_number": "AB123"},
        "municipality_code": "131130"
    });
    assert_eq!(mapped, Ok((&expected, "A001|2", "2024-10-02")));
}

#[test]
fn empty_or_null_optional_field_is_omitted() {
    let mut row = good_row();
    row[5] = "　－　";
    let mapped = apply(&mapping(), &row).map_err(|e| e.to_string());
    assert_eq!(mapped.map(|m| m.payload["vaccination"].get("lot_number").cloned()), Ok(None));
    row[5] = "不明";
    assert!(apply(&mapping(), &row).is_ok_and(|m| m.payload["vaccination"].get("lot_number").is_none()));
}

#[test]
fn empty_required_field_is_an_error_naming_column_and_target() {
    let mut row = good_row();
    row[3] = "　";
    let err = apply(&mapping(), &row).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("column #4 -> /vaccination/date: required value is empty"));
}

#[test]
fn invalid_non_pii_value_is_shown_in_the_error() {
    let mut row = good_row();
    row[3] = "平成31年5月1日";
    let err = apply(&mapping(), &row).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("/vaccination/date: not a valid date: 平成 runs from"), "{err}");
    assert!(err.contains("平成31年5月1日"), "{err}");
}

#[test]
fn pii_field_value_is_absent_from_errors() {
    let mut row = good_row();
    row[2] = "平成5年2月29日"; // birth date, marked pii: no such day
    let err = apply(&mapping(), &row).err();
    let text = format!("{} {:?}", err.as_ref().map(ToString::to_string).unwrap_or_default(), err);
    assert!(text.contains("/person/birth_date"), "{text}");
    assert!(text.contains("withheld"), "{text}");
    for leak in ["平成5", "1993", "02-29", "2月29"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
}

#[test]
fn pii_my_number_never_appears_in_error_text() {
    let toml =
        VACCINATION.replace("transforms = [\"digits_only\"]\npii = true", "type = \"integer\"\npii = true");
    let m = Mapping::from_toml(&toml).map_err(|e| e.to_string());
    let mut row = good_row();
    row[0] = "1234-5678-9018";
    let err = m.map(|m| apply(&m, &row).err());
    let text = format!("{err:?}");
    assert!(text.contains("NotInteger") && !text.contains("1234") && !text.contains("9018"), "{text}");
}

#[test]
fn key_parts_are_normalized_and_escaped() {
    let mut row = good_row();
    row[6] = " Ａ|0\\1 ";
    let mapped = apply(&mapping(), &row).map(|m| m.key);
    assert_eq!(mapped, Ok("A\\|0\\\\1|2".to_string()));
    row[6] = "　";
    let err = apply(&mapping(), &row).err().map(|e| e.problem);
    assert_eq!(err, Some(Problem::KeyMissing));
}

#[test]
fn without_version_column_the_payload_digest_is_the_version() {
    let m = load(&VACCINATION.replace("version = \"更新日時\"\n", ""));
    let a = apply(&m, &good_row()).map(|x| x.version).unwrap_or_default();
    assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
    let mut row = good_row();
    row[4] = "3";
    assert_ne!(Ok(a), apply(&m, &row).map(|x| x.version));
}

#[test]
fn typed_values_parse_after_width_folding() {
    let toml = r#"
        event_type = "t.x"
        format = "csv"
        key = [1]
        [[fields]]
        target = "/n"
        column = 1
        type = "number"
        [[fields]]
        target = "/b"
        column = 2
        type = "boolean"
        [[fields]]
        target = "/i"
        column = 3
        type = "integer"
    "#;
    let m = Mapping::from_toml(toml).map_err(|e| e.to_string());
    let out = m.and_then(|m| {
        let bound = m.bind(None).map_err(|e| e.to_string())?;
        bound.apply(&record(&["－１２．５", "Yes", "　－７　"])).map_err(|e| e.to_string())
    });
    assert_eq!(out.map(|m| m.payload), Ok(json!({"n": -12.5, "b": true, "i": -7})));
}

#[test]
fn bad_numbers_and_booleans_are_refused() {
    assert_eq!(bind::convert("inf", FieldType::Number, false), Err(Problem::NotNumber));
    assert_eq!(bind::convert("1.5", FieldType::Integer, false), Err(Problem::NotInteger));
    assert_eq!(bind::convert("maybe", FieldType::Boolean, false), Err(Problem::NotBoolean));
}

#[test]
fn every_validation_problem_is_reported_at_once() {
    let toml = r#"
        event_type = "Health.Vaccination"
        source = "city shibuya"
        format = "fixed"
        encoding = "euc-jp"
        delimiter = "|"
        key = []
        [[fields]]
        target = "person/name"
        column = 0
        [[fields]]
        target = "/a"
        column = 1
        value = "x"
        [[fields]]
        target = "/a/b"
        value = "y"
    "#;
    let msg = Mapping::from_toml(toml).err().map(|e| e.to_string()).unwrap_or_default();
    for expected in [
        "event_type",
        "source",
        "encoding \"euc-jp\"",
        "needs widths",
        "delimiter is not used",
        "key must name",
        "JSON pointer",
        "numbered from 1",
        "exactly one of column and value",
        "overlaps field \"/a\"",
    ] {
        assert!(msg.contains(expected), "missing {expected:?} in {msg}");
    }
}

#[test]
fn delimiter_unsafe_for_cp932_is_refused() {
    let toml = VACCINATION.replace("header = true", "header = true\ndelimiter = \"|\"");
    let msg = Mapping::from_toml(&toml).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("inside Shift_JIS characters"), "{msg}");
}

#[test]
fn unknown_setting_is_a_toml_error_with_its_name() {
    let msg =
        Mapping::from_toml(&format!("{VACCINATION}\nenconding = \"utf-8\"")).err().map(|e| e.to_string());
    assert!(msg.is_some_and(|m| m.contains("enconding")));
}

#[test]
fn binding_reports_columns_missing_from_the_header() {
    let headers: Vec<String> = headers().into_iter().filter(|h| h != "氏名カナ").collect();
    let msg = mapping().bind(Some(&headers)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("column 氏名カナ is not in the file"), "{msg}");
}

#[test]
fn header_names_match_after_width_folding_and_trimming() {
    let mut headers = headers();
    headers[4] = "　接種回数 ".into();
    assert!(mapping().bind(Some(&headers)).is_ok());
}

#[test]
fn pii_column_in_key_is_refused() {
    let toml = VACCINATION.replace("key = [\"宛名番号\", \"接種回数\"]", "key = [\"個人番号\"]");
    let m = Mapping::from_toml(&toml).map_err(|e| e.to_string());
    let msg = m.map(|m| m.bind(Some(&headers())).err().map(|e| e.to_string()));
    assert!(matches!(&msg, Ok(Some(m)) if m.contains("mapped as pii")), "{msg:?}");
}

#[test]
fn fixed_width_mapping_resolves_names_from_column_names() {
    let toml = r#"
        event_type = "t.x"
        format = "fixed"
        encoding = "shift_jis"
        widths = [4, 10]
        column_names = ["番号", "氏名"]
        key = ["番号"]
        [[fields]]
        target = "/name"
        column = "氏名"
        transforms = ["trim"]
    "#;
    let m = Mapping::from_toml(toml).map_err(|e| e.to_string());
    let out = m.and_then(|m| {
        assert_eq!(m.layout(), Layout::Fixed { widths: vec![4, 10] });
        let bound = m.bind(None).map_err(|e| e.to_string())?;
        bound.apply(&record(&["0001", "山田　　　"])).map_err(|e| e.to_string())
    });
    assert_eq!(out.map(|m| (m.payload, m.key)), Ok((json!({"name": "山田"}), "0001".to_string())));
}

#[test]
fn pointer_escapes_are_unescaped_in_payload_keys() {
    let toml = "event_type = \"t.x\"\nformat = \"csv\"\nkey = [1]\n[[fields]]\ntarget = \"/a~1b/c~0d\"\ncolumn = 1\n";
    let out = Mapping::from_toml(toml).map_err(|e| e.to_string()).and_then(|m| {
        m.bind(None).map_err(|e| e.to_string())?.apply(&record(&["v"])).map_err(|e| e.to_string())
    });
    assert_eq!(out.map(|m| m.payload), Ok(json!({"a/b": {"c~d": "v"}})));
}
