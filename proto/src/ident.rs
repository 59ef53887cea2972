//! Checks for the identifiers Kakehashi accepts: the individual number (マイナンバー,
//! 個人番号), the corporate number (法人番号), department ids and event types.
//!
//! The check-digit rules are taken from the ordinances that define them:
//!
//! - 個人番号: 平成26年総務省令第85号 (番号法の規定による個人番号、個人番号カード等に関する
//!   省令) 第5条 — the formula that 番号法施行令第8条 delegates to it (検査用数字を算出する算式).
//! - 法人番号: 法人番号の指定等に関する省令 (平成26年財務省令第70号) 第2条 (検査用数字).
//!
//! Only ASCII digits are accepted. Full-width digits (`１２３`), which legacy files often contain,
//! must be normalised by the caller first; these functions never do it silently.
//!
//! A My Number is legally restricted personal data (番号法): nothing here logs, formats or returns
//! the number itself, only a verdict or a single check digit.

/// Length of an individual number (個人番号): 11 base digits plus one check digit.
pub const MY_NUMBER_LEN: usize = 12;

/// Length of a corporate number (法人番号): one check digit plus 12 base digits.
pub const CORPORATE_NUMBER_LEN: usize = 13;

/// Longest department id accepted by [`is_valid_department_id`].
pub const DEPARTMENT_ID_MAX_LEN: usize = 64;

/// Longest event type accepted by [`is_valid_event_type`].
pub const EVENT_TYPE_MAX_LEN: usize = 200;

/// The digit values of `s` if it consists of exactly `N` ASCII digits (`0`–`9`), else `None`.
fn ascii_digits<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, &b) in out.iter_mut().zip(bytes) {
        if !b.is_ascii_digit() {
            return None;
        }
        *slot = b - b'0';
    }
    Some(out)
}

/// Check digit of an individual number (個人番号) from its first 11 digits.
///
/// 平成26年総務省令第85号 第5条: number the 11 base digits P1..P11 from the right (P1 is the
/// 11th, last base digit); the weights are Qn = n + 1 for 1 ≤ n ≤ 6 and Qn = n − 5 for
/// 7 ≤ n ≤ 11; with r = (Σ Pn × Qn) mod 11 the check digit is 0 when r ≤ 1, else 11 − r.
///
/// Returns `None` unless `first11` is exactly 11 ASCII digits.
pub fn my_number_check_digit(first11: &str) -> Option<u8> {
    let digits = ascii_digits::<11>(first11)?;
    let sum: u32 = (1..=11u32)
        .map(|n| {
            // P_n is the n-th digit counted from the right of the base digits.
            let p = u32::from(digits[11 - n as usize]);
            let q = if n <= 6 { n + 1 } else { n - 5 };
            p * q
        })
        .sum();
    let r = sum % 11;
    let check = if r <= 1 { 0 } else { 11 - r };
    // r ≥ 2 here gives 11 − r ≤ 9, so the value always fits one digit.
    u8::try_from(check).ok()
}

/// Whether `s` is a well-formed individual number (マイナンバー, 個人番号).
///
/// True iff `s` is exactly 12 ASCII digits and the last digit equals the check digit over the
/// first 11 defined by 平成26年総務省令第85号 第5条 (see [`my_number_check_digit`]).
/// Whitespace, hyphens and full-width digits are rejected.
///
/// The rule maps both r = 0 and r = 1 to the check digit 0, so for numbers whose check digit is
/// 0 a few single-digit errors go unnoticed; for every other number all of them are caught.
pub fn is_valid_my_number(s: &str) -> bool {
    if s.len() != MY_NUMBER_LEN {
        return false;
    }
    match (s.get(..11), s.as_bytes().last()) {
        (Some(base), Some(&last)) if last.is_ascii_digit() => {
            my_number_check_digit(base) == Some(last - b'0')
        }
        _ => false,
    }
}

