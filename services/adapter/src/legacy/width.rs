//! Character-width normalisation for legacy Japanese text.
//!
//! Legacy exports mix full-width ASCII (`１２３`, `ＡＢＣ`), the ideographic space U+3000 used as
//! padding, and JIS X 0201 half-width katakana (`ｶﾀｶﾅ`). These helpers fold each to the form
//! the bus stores: ASCII for letters and digits, full-width (precomposed) for katakana.

use std::borrow::Cow;

/// The ideographic (full-width) space, common as padding in fixed-width exports.
const IDEOGRAPHIC_SPACE: char = '\u{3000}';

/// Characters JIS-based converters (iconv's `SHIFT_JIS`, `EUC-JP`, many mainframe tools) write
/// for Shift_JIS bytes that CP932 (as Windows and encoding_rs decode it) reads as another
/// character, each with what the fold makes of both: a value then gives the same key whether
/// its file came as CP932 or as UTF-8 from such a converter. The byte is in the comment; the
/// CP932 side is checked against encoding_rs in the tests.
const JIS_FORMS: [(char, char); 7] = [
    ('\u{2014}', '\u{2015}'), // 0x815C EM DASH; CP932 HORIZONTAL BAR
    ('\u{301C}', '~'),        // 0x8160 WAVE DASH; CP932 FULLWIDTH TILDE, folded to `~`
    ('\u{2016}', '\u{2225}'), // 0x8161 DOUBLE VERTICAL LINE; CP932 PARALLEL TO
    ('\u{2212}', '-'),        // 0x817C MINUS SIGN; CP932 FULLWIDTH HYPHEN-MINUS, folded to `-`
    ('\u{00A2}', '\u{00A2}'), // 0x8191 CENT SIGN; CP932 FULLWIDTH CENT SIGN, folded to it
    ('\u{00A3}', '\u{00A3}'), // 0x8192 POUND SIGN; CP932 FULLWIDTH POUND SIGN, folded to it
    ('\u{00AC}', '\u{00AC}'), // 0x81CA NOT SIGN; CP932 FULLWIDTH NOT SIGN, folded to it
];

/// CP932's full-width cent, pound and not signs (U+FFE0–U+FFE2), folded to the Latin-1 signs
/// JIS-based converters write for the same bytes.
fn fullwidth_sign(c: char) -> Option<char> {
    match c {
        '\u{FFE0}' => Some('\u{00A2}'),
        '\u{FFE1}' => Some('\u{00A3}'),
        '\u{FFE2}' => Some('\u{00AC}'),
        _ => None,
    }
}

/// The fold of a JIS-converter form (see [`JIS_FORMS`]), if `c` is one that changes.
fn jis_form(c: char) -> Option<char> {
    JIS_FORMS.iter().find(|(jis, _)| *jis == c).map(|(_, folded)| *folded).filter(|f| *f != c)
}

/// Folds full-width ASCII (U+FF01–U+FF5E) to ASCII, U+3000 to a plain space, CP932's full-width
/// cent, pound and not signs to the Latin-1 ones, and the characters JIS-based converters write
/// for bytes CP932 reads otherwise ([`JIS_FORMS`]: the wave dash to `~`, the minus sign to `-`,
/// …) to what CP932's reading folds to, so the same value gives the same key whatever the
/// file's encoding.
///
/// Borrows the input unchanged when there is nothing to fold (the common case for clean data).
pub fn fold_to_halfwidth(s: &str) -> Cow<'_, str> {
    // ASCII never folds: the common case costs one comparison per character.
    let folds = |c: char| {
        !c.is_ascii()
            && (is_fullwidth_ascii(c)
                || c == IDEOGRAPHIC_SPACE
                || fullwidth_sign(c).is_some()
                || jis_form(c).is_some())
    };
    if !s.chars().any(folds) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                c if c.is_ascii() => c,
                IDEOGRAPHIC_SPACE => ' ',
                // The full-width block mirrors ASCII 0x21..=0x7E at a fixed distance.
                c if is_fullwidth_ascii(c) => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
                c => fullwidth_sign(c).or_else(|| jis_form(c)).unwrap_or(c),
            })
            .collect(),
    )
}

fn is_fullwidth_ascii(c: char) -> bool {
    ('\u{FF01}'..='\u{FF5E}').contains(&c)
}

/// Trims ASCII whitespace and the ideographic space U+3000 from both ends.
pub fn trim_spaces(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace() || c == IDEOGRAPHIC_SPACE)
}

