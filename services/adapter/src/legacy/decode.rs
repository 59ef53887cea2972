//! Text encodings of legacy files: UTF-8 and Shift_JIS as Windows really writes it (CP932).
//!
//! Records are split on raw bytes first (see [`super::records`]) and each field is decoded here,
//! so byte offsets stay exact in the original file. Decoding never substitutes U+FFFD: a byte
//! sequence that is not valid in the file's encoding is reported with its offset, because a
//! silently mangled name or address is worse than a rejected row. For the same reason a user-defined
//! character (外字, a Private Use Area code point) is refused with its offset.

use std::io::{self, Read};

/// The UTF-8 byte order mark some Windows tools write at the start of a file.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// How many bytes [`sniff`] looks at when a stream cannot be scanned twice.
pub const SNIFF_BYTES: usize = 64 * 1024;

/// The text encoding of a legacy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Encoding {
    /// UTF-8, with or without a byte order mark.
    Utf8,
    /// Shift_JIS, decoded as CP932 (Windows-31J) — which is what encoding_rs's `SHIFT_JIS` is,
    /// per the WHATWG Encoding Standard — so NEC and IBM extension characters (①, ㈱, 髙, 﨑)
    /// decode correctly.
    ShiftJis,
    /// Not known in advance: a UTF-8 BOM or valid UTF-8 means UTF-8, anything else CP932.
    #[default]
    Auto,
}

impl Encoding {
    /// Parses a configuration name (case-insensitive): `utf-8`/`utf8`,
    /// `shift_jis`/`shift-jis`/`sjis`/`cp932`/`windows-31j`, or `auto`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(Self::Utf8),
            "shift_jis" | "shift-jis" | "sjis" | "cp932" | "windows-31j" => Some(Self::ShiftJis),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// A human-readable name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Utf8 => "UTF-8",
            Self::ShiftJis => "Shift_JIS (CP932)",
            Self::Auto => "auto-detected encoding",
        }
    }

    /// Whether `byte` can never occur inside a multi-byte character of this encoding, so raw
    /// bytes may safely be split on it. UTF-8 continuation bytes are all >= 0x80; CP932 trail
    /// bytes are 0x40..=0x7E and 0x80..=0xFC, so only ASCII below 0x40 is safe there
    /// (`,` `\t` `;` `"` `\n` `\r` are; `|` and `\` are not).
    pub fn is_safe_separator(self, byte: u8) -> bool {
        match self {
            Self::Utf8 => byte.is_ascii(),
            Self::ShiftJis | Self::Auto => byte < 0x40,
        }
    }
}

