//! Schemas: subjects with their versions and compatibility mode, and a side-by-side diff of
//! two versions of a subject where every change carries the registry's verdict
//! (`SchemaRegistry.CheckCompatibility` of the newer version against the older one).

use crate::diff::{self, Row};
use crate::html::{self, esc, q, Nav};
use crate::{html_response, pairs, param, App, Ctx, PageError};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::*;
use std::fmt::Write as _;
use std::sync::Arc;

fn mode_name(m: i32) -> String {
    CompatibilityMode::try_from(m)
        .map(|m| m.as_str_name().trim_start_matches("COMPATIBILITY_MODE_").to_string())
        .unwrap_or_else(|_| m.to_string())
}

fn type_name(t: i32) -> &'static str {
    match SchemaType::try_from(t) {
        Ok(SchemaType::Protobuf) => "protobuf",
        _ => "JSON Schema",
    }
}

/// `GET /schemas`.
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match list_body(&app, &ctx).await {
        Ok(body) => html_response(StatusCode::OK, html::page("Schemas", Nav::Schemas, ctx.who(), &body)),
        Err(e) => app.error_page(&ctx, e),
    }
}

async fn list_body(app: &App, ctx: &Ctx) -> Result<String, PageError> {
    let mut c = app.registry.as_login(&ctx.login).schemas();
    let subjects =
        c.list_subjects(ListSubjectsRequest { include_deleted: false }).await?.into_inner().subjects;
    let global = c.get_compatibility(GetCompatibilityRequest { subject: String::new() }).await?.into_inner();
    let mut out = format!(
        "<p>Global default compatibility: <strong id=\"global-mode\">{}</strong>. {} subjects.</p><table id=\"subjects\"><tr><th>subject</th><th>versions</th><th>mode</th></tr>",
        mode_name(global.mode),
        subjects.len()
    );
    for s in &subjects {
        let versions = c
            .list_versions(ListVersionsRequest { subject: s.clone(), include_deleted: true })
            .await?
            .into_inner()
            .versions;
        let mode = c.get_compatibility(GetCompatibilityRequest { subject: s.clone() }).await?.into_inner();
        let _ = write!(
            out,
            "<tr class=\"subject\"><td><a href=\"/schemas/{}\">{}</a></td><td>{}</td><td>{}{}</td></tr>",
            q(s),
            esc(s),
            versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
            mode_name(mode.mode),
            if mode.inherited { " (default)" } else { "" }
        );
    }
    out.push_str("</table>");
    Ok(out)
}

/// `GET /schemas/{subject}[?a=1&b=2]`.
pub async fn subject(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let qp = pairs(query.unwrap_or_default().as_bytes());
    match subject_body(&app, &ctx, &subject, &qp).await {
        Ok(body) => html_response(
            StatusCode::OK,
            html::page(&format!("Schema {subject}"), Nav::Schemas, ctx.who(), &body),
        ),
        Err(e) => app.error_page(&ctx, e),
    }
}

async fn subject_body(
    app: &App,
    ctx: &Ctx,
    subject: &str,
    qp: &[(String, String)],
) -> Result<String, PageError> {
    if !kakehashi_proto::ident::is_valid_event_type(subject) {
        return Err(PageError::BadRequest("not a subject name".into()));
    }
    let mut c = app.registry.as_login(&ctx.login).schemas();
    let versions = c
        .list_versions(ListVersionsRequest { subject: subject.into(), include_deleted: true })
        .await?
        .into_inner()
        .versions;
    let mode = c.get_compatibility(GetCompatibilityRequest { subject: subject.into() }).await?.into_inner();
    let parse = |k: &str| -> Result<Option<u32>, PageError> {
        match param(qp, k) {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| PageError::BadRequest(format!("{k} must be a version number"))),
        }
    };
    let latest = versions.last().copied().unwrap_or(1);
    let before = versions.iter().rev().nth(1).copied().unwrap_or(latest);
    let (a, b) = (parse("a")?.unwrap_or(before), parse("b")?.unwrap_or(latest));
    let mut out = format!(
        "<p>Compatibility mode: <strong id=\"mode\">{}</strong>{}. Versions: {}.</p>",
        mode_name(mode.mode),
        if mode.inherited { " (the global default)" } else { "" },
        versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    );
    let options = |selected: u32| {
        versions
            .iter()
            .map(|v| format!("<option{}>{v}</option>", if *v == selected { " selected" } else { "" }))
            .collect::<String>()
    };
    let _ = write!(
        out,
        "<form class=\"filters box\" method=\"get\" id=\"diff-form\">Compare version <select name=\"a\">{}</select> with <select name=\"b\">{}</select> <button>Diff</button></form>",
        options(a),
        options(b)
    );
    let old =
        c.get_schema(GetSchemaRequest { subject: subject.into(), version: a, id: 0 }).await?.into_inner();
    let new =
        c.get_schema(GetSchemaRequest { subject: subject.into(), version: b, id: 0 }).await?.into_inner();
    let check = CheckCompatibilityRequest {
        subject: subject.into(),
        schema: new.schema.clone(),
        version: a,
        schema_type: new.schema_type,
        proto_files: new.proto_files.clone(),
        message_name: new.message_name.clone(),
        references: new
            .references
            .iter()
            .filter_map(|r| r.rsplit_once('/'))
            .filter_map(|(s, v)| v.parse().ok().map(|version| SchemaReference { subject: s.into(), version }))
            .collect(),
        allow_unknown_fields: new.allow_unknown_fields,
    };
    let verdict = c.check_compatibility(check).await?.into_inner();
    let _ = write!(
        out,
        "<p id=\"verdict\" class=\"{}\">Version {b} is {} with version {a} under {}.</p>",
        if verdict.compatible { "ok" } else { "err" },
        if verdict.compatible { "compatible" } else { "NOT compatible" },
        mode_name(verdict.mode)
    );
    out.push_str(&changes_table(&old, &new, &verdict));
    out.push_str(&side_by_side(&old, &new));
    Ok(out)
}

