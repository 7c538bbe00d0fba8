//! Trace export (OpenTelemetry over OTLP/HTTP, `log.otlp_endpoint`) and the trace context that
//! carries a trace from the request that submits a task to the attempts that run it.
//!
//! The spans themselves are plain `tracing` spans (`request` in `api/access_log.rs`, `task` and
//! `plugin.run_task` in `dispatcher.rs`); [`otlp_layer`] turns those of this crate into
//! OpenTelemetry spans and batches them to the collector from a thread of its own. A task runs
//! later than its request, maybe in another process, so the submitting span's context goes into
//! the task row as W3C `traceparent` text ([`current_traceparent`]) and becomes the parent of
//! the attempt's span when a consumer claims it ([`continue_trace`]). The store keeps that text
//! without knowing what it is.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    propagation::TextMapPropagator as _,
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

/// Whether spans are exported (set once, by [`otlp_layer`]). Without export no trace context
/// is recorded on tasks.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The W3C header name the propagator reads and writes.
const TRACEPARENT: &str = "traceparent";

/// How long one export request, and the final flush at exit, may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The running exporter. [`Exporter::shutdown`] sends the spans still batched.
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Flushes the batched spans and stops the export thread (bounded by a few seconds, so an
    /// unreachable collector cannot hold the exit). Call when the process is done.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::warn!(error = %e, "OTLP trace export: the last spans may be lost");
        }
    }
}

/// A layer exporting this crate's spans (INFO and above, with their events) as OTLP/HTTP
/// protobuf to `endpoint` under `service.name` = `service_name`, and the exporter to shut down
/// at exit. Spans of other crates (HTTP clients, the database driver, the exporter itself) are
/// left out, so exporting never traces itself.
pub(crate) fn otlp_layer<S>(
    endpoint: &str,
    service_name: &str,
) -> Result<(impl Layer<S> + Send + Sync + 'static, Exporter), String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("aihost");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target("aihost", tracing::Level::INFO));
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, Exporter { provider }))
}

/// The current span's context as W3C `traceparent` text, when spans are exported and there is
/// a span; `None` otherwise.
pub(crate) fn current_traceparent() -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` (not yet entered) a child of the span that `traceparent` names, so it continues
/// that trace. Text that is not a valid `traceparent` leaves `span` where it is (a root).
pub(crate) fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(text) = traceparent.filter(|_| EXPORTING.load(Ordering::Relaxed)) else {
        return;
    };
    let Some(cx) = parse_traceparent(text) else {
        tracing::debug!(traceparent = text, "ignoring a malformed trace context");
        return;
    };
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "could not continue the submitting request's trace");
    }
}

/// The remote context `traceparent` names, if it is valid W3C text.
fn parse_traceparent(text: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), text.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let valid = cx.span().span_context().is_valid();
    valid.then_some(cx)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn traceparent_text_round_trips_and_garbage_is_refused() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(
            &opentelemetry::Context::new().with_remote_span_context(sc.clone()),
            &mut carrier,
        );
        let text = carrier.remove(TRACEPARENT).unwrap();
        assert_eq!(
            text,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let parsed = parse_traceparent(&text).unwrap();
        let got = parsed.span().span_context().clone();
        assert_eq!(
            (got.trace_id(), got.span_id(), got.is_remote()),
            (sc.trace_id(), sc.span_id(), true)
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nothing_is_recorded_without_export() {
        // No test installs the exporter, so no span has a context to record.
        let span = tracing::info_span!("request");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
    }
}
