//! OTLP/HTTP export of spans (the `otlp` build feature, switched on by
//! `tracing.otlp_endpoint`). Two kinds of span are exported: each HTTP
//! request (a child of the caller's `traceparent`, if any) and each webhook
//! attempt (a child of the span that created its event). An attempt's
//! `traceparent` header names its own exported span, so a receiver's spans
//! hang below it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

use crate::config::TracingSettings;
use crate::trace::TraceParent;

/// Set once the exporting layer is installed: spans of attempts are made
/// only then (they cost something on the hot path).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The layer that exports spans, and the provider to shut down (which
/// flushes what is buffered) when the process ends.
pub fn layer<S>(
    settings: &TracingSettings,
) -> anyhow::Result<(OpenTelemetryLayer<S, SdkTracer>, SdkTracerProvider)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&settings.otlp_endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(Blocking(
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()?,
        ))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("thinhook"));
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, provider))
}

const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's HTTP client. The batch processor exports from a thread of
/// its own, outside any async runtime, so the blocking client fits.
#[derive(Debug)]
struct Blocking(reqwest::blocking::Client);

#[async_trait::async_trait]
impl HttpClient for Blocking {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let answer = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for (name, value) in answer.headers() {
            response = response.header(name, value);
        }
        Ok(response.body(answer.bytes()?)?)
    }
}

/// Makes `span` (not yet entered) a child of `parent`, a span of another
/// process.
pub fn continue_trace(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The trace context that names `span` itself, if it is exported.
pub fn context_of(span: &tracing::Span) -> Option<TraceParent> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceParent {
        trace_id: span_context.trace_id().to_bytes(),
        parent_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}
