//! HTML output: escaping (with My Number masking on every text shown), the page layout, and
//! small formatting helpers. Pages are strings built here; there is no template engine and no
//! JavaScript.

use std::fmt::Write as _;

/// Escapes text for HTML content and attribute values, after masking anything that looks like
/// a My Number (defence in depth: the registry already sends pseudonyms and masked bytes).
pub fn esc(text: &str) -> String {
    escape_only(&kakehashi_proto::ident::mask_my_number_like_str(text))
}

/// Escapes an identifier the bus generated (event id, trace id, sequence): never personal
/// data, so it is shown exactly (a UUID whose last group is 12 digits stays readable) — but
/// anything that is not one goes through [`esc`].
pub fn esc_id(id: &str) -> String {
    let generated = kakehashi_proto::ids::is_valid_event_id(id)
        || (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if generated {
        escape_only(id)
    } else {
        esc(id)
    }
}

/// Escapes without masking a value that must stay exact and is never personal data: the CSRF
/// token (random hex, which may hold 12 digits in a row — masked, the form would break) or the
/// tracing backend's URL with a checked trace id.
pub fn esc_token(token: &str) -> String {
    escape_only(token)
}

fn escape_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub fn q(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Which page is shown, for the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The flow map.
    Flows,
    /// Traces.
    Trace,
    /// Dead letters.
    DeadLetters,
    /// Schemas.
    Schemas,
    /// Subscriptions.
    Subscriptions,
    /// Login and errors.
    None,
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1c2430;background:#f6f7f9}
header{background:#17324d;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header a.on{color:#fff;font-weight:600;border-bottom:2px solid #fff}
header .who{margin-left:auto;font-size:.9rem}header form{display:inline}
main{padding:1rem 1.4rem}h1{font-size:1.3rem;margin:.2rem 0 1rem}
table{border-collapse:collapse;background:#fff;margin:.5rem 0 1rem}td,th{border:1px solid #d5dbe3;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#eef1f5}.num{text-align:right}.err{color:#b00020;font-weight:600}.ok{color:#1b6e20}
.box{background:#fff;border:1px solid #d5dbe3;padding:.8rem;margin:.5rem 0}
pre{background:#fff;border:1px solid #d5dbe3;padding:.5rem;overflow:auto;font-size:.8rem;max-height:30rem}pre.wrap{white-space:pre-wrap;word-break:break-all}
form.filters input,form.filters select{margin-right:.5rem}
.diff td{font-family:ui-monospace,monospace;font-size:.8rem;white-space:pre}
.add{background:#e6ffec}.del{background:#ffebe9}.chg{background:#fff8c5}
.notice{background:#fff8c5;border:1px solid #e3c000;padding:.5rem;margin:.5rem 0}
button{cursor:pointer}button.danger{background:#b00020;color:#fff;border:0;padding:.4rem .8rem}
"#;

/// A whole page: the navigation (with who is logged in and the logout form) and `body`.
pub fn page(title: &str, nav: Nav, who: Option<(&str, bool, &str)>, body: &str) -> String {
    page_refreshing(title, nav, who, body, None)
}

/// [`page`] that the browser reloads every `refresh_secs` (a live view without JavaScript).
pub fn page_refreshing(
    title: &str,
    nav: Nav,
    who: Option<(&str, bool, &str)>,
    body: &str,
    refresh_secs: Option<u32>,
) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let refresh =
        refresh_secs.map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">")).unwrap_or_default();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{} — Kakehashi console</title><style>{STYLE}</style></head><body><header><strong>架け橋 Kakehashi</strong>",
        esc(title)
    );
    if let Some((department, admin, csrf)) = who {
        for (n, href, label) in [
            (Nav::Flows, "/flows", "Flows"),
            (Nav::Trace, "/trace", "Trace"),
            (Nav::DeadLetters, "/dead-letters", "Dead letters"),
            (Nav::Schemas, "/schemas", "Schemas"),
            (Nav::Subscriptions, "/subscriptions", "Subscriptions"),
        ] {
            let class = if n == nav { " class=\"on\"" } else { "" };
            let _ = write!(out, "<a href=\"{href}\"{class}>{label}</a>");
        }
        let name = if department.is_empty() { "development mode" } else { department };
        let _ = write!(
            out,
            "<span class=\"who\" id=\"who\">{}{} <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button id=\"logout\">Log out</button></form></span>",
            esc(name),
            if admin { " (administrator)" } else { "" },
            esc_token(csrf)
        );
    }
    let _ = write!(out, "</header><main><h1>{}</h1>{body}</main></body></html>", esc(title));
    out
}

/// `2026-12-02 05:30:12.345 UTC` from a protobuf timestamp, or "—".
pub fn time(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "—".into() };
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            let f = time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3] UTC"
            );
            d.format(&f).ok()
        })
        .unwrap_or_else(|| "—".into())
}

/// Microseconds of a protobuf timestamp (0 when unset).
pub fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map_or(0, |t| t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos) / 1000)
}

/// A duration in the unit that reads best: `850 µs`, `12.3 ms`, `4.2 s`, `3 min 5 s`.
pub fn duration_us(us: i64) -> String {
    let us = us.max(0);
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us < 60_000_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else {
        format!("{} min {} s", us / 60_000_000, (us / 1_000_000) % 60)
    }
}

/// Raw bytes as a hex dump (16 bytes a line, offset, hex, printable ASCII) after masking.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", i * 16);
        for b in chunk {
            let _ = write!(out, "{b:02x} ");
        }
        for _ in chunk.len()..16 {
            out.push_str("   ");
        }
        out.push(' ');
        for b in chunk {
            out.push(if b.is_ascii_graphic() || *b == b' ' { *b as char } else { '.' });
        }
        out.push('\n');
    }
    // Escaped (and masked once more) as the printable column is text.
    esc(&out)
}

/// Raw bytes as text: UTF-8 where valid, other bytes as `\xNN` escapes.
pub fn escaped_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\n' {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    esc(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_masks_my_numbers_and_markup() {
        assert_eq!(esc("<b>\"x\"</b> & 'y'"), "&lt;b&gt;&quot;x&quot;&lt;/b&gt; &amp; &#39;y&#39;");
        assert_eq!(esc("my number 123456789018!"), "my number ************!");
        let uuid = "01a21cbc-1113-77df-a6d4-123456789012";
        assert_eq!(esc_id(uuid), uuid, "generated ids are shown as they are");
        assert_eq!(esc_id("123456789018"), "************", "not an id: masked");
        let token = "ab123456789012cd";
        assert_eq!(esc_token(token), token, "a CSRF token is never masked (it would no longer match)");
    }

    #[test]
    fn raw_bytes_are_shown_escaped_and_masked() {
        let raw = b"\x0a\x05hello{\"n\":\"123456789018\"}\xff";
        let text = escaped_bytes(raw);
        assert!(
            text.contains("\\u{5}") && text.contains("\\xff") && !text.contains("123456789018"),
            "{text}"
        );
        let dump = hex_dump(b"0123456789018 abc");
        assert!(dump.starts_with("00000000  30 31"), "{dump}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_us(850), "850 µs");
        assert_eq!(duration_us(12_300), "12.3 ms");
        assert_eq!(duration_us(185_000_000), "3 min 5 s");
    }
}