/// Check digit of a corporate number (法人番号) from its 12 base digits (the last 12 digits).
///
/// 平成26年財務省令第70号 第2条: number the 12 base digits P1..P12 from the right (P1 is the
/// last digit); the weights are Qn = 1 for odd n and Qn = 2 for even n; the check digit is
/// 9 − ((Σ Pn × Qn) mod 9), which is always between 1 and 9.
///
/// Returns `None` unless `last12` is exactly 12 ASCII digits.
pub fn corporate_number_check_digit(last12: &str) -> Option<u8> {
    let digits = ascii_digits::<12>(last12)?;
    let sum: u32 = (1..=12u32)
        .map(|n| {
            // P_n is the n-th digit counted from the right of the base digits.
            let p = u32::from(digits[12 - n as usize]);
            let q = if n % 2 == 1 { 1 } else { 2 };
            p * q
        })
        .sum();
    u8::try_from(9 - sum % 9).ok()
}

/// Whether `s` is a well-formed corporate number (法人番号).
///
/// True iff `s` is exactly 13 ASCII digits and the FIRST digit equals the check digit over the
/// other 12 defined by 平成26年財務省令第70号 第2条 (see [`corporate_number_check_digit`]).
/// Whitespace, hyphens, the invoice prefix `T` (適格請求書発行事業者登録番号) and full-width
/// digits are rejected.
///
/// The rule works modulo 9, so swapping a base digit 0 for 9 (or 9 for 0) keeps the check digit:
/// those single-digit errors cannot be detected by any implementation of the ordinance.
pub fn is_valid_corporate_number(s: &str) -> bool {
    if s.len() != CORPORATE_NUMBER_LEN {
        return false;
    }
    match (s.as_bytes().first(), s.get(1..)) {
        (Some(&first), Some(base)) if first.is_ascii_digit() => {
            corporate_number_check_digit(base) == Some(first - b'0')
        }
        _ => false,
    }
}

/// Length of a local government code (全国地方公共団体コード): five digits plus a check digit.
pub const LOCAL_GOVERNMENT_CODE_LEN: usize = 6;

/// Check digit of a local government code (全国地方公共団体コード) from its first five digits.
///
/// 昭和45年4月1日行政管理庁告示第44号 (全国地方公共団体コード) as maintained by 総務省: the five
/// digits are weighted 6, 5, 4, 3, 2 from the left; with r = (Σ) mod 11 the check digit is the
/// last digit of 11 − r (so r = 0 gives 1 and r = 1 gives 0).
///
/// Returns `None` unless `first5` is exactly 5 ASCII digits.
pub fn local_government_code_check_digit(first5: &str) -> Option<u8> {
    let digits = ascii_digits::<5>(first5)?;
    let sum: u32 = digits.iter().zip([6u32, 5, 4, 3, 2]).map(|(&d, w)| u32::from(d) * w).sum();
    Some(((11 - sum % 11) % 10) as u8)
}

/// Whether `s` is a local government code (全国地方公共団体コード, e.g. `131130` 渋谷区): six ASCII
/// digits, the first two a prefecture code (JIS X 0401, `01`–`47`), the last the check digit.
pub fn is_valid_local_government_code(s: &str) -> bool {
    let Some(digits) = ascii_digits::<LOCAL_GOVERNMENT_CODE_LEN>(s) else { return false };
    let prefecture = digits[0] * 10 + digits[1];
    (1..=47).contains(&prefecture)
        && s.get(..5).and_then(local_government_code_check_digit) == Some(digits[5])
}