fn pretty(v: &SchemaVersion) -> String {
    serde_json::from_str::<serde_json::Value>(&v.schema)
        .ok()
        .and_then(|j| serde_json::to_string_pretty(&j).ok())
        .unwrap_or_else(|| v.schema.clone())
}

fn changes_table(old: &SchemaVersion, new: &SchemaVersion, verdict: &CheckCompatibilityResponse) -> String {
    let mut out = String::from("<h2>Changes</h2>");
    let parsed = (
        serde_json::from_str::<serde_json::Value>(&old.schema),
        serde_json::from_str::<serde_json::Value>(&new.schema),
    );
    let changes = match parsed {
        (Ok(a), Ok(b)) => diff::changes(&a, &b),
        // Protobuf sources: the text diff below, and the registry's findings as they are.
        _ => Vec::new(),
    };
    let mut used = vec![false; verdict.incompatibilities.len()];
    if changes.is_empty() && old.schema == new.schema {
        out.push_str("<p>The two versions are identical.</p>");
    }
    if !changes.is_empty() {
        out.push_str("<table id=\"changes\"><tr><th>pointer</th><th>change</th><th>old</th><th>new</th><th>verdict</th></tr>");
        for ch in &changes {
            let findings: Vec<&Incompatibility> = verdict
                .incompatibilities
                .iter()
                .enumerate()
                .filter(|(_, i)| diff::concerns(&ch.pointer, &i.pointer))
                .map(|(n, i)| {
                    used[n] = true;
                    i
                })
                .collect();
            let verdict_cell = if findings.is_empty() {
                "<span class=\"ok\">compatible</span>".to_string()
            } else {
                findings
                    .iter()
                    .map(|i| {
                        format!("<span class=\"err\">breaking: {} — {}</span>", esc(&i.kind), esc(&i.message))
                    })
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let _ = write!(
                out,
                "<tr class=\"change\"><td><code>{}</code></td><td class=\"{}\">{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{verdict_cell}</td></tr>",
                esc(&ch.pointer),
                match ch.kind {
                    "added" => "add",
                    "removed" => "del",
                    _ => "chg",
                },
                ch.kind,
                esc(&ch.old),
                esc(&ch.new)
            );
        }
        out.push_str("</table>");
    }
    let rest: Vec<&Incompatibility> =
        verdict.incompatibilities.iter().zip(&used).filter(|(_, u)| !**u).map(|(i, _)| i).collect();
    if !rest.is_empty() {
        out.push_str("<p>Other findings of the compatibility check:</p><table id=\"findings\"><tr><th>pointer</th><th>kind</th><th>message</th></tr>");
        for i in rest {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td class=\"err\">{}</td><td>{}</td></tr>",
                esc(&i.pointer),
                esc(&i.kind),
                esc(&i.message)
            );
        }
        out.push_str("</table>");
    }
    out
}

fn side_by_side(old: &SchemaVersion, new: &SchemaVersion) -> String {
    let (a, b) = (pretty(old), pretty(new));
    let mut out = format!(
        "<h2>Side by side</h2><table class=\"diff\" id=\"diff\"><tr><th>version {} ({}, {})</th><th>version {} ({}, {})</th></tr>",
        old.version,
        type_name(old.schema_type),
        html::time(&old.registered_at),
        new.version,
        type_name(new.schema_type),
        html::time(&new.registered_at)
    );
    match diff::lines(&a, &b) {
        Some(rows) => {
            for row in rows {
                let _ = match row {
                    Row::Same(l) => write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(l), esc(l)),
                    Row::Removed(l) => write!(out, "<tr><td class=\"del\">- {}</td><td></td></tr>", esc(l)),
                    Row::Added(l) => write!(out, "<tr><td></td><td class=\"add\">+ {}</td></tr>", esc(l)),
                };
            }
        }
        None => {
            let _ = write!(out, "<tr><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>", esc(&a), esc(&b));
        }
    }
    out.push_str("</table>");
    out
}
