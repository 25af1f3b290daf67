//! `LOG_FORMAT=json`: one JSON object per line.
//!
//! `{"timestamp", "level", "target", "message", "fields": {…}, "trace_id", "span_id",
//! "correlation_id", "spans": ["…"]}`: the event's own fields under `fields`, the ids of the
//! span it was logged in (absent outside any span), the correlation id of the innermost
//! span that carries one (`correlation_id`, else the HTTP `request_id`, which doubles as
//! it), and the names of the spans from the outermost in.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line format (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(message) = fields.0.remove("message") {
            line.insert("message".into(), message);
        }
        if !fields.0.is_empty() {
            line.insert("fields".into(), Value::Object(fields.0));
        }
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            let mut correlation = None;
            let mut ids = None;
            for span in scope.from_root() {
                names.push(Value::from(span.name()));
                let extensions = span.extensions();
                if let Some(found) = extensions
                    .get::<FormattedFields<JsonFields>>()
                    .and_then(|formatted| correlation_id(formatted))
                {
                    correlation = Some(found);
                }
                if let Some(otel) = extensions.get::<OtelData>() {
                    if let (Some(trace), Some(span)) = (otel.trace_id(), otel.span_id()) {
                        ids = Some((trace, span));
                    }
                }
            }
            if let Some((trace, span)) = ids {
                line.insert("trace_id".into(), trace.to_string().into());
                line.insert("span_id".into(), span.to_string().into());
            }
            if let Some(correlation) = correlation {
                line.insert("correlation_id".into(), correlation);
            }
            line.insert("spans".into(), Value::Array(names));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The correlation id among a span's fields, formatted as a JSON object by [`JsonFields`].
fn correlation_id(formatted: &str) -> Option<Value> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(formatted) else {
        return None;
    };
    fields
        .remove("correlation_id")
        .or_else(|| fields.remove("request_id"))
}

/// An event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
