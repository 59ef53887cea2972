//! Login — a department's bearer token, or its client certificate (when the console has a
//! client CA), both checked by the registry — and logout.

use crate::html::{self, esc, Nav};
use crate::session::{self, Credential, Login};
use crate::{html_response, pairs, param, redirect, App, FormBody};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::WhoAmIRequest;
use kakehashi_runtime::http_server::PeerCertificates;
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

/// What the connection's client certificate offers: the department it names, or why not.
fn certificate_of(app: &App, peer: Option<&PeerCertificates>) -> Option<Result<(String, Vec<u8>), String>> {
    if !app.client_certs {
        return None;
    }
    let leaf = peer.and_then(PeerCertificates::leaf)?;
    Some(kakehashi_runtime::tls::department_of(leaf).map(|d| (d, leaf.to_vec())).map_err(|e| e.to_string()))
}

fn form_page(
    app: &App,
    csrf: &str,
    certificate: Option<Result<(String, Vec<u8>), String>>,
    notice: &str,
    status: StatusCode,
) -> Response {
    let certificate = match certificate {
        Some(Ok((department, _))) => format!(
            "<form method=\"post\" action=\"/login/certificate\" class=\"box\" id=\"certificate-form\">\
             <p>Your browser presented a client certificate for <b id=\"certificate-department\">{}</b>. \
             The registry decides what that department may see; the console acts for it only while this session lasts.</p>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button id=\"certificate-login\">Log in with your certificate</button></form>",
            esc(&department),
            html::esc_token(csrf)
        ),
        Some(Err(why)) => format!(
            "<p class=\"err\" id=\"certificate-error\">Your client certificate cannot be used to log in: {}</p>",
            esc(&why)
        ),
        None => String::new(),
    };
    let body = format!(
        "{notice}{certificate}<form method=\"post\" action=\"/login\" class=\"box\" id=\"login-form\">\
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
pub async fn form(
    State(app): State<Arc<App>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
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
    let certificate = certificate_of(&app, peer.as_ref().map(|p| &p.0));
    with_cookie(form_page(&app, &s.csrf, certificate, notice, StatusCode::OK), &cookie)
}

/// `POST /login`: asks the registry who the token is; a token it accepts starts a session
/// under a new id.
pub async fn submit(
    State(app): State<Arc<App>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let certificate = certificate_of(&app, peer.as_ref().map(|p| &p.0));
    let form = pairs(&body);
    let Some(old) = cookie_of(&headers) else { return redirect("/login") };
    let Some(pre) = app.sessions.get(&old) else { return redirect("/login?expired=1") };
    if crate::check_origin(&headers).is_err() || !session::same_secret(param(&form, "csrf"), &pre.csrf) {
        return redirect("/login");
    }
    let token = param(&form, "token");
    if token.is_empty() {
        let notice = "<p class=\"err\">Enter a token.</p>";
        return form_page(&app, &pre.csrf, certificate, notice, StatusCode::BAD_REQUEST);
    }
    let who = app.registry.with_token(token).policies().who_am_i(WhoAmIRequest {}).await;
    match who {
        Ok(r) => {
            let r = r.into_inner();
            tracing::info!(department = %r.department, admin = r.admin, "console login");
            let login = Login {
                credential: Credential::Token(token.to_string()),
                department: r.department,
                admin: r.admin,
            };
            let (id, _) = app.sessions.start(Some(login), Some(&old));
            let cookie = session::set_cookie(&id, app.tls, Duration::from_secs(app.config.session_max_secs));
            with_cookie(redirect("/flows"), &cookie)
        }
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            tracing::warn!("console login refused: the registry does not accept the token");
            form_page(
                &app,
                &pre.csrf,
                certificate,
                "<p class=\"err\" id=\"error\">The registry does not accept this token.</p>",
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(s) => form_page(
            &app,
            &pre.csrf,
            certificate,
            &format!(
                "<p class=\"err\" id=\"error\">The registry could not be asked: {}</p>",
                esc(s.message())
            ),
            StatusCode::BAD_GATEWAY,
        ),
    }
}

/// `POST /login/certificate`: the department the connection's verified client certificate
/// names, confirmed by the registry (asked through the console's delegate identity); a session
/// bound to that certificate starts under a new id. No secret is stored.
pub async fn certificate(
    State(app): State<Arc<App>>,
    peer: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let form = pairs(&body);
    let Some(old) = cookie_of(&headers) else { return redirect("/login") };
    let Some(pre) = app.sessions.get(&old) else { return redirect("/login?expired=1") };
    if crate::check_origin(&headers).is_err() || !session::same_secret(param(&form, "csrf"), &pre.csrf) {
        return redirect("/login");
    }
    let certificate = certificate_of(&app, peer.as_ref().map(|p| &p.0));
    let (department, leaf) = match &certificate {
        Some(Ok(found)) => found.clone(),
        _ => {
            let notice = "<p class=\"err\" id=\"error\">No usable client certificate on this connection.</p>";
            return form_page(&app, &pre.csrf, certificate, notice, StatusCode::UNAUTHORIZED);
        }
    };
    let who = app.registry.on_behalf_of(&department).policies().who_am_i(WhoAmIRequest {}).await;
    match who {
        Ok(r) if r.get_ref().department == department => {
            let r = r.into_inner();
            tracing::info!(department = %r.department, admin = r.admin, "console login by client certificate");
            let login = Login { credential: Credential::Certificate(leaf), department, admin: r.admin };
            let (id, _) = app.sessions.start(Some(login), Some(&old));
            let cookie = session::set_cookie(&id, app.tls, Duration::from_secs(app.config.session_max_secs));
            with_cookie(redirect("/flows"), &cookie)
        }
        Ok(r) => {
            // The registry would only say another department if it were not honouring the
            // delegation (development mode): refuse rather than guess.
            tracing::warn!(
                certificate = %department,
                registry_says = %r.get_ref().department,
                "console certificate login refused: the registry does not act for the certificate's department"
            );
            let notice = "<p class=\"err\" id=\"error\">The registry does not act for your certificate's department through this console.</p>";
            form_page(&app, &pre.csrf, certificate, notice, StatusCode::FORBIDDEN)
        }
        Err(s) => {
            tracing::warn!(department = %department, code = ?s.code(), reason = %s.message(), "console certificate login refused by the registry");
            let notice = format!(
                "<p class=\"err\" id=\"error\">The registry refused the certificate login: {}</p>",
                esc(s.message())
            );
            // A refusal is the registry's answer about this person, not a failure to reach it.
            let status = match s.code() {
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            form_page(&app, &pre.csrf, certificate, &notice, status)
        }
    }
}

/// `POST /logout`: ends the session.
pub async fn logout(State(app): State<Arc<App>>, headers: HeaderMap, FormBody(body): FormBody) -> Response {
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
