//! One call's exchange: resolve the URL, check it with the SSRF guard,
//! wait for room (the host's pace, its gate, then the executor's), send the signed
//! request with its headers and credentials, follow redirects (each hop
//! checked again, credentials kept to their origin), and read the bounded
//! answer, all within the call's budget (its timeout, and the task's
//! execution deadline).
//!
//! It owns the wire: headers, redirects, timeouts, the body limit, and the
//! words of each way a call can fail ([`Failure`]); it must not decide
//! retries or report to the core (`outcome.rs` turns its answer into a
//! report), and nothing it returns may contain a configured secret.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};

use super::call::{self, Failure};
use super::inflight::{Flight, RECEIVING, SENDING};
use super::settings::{Auth, CallSettings};
use super::{guard, host_port, Executor};
use crate::core::CoreError;
use crate::domain::FailureKind;
use crate::domain::{now_micros, Micros, Target, Task, TaskId};

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static TASK_ID: HeaderName = HeaderName::from_static("x-switchyard-task-id");
static ATTEMPT: HeaderName = HeaderName::from_static("x-switchyard-attempt");
static TIMESTAMP: HeaderName = HeaderName::from_static("x-switchyard-timestamp");
static SIGNATURE: HeaderName = HeaderName::from_static("x-switchyard-signature");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl Executor {
    /// The call itself: resolve, guard, wait for capacity, send (following
    /// redirects), read the answer. Returns the result and a note on
    /// redirects.
    pub(super) async fn exchange(
        &self,
        task: &Task,
        payload: Option<Arc<str>>,
        deadline: Option<Micros>,
        flight: &Flight,
    ) -> Result<(serde_json::Value, String), Failure> {
        let payload = self.payload(task.id, payload).await?;
        let url = call::resolve_url(&task.spec.target, self.n8n_base.as_ref(), &self.paths)
            .map_err(|m| Failure::new(FailureKind::InvalidTarget, false, m))?;
        let _ = flight.url.set(call::display_url(&url));
        self.allow.check(&url).await.map_err(refused)?;
        let source = match &task.spec.target {
            Target::Integration {
                integration_source, ..
            } => integration_source.as_deref(),
            _ => None,
        };
        let settings = self.settings(&url, source)?;

        // The host's pace first: a call waiting for its token holds no
        // permit.
        if let Some((host, rule)) = settings.pace {
            let mut wait = settings.timeout;
            if let Some(d) = deadline {
                wait = wait.min(Duration::from_micros((d - now_micros()).max(0) as u64));
            }
            self.pacer.wait(host, rule, wait).await?;
        }
        let _host_permit = self.gates.permit(host_port(&url)).await?;
        let _global_permit = self.global.clone().acquire_owned().await.map_err(|_| {
            Failure::new(
                FailureKind::HostBusy,
                true,
                "the webhook executor is closing",
            )
        })?;

        let mut budget = settings.timeout;
        if let Some(d) = deadline {
            budget = budget.min(Duration::from_micros((d - now_micros()).max(0) as u64));
        }
        let until = tokio::time::Instant::now() + budget;
        let req = self.request(task, &payload, &url, &settings, flight)?;
        let via = |hops: u32, shown: &str| match hops {
            0 => String::new(),
            1 => format!(" (via 1 redirect, to {shown})"),
            n => format!(" (via {n} redirects, to {shown})"),
        };
        let exchange = self.follow(req, url, &settings, flight);
        match tokio::time::timeout_at(until, exchange).await {
            Ok(Ok((result, url, hops))) => Ok((result, via(hops, &call::display_url(&url)))),
            Ok(Err(f)) => Err(f),
            Err(_) => Err(timed_out(flight, budget)),
        }
    }

    /// The first hop's request: the JSON body, the call's headers and its
    /// credentials.
    fn request(
        &self,
        task: &Task,
        payload: &str,
        url: &Url,
        settings: &CallSettings<'_>,
        flight: &Flight,
    ) -> Result<reqwest::Request, Failure> {
        let body = call::request_body(task, payload);
        let mut headers = self.headers(task, flight.traceparent.as_deref(), &body);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = settings.auth {
            headers.insert(a.name.clone(), a.value.clone());
        }
        settings
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .build()
            .map_err(|e| {
                Failure::new(
                    FailureKind::InvalidTarget,
                    false,
                    format!("cannot build the request: {}", causes(&e)),
                )
            })
    }

    /// Sends the request, following redirects, and reads the final answer;
    /// returns the result, the last URL and how many redirects led there.
    async fn follow(
        &self,
        // The request of the current hop; each send takes a cheap clone (the
        // body is shared), and a redirect edits it for the next hop.
        mut next_req: reqwest::Request,
        mut url: Url,
        settings: &CallSettings<'_>,
        flight: &Flight,
    ) -> Result<(serde_json::Value, Url, u32), Failure> {
        let mut shown = call::display_url(&url);
        let mut hops = 0u32;
        loop {
            let req = next_req.try_clone().ok_or_else(|| {
                Failure::new(
                    FailureKind::InvalidTarget,
                    false,
                    "the request cannot be repeated",
                )
            })?;
            flight.phase.store(SENDING, Ordering::Release);
            let resp = settings
                .client
                .execute(req)
                .await
                .map_err(|e| send_failure(&e, &shown))?;
            let status = resp.status();
            if let Some(m) = &self.core.config().metrics_sink {
                m.webhook_response(status.as_u16());
            }
            flight.status.store(status.as_u16(), Ordering::Release);
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let next = self
                    .redirect_target(&url, &shown, status, resp.headers(), hops)
                    .await?;
                next_hop(&mut next_req, &url, next.clone(), status, settings.auth);
                hops += 1;
                url = next;
                shown = call::display_url(&url);
                flight.status.store(0, Ordering::Release);
                continue;
            }
            flight.phase.store(RECEIVING, Ordering::Release);
            let result = self
                .read_answer(resp, next_req.method().as_str(), &shown)
                .await?;
            return Ok((result, url, hops));
        }
    }

    /// The task's payload (see [`Core::load_payload`](crate::core::Core::load_payload)): a store error is
    /// retryable, a payload still missing is not.
    async fn payload(&self, id: TaskId, cached: Option<Arc<str>>) -> Result<Arc<str>, Failure> {
        self.core
            .load_payload(id, cached)
            .await
            .map_err(|e| match e {
                CoreError::NotFound(_) => Failure::new(
                    FailureKind::PayloadMissing,
                    false,
                    "the task's payload is not in the store",
                ),
                e => Failure::new(
                    FailureKind::PayloadMissing,
                    true,
                    format!("cannot read the task's payload: {e}"),
                ),
            })
    }

    /// The headers of every request of a call (credentials are added per
    /// hop).
    fn headers(&self, task: &Task, traceparent: Option<&str>, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(8);
        let mut buf = uuid::Uuid::encode_buffer();
        let id = task.id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert(IDEMPOTENCY_KEY.clone(), v.clone());
            h.insert(TASK_ID.clone(), v);
        }
        h.insert(ATTEMPT.clone(), HeaderValue::from(task.rt.attempt));
        if let Some(tp) = traceparent {
            if let Ok(v) = HeaderValue::from_str(tp) {
                h.insert(TRACEPARENT.clone(), v);
            }
        }
        if let Some(secret) = &self.signing {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            h.insert(TIMESTAMP.clone(), HeaderValue::from(ts));
            if let Ok(v) =
                HeaderValue::from_str(&call::signature(secret.expose().as_bytes(), ts, body))
            {
                h.insert(SIGNATURE.clone(), v);
            }
        }
        h
    }

    /// Where a redirect goes, once the guard has accepted it.
    async fn redirect_target(
        &self,
        from: &Url,
        shown: &str,
        status: StatusCode,
        headers: &HeaderMap,
        hops: u32,
    ) -> Result<Url, Failure> {
        if hops >= self.max_redirects {
            return Err(Failure::new(
                FailureKind::Redirect,
                false,
                format!(
                    "POST {shown} answered {}; more than {} redirects (webhook.max_redirects)",
                    call::status_text(status),
                    self.max_redirects
                ),
            ));
        }
        let next = headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| from.join(l).ok())
            .ok_or_else(|| {
                Failure::new(
                    FailureKind::Redirect,
                    false,
                    format!(
                        "POST {shown} answered {} without a usable Location",
                        call::status_text(status)
                    ),
                )
            })?;
        self.allow.check(&next).await.map_err(|r| {
            let mut f = refused(r);
            f.message = format!("POST {shown} redirected: {}", f.message);
            f
        })?;
        Ok(next)
    }

    /// Reads a final answer into the result or a failure.
    async fn read_answer(
        &self,
        mut resp: reqwest::Response,
        method: &str,
        shown: &str,
    ) -> Result<serde_json::Value, Failure> {
        let status = resp.status();
        if !status.is_success() {
            let (body, _) = read_limited(&mut resp, call::DETAILS_EXCERPT)
                .await
                .unwrap_or_default();
            return Err(call::failure_for_status(
                method,
                shown,
                status,
                resp.headers(),
                &body,
                SystemTime::now(),
            ));
        }
        let too_large = |n: String| {
            Failure::new(
                FailureKind::ResponseTooLarge,
                false,
                format!(
                    "{method} {shown} answered {} with a body of {n} bytes; the limit is {} (webhook.max_response_bytes)",
                    call::status_text(status),
                    self.max_response_bytes
                ),
            )
        };
        if let Some(len) = resp.content_length() {
            if len > self.max_response_bytes as u64 {
                return Err(too_large(len.to_string()));
            }
        }
        match read_limited(&mut resp, self.max_response_bytes).await {
            Ok((_, true)) => Err(too_large("more than that".into())),
            Ok((body, false)) => Ok(call::success_result(shown, status, resp.headers(), &body)),
            Err(e) => Err(Failure::new(
                FailureKind::ResponseInterrupted,
                true,
                format!(
                    "{method} {shown} answered {} but its body was cut off ({}); the webhook has run",
                    call::status_text(status),
                    causes(&e)
                ),
            )),
        }
    }
}

