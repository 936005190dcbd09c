//! Logging and tracing set-up: pretty or JSON logs with a tracing filter and,
//! when an OTLP endpoint is configured, OpenTelemetry traces exported over
//! OTLP/gRPC. Also the helpers the rest of the server uses to carry W3C trace
//! context (`traceparent`) from the gRPC edge to workers, webhooks and
//! engines.
//!
//! This module owns the global subscriber and the tracer provider. It must
//! not decide anything about tasks: callers create their own spans and ask
//! [`enabled`] first, so that with tracing off (the default) the hot path pays
//! one relaxed atomic load and nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing filter (`info`, `switchyard=debug`). `RUST_LOG` overrides it.
    pub filter: String,
}

/// Log format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// Measurements made outside the core (the store's commits, the webhook
/// executor's responses), reported to whatever exports metrics (the admin
/// server's Prometheus registry). Every method defaults to doing nothing.
pub trait MetricsSink: std::fmt::Debug + Send + Sync {
    /// A store commit: how long it took and how many writes it held.
    fn store_commit(&self, _elapsed: std::time::Duration, _ops: usize) {}
    /// Rows the store set aside at start-up because they could not be read.
    fn store_quarantined(&self, _rows: u64) {}
    /// The store cannot commit (`true`: a full disk, an unreachable
    /// database; its writes wait and are retried), or can again (`false`).
    fn store_blocked(&self, _blocked: bool) {}
    /// This replica leads, under this term (PostgreSQL store).
    fn leading(&self, _term: i64) {}
    /// The leader renewed its lease in this time.
    fn lease_renewed(&self, _elapsed: std::time::Duration) {}
    /// A webhook answered with this HTTP status.
    fn webhook_response(&self, _status: u16) {}
}

/// OpenTelemetry traces (`[otel]`). Off unless an endpoint is known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`
    /// (`SWITCHYARD_OTEL__ENDPOINT`). Without it, the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is used if set; with none of them, tracing is off. Extra export
    /// metadata (an API key) comes from `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded, 0.0 to 1.0. A request that arrives with
    /// a `traceparent` follows the caller's sampling decision instead.
    pub sample_ratio: f64,
    /// Time limit of one export call.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: None,
            service_name: "switchyard".into(),
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl OtelConfig {
    /// Whether traces are exported, and to the configured endpoint
    /// (`Some(Some(url))`) or to the one the standard environment names
    /// (`Some(None)`).
    fn target(&self) -> Option<Option<String>> {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        match self.endpoint.as_deref().map(str::trim) {
            Some(e) if !e.is_empty() => Some(Some(e.to_string())),
            _ if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                || set("OTEL_EXPORTER_OTLP_ENDPOINT") =>
            {
                Some(None)
            }
            _ => None,
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Callers check it before building any span or
/// trace context of their own.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() when the server stops, or spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter. Call last,
    /// once the server has stopped.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while it flushes; the exporter needs the runtime.
        let r = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        ENABLED.store(false, Ordering::Relaxed);
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(cause = %e, "flushing traces failed"),
            Err(e) => tracing::warn!(cause = %e, "flushing traces failed"),
        }
    }
}

