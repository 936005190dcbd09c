//! The admin server's access check: every route but `/healthz` and
//! `/readyz` needs a bearer token (a static `auth.tokens` token or an API
//! key, [`crate::keys`]) when any is configured, and the role the one table
//! ([`crate::keys::table::admin`]) names for it; the dashboard and the
//! event stream may also take it as `?access_token=` (a browser and
//! EventSource cannot set headers). A key's rate counts each request (429
//! with `Retry-After` when it is over). The caller rides in the request's
//! extensions for the routes that audit what they do.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::query_token;
use crate::keys::{table, Keys, Refusal};

const DEFAULT_NS: std::borrow::Cow<'static, str> =
    std::borrow::Cow::Borrowed(crate::keys::DEFAULT_NAMESPACE);

/// Routes that take `?access_token=` (EventSource cannot set headers, and a
/// browser opening the dashboard cannot either).
fn query_token_allowed(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard" | "/dashboard/" | "/internal/execution-manager/events"
    )
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut resp = (
        status,
        axum::Json(super::error::ErrorBody {
            code,
            message,
            field: None,
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// The axum middleware.
pub async fn require(State(keys): State<Keys>, mut req: Request, next: Next) -> Response {
    let (need, scoping) = table::admin(req.method(), req.uri().path());
    if need == table::Need::Open {
        req.extensions_mut()
            .insert(crate::keys::Principal::Open(DEFAULT_NS));
        return next.run(req).await;
    }
    let header = header_value(req.headers());
    let query = if query_token_allowed(req.uri().path()) {
        query_token(req.uri().query())
    } else {
        None
    };
    // The namespace the request acts in (a token's or an open server's
    // caller names it; a key has its own).
    let asked = req
        .headers()
        .get(crate::keys::NAMESPACE_HEADER)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let who = match keys
        .authenticate(header.as_deref(), query.as_deref())
        .and_then(|p| p.in_namespace(asked.as_deref()).map_err(Refusal::from))
    {
        Ok(p) => p,
        Err(Refusal::Unknown(u)) => {
            return refuse(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", u.to_string())
        }
        Err(Refusal::Denied(d)) => {
            return refuse(StatusCode::FORBIDDEN, "PERMISSION_DENIED", d.to_string())
        }
    };
    if let Err(d) = who.may(need, scoping) {
        return refuse(StatusCode::FORBIDDEN, "PERMISSION_DENIED", d.to_string());
    }
    if let Err(l) = who.admit() {
        let mut resp = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            l.to_string(),
        );
        if let Some(d) = l.retry_after() {
            // Whole seconds, rounded up (RFC 9110's delay-seconds).
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        return resp;
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

fn header_value(h: &HeaderMap) -> Option<String> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