/// Edits the request for the next hop of a redirect to `next`.
fn next_hop(
    req: &mut reqwest::Request,
    from: &Url,
    next: Url,
    status: StatusCode,
    auth: Option<&Auth>,
) {
    if next.origin() != from.origin() {
        // Credentials belong to the origin they were configured for.
        if let Some(a) = auth {
            req.headers_mut().remove(&a.name);
        }
    }
    if matches!(status.as_u16(), 301..=303) && req.method() == Method::POST {
        // As browsers and curl do: the next hop is a GET without the body.
        *req.method_mut() = Method::GET;
        *req.body_mut() = None;
        req.headers_mut().remove(CONTENT_TYPE);
    }
    *req.url_mut() = next;
}

/// The failure of a call whose budget ran out: the answer was coming, or
/// no answer came.
fn timed_out(flight: &Flight, budget: Duration) -> Failure {
    let first = flight.url.get().map(String::as_str).unwrap_or_default();
    let after = crate::domain::text::duration(budget);
    match flight.phase.load(Ordering::Acquire) {
        RECEIVING => Failure::new(
            FailureKind::ResponseInterrupted,
            true,
            format!(
                "POST {first} answered {} but its body did not arrive within {after}; the webhook has run",
                StatusCode::from_u16(flight.status.load(Ordering::Acquire))
                    .map(call::status_text)
                    .unwrap_or_default()
            ),
        ),
        _ => Failure::new(
            FailureKind::NoResponse,
            true,
            format!(
                "POST {first}: no response within {after}; the request was sent, so the outcome is \
                 unknown (the webhook may have run)"
            ),
        ),
    }
}

/// Reads at most `limit` bytes of a body; `true` when there was more.
async fn read_limited(
    resp: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let hint = resp
        .content_length()
        .unwrap_or(0)
        .min(limit as u64)
        .min(1 << 20) as usize;
    let mut buf = Vec::with_capacity(hint);
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            let room = limit - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// An error's causes, joined (the top-level message of a reqwest error names
/// the URL with its query, so it is left out).
pub(super) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

fn refused(r: guard::SsrfRefused) -> Failure {
    Failure::new(FailureKind::SsrfRefused, false, r.to_string())
}

/// Judges an error of `send()`: refused by the guard, not connected (not
/// sent), or sent with no answer (outcome unknown).
fn send_failure(e: &reqwest::Error, shown: &str) -> Failure {
    if let Some(r) = guard::find_refusal(e) {
        return refused(r.clone());
    }
    if e.is_connect() {
        Failure::new(
            FailureKind::ConnectError,
            true,
            format!("POST {shown}: cannot connect: {}", causes(e)),
        )
    } else {
        Failure::new(
            FailureKind::NoResponse,
            true,
            format!(
                "POST {shown}: the request was sent but no answer came ({}); the outcome is unknown (the webhook \
                 may have run)",
                causes(e)
            ),
        )
    }
}
