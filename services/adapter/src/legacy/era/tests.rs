use super::*;

fn iso(s: &str) -> String {
    match parse_date(s) {
        Ok(d) => d.to_iso(),
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn err(s: &str) -> EraError {
    match parse_date(s) {
        Ok(d) => panic!("{s:?} should be refused, got {d}"),
        Err(e) => e,
    }
}

fn is_outside(e: &EraError, want: Era) -> bool {
    matches!(e, EraError::OutsideEra { era, .. } if *era == want)
}

#[test]
fn each_era_first_day_converts() {
    assert_eq!(iso("大正元年7月30日"), "1912-07-30");
    assert_eq!(iso("昭和元年12月25日"), "1926-12-25");
    assert_eq!(iso("平成元年1月8日"), "1989-01-08");
    assert_eq!(iso("令和元年5月1日"), "2019-05-01");
}

#[test]
fn meiji_first_day_is_refused_as_lunisolar() {
    // 1868-10-23 is Meiji's first day, but dates of that time were lunisolar.
    assert!(matches!(err("明治元年10月23日"), EraError::LunisolarCalendar { .. }));
}

#[test]
fn each_era_last_day_converts() {
    assert_eq!(iso("明治45年7月29日"), "1912-07-29");
    assert_eq!(iso("大正15年12月24日"), "1926-12-24");
    assert_eq!(iso("昭和64年1月7日"), "1989-01-07");
    assert_eq!(iso("平成31年4月30日"), "2019-04-30");
}

#[test]
fn day_after_each_era_ends_is_refused() {
    assert!(is_outside(&err("明治45年7月30日"), Era::Meiji));
    assert!(is_outside(&err("大正15年12月25日"), Era::Taisho));
    assert!(is_outside(&err("昭和64年1月8日"), Era::Showa));
    assert!(is_outside(&err("平成31年5月1日"), Era::Heisei));
    assert!(is_outside(&err("H31.05.01"), Era::Heisei));
}

#[test]
fn day_before_each_era_starts_is_refused() {
    assert!(is_outside(&err("明治元年10月22日"), Era::Meiji));
    assert!(is_outside(&err("大正元年7月29日"), Era::Taisho));
    assert!(is_outside(&err("昭和元年12月24日"), Era::Showa));
    assert!(is_outside(&err("平成元年1月7日"), Era::Heisei));
    assert!(is_outside(&err("令和元年4月30日"), Era::Reiwa));
}

#[test]
fn meiji_before_1873_is_lunisolar_and_from_1873_converts() {
    assert!(matches!(err("明治5年12月2日"), EraError::LunisolarCalendar { .. }));
    assert!(matches!(err("M05.06.15"), EraError::LunisolarCalendar { .. }));
    assert_eq!(iso("明治6年1月1日"), "1873-01-01");
    assert_eq!(iso("M06.01.01"), "1873-01-01");
}

#[test]
fn gannen_is_year_one_in_every_form() {
    assert_eq!(iso("令和元年5月1日"), "2019-05-01");
    assert_eq!(iso("令和1年5月1日"), "2019-05-01");
    assert_eq!(iso("R元.5.1"), "2019-05-01");
    assert_eq!(iso("平成元年12月31日"), "1989-12-31");
}

#[test]
fn fullwidth_digits_letters_and_padding_are_folded() {
    assert_eq!(iso("昭和６４年１月７日"), "1989-01-07");
    assert_eq!(iso("Ｈ３１．０４．３０"), "2019-04-30");
    assert_eq!(iso("　令和元年５月１日　"), "2019-05-01");
    assert_eq!(iso(" 昭和 50年 4月 1日 "), "1975-04-01");
    assert_eq!(iso("２０２４－０２－２９"), "2024-02-29");
}

#[test]
fn each_letter_abbreviation_in_both_cases() {
    assert_eq!(iso("M44.03.01"), "1911-03-01");
    assert_eq!(iso("m44.03.01"), "1911-03-01");
    assert_eq!(iso("T01.07.30"), "1912-07-30");
    assert_eq!(iso("t10/1/1"), "1921-01-01");
    assert_eq!(iso("S64.01.07"), "1989-01-07");
    assert_eq!(iso("s50-4-1"), "1975-04-01");
    assert_eq!(iso("H31/4/30"), "2019-04-30");
    assert_eq!(iso("h01.01.08"), "1989-01-08");
    assert_eq!(iso("R01.05.01"), "2019-05-01");
    assert_eq!(iso("r6.1.1"), "2024-01-01");
}

#[test]
fn one_kanji_abbreviations_are_accepted() {
    assert_eq!(iso("昭50.4.1"), "1975-04-01");
    assert_eq!(iso("平31年4月30日"), "2019-04-30");
}

#[test]
fn gregorian_forms_are_accepted() {
    assert_eq!(iso("2024-02-29"), "2024-02-29");
    assert_eq!(iso("2024/2/29"), "2024-02-29");
    assert_eq!(iso("20240229"), "2024-02-29");
    assert_eq!(iso("2024年2月29日"), "2024-02-29");
    assert_eq!(iso("1800-01-01"), "1800-01-01");
}

#[test]
fn gregorian_leap_rules_are_applied() {
    assert!(matches!(err("2023-02-29"), EraError::NoSuchDay { .. }));
    assert!(matches!(err("20230229"), EraError::NoSuchDay { .. }));
    assert!(matches!(err("1900-02-29"), EraError::NoSuchDay { .. }));
    assert_eq!(iso("2000-02-29"), "2000-02-29");
    // 平成4年 is 1992, a leap year; 平成5年 (1993) is not.
    assert_eq!(iso("平成4年2月29日"), "1992-02-29");
    assert!(matches!(err("平成5年2月29日"), EraError::NoSuchDay { year: 1993, .. }));
}

#[test]
fn impossible_months_and_days_are_refused() {
    assert!(matches!(err("2024-13-01"), EraError::NoSuchDay { .. }));
    assert!(matches!(err("2024-04-31"), EraError::NoSuchDay { .. }));
    assert!(matches!(err("R01.05.00"), EraError::NoSuchDay { .. }));
    assert!(matches!(err("R01.00.01"), EraError::NoSuchDay { .. }));
}

#[test]
fn year_zero_is_refused() {
    assert!(matches!(err("令和0年5月1日"), EraError::YearZero { .. }));
    assert!(matches!(err("R00.05.01"), EraError::YearZero { .. }));
    assert!(matches!(err("0000-01-01"), EraError::YearZero { .. }));
}

#[test]
fn missing_parts_are_malformed() {
    for s in ["令和", "令和元年", "令和元年5月", "R01.05", "R01.05.", "2024-02", "2024", "202402"]
    {
        assert!(matches!(err(s), EraError::Malformed { .. }), "{s}");
    }
    assert_eq!(err("　 "), EraError::Empty);
}

#[test]
fn garbage_and_mixed_separators_are_malformed() {
    for s in ["昨日", "X01.01.01", "R01.05/01", "R01年05.01", "2024-02-29x", "令和元年5月1日午後"]
    {
        assert!(matches!(err(s), EraError::Malformed { .. }), "{s}");
    }
}

#[test]
fn error_messages_name_the_problem_and_input() {
    let e = err("平成31年5月1日");
    assert_eq!(e.to_string(), "\"平成31年5月1日\": 平成 runs from 1989-01-08 to 2019-04-30");
    assert!(!e.reason().contains("31年"));
    assert!(err("明治3年1月1日").to_string().contains("lunisolar"));
}

#[test]
fn era_bounds_are_consistent() {
    assert_eq!(Era::Showa.last_day(), Some(date(1989, 1, 7)));
    assert_eq!(Era::Taisho.last_day(), Some(date(1926, 12, 24)));
    assert_eq!(Era::Reiwa.last_day(), None);
    assert_eq!(day_before(date(2024, 3, 1)), date(2024, 2, 29));
}

#[test]
fn era_squares_are_read_as_era_names() {
    assert_eq!(iso("㍻31年4月30日"), "2019-04-30");
    assert_eq!(iso("㍼64年1月7日"), "1989-01-07");
    assert_eq!(iso("㋿元年5月1日"), "2019-05-01");
    assert_eq!(iso("㍽元年7月30日"), "1912-07-30");
    assert_eq!(iso("㍾45年7月29日"), "1912-07-29");
    assert_eq!(iso("　㍻３１．０４．３０"), "2019-04-30");
    // The era's span still applies.
    assert!(is_outside(&err("㍻31年5月1日"), Era::Heisei));
}

#[test]
fn era_squares_decoded_from_cp932_nec_row_13_are_read_as_era_names() {
    use crate::legacy::decode::{decode_field, Encoding};
    let cases: [([u8; 2], &str, &str); 4] = [
        ([0x87, 0x7E], "31年4月30日", "2019-04-30"),  // ㍻
        ([0x87, 0x8F], "64年1月7日", "1989-01-07"),   // ㍼
        ([0x87, 0x8E], "15年12月24日", "1926-12-24"), // ㍽
        ([0x87, 0x8D], "45年7月29日", "1912-07-29"),  // ㍾
    ];
    for (square, rest, want) in cases {
        let (tail, _, unmappable) = encoding_rs::SHIFT_JIS.encode(rest);
        assert!(!unmappable);
        let text = match decode_field(&[&square[..], &tail].concat(), Encoding::ShiftJis) {
            Ok(text) => text,
            Err(e) => panic!("{square:02X?} should decode: {e:?}"),
        };
        assert_eq!(iso(&text), want, "{square:02X?}");
    }
}
