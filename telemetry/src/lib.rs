//! Traces and logs of every process (DESIGN §2, operations): what lets an operator follow
//! one command from its HTTP request through the append, the relay and Kafka to each
//! projection and the live push.
//!
//! - **Traces**: OpenTelemetry spans exported over OTLP/HTTP to the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (off when unset), the service named by
//!   `OTEL_SERVICE_NAME` (default `hybridlive-<subcommand>`). A trace crosses processes as a
//!   W3C `traceparent`: accepted on HTTP requests, stored in each event's metadata, carried
//!   in the Kafka headers, and continued by the relay, each projection and the live push.
//! - **Logs**: on stderr, `RUST_LOG` filtered; `LOG_FORMAT=json` gives one JSON object per
//!   line with the trace id, span id and correlation id of the span it was logged in.
//!
//! Its room: the subscriber and the trace-context helpers. It uses only `tracing` and the
//! OpenTelemetry crates; the binary installs it ([`init`]), and the api, commands, relay,
//! projection runtime and real-time crates call its helpers.

mod json;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether spans are exported: the per-event spans (relay, projections, live pushes) are
/// made only then, so that a process without a collector pays nothing for them.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// How logs are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT`: `text` (or unset) or `json`.
    ///
    /// # Errors
    /// Any other value, named in the message.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var("LOG_FORMAT").ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("" | "text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(format!(
                "LOG_FORMAT={other:?} is not a log format: use text or json"
            )),
        }
    }
}

/// Flushes the spans not yet exported when dropped: keep it alive until the process ends.
#[derive(Debug)]
#[must_use = "spans not yet exported are lost when the guard is dropped early"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("telemetry: flushing the last spans failed: {error}");
            }
        }
    }
}

/// Installs the process's subscriber: logs on stderr (`RUST_LOG`, default `default_filter`;
/// `LOG_FORMAT`), and OpenTelemetry spans exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set. `service` names the process when `OTEL_SERVICE_NAME` does not.
///
/// # Errors
/// An invalid `LOG_FORMAT`, or an exporter that cannot be built.
pub fn init(service: &str, default_filter: &str) -> Result<Guard, String> {
    let format = LogFormat::from_env()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty());
    // Spans get ids when they are exported or logged with them; otherwise no OpenTelemetry
    // layer runs at all.
    let provider = (exporting || format == LogFormat::Json)
        .then(|| provider(service, exporting))
        .transpose()?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = provider.as_ref().map(|provider| {
        // Without context activation a span's parent is the tracing span it was made in,
        // never a thread's current OpenTelemetry context: with tasks moving between
        // threads, activation parented spans to unrelated traces now and then.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hybridlive"))
            .with_context_activation(false)
    });
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // One filter for both: per-layer filters (one `EnvFilter` each) lost spans of commands
    // whenever one of them enabled a debug target.
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init()
        .map_err(|e| format!("installing the tracing subscriber: {e}"))?;
    EXPORTING.store(exporting, Ordering::Relaxed);
    Ok(Guard { provider })
}

fn provider(service: &str, exporting: bool) -> Result<SdkTracerProvider, String> {
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("building the OTLP/HTTP span exporter: {e}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Whether spans are exported (see [`init`]).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// `make()` when spans are exported, else a disabled span: for spans made per event on
/// hot paths.
pub fn when_exporting(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if exporting() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// The W3C `traceparent` of the current span, when it belongs to a sampled trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span `traceparent` names (a W3C `traceparent`; an
/// invalid one, or none, leaves it a root), and starts it, so that what is logged in it
/// carries its trace and span ids.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(context) = traceparent.map(remote_context) {
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }
    let _ = span.context();
}

/// Links `span` to the remote span `traceparent` names, without making it its parent: a
/// span that works for several traces at once (a batch) links each.
pub fn link_trace(span: &tracing::Span, traceparent: &str) {
    let remote = remote_context(traceparent).span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

/// The context of the remote span a W3C `traceparent` names.
fn remote_context(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::LogFormat;

    #[test]
    fn log_formats_are_text_by_default_json_on_request_and_nothing_else() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        let refused = LogFormat::parse(Some("JSON")).unwrap_err();
        assert!(refused.contains("LOG_FORMAT=\"JSON\""), "{refused}");
    }
}
