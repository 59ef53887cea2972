//! Splits raw bytes into records and fields before any decoding.
//!
//! Working on raw bytes keeps every offset exact in the original file, which checkpoints need.
//! It is safe for CP932 as well as UTF-8 because the structural bytes (`"`, `\r`, `\n` and a
//! delimiter below 0x40) never occur inside a multi-byte character of either encoding.
//!
//! Grammar (RFC 4180, plus what legacy exports do): records end at LF, CRLF or a lone CR;
//! fields may be quoted, with `""` for a quote and line breaks allowed inside quotes; a quote
//! inside an unquoted field is kept literally (`12"`); blank lines and a DOS end-of-file
//! marker (0x1A) between records are skipped. Text after a closing quote (`"ab"c`) makes the
//! row an error rather than being guessed at.

use std::io::{self, BufRead};

use super::records::RowError;

/// DOS end-of-file marker still found at the end of old Shift_JIS exports.
const DOS_EOF: u8 = 0x1A;

/// One field of a [`RawRecord`]: a byte range of the record, including any quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawField {
    /// Start of the field in [`RawRecord::bytes`].
    pub start: usize,
    /// End (exclusive) of the field in [`RawRecord::bytes`].
    pub end: usize,
    /// Whether the field was quoted, so the caller strips the quotes and un-doubles `""`.
    pub quoted: bool,
}

/// A record as raw bytes exactly as they appear in the file, without its line terminator.
#[derive(Debug, Default)]
pub(crate) struct RawRecord {
    /// Physical line (1-based) where the record starts.
    pub line: u64,
    /// Offset of the record's first byte in the original file.
    pub byte_offset: u64,
    /// The record's bytes, delimiters and quotes included, so field offsets map 1:1 to the file.
    pub bytes: Vec<u8>,
    /// Field ranges within `bytes`.
    pub fields: Vec<RawField>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: either the closing quote or the first half of `""`.
    QuoteInQuoted,
}

/// A position in the original file, advanced byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Offset of the next byte.
    pub pos: u64,
    /// Physical line (1-based) of the next byte.
    pub line: u64,
    /// Whether the last byte was CR, so that an LF right after it is the same line break.
    pub prev_cr: bool,
}

impl Cursor {
    /// Advances over one consumed byte, counting LF, CRLF and lone CR as one line break each.
    fn count(&mut self, b: u8) {
        self.pos += 1;
        if b == b'\r' || (b == b'\n' && !self.prev_cr) {
            self.line += 1;
        }
        self.prev_cr = b == b'\r';
    }
}

/// Streams [`RawRecord`]s out of a buffered byte source in constant memory.
pub(crate) struct Splitter<B> {
    /// The byte source, positioned at `pos`.
    pub inner: B,
    /// Field delimiter; `None` treats each line as a single field (fixed-width files).
    pub delimiter: Option<u8>,
    /// Whether `"` starts a quoted field (off for fixed-width files).
    pub quoting: bool,
    /// Where the next byte to be read lies in the original file.
    pub at: Cursor,
    /// Largest record accepted; beyond it reading stops, since the true end cannot be known.
    pub max_row_bytes: usize,
}

