//! Record readers for CSV and fixed-width legacy files.
//!
//! Records are split on raw bytes (`split`) and then each field is decoded
//! ([`super::decode`]), so [`Record::byte_offset`] is exact in the original file even for CP932,
//! and a reader can resume at a checkpointed offset. Memory use is bounded by the largest row
//! ([`ReaderOptions::max_row_bytes`]), not by the file.
//!
//! A bad row (wrong column count, undecodable bytes, stray quote) is yielded as an `Err` and
//! reading continues with the next row; only [`RowError::is_fatal`] errors end the iteration.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

use super::decode::{self, decode_field, Encoding, UndecodableKind, UTF8_BOM};
use super::split::{Cursor, RawField, RawRecord, Splitter};
use super::width::trim_spaces;

/// Read buffer size; also how much [`RecordReader::new`] sniffs to detect the encoding.
const BUFFER_BYTES: usize = decode::SNIFF_BYTES;

/// One record of a legacy file, decoded to text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// 1-based physical line where the record starts (quoted line breaks count as lines).
    pub line: u64,
    /// Offset of the record's first byte in the original file, for checkpoints and errors.
    pub byte_offset: u64,
    /// Field values, decoded and unquoted but otherwise as in the file (not trimmed).
    pub fields: Vec<String>,
}

/// A place in the file where a record starts: what a checkpoint stores to resume from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Byte offset in the original file.
    pub byte_offset: u64,
    /// 1-based physical line at that offset.
    pub line: u64,
}

/// How records are laid out in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Delimited text; the delimiter must be a byte that never occurs inside a multi-byte
    /// character of the encoding (see [`Encoding::is_safe_separator`]).
    Csv {
        /// Field delimiter, e.g. `b','` or `b'\t'`.
        delimiter: u8,
    },
    /// One record per line, fields of fixed widths counted in bytes of the file's encoding
    /// (a full-width character is 2 bytes in CP932), as mainframe record layouts define them.
    Fixed {
        /// Width of each field in bytes; a line must be exactly their sum.
        widths: Vec<usize>,
    },
}

/// Options for [`RecordReader`].
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// CSV or fixed-width.
    pub layout: Layout,
    /// Text encoding; `Auto` is resolved when the reader opens.
    pub encoding: Encoding,
    /// Whether the first record is a header of column names.
    pub header: bool,
    /// Columns every CSV row must have; `None` takes the header's or else the first row's count.
    pub expected_columns: Option<usize>,
    /// Largest row accepted, in bytes; a larger one stops reading (an unclosed quote would
    /// otherwise swallow the rest of the file into memory).
    pub max_row_bytes: usize,
    /// Most fields accepted in one row.
    pub max_fields: usize,
}

/// Why a row, or the whole read, failed. Messages name lines and offsets, never content.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The row has a different number of columns than the header or first row.
    #[error("line {line}: {found} columns, expected {expected}")]
    ColumnCount { line: u64, byte_offset: u64, expected: usize, found: usize },
    /// The row has more fields than [`ReaderOptions::max_fields`].
    #[error("line {line}: {found} fields, more than the limit of {max}")]
    TooManyFields { line: u64, byte_offset: u64, max: usize, found: usize },
    /// A fixed-width line whose length is not the sum of the field widths.
    #[error("line {line}: row is {found} bytes, the fixed-width layout needs {expected}")]
    RowLength { line: u64, byte_offset: u64, expected: usize, found: usize },
    /// Bytes that are not valid text in the file's encoding (or a fixed-width boundary that
    /// cuts a double-byte character).
    #[error("line {line}: bytes at offset {byte_offset} are not valid {encoding}")]
    Undecodable { line: u64, byte_offset: u64, encoding: &'static str },
    /// A user-defined character (外字, a Private Use Area code point): it has no meaning outside
    /// the sending system's own font, so the row is not published.
    #[error(
        "line {line}: column {column}: user-defined character (外字, Unicode Private Use Area) at byte \
         offset {byte_offset}; replace it with a standard character or a registered substitute"
    )]
    PrivateUse { line: u64, byte_offset: u64, column: String },
    /// A row in a file read as Shift_JIS (CP932) whose raw bytes are valid UTF-8 with
    /// multibyte characters: almost certainly typed in UTF-8, and it would decode to mojibake
    /// (UTF-8 `佐藤　健` is valid CP932 `菴占陸縲蛛･`). Pure-ASCII rows never match.
    #[error(
        "mixed_encoding: line {line}: row is valid UTF-8 with multibyte characters in a file read as {encoding}; \
         not imported to avoid mojibake"
    )]
    MixedEncoding { line: u64, byte_offset: u64, encoding: &'static str },
    /// Text after the closing quote of a quoted field.
    #[error("line {line}: unexpected text after a closing quote at byte offset {byte_offset}")]
    StrayQuote { line: u64, byte_offset: u64 },
    /// A quoted field still open at the end of the file.
    #[error("line {line}: quoted field is never closed before the end of the file")]
    UnterminatedQuote { line: u64, byte_offset: u64 },
    /// Fatal: a row longer than the limit; its end cannot be found reliably.
    #[error("line {line}: row exceeds the limit of {max} bytes (an unclosed quote?)")]
    RowTooLarge { line: u64, byte_offset: u64, max: usize },
    /// Fatal: the options cannot work (e.g. a delimiter unsafe for CP932).
    #[error("invalid reader options: {0}")]
    Options(String),
    /// Fatal: reading the input failed.
    #[error("reading the input: {0}")]
    Io(#[from] io::Error),
}

impl RowError {
    /// Whether reading cannot continue after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::RowTooLarge { .. } | Self::Options(_) | Self::Io(_))
    }

    /// The 1-based line the error concerns, when it concerns one.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::ColumnCount { line, .. }
            | Self::TooManyFields { line, .. }
            | Self::RowLength { line, .. }
            | Self::Undecodable { line, .. }
            | Self::PrivateUse { line, .. }
            | Self::MixedEncoding { line, .. }
            | Self::StrayQuote { line, .. }
            | Self::UnterminatedQuote { line, .. }
            | Self::RowTooLarge { line, .. } => Some(*line),
            Self::Options(_) | Self::Io(_) => None,
        }
    }

    /// The column the error concerns (header name, or `#n` counting from 1), when it names one.
    pub fn column(&self) -> Option<&str> {
        match self {
            Self::PrivateUse { column, .. } => Some(column),
            _ => None,
        }
    }
}