/// Installs the global subscriber: the log output and, when configured, the
/// OpenTelemetry layer. `RUST_LOG` overrides the configured log filter. The
/// HTTP/2 and transport libraries' own spans and events are filtered out of
/// the logs unless asked for, and are never exported: the OpenTelemetry layer
/// only sees Switchyard's own spans. Must run inside the Tokio runtime.
pub fn init(log: &LogConfig, otel: &OtelConfig) -> Result<Telemetry, String> {
    let base = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| format!("{},h2=warn,hyper=warn,tower=warn", log.filter));
    let filter = EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match otel.target() {
        Some(endpoint) => Some(provider(otel, endpoint)?),
        None => None,
    };
    let installed = match (&provider, log.format) {
        // Tracing off: the log output alone, behind one global filter.
        (None, LogFormat::Json) => tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        (None, LogFormat::Pretty) => tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_target(false))
            .try_init(),
        // Tracing on: each layer has its own filter, so the log level does
        // not decide which spans are exported, and the exporter sees only
        // Switchyard's own spans (info and above), never h2's, hyper's,
        // tower's or tonic's.
        (Some(p), format) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("switchyard"))
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(Targets::new().with_target("switchyard", LevelFilter::INFO));
            let registry = tracing_subscriber::registry().with(otel);
            let log_layer = match format {
                LogFormat::Json => fmt::layer().json().with_current_span(true).boxed(),
                LogFormat::Pretty => fmt::layer().with_target(false).boxed(),
            };
            registry.with(log_layer.with_filter(filter)).try_init()
        }
    }
    .is_ok();
    if let Some(p) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(p.clone());
        ENABLED.store(installed, Ordering::Relaxed);
        tracing::info!(
            endpoint = otel
                .endpoint
                .as_deref()
                .unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
            sample_ratio = otel.sample_ratio,
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(Telemetry { provider })
}

fn provider(otel: &OtelConfig, endpoint: Option<String>) -> Result<SdkTracerProvider, String> {
    if !(0.0..=1.0).contains(&otel.sample_ratio) {
        return Err(format!(
            "otel.sample_ratio must be between 0 and 1, got {}",
            otel.sample_ratio
        ));
    }
    let mut b = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_timeout(otel.export_timeout);
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    // Metadata from OTEL_EXPORTER_OTLP_HEADERS is merged in by the exporter.
    let exporter = b
        .with_metadata(Default::default())
        .build()
        .map_err(|e| format!("otel: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otel.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(otel.service_name.clone())
                .build(),
        )
        .build())
}

/// Reads the trace context from request headers (gRPC metadata).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Catches the `traceparent` a propagator writes.
#[derive(Default)]
struct TraceparentOut(Option<String>);

impl Injector for TraceparentOut {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The remote context a W3C `traceparent` names (empty if it is malformed);
/// the client crate's, shared with the worker library.
pub use switchyard_client::trace::context_of;

/// The W3C `traceparent` whose parent is `span`, if the span is in a trace
/// (tracing is on and the span is exported).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = TraceparentOut::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// Puts a fresh `span` in the trace `parent` names (a remote parent; none
/// starts a new trace) and returns the span's own `traceparent`, for
/// whatever runs next. Call before the span is entered.
pub fn adopt(span: &tracing::Span, parent: Option<&str>) -> Option<String> {
    if let Some(tp) = parent {
        let _ = span.set_parent(context_of(tp));
    }
    traceparent_of(span)
}

/// The server span of a gRPC request (tonic's `trace_fn`): named after the
/// method, its parent the caller's `traceparent` and `tracestate` metadata.
/// Only Switchyard's own services get one (not health or reflection), and
/// only while tracing is on.
pub fn grpc_request_span(req: &http::Request<()>) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((service, method)) = path.split_once('/') else {
        return tracing::Span::none();
    };
    if !service.starts_with("switchyard.") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "grpc.server",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let _ = span.set_parent(TraceContextPropagator::new().extract(&Headers(req.headers())));
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_the_propagator() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(tp);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = TraceparentOut::default();
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        assert_eq!(out.0.as_deref(), Some(tp));
        assert!(!context_of("not a traceparent")
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail returns its own large error
    fn off_without_an_endpoint() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            assert_eq!(OtelConfig::default().target(), None);
            let c = OtelConfig {
                endpoint: Some("http://127.0.0.1:4317".into()),
                ..Default::default()
            };
            assert_eq!(c.target(), Some(Some("http://127.0.0.1:4317".into())));
            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
            assert_eq!(OtelConfig::default().target(), Some(None));
            jail.set_env("OTEL_SDK_DISABLED", "true");
            assert_eq!(c.target(), None);
            Ok(())
        });
    }

    #[test]
    fn spans_are_off_by_default() {
        assert!(grpc_request_span(&http::Request::new(())).is_none());
    }
}
