//! Subscriptions: per department, what is pending, unacked, redelivered and how old the oldest
//! unacked event is (`Subscriptions.GetSubscriptionStats`, from each subscription's consumer).

use crate::html::{self, esc, Nav};
use crate::{html_response, App};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kakehashi_proto::v1::ListSubscriptionsRequest;
use std::fmt::Write as _;
use std::sync::Arc;

/// `GET /subscriptions`.
pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let ctx = match app.ctx(&headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    // Administrators ask for every department; a department for its own.
    let department = if ctx.login.admin { String::new() } else { ctx.login.department.clone() };
    let request = ListSubscriptionsRequest { department };
    let stats = match app.registry.as_login(&ctx.login).subscriptions().get_subscription_stats(request).await
    {
        Ok(r) => r.into_inner().stats,
        Err(s) => return app.error_page(&ctx, s.into()),
    };
    let mut body = String::new();
    if stats.is_empty() {
        body.push_str("<p id=\"no-subscriptions\">No subscriptions.</p>");
    } else {
        body.push_str("<table id=\"subscriptions\"><tr><th>department</th><th>subscription</th><th>types</th><th>pending</th><th>unacked</th><th>redelivered</th><th>oldest unacked</th><th>delivered</th><th>last delivery</th><th>last ack</th><th>clients waiting</th></tr>");
        for s in &stats {
            let age = s
                .oldest_unacked_age
                .map(|d| html::duration_us(d.seconds.saturating_mul(1_000_000) + i64::from(d.nanos) / 1000))
                .unwrap_or_else(|| "—".into());
            let _ = write!(
                body,
                "<tr class=\"subscription\"><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{age}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&s.department),
                esc(&s.name),
                esc(&s.type_pattern),
                s.pending,
                s.unacked,
                s.redelivered,
                s.delivered,
                html::time(&s.last_delivered),
                html::time(&s.last_acked),
                s.waiting
            );
        }
        body.push_str("</table>");
    }
    html_response(StatusCode::OK, html::page("Subscriptions", Nav::Subscriptions, ctx.who(), &body))
}
