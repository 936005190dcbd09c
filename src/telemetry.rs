//! Logging and tracing set-up: pretty or JSON logs with a tracing filter.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG` overrides the configured filter.
/// The HTTP/2 library's own spans and events are filtered out unless asked for.
pub fn init(cfg: &LogConfig) {
    let base = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| format!("{},h2=warn,hyper=warn,tower=warn", cfg.filter));
    let filter = EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match cfg.format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
    };
}
