//! A plain-text progress bar on stderr, redrawn in place with `\r` (no terminal library).

use crate::legacy::Progress;
use std::io::Write;
use std::time::{Duration, Instant};

/// Redraws at most this often.
const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// Characters of the bar itself.
const BAR_WIDTH: usize = 30;

/// Progress of one file, drawn on stderr when enabled.
pub struct ProgressBar {
    label: String,
    enabled: bool,
    started: Instant,
    last_draw: Option<Instant>,
    drawn_width: usize,
}

impl ProgressBar {
    /// A bar labelled `label` (usually the file name); a disabled bar draws nothing.
    pub fn new(label: impl Into<String>, enabled: bool) -> Self {
        Self { label: label.into(), enabled, started: Instant::now(), last_draw: None, drawn_width: 0 }
    }

    /// Records progress, redrawing when the last draw is old enough.
    pub fn update(&mut self, progress: Progress) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < REDRAW_EVERY) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let line = render(&self.label, progress, self.started.elapsed());
        let pad = self.drawn_width.saturating_sub(line.chars().count());
        self.drawn_width = line.chars().count();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
    }

    /// Clears the bar's line.
    pub fn finish(&mut self) {
        if self.enabled && self.drawn_width > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}\r", " ".repeat(self.drawn_width));
            let _ = err.flush();
            self.drawn_width = 0;
        }
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One line: `label [#####.....]  45.2%  12,345 rows  3 rejected  8,765 rows/s`.
pub fn render(label: &str, p: Progress, elapsed: Duration) -> String {
    let fraction = if p.bytes_total == 0 { 1.0 } else { p.bytes_done as f64 / p.bytes_total as f64 };
    let fraction = fraction.clamp(0.0, 1.0);
    let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let rows = p.rows_ok + p.rows_rejected;
    let rate = per_second(rows, elapsed);
    format!(
        "{label} [{}{}] {:5.1}%  {} rows  {} rejected  {} rows/s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
        thousands(rows),
        thousands(p.rows_rejected),
        thousands(rate),
    )
}

/// `n` per second over `elapsed`, rounded down (0 for an instant run).
pub fn per_second(n: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0
    } else {
        (n as f64 / secs) as u64
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn bar_shows_fraction_rows_and_rate() {
        let p = Progress { bytes_done: 50, bytes_total: 200, rows_ok: 1999, rows_rejected: 1 };
        let line = render("a.csv", p, Duration::from_secs(2));
        assert_eq!(
            line,
            format!(
                "a.csv [{}{}]  25.0%  2,000 rows  1 rejected  1,000 rows/s",
                "#".repeat(7),
                ".".repeat(23)
            )
        );
        let done = Progress { bytes_done: 0, bytes_total: 0, rows_ok: 0, rows_rejected: 0 };
        assert!(render("e.csv", done, Duration::ZERO).contains("100.0%"));
    }
}
