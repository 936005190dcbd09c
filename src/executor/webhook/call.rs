//! The pure parts of a webhook call: where it goes, what it sends, and how an
//! answer becomes the task's result or a failure that says what happens next
//! (give up, or retry after a delay). No I/O here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::domain::{FailureKind, Target, Task};

/// Response headers copied into the result, when present.
const RESULT_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "x-n8n-execution-id",
    "x-request-id",
    "etag",
];

/// Longest text body kept in a result (`{"text": ...}`).
pub const MAX_TEXT_BYTES: usize = 64 << 10;

/// Longest body excerpt in an error's message.
const MESSAGE_EXCERPT: usize = 300;

/// Longest body excerpt in an error's details.
pub const DETAILS_EXCERPT: usize = 4 << 10;

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where a task's call goes: `webhook_url` if given, else
/// `{n8n_base}/webhook/{path}` with `path` = `paths[workflow_id]` or the id.
pub fn resolve_url(
    target: &Target,
    n8n_base: Option<&Url>,
    paths: &BTreeMap<String, String>,
) -> Result<Url, String> {
    let Target::Integration {
        workflow_id,
        webhook_url,
        ..
    } = target
    else {
        return Err("not an INTEGRATION target".into());
    };
    if let Some(u) = webhook_url.as_deref().filter(|u| !u.is_empty()) {
        return Url::parse(u).map_err(|e| format!("webhook_url is not a valid URL: {e}"));
    }
    let Some(id) = workflow_id.as_deref().filter(|w| !w.is_empty()) else {
        return Err("the target has neither webhook_url nor workflow_id".into());
    };
    let Some(base) = n8n_base else {
        return Err(format!(
            "workflow {id:?} cannot be resolved: the server has no webhook.n8n_base_url configured"
        ));
    };
    let path = paths.get(id).map(String::as_str).unwrap_or(id);
    let joined = format!(
        "{}/webhook/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    Url::parse(&joined).map_err(|e| format!("workflow {id:?} resolves to an invalid URL: {e}"))
}

/// A URL for messages: scheme, host, port and path; never user info, query
/// or fragment (they may carry tokens).
pub fn display_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{}://{host}:{p}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

#[derive(Serialize)]
struct Meta<'a> {
    task_id: &'a uuid::Uuid,
    name: &'a str,
    attempt: u32,
    max_attempts: u32,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    source: Option<&'a str>,
    workflow_id: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
}