/// Streams [`Record`]s out of a legacy file; see the module docs.
pub struct RecordReader<R> {
    split: Splitter<BufReader<R>>,
    options: ReaderOptions,
    /// The resolved encoding (never `Auto`).
    encoding: Encoding,
    headers: Option<Vec<String>>,
    expected_columns: Option<usize>,
    /// Reused between rows so steady-state reading does not allocate per row.
    raw: RawRecord,
    /// Set after a fatal error or the end of input.
    finished: bool,
}

impl<R: Read> RecordReader<R> {
    /// Reads from the current position of any byte stream, treated as the start of the file.
    /// `Auto` is resolved from the first buffer-full only (see [`decode::sniff`]); use
    /// [`RecordReader::open`] on files to scan them fully and to resume.
    pub fn new(inner: R, options: ReaderOptions) -> Result<Self, RowError> {
        let mut buffered = BufReader::with_capacity(BUFFER_BYTES, inner);
        let encoding = decode::sniff(options.encoding, buffered.fill_buf()?);
        Self::start(buffered, encoding, options)
    }

    fn start(inner: BufReader<R>, encoding: Encoding, options: ReaderOptions) -> Result<Self, RowError> {
        let (delimiter, quoting) = match &options.layout {
            Layout::Csv { delimiter } => {
                let d = *delimiter;
                if !encoding.is_safe_separator(d) || matches!(d, b'"' | b'\r' | b'\n') {
                    return Err(RowError::Options(format!(
                        "delimiter 0x{d:02X} cannot be used with {}",
                        encoding.label()
                    )));
                }
                (Some(d), true)
            }
            Layout::Fixed { widths } if widths.is_empty() || widths.contains(&0) => {
                return Err(RowError::Options("fixed-width layout needs widths > 0".into()));
            }
            Layout::Fixed { .. } => (None, false),
        };
        let at = Cursor { pos: 0, line: 1, prev_cr: false };
        let max_row_bytes = options.max_row_bytes;
        let split = Splitter { inner, delimiter, quoting, at, max_row_bytes };
        let expected_columns = options.expected_columns;
        let mut reader = Self {
            split,
            options,
            encoding,
            headers: None,
            expected_columns,
            raw: RawRecord::default(),
            finished: false,
        };
        if encoding == Encoding::Utf8 && reader.split.inner.fill_buf()?.starts_with(UTF8_BOM) {
            // Offsets stay those of the original file: the first record starts at 3.
            reader.split.inner.consume(UTF8_BOM.len());
            reader.split.at.pos = UTF8_BOM.len() as u64;
        }
        if reader.options.header {
            reader.headers = match reader.next() {
                Some(Ok(header)) => Some(header.fields.iter().map(|f| trim_spaces(f).to_owned()).collect()),
                Some(Err(e)) => return Err(e),
                None => Some(Vec::new()),
            };
            reader.finished = false;
        }
        Ok(reader)
    }

    /// Column names from the header row (trimmed), if the options asked for one.
    pub fn headers(&self) -> Option<&[String]> {
        self.headers.as_deref()
    }

    /// The encoding in use, with `Auto` resolved.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Where the next record starts: after the last record returned, blank lines included.
    /// Saving this after processing a record and passing it to [`RecordReader::open`]
    /// resumes exactly after that record.
    pub fn position(&self) -> Position {
        Position { byte_offset: self.split.at.pos, line: self.split.at.line }
    }