/// Resolves `Auto` by reading the whole stream once, in constant memory: a UTF-8 BOM or a
/// stream that is valid UTF-8 throughout is UTF-8, anything else CP932. Other values are
/// returned unchanged without reading. The caller rewinds the stream afterwards.
pub fn detect<R: Read>(encoding: Encoding, mut input: R) -> io::Result<Encoding> {
    if encoding != Encoding::Auto {
        return Ok(encoding);
    }
    let mut buf = vec![0u8; SNIFF_BYTES];
    // Bytes of a UTF-8 sequence cut by the chunk boundary, carried into the next chunk.
    let mut carry = 0usize;
    let mut first = true;
    loop {
        let n = match input.read(&mut buf[carry..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let filled = carry + n;
        if first && buf[..filled].starts_with(UTF8_BOM) {
            return Ok(Encoding::Utf8);
        }
        first = false;
        let at_end = n == 0;
        match std::str::from_utf8(&buf[..filled]) {
            Ok(_) if at_end => return Ok(Encoding::Utf8),
            Ok(_) => carry = 0,
            // `error_len() == None` means the chunk merely ends inside a sequence.
            Err(e) if e.error_len().is_none() && !at_end => {
                let valid = e.valid_up_to();
                buf.copy_within(valid..filled, 0);
                carry = filled - valid;
            }
            Err(_) => return Ok(Encoding::ShiftJis),
        }
    }
}

/// Resolves `Auto` from a prefix of the input only (for streams that cannot be rewound):
/// a BOM or a prefix that is valid UTF-8 (allowing a sequence cut at its end) means UTF-8.
pub fn sniff(encoding: Encoding, prefix: &[u8]) -> Encoding {
    if encoding != Encoding::Auto {
        return encoding;
    }
    match std::str::from_utf8(prefix) {
        Ok(_) => Encoding::Utf8,
        Err(e) if e.error_len().is_none() => Encoding::Utf8,
        Err(_) if prefix.starts_with(UTF8_BOM) => Encoding::Utf8,
        Err(_) => Encoding::ShiftJis,
    }
}

/// Whether `bytes`, read as CP932, are more likely UTF-8: valid UTF-8 containing at least one
/// multibyte sequence. Such bytes are often valid CP932 too (UTF-8 `佐藤　健` reads as
/// `菴占陸縲蛛･`), so decoding them would silently produce mojibake. Real CP932 text with
/// non-ASCII characters is very rarely valid UTF-8; pure ASCII never matches. Returns the
/// offset of the first non-ASCII byte when the bytes look like UTF-8.
pub fn utf8_in_cp932(bytes: &[u8]) -> Option<usize> {
    let first = bytes.iter().position(|b| !b.is_ascii())?;
    std::str::from_utf8(&bytes[first..]).is_ok().then_some(first)
}

/// Bytes of a field that are not accepted as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// Offset of the first bad byte, relative to the start of the decoded slice.
    pub offset: usize,
    /// Why the bytes are refused.
    pub kind: UndecodableKind,
}

/// Why a field's bytes are not accepted as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UndecodableKind {
    /// Not valid in the expected encoding.
    Invalid,
    /// A Private Use Area character (see [`is_private_use`]).
    PrivateUse,
}

impl Undecodable {
    fn invalid(offset: usize) -> Self {
        Self { offset, kind: UndecodableKind::Invalid }
    }
}

/// Whether `c` is a Private Use Area code point: U+E000–U+F8FF, or planes 15–16.
///
/// CP932 user-defined characters (外字, lead bytes 0xF0–0xF9) decode to U+E000–U+E757, and
/// UTF-8 exports carry 外字 the same way. What such a character looks like depends on the
/// sending system's private font, so it is no name at all to anyone else: refused, not passed on.
pub fn is_private_use(c: char) -> bool {
    ('\u{E000}'..='\u{F8FF}').contains(&c) || c >= '\u{F0000}'
}

/// Decodes one field without replacement, refusing Private Use Area characters (外字). `Auto`
/// (normally resolved before reading) decodes as UTF-8 when valid and as CP932 otherwise.
pub fn decode_field(bytes: &[u8], encoding: Encoding) -> Result<String, Undecodable> {
    match encoding {
        Encoding::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) => utf8_without_private_use(s),
            Err(e) => Err(Undecodable::invalid(e.valid_up_to())),
        },
        Encoding::ShiftJis => decode_cp932(bytes),
        Encoding::Auto => match std::str::from_utf8(bytes) {
            Ok(s) => utf8_without_private_use(s),
            Err(_) => decode_cp932(bytes),
        },
    }
}

fn utf8_without_private_use(s: &str) -> Result<String, Undecodable> {
    match s.char_indices().find(|&(_, c)| is_private_use(c)) {
        Some((offset, _)) => Err(Undecodable { offset, kind: UndecodableKind::PrivateUse }),
        None => Ok(s.to_owned()),
    }
}

