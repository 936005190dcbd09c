//! The admin server's authentication middleware: every route but
//! `/healthz` and `/readyz` needs a bearer token when any is configured ([`crate::auth`]
//! holds them); the dashboard and the event stream may also take it as
//! `?access_token=` (a browser and EventSource cannot set headers).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{query_token, Tokens};

/// Routes that take `?access_token=` (EventSource cannot set headers, and a
/// browser opening the dashboard cannot either).
fn query_token_allowed(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard" | "/dashboard/" | "/internal/execution-manager/events"
    )
}

/// The axum middleware: every route but the probes (`/healthz`,
/// `/readyz`) needs a token when any is configured.
pub async fn require(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    if tokens.is_open() || matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let header = header_value(req.headers());
    let query = if query_token_allowed(req.uri().path()) {
        query_token(req.uri().query())
    } else {
        None
    };
    if tokens.allows(header.as_deref(), query.as_deref()) {
        return next.run(req).await;
    }
    let message = if header.is_none() && query.is_none() {
        "this server requires `Authorization: Bearer <token>`"
    } else {
        "the bearer token is not valid"
    };
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        axum::Json(super::error::ErrorBody {
            code: "UNAUTHENTICATED",
            message: message.to_string(),
            field: None,
        }),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

fn header_value(h: &HeaderMap) -> Option<String> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
