//! Japanese era (和暦) and Gregorian date parsing to ISO 8601 (`YYYY-MM-DD`).
//!
//! Accepted forms, after full-width → ASCII folding and trimming of ASCII/ideographic spaces:
//! - era name + year + month + day: `令和元年5月1日`, `昭和６４年１月７日`, `平成 31年 4月 30日`
//! - short forms (JIS X 0301 style): `R01.05.01`, `H31/4/30`, `s64-1-7`, `Ｈ３１．０４．３０`
//! - one-kanji era abbreviations as printed on forms: `昭50.4.1`, `平31年4月30日`
//! - era square characters: `㍻31年4月30日`, `㋿元年5月1日` (also ㍾ ㍽ ㍼)
//! - Gregorian: `2024-02-29`, `2024/02/29`, `2024.02.29`, `20240229`, `2024年2月29日`
//!
//! Era names are M/明治, T/大正, S/昭和, H/平成, R/令和; the year may be `元` (first year).
//! Dates outside the era's real span are refused rather than rolled over (`平成31年5月1日` did not
//! exist), and Meiji dates before 1873-01-01 are refused because they were lunisolar-calendar
//! dates whose Gregorian equivalent needs a conversion table, not arithmetic.

use std::fmt;

use super::width::{fold_to_halfwidth, trim_spaces};

/// A validated Gregorian calendar date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Gregorian year, 1..=9999 for parsed dates.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month, 1..=31 as the month allows.
    pub day: u8,
}

impl Date {
    /// The date as ISO 8601 `YYYY-MM-DD`.
    pub fn to_iso(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

const fn date(year: i32, month: u8, day: u8) -> Date {
    Date { year, month, day }
}

/// The first day of the Gregorian calendar in Japan (明治6年1月1日).
const GREGORIAN_ADOPTED: Date = date(1873, 1, 1);

/// A modern Japanese era.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// 明治, from 1868-10-23.
    Meiji,
    /// 大正, from 1912-07-30.
    Taisho,
    /// 昭和, from 1926-12-25.
    Showa,
    /// 平成, from 1989-01-08.
    Heisei,
    /// 令和, from 2019-05-01.
    Reiwa,
}

/// Eras in order with their kanji name, one-kanji and letter abbreviations, first day and
/// square character. The squares ㍾㍽㍼㍻ are CP932 0x878D, 0x878E, 0x878F, 0x877E (NEC row 13)
/// and appear in old exports; ㋿ (Unicode 12) only occurs in UTF-8. NFKC maps each to the era's
/// name, so they are matched here rather than pulling in a normalisation crate.
const ERAS: [(Era, &str, &str, char, Date, char); 5] = [
    (Era::Meiji, "明治", "明", 'M', date(1868, 10, 23), '\u{337E}'),
    (Era::Taisho, "大正", "大", 'T', date(1912, 7, 30), '\u{337D}'),
    (Era::Showa, "昭和", "昭", 'S', date(1926, 12, 25), '\u{337C}'),
    (Era::Heisei, "平成", "平", 'H', date(1989, 1, 8), '\u{337B}'),
    (Era::Reiwa, "令和", "令", 'R', date(2019, 5, 1), '\u{32FF}'),
];

impl Era {
    fn index(self) -> usize {
        self as usize
    }

    /// The era's kanji name, e.g. `平成`.
    pub fn name(self) -> &'static str {
        ERAS[self.index()].1
    }

    /// The era's first day (Gregorian).
    pub fn first_day(self) -> Date {
        ERAS[self.index()].4
    }

    /// The era's last day, the day before the next era starts; `None` for the current era.
    pub fn last_day(self) -> Option<Date> {
        ERAS.get(self.index() + 1).map(|next| day_before(next.4))
    }
}