/// Whether `b` may appear in a department id or an event-type token: `[a-z0-9-]`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// Whether `s` is a valid department id (the `source` of an event, e.g. `mhlw`, `city-shibuya`).
///
/// A department id is one NATS subject token: 1 to 64 characters from `[a-z0-9-]`, not starting
/// or ending with `-`. Dots, wildcards (`*`, `>`), whitespace and upper case are rejected.
pub fn is_valid_department_id(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DEPARTMENT_ID_MAX_LEN
        && bytes.iter().all(|&b| is_token_byte(b))
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Whether `s` is a valid event type (and schema subject), e.g. `health.vaccination.recorded`.
///
/// At least two dot-separated tokens, each non-empty and made of `[a-z0-9-]`, at most 200
/// characters in all. Empty tokens (`a..b`, leading or trailing dots), wildcards (`*`, `>`),
/// whitespace and upper case are rejected, so the type can be embedded in a NATS subject.
pub fn is_valid_event_type(s: &str) -> bool {
    if s.is_empty() || s.len() > EVENT_TYPE_MAX_LEN {
        return false;
    }
    let mut tokens = 0usize;
    for token in s.split('.') {
        if token.is_empty() || !token.bytes().all(is_token_byte) {
            return false;
        }
        tokens += 1;
    }
    tokens >= 2
}

/// The prefix of the registry's per-department My Number pseudonyms (`kh1:` + 32 hex digits):
/// the registry writes them, departments such as the issuer check they received one.
pub const PSEUDONYM_PREFIX: &str = "kh1:";

/// Whether `value` is a pseudonym (`kh1:` + 32 hex digits), not a raw My Number.
pub fn is_pseudonym(value: &str) -> bool {
    value
        .strip_prefix(PSEUDONYM_PREFIX)
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Overwrites with `*` every digit of each run that looks like a My Number — exactly
/// [`MY_NUMBER_LEN`] digits, ASCII or full-width (`０`–`９`), optionally grouped by single
/// spaces or hyphens, with no digit right before or after — whatever its check digit (a
/// mistyped number is still someone's). The length in bytes is kept, so a protobuf envelope
/// around the bytes still decodes. Returns how many runs were masked. For output shown to
/// people (the console, dead letters through the API), as defence in depth.
pub fn mask_my_number_like(bytes: &mut [u8]) -> usize {
    // The width in bytes of the digit starting at `i` (1 ASCII, 3 full-width), or 0.
    fn digit_at(b: &[u8], i: usize) -> usize {
        match b.get(i..) {
            Some([d, ..]) if d.is_ascii_digit() => 1,
            Some([0xEF, 0xBC, 0x90..=0x99, ..]) => 3,
            _ => 0,
        }
    }
    let mut masked = 0;
    let mut i = 0;
    while i < bytes.len() {
        if digit_at(bytes, i) == 0 {
            i += 1;
            continue;
        }
        // A run: digits, each group separated from the next by at most one space or hyphen.
        let mut digits: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let w = digit_at(bytes, j);
            if w > 0 {
                digits.push((j, w));
                j += w;
            } else if matches!(bytes.get(j), Some(b' ' | b'-')) && digit_at(bytes, j + 1) > 0 {
                j += 1;
            } else {
                break;
            }
        }
        if digits.len() == MY_NUMBER_LEN {
            for (at, w) in &digits {
                bytes[*at..*at + *w].fill(b'*');
            }
            masked += 1;
        }
        i = j.max(i + 1);
    }
    masked
}

/// [`mask_my_number_like`] on text.
pub fn mask_my_number_like_str(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    if mask_my_number_like(&mut bytes) == 0 {
        return text.to_string();
    }
    // Whole characters (one ASCII or one three-byte full-width digit) become `*`s: still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn my_number_like_runs_are_masked_keeping_length() {
        let mut b = br#"{"my_number":"161803398873","n":1234567890123,"d":"2026-12-02"}"#.to_vec();
        let len = b.len();
        assert_eq!(mask_my_number_like(&mut b), 1);
        assert_eq!(b.len(), len);
        let s = String::from_utf8(b).unwrap_or_default();
        assert!(s.contains(r#""my_number":"************""#), "{s}");
        assert!(s.contains("1234567890123"), "13 digits (a corporate number) stay: {s}");
        assert_eq!(mask_my_number_like_str("no 1234-5678-9012 here"), "no ****-****-**** here");
        assert_eq!(mask_my_number_like_str("１２３４５６７８９０１８"), "*".repeat(36));
        assert_eq!(mask_my_number_like_str("12345678901"), "12345678901");
        assert_eq!(mask_my_number_like_str("x 123456789018."), "x ************.");
    }

    #[test]
    fn local_government_codes_check_their_prefecture_and_check_digit() {
        // 千代田区, 渋谷区, 札幌市, 北海道 (the prefecture's own code), 那覇市, 大阪市.
        for code in ["131016", "131130", "011002", "010006", "472018", "271004"] {
            assert!(is_valid_local_government_code(code), "{code}");
        }
        // r = 0 and r = 1, the two cases where 11 − r has two digits.
        assert_eq!(local_government_code_check_digit("13113"), Some(0));
        assert_eq!(local_government_code_check_digit("01000"), Some(6));
        assert_eq!(local_government_code_check_digit("11000"), Some(1), "6 + 5 = 11, r = 0");
        for code in ["131131", "481130", "001002", "13113", "1311300", "１３１１３０", "13113a", ""] {
            assert!(!is_valid_local_government_code(code), "{code}");
        }
        // Any single changed digit of this code is caught: its r is 1, and no other r gives 0
        // (r = 0 and r = 10 share the check digit 1, so codes ending in 1 are weaker).
        for (pos, digit, changed) in single_digit_changes("131130") {
            assert!(!is_valid_local_government_code(&changed), "digit {pos} -> {digit}: {changed}");
        }
    }

    #[test]
    fn pseudonyms_are_told_from_raw_numbers() {
        assert!(is_pseudonym("kh1:0123456789abcdef0123456789abcdef"));
        assert!(!is_pseudonym("161803398872"));
        assert!(!is_pseudonym("kh1:"));
        assert!(!is_pseudonym("kh1:0123456789abcdef0123456789abcdeg"));
    }

    /// Every string that differs from `s` (ASCII digits) in exactly one position, with the
    /// position and the replacement digit.
    fn single_digit_changes(s: &str) -> Vec<(usize, u8, String)> {
        let mut out = Vec::new();
        for (i, old) in s.bytes().enumerate() {
            for new in b'0'..=b'9' {
                if new != old {
                    let mut bytes = s.as_bytes().to_vec();
                    bytes[i] = new;
                    out.push((i, new, String::from_utf8(bytes).unwrap_or_default()));
                }
            }
        }
        out
    }

    // ---- 個人番号 (My Number) -------------------------------------------------------------

    /// Synthetic numbers with non-zero check digits, computed by hand with 総務省令第85号 第5条.
    /// 123456789018: P1..P11 = 1,0,9,8,7,6,5,4,3,2,1; Σ Pn·Qn = 2+0+36+40+42+42+10+12+12+10+6
    /// = 212; 212 mod 11 = 3; check = 11 − 3 = 8.
    const VALID_MY_NUMBERS: [&str; 4] = [
        "123456789018", // the commonly cited test number
        "111111111118", // Σ Qn = 47, 47 mod 11 = 3, check 8
        "987654321093", // Σ = 228, 228 mod 11 = 8, check 3
        "123456789069", // Σ = 222, 222 mod 11 = 2, check 9
    ];

    #[test]
    fn my_number_check_digit_of_known_numbers() {
        assert_eq!(my_number_check_digit("12345678901"), Some(8));
        assert_eq!(my_number_check_digit("11111111111"), Some(8));
        assert_eq!(my_number_check_digit("98765432109"), Some(3));
        assert_eq!(my_number_check_digit("12345678906"), Some(9));
        // r = 0 and r = 1 both give 0.
        assert_eq!(my_number_check_digit("00000000000"), Some(0)); // Σ = 0, r = 0
        assert_eq!(my_number_check_digit("12345678905"), Some(0)); // Σ = 220, r = 0
        assert_eq!(my_number_check_digit("12345678900"), Some(0)); // Σ = 210, r = 1
    }

    #[test]
    fn my_number_check_digit_rejects_bad_input() {
        assert_eq!(my_number_check_digit(""), None);
        assert_eq!(my_number_check_digit("1234567890"), None);
        assert_eq!(my_number_check_digit("123456789012"), None);
        assert_eq!(my_number_check_digit("1234567890a"), None);
        assert_eq!(my_number_check_digit("１２３４５６７８９０１"), None);
    }

    #[test]
    fn valid_my_numbers_are_accepted() {
        for n in VALID_MY_NUMBERS {
            assert!(is_valid_my_number(n), "{n} should be valid");
        }
        assert!(is_valid_my_number("000000000000"));
        assert!(is_valid_my_number("123456789050"));
        assert!(is_valid_my_number("123456789000"));
    }

    #[test]
    fn every_single_digit_change_of_a_valid_my_number_is_rejected() {
        for n in VALID_MY_NUMBERS {
            let changes = single_digit_changes(n);
            assert_eq!(changes.len(), 12 * 9);
            for (pos, digit, changed) in changes {
                assert!(
                    !is_valid_my_number(&changed),
                    "{n} with digit {} at position {pos} was accepted",
                    digit - b'0'
                );
            }
        }
    }

    /// With check digit 0 the rule cannot tell r = 0 from r = 1, so exactly the single-digit
    /// changes that move r between 0 and 1 survive. For 123456789050 (r = 0) these are the
    /// changes that add 1 (mod 11) to Σ Pn·Qn, found by solving Δ·Qn ≡ 1 (mod 11) per position.
    #[test]
    fn check_digit_zero_misses_exactly_the_r0_r1_confusions() {
        let n = "123456789050";
        let mut accepted: Vec<(usize, u8)> = single_digit_changes(n)
            .into_iter()
            .filter(|(_, _, changed)| is_valid_my_number(changed))
            .map(|(pos, digit, _)| (pos, digit - b'0'))
            .collect();
        accepted.sort_unstable();
        // position (0-based from the left) -> Qn, the needed Δ ≡ Qn⁻¹ (mod 11), and the digit:
        // pos 0: Q=6, Δ=2, 1→3 | pos 1: Q=5, Δ=9, 2→11 ✗ (−2: 2→0) | pos 2: Q=4, Δ=3, 3→6
        // pos 3: Q=3, Δ=4, 4→8 | pos 4: Q=2, Δ=6, 5→11 ✗ (−5: 5→0) | pos 5: Q=7, Δ=8, 6→14 ✗
        //   (−3: 6→3) | pos 6: Q=6, Δ=2, 7→9 | pos 7: Q=5, Δ=9, 8→17 ✗ (−2: 8→6)
        // pos 8: Q=4, Δ=3, 9→12 ✗ (−8: 9→1) | pos 9: Q=3, Δ=4, 0→4 | pos 10: Q=2, Δ=6, 5→11 ✗
        //   (−5: 5→0)
        let expected =
            vec![(0, 3), (1, 0), (2, 6), (3, 8), (4, 0), (5, 3), (6, 9), (7, 6), (8, 1), (9, 4), (10, 0)];
        assert_eq!(accepted, expected);
        // The last of these is the other check-digit-0 number from the unit test above.
        assert!(is_valid_my_number("123456789000"));
    }

    #[test]
    fn malformed_my_numbers_are_rejected() {
        for bad in [
            "",
            "12345678901",   // 11 digits
            "1234567890180", // 13 digits
            "12345678901 8",
            " 123456789018",
            "123456789018 ",
            "1234-5678-9018",
            "12345678901a",
            "a23456789018",
            "12345678901８",            // full-width check digit
            "１２３４５６７８９０１８", // full-width digits
            "+23456789018",
            "-23456789018",
            "12345678901\u{0}",
        ] {
            assert!(!is_valid_my_number(bad), "{bad:?} should be rejected");
        }
    }

    // ---- 法人番号 (corporate number) --------------------------------------------------------

    /// Published corporate numbers of real organisations (国税庁法人番号公表サイト), each verified
    /// with 財務省令第70号 第2条. 国税庁: base 000012050002, Σ = 2+0+0+0+5+0+2+2+0+0+0+0 = 11,
    /// 9 − (11 mod 9) = 7.
    const VALID_CORPORATE_NUMBERS: [(&str, &str); 5] = [
        ("7000012050002", "国税庁"),
        ("1180301018771", "トヨタ自動車株式会社"),
        ("1130001011420", "任天堂株式会社"),
        ("7010001008844", "株式会社日立製作所"),
        ("5010401067252", "ソニーグループ株式会社"),
    ];

    #[test]
    fn corporate_number_check_digit_of_published_numbers() {
        assert_eq!(corporate_number_check_digit("000012050002"), Some(7));
        assert_eq!(corporate_number_check_digit("180301018771"), Some(1));
        assert_eq!(corporate_number_check_digit("130001011420"), Some(1));
        assert_eq!(corporate_number_check_digit("010001008844"), Some(7));
        assert_eq!(corporate_number_check_digit("010401067252"), Some(5));
        // Σ ≡ 0 (mod 9) gives 9, never 0.
        assert_eq!(corporate_number_check_digit("000000000000"), Some(9));
        assert_eq!(corporate_number_check_digit("000000000009"), Some(9));
    }

    #[test]
    fn corporate_number_check_digit_rejects_bad_input() {
        assert_eq!(corporate_number_check_digit(""), None);
        assert_eq!(corporate_number_check_digit("00001205000"), None);
        assert_eq!(corporate_number_check_digit("7000012050002"), None);
        assert_eq!(corporate_number_check_digit("00001205000x"), None);
        assert_eq!(corporate_number_check_digit("００００１２０５０００２"), None);
    }

    #[test]
    fn published_corporate_numbers_are_accepted() {
        for (n, name) in VALID_CORPORATE_NUMBERS {
            assert!(is_valid_corporate_number(n), "{n} ({name}) should be valid");
        }
    }

    /// The ordinance's sum is taken mod 9 and the weights are 1 or 2, so replacing a base digit
    /// 0 by 9 or 9 by 0 changes Σ Pn·Qn by 9 or 18 and keeps the check digit: no checker that
    /// follows 第2条 can reject those. Every other single-digit change must be rejected.
    #[test]
    fn every_detectable_single_digit_change_of_a_corporate_number_is_rejected() {
        for (n, name) in VALID_CORPORATE_NUMBERS {
            let changes = single_digit_changes(n);
            assert_eq!(changes.len(), 13 * 9);
            for (pos, digit, changed) in changes {
                let old = n.as_bytes()[pos];
                let undetectable = pos > 0 && matches!((old, digit), (b'0', b'9') | (b'9', b'0'));
                assert_eq!(
                    is_valid_corporate_number(&changed),
                    undetectable,
                    "{n} ({name}) with digit {} at position {pos}",
                    digit - b'0'
                );
            }
        }
    }

    #[test]
    fn changing_the_corporate_check_digit_is_always_rejected() {
        for (n, _) in VALID_CORPORATE_NUMBERS {
            for (pos, _, changed) in single_digit_changes(n) {
                if pos == 0 {
                    assert!(!is_valid_corporate_number(&changed), "{changed}");
                }
            }
        }
    }

    #[test]
    fn malformed_corporate_numbers_are_rejected() {
        for bad in [
            "",
            "700001205000",   // 12 digits
            "70000120500020", // 14 digits
            "T7000012050002", // invoice registration number, not a corporate number
            "7000-0120-5000-2",
            " 7000012050002",
            "7000012050002 ",
            "700001205000a",
            "x000012050002",
            "７０００００１２０５０００２", // full-width digits
            "700001205000２",               // one full-width digit
            "0000012050002",                // check digit 0 never occurs
        ] {
            assert!(!is_valid_corporate_number(bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn my_numbers_and_corporate_numbers_do_not_cross() {
        for n in VALID_MY_NUMBERS {
            assert!(!is_valid_corporate_number(n));
        }
        for (n, _) in VALID_CORPORATE_NUMBERS {
            assert!(!is_valid_my_number(n));
        }
    }

    // ---- department ids and event types ---------------------------------------------------

    #[test]
    fn department_ids() {
        for ok in ["mhlw", "city-shibuya", "nta", "a", "pref-13", "0", "a-b-c", "city--x"] {
            assert!(is_valid_department_id(ok), "{ok:?} should be valid");
        }
        assert!(is_valid_department_id(&"a".repeat(64)));
        for bad in [
            "",
            "-mhlw",
            "mhlw-",
            "-",
            "MHLW",
            "city_shibuya",
            "city.shibuya",
            "city shibuya",
            "*",
            ">",
            "mhlw*",
            "厚労省",
            "ｍｈｌｗ",
            "mhlw\n",
        ] {
            assert!(!is_valid_department_id(bad), "{bad:?} should be rejected");
        }
        assert!(!is_valid_department_id(&"a".repeat(65)));
    }

    #[test]
    fn event_types() {
        for ok in [
            "health.vaccination.recorded",
            "resident.address.changed",
            "welfare.childcare.allowance.eligibility.determined",
            "a.b",
            "common.person",
            "x-1.y-2",
            "tax.notice.issued",
        ] {
            assert!(is_valid_event_type(ok), "{ok:?} should be valid");
        }
        let long = format!("{}.b", "a".repeat(EVENT_TYPE_MAX_LEN - 2));
        assert_eq!(long.len(), EVENT_TYPE_MAX_LEN);
        assert!(is_valid_event_type(&long));
        let too_long = format!("{}.b", "a".repeat(EVENT_TYPE_MAX_LEN - 1));
        assert!(!is_valid_event_type(&too_long));
        for bad in [
            "",
            "health",
            ".",
            "health.",
            ".health.vaccination",
            "health..vaccination",
            "health.*",
            "health.>",
            "health.*.recorded",
            "Health.Vaccination",
            "health.vaccination_recorded",
            "health.vaccination recorded",
            "health/vaccination",
            "健康.予防接種",
            "health.vaccination\n",
        ] {
            assert!(!is_valid_event_type(bad), "{bad:?} should be rejected");
        }
    }
}
