//! Traces: one event's hops as a timeline (`Flows.TraceEvent`), or the events of a source /
//! type since a time (`Flows.FindEvents`). The registry leaves out what the department may
//! not see; an event it may not see at all is "not found".

use super::{ago, span_secs};
use crate::html::{self, esc, esc_id, q, Nav};
use crate::{html_response, pairs, param, App, Ctx, PageError};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::{FindEventsRequest, Hop, TraceEventRequest};
use std::fmt::Write as _;
use std::sync::Arc;

/// `GET /trace[?event_id=…|?source=…&type=…&since=15m]`.
pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let q = pairs(query.unwrap_or_default().as_bytes());
    let event_id = param(&q, "event_id");
    let result = if !event_id.is_empty() {
        one_event(&app, &ctx, event_id).await
    } else if !param(&q, "since").is_empty()
        || !param(&q, "source").is_empty()
        || !param(&q, "type").is_empty()
    {
        find(&app, &ctx, param(&q, "source"), param(&q, "type"), param(&q, "since")).await
    } else {
        Ok(String::new())
    };
    match result {
        Ok(found) => {
            let body = format!(
                "{}{found}",
                forms(event_id, param(&q, "source"), param(&q, "type"), param(&q, "since"))
            );
            html_response(StatusCode::OK, html::page("Trace", Nav::Trace, ctx.who(), &body))
        }
        Err(e) => app.error_page(&ctx, e),
    }
}

fn forms(event_id: &str, source: &str, ty: &str, since: &str) -> String {
    format!(
        "<form class=\"filters box\" method=\"get\" id=\"trace-by-id\">Event id <input name=\"event_id\" size=\"40\" value=\"{}\"> <button>Trace</button></form>\
         <form class=\"filters box\" method=\"get\" id=\"trace-find\">Source <input name=\"source\" value=\"{}\"> Type <input name=\"type\" size=\"30\" value=\"{}\"> Since <input name=\"since\" size=\"5\" value=\"{}\"> <button>Find</button></form>",
        esc(event_id),
        esc(source),
        esc(ty),
        if since.is_empty() { "15m".to_string() } else { esc(since) }
    )
}

/// A link to the trace in the configured tracing backend, or the bare id.
fn trace_link(app: &App, trace_id: &str) -> String {
    if trace_id.is_empty() {
        return "—".into();
    }
    let valid = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    if app.config.trace_url_template.is_empty() || !valid {
        return format!("<code>{}</code>", esc_id(trace_id));
    }
    let url = app.config.trace_url_template.replace("{trace_id}", trace_id);
    // The template is configuration and the id checked hex: escaped, never masked (a trace id
    // may hold 12 digits in a row).
    format!(
        "<a class=\"trace-link\" href=\"{}\" rel=\"noreferrer\"><code>{}</code></a>",
        html::esc_token(&url),
        esc_id(trace_id)
    )
}

