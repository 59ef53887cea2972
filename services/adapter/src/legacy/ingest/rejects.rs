//! The reject file: one CSV line per row that was not published.
//!
//! It records where and why — file, line, column, reason — and never any row content: rows
//! carry personal data (names, birth dates, My Numbers), and a reject file is passed around
//! far more casually than the source file. The reasons come from value-free messages.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::super::decode::UTF8_BOM;

/// Appends rejected rows to a CSV file.
pub(super) struct Rejects {
    out: BufWriter<File>,
    /// The input file's name, repeated on each line so reject files can be concatenated.
    input: String,
    /// Bytes in the file once everything written is flushed: what a checkpoint records.
    len: u64,
}

impl Rejects {
    /// Opens the reject file. A fresh import (`resume_len` = `None`) truncates it and writes
    /// the header. A resume appends to it (the rows rejected before the interruption are
    /// already in it), first cutting it back to `Some(len)` — its length at the checkpoint —
    /// so rows rejected after the checkpoint, which will be read again, are not listed twice.
    /// A checkpoint from before lengths were recorded (`Some(None)`) just appends.
    pub fn open(path: &Path, input: &str, resume_len: Option<Option<u64>>) -> io::Result<Self> {
        let existing = std::fs::metadata(path).map(|m| m.len()).ok();
        let fresh = resume_len.is_none() || existing.is_none();
        let mut file = OpenOptions::new().create(true).write(true).truncate(fresh).open(path)?;
        let mut len = 0;
        if !fresh {
            len = existing.unwrap_or(0);
            if let Some(Some(saved)) = resume_len {
                if saved < len {
                    file.set_len(saved)?;
                    len = saved;
                }
            }
            file.seek(SeekFrom::Start(len))?;
        }
        let mut rejects = Self { out: BufWriter::new(file), input: input.to_owned(), len };
        if fresh {
            // The BOM makes Excel on Japanese Windows open the file as UTF-8, not CP932.
            rejects.write_raw(UTF8_BOM)?;
            rejects.write_raw(b"file,line,column,reason\n")?;
        }
        Ok(rejects)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Records one rejected row.
    pub fn write(&mut self, line: Option<u64>, column: &str, reason: &str) -> io::Result<()> {
        let line = line.map(|l| l.to_string()).unwrap_or_default();
        let cells = [self.input.as_str(), line.as_str(), column, reason];
        let mut row: String = cells.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",");
        row.push('\n');
        self.write_raw(row.as_bytes())
    }

    /// Flushes to the OS; done before every checkpoint so the file covers every row the
    /// checkpoint says was processed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The file's length once flushed.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Quotes a CSV cell when it needs it (RFC 4180).
fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_cuts_the_file_back_to_the_checkpointed_length() {
        let path = std::env::temp_dir().join(format!("kh-rejects-{}.csv", std::process::id()));
        let mut first = Rejects::open(&path, "in.csv", None).ok();
        let saved = first.as_mut().map(|r| {
            let _ = r.write(Some(2), "", "a");
            let _ = r.flush();
            r.len()
        });
        if let Some(r) = first.as_mut() {
            let _ = r.write(Some(3), "", "b");
            let _ = r.flush();
        }
        drop(first);
        let mut resumed = Rejects::open(&path, "in.csv", Some(saved)).ok();
        if let Some(r) = resumed.as_mut() {
            let _ = r.write(Some(3), "", "b");
            let _ = r.flush();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text, "\u{feff}file,line,column,reason\nin.csv,2,,a\nin.csv,3,,b\n");
        assert_eq!(resumed.map(|r| r.len()), Some(text.len() as u64));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn cells_with_commas_quotes_or_newlines_are_quoted() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