    fn decode(&self, raw: &RawRecord) -> Result<Record, RowError> {
        let (line, byte_offset) = (raw.line, raw.byte_offset);
        let fields: Vec<RawField> = match &self.options.layout {
            Layout::Csv { .. } => raw.fields.clone(),
            Layout::Fixed { widths } => {
                let expected = widths.iter().sum();
                let found = raw.bytes.len();
                if found != expected {
                    return Err(RowError::RowLength { line, byte_offset, expected, found });
                }
                let mut start = 0;
                widths
                    .iter()
                    .map(|w| {
                        start += w;
                        RawField { start: start - w, end: start, quoted: false }
                    })
                    .collect()
            }
        };
        let found = fields.len();
        if found > self.options.max_fields {
            return Err(RowError::TooManyFields { line, byte_offset, max: self.options.max_fields, found });
        }
        if let Some(expected) = self.expected_columns {
            if found != expected {
                return Err(RowError::ColumnCount { line, byte_offset, expected, found });
            }
        }
        if self.encoding == Encoding::ShiftJis {
            // A row typed in UTF-8 inside a CP932 file (issue 12): reject it rather than
            // publish mojibake. Whole-row bytes, so ASCII fields do not hide it.
            if let Some(at) = decode::utf8_in_cp932(&raw.bytes) {
                let encoding = self.encoding.label();
                return Err(RowError::MixedEncoding { line, byte_offset: byte_offset + at as u64, encoding });
            }
        }
        let mut values = Vec::with_capacity(found);
        for (i, f) in fields.into_iter().enumerate() {
            let bytes = &raw.bytes[f.start..f.end];
            let text = decode_field(bytes, self.encoding).map_err(|e| {
                let byte_offset = byte_offset + (f.start + e.offset) as u64;
                match e.kind {
                    UndecodableKind::Invalid => {
                        RowError::Undecodable { line, byte_offset, encoding: self.encoding.label() }
                    }
                    UndecodableKind::PrivateUse => {
                        RowError::PrivateUse { line, byte_offset, column: self.column_label(i) }
                    }
                }
            })?;
            values.push(if f.quoted { unquote(&text) } else { text });
        }
        Ok(Record { line, byte_offset, fields: values })
    }

    /// The header's name for column `i` (0-based), else `#n` as mappings number columns.
    fn column_label(&self, i: usize) -> String {
        match self.headers.as_ref().and_then(|h| h.get(i)).filter(|name| !name.is_empty()) {
            Some(name) => name.clone(),
            None => format!("#{}", i + 1),
        }
    }
}

impl<R: Read + Seek> RecordReader<R> {
    /// Opens a seekable file: resolves `Auto` by scanning the whole file once, reads the
    /// header, then continues at `resume` (a [`RecordReader::position`] saved earlier) if given.
    pub fn open(mut inner: R, options: ReaderOptions, resume: Option<Position>) -> Result<Self, RowError> {
        inner.seek(SeekFrom::Start(0))?;
        let encoding = decode::detect(options.encoding, &mut inner)?;
        inner.seek(SeekFrom::Start(0))?;
        let buffered = BufReader::with_capacity(BUFFER_BYTES, inner);
        let mut reader = Self::start(buffered, encoding, options)?;
        if let Some(at) = resume {
            let data_start = reader.split.at.pos;
            if at.byte_offset < data_start || at.line == 0 {
                return Err(RowError::Options(format!(
                    "cannot resume at byte {} line {}: data starts at byte {data_start}",
                    at.byte_offset, at.line
                )));
            }
            reader.split.inner.seek(SeekFrom::Start(at.byte_offset))?;
            reader.split.at = Cursor { pos: at.byte_offset, line: at.line, prev_cr: false };
        }
        Ok(reader)
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Record, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let mut raw = std::mem::take(&mut self.raw);
        let result = match self.split.next_record(&mut raw) {
            Ok(false) => {
                self.finished = true;
                None
            }
            Ok(true) => {
                let decoded = self.decode(&raw);
                if let (Ok(rec), None) = (&decoded, self.expected_columns) {
                    // Without a header or configured count, the first row sets the width.
                    self.expected_columns = Some(rec.fields.len());
                }
                Some(decoded)
            }
            Err(e) => {
                self.finished = e.is_fatal();
                Some(Err(e))
            }
        };
        self.raw = raw;
        result
    }
}

/// Strips the surrounding quotes of a quoted field and un-doubles `""`. Done after decoding,
/// which is equivalent because `"` is a single byte that is never part of a multi-byte character.
fn unquote(text: &str) -> String {
    let inner = text.strip_prefix('"').unwrap_or(text);
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    inner.replace("\"\"", "\"")
}

#[cfg(test)]
mod tests;