/// Full-width equivalents of U+FF61..=U+FF9F, in code point order.
const KATAKANA_FULL: [char; 63] = [
    '。', '「', '」', '、', '・', 'ヲ', 'ァ', 'ィ', 'ゥ', 'ェ', 'ォ', 'ャ', 'ュ', 'ョ', 'ッ', 'ー', 'ア',
    'イ', 'ウ', 'エ', 'オ', 'カ', 'キ', 'ク', 'ケ', 'コ', 'サ', 'シ', 'ス', 'セ', 'ソ', 'タ', 'チ', 'ツ',
    'テ', 'ト', 'ナ', 'ニ', 'ヌ', 'ネ', 'ノ', 'ハ', 'ヒ', 'フ', 'ヘ', 'ホ', 'マ', 'ミ', 'ム', 'メ', 'モ',
    'ヤ', 'ユ', 'ヨ', 'ラ', 'リ', 'ル', 'レ', 'ロ', 'ワ', 'ン', '゛', '゜',
];

/// Half-width voiced sound mark (dakuten) and semi-voiced mark (handakuten).
const HALF_VOICED: char = '\u{FF9E}';
const HALF_SEMI_VOICED: char = '\u{FF9F}';

/// Converts half-width katakana (U+FF61–U+FF9F) to full-width katakana.
///
/// A half-width voiced mark that follows a kana able to take it is combined into the
/// precomposed character (`ｶﾞ` → `ガ`, `ﾊﾟ` → `パ`, `ｳﾞ` → `ヴ`), because downstream systems
/// compare names as strings and the decomposed form would never match. A mark that cannot
/// combine becomes the spacing mark `゛` / `゜`. Everything else passes through unchanged.
pub fn katakana_to_fullwidth(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_halfwidth_katakana) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let combined = match c {
            HALF_VOICED => out.pop().map(|prev| (prev, voiced(prev))),
            HALF_SEMI_VOICED => out.pop().map(|prev| (prev, semi_voiced(prev))),
            _ => None,
        };
        match combined {
            Some((_, Some(precomposed))) => out.push(precomposed),
            Some((prev, None)) => {
                out.push(prev);
                out.push(to_full(c));
            }
            None => out.push(to_full(c)),
        }
    }
    Cow::Owned(out)
}

fn is_halfwidth_katakana(c: char) -> bool {
    ('\u{FF61}'..='\u{FF9F}').contains(&c)
}

fn to_full(c: char) -> char {
    if is_halfwidth_katakana(c) {
        KATAKANA_FULL[(c as u32 - 0xFF61) as usize]
    } else {
        c
    }
}

/// The voiced (dakuten) form of a full-width katakana, if it has one.
fn voiced(c: char) -> Option<char> {
    match c {
        'ウ' => Some('ヴ'),
        'ワ' => Some('ヷ'),
        'ヲ' => Some('ヺ'),
        // In the katakana block each of these is directly followed by its voiced form
        // (カガ キギ … トド, and ハバパ for ハ行).
        'カ' | 'キ' | 'ク' | 'ケ' | 'コ' | 'サ' | 'シ' | 'ス' | 'セ' | 'ソ' | 'タ' | 'チ' | 'ツ' | 'テ'
        | 'ト' | 'ハ' | 'ヒ' | 'フ' | 'ヘ' | 'ホ' => char::from_u32(c as u32 + 1),
        _ => None,
    }
}

