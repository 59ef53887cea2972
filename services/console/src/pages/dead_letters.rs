//! Dead letters: a filtered, paged list (`DeadLetters.ListDeadLetters`), one letter with its
//! violations and raw bytes (already masked by the registry, masked again here), and redrive
//! of one or many after a confirmation page (`DeadLetters.RedriveDeadLetters`).

use super::{ago, span_secs};
use crate::html::{self, esc, esc_id, esc_token, q, Nav};
use crate::{html_response, pairs, param, App, Ctx, FormBody, PageError};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::{ListDeadLettersRequest, RedriveDeadLettersRequest, StoredDeadLetter};
use std::fmt::Write as _;
use std::sync::Arc;

/// The reason codes a dead letter can carry.
const REASONS: &[&str] = &[
    "malformed_envelope",
    "source_mismatch",
    "unknown_type",
    "schema_violation",
    "not_permitted",
    "payload_too_large",
    "delivery_exhausted",
];

/// Most letters one redrive form may name.
const MAX_SELECTED: usize = 500;

/// `GET /dead-letters?reason=&source=&type=&since=&event_id=&page=`.
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let qp = pairs(query.unwrap_or_default().as_bytes());
    match list_body(&app, &ctx, &qp).await {
        Ok(body) => {
            html_response(StatusCode::OK, html::page("Dead letters", Nav::DeadLetters, ctx.who(), &body))
        }
        Err(e) => app.error_page(&ctx, e),
    }
}