fn decode_cp932(bytes: &[u8]) -> Result<String, Undecodable> {
    // ASCII is identical in CP932 except that 0x5C/0x7E are Windows' yen/overline glyphs;
    // WHATWG maps them to U+005C/U+007E as Windows does, so the fast path agrees.
    if bytes.is_ascii() {
        return Ok(String::from_utf8_lossy(bytes).into_owned());
    }
    let mut decoder = encoding_rs::SHIFT_JIS.new_decoder_without_bom_handling();
    let capacity =
        decoder.max_utf8_buffer_length_without_replacement(bytes.len()).ok_or(Undecodable::invalid(0))?;
    let mut out = String::with_capacity(capacity);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut out, true);
    match result {
        encoding_rs::DecoderResult::InputEmpty => match out.chars().position(is_private_use) {
            None => Ok(out),
            Some(n) => {
                Err(Undecodable { offset: cp932_char_start(bytes, n), kind: UndecodableKind::PrivateUse })
            }
        },
        // The malformed sequence is `bad` bytes long and ends `after` bytes before `read`.
        encoding_rs::DecoderResult::Malformed(bad, after) => {
            Err(Undecodable::invalid(read.saturating_sub(usize::from(after) + usize::from(bad))))
        }
        // Cannot happen with a buffer of the maximum length; report rather than panic.
        encoding_rs::DecoderResult::OutputFull => Err(Undecodable::invalid(read)),
    }
}

