//! Login (a department's bearer token, checked by the registry) and logout.

use crate::html::{self, esc, Nav};
use crate::registry::as_user;
use crate::session::{self, Login};
use crate::{html_response, pairs, param, redirect, App};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::WhoAmIRequest;
use std::sync::Arc;
use std::time::Duration;

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::cookie_id)
        .map(str::to_string)
}

fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn form_page(app: &App, csrf: &str, notice: &str, status: StatusCode) -> Response {
    let body = format!(
        "{notice}<form method=\"post\" action=\"/login\" class=\"box\" id=\"login-form\">\
         <p>Log in with your department's gRPC bearer token (the one <code>kakehashi grpc tokens</code> issued). \
         The console keeps it on the server for this session only and calls the registry with it: you see what the registry lets your department see.</p>\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" size=\"50\" required></label> \
         <button id=\"login\">Log in</button></form>\
         <p>Registry: <code>{}</code></p>",
        html::esc_token(csrf),
        esc(&app.config.registry_url)
    );
    html_response(status, html::page("Log in", Nav::None, None, &body))
}

/// `GET /login`: the form, in a fresh pre-login session (its CSRF token guards the login).
pub async fn form(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    if app.ctx(&headers).is_ok() {
        return redirect("/flows");
    }
    let q = pairs(query.unwrap_or_default().as_bytes());
    let notice = if param(&q, "expired") == "1" {
        "<p class=\"notice\">Your session ended (expired, or the registry no longer accepts the token). Log in again.</p>"
    } else {
        ""
    };
    let old = cookie_of(&headers);
    let (id, s) = app.sessions.start(None, old.as_deref());
    let cookie = session::set_cookie(&id, app.tls, Duration::from_secs(app.config.session_max_secs));
    with_cookie(form_page(&app, &s.csrf, notice, StatusCode::OK), &cookie)
}

/// `POST /login`: asks the registry who the token is; a token it accepts starts a session
/// under a new id.
pub async fn submit(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = pairs(&body);
    let Some(old) = cookie_of(&headers) else { return redirect("/login") };
    let Some(pre) = app.sessions.get(&old) else { return redirect("/login?expired=1") };
    if crate::check_origin(&headers).is_err() || !session::same_secret(param(&form, "csrf"), &pre.csrf) {
        return redirect("/login");
    }
    let token = param(&form, "token");
    if token.is_empty() {
        return form_page(&app, &pre.csrf, "<p class=\"err\">Enter a token.</p>", StatusCode::BAD_REQUEST);
    }
    let who = app.registry.policies().who_am_i(as_user(token, WhoAmIRequest {})).await;
    match who {
        Ok(r) => {
            let r = r.into_inner();
            tracing::info!(department = %r.department, admin = r.admin, "console login");
            let login = Login { token: token.to_string(), department: r.department, admin: r.admin };
            let (id, _) = app.sessions.start(Some(login), Some(&old));
            let cookie = session::set_cookie(&id, app.tls, Duration::from_secs(app.config.session_max_secs));
            with_cookie(redirect("/flows"), &cookie)
        }
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            tracing::warn!("console login refused: the registry does not accept the token");
            form_page(
                &app,
                &pre.csrf,
                "<p class=\"err\" id=\"error\">The registry does not accept this token.</p>",
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(s) => form_page(
            &app,
            &pre.csrf,
            &format!(
                "<p class=\"err\" id=\"error\">The registry could not be asked: {}</p>",
                esc(s.message())
            ),
            StatusCode::BAD_GATEWAY,
        ),
    }
}

/// `POST /logout`: ends the session.
pub async fn logout(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Err(e) = app.check_post(&ctx, &headers, &pairs(&body)) {
        return app.error_page(&ctx, e);
    }
    app.sessions.end(&ctx.id);
    with_cookie(redirect("/login"), &session::clear_cookie(app.tls))
}