impl<B: BufRead> Splitter<B> {
    /// Reads the next record into `rec`. `Ok(false)` at end of input. A row-level problem is
    /// returned only after the whole row is consumed, so the caller can go on with the next.
    pub fn next_record(&mut self, rec: &mut RawRecord) -> Result<bool, RowError> {
        rec.bytes.clear();
        rec.fields.clear();
        let mut state = State::FieldStart;
        let mut field = RawField { start: 0, end: 0, quoted: false };
        let mut started = false;
        let mut stray_quote_at: Option<u64> = None;
        let mut ended_on_cr = false;
        'read: loop {
            let chunk = match self.inner.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RowError::Io(e)),
            };
            if chunk.is_empty() {
                if !started {
                    return Ok(false);
                }
                if state == State::Quoted {
                    return Err(RowError::UnterminatedQuote { line: rec.line, byte_offset: rec.byte_offset });
                }
                field.end = rec.bytes.len();
                rec.fields.push(field);
                break 'read;
            }
            let mut used = 0;
            let mut finished = false;
            for &b in chunk {
                used += 1;
                let is_break = b == b'\n' || b == b'\r';
                if !started {
                    if is_break || b == DOS_EOF {
                        self.at.count(b);
                        continue;
                    }
                    started = true;
                    rec.line = self.at.line;
                    rec.byte_offset = self.at.pos;
                }
                let quote = self.quoting && b == b'"';
                let delim = self.delimiter == Some(b);
                match state {
                    State::Quoted if quote => state = State::QuoteInQuoted,
                    State::Quoted => {}
                    State::QuoteInQuoted if quote => state = State::Quoted,
                    State::FieldStart if quote => {
                        state = State::Quoted;
                        field.quoted = true;
                    }
                    _ if delim => {
                        field.end = rec.bytes.len();
                        rec.fields.push(field);
                        field = RawField { start: rec.bytes.len() + 1, end: 0, quoted: false };
                        state = State::FieldStart;
                    }
                    _ if is_break => {
                        field.end = rec.bytes.len();
                        rec.fields.push(field);
                        ended_on_cr = b == b'\r';
                        self.at.count(b);
                        finished = true;
                        break;
                    }
                    State::QuoteInQuoted => {
                        stray_quote_at.get_or_insert(self.at.pos);
                        state = State::Unquoted;
                    }
                    State::FieldStart | State::Unquoted => state = State::Unquoted,
                }
                self.at.count(b);
                rec.bytes.push(b);
                if rec.bytes.len() > self.max_row_bytes {
                    return Err(RowError::RowTooLarge {
                        line: rec.line,
                        byte_offset: rec.byte_offset,
                        max: self.max_row_bytes,
                    });
                }
            }
            self.inner.consume(used);
            if finished {
                break 'read;
            }
        }
        if ended_on_cr {
            self.skip_lf_after_cr()?;
        }
        match stray_quote_at {
            Some(byte_offset) => Err(RowError::StrayQuote { line: rec.line, byte_offset }),
            None => Ok(true),
        }
    }

    /// Consumes the LF of a CRLF that ended a record, so the position after a record is the
    /// start of the next one (what a checkpoint must store).
    fn skip_lf_after_cr(&mut self) -> Result<(), RowError> {
        loop {
            match self.inner.fill_buf() {
                Ok([b'\n', ..]) => {
                    self.inner.consume(1);
                    self.at.count(b'\n');
                    return Ok(());
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RowError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitter(data: &[u8]) -> Splitter<&[u8]> {
        Splitter {
            inner: data,
            delimiter: Some(b','),
            quoting: true,
            at: Cursor { pos: 0, line: 1, prev_cr: false },
            max_row_bytes: 1024,
        }
    }

    /// (line, offset, fields as text) of a record, or the error text.
    type Split = Result<(u64, u64, Vec<String>), String>;

    fn split_all(data: &[u8]) -> Vec<Split> {
        let mut s = splitter(data);
        let mut rec = RawRecord::default();
        let mut out = Vec::new();
        loop {
            match s.next_record(&mut rec) {
                Ok(false) => return out,
                Ok(true) => out.push(Ok((
                    rec.line,
                    rec.byte_offset,
                    rec.fields
                        .iter()
                        .map(|f| String::from_utf8_lossy(&rec.bytes[f.start..f.end]).into_owned())
                        .collect(),
                ))),
                Err(e) => out.push(Err(e.to_string())),
            }
        }
    }

    fn ok(line: u64, off: u64, fields: &[&str]) -> Split {
        Ok((line, off, fields.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn crlf_and_lf_records_have_exact_offsets_and_lines() {
        let got = split_all(b"a,b\r\nc,d\ne,f");
        assert_eq!(got, vec![ok(1, 0, &["a", "b"]), ok(2, 5, &["c", "d"]), ok(3, 9, &["e", "f"])]);
    }

    #[test]
    fn quoted_fields_keep_quotes_and_span_lines() {
        let got = split_all(b"1,\"a,b\r\nc\"\"d\",x\r\n2,\"\",y\r\n");
        assert_eq!(got, vec![ok(1, 0, &["1", "\"a,b\r\nc\"\"d\"", "x"]), ok(3, 17, &["2", "\"\"", "y"])]);
    }

    #[test]
    fn blank_lines_lone_cr_and_dos_eof_are_skipped() {
        let got = split_all(b"\r\n\na\rb\r\n\r\n\x1A");
        assert_eq!(got, vec![ok(3, 3, &["a"]), ok(4, 5, &["b"])]);
    }

    #[test]
    fn trailing_delimiter_makes_an_empty_last_field() {
        assert_eq!(split_all(b"a,,\n"), vec![ok(1, 0, &["a", "", ""])]);
    }

    #[test]
    fn text_after_closing_quote_is_a_row_error_and_next_row_follows() {
        let got = split_all(b"\"ab\"c,d\ne,f\n");
        assert!(got[0].as_ref().is_err_and(|e| e.contains("offset 4")), "{got:?}");
        assert_eq!(got[1], ok(2, 8, &["e", "f"]));
    }

    #[test]
    fn unclosed_quote_at_end_of_file_is_an_error() {
        let got = split_all(b"a,b\n\"c,d\ne,f\n");
        assert_eq!(got[0], ok(1, 0, &["a", "b"]));
        assert!(got[1].as_ref().is_err_and(|e| e.contains("line 2")), "{got:?}");
    }

    #[test]
    fn row_over_the_byte_limit_is_fatal() {
        let mut s = splitter(b"\"never closed,,,,,,,,,,,,,,,,");
        s.max_row_bytes = 8;
        let mut rec = RawRecord::default();
        assert!(matches!(s.next_record(&mut rec), Err(RowError::RowTooLarge { max: 8, .. })));
    }

    #[test]
    fn position_after_crlf_record_is_start_of_next() {
        let mut s = splitter(b"a\r\nb\r\n");
        let mut rec = RawRecord::default();
        assert!(matches!(s.next_record(&mut rec), Ok(true)));
        assert_eq!((s.at.pos, s.at.line), (3, 2));
        assert!(matches!(s.next_record(&mut rec), Ok(true)));
        assert_eq!((s.at.pos, s.at.line), (6, 3));
    }
}