impl fmt::Display for Era {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a date could not be parsed. Display includes the input: dates are not secret, and the
/// mapping layer withholds it for fields marked as personal data (use [`EraError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EraError {
    /// Nothing but spaces.
    Empty,
    /// The text does not have the shape of any accepted date form.
    Malformed {
        /// The original input.
        input: String,
        /// Which part is wrong or missing.
        reason: &'static str,
    },
    /// Year 0 was written; eras start at 元年 (1) and the Gregorian calendar at 1.
    YearZero {
        /// The original input.
        input: String,
    },
    /// The month or day does not exist in the Gregorian calendar (e.g. 2023-02-29).
    NoSuchDay {
        /// The original input.
        input: String,
        /// The Gregorian year, month and day that were asked for.
        year: i32,
        /// Month as written.
        month: u32,
        /// Day as written.
        day: u32,
    },
    /// The date lies outside the era's span (e.g. 平成31年5月1日 is 令和元年5月1日).
    OutsideEra {
        /// The original input.
        input: String,
        /// The era that was written.
        era: Era,
    },
    /// A Meiji date before 1873-01-01: it was a lunisolar-calendar date, which arithmetic on
    /// the era year cannot convert correctly.
    LunisolarCalendar {
        /// The original input.
        input: String,
    },
}

impl EraError {
    /// What is wrong, without repeating the input (for reject files and personal data).
    pub fn reason(&self) -> String {
        match self {
            Self::Empty => "empty date".to_string(),
            Self::Malformed { reason, .. } => format!("not a date: {reason}"),
            Self::YearZero { .. } => "year 0 does not exist (the first year is 元年 / 1)".into(),
            // The date itself is left out: for a personal-data field it is the value.
            Self::NoSuchDay { .. } => "no such day in the Gregorian calendar".into(),
            Self::OutsideEra { era, .. } => match era.last_day() {
                Some(last) => format!("{era} runs from {} to {last}", era.first_day()),
                None => format!("{era} starts on {}", era.first_day()),
            },
            Self::LunisolarCalendar { .. } => "Meiji dates before 明治6年 (1873-01-01) are \
                 lunisolar-calendar dates and cannot be converted by arithmetic"
                .into(),
        }
    }
}

impl fmt::Display for EraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty date"),
            Self::Malformed { input, .. }
            | Self::YearZero { input }
            | Self::NoSuchDay { input, .. }
            | Self::OutsideEra { input, .. }
            | Self::LunisolarCalendar { input } => write!(f, "{input:?}: {}", self.reason()),
        }
    }
}

/// Parses an era or Gregorian date (see the module docs for the forms) and validates it.
pub fn parse_date(input: &str) -> Result<Date, EraError> {
    let folded = fold_to_halfwidth(input);
    let text = trim_spaces(&folded);
    if text.is_empty() {
        return Err(EraError::Empty);
    }
    let malformed = |reason| EraError::Malformed { input: input.to_string(), reason };
    let (era, rest) = split_era(text);
    let mut cur = Cursor { rest };
    cur.skip_spaces();

    let (year, month, day) = match era {
        Some(_) => {
            let year = if cur.eat('元') { 1 } else { cur.number(1, 4).ok_or(malformed("no year"))? };
            let (month, day) = month_day(&mut cur).map_err(malformed)?;
            (year, month, day)
        }
        None if cur.rest.len() == 8 && cur.rest.bytes().all(|b| b.is_ascii_digit()) => {
            // YYYYMMDD: the only form without separators, so it must be exactly 8 digits.
            let year = cur.number(4, 4).ok_or(malformed("bad year"))?;
            let month = cur.number(2, 2).ok_or(malformed("bad month"))?;
            let day = cur.number(2, 2).ok_or(malformed("bad day"))?;
            (year, month, day)
        }
        None => {
            let year = cur.number(4, 4).ok_or(malformed("expected an era or a 4-digit year"))?;
            let (month, day) = month_day(&mut cur).map_err(malformed)?;
            (year, month, day)
        }
    };
    if !cur.rest.is_empty() {
        return Err(malformed("unexpected text after the day"));
    }
    if year == 0 {
        return Err(EraError::YearZero { input: input.to_string() });
    }
    let greg_year = match era {
        // Both terms are small (year has at most 4 digits), so this cannot overflow.
        Some(era) => era.first_day().year + year as i32 - 1,
        None => year as i32,
    };
    let no_such_day = || EraError::NoSuchDay { input: input.to_string(), year: greg_year, month, day };
    let month8 = u8::try_from(month).ok().filter(|m| (1..=12).contains(m)).ok_or_else(no_such_day)?;
    let day8 = u8::try_from(day)
        .ok()
        .filter(|d| *d >= 1 && *d <= days_in_month(greg_year, month8))
        .ok_or_else(no_such_day)?;
    let result = date(greg_year, month8, day8);

    if let Some(era) = era {
        let before_start = result < era.first_day();
        let after_end = era.last_day().is_some_and(|last| result > last);
        if before_start || after_end {
            return Err(EraError::OutsideEra { input: input.to_string(), era });
        }
        if result < GREGORIAN_ADOPTED {
            return Err(EraError::LunisolarCalendar { input: input.to_string() });
        }
    }
    Ok(result)
}

