//! The flow map: department → event type → department over the last minutes, drawn as SVG
//! from the audit trail (`Flows.SummarizeFlows`), with the same numbers as a table.

use super::ago;
use crate::html::{self, esc, Nav};
use crate::{html_response, pairs, param, App, PageError};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::{FlowEdge, SummarizeFlowsRequest};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

/// How often the flow page reloads itself, in seconds (`?refresh=`, 0 = never).
const DEFAULT_REFRESH_SECS: u32 = 30;

/// `GET /flows?minutes=N&refresh=S`.
pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let q = pairs(query.unwrap_or_default().as_bytes());
    let minutes: u32 = match param(&q, "minutes") {
        "" => app.config.flow_minutes,
        m => match m.parse::<u32>() {
            Ok(m) if (1..=7 * 24 * 60).contains(&m) => m,
            _ => return app.error_page(&ctx, PageError::BadRequest("minutes must be 1 to 10080".into())),
        },
    };
    let refresh: u32 = match param(&q, "refresh") {
        "" => DEFAULT_REFRESH_SECS,
        s => match s.parse::<u32>() {
            Ok(s) if s == 0 || (5..=3600).contains(&s) => s,
            _ => {
                return app
                    .error_page(&ctx, PageError::BadRequest("refresh must be 0 or 5 to 3600 seconds".into()))
            }
        },
    };
    let request = SummarizeFlowsRequest { since: Some(ago(i64::from(minutes) * 60)) };
    let r = match app.registry.as_login(&ctx.login).flows().summarize_flows(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return app.error_page(&ctx, s.into()),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\">Last <input name=\"minutes\" size=\"5\" value=\"{minutes}\"> minutes, reloading every <input name=\"refresh\" size=\"4\" value=\"{refresh}\"> s (0 = never) <button>Show</button></form>\
         <p class=\"notice\" id=\"flow-window\">Events in the last {minutes} min; rates are per minute over that window.</p>"
    );
    if r.truncated {
        body.push_str("<p class=\"notice\">The audit scan reached the registry's limit: the numbers cover only the start of the window; choose fewer minutes.</p>");
    }
    if r.edges.is_empty() {
        body.push_str("<p id=\"no-flows\">No events in this window.</p>");
    } else {
        body.push_str(&svg(&r.edges, minutes));
        body.push_str(&table(&r.edges, minutes));
    }
    let refresh = (refresh > 0).then_some(refresh);
    html_response(StatusCode::OK, html::page_refreshing("Flows", Nav::Flows, ctx.who(), &body, refresh))
}

/// Events per minute over a window of `minutes`, as shown (one decimal).
fn per_minute(events: u64, minutes: u32) -> String {
    format!("{:.1}", events as f64 / f64::from(minutes.max(1)))
}