async fn list_body(app: &App, ctx: &Ctx, qp: &[(String, String)]) -> Result<String, PageError> {
    let (reason, source, ty, since, event_id, page) = (
        param(qp, "reason"),
        param(qp, "source"),
        param(qp, "type"),
        param(qp, "since"),
        param(qp, "event_id"),
        param(qp, "page"),
    );
    let since_ts = match since {
        "" | "all" => None,
        s => Some(ago(
            span_secs(s).ok_or_else(|| PageError::BadRequest("since: use 30s, 15m, 2h or 1d".into()))?
        )),
    };
    let request = ListDeadLettersRequest {
        reason: reason.into(),
        source: source.into(),
        r#type: ty.into(),
        since: since_ts,
        page_size: 50,
        page_token: page.into(),
        event_id: event_id.into(),
        ..Default::default()
    };
    let r = app.registry.as_login(&ctx.login).dead_letters().list_dead_letters(request).await?.into_inner();
    let mut out = String::new();
    let _ = write!(out, "<form class=\"filters box\" method=\"get\" id=\"dlq-filters\">Reason <select name=\"reason\"><option value=\"\">any</option>");
    for code in REASONS {
        let sel = if *code == reason { " selected" } else { "" };
        let _ = write!(out, "<option{sel}>{code}</option>");
    }
    let _ = write!(
        out,
        "</select> Source <input name=\"source\" value=\"{}\"> Type <input name=\"type\" size=\"30\" value=\"{}\"> Since <input name=\"since\" size=\"5\" value=\"{}\" placeholder=\"all\"> <button>Filter</button></form>",
        esc(source),
        esc(ty),
        esc(since)
    );
    if r.dead_letters.is_empty() {
        out.push_str("<p id=\"no-dead-letters\">No dead letters match.</p>");
        return Ok(out);
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/dead-letters/redrive\" id=\"dlq-list\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <table id=\"dead-letters\"><tr><th></th><th>#</th><th>dead-lettered</th><th>reason</th><th>source</th><th>type</th><th>event</th><th>message</th><th>violations</th></tr>",
        esc_token(&ctx.session.csrf)
    );
    for s in &r.dead_letters {
        let Some(l) = &s.letter else { continue };
        let check = if s.redrivable {
            format!("<input type=\"checkbox\" name=\"id\" value=\"{}\" id=\"select-{}\">", s.id, s.id)
        } else {
            String::new()
        };
        let event = if l.event_id.is_empty() {
            "—".to_string()
        } else {
            format!("<a href=\"/trace?event_id={}\"><code>{}</code></a>", q(&l.event_id), esc_id(&l.event_id))
        };
        let _ = write!(
            out,
            "<tr class=\"dead-letter\"><td>{check}</td><td><a href=\"/dead-letters/{}\" id=\"letter-{}\">#{}</a></td><td>{}</td><td class=\"err\">{}</td><td>{}</td><td>{}</td><td>{event}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            s.id,
            s.id,
            s.id,
            html::time(&l.dead_lettered_at),
            esc(&l.reason),
            esc(&l.source),
            esc(&l.r#type),
            esc(&l.message),
            l.violations.len()
        );
    }
    out.push_str("</table><button id=\"redrive-selected\">Redrive selected…</button> (you confirm on the next page)</form>");
    if !r.next_page_token.is_empty() {
        let _ = write!(
            out,
            "<p><a id=\"next-page\" href=\"/dead-letters?reason={}&amp;source={}&amp;type={}&amp;since={}&amp;event_id={}&amp;page={}\">Next page</a></p>",
            q(reason),
            q(source),
            q(ty),
            q(since),
            q(event_id),
            q(&r.next_page_token)
        );
    }
    if r.truncated {
        out.push_str(
            "<p class=\"notice\">The scan reached the registry's read limit: narrow the filters.</p>",
        );
    }
    Ok(out)
}

/// The letters `ids` names that the login may see, over as many answers as the registry's
/// response budget (`limits.max_list_response_bytes`) takes.
async fn fetch(app: &App, ctx: &Ctx, ids: Vec<u64>) -> Result<Vec<StoredDeadLetter>, PageError> {
    let mut client = app.registry.as_login(&ctx.login).dead_letters();
    let mut letters = Vec::new();
    let mut page_token = String::new();
    // Every answer holds at least one id's letter or moves past it: at most one call per id.
    for _ in 0..=ids.len() {
        let request = ListDeadLettersRequest { ids: ids.clone(), page_token, ..Default::default() };
        let r = client.list_dead_letters(request).await?.into_inner();
        letters.extend(r.dead_letters);
        if r.next_page_token.is_empty() {
            return Ok(letters);
        }
        page_token = r.next_page_token;
    }
    Err(PageError::Status(tonic::Status::internal("the registry's answers did not end")))
}

/// `GET /dead-letters/{id}`.
pub async fn show(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Ok(id) = id.parse::<u64>() else {
        return app
            .error_page(&ctx, PageError::BadRequest("a dead letter id is a KH_DLQ sequence number".into()));
    };
    let found = match fetch(&app, &ctx, vec![id]).await {
        Ok(f) => f,
        Err(e) => return app.error_page(&ctx, e),
    };
    // Another department's letter is answered exactly like a missing one.
    let Some(s) = found.into_iter().next() else {
        return app.error_page(
            &ctx,
            PageError::Status(tonic::Status::not_found(format!("no dead letter #{id} visible to you"))),
        );
    };
    let body = detail(&ctx, &s);
    html_response(
        StatusCode::OK,
        html::page(&format!("Dead letter #{id}"), Nav::DeadLetters, ctx.who(), &body),
    )
}

fn detail(ctx: &Ctx, s: &StoredDeadLetter) -> String {
    let mut out = String::new();
    let Some(l) = &s.letter else { return "<p>empty dead letter</p>".into() };
    let _ = write!(
        out,
        "<table id=\"letter\"><tr><th>reason</th><td class=\"err\" id=\"reason\">{}</td></tr><tr><th>message</th><td>{}</td></tr>\
         <tr><th>source / type</th><td>{} / {}</td></tr><tr><th>event</th><td>{}</td></tr><tr><th>dead-lettered</th><td>{} by {}</td></tr>\
         <tr><th>original subject</th><td><code>{}</code></td></tr><tr><th>schema version</th><td>{}</td></tr><tr><th>subscription</th><td>{}</td></tr></table>",
        esc(&l.reason),
        esc(&l.message),
        esc(&l.source),
        esc(&l.r#type),
        if l.event_id.is_empty() {
            "—".into()
        } else {
            format!("<a href=\"/trace?event_id={}\"><code>{}</code></a>", q(&l.event_id), esc_id(&l.event_id))
        },
        html::time(&l.dead_lettered_at),
        esc(&l.actor),
        esc(&l.original_subject),
        if l.schema_version == 0 { "—".into() } else { l.schema_version.to_string() },
        if l.subscription.is_empty() { "—".into() } else { esc(&l.subscription) }
    );
    if !l.violations.is_empty() {
        out.push_str("<h2>Violations</h2><table id=\"violations\"><tr><th>payload pointer</th><th>schema pointer</th><th>message</th></tr>");
        for v in &l.violations {
            let _ = write!(
                out,
                "<tr class=\"violation\"><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                if v.pointer.is_empty() { "/".into() } else { esc(&v.pointer) },
                esc(&v.schema_pointer),
                esc(&v.message)
            );
        }
        out.push_str("</table>");
    }
    if let Some(e) = &s.event {
        let payload = serde_json::from_slice::<serde_json::Value>(&e.data)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&e.data).into_owned());
        let _ = write!(out, "<h2>Payload</h2><pre id=\"payload\">{}</pre>", esc(&payload));
    }
    let _ = write!(
        out,
        "<h2>Raw bytes ({} bytes{})</h2><h3>escaped</h3><pre class=\"wrap\" id=\"raw-escaped\">{}</pre><h3>hex</h3><pre id=\"raw-hex\">{}</pre>",
        l.raw.len(),
        if s.raw_masked { ", personal identifiers overwritten with *" } else { "" },
        html::escaped_bytes(&l.raw),
        html::hex_dump(&l.raw)
    );
    if s.redrivable {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/dead-letters/redrive\" id=\"redrive-one\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{}\"><button id=\"redrive\">Redrive…</button> (you confirm on the next page)</form>",
            esc_token(&ctx.session.csrf),
            s.id
        );
    } else {
        out.push_str("<p>Not redrivable: it was validated and delivered to other readers before this reader gave up.</p>");
    }
    out
}