async fn one_event(app: &App, ctx: &Ctx, event_id: &str) -> Result<String, PageError> {
    let r = app
        .registry
        .as_login(&ctx.login)
        .flows()
        .trace_event(TraceEventRequest { event_id: event_id.to_string() })
        .await?
        .into_inner();
    let hops = &r.hops;
    let first = hops.first().map(|h| html::micros(&h.time)).unwrap_or(0);
    let last = hops.last().map(|h| html::micros(&h.time)).unwrap_or(first);
    let mut out = String::new();
    if let Some(h) = hops.first() {
        let _ = write!(
            out,
            "<div class=\"box\" id=\"trace-head\">Event <code id=\"event-id\">{}</code> — <strong>{}</strong> from <strong>{}</strong>; {} hops over {}</div>",
            esc_id(&r.event_id),
            esc(&h.r#type),
            esc(&h.department),
            hops.len(),
            html::duration_us(last - first)
        );
    }
    out.push_str(&timeline(hops, first, last));
    out.push_str("<table id=\"hops\"><tr><th>time</th><th>since first</th><th>since previous</th><th>hop</th><th>outcome</th><th>actor</th><th>department</th><th>subscription</th><th>detail</th><th>trace</th></tr>");
    let mut prev = first;
    for h in hops {
        let t = html::micros(&h.time);
        let detail = if h.hop == "validated" && h.schema_version > 0 {
            format!("schema v{}", h.schema_version)
        } else {
            h.detail.clone()
        };
        let class = match h.outcome.as_str() {
            "ok" => "ok",
            _ => "err",
        };
        let _ = write!(
            out,
            "<tr class=\"hop\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html::time(&h.time),
            html::duration_us(t - first),
            html::duration_us(t - prev),
            esc(&h.hop),
            esc(&h.outcome),
            esc(&h.actor),
            esc(&h.department),
            esc(&h.subscription),
            esc(&detail),
            trace_link(app, &h.trace_id)
        );
        prev = t;
    }
    out.push_str("</table>");
    if hops.iter().any(|h| h.hop == "dead_lettered") {
        let _ = write!(
            out,
            "<p>Dead-lettered: see <a href=\"/dead-letters?event_id={}\">its dead letter</a>.</p>",
            q(&r.event_id)
        );
    }
    Ok(out)
}

/// Hops as marks on a time axis, so gaps stand out.
fn timeline(hops: &[Hop], first: i64, last: i64) -> String {
    let span = (last - first).max(1) as f64;
    let (width, left, right) = (1000.0_f64, 20.0_f64, 180.0_f64);
    let height = 30.0 + hops.len() as f64 * 22.0;
    let mut out = format!(
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" style=\"background:#fff;border:1px solid #d5dbe3\"><line x1=\"{left}\" y1=\"15\" x2=\"{}\" y2=\"15\" stroke=\"#8a97a8\"/>",
        width - right
    );
    for (i, h) in hops.iter().enumerate() {
        let x = left + (html::micros(&h.time) - first) as f64 / span * (width - left - right);
        let y = 32.0 + i as f64 * 22.0;
        let color = if h.outcome == "ok" { "#3a7bd5" } else { "#b00020" };
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"15\" x2=\"{x:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-dasharray=\"2,2\"/><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{} {} (+{})</text>",
            x + 8.0,
            y + 4.0,
            esc(&h.hop),
            esc(&h.department),
            html::duration_us(html::micros(&h.time) - first)
        );
    }
    out.push_str("</svg>");
    out
}

async fn find(app: &App, ctx: &Ctx, source: &str, ty: &str, since: &str) -> Result<String, PageError> {
    let since = if since.is_empty() { "15m" } else { since };
    let secs =
        span_secs(since).ok_or_else(|| PageError::BadRequest("since: use 30s, 15m, 2h or 1d".into()))?;
    let r = app
        .registry
        .as_login(&ctx.login)
        .flows()
        .find_events(FindEventsRequest {
            source: source.into(),
            r#type: ty.into(),
            since: Some(ago(secs)),
            limit: 200,
        })
        .await?
        .into_inner();
    let mut out = String::new();
    if r.truncated {
        out.push_str("<p class=\"notice\">The audit scan reached the registry's limit: narrow the time.</p>");
    }
    if r.events.is_empty() {
        out.push_str("<p id=\"no-events\">No matching events.</p>");
        return Ok(out);
    }
    out.push_str("<table id=\"events\"><tr><th>first seen</th><th>event</th><th>type</th><th>source</th><th>last hop</th><th>outcome</th></tr>");
    for e in &r.events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><a href=\"/trace?event_id={}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            html::time(&e.first_seen),
            q(&e.event_id),
            esc_id(&e.event_id),
            esc(&e.r#type),
            esc(&e.source),
            esc(&e.last_hop),
            if e.last_outcome == "ok" { "ok" } else { "err" },
            esc(&e.last_outcome)
        );
    }
    out.push_str("</table>");
    Ok(out)
}