/// The byte offset of the `n`th character of `bytes`, which decoded as CP932 without error, so
/// the lead bytes 0x81–0x9F and 0xE0–0xFC each start a two-byte character and any other byte is
/// a character of its own (WHATWG Shift_JIS decoder).
fn cp932_char_start(bytes: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        at += if matches!(bytes.get(at), Some(0x81..=0x9F | 0xE0..=0xFC)) { 2 } else { 1 };
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp932(s: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(s);
        assert!(!unmappable, "test text must be encodable in CP932");
        bytes.into_owned()
    }

    #[test]
    fn nec_and_ibm_extension_characters_decode_from_cp932() {
        let text = "①㈱髙﨑ｶﾀｶﾅ山田";
        let bytes = cp932(text);
        // Real CP932 code points: ① = 87 40 (NEC row 13), 髙 = FB FC (IBM extension).
        assert_eq!(&bytes[..2], &[0x87, 0x40]);
        assert!(bytes.windows(2).any(|w| w == [0xFB, 0xFC]));
        assert_eq!(decode_field(&bytes, Encoding::ShiftJis), Ok(text.to_string()));
    }

    #[test]
    fn cp932_backslash_trail_byte_decodes_inside_character() {
        // ソ is 83 5C: the trail byte is ASCII '\', which must not be read on its own.
        assert_eq!(decode_field(&cp932("ソフト"), Encoding::ShiftJis).as_deref(), Ok("ソフト"));
    }

    #[test]
    fn invalid_cp932_bytes_are_an_error_with_offset_not_replacement() {
        let mut bytes = cp932("山田");
        bytes.extend_from_slice(&[0x85, 0x40]); // an unassigned CP932 code point
        bytes.extend_from_slice(&cp932("太郎"));
        assert_eq!(decode_field(&bytes, Encoding::ShiftJis), Err(Undecodable::invalid(4)));
        // A lead byte cut off at the end of a field.
        assert_eq!(decode_field(&[0x41, 0x82], Encoding::ShiftJis), Err(Undecodable::invalid(1)));
    }

    #[test]
    fn utf8_in_cp932_flags_multibyte_utf8_only() {
        assert_eq!(utf8_in_cp932("2,佐藤　健".as_bytes()), Some(2));
        assert_eq!(utf8_in_cp932(b"2,Tanaka Ken"), None);
        assert_eq!(utf8_in_cp932(&cp932("2,渋谷　髙橋①")), None);
    }

    #[test]
    fn cp932_user_defined_characters_are_refused_with_their_offset() {
        // 外字: lead bytes 0xF0–0xF9 decode to Private Use Area code points (U+E000…).
        let refused = Undecodable { offset: 0, kind: UndecodableKind::PrivateUse };
        assert_eq!(decode_field(&[0xF0, 0x40], Encoding::ShiftJis), Err(refused));
        let mut bytes = cp932("山田");
        bytes.extend_from_slice(&[0xF9, 0xFC]); // the last 外字 code point, U+E757
        bytes.extend_from_slice(&cp932("郎"));
        assert_eq!(decode_field(&bytes, Encoding::ShiftJis).map_err(|e| e.offset), Err(4));
        // One-byte characters before it (ASCII, half-width katakana) count as one byte.
        let mut bytes = cp932("Aｱ髙");
        bytes.extend_from_slice(&[0xF5, 0x80]);
        assert_eq!(decode_field(&bytes, Encoding::ShiftJis).map_err(|e| e.offset), Err(4));
        assert!(decode_field(&[0xF0, 0x40], Encoding::Auto).is_err());
    }

    #[test]
    fn utf8_private_use_characters_are_refused_with_their_offset() {
        for encoding in [Encoding::Utf8, Encoding::Auto] {
            let refused = |s: &str| decode_field(s.as_bytes(), encoding).map_err(|e| e.offset);
            assert_eq!(refused("山\u{E000}"), Err(3));
            assert_eq!(refused("a\u{F8FF}"), Err(1));
            // The supplementary private use planes (15 and 16) too.
            assert_eq!(refused("\u{F0000}"), Err(0));
            // Just outside the BMP Private Use Area (U+F900 is a CJK compatibility ideograph).
            assert_eq!(refused("\u{D7FF}\u{F900}"), Ok("\u{D7FF}\u{F900}".to_string()));
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_with_offset() {
        assert_eq!(decode_field(b"ab\xFFc", Encoding::Utf8), Err(Undecodable::invalid(2)));
    }

    #[test]
    fn detect_finds_utf8_with_and_without_bom() {
        let with_bom = [UTF8_BOM, "氏名,山田\n".as_bytes()].concat();
        assert_eq!(detect(Encoding::Auto, &with_bom[..]).ok(), Some(Encoding::Utf8));
        assert_eq!(detect(Encoding::Auto, "氏名,山田\n".as_bytes()).ok(), Some(Encoding::Utf8));
    }

    #[test]
    fn detect_finds_cp932_after_a_long_ascii_prefix() {
        // The non-ASCII text appears only after the first chunk: a full scan still sees it.
        let mut bytes = vec![b'a'; SNIFF_BYTES + 10];
        bytes.extend(cp932("渋谷区①"));
        assert_eq!(detect(Encoding::Auto, &bytes[..]).ok(), Some(Encoding::ShiftJis));
        assert_eq!(sniff(Encoding::Auto, &bytes[..SNIFF_BYTES]), Encoding::Utf8);
    }

    #[test]
    fn detect_handles_utf8_sequences_split_across_chunks() {
        // Place a 3-byte character so that it straddles the chunk boundary.
        let mut bytes = vec![b'a'; SNIFF_BYTES - 1];
        bytes.extend("渋谷".as_bytes());
        assert_eq!(detect(Encoding::Auto, &bytes[..]).ok(), Some(Encoding::Utf8));
    }

    #[test]
    fn explicit_encodings_are_not_second_guessed() {
        assert_eq!(detect(Encoding::ShiftJis, "abc".as_bytes()).ok(), Some(Encoding::ShiftJis));
        assert_eq!(sniff(Encoding::Utf8, &[0x82, 0xA0]), Encoding::Utf8);
        assert_eq!(sniff(Encoding::Auto, &cp932("あ")), Encoding::ShiftJis);
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!(Encoding::from_name("CP932"), Some(Encoding::ShiftJis));
        assert_eq!(Encoding::from_name("Shift_JIS"), Some(Encoding::ShiftJis));
        assert_eq!(Encoding::from_name("utf-8"), Some(Encoding::Utf8));
        assert_eq!(Encoding::from_name("euc-jp"), None);
    }

    #[test]
    fn separator_safety_follows_trail_byte_ranges() {
        assert!(Encoding::ShiftJis.is_safe_separator(b','));
        assert!(Encoding::ShiftJis.is_safe_separator(b'\t'));
        assert!(!Encoding::ShiftJis.is_safe_separator(b'|'));
        assert!(Encoding::Utf8.is_safe_separator(b'|'));
    }
}