/// The semi-voiced (handakuten) form of a full-width katakana: only ハ行 has one.
fn semi_voiced(c: char) -> Option<char> {
    match c {
        'ハ' | 'ヒ' | 'フ' | 'ヘ' | 'ホ' => char::from_u32(c as u32 + 2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fullwidth_digits_letters_and_ideographic_space_fold_to_ascii() {
        assert_eq!(fold_to_halfwidth("１２３ＡＢＣｘｙｚ　！～"), "123ABCxyz !~");
    }

    /// The Shift_JIS bytes of each [`JIS_FORMS`] entry, in order.
    const JIS_FORM_BYTES: [[u8; 2]; 7] =
        [[0x81, 0x5C], [0x81, 0x60], [0x81, 0x61], [0x81, 0x7C], [0x81, 0x91], [0x81, 0x92], [0x81, 0xCA]];

    #[test]
    fn each_jis_form_folds_like_what_cp932_decodes_its_bytes_to() {
        for ((jis, _), bytes) in JIS_FORMS.iter().zip(JIS_FORM_BYTES) {
            let (cp932, _, bad) = encoding_rs::SHIFT_JIS.decode(&bytes);
            assert!(!bad, "{bytes:02X?} decodes");
            assert_ne!(cp932.chars().next(), Some(*jis), "{bytes:02X?}: CP932 reads another character");
            assert_eq!(fold_to_halfwidth(&jis.to_string()), fold_to_halfwidth(&cp932), "{bytes:02X?}");
        }
    }

    proptest::proptest! {
        /// Text as a JIS-based converter writes it and as CP932 decodes the same bytes folds to
        /// the same value, whatever surrounds the differing characters.
        #[test]
        fn jis_and_cp932_readings_of_the_same_bytes_fold_alike(
            parts in proptest::collection::vec(("[a-zA-Z0-9 ー山田太郎ｶﾞ１２ＡＢ-]{0,4}", 0..7usize), 0..6)
        ) {
            let (mut jis, mut cp932) = (String::new(), String::new());
            for (text, form) in &parts {
                jis.push_str(text);
                cp932.push_str(text);
                jis.push(JIS_FORMS[*form].0);
                let (decoded, _, _) = encoding_rs::SHIFT_JIS.decode(&JIS_FORM_BYTES[*form]);
                cp932.push_str(&decoded);
            }
            proptest::prop_assert_eq!(fold_to_halfwidth(&jis), fold_to_halfwidth(&cp932));
        }

        /// Folding twice changes nothing more: a stored key folds to itself.
        #[test]
        fn folding_is_idempotent(s in "[ -~　-〜！-～￠-￢—―‖∥−¢£¬山ｶﾞ]{0,24}") {
            let once = fold_to_halfwidth(&s).into_owned();
            proptest::prop_assert_eq!(fold_to_halfwidth(&once), once.as_str());
        }
    }

    #[test]
    fn wave_dash_folds_like_the_fullwidth_tilde_cp932_decodes_to() {
        // CP932 0x8160 decodes to U+FF5E; JIS-based UTF-8 converters write U+301C for it.
        assert_eq!(fold_to_halfwidth("1〜3"), fold_to_halfwidth("1～3"));
        assert_eq!(fold_to_halfwidth("1〜3"), "1~3");
    }

    #[test]
    fn clean_ascii_is_borrowed_not_copied() {
        assert!(matches!(fold_to_halfwidth("R01.05.01"), Cow::Borrowed(_)));
        assert!(matches!(katakana_to_fullwidth("ヤマダ"), Cow::Borrowed(_)));
    }

    #[test]
    fn folding_leaves_kanji_and_kana_alone() {
        assert_eq!(fold_to_halfwidth("令和元年５月"), "令和元年5月");
        assert_eq!(fold_to_halfwidth("ｶﾀｶﾅ"), "ｶﾀｶﾅ");
    }

    #[test]
    fn trim_removes_ascii_and_ideographic_spaces_at_both_ends_only() {
        assert_eq!(trim_spaces("　 山田　太郎 \t　"), "山田　太郎");
        assert_eq!(trim_spaces("　　"), "");
    }

    #[test]
    fn halfwidth_katakana_becomes_fullwidth() {
        assert_eq!(katakana_to_fullwidth("ﾔﾏﾀﾞ ﾀﾛｳ"), "ヤマダ タロウ");
        assert_eq!(katakana_to_fullwidth("ｷｬｯﾁｰ｡"), "キャッチー。");
    }

    #[test]
    fn voiced_marks_combine_into_precomposed_characters() {
        assert_eq!(katakana_to_fullwidth("ｶﾞｷﾞｸﾞｹﾞｺﾞ"), "ガギグゲゴ");
        assert_eq!(katakana_to_fullwidth("ｻﾞｼﾞｽﾞｾﾞｿﾞ"), "ザジズゼゾ");
        assert_eq!(katakana_to_fullwidth("ﾀﾞﾁﾞﾂﾞﾃﾞﾄﾞ"), "ダヂヅデド");
        assert_eq!(katakana_to_fullwidth("ﾊﾞﾋﾞﾌﾞﾍﾞﾎﾞ"), "バビブベボ");
        assert_eq!(katakana_to_fullwidth("ﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ"), "パピプペポ");
        assert_eq!(katakana_to_fullwidth("ｳﾞｧｲｵﾘﾝ"), "ヴァイオリン");
    }

    #[test]
    fn lone_or_uncombinable_marks_become_spacing_marks() {
        assert_eq!(katakana_to_fullwidth("ﾞ"), "゛");
        assert_eq!(katakana_to_fullwidth("ｱﾞ"), "ア゛");
        assert_eq!(katakana_to_fullwidth("ｶﾟ"), "カ゜");
        assert_eq!(katakana_to_fullwidth("Aﾟ"), "A゜");
    }

    #[test]
    fn fullwidth_table_covers_the_whole_halfwidth_block() {
        // Every half-width katakana maps to something outside the half-width block.
        for cp in 0xFF61..=0xFF9F_u32 {
            let c = char::from_u32(cp).expect("valid code point");
            assert!(!is_halfwidth_katakana(to_full(c)), "U+{cp:04X}");
        }
        assert_eq!(to_full('ﾝ'), 'ン');
        assert_eq!(to_full('ｦ'), 'ヲ');
    }
}