/// The request body: `{"payload": <payload>, "switchyard": {...}}` (see the
/// `N8nTarget` proto comment). `payload` is the stored JSON object, spliced in
/// as is.
pub fn request_body(task: &Task, payload: &str) -> Vec<u8> {
    let (workflow_id, source) = match &task.spec.target {
        Target::Integration {
            workflow_id,
            integration_source,
            ..
        } => (workflow_id.as_deref(), integration_source.as_deref()),
        _ => (None, None),
    };
    let meta = Meta {
        task_id: &task.id,
        name: &task.spec.name,
        attempt: task.rt.attempt,
        max_attempts: task.spec.max_attempts,
        user_id: task.spec.user_id.as_deref(),
        session_id: task.spec.session_id.as_deref(),
        source,
        workflow_id,
        labels: &task.spec.labels,
    };
    let payload = if payload.trim().is_empty() {
        "{}"
    } else {
        payload
    };
    let mut out = Vec::with_capacity(payload.len() + 320);
    out.extend_from_slice(b"{\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b",\"switchyard\":");
    if serde_json::to_writer(&mut out, &meta).is_err() {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
    out
}

/// `sha256=` and the lower-case hex HMAC-SHA256 of `"{timestamp}.{body}"`
/// under `secret` (the `X-Switchyard-Signature` header).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the error case cannot happen.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (a past date is 0).
/// Capped at 24 hours.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// The first `max` bytes of `body` as text (cut on a character boundary,
/// invalid UTF-8 replaced), with `…` when cut.
pub fn excerpt(body: &[u8], max: usize) -> String {
    if body.len() <= max {
        return String::from_utf8_lossy(body).trim().to_string();
    }
    let mut end = max;
    while end > 0 && (body[end] & 0xc0) == 0x80 {
        end -= 1;
    }
    format!("{}…", String::from_utf8_lossy(&body[..end]).trim())
}

/// n8n's execution id, from the `x-n8n-execution-id` header or a top-level
/// `executionId` field of a JSON object body.
pub fn execution_id(headers: &HeaderMap, body: &Value) -> Option<String> {
    if let Some(v) = headers
        .get("x-n8n-execution-id")
        .and_then(|v| v.to_str().ok())
    {
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    match body.get("executionId")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The result of a successful call: `{"status", "url", "headers", "body",
/// "execution_id"?}` (see the `N8nTarget` proto comment).
pub fn success_result(url: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Value {
    let mut hs = Map::new();
    for name in RESULT_HEADERS {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            hs.insert(name.to_string(), Value::String(v.to_string()));
        }
    }
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body_value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else if content_type.is_empty() || content_type.contains("json") {
        serde_json::from_slice(body).unwrap_or_else(|_| text_body(body))
    } else {
        text_body(body)
    };
    let mut out = Map::new();
    out.insert("status".into(), json!(status.as_u16()));
    out.insert("url".into(), json!(url));
    out.insert("headers".into(), Value::Object(hs));
    if let Some(id) = execution_id(headers, &body_value) {
        out.insert("execution_id".into(), Value::String(id));
    }
    out.insert("body".into(), body_value);
    Value::Object(out)
}

fn text_body(body: &[u8]) -> Value {
    if body.len() > MAX_TEXT_BYTES {
        json!({ "text": excerpt(body, MAX_TEXT_BYTES), "truncated": true })
    } else {
        json!({ "text": String::from_utf8_lossy(body) })
    }
}

/// A failed call, before it becomes a `TaskError`.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Which failure.
    pub kind: FailureKind,
    /// What happened, for people.
    pub message: String,
    /// A body excerpt or a cause chain.
    pub details: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The delay the server asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without details or delay.
    pub fn new(kind: FailureKind, retryable: bool, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            details: String::new(),
            retryable,
            retry_after: None,
        }
    }
}

/// Judges a final (non-redirect) answer that is not a 2xx. `body` may be an
/// excerpt.
pub fn failure_for_status(
    method: &str,
    url: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Failure {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let short = excerpt(body, MESSAGE_EXCERPT);
    let details = excerpt(body, DETAILS_EXCERPT);
    let head = format!("{method} {url} answered {}", status_text(status));
    let with_body = |m: String| {
        if short.is_empty() {
            m
        } else {
            format!("{m}: {short}")
        }
    };
    let code = status.as_u16();
    let (kind, retryable, message) = if code == 404 && is_not_registered(body) {
        (
            FailureKind::WebhookNotRegistered,
            false,
            not_registered_message(url, body),
        )
    } else if code == 429 {
        (FailureKind::RateLimited, true, with_body(head))
    } else if code == 408 || status.is_server_error() {
        (FailureKind::ServerError, true, with_body(head))
    } else {
        (FailureKind::ClientError, false, with_body(head))
    };
    Failure {
        kind,
        message,
        details,
        retryable,
        retry_after,
    }
}

/// `503 Service Unavailable`, or just the code when it has no reason phrase.
pub fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Whether a 404 body is n8n's "webhook not registered" error
/// (`{"code":404,"message":"The requested webhook \"POST path\" is not
/// registered.","hint":...}`, or "This webhook is not registered for POST
/// requests. Did you mean to make a GET request?").
pub fn is_not_registered(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("is not registered")
}

fn not_registered_message(url: &str, body: &[u8]) -> String {
    let n8n_message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| excerpt(body, MESSAGE_EXCERPT));
    let cause = if n8n_message.contains("not registered for") {
        "the webhook exists for another HTTP method; set its Webhook node's HTTP Method to POST"
            .to_string()
    } else if url.contains("/webhook-test/") {
        "this is a /webhook-test/ URL, which only answers (once) while the workflow editor listens for a \
         test event; use the production /webhook/ URL of an active workflow"
            .to_string()
    } else {
        "the workflow is inactive (activate it in n8n: production /webhook/ URLs only answer for active \
         workflows), the path is wrong, or a /webhook-test/ URL was meant (test URLs only answer while the \
         editor listens)"
            .to_string()
    };
    format!("n8n has no webhook at POST {url} ({n8n_message}): likely {cause}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{TaskRuntime, TaskSpec, TaskType};

    fn target(workflow: Option<&str>, url: Option<&str>) -> Target {
        Target::Integration {
            workflow_id: workflow.map(str::to_string),
            webhook_url: url.map(str::to_string),
            integration_source: Some("github".into()),
        }
    }

    #[test]
    fn urls_resolve_from_url_workflow_id_and_path_map() {
        let base = Url::parse("https://n8n.example.com/").unwrap();
        let mut paths = BTreeMap::new();
        paths.insert("deploy".to_string(), "/ci/deploy".to_string());
        let r = |t: &Target, b: Option<&Url>| resolve_url(t, b, &paths);
        assert_eq!(
            r(
                &target(Some("deploy"), Some("https://hooks.example.com/x?y=1")),
                Some(&base)
            )
            .unwrap()
            .as_str(),
            "https://hooks.example.com/x?y=1",
            "webhook_url wins"
        );
        assert_eq!(
            r(&target(Some("wf-1"), None), Some(&base))
                .unwrap()
                .as_str(),
            "https://n8n.example.com/webhook/wf-1"
        );
        assert_eq!(
            r(&target(Some("deploy"), None), Some(&base))
                .unwrap()
                .as_str(),
            "https://n8n.example.com/webhook/ci/deploy"
        );
        let prefixed = Url::parse("http://10.0.0.5:5678/n8n").unwrap();
        assert_eq!(
            r(&target(Some("a"), None), Some(&prefixed))
                .unwrap()
                .as_str(),
            "http://10.0.0.5:5678/n8n/webhook/a"
        );
        assert!(r(&target(Some("a"), None), None)
            .unwrap_err()
            .contains("n8n_base_url"));
        assert!(r(&target(None, Some("not a url")), None).is_err());
    }

    #[test]
    fn display_urls_drop_credentials_and_queries() {
        let u = Url::parse("https://user:pw@example.com:8443/hook/a?token=abc#f").unwrap();
        assert_eq!(display_url(&u), "https://example.com:8443/hook/a");
    }

    #[test]
    fn the_body_wraps_the_payload_with_metadata() {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), "ci".to_string());
        let task = Task {
            id: uuid::Uuid::now_v7(),
            created_at: 0,
            spec: Arc::new(TaskSpec {
                max_attempts: 5,
                user_id: Some("u1".into()),
                labels,
                ..TaskSpec::new("notify", TaskType::Integration, target(Some("wf"), None))
            }),
            rt: TaskRuntime {
                attempt: 2,
                ..TaskRuntime::new_pending(
                    0,
                    crate::domain::Source::N8n,
                    crate::domain::WaitingReason::Queued,
                )
            },
        };
        let body: Value =
            serde_json::from_slice(&request_body(&task, r#"{"repo":"a/b","n":1}"#)).unwrap();
        assert_eq!(
            body,
            json!({
                "payload": {"repo": "a/b", "n": 1},
                "switchyard": {
                    "task_id": task.id.to_string(), "name": "notify", "attempt": 2, "max_attempts": 5,
                    "user_id": "u1", "session_id": null, "source": "github", "workflow_id": "wf",
                    "labels": {"team": "ci"}
                }
            })
        );
        let empty: Value = serde_json::from_slice(&request_body(&task, "")).unwrap();
        assert_eq!(empty["payload"], json!({}));
    }

    #[test]
    fn signatures_match_a_known_vector() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=".to_string()
                + &hex::encode({
                    let mut m = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
                    m.update(br#"1700000000.{"a":1}"#);
                    m.finalize().into_bytes()
                })
        );
        // RFC 4231 test case 2 as a cross-check of the primitive.
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(signature(b"secret", 1, b"x"), signature(b"secret", 2, b"x"));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 1 ", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn statuses_say_what_happens_next() {
        let now = SystemTime::now();
        let h = HeaderMap::new();
        let f = |code: u16, body: &str| {
            failure_for_status(
                "POST",
                "https://h/webhook/x",
                StatusCode::from_u16(code).unwrap(),
                &h,
                body.as_bytes(),
                now,
            )
        };
        let e = f(503, "busy");
        assert_eq!((e.kind, e.retryable), (FailureKind::ServerError, true));
        assert_eq!(
            e.message,
            "POST https://h/webhook/x answered 503 Service Unavailable: busy"
        );
        assert_eq!(
            (f(429, "").kind, f(429, "").retryable),
            (FailureKind::RateLimited, true)
        );
        assert!(f(408, "").retryable);
        let bad = f(400, r#"{"error":"field x is required"}"#);
        assert_eq!((bad.kind, bad.retryable), (FailureKind::ClientError, false));
        assert!(
            bad.message.contains("400 Bad Request") && bad.message.contains("field x is required")
        );
        assert_eq!(f(404, "nope").kind, FailureKind::ClientError);

        let n8n = f(
            404,
            r#"{"code":404,"message":"The requested webhook \"POST x\" is not registered.","hint":"The workflow must be active for a production URL to run successfully."}"#,
        );
        assert_eq!(
            (n8n.kind, n8n.retryable),
            (FailureKind::WebhookNotRegistered, false)
        );
        assert!(
            n8n.message.contains("inactive") && n8n.message.contains("/webhook-test/"),
            "{}",
            n8n.message
        );
        let test_url = failure_for_status(
            "POST",
            "https://h/webhook-test/x",
            StatusCode::NOT_FOUND,
            &h,
            br#"{"code":404,"message":"The requested webhook \"POST x\" is not registered."}"#,
            now,
        );
        assert!(
            test_url.message.contains("editor listens"),
            "{}",
            test_url.message
        );

        let mut ra = HeaderMap::new();
        ra.insert("retry-after", "7".parse().unwrap());
        let limited = failure_for_status("POST", "u", StatusCode::TOO_MANY_REQUESTS, &ra, b"", now);
        assert_eq!(limited.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn results_keep_json_text_and_the_execution_id() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        h.insert("x-n8n-execution-id", "1234".parse().unwrap());
        h.insert("set-cookie", "s=1".parse().unwrap());
        let r = success_result(
            "u",
            StatusCode::OK,
            &h,
            br#"{"message":"Workflow was started"}"#,
        );
        assert_eq!(r["body"]["message"], "Workflow was started");
        assert_eq!(r["execution_id"], "1234");
        assert_eq!(r["status"], 200);
        assert!(r["headers"].get("set-cookie").is_none());

        let mut t = HeaderMap::new();
        t.insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(
            success_result("u", StatusCode::OK, &t, b"ok")["body"],
            json!({"text": "ok"})
        );
        let big = vec![b'a'; MAX_TEXT_BYTES + 10];
        let r = success_result("u", StatusCode::OK, &t, &big);
        assert_eq!(r["body"]["truncated"], true);
        assert_eq!(
            success_result("u", StatusCode::NO_CONTENT, &t, b"")["body"],
            Value::Null
        );
        let by_body = success_result(
            "u",
            StatusCode::OK,
            &HeaderMap::new(),
            br#"{"executionId":77}"#,
        );
        assert_eq!(by_body["execution_id"], "77");
    }

    #[test]
    fn excerpts_cut_on_character_boundaries() {
        assert_eq!(excerpt("héllo".as_bytes(), 2), "h…");
        assert_eq!(excerpt(b"  short  ", 100), "short");
    }
}
