//! W3C trace context: the OpenTelemetry context a `traceparent` names, so a
//! worker's spans continue the trace the server started for an attempt.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The remote context a W3C `traceparent` names (empty if it is malformed).
pub fn context_of(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&Traceparent(traceparent))
}