/// Splits a leading era name (kanji, one-kanji abbreviation, square character or letter) from
/// the rest.
fn split_era(text: &str) -> (Option<Era>, &str) {
    for (era, name, short, letter, _, square) in ERAS {
        if let Some(rest) = text.strip_prefix(name) {
            return (Some(era), rest);
        }
        if let Some(rest) = text.strip_prefix(short) {
            return (Some(era), rest);
        }
        if let Some(rest) = text.strip_prefix(square) {
            return (Some(era), rest);
        }
        let mut chars = text.chars();
        if chars.next().is_some_and(|c| c.to_ascii_uppercase() == letter) {
            return (Some(era), chars.as_str());
        }
    }
    (None, text)
}

/// Parses `<sep> month <sep> day [日]` after the year, where the separators are either
/// 年/月(/日) or the same one of `.`, `/`, `-` twice.
fn month_day(cur: &mut Cursor<'_>) -> Result<(u32, u32), &'static str> {
    cur.skip_spaces();
    let sep = cur.next_char().ok_or("no month")?;
    let kanji = match sep {
        '年' => true,
        '.' | '/' | '-' => false,
        _ => return Err("expected 年 or one of . / - after the year"),
    };
    cur.skip_spaces();
    let month = cur.number(1, 2).ok_or("no month")?;
    cur.skip_spaces();
    let expected = if kanji { '月' } else { sep };
    if !cur.eat(expected) {
        return Err(if kanji { "expected 月 after the month" } else { "separators differ" });
    }
    cur.skip_spaces();
    let day = cur.number(1, 2).ok_or("no day")?;
    cur.skip_spaces();
    if kanji {
        cur.eat('日');
        cur.skip_spaces();
    }
    Ok((month, day))
}

/// A small forward-only scanner over the folded, trimmed input.
struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches(' ');
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn next_char(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next()?;
        self.rest = chars.as_str();
        Some(c)
    }

    /// Reads `min..=max` ASCII digits (greedily up to `max`); `None` if fewer than `min`.
    fn number(&mut self, min: usize, max: usize) -> Option<u32> {
        let len = self.rest.bytes().take(max).take_while(u8::is_ascii_digit).count();
        if len < min {
            return None;
        }
        let (digits, rest) = self.rest.split_at(len);
        self.rest = rest;
        // At most 4 digits, so the parse cannot overflow.
        digits.parse().ok()
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

fn day_before(d: Date) -> Date {
    match (d.month, d.day) {
        (1, 1) => date(d.year - 1, 12, 31),
        (m, 1) => date(d.year, m - 1, days_in_month(d.year, m - 1)),
        (m, day) => date(d.year, m, day - 1),
    }
}

#[cfg(test)]
mod tests;