/// `POST /dead-letters/redrive`: without `confirm=yes` a confirmation page naming the letters;
/// with it, the redrive and what became of each.
pub async fn redrive(State(app): State<Arc<App>>, headers: HeaderMap, FormBody(body): FormBody) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let form = pairs(&body);
    if let Err(e) = app.check_post(&ctx, &headers, &form) {
        return app.error_page(&ctx, e);
    }
    let mut ids: Vec<u64> = Vec::new();
    for (k, v) in &form {
        if k == "id" {
            match v.parse() {
                Ok(id) if !ids.contains(&id) => ids.push(id),
                Ok(_) => {}
                Err(_) => return app.error_page(&ctx, PageError::BadRequest(format!("bad id {v:?}"))),
            }
        }
    }
    if ids.is_empty() {
        return app.error_page(&ctx, PageError::BadRequest("select at least one dead letter".into()));
    }
    if ids.len() > MAX_SELECTED {
        return app
            .error_page(&ctx, PageError::BadRequest(format!("at most {MAX_SELECTED} dead letters at once")));
    }
    let result = if param(&form, "confirm") == "yes" {
        perform(&app, &ctx, ids).await
    } else {
        confirm(&app, &ctx, ids).await
    };
    match result {
        Ok(body) => html_response(
            StatusCode::OK,
            html::page("Redrive dead letters", Nav::DeadLetters, ctx.who(), &body),
        ),
        Err(e) => app.error_page(&ctx, e),
    }
}

async fn confirm(app: &App, ctx: &Ctx, ids: Vec<u64>) -> Result<String, PageError> {
    let letters = fetch(app, ctx, ids).await?;
    let redrivable: Vec<&StoredDeadLetter> = letters.iter().filter(|s| s.redrivable).collect();
    if redrivable.is_empty() {
        return Ok(
            "<p id=\"nothing-to-redrive\">None of the selected dead letters can be redriven by you.</p>"
                .into(),
        );
    }
    let mut out = format!(
        "<div class=\"notice\">Redriving puts each event's original bytes back on its ingress subject: the validator checks it again \
         (fix the cause first — register the missing schema, grant the policy). An audit record names you. Redrive these {} dead letter(s)?</div>\
         <table id=\"confirm-list\"><tr><th>#</th><th>reason</th><th>source / type</th><th>event</th></tr>",
        redrivable.len()
    );
    for s in &redrivable {
        if let Some(l) = &s.letter {
            let _ = write!(
                out,
                "<tr><td>#{}</td><td>{}</td><td>{} / {}</td><td><code>{}</code></td></tr>",
                s.id,
                esc(&l.reason),
                esc(&l.source),
                esc(&l.r#type),
                esc_id(&l.event_id)
            );
        }
    }
    let _ = write!(
        out,
        "</table><form method=\"post\" action=\"/dead-letters/redrive\" id=\"confirm-form\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"confirm\" value=\"yes\">",
        esc_token(&ctx.session.csrf)
    );
    for s in &redrivable {
        let _ = write!(out, "<input type=\"hidden\" name=\"id\" value=\"{}\">", s.id);
    }
    out.push_str("<button class=\"danger\" id=\"confirm-redrive\">Redrive</button> <a href=\"/dead-letters\">Cancel</a></form>");
    Ok(out)
}

async fn perform(app: &App, ctx: &Ctx, ids: Vec<u64>) -> Result<String, PageError> {
    let r = app
        .registry
        .as_login(&ctx.login)
        .dead_letters()
        .redrive_dead_letters(RedriveDeadLettersRequest { ids })
        .await?
        .into_inner();
    let mut out = String::from(
        "<table id=\"redrive-outcomes\"><tr><th>#</th><th>event</th><th>outcome</th><th>detail</th></tr>",
    );
    for o in &r.outcomes {
        let event = if o.event_id.is_empty() {
            "—".into()
        } else {
            format!("<a href=\"/trace?event_id={}\"><code>{}</code></a>", q(&o.event_id), esc_id(&o.event_id))
        };
        let _ = write!(
            out,
            "<tr class=\"outcome\"><td>#{}</td><td>{event}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            o.id,
            if o.outcome == "redriven" { "ok" } else { "err" },
            esc(&o.outcome),
            esc(&o.detail)
        );
    }
    out.push_str("</table><p>Follow each event on its trace: the validator's verdict appears there within a second or two.</p>");
    Ok(out)
}