/// Three columns: publishers, event types, readers; an edge's width grows with its events and
/// it is red when any failed. Labels give the rate per minute over the window of `minutes`.
pub fn svg(edges: &[FlowEdge], minutes: u32) -> String {
    let sources: Vec<&str> =
        edges.iter().map(|e| e.source.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    let types: Vec<&str> =
        edges.iter().map(|e| e.r#type.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    let readers: Vec<&str> = edges
        .iter()
        .filter(|e| !e.reader.is_empty())
        .map(|e| e.reader.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = sources.len().max(types.len()).max(readers.len()).max(1);
    let (width, row_h, top) = (1100.0_f64, 70.0_f64, 40.0_f64);
    let height = top + rows as f64 * row_h;
    let x = [130.0, 550.0, 970.0];
    let y = |i: usize, n: usize| top + (i as f64 + 0.5) * (rows as f64 * row_h) / n as f64;
    let pos = |list: &[&str], name: &str| list.iter().position(|n| *n == name).map(|i| y(i, list.len()));
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg id=\"flow-map\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"flow map\" style=\"background:#fff;border:1px solid #d5dbe3\">\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-weight=\"600\">publisher</text><text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-weight=\"600\">event type</text><text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-weight=\"600\">reader</text>",
        x[0], x[1], x[2]
    );
    // Type → reader edges of several publishers are one line on the map (the table keeps them
    // apart): summed per (type, reader), so they are not drawn on top of each other.
    let mut drawn: Vec<FlowEdge> = Vec::with_capacity(edges.len());
    for e in edges {
        let same = |d: &&mut FlowEdge| !e.reader.is_empty() && d.reader == e.reader && d.r#type == e.r#type;
        match drawn.iter_mut().find(|d| same(d)) {
            Some(d) => {
                d.events += e.events;
                d.acked += e.acked;
                d.errors += e.errors;
            }
            None => drawn.push(e.clone()),
        }
    }
    for e in &drawn {
        let Some(ty) = pos(&types, &e.r#type) else { continue };
        let (x1, y1, x2, y2) = if e.reader.is_empty() {
            match pos(&sources, &e.source) {
                Some(sy) => (x[0] + 80.0, sy, x[1] - 120.0, ty),
                None => continue,
            }
        } else {
            match pos(&readers, &e.reader) {
                Some(ry) => (x[1] + 120.0, ty, x[2] - 80.0, ry),
                None => continue,
            }
        };
        let w = 1.5 + (e.events as f64).ln_1p() * 1.5;
        let color = if e.errors > 0 { "#b00020" } else { "#3a7bd5" };
        let mid = (x1 + x2) / 2.0;
        let label = if e.reader.is_empty() {
            format!("{}/min: {} published, {} rejected", per_minute(e.events, minutes), e.events, e.errors)
        } else {
            format!(
                "{}/min: {} delivered, {} acked, {} failed",
                per_minute(e.events, minutes),
                e.events,
                e.acked,
                e.errors
            )
        };
        let _ = write!(
            out,
            "<path d=\"M{x1:.0},{y1:.0} C{mid:.0},{y1:.0} {mid:.0},{y2:.0} {x2:.0},{y2:.0}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"{w:.1}\" opacity=\"0.8\"><title>{}</title></path>\
             <text x=\"{mid:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\" fill=\"{color}\">{}</text>",
            esc(&label),
            (y1 + y2) / 2.0 - 4.0,
            esc(&label)
        );
    }
    for (col, list) in [(0, &sources), (1, &types), (2, &readers)] {
        for (i, name) in list.iter().enumerate() {
            let cy = y(i, list.len());
            let half = if col == 1 { 120.0 } else { 80.0 };
            let fill = if col == 1 { "#eef1f5" } else { "#17324d" };
            let text = if col == 1 { "#1c2430" } else { "#fff" };
            let _ = write!(
                out,
                "<rect x=\"{:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"30\" rx=\"6\" fill=\"{fill}\" stroke=\"#17324d\"/>\
                 <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" text-anchor=\"middle\" fill=\"{text}\">{}</text>",
                x[col] - half,
                cy - 15.0,
                half * 2.0,
                x[col],
                cy + 4.0,
                esc(name)
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn table(edges: &[FlowEdge], minutes: u32) -> String {
    let mut out = String::from(
        "<table id=\"flow-table\"><tr><th>publisher</th><th>event type</th><th>reader</th><th>events</th><th>per min</th><th>acked</th><th>errors</th></tr>",
    );
    for e in edges {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num{}\">{}</td></tr>",
            esc(&e.source),
            esc(&e.r#type),
            if e.reader.is_empty() { "—".to_string() } else { esc(&e.reader) },
            e.events,
            per_minute(e.events, minutes),
            if e.reader.is_empty() { "—".to_string() } else { e.acked.to_string() },
            if e.errors > 0 { " err" } else { "" },
            e.errors
        );
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(source: &str, reader: &str, events: u64, acked: u64, errors: u64) -> FlowEdge {
        FlowEdge {
            source: source.into(),
            r#type: "health.checkup.recorded".into(),
            reader: reader.into(),
            events,
            errors,
            acked,
        }
    }

    #[test]
    fn reader_edges_of_several_publishers_are_one_line_with_summed_rates() {
        let edges = [
            edge("city-a", "", 30, 0, 1),
            edge("city-b", "", 15, 0, 0),
            edge("city-a", "mhlw", 20, 20, 0),
            edge("city-b", "mhlw", 10, 9, 1),
        ];
        let svg = svg(&edges, 10);
        assert_eq!(svg.matches("<path ").count(), 3, "two publisher edges and one reader edge:\n{svg}");
        assert!(svg.contains("3.0/min: 30 delivered, 29 acked, 1 failed"), "{svg}");
        assert!(svg.contains("3.0/min: 30 published, 1 rejected"), "{svg}");
        assert!(svg.contains("1.5/min: 15 published, 0 rejected"), "{svg}");
        let table = table(&edges, 10);
        assert_eq!(table.matches("<tr>").count(), 5, "the table keeps every edge apart");
    }
}
